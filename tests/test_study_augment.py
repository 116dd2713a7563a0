"""Synthetic-augmentation study (seed 000 §5.3): metric functions and a tiny end-to-end run."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bsynth_hpc.data.finalize import finalize_store
from bsynth_hpc.data.store import StoreLayout, VolumeStore
from bsynth_hpc.study.augment import (METRICS, average_precision, binary_metrics, coronal_stack, roc_auc,
                                      run_augment_study, stratified_pick)

SHAPE = (12, 12, 12)
CLASSES = ("healthy", "TLE")


# ------------------------------------------------------------------------------------ metrics
def test_metrics_perfect():
    y, s = [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]
    m = binary_metrics(y, s)
    assert m == pytest.approx({"f1": 1.0, "precision": 1.0, "recall": 1.0, "accuracy": 1.0,
                               "auc_roc": 1.0, "aucpr": 1.0})


def test_metrics_inverted():
    y, s = [1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]
    m = binary_metrics(y, s)
    assert m["auc_roc"] == pytest.approx(0.0)
    # thresholds 0.9, 0.8: P=0, R=0; 0.2: P=1/3, R=1/2; 0.1: P=1/2, R=1 -> AP = 1/2*1/3 + 1/2*1/2
    assert m["aucpr"] == pytest.approx(0.5 / 3 + 0.25)
    assert m["accuracy"] == 0.0 and m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0


def test_metrics_ties_and_partial():
    assert roc_auc([0, 1, 0, 1], [0.5] * 4) == pytest.approx(0.5)
    assert average_precision([0, 1, 0, 1], [0.5] * 4) == pytest.approx(0.5)  # = prevalence
    # y=[0,1,1,0,1], s=[.1,.4,.35,.8,.9]: pairs pos>neg: (.4>.1),(.35>.1),(.9>.1),(.9>.8) = 4 of 6
    assert roc_auc([0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.9]) == pytest.approx(4 / 6)
    # one tie between a positive and a negative counts 1/2: pos .5 vs neg .5 -> (1 + 0.5) / 2
    assert roc_auc([0, 0, 1, 1], [0.5, 0.2, 0.5, 0.9]) == pytest.approx((2 + 1.5) / 4)
    # ranks desc: .9(1) .8(0) .4(1) .35(1) .1(0): AP = 1/3*1 + 1/3*2/3 + 1/3*3/4
    assert average_precision([0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.9]) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    m = binary_metrics([0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.9])
    # predictions at 0.5: [0,0,0,1,1] -> TP 1, FP 1, FN 2, TN 1
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(0.4) and m["accuracy"] == pytest.approx(0.4)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Closed-form reference: P(score_pos > score_neg) + 1/2 P(tie), over every (pos, neg) pair."""
    pos, neg = s[y == 1][:, None], s[y == 0][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


@pytest.mark.parametrize("levels", [2, 3, 5, 1000])   # few levels = many ties across the classes
def test_roc_auc_matches_pairwise_count_on_ties(levels):
    rng = np.random.default_rng(levels)
    for n in (2, 7, 40):
        y = rng.permutation(np.r_[0, 1, rng.integers(0, 2, n - 2)])
        s = rng.integers(0, levels, n) / levels
        assert roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)
        assert roc_auc(y, s + 10.0) == pytest.approx(roc_auc(y, s), abs=1e-12)  # rank-only


def test_roc_auc_one_class_is_nan():
    for y in ([1, 1, 1], [0, 0], [1]):
        assert math.isnan(roc_auc(y, np.linspace(0.0, 1.0, len(y))))
    m = binary_metrics([0, 0, 0], [0.2, 0.6, 0.4])
    assert math.isnan(m["auc_roc"]) and math.isnan(m["aucpr"]) and m["accuracy"] == pytest.approx(2 / 3)


