"""`bsynth eval fidelity`: the measures against independent references, a synthetic store whose answers
are known (T1w/T2w phantoms with inverted tissue contrast), the CLI end to end and its failure paths."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bsynth_hpc.cli import main
from bsynth_hpc.constants import MODALITY_IDS
from bsynth_hpc.data import finalize_store
from bsynth_hpc.data.store import StoreLayout, VolumeStore
from bsynth_hpc.errors import InputError
from bsynth_hpc.eval.fidelity import FidelityConfig, RealReference, evaluate_fidelity, volume_row
from bsynth_hpc.eval.fidelity_metrics import (brain_mask, dice, kmeans_1d, median_ci, otsu_threshold, pearson,
                                              same_family, tissue_masks, tissue_order_check)
from bsynth_hpc.eval.io import open_store_set
from bsynth_hpc.eval.memorization import (CopyRule, Neighbour, closer_than_heldout, flag_copies, nearest_training,
                                         ssim_many)
from bsynth_hpc.eval.ssim import ssim

SHAPE = (32, 36, 28)
SPACING = 4.0
AFFINE = np.diag([SPACING, SPACING, SPACING, 1.0])
TISSUE = {"T1w": {"CSF": 0.2, "GM": 0.55, "WM": 0.85}, "T2w": {"CSF": 0.9, "GM": 0.6, "WM": 0.4}}
"""Textbook contrasts: T2w inverts T1w's order (CSF dark in T1w, brightest in T2w)."""


def phantom(seed: int, modality: str) -> np.ndarray:
    """An ellipsoidal head: GM shell, WM, a central CSF 'ventricle' whose size varies by subject, noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    r2 = (grid ** 2).sum(0)
    t = TISSUE[modality]
    ventricle = 0.06 + 0.05 * rng.random()
    v = np.where(r2 < 0.8, t["GM"], 0.0)
    v = np.where(r2 < 0.3, t["WM"], v)
    v = np.where(r2 < ventricle, t["CSF"], v)
    v = v + np.where(r2 < 0.8, rng.normal(0, 0.03, SHAPE), 0.0)
    return np.clip(v, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fid") / "phantoms.zarr"
    st = VolumeStore.create_or_open(path, StoreLayout(kind="volume3d", shape=SHAPE, spacing=(SPACING,) * 3))
    for s in range(12):
        for modality in ("T1w", "T2w"):
            rec = {"subject": f"sub-{s:02d}", "session": None, "dataset": "phantom", "modality": modality,
                   "modality_id": MODALITY_IDS[modality], "label": "AD" if s % 2 else "CN", "affine": AFFINE.tolist()}
            st.write_volume(f"phantom_sub-{s:02d}_{modality}", phantom(s, modality), rec)
    finalize_store(st, fractions=(0.5, 0.25, 0.25), seed=0)
    return path


def write_samples(folder: Path, volumes: list[tuple[str, np.ndarray, str]], affine=AFFINE, csv_file: bool = True,
                  labels: dict[str, str] | None = None) -> Path:
    """NIfTI files + samples.csv as `bsynth sample` writes them: (name, volume, requested modality), with the
    requested class of the names in ``labels``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, vol, _ in volumes:
        nib.save(nib.Nifti1Image(vol, affine), folder / f"{name}.nii.gz")
    if csv_file:
        with open(folder / "samples.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "modality", "label", "seed"])
            for i, (name, _, modality) in enumerate(volumes):
                w.writerow([f"{name}.nii.gz", modality, (labels or {}).get(name, ""), i])
    return folder


@pytest.fixture(scope="module")
def known(store, tmp_path_factory) -> tuple[Path, dict]:
    """Samples with known answers: a copy of a training volume, a held-out real volume (held-out-like by
    definition), a new T2w phantom, and a T1w volume mislabelled as T2w."""
    train, held = open_store_set(store, split="train"), open_store_set(store, split="test")
    t1_train = next(i for i, r in enumerate(train.refs) if r.modality == "T1w")
    t1_held = next(i for i, r in enumerate(held.refs) if r.modality == "T1w")
    folder = write_samples(tmp_path_factory.mktemp("samples"), [
        ("copy_T1w", train.load(t1_train), "T1w"),
        ("heldout_T1w", held.load(t1_held), "T1w"),
        ("new_T2w", phantom(1000, "T2w"), "T2w"),
        ("wrong_T2w", phantom(1001, "T1w"), "T2w"),
    ], labels={"new_T2w": "CN"})
    result = evaluate_fidelity(store, folder, FidelityConfig(ssim_candidates=0)).result
    return folder, {r["sample"]: r for r in result["samples"]} | {"_result": result, "_copy_of": train.refs[t1_train]}


# ---------------------------------------------------------------------------------------- measures
def test_pearson_matches_numpy_corrcoef():
    rng = np.random.default_rng(0)
    a = rng.random((6, 7, 5))
    b = 0.3 * a + rng.random((6, 7, 5))
    assert pearson(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], abs=1e-12)
    assert np.isnan(pearson(a, np.ones_like(a)))


