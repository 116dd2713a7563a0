"""Seed 002's clinically conditioned 3D VAE-GAN (§2.4) and the ε-predictor of its clinical diffusion prior.

Modules (one job each):

``config``          ``ClinicalModelConfig`` and its presets (full 128^3, tiny)
``embedding``       the MLP over the 7-D clinical vector, and its split into ROI ratios + label
``xception``        the 3D Xception encoder q(z|x, c)
``prior``           the learned conditional prior p(z|c) and its KL
``modulated``       StyleGAN2 modulated/demodulated style conv and separable conv
``decoder``         the clinical-style decoder g(z, c)
``discriminator``   the conditional separable 3D PatchGAN
``aux_heads``       the frozen AD/CN classifier and ROI regressor (separable 3D ResNet-18s)
``loss``            the generator objective of 002 eq. 2 with its lambda weights
``init``            Xavier-uniform initialisation
``clinical_prior``  the 3-layer MLP ε-predictor of the diffusion prior over c
``model``           ``ClinicalVAEGAN`` (encoder + prior + decoder), part factories, parameter counts
"""
from __future__ import annotations

from .aux_heads import ClinicalAuxHeads, SeparableBasicBlock3d, SeparableResNet3d
from .clinical_prior import ClinicalEpsMLP
from .config import CLINICAL_PRESETS, ClinicalModelConfig, clinical_preset
from .decoder import ClinicalStyleDecoder3d, StyleStage3d
from .discriminator import ClinicalPatchDiscriminator
from .embedding import CLINICAL_DIM, LABEL_INDEX, NUM_ROIS, ClinicalMLP, split_clinical
from .init import xavier_init
from .loss import ClinicalLossWeights, ClinicalVAEGANLoss, relative_posterior
from .model import (ClinicalVAEGAN, StandardNormalPrior, build_aux_heads, build_discriminator, count_parameters,
                    parameter_counts)
from .modulated import ModulatedConv3d, ModulatedFullConv3d, ModulatedSeparableConv3d, StyleAffine
from .prior import ConditionalPrior, prior_kl, reparameterize
from .xception import XceptionBlock3d, XceptionEncoder3d, conv3x3x3

__all__ = [
    "ClinicalVAEGAN", "ClinicalModelConfig", "CLINICAL_PRESETS", "clinical_preset", "parameter_counts",
    "count_parameters", "build_discriminator", "build_aux_heads", "StandardNormalPrior",
    "XceptionEncoder3d", "XceptionBlock3d", "conv3x3x3", "ConditionalPrior", "prior_kl", "reparameterize",
    "ClinicalStyleDecoder3d", "StyleStage3d", "ModulatedConv3d", "ModulatedFullConv3d",
    "ModulatedSeparableConv3d", "StyleAffine", "ClinicalPatchDiscriminator",
    "ClinicalAuxHeads", "SeparableResNet3d", "SeparableBasicBlock3d",
    "ClinicalLossWeights", "ClinicalVAEGANLoss", "relative_posterior",
    "ClinicalEpsMLP", "ClinicalMLP", "split_clinical", "CLINICAL_DIM", "NUM_ROIS", "LABEL_INDEX", "xavier_init",
]
