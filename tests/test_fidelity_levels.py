"""Level-matched slice fidelity (bsynth_hpc.eval.fidelity_levels) against hand-computed values."""
from __future__ import annotations

import pytest

from bsynth_hpc.eval.fidelity_levels import level_markdown, level_summary, levels_by_modality


def _rows(modality: str, spec: list[tuple[int, float, float]]) -> list[dict]:
    return [{"modality": modality, "matched_level": k, "corr_modality": r, "dice": d} for k, r, d in spec]


def test_gap_is_the_sample_weighted_difference_of_level_medians():
    real = _rows("FLAIR", [(0, 0.90, 0.80), (0, 0.92, 0.84), (1, 0.98, 0.95), (1, 0.96, 0.93), (2, 0.95, 0.90)])
    fake = _rows("FLAIR", [(0, 0.93, 0.86), (1, 0.95, 0.90), (1, 0.97, 0.92), (1, 0.96, 0.94), (3, 0.99, 0.99)])
    out = level_summary(fake, real)
    # level 0: 0.93 - 0.91 = +0.02 (1 sample); level 1: 0.96 - 0.97 = -0.01 (3 samples); level 3 has no real slice
    assert out["gap"]["corr_modality"]["mean_difference"] == pytest.approx((0.02 - 3 * 0.01) / 4)
    assert out["gap"]["corr_modality"]["levels"] == 2 and out["gap"]["corr_modality"]["n_samples"] == 4
    # Dice: level 0: 0.86 - 0.82 = +0.04; level 1: 0.92 - 0.94 = -0.02
    assert out["gap"]["dice"]["mean_difference"] == pytest.approx((0.04 - 3 * 0.02) / 4)
    # histograms: fake 1/5, 3/5, 0, 1/5; real 2/5, 2/5, 1/5, 0 -> TV = (1 + 1 + 1 + 1) / 10
    assert out["coverage"]["total_variation"] == pytest.approx(0.4)
    assert out["coverage"]["levels_without_sample"] == 1
    assert out["coverage"]["fraction_of_real_slices_at_levels_without_sample"] == pytest.approx(0.2)
    by = {row["level"]: row for row in out["by_level"]}
    assert by[3]["n_real"] == 0 and by[3]["real_corr_modality"] is None and by[2]["n_samples"] == 0
    text = "\n".join(level_markdown(out, "FLAIR"))
    assert "r -0.003, Dice -0.005 over 2 levels" in text and "| 3 | 1 | 0.990 | 0.990 | 0 | - | - |" in text


def test_same_rows_have_no_gap_and_full_coverage():
    real = _rows("T1w", [(k % 4, 0.9 + 0.01 * k, 0.8 + 0.01 * k) for k in range(12)])
    out = level_summary(real, real)
    assert out["gap"]["corr_modality"]["mean_difference"] == pytest.approx(0.0)
    assert out["gap"]["dice"]["mean_difference"] == pytest.approx(0.0)
    assert out["coverage"]["total_variation"] == pytest.approx(0.0)


def test_levels_are_per_modality_and_volumes_have_none():
    flair = _rows("FLAIR", [(0, 0.9, 0.9)])
    t1 = _rows("T1w", [(0, 0.5, 0.5)])
    out = levels_by_modality(flair + t1, flair + _rows("T1w", [(0, 0.7, 0.6)]))
    assert out["FLAIR"]["gap"]["corr_modality"]["mean_difference"] == pytest.approx(0.0)
    assert out["T1w"]["gap"]["corr_modality"]["mean_difference"] == pytest.approx(-0.2)
    volumes = [{"modality": "FLAIR", "corr_modality": 0.9, "dice": 0.9}]
    assert level_summary(volumes, volumes) is None and levels_by_modality(volumes, volumes) == {}
