"""Seed 002 Table 2's ablation rows (``configs/clinical_ablation.yaml``: overrides of the clinical config) and their
parameter counts (built on the meta device, nothing allocated)."""
from __future__ import annotations

from typing import Any

from ...configtools import parse_override
from ...engine.config import packaged_config, read_yaml
from ...models.clinical.config import clinical_preset
from ...models.clinical.model import parameter_counts

__all__ = ["ablation_rows", "ablation_parameters", "EFFICIENTNET_B0_PARAMS"]

EFFICIENTNET_B0_PARAMS = 5_288_548
"""torchvision efficientnet_b0 (the perceptual network 002 counts in its last row)."""


def ablation_rows() -> list[dict[str, Any]]:
    """``[{"name", "overrides"}]`` in table order."""
    return list(read_yaml(packaged_config("clinical_ablation.yaml"))["rows"])


def ablation_parameters(preset: str = "full", **model: Any) -> list[dict[str, Any]]:
    """Per row: name, overrides and the parameters of encoder + prior + decoder (+ discriminator when adversarial,
    + EfficientNet-B0 when perceptual) - the networks the row trains or uses, as 002 counts them."""
    out = []
    for row in ablation_rows():
        kw, recipe = dict(model), {}
        for text in row["overrides"]:
            keys, value = parse_override(text)
            if keys[:2] == ["recipe", "model"]:
                kw[keys[2]] = value
            else:
                recipe[keys[-1]] = value
        counts = parameter_counts(clinical_preset(preset, **kw))
        total = counts["vae_gan"] + (counts["discriminator"] if recipe.get("adv_weight", 1) else 0)
        total += EFFICIENTNET_B0_PARAMS if recipe.get("perceptual_weight", 1) else 0
        out.append({"name": row["name"], "overrides": row["overrides"], "parameters": int(total),
                    "vae_gan": counts["vae_gan"]})
    return out
