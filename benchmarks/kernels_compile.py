"""Ahead-of-time compile check of every Triton kernel for Hopper (sm_90) and Ampere (sm_80), no GPU needed.

For each kernel the wrappers launch at the recipes' real shapes, the launch is built by the wrapper's own
planning function (`plan_dwt`/`plan_idwt`, `group_norm_silu.plan_forward`/`plan_backward`,
`window_attention3d.plan_forward`/`plan_backward`) on meta tensors, for the target's SM count, so the
signature, the integer/alignment specialisation (triton's own binder), the constexprs and
num_warps/num_stages are exactly those of a launch on that GPU. Each is compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` through the ptxas that ships with
triton, and the row records

* ``regs``, ``spill_stores``/``spill_loads`` (bytes), ``stack`` (bytes): ``ptxas -v`` of that compile;
* ``smem``: the shared memory triton allocates (dynamic, per CTA);
* ``tensor_core``: wgmma / mma.sync instructions in the PTX and HGMMA / HMMA in the SASS;
* ``occupancy``: resident CTAs and warps per SM from the register, shared-memory, thread and CTA
  limits of the target (the CUDA occupancy calculator's rules), and which limit binds;
* ``grid``/``programs`` and ``programs_per_sm`` against the target's SM count (132 on H100/H200,
  108 on A100).

Identical compilations (same kernel, signature, constexprs, options) are compiled once and shared.
The JSON (``benchmarks/results/kernels_compile.json``) is device-independent: triton version, targets,
one row per (case, kernel, target). Exit status 1 on any compile error and, with
``--require-no-spills attention`` (or ``all``), on any spill in those kernels.

    python -m benchmarks.kernels_compile                      # full sweep, both targets
    python -m benchmarks.kernels_compile --subset ci --targets sm_90 --require-no-spills attention
    bsynth bench compile -- --require-no-spills attention
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402

from benchmarks.common import RESULTS_DIR  # noqa: E402
from benchmarks.dit3d_training import LATENTS  # noqa: E402
from bsynth_hpc.engine.config import packaged_config  # noqa: E402
from bsynth_hpc.kernels import group_norm_silu as gns  # noqa: E402
from bsynth_hpc.kernels import haar_dwt3d as haar  # noqa: E402
from bsynth_hpc.kernels import window_attention3d as wa  # noqa: E402
from bsynth_hpc.kernels.launch import Launch  # noqa: E402

OUT = RESULTS_DIR / "kernels_compile.json"
META = torch.device("meta")


@dataclass(frozen=True)
class Target:
    """A GPU generation: compute capability and the per-SM limits the occupancy is computed from."""

    name: str
    arch: int
    sm_count: int           # SMs of the GPU the grid is compared with
    gpu: str
    smem_per_sm: int        # bytes of shared memory an SM can give to CTAs
    smem_per_cta: int       # most one CTA may use
    regs_per_sm: int = 65536
    max_warps_per_sm: int = 64
    max_ctas_per_sm: int = 32
    reserved_smem_per_cta: int = 1024   # the driver reserves 1 KB per CTA on sm_80+


TARGETS = {
    "sm_90": Target("sm_90", 90, 132, "H100/H200 SXM", smem_per_sm=228 * 1024, smem_per_cta=227 * 1024),
    "sm_80": Target("sm_80", 80, 108, "A100", smem_per_sm=164 * 1024, smem_per_cta=163 * 1024),
}


def occupancy(target: Target, regs: int, smem: int, num_warps: int) -> dict[str, Any]:
    """Resident CTAs/warps per SM (registers are allocated per warp in units of 256; shared memory per
    CTA plus the reserved 1 KB); `limiter` names the binding limit."""
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256
    warps_by_regs = target.regs_per_sm // regs_per_warp
    limits = {"registers": warps_by_regs // num_warps, "threads": target.max_warps_per_sm // num_warps,
              "ctas": target.max_ctas_per_sm}
    if smem:
        fits = smem <= target.smem_per_cta
        limits["shared_memory"] = target.smem_per_sm // (smem + target.reserved_smem_per_cta) if fits else 0
    ctas = min(limits.values())
    limiter = min(limits, key=lambda k: limits[k])
    return {"ctas_per_sm": ctas, "warps_per_sm": ctas * num_warps,
            "occupancy": round(ctas * num_warps / target.max_warps_per_sm, 3), "limiter": limiter}


# --------------------------------------------------------------------------------------------- compile
@dataclass
class Compiled:
    regs: int
    spill_stores: int
    spill_loads: int
    stack: int
    smem: int
    tensor_core: dict[str, int]
    seconds: float


def _ptxas_numbers(log: str) -> tuple[int, int, int, int]:
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spills is None:
        raise RuntimeError(f"could not read the ptxas -v report:\n{log}")
    return int(regs.group(1)), int(spills.group(2)), int(spills.group(3)), int(spills.group(1))


def _sass_counts(cubin: bytes) -> dict[str, int]:
    """HGMMA/HMMA instructions in the SASS (cuobjdump shipped with triton); empty if unavailable."""
    from triton import knobs  # lazy: triton is optional for the package; this tool needs it

    tool = knobs.nvidia.cuobjdump.path
    if not tool or not Path(tool).is_file():
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, timeout=120).stdout
    return {"sass_hgmma": len(re.findall(r"\bHGMMA\.", sass)), "sass_hmma": len(re.findall(r"\bHMMA\.", sass))}


class Compiler:
    """Compiles launches for one target with triton's own specialisation of the launch arguments."""

    def __init__(self, target: Target) -> None:
        from triton import knobs  # lazy: see _sass_counts
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend

        self.target = target
        self.gpu_target = GPUTarget("cuda", target.arch, 32)
        self.backend = make_backend(self.gpu_target)
        self._cache: dict[str, Compiled] = {}
        knobs.nvidia.dump_ptxas_log = True      # ptxas -v of each compile goes to stdout (captured below)
        knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its report

    @property
    def distinct(self) -> int:
        """Distinct compilations so far (identical launches share one)."""
        return len(self._cache)

    def specialise(self, launch: Launch) -> tuple[Any, dict, dict, dict, Any]:
        """(kernel, signature, constexprs, attrs, options) as JITFunction.run would build them."""
        from triton.runtime.jit import create_function_from_signature  # lazy: see _sass_counts

        kernel = launch.kernel
        if not hasattr(kernel, "_pack_args"):
            raise RuntimeError(f"{launch.name} is not a JITFunction (TRITON_INTERPRET=1?); run this check "
                               "without TRITON_INTERPRET")
        kwargs = dict(launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages)
        binder = create_function_from_signature(kernel.signature, kernel.params, self.backend)
        bound, specialization, options = binder(*launch.args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(self.backend, kwargs, bound, specialization,
                                                                  options)
        return kernel, signature, constexprs, attrs, options

    def compile(self, launch: Launch) -> Compiled:
        import triton  # lazy: see _sass_counts
        from triton.compiler import ASTSource

        kernel, signature, constexprs, attrs, options = self.specialise(launch)
        key = repr((launch.name, sorted(signature.items()), sorted(constexprs.items(), key=str),
                    sorted(attrs.items(), key=str), sorted(options.__dict__.items(), key=str)))
        if key in self._cache:
            return self._cache[key]
        log = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=self.gpu_target,
                                      options=options.__dict__)
        seconds = time.perf_counter() - start
        regs, stores, loads, stack = _ptxas_numbers(log.getvalue())
        ptx = compiled.asm["ptx"]
        cores = {"ptx_wgmma": len(re.findall(r"\bwgmma\.mma_async", ptx)),
                 "ptx_mma": len(re.findall(r"\bmma\.sync", ptx)), **_sass_counts(compiled.asm["cubin"])}
        result = Compiled(regs, stores, loads, stack, int(compiled.metadata.shared), cores, round(seconds, 2))
        self._cache[key] = result
        return result