def test_median_ci_has_the_asymptotic_width_and_is_reproducible():
    """The sample median of n normal values has standard error sqrt(pi / 2) sigma / sqrt(n): the 95 % bootstrap
    interval is about +-1.96 of that around the median."""
    v = np.random.default_rng(1).normal(0.0, 1.0, 400)
    lo, hi = median_ci(v)
    expected = 2 * 1.96 * np.sqrt(np.pi / 2) / np.sqrt(v.size)
    assert lo < np.median(v) < hi
    assert hi - lo == pytest.approx(expected, rel=0.25)
    assert median_ci(v) == (lo, hi)
    assert median_ci([0.7]) == (0.7, 0.7)
    with pytest.raises(InputError, match="no values"):
        median_ci([])


def test_dice_closed_form():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[0:4, 0:4, 0:4] = True
    b[2:6, 0:4, 0:4] = True  # overlap 2*4*4 = 32 of 64 + 64 voxels
    assert dice(a, b) == pytest.approx(2 * 32 / 128)
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0


def test_otsu_and_kmeans_separate_known_classes():
    rng = np.random.default_rng(1)
    two = np.concatenate([rng.normal(0.2, 0.03, 5000), rng.normal(0.8, 0.03, 3000)])
    assert 0.3 < otsu_threshold(two) < 0.7
    three = np.concatenate([rng.normal(c, 0.02, 2000) for c in (0.2, 0.5, 0.85)])
    np.testing.assert_allclose(kmeans_1d(three, 3), [0.2, 0.5, 0.85], atol=0.01)


def test_tissue_rules_and_families():
    t1, t2 = TISSUE["T1w"], TISSUE["T2w"]
    assert tissue_order_check("T1w", t1)[1] and tissue_order_check("T1Gd", t1)[1]
    assert tissue_order_check("T2w", t2)[1] and not tissue_order_check("T2w", t1)[1]
    assert not tissue_order_check("T1w", t2)[1]
    assert tissue_order_check("FLAIR", {"CSF": 0.1, "GM": 0.7, "WM": 0.6})[1]
    assert not tissue_order_check("FLAIR", t2)[1]
    assert same_family("T1w", "T1Gd") and not same_family("T1w", "T2w")


def test_tissue_masks_recover_the_phantom_tissues():
    mean = np.mean([phantom(s, "T1w") for s in range(6)], axis=0)
    masks = tissue_masks(mean, (SPACING,) * 3)
    t2 = np.mean([phantom(s, "T2w") for s in range(6)], axis=0)
    # The T1w-derived masks hold each T2w tissue's intensity (the masks are anatomical, not contrast-specific).
    for name, value in TISSUE["T2w"].items():
        assert masks[name].sum() > 0
        assert float(np.median(t2[masks[name]])) == pytest.approx(value, abs=0.08)


def test_ssim_many_matches_the_project_ssim():
    rng = np.random.default_rng(2)
    q = rng.random((16, 16, 16)).astype(np.float32)
    refs = [np.clip(q + rng.normal(0, s, q.shape), 0, 1).astype(np.float32) for s in (0.0, 0.1, 0.3)]
    got = ssim_many(q, refs, batch=2)
    np.testing.assert_allclose(got, [ssim(q, r) for r in refs], atol=1e-5)
    assert got[0] == pytest.approx(1.0, abs=1e-5)


def test_copy_rule_closed_form():
    rule = CopyRule(corr=0.95, ssim=0.7, n_reference=3)
    samples = [Neighbour(0.94, 0, 0.6, 0), Neighbour(0.96, 0, 0.6, 0), Neighbour(0.9, 0, 0.71, 0),
               Neighbour(0.95, 0, 0.7, 0)]
    assert flag_copies(samples, rule) == [False, True, True, False]
    assert flag_copies(samples, None) == [None] * 4
    # with the subject-specific reference: close AND subject-specific is a copy; close but average is not
    rule = CopyRule(corr=0.95, ssim=0.7, n_reference=3, residual=0.5)
    samples = [Neighbour(0.96, 0, 0.6, 0, 0.9, 0), Neighbour(0.96, 0, 0.6, 0, 0.2, 0),
               Neighbour(0.90, 0, 0.6, 0, 0.9, 0)]
    assert flag_copies(samples, rule) == [True, False, False]
    assert closer_than_heldout(samples, rule) == [True, True, False]


