"""Shared helpers of the engine tests: a tiny real store, configs, subprocess launches, metrics.

Not a test module (no ``test_`` prefix): imported by tests/test_engine_*.py.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bsynth_hpc.data.finalize import finalize_store
from bsynth_hpc.data.store import StoreLayout, VolumeStore

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SHAPE = (16, 16, 16)


def volume(k: int, shape: Sequence[int] = SHAPE) -> np.ndarray:
    """A smooth, distinct volume in [0, 1] (a blob whose position and size depend on k)."""
    rng = np.random.default_rng(k)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    center = rng.uniform(-0.3, 0.3, size=3)[:, None, None, None]
    radius = rng.uniform(0.4, 0.7)
    blob = np.exp(-((grid - center) ** 2).sum(0) / (2 * radius ** 2))
    noise = rng.normal(0, 0.02, size=shape)
    return np.clip(0.8 * blob + 0.1 + noise, 0, 1).astype(np.float32)


def make_store(path: Path, n_subjects: int = 12, shape: Sequence[int] = SHAPE) -> Path:
    """A finalized volume3d store: ``n_subjects`` subjects with one T1w each, 75 % train / 25 % val."""
    store = VolumeStore.create_or_open(path, StoreLayout(kind="volume3d", shape=tuple(shape),
                                                         spacing=(1.0, 1.0, 1.0)))
    for k in range(n_subjects):
        subject = f"sub-{k:02d}"
        record = {"subject": subject, "session": None, "dataset": "smoke", "modality": "T1w", "modality_id": 0,
                  "source_path": f"/synthetic/{subject}.nii.gz", "source_sha256": "0" * 64,
                  "affine": np.eye(4).tolist(), "shape": list(shape)}
        store.write_volume(f"smoke_{subject}_T1w", volume(k, shape), record)
    finalize_store(store, fractions=(0.75, 0.25, 0.0), seed=0, stratify="dataset")
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for engine subprocesses: PyTorch reference kernels, one thread, repo importable."""
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "BSYNTH_FAULTS",
                "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_STEP_ID", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        env.pop(key, None)
    env.update({"BSYNTH_DISABLE_TRITON": "1", "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}", "PYTHONUNBUFFERED": "1",
                "DS_BUILD_OPS": "0"})
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_args(stage: str, config: Path, store: Path, run_dir: Path, *overrides: str,
               resume: bool = False) -> list[str]:
    args = [stage, "--config", str(config), "--store", str(store), "--run-dir", str(run_dir), *overrides]
    return args + (["--resume", "auto"] if resume else [])


def run(cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600,
        cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run a command, capturing output; the test shows it on failure."""
    return subprocess.run(list(cmd), env=env or subprocess_env(), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "logs" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(run_dir: Path, key: str) -> dict[int, float]:
    """step -> value of ``key`` from the training records of metrics.jsonl."""
    return {r["step"]: r[key] for r in metrics(run_dir) if key in r}


SMOKE_ENGINE = {
    "micro_batch": 2, "grad_accum": 1, "max_steps": 6, "val_every": 0, "ckpt_every": 0, "log_every": 1,
    "progress": False, "tensorboard": False, "ema_decay": 0.9, "seed": 3,
    "schedule": {"name": "cosine", "warmup": 2, "min_lr_ratio": 0.1},
}


def write_config(path: Path, stage: str, engine: dict[str, Any] | None = None, recipe: dict[str, Any] | None = None,
                 data: dict[str, Any] | None = None) -> Path:
    """A run config YAML for the smoke stages with small, fast defaults."""
    import yaml

    base_recipe = {"smoke-vaegan": {"channels": 4, "latent_channels": 2, "disc_channels": 4, "groups": 2,
                                    "disc_start": 2, "lr": 2e-3, "disc_lr": 2e-3},
                   "smoke-denoiser": {"channels": 8, "time_dim": 16, "groups": 4, "lr": 2e-3}}[stage]
    cfg = {"stage": stage, "engine": {**SMOKE_ENGINE, **(engine or {})},
           "data": {"num_workers": 0, **(data or {})}, "recipe": {**base_recipe, **(recipe or {})}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def counting_stage() -> type:
    """Registers and returns ``test-counting-denoiser``: smoke-denoiser whose ``state_dict`` lists the steps it
    trained (plus a tensor and a None, to exercise weights_only loading); ``loaded`` collects restored states."""
    import torch

    from bsynth_hpc.engine.registry import register_stage
    from smoke_recipe import SmokeDenoiserStage

    class CountingDenoiser(SmokeDenoiserStage):
        name = "test-counting-denoiser"
        loaded: list[Any] = []

        def __init__(self, config: Any, info: Any):
            super().__init__(config, info)
            self.seen: list[int] = []

        def loss(self, phase: str, batch: Any, ctx: Any) -> Any:
            self.seen.append(int(ctx.step))
            return super().loss(phase, batch, ctx)

        def state_dict(self) -> dict[str, Any]:
            return {"seen": list(self.seen), "as_tensor": torch.tensor(self.seen), "note": None}

        def load_state_dict(self, state: Any) -> None:
            CountingDenoiser.loaded.append(state)
            self.seen = list(state["seen"])

    register_stage(CountingDenoiser.name, CountingDenoiser)
    return CountingDenoiser


COUNTING_MAIN = ("import sys; sys.path.insert(0, %r); import engine_support; engine_support.counting_stage(); "
                 "from bsynth_hpc.engine.run import train_main; sys.exit(train_main(sys.argv[1:]))"
                 % str(Path(__file__).resolve().parent))
"""``python -c COUNTING_MAIN ARGS...``: ``bsynth train`` with ``test-counting-denoiser`` registered."""