# --------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One op at one shape: `build(target)` returns the (role, Launch) pairs its wrapper would run."""

    op: str
    name: str
    dtype: str
    shape: str
    build: Callable[[Target], list[tuple[str, Launch]]]
    ci: bool = False        # part of the quick CI subset


def _meta(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device=META)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dwt_cases() -> Iterator[Case]:
    """Forward DWT (replicating edge) and its adjoint (zero-extending), inverse (cropping) and its
    adjoint (folding): the four launches of `_HaarTransform3d`, at the WF-VAE's stage-1 input
    1x1x192x224x160 and a 64-channel feature map 2x64x96x112x80."""
    for shape in ((1, 1, 192, 224, 160), (2, 64, 96, 112, 80)):
        for dtype in (torch.float32, torch.bfloat16):
            def build(_t: Target, shape=shape, dtype=dtype) -> list[tuple[str, Launch]]:
                x = _meta(shape, dtype)
                launch_fwd, y = haar.plan_dwt(x, replicate=True)
                launch_adj, _ = haar.plan_dwt(x, replicate=False)
                launch_inv, _ = haar.plan_idwt(y, tuple(shape[2:]), fold=False)
                launch_fold, _ = haar.plan_idwt(y, tuple(shape[2:]), fold=True)
                return [("dwt", launch_fwd), ("dwt_zero_extend (idwt backward)", launch_adj),
                        ("idwt", launch_inv), ("idwt_fold (dwt backward)", launch_fold)]
            yield Case("haar_dwt3d", "x".join(map(str, shape)), _dtype_name(dtype), "x".join(map(str, shape)), build,
                       ci=dtype == torch.float32 and shape[1] == 1)


