"""Single-card memory planner: fit a stage's full 3D volumes into a 6-24 GB GPU.

In 3D autoencoders and denoisers the activations dominate memory, and ZeRO does not shrink
them; what does is a smaller micro-batch (with gradient accumulation keeping the global
batch), half precision, activation checkpointing, and - for the static part - moving the
optimizer state to the CPU (ZeRO-Offload through the deepspeed backend on one GPU).

Prediction, per candidate (micro-batch m, precision, checkpointing, offload)::

    peak = static + act(m)            static (P = trainable parameters of all models):
                                        no offload: 16 P (fp32 weights, grads, Adam m and v)
                                        optimizer offload: 4 P (bf16/fp16 weights and grads)
    act(m) = m * (a + b * voxels)     a, b fitted from two probes of the stage's real loss and
                                      backward at micro-batch 1 and two reduced volume sizes,
                                      measured with torch's MemTracker (activations + temporary
                                      buffers at the peak), on the run's device and precision

Activations of convolutional 3D models grow linearly with the voxel count, which the two
probes check (the fit is reported). The usable budget is ``gpu_mem_gb * 0.92 - 0.6 GiB``
(CUDA context, allocator fragmentation and cuDNN workspaces are outside the tracked peak).

Choice: the fastest mode that fits - no checkpointing before checkpointing, no offload
before offload - and in it the largest micro-batch up to the configured micro_batch *
grad_accum that divides it, so the global batch is unchanged. Nothing fits -> MemoryPlanError
with the smallest requirement found and what to change.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from .config import RunConfig
from .data import batch_to_device
from .distributed import DistInfo
from .errors import MemoryPlanError
from .registry import get_stage_class
from .stage import StageInfo, StepContext

GIB = 2**30
USABLE_FRACTION = 0.92
RESERVE_GIB = 0.6
STANDARD_BUDGETS = (6, 8, 12, 16, 24)
_LATE_STEP = 10**9  # probe steps run every phase term (e.g. the adversarial loss after its warm-up)


@dataclass
class Candidate:
    """One way to run the stage and its predicted peak (bytes)."""

    precision: str
    checkpointing: bool
    offload: str
    micro_batch: int
    grad_accum: int
    static_bytes: int
    activation_bytes: int

    @property
    def predicted_bytes(self) -> int:
        return self.static_bytes + self.activation_bytes

    def describe(self) -> str:
        return (f"{self.precision:5s} ckpt={'on ' if self.checkpointing else 'off'} offload={self.offload:4s} "
                f"micro_batch={self.micro_batch:<3d} grad_accum={self.grad_accum:<3d} "
                f"predicted {self.predicted_bytes / GIB:7.2f} GiB")


@dataclass
class ActivationFit:
    """act(m=1, voxels) = a + b * voxels for one (precision, checkpointing)."""

    a: float
    b: float
    probes: list[tuple[int, int]] = field(default_factory=list)  # (voxels, bytes)

    def at(self, voxels: int, micro_batch: int) -> int:
        return int(micro_batch * max(0.0, self.a + self.b * voxels))


@dataclass
class MemoryPlan:
    """The planner's decision and the table it chose from."""

    budget_gb: float
    usable_bytes: int
    volume_shape: tuple[int, ...]
    num_params: int
    target_batch: int
    chosen: Candidate
    candidates: list[Candidate]
    fits: dict[str, ActivationFit]

    def format(self) -> str:
        lines = [f"memory plan for a {self.budget_gb:g} GB card (usable {self.usable_bytes / GIB:.2f} GiB), volume "
                 f"{'x'.join(map(str, self.volume_shape))}, {self.num_params / 1e6:.2f} M trainable parameters, "
                 f"global batch {self.target_batch}:"]
        for c in self.candidates:
            mark = "->" if c is self.chosen else "  "
            lines.append(f"  {mark} {c.describe()}")
        return "\n".join(lines)


def detect_gpu_memory_gb(device: torch.device) -> float:
    """Total memory of the CUDA device in GB (GiB), for ``--gpu-mem-gb auto``."""
    if device.type != "cuda":
        raise MemoryPlanError("--gpu-mem-gb auto needs a CUDA device; on CPU give the budget explicitly "
                              "(e.g. --gpu-mem-gb 8) to see the plan for that card")
    return round(torch.cuda.get_device_properties(device).total_memory / GIB, 1)


def _precisions(requested: str, device: torch.device) -> list[str]:
    if requested != "fp32":
        return [requested]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return ["fp16", "fp32"]
    return ["bf16", "fp32"]