def test_stratified_pick_keeps_the_pool_balance():
    rng = np.random.default_rng(0)
    y = [0] * 16 + [1] * 16
    pick = stratified_pick(y, 8, rng)
    assert len(pick) == len(set(pick.tolist())) == 8 and sum(y[i] for i in pick) == 4
    pick = stratified_pick([0, 0, 0, 1], 3, rng)
    assert sorted(np.asarray([0, 0, 0, 1])[pick].tolist()) in ([0, 0, 1], [0, 0, 0])
    assert len(stratified_pick(y, 0, rng)) == 0 and len(stratified_pick(y, 32, rng)) == 32


def test_coronal_stack_takes_centre_slices_of_axis_1():
    vol = np.zeros((4, 10, 6), dtype=np.float32)
    vol[:, :, :] = np.arange(10)[None, :, None]
    st = coronal_stack(vol, 4)
    assert st.shape == (4, 4, 6)
    assert [float(st[i, 0, 0]) for i in range(4)] == [3.0, 4.0, 5.0, 6.0]


# ------------------------------------------------------------------------------------ end to end
def _volume(k: int, positive: bool) -> np.ndarray:
    rng = np.random.default_rng(k)
    v = rng.normal(0.3, 0.05, size=SHAPE).astype(np.float32)
    if positive:
        v[3:9, 3:9, 3:9] += 0.5
    return np.clip(v, 0, 1)


def _make_store(path: Path, n_subjects: int = 24, extra_modality: str | None = None) -> Path:
    store = VolumeStore.create_or_open(path, StoreLayout(kind="volume3d", shape=SHAPE, spacing=(1.0, 1.0, 1.0)))
    for k in range(n_subjects):
        subject = f"sub-{k:02d}"
        label = CLASSES[k % 2]
        record = {"subject": subject, "session": None, "dataset": "smoke", "modality": "T1w", "modality_id": 0,
                  "label": label, "source_path": f"/synthetic/{subject}.nii.gz", "source_sha256": "0" * 64,
                  "affine": np.eye(4).tolist(), "shape": list(SHAPE)}
        store.write_volume(f"smoke_{subject}_T1w", _volume(k, k % 2 == 1), record)
        if extra_modality:   # another contrast of the same subject: never a classifier input
            store.write_volume(f"smoke_{subject}_{extra_modality}", _volume(500 + k, k % 2 == 0),
                               {**record, "modality": extra_modality, "modality_id": 1})
    finalize_store(store, fractions=(0.5, 0.25, 0.25), seed=0, stratify="dataset")
    return path


