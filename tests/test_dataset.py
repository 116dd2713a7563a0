"""finalize_store + VolumeDataset over small real Zarr stores."""
from __future__ import annotations

import io
import json
import pickle
from collections import defaultdict

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from bsynth_hpc.constants import MODALITY_IDS
from bsynth_hpc.data import VolumeDataset, finalize_store
from bsynth_hpc.data.metadata import CLINICAL_ROI_FIELDS, compute_metadata_stats, encode_metadata, parse_metadata
from bsynth_hpc.data.splits import assign_split
from bsynth_hpc.data.store import StoreLayout, VolumeStore
from bsynth_hpc.errors import ConfigError, MetadataError, StoreError

SHAPE = (8, 10, 6)


def volume_data(k: int, shape=SHAPE) -> np.ndarray:
    """A distinct, exactly float16-representable volume per index k."""
    grid = np.indices(shape).sum(axis=0) % 16
    return ((grid + k) % 64 / 64.0).astype(np.float32)


def make_records(n_subjects: int = 12) -> list[dict]:
    """Subjects in two datasets with repeated subject ids, 1-2 sessions, 1-3 modalities each."""
    records = []
    for s in range(n_subjects):
        dataset = "adni" if s % 2 == 0 else "oasis"
        subject = f"sub-{s // 2:02d}"  # the same ids appear in both datasets
        for session in (["ses-1", "ses-2"] if s % 3 == 0 else [None]):
            for modality in ("T1w", "T2w", "FLAIR")[: 1 + s % 3] + (("T1Gd",) if s % 5 == 0 else ()):
                meta = {"age": 20 + 3.5 * s, "sex": "female" if s % 2 else "male",
                        "stroke": "yes" if s % 4 == 0 else "no", "height": None if s % 3 else 150 + s}
                rec = {
                    "subject": subject, "session": session, "dataset": dataset, "modality": modality,
                    "modality_id": MODALITY_IDS[modality], "metadata": parse_metadata(meta),
                    "source_path": f"/raw/{dataset}/{subject}.nii.gz", "source_sha256": "0" * 64,
                    "affine": np.eye(4).tolist(), "shape": list(SHAPE), "preprocessing": {"clip": 99.5},
                }
                if s % 4 != 1:
                    rec["label"] = ["AD", "CN", "MCI"][s % 3]
                if s % 2 == 0:
                    rec["clinical"] = {name: 0.001 * (s + j) for j, name in enumerate(CLINICAL_ROI_FIELDS)}
                vid = f"{dataset}_{subject}_{session or 'nosession'}_{modality}"
                records.append({"volume_id": vid, **rec})
    return records


def build_store(path, records, shape=SHAPE, kind="volume3d") -> VolumeStore:
    store = VolumeStore.create_or_open(path, StoreLayout(kind=kind, shape=shape, spacing=(1.0,) * len(shape)))
    for k, rec in enumerate(records):
        store.write_volume(rec["volume_id"], volume_data(k, shape), rec)
    return store


@pytest.fixture(scope="module")
def finalized(tmp_path_factory):
    records = make_records()
    path = tmp_path_factory.mktemp("store") / "cohort.zarr"
    store = build_store(path, records)
    summary = finalize_store(store, fractions=(0.5, 0.25, 0.25), seed=1)
    return path, records, summary


