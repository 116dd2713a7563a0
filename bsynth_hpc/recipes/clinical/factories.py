"""The registered model names of the clinical recipe's exports (``bsynth_hpc.models`` allow-list).

Export sidecars name a factory from the allow-list, never an import path; the clinical networks are
added here, by the recipe's own code, before any of its stages exports or its sampler loads."""
from __future__ import annotations

from ...models import is_registered, register_model

PRIOR_FACTORY = "clinical-eps-mlp"
VAEGAN_FACTORY = "clinical-vaegan"
AUX_FACTORY = "clinical-aux-heads"

_FACTORIES = {
    PRIOR_FACTORY: "bsynth_hpc.models.clinical.clinical_prior:ClinicalEpsMLP",
    VAEGAN_FACTORY: "bsynth_hpc.models.clinical.model:ClinicalVAEGAN",
    AUX_FACTORY: "bsynth_hpc.models.clinical.aux_heads:ClinicalAuxHeads",
}


def register_clinical_models() -> None:
    """Add the clinical factories to the allow-list (idempotent; names registered elsewhere are kept)."""
    for name, target in _FACTORIES.items():
        if not is_registered(name):
            register_model(name, target)


register_clinical_models()

__all__ = ["PRIOR_FACTORY", "VAEGAN_FACTORY", "AUX_FACTORY", "register_clinical_models"]
