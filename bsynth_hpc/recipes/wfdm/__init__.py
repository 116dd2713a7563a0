"""WFDM (seed 003): Wavelet-Fusion VAE compressor (stage ``wfdm-vae``) + modality/metadata-conditioned
3D U-Net latent diffusion (stage ``wfdm-ldm``); ``bsynth encode`` in between, ``bsynth sample wfdm`` after.

Importing this package imports nothing heavy: the recipe names its parts as ``"module:attr"``
strings that the engine registry loads on demand.
"""
from __future__ import annotations

from ...engine.registry import PipelineStep, Recipe

RECIPE = Recipe(
    name="wfdm",
    description="WF-VAE compressor + modality/metadata-conditioned 3D latent diffusion (seed 003)",
    stages={
        "wfdm-vae": "bsynth_hpc.recipes.wfdm.stages:WFDMVAEStage",
        "wfdm-ldm": "bsynth_hpc.recipes.wfdm.stages:WFDMLDMStage",
    },
    default_stage="wfdm-ldm",
    sampler="bsynth_hpc.recipes.wfdm.sampling:generate",
    sample_config="bsynth_hpc.recipes.wfdm.sampling:WFDMSampleConfig",
    sample_options="bsynth_hpc.recipes.wfdm.sampling:add_wfdm_sample_options",
    demo="bsynth_hpc.recipes.wfdm.demo:DEMO",
    configs={
        "wfdm-vae": {"full": "wfdm-vae.yaml", "tiny": "wfdm-vae_tiny.yaml"},
        "wfdm-ldm": {"full": "wfdm-ldm.yaml", "tiny": "wfdm-ldm_tiny.yaml"},
    },
    pipeline=(PipelineStep("wfdm-vae", "train", "wfdm-vae"), PipelineStep("encode", "encode"),
              PipelineStep("wfdm-ldm", "train", "wfdm-ldm"), PipelineStep("sample-eval", "finish")),
)
