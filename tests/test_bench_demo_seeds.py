"""benchmarks.demo_seeds (and demo_fidelity's nearest-subject spread): rows, seed means, from hand-made demo folders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import demo_seeds
from benchmarks.demo_fidelity import nearest_subjects


def _block(median: float) -> dict:
    return {"n": 3, "median": median, "median_ci95": [median - 0.01, median + 0.01]}


def _demo(root: Path, recipe: str, seed: int, corr: float, dice: float, nearest: list[str],
          spread: dict | None = None) -> Path:
    """A finished demo folder as `bsynth demo` leaves it, reduced to what the record reads."""
    d = root / f"{recipe}_{seed}"
    (d / "eval" / "fidelity").mkdir(parents=True)
    (d / "demo_summary.json").write_text(json.dumps(
        {"recipe": recipe, "total_seconds": 100.0 + seed, "options": {"seed": seed}, "step_seconds": {}}))
    pooled = {"n": len(nearest), "corr_modality": _block(corr), "dice": _block(dice),
              "copies": {"n_flagged": 0, "n_judged": len(nearest), "n_closer_than_heldout": 1}}
    real = {"n": 2, "corr_modality": _block(0.95), "dice": _block(0.94)}
    (d / "eval" / "fidelity" / "fidelity.json").write_text(json.dumps({
        "summary": {"samples": {"pooled": pooled}, "real_heldout": {"pooled": real}},
        "samples": [{"nearest_train_by_corr": f"ds__{s}__ses-01__T1w"} for s in nearest],
        "real_heldout": [{"nearest_train_by_corr": "ds__sub-1__ses-01__T1w"},
                         {"nearest_train_by_corr": "ds__sub-2__ses-01__T1w"}],
        **({"spread": spread} if spread is not None else {})}))
    return d


def test_rows_give_the_excess_over_real_and_the_nearest_subject_spread(tmp_path: Path) -> None:
    a = _demo(tmp_path, "slice2d", 0, 0.97, 0.96, ["sub-1", "sub-2", "sub-2", "sub-3"])
    x = demo_seeds.row(a)
    assert x["seed"] == 0 and x["n_samples"] == 4
    assert x["excess_corr"] == pytest.approx(0.02) and x["excess_dice"] == pytest.approx(0.02)
    assert x["nearest_subjects"] == {"n": 4, "distinct": 3, "top_share": 0.5}
    assert x["nearest_subjects_real"] == {"n": 2, "distinct": 2, "top_share": 0.5}


def test_rows_average_the_spread_over_modalities_and_recipes_over_seeds(tmp_path: Path) -> None:
    two = {"T1w": {"deviation_ratio": 0.9, "pairwise_ratio": 0.4},
           "T2w": {"deviation_ratio": 0.7, "pairwise_ratio": 0.6}}
    x = demo_seeds.row(_demo(tmp_path, "wfdm", 0, 0.97, 0.96, ["sub-1"], two))
    assert x["deviation_ratio"] == pytest.approx(0.8) and x["pairwise_ratio"] == pytest.approx(0.5)
    old = demo_seeds.row(_demo(tmp_path, "wfdm", 1, 0.97, 0.96, ["sub-1"]))   # a record from before the spread
    assert old["deviation_ratio"] is None and old["pairwise_ratio"] is None
    s = demo_seeds.per_recipe([x, old])["wfdm"]
    assert s["pairwise_ratio_mean"] == pytest.approx(0.5)
    assert "| 0.80 / 0.50 |" in demo_seeds.markdown({"rows": [x, old], "per_recipe": {"wfdm": s}})


def test_a_collapsed_model_shows_one_nearest_subject() -> None:
    rows = [{"nearest_train_by_corr": "ds__sub-7__ses-01__T1w"}] * 5 + [{"nearest_train_by_corr": None}]
    assert nearest_subjects(rows) == {"n": 5, "distinct": 1, "top_share": 1.0}
    assert nearest_subjects([]) == {"n": 0, "distinct": 0, "top_share": None}


def test_main_writes_seed_means_per_recipe(tmp_path: Path) -> None:
    dirs = [_demo(tmp_path, "slice2d", 0, 0.97, 0.96, ["sub-1"]), _demo(tmp_path, "slice2d", 1, 0.95, 0.90, ["sub-2"]),
            _demo(tmp_path, "wfdm", 0, 0.99, 0.98, ["sub-1"])]
    out = tmp_path / "res" / "seeds"
    assert demo_seeds.main([a for d in dirs for a in ("--demo-dir", str(d))] + ["--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    s = result["per_recipe"]["slice2d"]
    assert s["seeds"] == [0, 1]
    assert s["corr_mean"] == pytest.approx(0.96) and (s["corr_min"], s["corr_max"]) == (0.95, 0.97)
    assert s["excess_dice_mean"] == pytest.approx(-0.01)
    md = out.with_suffix(".md").read_text()
    assert "| slice2d | 0, 1 | 0.960 [0.950, 0.970]" in md and "| wfdm | 0 |" in md
