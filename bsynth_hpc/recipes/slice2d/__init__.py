"""2D slice latent diffusion recipe (seeds 001 and 004): a slice VAE (``slice2d-vae``) and a latent U-Net
(``slice2d-ldm``), unconditional with FFT loss / latent CutMix / adaptive DDIM stop (001) or
class-conditional with classifier-free guidance and class-balanced batches (004), on slice stores cut
from 3D stores by ``bsynth prep --slices-from``. Sampling: ``bsynth sample slice2d``; evaluation:
:mod:`.evaluate` (``bsynth eval fidelity`` reads its samples too); demo: ``bsynth demo --recipe slice2d``.

Importing this package imports nothing heavy: the recipe names its parts as ``"module:attr"``
strings that the engine registry loads on demand.
"""
from __future__ import annotations

from ...engine.registry import PipelineStep, Recipe

RECIPE = Recipe(
    name="slice2d",
    description="2D slice VAE + latent diffusion U-Net: unconditional (seed 001) or class-conditional (seed 004)",
    stages={
        "slice2d-vae": "bsynth_hpc.recipes.slice2d.vae:Slice2dVAEStage",
        "slice2d-ldm": "bsynth_hpc.recipes.slice2d.ldm:Slice2dLDMStage",
    },
    default_stage="slice2d-ldm",
    sampler="bsynth_hpc.recipes.slice2d.sampling:generate",
    sample_config="bsynth_hpc.recipes.slice2d.sampling:Slice2dSampleConfig",
    sample_options="bsynth_hpc.recipes.slice2d.sampling:add_slice2d_sample_options",
    demo="bsynth_hpc.recipes.slice2d.demo:DEMO",
    configs={
        "slice2d-vae": {"full": "slice2d-vae_001.yaml", "tiny": "slice2d-vae_tiny.yaml"},
        "slice2d-ldm": {"full": "slice2d-ldm_001.yaml", "tiny": "slice2d-ldm_tiny.yaml"},
    },
    pipeline=(PipelineStep("slice2d-vae", "train", "slice2d-vae"), PipelineStep("encode", "encode"),
              PipelineStep("slice2d-ldm", "train", "slice2d-ldm"), PipelineStep("sample-eval", "finish")),
)