def _probe_shapes(shape: tuple[int, ...], multiple: int = 8, minimum: int = 32) -> list[tuple[int, ...]]:
    """Two reduced shapes (about 1/4 and 1/2 per axis), multiples of ``multiple`` voxels and at least
    ``minimum`` per axis (or the axis itself): smaller probes fall below the receptive field of strided
    discriminators and U-Nets, which then fail instead of being measured."""
    def reduced(frac: float) -> tuple[int, ...]:
        return tuple(min(s, max(minimum, int(round(s * frac / multiple)) * multiple)) for s in shape)

    out = [reduced(0.25), reduced(0.5)]
    if out[0] == out[1]:
        out[1] = tuple(min(s, o * 2) for s, o in zip(shape, out[0]))
    if out[0] == out[1]:
        out = [out[0], tuple(shape)]
    return out


def _probe_batch(item: dict[str, Any], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
                 ) -> dict[str, Any]:
    batch = default_collate([{**item, "sample_seed": 0, "sample_weight": 1.0}])
    image = batch["image"].float()
    batch["image"] = F.interpolate(image, size=shape, mode="trilinear", align_corners=False)
    return batch_to_device(batch, device, dtype)


def _memory_tracker() -> Any:
    """torch's MemTracker, made to skip gradient hooks on frozen parameters (a frozen perceptual network in
    the loss): MemTracker registers a hook on every parameter a forward meets and fails on those that do not
    require grad. Gradients are allocated before the probe, so no accounting depends on those hooks."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class FrozenSafeMemTracker(MemTracker):
        def _track_module_params_and_buffers(self, module: nn.Module, install_grad_hooks: bool = True
                                             ) -> tuple[int, int]:
            frozen = any(not p.requires_grad for p in module.parameters())
            return super()._track_module_params_and_buffers(module, install_grad_hooks and not frozen)

    return FrozenSafeMemTracker()


def measure_activation_bytes(stage: Any, item: dict[str, Any], shape: tuple[int, ...], device: torch.device,
                             precision: str, checkpointing: bool, seed: int = 0) -> int:
    """Peak activation + temporary bytes of a forward and backward of every phase (max), micro-batch 1."""
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    worst = 0
    for phase in stage.phases():
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            models = {k: m.to(device) for k, m in stage.build_models().items()}
        for m in models.values():
            if hasattr(m, "set_activation_checkpointing"):
                m.set_activation_checkpointing(checkpointing)
            m.train()
        # Other models stay trainable here (MemTracker hooks every parameter it meets); their extra
        # gradients are counted as gradients, not activations, so the fit is unaffected.
        # Gradients exist before the probe (as in steady-state accumulation) and no optimizer
        # step runs, so weights and gradients are constant while tracked and the tracked peak
        # is the activation peak; the static part is accounted analytically.
        for m in models.values():
            for p in m.parameters():
                p.grad = torch.zeros_like(p)
        batch = _probe_batch(item, shape, device, torch.float32)
        tracker = _memory_tracker()
        tracker.track_external(*models.values())
        ctx = StepContext(_LATE_STEP, phase.name, models, device, batch["sample_seed"], {},
                          True, torch.float32)
        autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with tracker:
            with autocast:
                loss = stage.loss(phase.name, batch, ctx)["loss"]
            loss.backward()
        peak = tracker.get_tracker_snapshot("peak")
        per_device = peak.get(device, next(iter(peak.values()))) if peak else {}
        act = sum(int(v) for k, v in per_device.items() if getattr(k, "name", "") in ("ACT", "TEMP", "OTH"))
        worst = max(worst, act)
        del models, tracker
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return worst


def fit_activations(stage: Any, item: dict[str, Any], shape: tuple[int, ...], device: torch.device,
                    precision: str, checkpointing: bool) -> ActivationFit:
    probes = []
    for s in _probe_shapes(shape):
        try:
            measured = measure_activation_bytes(stage, item, s, device, precision, checkpointing)
        except RuntimeError as exc:
            if s == tuple(shape) or "out of memory" in str(exc).lower():
                raise MemoryPlanError(f"memory probe of {stage.name} at {'x'.join(map(str, s))} failed: "
                                      f"{str(exc).splitlines()[0]}") from None
            s = tuple(shape)  # a model that needs more voxels than the reduced probe: measure the real shape
            measured = measure_activation_bytes(stage, item, s, device, precision, checkpointing)
        probes.append((math.prod(s), measured))
    (v1, y1), (v2, y2) = probes
    b = (y2 - y1) / (v2 - v1) if v2 != v1 else y2 / max(v2, 1)
    return ActivationFit(a=y1 - b * v1, b=b, probes=probes)


def static_bytes(num_params: int, offload: str) -> int:
    return num_params * (4 if offload != "none" else 16)


def _divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def plan_memory(stage: Any, item: dict[str, Any], shape: tuple[int, ...], budget_gb: float, device: torch.device,
                target_batch: int, precision: str = "fp32") -> MemoryPlan:
    """Choose micro-batch / precision / checkpointing / offload for ``budget_gb`` (module docstring)."""
    usable = int((budget_gb * USABLE_FRACTION - RESERVE_GIB) * GIB)
    with torch.random.fork_rng(devices=[]):
        num_params = sum(p.numel() for p in stage.build_models().values() for p in p.parameters())
    voxels = math.prod(shape)
    fits: dict[str, ActivationFit] = {}
    candidates: list[Candidate] = []
    chosen: Candidate | None = None
    smallest: Candidate | None = None
    for prec in _precisions(precision, device):
        for ckpt in (False, True):
            key = f"{prec}/{'ckpt' if ckpt else 'full'}"
            fits[key] = fit = fit_activations(stage, item, shape, device, prec, ckpt)
            offloads = ("none", "cpu") if prec != "fp32" and device.type == "cuda" else ("none",)
            for offload in offloads:
                static = static_bytes(num_params, offload)
                best_m = 0
                for m in range(target_batch, 0, -1):
                    if static + fit.at(voxels, m) <= usable:
                        best_m = m
                        break
                m = _divisor_at_most(target_batch, best_m) if best_m else 1
                cand = Candidate(prec, ckpt, offload, m, math.ceil(target_batch / m), static, fit.at(voxels, m))
                if smallest is None or cand.predicted_bytes < smallest.predicted_bytes:
                    smallest = cand
                if best_m:
                    candidates.append(cand)
                    if chosen is None:
                        chosen = cand
        if chosen is not None:
            break
    if chosen is None:
        assert smallest is not None
        raise MemoryPlanError(
            f"nothing fits a {budget_gb:g} GB card (usable {usable / GIB:.2f} GiB) for volumes "
            f"{'x'.join(map(str, shape))}: the smallest option ({smallest.describe()}) needs "
            f"{smallest.predicted_bytes / GIB:.2f} GiB. Use a larger card, a smaller volume (`bsynth prep --shape`), "
            "a smaller model (recipe channels), or train on several GPUs with ZeRO-3")
    return MemoryPlan(budget_gb, usable, tuple(shape), num_params, target_batch, chosen, candidates, fits)


def apply_plan(config: RunConfig, dist: DistInfo, device: torch.device) -> tuple[RunConfig, MemoryPlan]:
    """Plan for ``config.engine.gpu_mem_gb`` and return the config the plan implies (and the plan)."""
    if dist.world_size > 1:
        raise MemoryPlanError(f"--gpu-mem-gb plans a single-card run, but {dist.world_size} ranks were launched: "
                              "drop it for multi-GPU runs (use ZeRO stages and offload there)")
    budget = float(config.engine.gpu_mem_gb or 0)
    stage = get_stage_class(config.stage)(config.recipe, StageInfo(config.store, None, config.data, config.engine))
    dataset = stage.dataset(config.data.train_split)
    item = dataset[0]
    shape = tuple(item["image"].shape[1:])
    stage.info = dataclasses.replace(stage.info, volume_shape=shape)
    stage.setup(device)
    plan = plan_memory(stage, item, shape, budget, device, config.engine.per_rank_batch, config.engine.precision)
    c = plan.chosen
    changes: dict[str, Any] = {"micro_batch": c.micro_batch, "grad_accum": c.grad_accum, "precision": c.precision,
                               "activation_checkpointing": c.checkpointing}
    if c.offload != "none":
        changes.update(backend="deepspeed", zero_stage=2, offload_optimizer=c.offload)
    print(plan.format(), flush=True)
    return config.with_engine(**changes), plan


def report_measured(plan: MemoryPlan, device: torch.device) -> str:
    """Predicted vs measured peak after training (CUDA allocator peak; not measurable on CPU)."""
    predicted = plan.chosen.predicted_bytes / GIB
    if device.type != "cuda":
        return (f"memory plan: predicted peak {predicted:.2f} GiB (device peak is measured on CUDA only; this run "
                "used the CPU)")
    measured = torch.cuda.max_memory_allocated(device) / GIB
    return (f"memory plan: predicted peak {predicted:.2f} GiB, measured {measured:.2f} GiB "
            f"({(measured - predicted) / max(predicted, 1e-9) * 100:+.0f} %), budget {plan.budget_gb:g} GB")