def _make_synthetic(folder: Path, n: int = 8) -> Path:
    folder.mkdir(parents=True)
    rows = []
    for k in range(n):
        label = CLASSES[k % 2]
        shape = SHAPE if k % 3 else (10, 14, 12)  # some need resampling to the store shape
        vol = _volume(1000 + k, k % 2 == 1)
        if shape != SHAPE:
            vol = np.resize(vol, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / f"s{k}.nii.gz"))
        rows.append({"path": f"s{k}.nii.gz", "modality": "T1w", "label": label})
    rows.append({"path": "other.nii.gz", "modality": "T1w", "label": "AD"})  # other class: ignored, never read
    with open(folder / "samples.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "modality", "label"])
        w.writeheader()
        w.writerows(rows)
    return folder


def test_study_end_to_end(tmp_path):
    store = _make_store(tmp_path / "store")
    synth = _make_synthetic(tmp_path / "synth")
    out = tmp_path / "study"
    report = run_augment_study(store, synth, out, classes=CLASSES, ratios=(0.25, 0.5), epochs=1, batch_size=4,
                               n_slices=4, arch="tiny", seed=0)
    data = json.loads((out / "metrics.json").read_text())
    assert data["conditions"].keys() == report["conditions"].keys()
    assert list(data["conditions"]) == ["real", "synthetic", "real+synthetic 1:0.25", "real+synthetic 1:0.5"]
    n_real = data["data"]["n_real_train"]
    assert data["data"]["n_synthetic_pool"] == 8 and data["data"]["n_synthetic_resampled"] > 0
    for name, cond in data["conditions"].items():
        for metric in METRICS:
            assert 0.0 <= cond[metric] <= 1.0, (name, metric, cond[metric])
    assert data["conditions"]["real+synthetic 1:0.5"]["n_synthetic"] == min(8, round(0.5 * n_real))
    assert data["conditions"]["real+synthetic 1:0.25"]["n_synthetic"] == round(0.25 * n_real)
    assert data["eval"]["split"] in ("test", "val+test") and data["eval"]["n"] > 0
    md = (out / "metrics.md").read_text()
    assert "AUCPR" in md and "real+synthetic 1:0.5" in md


def test_study_uses_one_modality(tmp_path):
    store = _make_store(tmp_path / "store", n_subjects=12, extra_modality="T2w")
    synth = _make_synthetic(tmp_path / "synth", n=4)
    with open(synth / "samples.csv", "a", newline="", encoding="utf-8") as fh:
        fh.write("s0.nii.gz,T2w,TLE\n")   # a T2w sample: not in the T1w pool
    report = run_augment_study(store, synth, tmp_path / "study", classes=CLASSES, epochs=1, batch_size=4,
                               n_slices=4, arch="tiny", seed=0)
    from bsynth_hpc.data.dataset import VolumeDataset

    t1_train = len(VolumeDataset(store, split="train", modalities=["T1w"]))
    assert report["data"]["n_real_train"] == t1_train and report["data"]["n_synthetic_pool"] == 4
    assert report["config"]["modality"] == "T1w" and "Adam" in report["config"]["optimizer"]
    both = run_augment_study(store, synth, tmp_path / "study_all", classes=CLASSES, epochs=1, batch_size=4,
                             n_slices=4, arch="tiny", seed=0, modality=None, allow_short_mix=True)
    assert both["data"]["n_real_train"] == 2 * t1_train and both["data"]["n_synthetic_pool"] == 5


def test_cli_registers_study_augment():
    from bsynth_hpc.cli import build_parser

    args = build_parser().parse_args(["study", "augment", "--store", "s", "--synthetic", "d", "--out", "o",
                                      "--arch", "tiny", "--epochs", "1"])
    assert args.arch == "tiny" and args.epochs == 1 and callable(args.func)


def test_study_refuses_a_pool_that_cannot_give_the_asked_mixes(tmp_path, capsys):
    """Repro of #12.4: a one-class synthetic pool and mixes short of volumes ran silently."""
    from bsynth_hpc.errors import InputError

    store = _make_store(tmp_path / "store")          # 12 real training volumes: 1:0.5 needs 6 synthetic
    synth = _make_synthetic(tmp_path / "synth", n=4)
    with open(synth / "samples.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] == CLASSES[1]]   # one class only (2 volumes)
    with open(synth / "samples.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "modality", "label"])
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(InputError, match=f"has no '{CLASSES[0]}' volumes.*1:0.25 needs 3.*1:0.5 needs 6"):
        run_augment_study(store, synth, tmp_path / "study", classes=CLASSES, epochs=1, batch_size=4, n_slices=4,
                          arch="tiny", seed=0)
    assert not (tmp_path / "study").exists()
    report = run_augment_study(store, synth, tmp_path / "study", classes=CLASSES, epochs=1, batch_size=4,
                               n_slices=4, arch="tiny", seed=0, allow_short_mix=True)
    assert "WARNING" in capsys.readouterr().err and len(report["shortfalls"]) == 3
    mix = report["conditions"]["real+synthetic 1:0.5"]
    assert (mix["n_synthetic"], mix["n_synthetic_requested"], mix["n_synthetic_per_class"]) == (2, 6, [0, 2])
    assert "2 (6)" in (tmp_path / "study" / "metrics.md").read_text()


def test_default_slices_span_seed000s_136_mm(tmp_path):
    from bsynth_hpc.study.augment import seed000_slices

    store = _make_store(tmp_path / "store", n_subjects=4)   # 1 mm grid of depth 16: capped at the depth
    assert seed000_slices(store) == SHAPE[1]
    from bsynth_hpc.cli import build_parser

    assert build_parser().parse_args(["study", "augment", "--store", "s", "--synthetic", "d",
                                      "--out", "o"]).n_slices == 0