def test_finalize_stores_splits_stats_labels_and_table(finalized):
    path, records, summary = finalized
    info = VolumeStore(path).info
    assignment = info["splits"]["assignment"]
    keys = {f"{r['dataset']}/{r['subject']}" for r in records}
    assert set(assignment) == keys
    assert all(assignment[k] == assign_split(k, (0.5, 0.25, 0.25), seed=1) for k in keys)
    assert info["splits"]["fractions"] == [0.5, 0.25, 0.25] and info["splits"]["seed"] == 1
    assert info["labels"] == ["AD", "CN", "MCI"] == summary["labels"]
    counts = info["splits"]["counts"]
    assert counts["total"]["total"] == len(records)
    assert sum(counts[s]["total"] for s in ("train", "val", "test")) == len(records)
    # independent reference: one metadata row per training (subject, session)
    sessions = {}
    for r in records:
        key = f"{r['dataset']}/{r['subject']}"
        if assignment[key] == "train":
            sessions[(key, r["session"])] = r["metadata"]
    ages = np.array([m["age"] for m in sessions.values()])
    assert info["metadata_stats"]["age"]["count"] == len(sessions)
    assert info["metadata_stats"]["age"]["mean"] == pytest.approx(ages.mean())
    assert info["metadata_stats"]["age"]["std"] == pytest.approx(ages.std(ddof=1))
    reference = compute_metadata_stats(sessions.values())
    for field, stats in reference.items():
        assert info["metadata_stats"][field] == pytest.approx(stats), field
    assert (path / "table.csv").exists() and summary["table_csv"] == str(path / "table.csv")


def test_splits_are_subject_disjoint_across_sessions_and_modalities(finalized):
    path, records, _ = finalized
    seen = defaultdict(set)
    total = 0
    for split in ("train", "val", "test"):
        ds = VolumeDataset(path, split=split)
        total += len(ds)
        for e in ds.entries:
            seen[e.key].add(split)
    assert total == len(records)
    assert all(len(splits) == 1 for splits in seen.values())
    # a subject id shared by two datasets is two subjects
    assert {"adni/sub-00", "oasis/sub-00"} <= set(seen)


def test_items_carry_image_and_conditions(finalized):
    path, records, _ = finalized
    by_id = {r["volume_id"]: (k, r) for k, r in enumerate(records)}
    ds = VolumeDataset(path, split=None)
    stats = VolumeStore(path).info["metadata_stats"]
    assert len(ds) == len(records) and ds.label_names == ("AD", "CN", "MCI")
    for i in range(len(ds)):
        item = ds[i]
        k, rec = by_id[item["volume_id"]]
        assert item["image"].shape == (1, *SHAPE) and item["image"].dtype == torch.float32
        np.testing.assert_array_equal(item["image"][0].numpy(), volume_data(k))
        assert item["modality_id"] == MODALITY_IDS[rec["modality"]]
        values, mask = encode_metadata(rec["metadata"], stats)
        np.testing.assert_array_equal(item["metadata"].numpy(), values)
        np.testing.assert_array_equal(item["metadata_mask"].numpy(), mask.astype(np.float32))
        label = rec.get("label")
        assert item["label"] == (ds.label_names.index(label) if label else -1)
        assert item["label_name"] == (label or "")
        if rec.get("clinical"):
            expected = [rec["clinical"][n] for n in CLINICAL_ROI_FIELDS]
            np.testing.assert_allclose(item["clinical"][:6].numpy(), expected, rtol=1e-6)
        else:
            assert not item["clinical_mask"][:6].any()
        assert item["clinical_mask"][6] == (1.0 if label else 0.0)
        if label:
            assert item["clinical"][6] == (0.0 if label == "CN" else 1.0)
        assert (item["subject"], item["dataset"], item["session"]) == (
            rec["subject"], rec["dataset"], rec["session"] or "")
        assert item["index"] == i
    assert ds[-1]["volume_id"] == ds[len(ds) - 1]["volume_id"]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_modality_filter_accepts_names_aliases_and_ids(finalized):
    path, records, _ = finalized
    n_flair_t1 = sum(r["modality"] in ("FLAIR", "T1w") for r in records)
    for spec in (["FLAIR", "T1w"], ["flair", "t1"], [3, 0]):
        ds = VolumeDataset(path, split=None, modalities=spec)
        assert len(ds) == n_flair_t1 and set(ds.modality_ids) == {0, 3}
    with pytest.raises(ConfigError, match="unknown modality 'DWI'"):
        VolumeDataset(path, split=None, modalities=["DWI"])


