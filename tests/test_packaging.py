"""A non-editable install is a working product: build the wheel from a copy of the checkout, check
what it holds (bsynth_hpc.kernels / .prep / .configs, no top-level kernels, data_prep or benchmarks),
install it into a throwaway folder and run ``bsynth demo`` from there, away from the source tree, at
the smallest size tests/test_demo.py uses (about a minute on one CPU core)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# top-level folders that install under another name (setup.py package_dir)
INSTALLED_AS = {"bsynth_hpc": "bsynth_hpc", "kernels": "bsynth_hpc/kernels", "data_prep": "bsynth_hpc/prep",
                "configs": "bsynth_hpc/configs"}


def _source_files() -> list[str]:
    """The checkout's files as git sees them (tracked and not ignored), without deleted ones."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return [f for f in listed if f and (REPO / f).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the checkout (the build writes build/ and *.egg-info into its source)."""
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    for name in _source_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(root / "wheels")], check=True, capture_output=True, timeout=300)
    (built,) = (root / "wheels").glob("bsynth_hpc-*.whl")
    return built


def test_wheel_holds_the_package_and_its_configs_only(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    top = {n.split("/")[0] for n in names}
    assert not top & {"kernels", "data_prep", "benchmarks", "tests", "configs"}, sorted(top)
    assert {t for t in top if not t.endswith(".dist-info")} == {"bsynth_hpc"}
    configs = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert configs and all(f"bsynth_hpc/configs/{c}" in names for c in configs)
    # every module of the checkout's package folders is in the wheel, under its installed name
    missing = [f for f in _source_files() if f.endswith(".py") and f.split("/")[0] in INSTALLED_AS
               and f"{INSTALLED_AS[f.split('/')[0]]}/{f.split('/', 1)[1]}" not in names]
    assert not missing, missing


def test_demo_runs_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    # -S: no .pth files, so the editable install's finder cannot hand out the checkout; the venv's
    # site-packages still provide the dependencies (torch, zarr, ...), after the installed wheel.
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BSYNTH_"))}
    env.update({"PYTHONPATH": os.pathsep.join([str(site), *deps]), "BSYNTH_DISABLE_TRITON": "1",
                "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def python(*args: str, timeout: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-S", *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=timeout)

    where = python("-c", "import json, bsynth_hpc, bsynth_hpc.configs, bsynth_hpc.kernels, bsynth_hpc.prep; "
                         "print(json.dumps([m.__file__ for m in (bsynth_hpc, bsynth_hpc.configs, "
                         "bsynth_hpc.kernels, bsynth_hpc.prep)]))", timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    assert all(Path(f).resolve().is_relative_to(site.resolve()) for f in json.loads(where.stdout)), where.stdout

    out = tmp_path / "demo"
    argv = ["-m", "bsynth_hpc.cli", "demo", "--out", str(out), "--subjects", "6", "--spacing", "8", "--workers", "1"]
    for stage in ("wfdm-vae", "wfdm-ldm"):
        argv += ["--override", f"{stage}:engine.max_steps=2", "--override", f"{stage}:engine.val_every=0"]
    proc = python(*argv, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["recipe"] == "wfdm" and summary["exit_code"] == 0
    assert list(summary["step_seconds"]) == ["cohort", "prep", "wfdm-vae", "encode", "wfdm-ldm", "sample", "eval",
                                             "fidelity"]
    assert (out / "samples" / "samples.csv").is_file() and (out / "eval" / "synth" / "metrics.json").is_file()
    assert (out / "eval" / "fidelity" / "fidelity.json").is_file()
    assert "Traceback" not in proc.stderr