def gn_cases() -> Iterator[Case]:
    """GroupNorm + SiLU forward and backward at 1x128x96x112x80 with 32 groups, affine, with and without
    the adaptive scale/shift."""
    shape, groups = (1, 128, 96, 112, 80), 32
    for dtype in (torch.float32, torch.bfloat16):
        for modulated in (False, True):
            def build(t: Target, dtype=dtype, modulated=modulated) -> list[tuple[str, Launch]]:
                x = _meta(shape, dtype)
                w, b = _meta((shape[1],), torch.float32), _meta((shape[1],), torch.float32)
                s = _meta(shape[:2], dtype) if modulated else None
                plan = gns._make_plan(x, groups, None, gns.programs_for_sms(t.sm_count))
                fwd, y, mean, rstd = gns.plan_forward(x, w, b, s, s, groups, 1e-5, plan)
                bwd, _, _ = gns.plan_backward(torch.empty_like(y), x, w, b, s, s, mean, rstd, groups, plan, True)
                return [("forward", launch) for launch in fwd] + [("backward", launch) for launch in bwd]
            name = f"{'x'.join(map(str, shape))} G{groups}" + (" +scale/shift" if modulated else "")
            yield Case("group_norm_silu", name, _dtype_name(dtype), "x".join(map(str, shape)), build,
                       ci=dtype == torch.float32 and modulated)