def test_float16_output_and_dict_transform(finalized):
    path, _, _ = finalized

    def flip(item):
        return {**item, "image": torch.flip(item["image"], dims=(1,))}

    plain = VolumeDataset(path, split="train", dtype=torch.float16)
    flipped = VolumeDataset(path, split="train", transform=flip)
    assert plain[0]["image"].dtype == torch.float16
    torch.testing.assert_close(flipped[0]["image"], torch.flip(plain[0]["image"].float(), dims=(1,)))


def test_multi_worker_loader_returns_every_item_once(finalized):
    path, _, _ = finalized
    ds = VolumeDataset(path, split=None)
    modules = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            modules.add(module)
            return super().find_class(module, name)

    state = pickle.dumps(ds)  # what each worker receives: plain state, no Zarr handle
    Recorder(io.BytesIO(state)).load()
    assert not any(m.split(".")[0] == "zarr" for m in modules), modules
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    ids = [vid for batch in loader for vid in batch["volume_id"]]
    assert sorted(ids) == sorted(e.volume_id for e in ds.entries)
    assert len(ids) == len(set(ids))


def test_records_without_label_clinical_or_metadata(tmp_path):
    records = [{"volume_id": f"v{i}", "subject": f"s{i}", "dataset": "d", "modality": "T2w"} for i in range(6)]
    store = build_store(tmp_path / "bare.zarr", records)
    finalize_store(store, fractions=(1.0, 0.0, 0.0))
    ds = VolumeDataset(tmp_path / "bare.zarr", split="train")
    item = ds[0]
    assert item["label"] == -1 and item["label_name"] == "" and ds.label_names == ()
    assert not item["metadata_mask"].any() and not item["clinical_mask"].any()
    assert item["session"] == "" and item["modality_id"] == 1


def test_slice2d_store_gives_channel_first_images(tmp_path):
    records = [{"volume_id": f"slice{i}", "subject": f"s{i}", "dataset": "kaggle", "modality": "T1Gd",
                "label": ["glioma", "no_tumor"][i % 2]} for i in range(5)]
    store = build_store(tmp_path / "slices.zarr", records, shape=(12, 9), kind="slice2d")
    finalize_store(store, fractions=(1.0, 0.0, 0.0))
    ds = VolumeDataset(tmp_path / "slices.zarr", split="train")
    assert ds.kind == "slice2d"
    item = ds[1]
    assert item["image"].shape == (1, 12, 9)
    np.testing.assert_array_equal(item["image"][0].numpy(), volume_data(1, (12, 9)))
    assert ds.label_ids == [0, 1, 0, 1, 0]


def test_dataset_error_paths(finalized, tmp_path):
    path, _, _ = finalized
    with pytest.raises(ConfigError, match="unknown split 'training'"):
        VolumeDataset(path, split="training")
    with pytest.raises(StoreError, match="does not exist"):
        VolumeDataset(tmp_path / "nowhere.zarr")
    # a store that was never finalized
    records = make_records(3)
    raw = build_store(tmp_path / "raw.zarr", records)
    with pytest.raises(StoreError, match="not finalized"):
        VolumeDataset(tmp_path / "raw.zarr")
    # a volume published after finalize makes the index stale
    finalize_store(raw, fractions=(1.0, 0.0, 0.0))
    raw.write_volume("late", volume_data(0), {**records[0], "volume_id": "late"})
    with pytest.raises(StoreError, match="re-run finalize_store"):
        VolumeDataset(tmp_path / "raw.zarr")
    # an empty selection is an error, not a silent empty epoch
    finalize_store(raw, fractions=(1.0, 0.0, 0.0))
    with pytest.raises(StoreError, match="no volumes"):
        VolumeDataset(tmp_path / "raw.zarr", split="test")


def test_finalize_rejects_out_of_schema_metadata_naming_field_and_volume(tmp_path):
    records = make_records(2)
    records[1]["metadata"] = {**records[1]["metadata"], "bmi": 140.0}
    store = build_store(tmp_path / "bad.zarr", records)
    with pytest.raises(MetadataError, match=rf"'bmi'.*140.*{records[1]['volume_id']}"):
        finalize_store(store)


