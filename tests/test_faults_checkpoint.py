"""Fault injection on checkpoints (issue #11, item 5): bit rot, truncation, damaged zip directories,
corrupted trainer state, old checkpoints without checksums, explicit resume of a damaged checkpoint
and a model-width change on resume.

One tiny smoke-denoiser run (checkpoints at steps 2 and 4) is trained once; every test damages a
copy of it. ``--resume auto`` must fall back to the newest intact checkpoint with a warning naming
the damaged one and what is wrong; an explicit ``--resume PATH`` to a damaged checkpoint and a
model that no longer fits its checkpoint are one-line errors with exit status 2. No output may
ever suggest ``weights_only=False``.
"""
from __future__ import annotations

import json
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from bsynth_hpc.engine.checkpoint import CheckpointManager, is_complete, load_torch, verify
from bsynth_hpc.engine.distributed import Comm, DistInfo
from bsynth_hpc.engine.errors import EXIT_CONFIG, CheckpointDamagedError
from bsynth_hpc.engine.run import train_main
from engine_support import explain, losses, make_store, run, train_args, write_config

STAGE = "smoke-denoiser"
ENGINE = {"max_steps": 4, "ckpt_every": 2, "keep_last": 5}
UNSAFE_ADVICE = "weights_only=False"


@pytest.fixture(autouse=True)
def _engine_env(monkeypatch):
    monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")
    monkeypatch.delenv("BSYNTH_FAULTS", raising=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(store, config, run dir) of a 4-step run with checkpoints at steps 2 and 4."""
    import os

    os.environ["BSYNTH_DISABLE_TRITON"] = "1"
    root = tmp_path_factory.mktemp("faults-ckpt")
    store = make_store(root / "store.zarr")
    config = write_config(root / "denoiser.yaml", STAGE, engine=ENGINE)
    assert train_main(train_args(STAGE, config, store, root / "run")) == 0
    return store, config, root / "run"


@pytest.fixture(scope="module")
def from_step_2(trained, tmp_path_factory):
    """The run resumed explicitly from its (intact) step-2 checkpoint and trained to step 6."""
    store, config, base = trained
    run_dir = tmp_path_factory.mktemp("from-2") / "run"
    shutil.copytree(base, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step-00000004")
    args = train_args(STAGE, config, store, run_dir, "engine.max_steps=6")
    assert train_main([*args, "--resume", str(run_dir / "checkpoints" / "step-00000002")]) == 0
    return run_dir


@pytest.fixture()
def copy(trained, tmp_path):
    """A fresh copy of the trained run (store, config, run dir)."""
    store, config, base = trained
    shutil.copytree(base, tmp_path / "run")
    return store, config, tmp_path / "run"


# ---------------------------------------------------------------------------- damaging files
def _member_data(path: Path, name_suffix: str | None = None) -> tuple[int, int]:
    """(offset, length) of the stored bytes of the largest zip member (or the one ending in name_suffix)."""
    with zipfile.ZipFile(path) as archive:
        members = [i for i in archive.infolist() if name_suffix is None or i.filename.endswith(name_suffix)]
        info = max(members, key=lambda i: i.file_size)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def _flip(path: Path, start: int, count: int) -> None:
    raw = bytearray(path.read_bytes())
    for k in range(start, start + count):
        raw[k] ^= 0xFF
    path.write_bytes(bytes(raw))


def _flip_tensor_bytes(path: Path, count: int = 1000) -> None:
    offset, length = _member_data(path)
    assert length >= count
    _flip(path, offset, count)


def _break_zip_directory(path: Path) -> None:
    """Overwrite the zip's end-of-central-directory record (same size, so only a checksum can tell)."""
    raw = bytearray(path.read_bytes())
    end = raw.rfind(b"PK\x05\x06")
    raw[end:end + 22] = b"\0" * 22
    path.write_bytes(bytes(raw))


def _strip_checksums(ckpt: Path) -> None:
    """Rewrite meta.json the way checkpoints were written before checksums: files -> sizes."""
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"] = {rel: entry["size"] for rel, entry in meta["files"].items()}
    (ckpt / "meta.json").write_text(json.dumps(meta))


def _resume(store, config, run_dir, *extra: str, resume: str = "auto", max_steps: int = 4) -> int:
    args = train_args(STAGE, config, store, run_dir, f"engine.max_steps={max_steps}", *extra)
    return train_main([*args, "--resume", resume])


def _output(capfd) -> tuple[str, str]:
    out, err = capfd.readouterr()
    assert UNSAFE_ADVICE not in out + err
    return out, err


def _assert_fell_back(out: str, run_dir: Path, what: str) -> None:
    damaged = run_dir / "checkpoints" / "step-00000004"
    assert f"checkpoint {damaged} is damaged" in out and what in out, out
    assert f"resumed from {run_dir / 'checkpoints' / 'step-00000002'} (step 2)" in out, out
    assert "moved to" in out and (run_dir / "checkpoints" / "damaged-step-00000004").is_dir()  # kept, not deleted
    assert verify(run_dir / "checkpoints" / "step-00000004") is None  # the step written again is intact


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_torch(path / "models" / "denoiser.pt")["model"]


# ---------------------------------------------------------------------------- the tests
def test_meta_records_a_sha256_per_file(trained):
    _, _, run_dir = trained
    meta = json.loads((run_dir / "checkpoints" / "step-00000004" / "meta.json").read_text())
    assert set(meta["files"]) == {"models/denoiser.pt", "ranks/rank-00000.pt", "trainer.pt"}
    for rel, entry in meta["files"].items():
        path = run_dir / "checkpoints" / "step-00000004" / rel
        assert entry["size"] == path.stat().st_size
        import hashlib

        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_flipped_tensor_bytes_fall_back_and_match_a_resume_from_the_previous_step(copy, from_step_2, capfd):
    store, config, run_dir = copy
    _flip_tensor_bytes(run_dir / "checkpoints" / "step-00000004" / "models" / "denoiser.pt")
    capfd.readouterr()
    assert _resume(store, config, run_dir, max_steps=6) == 0
    out, _ = _output(capfd)
    _assert_fell_back(out, run_dir, "models/denoiser.pt: checksum mismatch")
    assert losses(run_dir, "loss/denoiser") == losses(from_step_2, "loss/denoiser")
    got, want = _weights(run_dir / "checkpoints" / "step-00000006"), _weights(from_step_2 / "checkpoints" /
                                                                             "step-00000006")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    ema = [load_torch(r / "checkpoints" / "step-00000006" / "trainer.pt")["ema"]["denoiser"]["shadow"]
           for r in (run_dir, from_step_2)]
    assert all(torch.equal(a, b) for a, b in zip(*ema))


def test_truncated_model_file_falls_back(copy, capfd):
    store, config, run_dir = copy
    path = run_dir / "checkpoints" / "step-00000004" / "models" / "denoiser.pt"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    capfd.readouterr()
    assert _resume(store, config, run_dir) == 0
    out, _ = _output(capfd)
    _assert_fell_back(out, run_dir, f"models/denoiser.pt: truncated ({size // 2} of {size} bytes)")


def test_corrupted_trainer_state_falls_back(copy, capfd):
    store, config, run_dir = copy
    path = run_dir / "checkpoints" / "step-00000004" / "trainer.pt"
    offset, _ = _member_data(path, "data.pkl")
    _flip(path, offset + 10, 40)
    capfd.readouterr()
    assert _resume(store, config, run_dir) == 0
    out, _ = _output(capfd)
    _assert_fell_back(out, run_dir, "trainer.pt: checksum mismatch")


def test_damaged_zip_directory_falls_back_with_and_without_checksums(copy, capfd):
    store, config, run_dir = copy
    ckpt = run_dir / "checkpoints" / "step-00000004"
    _break_zip_directory(ckpt / "models" / "denoiser.pt")
    assert verify(ckpt).startswith("models/denoiser.pt: checksum mismatch")
    _strip_checksums(ckpt)  # an old checkpoint: sizes match, only loading can tell
    assert verify(ckpt) is None
    capfd.readouterr()
    assert _resume(store, config, run_dir) == 0
    out, _ = _output(capfd)
    _assert_fell_back(out, run_dir, "models/denoiser.pt: unreadable (not a readable zip archive")


def test_old_checkpoint_without_checksums_still_resumes(copy, capfd):
    store, config, run_dir = copy
    ckpt = run_dir / "checkpoints" / "step-00000004"
    _strip_checksums(ckpt)
    assert is_complete(ckpt) and verify(ckpt) is None
    capfd.readouterr()
    assert _resume(store, config, run_dir, max_steps=5) == 0
    out, _ = _output(capfd)
    assert f"resumed from {ckpt} (step 4)" in out and "damaged" not in out
    meta = json.loads((run_dir / "checkpoints" / "step-00000005" / "meta.json").read_text())
    assert all(len(entry["sha256"]) == 64 for entry in meta["files"].values())


def test_explicit_resume_of_a_damaged_checkpoint_exits_2(copy, capfd):
    store, config, run_dir = copy
    ckpt = run_dir / "checkpoints" / "step-00000004"
    _flip_tensor_bytes(ckpt / "models" / "denoiser.pt")
    before = sorted(p.relative_to(ckpt) for p in ckpt.rglob("*"))
    capfd.readouterr()
    assert _resume(store, config, run_dir, resume=str(ckpt), max_steps=6) == EXIT_CONFIG
    _, err = _output(capfd)
    line = err.strip().splitlines()[-1]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"cannot resume from {ckpt}" in line and "models/denoiser.pt: checksum mismatch" in line
    assert "--resume auto" in line
    assert sorted(p.relative_to(ckpt) for p in ckpt.rglob("*")) == before  # left in place
    assert json.loads((run_dir / "status.json").read_text())["exit_code"] == EXIT_CONFIG


def test_every_checkpoint_damaged_exits_2_and_keeps_them(copy, capfd):
    store, config, run_dir = copy
    for step in (2, 4):
        _flip_tensor_bytes(run_dir / "checkpoints" / f"step-0000000{step}" / "models" / "denoiser.pt")
    capfd.readouterr()
    assert _resume(store, config, run_dir) == EXIT_CONFIG
    out, err = _output(capfd)
    assert out.count("is damaged") == 2
    assert "no intact checkpoint" in err and "step-00000002: models/denoiser.pt: checksum mismatch" in err
    assert all((run_dir / "checkpoints" / f"step-0000000{s}").is_dir() for s in (2, 4))


def test_width_change_on_resume_is_one_line_exit_2(copy, capfd):
    store, config, run_dir = copy
    capfd.readouterr()
    assert _resume(store, config, run_dir, "recipe.channels=16", max_steps=6) == EXIT_CONFIG
    _, err = _output(capfd)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert f"checkpoint {run_dir / 'checkpoints' / 'step-00000004'} does not fit model 'denoiser'" in line
    assert "conv_in.weight has shape [8, 1, 3, 3, 3] in the checkpoint but [16, 1, 3, 3, 3] in the model" in line
    assert str(run_dir / "config.yaml") in line and "new --run-dir" in line
    assert not (run_dir / "checkpoints" / "damaged-step-00000004").exists()  # a misfit is not damage


class NotAllowed:
    """A class safe loading refuses (torch's message then advises turning it off)."""


def test_unloadable_file_message_never_suggests_unsafe_loading(tmp_path):
    path = tmp_path / "checkpoints" / "step-00000002" / "trainer.pt"
    path.parent.mkdir(parents=True)
    torch.save({"x": NotAllowed()}, path)
    with pytest.raises(CheckpointDamagedError) as info:
        load_torch(path)
    text = str(info.value) + info.value.problem
    assert UNSAFE_ADVICE not in text and "weights_only` set to `False" not in text
    assert f"cannot read {path}" in text and "NotAllowed" in text and info.value.__cause__ is None
    assert info.value.problem.startswith("trainer.pt: unreadable (it holds an object of type")


def test_retention_never_counts_or_deletes_a_damaged_checkpoint(tmp_path, capsys):
    comm = Comm(DistInfo(0, 1, 0, 1, "127.0.0.1", 0, "single"), torch.device("cpu"))
    manager = CheckpointManager(tmp_path, comm, keep_last=1, keep_best=False)
    manager.save(2, lambda d: (d / "f.pt").write_bytes(b"two"), {})
    manager.save(4, lambda d: (d / "f.pt").write_bytes(b"four"), {})
    assert [s for s, _ in manager.complete()] == [4]
    (tmp_path / "checkpoints" / "step-00000004" / "f.pt").write_bytes(b"rot!")  # same size: bit rot
    assert verify(tmp_path / "checkpoints" / "step-00000004").startswith("f.pt: checksum mismatch")
    manager.mark_damaged(tmp_path / "checkpoints" / "step-00000004", "f.pt: checksum mismatch")
    manager.save(6, lambda d: (d / "f.pt").write_bytes(b"six"), {})
    assert [s for s, _ in manager.complete()] == [6]
    assert (tmp_path / "checkpoints" / "step-00000004" / "f.pt").read_bytes() == b"rot!"  # kept
    # saving the damaged step again sets the damaged directory aside instead of deleting it
    manager.save(4, lambda d: (d / "f.pt").write_bytes(b"FOUR"), {})
    assert (tmp_path / "checkpoints" / "damaged-step-00000004" / "f.pt").read_bytes() == b"rot!"
    assert "moved to" in capsys.readouterr().out
    assert [s for s, _ in manager.complete()] == [6]  # keep_last=1 among intact ones: the new step 4 is older


def test_deepspeed_checkpoint_files_are_checksummed_and_verified(trained, tmp_path):
    """DeepSpeed writes its own shard files; they are hashed like ours, and a damaged shard makes
    --resume auto fall back (one DeepSpeed run per process, so subprocesses)."""
    pytest.importorskip("deepspeed")
    store, config, _ = trained
    run_dir = tmp_path / "ds"
    args = [sys.executable, "-m", "bsynth_hpc.engine.run",
            *train_args(STAGE, config, store, run_dir, "engine.backend=deepspeed", "engine.zero_stage=1")]
    proc = run(args)
    assert proc.returncode == 0, explain(proc)
    ckpt = run_dir / "checkpoints" / "step-00000004"
    meta = json.loads((ckpt / "meta.json").read_text())
    shards = [rel for rel in meta["files"] if rel.startswith("deepspeed/denoiser/")]
    assert shards and all(len(meta["files"][rel]["sha256"]) == 64 for rel in shards)
    optim = next(rel for rel in shards if "optim_states" in rel)
    _flip_tensor_bytes(ckpt / optim)
    proc = run([*args, "--resume", "auto"])
    assert proc.returncode == 0, explain(proc)
    out = proc.stdout + proc.stderr
    assert UNSAFE_ADVICE not in out
    assert f"checkpoint {ckpt} is damaged ({optim}: checksum mismatch" in out, explain(proc)
    assert f"resumed from {run_dir / 'checkpoints' / 'step-00000002'} (step 2)" in out
