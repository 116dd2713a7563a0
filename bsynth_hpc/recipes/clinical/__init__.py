"""Seed 002 (``clinical``): clinically conditioned 3D VAE-GAN with a learned prior p(z|c) and a diffusion prior
over the 7-D clinical vector. Stages, in chain order: ``clinical-aux`` (the frozen AD/CN + ROI heads),
``clinical`` (the VAE-GAN, Algorithm 1), ``clinical-prior`` (the clinical-vector DDPM, Algorithm 2);
``bsynth sample clinical`` (Algorithm 3, manual c or from the prior), ``bsynth eval clinical``.

Importing this package imports nothing heavy: the recipe names its parts as ``"module:attr"``
strings that the engine registry loads on demand.
"""
from __future__ import annotations

from ...engine.registry import PipelineStep, Recipe

RECIPE = Recipe(
    name="clinical",
    description="clinically conditioned 3D VAE-GAN + diffusion prior over clinical vectors (seed 002)",
    stages={
        "clinical-aux": "bsynth_hpc.recipes.clinical.aux:ClinicalAuxStage",
        "clinical": "bsynth_hpc.recipes.clinical.vaegan:ClinicalStage",
        "clinical-prior": "bsynth_hpc.recipes.clinical.prior:ClinicalPriorStage",
    },
    default_stage="clinical",
    sampler="bsynth_hpc.recipes.clinical.sampling:generate",
    sample_config="bsynth_hpc.recipes.clinical.sampling:ClinicalSampleConfig",
    sample_options="bsynth_hpc.recipes.clinical.sampling:add_clinical_sample_options",
    demo="bsynth_hpc.recipes.clinical.demo:DEMO",
    configs={
        "clinical-aux": {"full": "clinical-aux.yaml", "tiny": "clinical-aux_tiny.yaml"},
        "clinical": {"full": "clinical.yaml", "tiny": "clinical_tiny.yaml"},
        "clinical-prior": {"full": "clinical-prior.yaml", "tiny": "clinical-prior_tiny.yaml"},
    },
    pipeline=(PipelineStep("clinical-aux", "train", "clinical-aux"), PipelineStep("clinical", "train", "clinical"),
              PipelineStep("clinical-prior", "train", "clinical-prior"), PipelineStep("sample-eval", "finish")),
)
