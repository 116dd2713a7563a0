"""The spread measures of `bsynth eval fidelity` (bsynth_hpc.eval.fidelity_spread): closed forms, a brute-force
pair loop, i.i.d. draws against their own distribution, the two failure modes they exist to catch, and the
fidelity command end to end on the phantom store of test_eval_fidelity."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from bsynth_hpc.eval.fidelity import FidelityConfig, evaluate_fidelity, fidelity_markdown, headline
from bsynth_hpc.eval.fidelity_spread import deviation_rms, pairwise_rms, spread_by_modality
from bsynth_hpc.eval.io import open_store_set

from test_eval_fidelity import store, write_samples  # noqa: F401  (the module-scoped phantom store fixture)

SHAPE = (7, 9, 5)   # odd on every axis


def test_deviation_rms_closed_form():
    mean = np.random.default_rng(0).random(SHAPE)
    mask = np.zeros(SHAPE, bool)
    mask[1:5, 2:8, 1:4] = True
    volume = mean + np.where(mask, 0.25, 5.0)   # outside the mask does not count
    assert deviation_rms(volume, mean, mask) == pytest.approx(0.25)
    assert np.isnan(deviation_rms(volume, mean, np.zeros(SHAPE, bool)))


def test_pairwise_rms_matches_a_pair_loop():
    rng = np.random.default_rng(1)
    volumes = [rng.random(SHAPE).astype(np.float32) for _ in range(5)]
    mask = rng.random(SHAPE) > 0.3
    expected = [np.sqrt(np.mean((a[mask].astype(np.float64) - b[mask]) ** 2))
                for a, b in itertools.combinations(volumes, 2)]
    np.testing.assert_allclose(pairwise_rms(volumes, mask), expected, rtol=1e-9, atol=1e-12)
    assert pairwise_rms(volumes[:1], mask).size == 0
    np.testing.assert_allclose(pairwise_rms([volumes[0]] * 3, mask), 0.0, atol=1e-6)


def _rows(volumes, mean, mask, levels=None):
    return [{"modality": "T1w", "matched_level": None if levels is None else levels[i],
             "deviation_rms": deviation_rms(v, mean, mask)} for i, v in enumerate(volumes)]


def _draw(rng, mean, n, sd=0.1):
    return [mean + rng.normal(0, sd, mean.shape) for _ in range(n)]


def test_iid_draws_score_one_and_the_failure_modes_score_below():
    rng = np.random.default_rng(2)
    mean = rng.random((12, 12, 12))
    mask = np.ones(mean.shape, bool)
    held, train = _draw(rng, mean, 20), _draw(rng, mean, 30)
    train_rows = [{"modality": "T1w"} for _ in train]

    def spread(samples):
        return spread_by_modality(_rows(samples, mean, mask), samples, _rows(held, mean, mask), held, train_rows,
                                  train, lambda m, level: mask)["T1w"]

    real_like = spread(_draw(rng, mean, 25))
    assert real_like["deviation_ratio"] == pytest.approx(1.0, abs=0.03)
    assert real_like["pairwise_ratio"] == pytest.approx(1.0, abs=0.03)
    assert real_like["samples"]["n_pairs"] == 25 * 24 // 2 and real_like["real_train"]["n_pairs"] == 30 * 29 // 2
    # E|x - mu| : E|x_i - x_j| = 1 : sqrt(2) for i.i.d. draws
    assert real_like["samples"]["pairwise_rms_median"] == pytest.approx(
        np.sqrt(2) * real_like["samples"]["deviation_rms_median"], rel=0.03)

    mean_like = spread(_draw(rng, mean, 25, sd=0.02))          # samples hugging the mean
    assert mean_like["deviation_ratio"] == pytest.approx(0.2, abs=0.02)
    assert mean_like["pairwise_ratio"] == pytest.approx(0.2, abs=0.02)

    one_scan = spread([_draw(rng, mean, 1)[0]] * 25)            # the same plausible scan every time
    assert one_scan["deviation_ratio"] == pytest.approx(1.0, abs=0.05)
    assert one_scan["pairwise_ratio"] == pytest.approx(0.0, abs=1e-6)


def test_slice_pairs_stay_within_a_level():
    """Two levels with different anatomy: pairs across levels would be far apart; only same-level pairs count."""
    rng = np.random.default_rng(3)
    means = {0: np.zeros((10, 10)), 1: np.ones((10, 10))}
    levels = [0, 0, 0, 1, 1]
    volumes = [means[k] + rng.normal(0, 0.05, (10, 10)) for k in levels]
    rows = [{"modality": "FLAIR", "matched_level": k, "deviation_rms": deviation_rms(v, means[k], np.ones((10, 10),
                                                                                                       bool))}
            for k, v in zip(levels, volumes)]
    out = spread_by_modality(rows, volumes, rows, volumes, rows, volumes, lambda m, k: np.ones((10, 10), bool))
    s = out["FLAIR"]["samples"]
    assert s["n_pairs"] == 3 + 1
    assert s["pairwise_rms_median"] < 0.2   # a cross-level pair is about 1 apart
    assert out["FLAIR"]["deviation_ratio"] == 1.0 and out["FLAIR"]["pairwise_ratio"] == 1.0


def test_fidelity_reports_the_spread_and_flags_the_average_brain(store, tmp_path):  # noqa: F811
    """The held-out volumes as samples score a deviation ratio of exactly 1; copies of the training mean score r = 1
    on the correlation measure and 0 on both spread ratios."""
    train, held = open_store_set(store, split="train"), open_store_set(store, split="test")
    t1_held = [held.load(i) for i, r in enumerate(held.refs) if r.modality == "T1w"]
    t1_mean = np.mean([train.load(i) for i, r in enumerate(train.refs) if r.modality == "T1w"], axis=0)
    config = FidelityConfig(heldout_splits=("test",))

    real = evaluate_fidelity(store, write_samples(tmp_path / "held", [(f"h{i}", v, "T1w") for i, v in
                                                                     enumerate(t1_held)]), config).result
    s = real["spread"]["T1w"]
    assert s["deviation_ratio"] == pytest.approx(1.0)
    assert s["samples"]["pairwise_rms_median"] == pytest.approx(s["real_heldout"]["pairwise_rms_median"])
    assert s["pairwise_ratio"] == pytest.approx(s["real_heldout"]["pairwise_rms_median"]
                                                / s["real_train"]["pairwise_rms_median"])
    n_train = sum(r.modality == "T1w" for r in train.refs)
    assert s["real_train"]["n_pairs"] == n_train * (n_train - 1) // 2
    assert s["real_heldout"]["n_pairs"] == len(t1_held) * (len(t1_held) - 1) // 2
    assert set(real["spread"]) == {"T1w"}

    average = evaluate_fidelity(store, write_samples(tmp_path / "mean", [(f"m{i}", t1_mean, "T1w") for i in
                                                                        range(4)]), config).result
    a = average["spread"]["T1w"]
    assert average["summary"]["samples"]["pooled"]["corr_modality"]["median"] == pytest.approx(1.0, abs=1e-5)
    assert a["deviation_ratio"] == pytest.approx(0.0, abs=1e-4) and a["pairwise_ratio"] == pytest.approx(0.0, abs=1e-4)
    assert "T1w spread vs real: deviation 0.00x, pairwise 0.00x" in headline(average)
    assert "## Spread against real anatomy" in fidelity_markdown(average, None)


def test_pairs_are_capped_per_group():
    from bsynth_hpc.eval.fidelity_spread import MAX_GROUP_VOLUMES

    volumes = [np.full((3, 3), float(i)) for i in range(MAX_GROUP_VOLUMES + 10)]
    rows = [{"modality": "T1w", "deviation_rms": 0.0} for _ in volumes]
    out = spread_by_modality(rows, volumes, rows, volumes, rows, volumes, lambda m, k: np.ones((3, 3), bool))["T1w"]
    assert out["samples"]["n_pairs"] == MAX_GROUP_VOLUMES * (MAX_GROUP_VOLUMES - 1) // 2