def test_average_brain_is_close_but_not_a_copy_and_a_noisy_copy_is():
    """The confound the residual measure removes: the training mean is nearer to a training volume than a
    held-out subject is, yet reproduces nobody; a training volume with a little noise reproduces one."""
    rng = np.random.default_rng(0)
    base = rng.random((12, 12, 12))
    train = [base + 0.3 * rng.standard_normal(base.shape) for _ in range(6)]
    mean = np.mean(train, axis=0)
    heldout = base + 0.3 * rng.standard_normal(base.shape)
    average = mean + 0.01 * rng.standard_normal(base.shape)
    noisy_copy = train[2] + 0.05 * rng.standard_normal(base.shape)
    ref = nearest_training(heldout, train, ssim_candidates=2, mean=mean)
    rule = CopyRule(corr=ref.corr, ssim=ref.ssim, n_reference=1, residual=ref.residual_corr)
    avg, cop = (nearest_training(v, train, ssim_candidates=2, mean=mean) for v in (average, noisy_copy))
    assert avg.corr > ref.corr                      # closer than the held-out subject ...
    assert avg.residual_corr < ref.residual_corr    # ... but not like any one training subject
    assert cop.residual_index == 2 and cop.residual_corr > 0.95
    assert flag_copies([avg, cop], rule) == [False, True]


# ---------------------------------------------------------------------------------------- known answers
def test_exact_copy_is_flagged_and_heldout_like_sample_is_not(known):
    _, rows = known
    copy = rows["copy_T1w"]
    assert copy["copy"] is True
    assert copy["nearest_train_corr"] == pytest.approx(1.0, abs=1e-6)
    assert copy["nearest_train_ssim"] == pytest.approx(1.0, abs=1e-4)
    assert copy["nearest_train_by_corr"] == rows["_copy_of"].volume_id
    assert rows["heldout_T1w"]["copy"] is False
    assert rows["new_T2w"]["copy"] is False


def test_class_mean_correlation_matches_numpy(store, known):
    _, rows = known
    train = open_store_set(store, split="train")
    cn = [train.load(i) for i, r in enumerate(train.refs) if r.modality == "T2w" and r.label == "CN"]
    sample = nib.load(rows["new_T2w"]["path"]).get_fdata().astype(np.float32)
    expected = np.corrcoef(sample.ravel(), np.mean(cn, axis=0).ravel())[0, 1]
    assert rows["new_T2w"]["corr_class"] == pytest.approx(expected, abs=1e-6)
    assert rows["copy_T1w"]["corr_class"] is None


def test_inverted_contrast_is_identified_and_ordered(known):
    _, rows = known
    for name in ("copy_T1w", "heldout_T1w", "new_T2w"):
        r = rows[name]
        assert r["contrast_ok"] and r["tissue_ok"], name
        assert r["corr_modality"] > 0.9 and r["dice"] > 0.9, name
    wrong = rows["wrong_T2w"]  # a T1w-contrast volume requested as T2w
    assert wrong["identified"] == "T1w" and not wrong["contrast_ok"] and not wrong["tissue_ok"]
    assert wrong["corr_by_modality"]["T1w"] > wrong["corr_modality"]


def test_real_heldout_reference_passes(known):
    _, rows = known
    real = rows["_result"]["summary"]["real_heldout"]["pooled"]
    assert real["contrast_identified"]["fraction_passing"] == 1.0
    assert real["tissue_order"]["fraction_passing"] == 1.0
    assert real["dice"]["median"] > 0.9


