"""DiT-3D recipe (seed 000): TLE VAE-GAN compressor (``dit3d-vae``) + class-conditional DiT-3D
latent diffusion (``dit3d``), class-guided sampling (``bsynth sample dit3d``) and the
synthetic-augmentation classifier study (``bsynth study augment``).

Importing this package imports nothing heavy: the recipe names its parts as ``"module:attr"``
strings that the engine registry loads on demand.
"""
from __future__ import annotations

from ...engine.registry import PipelineStep, Recipe

RECIPE = Recipe(
    name="dit3d",
    description="VAE-GAN compressor + class-conditional DiT-3D with 3D window attention (seed 000)",
    stages={
        "dit3d-vae": "bsynth_hpc.recipes.dit3d.vae:DiT3dVAEStage",
        "dit3d": "bsynth_hpc.recipes.dit3d.ldm:DiT3dStage",
    },
    default_stage="dit3d",
    sampler="bsynth_hpc.recipes.dit3d.sampling:generate",
    sample_config="bsynth_hpc.recipes.dit3d.sampling:DiT3dSampleConfig",
    sample_options="bsynth_hpc.recipes.dit3d.sampling:add_dit3d_sample_options",
    demo="bsynth_hpc.recipes.dit3d.demo:DEMO",
    configs={
        "dit3d-vae": {"full": "dit3d-vae.yaml", "tiny": "dit3d-vae_tiny.yaml"},
        "dit3d": {"full": "dit3d_tle.yaml", "tiny": "dit3d_tiny.yaml"},
    },
    pipeline=(PipelineStep("dit3d-vae", "train", "dit3d-vae"), PipelineStep("encode", "encode"),
              PipelineStep("dit3d", "train", "dit3d"), PipelineStep("sample-study", "finish")),
)