def _dit3d_settings(config: str, latent: Sequence[int]) -> dict[str, Any]:
    """Token grid, heads, head_dim, window (clipped to the grid as DiT3d does), shift and micro batch of a
    packaged DiT-3D config on the latent `latent` (C, X, Y, Z)."""
    cfg = yaml.safe_load(packaged_config(config).read_text())
    r = cfg["recipe"]
    grid = tuple(s // p for s, p in zip(latent[1:], r["patch_size"]))
    window = tuple(min(w, g) for w, g in zip(r["window_size"], grid))
    shift = tuple(0 if w >= g else w // 2 for w, g in zip(r["window_size"], grid))
    return {"grid": grid, "heads": r["num_heads"], "head_dim": r["hidden_size"] // r["num_heads"],
            "window": window, "shift": shift, "micro_batch": cfg["engine"]["micro_batch"]}


ATTENTION_CONFIGS = (("dit3d_tle.yaml", "4x28x34x28"), ("dit3d_tle.yaml", "4x48x56x40"), ("dit3d_tiny.yaml", "4x28x34x28"))
"""(config, latent): 000's latents of 112x136x112 volumes, the f = 4 latents of 192x224x160 volumes."""
ATTENTION_PRECISIONS = ((torch.float32, "tf32"), (torch.float32, "ieee"), (torch.bfloat16, None))


def attention_cases() -> Iterator[Case]:
    """Window attention forward, dq, dk/dv (and the d(bias) kernel where it runs) at the DiT-3D token grids
    of configs/dit3d_tle.yaml and configs/dit3d_tiny.yaml, batch 2 (the grid-fill case) and the config's
    micro batch, unshifted and shifted blocks, rel-pos bias with its gradient."""
    for config, latent_name in ATTENTION_CONFIGS:
        st = _dit3d_settings(config, LATENTS[latent_name])
        batches = sorted({2, st["micro_batch"]})
        for batch in batches:
            for shifted in (False, True):
                shift = st["shift"] if shifted else (0, 0, 0)
                for dtype, precision in ATTENTION_PRECISIONS:
                    def build(t: Target, st=st, batch=batch, shift=shift, dtype=dtype, precision=precision
                              ) -> list[tuple[str, Launch]]:
                        q = _meta((batch, st["heads"], *st["grid"], st["head_dim"]), dtype)
                        n = st["window"][0] * st["window"][1] * st["window"][2]
                        bias = _meta((st["heads"], n, n), torch.float32)
                        geo = wa._Geometry(q, st["window"], shift)
                        plan = wa.plan_for(q, geo, precision=precision, arch=t.arch, sm_count=t.sm_count)
                        scale = st["head_dim"] ** -0.5
                        fwd, o, lse = wa.plan_forward(q, q, q, bias, geo, scale, plan)
                        bwd = wa.plan_backward(torch.empty_like(o), q, q, q, bias, o, lse, geo, scale, plan, True)
                        return [("forward", fwd)] + [("backward", launch) for launch in bwd.launches]
                    grid = "x".join(map(str, st["grid"]))
                    name = (f"{config.removesuffix('.yaml')} latent {latent_name} tokens {grid} B{batch} "
                            f"H{st['heads']} D{st['head_dim']} window {'x'.join(map(str, st['window']))} "
                            f"shift {'x'.join(map(str, shift))}")
                    label = _dtype_name(dtype) + (f"/{precision}" if precision else "")
                    ci = (config == "dit3d_tle.yaml" and latent_name == "4x28x34x28" and batch == 2 and shifted
                          and precision != "ieee")
                    yield Case("window_attention3d", name, label, f"{batch}x{st['heads']}x{grid}x{st['head_dim']}",
                               build, ci=ci)


def all_cases() -> list[Case]:
    return [*dwt_cases(), *gn_cases(), *attention_cases()]


# --------------------------------------------------------------------------------------------- run
def _launch_facts(launch: Launch) -> dict[str, Any]:
    tiles = {k: v for k, v in launch.constexprs.items() if k.startswith("BLOCK") or k in ("PREC", "UPCAST")}
    return {"kernel": launch.name, "grid": list(launch.grid), "programs": launch.programs, "constexprs": tiles,
            "num_warps": launch.num_warps, "num_stages": launch.num_stages}


def run_case(case: Case, compiler: Compiler) -> list[dict[str, Any]]:
    """One row per launch of `case` on the compiler's target (an `error` field instead of numbers on failure)."""
    t = compiler.target
    rows = []
    for role, launch in case.build(t):
        row: dict[str, Any] = {"op": case.op, "case": case.name, "dtype": case.dtype, "shape": case.shape,
                               "role": role, "target": t.name, **_launch_facts(launch),
                               "programs_per_sm": round(launch.programs / t.sm_count, 2)}
        try:
            c = compiler.compile(launch)
        except Exception as err:  # a compile error is the finding: record it, fail at the end
            row["error"] = f"{type(err).__name__}: {str(err).strip()[:2000]}"
        else:
            row.update(regs=c.regs, spill_stores=c.spill_stores, spill_loads=c.spill_loads, stack=c.stack,
                       smem=c.smem, tensor_core=c.tensor_core, compile_s=c.seconds,
                       **occupancy(t, c.regs, c.smem, launch.num_warps))
        rows.append(row)
    return rows


def failures(rows: list[dict[str, Any]], require_no_spills: str | None) -> list[str]:
    """Messages for compile errors and, per `require_no_spills` ('attention' or 'all'), for spills."""
    out = [f"{r['target']} {r['kernel']} [{r['case']}, {r['dtype']}]: {r['error']}" for r in rows if "error" in r]
    for r in rows:
        spilled = "error" not in r and (r["spill_stores"] or r["spill_loads"])
        if spilled and (require_no_spills == "all" or (require_no_spills == "attention"
                                                       and r["op"] == "window_attention3d")):
            out.append(f"{r['target']} {r['kernel']} [{r['case']}, {r['dtype']}]: {r['spill_stores']} B spill "
                       f"stores, {r['spill_loads']} B spill loads at {r['regs']} registers")
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of the rows (kernel, dtype, shape, regs, spills, smem, occupancy, grid/SMs)."""
    head = (f"{'target':6} {'kernel':28} {'dtype':10} {'shape':22} {'tile':14} {'w':>2} {'regs':>4} "
            f"{'spill':>6} {'smem':>7} {'occ':>5} {'ctas/SM':>7} {'programs':>8} {'/SM':>6} {'tc':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        tile = "x".join(str(r["constexprs"][k]) for k in ("BLOCK_M", "BLOCK_N") if k in r["constexprs"]) or \
            str(r["constexprs"].get("BLOCK", r["constexprs"].get("BLOCK_P", "")))
        if "error" in r:
            lines.append(f"{r['target']:6} {r['kernel']:28} {r['dtype']:10} {r['shape']:22} COMPILE ERROR")
            continue
        tc = r["tensor_core"]
        lines.append(f"{r['target']:6} {r['kernel'][:28]:28} {r['dtype']:10} {r['shape'][:22]:22} {tile:14} "
                     f"{r['num_warps']:>2} {r['regs']:>4} {r['spill_stores']:>6} {r['smem']:>7} "
                     f"{r['occupancy']:>5} {r['ctas_per_sm']:>7} {r['programs']:>8} {r['programs_per_sm']:>6} "
                     f"{tc.get('ptx_wgmma', 0) + tc.get('ptx_mma', 0):>5}")
    return "\n".join(lines)


def _reexec_without_interpreter(argv: Sequence[str]) -> int:
    """TRITON_INTERPRET=1 turns @triton.jit into interpreted functions that cannot be compiled: rerun
    this check in a fresh process without it (the kernels are plain JIT functions there)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "benchmarks.kernels_compile", *argv], env=env, cwd=REPO).returncode


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bsynth bench compile", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    p.add_argument("--subset", choices=("full", "ci"), default="full",
                   help="ci: one case per kernel (DWT, GN+SiLU with scale/shift, DiT-3D attention fp32/bf16)")
    p.add_argument("--ops", nargs="+", choices=("haar_dwt3d", "group_norm_silu", "window_attention3d"), default=None)
    p.add_argument("--require-no-spills", choices=("attention", "all"), default=None,
                   help="exit 1 if a kernel of this class spills registers")
    p.add_argument("--out", type=Path, default=OUT, help=f"JSON path (default {OUT.relative_to(REPO)})")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        import triton
    except Exception as err:  # pragma: no cover - platform without triton
        print(f"bsynth bench compile: triton is not importable ({err})", file=sys.stderr)
        return 1
    if os.environ.get("TRITON_INTERPRET") == "1":
        return _reexec_without_interpreter(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, stated (silences its warning)
    cases = [c for c in all_cases() if (args.subset == "full" or c.ci) and (args.ops is None or c.op in args.ops)]
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    distinct = 0
    for name in args.targets:
        compiler = Compiler(TARGETS[name])
        for case in cases:
            rows.extend(run_case(case, compiler))
        distinct += compiler.distinct
    payload = {
        "benchmark": "kernels_compile",
        "triton": triton.__version__,
        "torch": torch.__version__,
        "subset": args.subset,
        "targets": {n: TARGETS[n].__dict__ for n in args.targets},
        "distinct_compilations": distinct,
        "rows": rows,
    }
    problems = failures(rows, args.require_no_spills)
    payload["failures"] = problems
    payload["wall_s"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    if not args.quiet:
        print(table(rows))
        print(f"\n{len(rows)} launches, {payload['wall_s']} s -> {args.out}")
    for msg in problems:
        print(f"FAIL {msg}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