# ---------------------------------------------------------------------------------------- CLI
def test_cli_end_to_end(store, known, tmp_path, capsys):
    folder, rows = known
    out = tmp_path / "fid"
    assert main(["eval", "fidelity", "--real", str(store), "--fake", str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fidelity: 4 samples" in printed and "likely copies 1/4" in printed
    data = json.loads((out / "fidelity.json").read_text())
    assert data["protocol"] == "fidelity" and data["random_features"] is False
    assert data["provenance"]["versions"]["numpy"]
    assert {r["sample"] for r in data["samples"]} == {"copy_T1w", "heldout_T1w", "new_T2w", "wrong_T2w"}
    pooled = data["summary"]["samples"]["pooled"]
    assert pooled["contrast_identified"]["fraction_passing"] == pytest.approx(0.75)
    assert pooled["copies"] == {"n_flagged": 1, "n_judged": 4, "n_closer_than_heldout": 1}
    md = (out / "fidelity.md").read_text()
    assert "| copy_T1w | T1w |" in md and "Flagged: **1 of 4**" in md
    w, h = Image.open(out / "nearest_training.png").size
    assert w >= 6 * 160 and h >= 4 * 160


def test_cli_refuses_bad_sample_folders(store, tmp_path, capsys):
    def fails(folder: Path, message: str) -> None:
        code = main(["eval", "fidelity", "--real", str(store), "--fake", str(folder), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code != 0 and message in err, err
        assert not (tmp_path / "o" / "fidelity.json").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    fails(empty, "no NIfTI samples")
    fails(write_samples(tmp_path / "nocsv", [("a_T1w", phantom(1, "T1w"), "T1w")], csv_file=False),
          "has no samples.csv")
    small = np.zeros((16, 16, 16), np.float32)
    fails(write_samples(tmp_path / "shape", [("a_T1w", small, "T1w")]), "not on the store grid")
    fails(write_samples(tmp_path / "spacing", [("a_T1w", phantom(1, "T1w"), "T1w")], affine=np.diag([2.0, 2, 2, 1])),
          "voxel spacing")


def test_one_contrast_family_store_does_not_judge_contrast():
    vols = [phantom(s, "T1w") for s in range(3)]
    mean = np.mean(vols, axis=0)
    real = RealReference(volumes={"T1w": vols}, ids={"T1w": ["a", "b", "c"]}, means={"T1w": mean}, class_means={},
                         masks={"T1w": brain_mask(mean)}, tissues=tissue_masks(mean, (SPACING,) * 3),
                         tissue_source="T1w", spacing=(SPACING,) * 3)
    row = volume_row(phantom(9, "T1w"), "T1w", None, real)
    assert row["identified"] is None and row["contrast_ok"] is None and row["tissue_ok"]
    with pytest.raises(InputError, match="no T2w volume"):
        volume_row(phantom(9, "T2w"), "T2w", None, real)


def test_slices_are_compared_with_the_mean_of_their_level():
    """Two slice levels with different anatomy: the pooled mean fits neither, the per-level mean fits each,
    and ``matched_level`` names the level a slice came from."""
    from bsynth_hpc.eval.io import VolumeRef, VolumeSet

    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 40), indexing="ij"))
    rng = np.random.default_rng(0)

    def level_slice(level: int) -> np.ndarray:
        r2 = (grid ** 2).sum(0)
        head = r2 < (0.8 if level == 0 else 0.3)  # a slice through the ventricles vs one near the vertex
        inner = r2 < 0.15 if level == 0 else np.abs(grid[0]) < 0.1
        v = np.where(head, 0.6, 0.0) + np.where(inner & head, 0.3, 0.0)
        return np.clip(v + np.where(head, rng.normal(0, 0.02, v.shape), 0.0), 0, 1).astype(np.float32)

    slices = [level_slice(k % 2) for k in range(10)]
    refs = [VolumeRef(volume_id=f"s{k}", modality="FLAIR", label=None, source=f"s{k}", level=k % 2) for k in range(10)]
    train = VolumeSet(path=Path("mem"), kind="slices", refs=refs, shape=(40, 40, 1),
                      loader=lambda ref: slices[int(ref.volume_id[1:])])
    real = RealReference.from_set(train, (1.0, 1.0))
    assert set(real.level_means["FLAIR"]) == {0, 1}
    np.testing.assert_allclose(real.level_means["FLAIR"][1], np.mean(slices[1::2], axis=0), rtol=1e-6)
    pooled_dice = []
    for level in (0, 1):
        probe = level_slice(level)
        row = volume_row(probe, "FLAIR", None, real)
        assert row["matched_level"] == level
        assert row["corr_modality"] == pytest.approx(pearson(probe, real.level_means["FLAIR"][level]))
        assert row["corr_modality"] > 0.99 > pearson(probe, real.means["FLAIR"]) + 0.05
        assert row["dice"] > 0.99
        pooled_dice.append(dice(brain_mask(probe), real.masks["FLAIR"]))
    assert min(pooled_dice) < 0.9  # the pooled mask is one level's head outline, wrong for the other
    volumes = RealReference.from_set(replace_levels(train), (1.0, 1.0))
    assert volumes.level_means == {} and "matched_level" not in volume_row(slices[0], "FLAIR", None, volumes)


def replace_levels(train):
    """The same set with no slice levels (a 3D store): the modality mean is the reference."""
    from dataclasses import replace
    return replace(train, refs=[replace(r, level=None) for r in train.refs])