def test_finalize_rejects_records_missing_identity_fields(tmp_path):
    store = build_store(tmp_path / "noid.zarr", [{"volume_id": "v0", "dataset": "d", "modality": "T1w"}])
    with pytest.raises(StoreError, match="lacks 'subject'"):
        finalize_store(store)
    empty = VolumeStore.create_or_open(tmp_path / "empty.zarr", StoreLayout("volume3d", SHAPE, (1.0,) * 3))
    with pytest.raises(StoreError, match="no published volumes"):
        finalize_store(empty)


def test_stratified_finalize_splits_each_modality_signature(tmp_path):
    records = [{"volume_id": f"v{i}", "subject": f"s{i}", "dataset": "d",
                "modality": "T1Gd" if i < 10 else "T1w"} for i in range(30)]
    store = build_store(tmp_path / "strat.zarr", records)
    summary = finalize_store(store, fractions=(0.8, 0.1, 0.1), stratify="modalities")
    counts = summary["splits"]["counts"]
    assert [counts[s]["T1Gd"] for s in ("train", "val", "test")] == [8, 1, 1]
    assert [counts[s]["T1w"] for s in ("train", "val", "test")] == [16, 2, 2]
    assert VolumeStore(tmp_path / "strat.zarr").info["splits"]["method"] == "stratified"
    with pytest.raises(ConfigError, match="stratify='site'"):
        finalize_store(store, stratify="site")


def test_label_stratified_finalize_puts_every_class_in_every_split(tmp_path):
    records = [{"volume_id": f"v{i}", "subject": f"s{i}", "dataset": "d", "modality": "T1w",
                "label": "TLE" if i % 4 == 0 else "healthy"} for i in range(40)]
    store = build_store(tmp_path / "lab.zarr", records)
    finalize_store(store, fractions=(0.6, 0.2, 0.2), stratify="label")
    info = VolumeStore(tmp_path / "lab.zarr").info["splits"]
    assert info["stratify"] == "label" and info["method"] == "stratified"
    per = {(split, lab): 0 for split in ("train", "val", "test") for lab in ("TLE", "healthy")}
    for r in records:
        per[(info["assignment"][f"d/{r['subject']}"], r["label"])] += 1
    assert [per[(s, "TLE")] for s in ("train", "val", "test")] == [6, 2, 2]
    assert [per[(s, "healthy")] for s in ("train", "val", "test")] == [18, 6, 6]


def test_table_csv_round_trips_nested_fields(finalized):
    import pandas as pd

    path, records, _ = finalized
    df = pd.read_csv(path / "table.csv", dtype=str, keep_default_na=False)
    row = df[df.volume_id == records[0]["volume_id"]].iloc[0]
    assert json.loads(row["metadata"]) == records[0]["metadata"]
    assert zarr.open_group(str(path), mode="r").attrs["bsynth"]["splits"]["seed"] == 1


def test_numeric_looking_ids_and_labels_stay_text(tmp_path):
    """"007" must not become 7 on the way through table.csv, nor a label "1" become "1.0"."""
    records = [{"volume_id": f"v{i}", "subject": f"00{i}", "session": "01" if i else None, "dataset": "123",
                "modality": "T1w", "label": "1" if i % 2 else None} for i in range(4)]
    store = build_store(tmp_path / "ids.zarr", records)
    finalize_store(store, fractions=(1.0, 0.0, 0.0))
    ds = VolumeDataset(tmp_path / "ids.zarr", split="train")
    assert [ds[i]["subject"] for i in range(4)] == ["000", "001", "002", "003"]
    assert [ds[i]["session"] for i in range(4)] == ["", "01", "01", "01"]
    assert ds.label_names == ("1",) and ds.label_ids == [-1, 0, -1, 0]
    assert set(VolumeStore(tmp_path / "ids.zarr").info["splits"]["assignment"]) == {f"123/00{i}" for i in range(4)}
