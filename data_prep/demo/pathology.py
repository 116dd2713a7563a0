"""Disease effects painted into a subject's anatomy: the glioma (core, enhancing rim, oedema) and
ex-vacuo ventricle enlargement.  (Hippocampal/amygdala atrophy is a :class:`LocalScaling` warp; the
sclerotic hippocampus's signal change is in :mod:`.contrast`.)"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .deformation import as_column
from .labels import ROI_LABELS


def _lobulation(lobes: np.ndarray, amplitude: float, directions: np.ndarray) -> np.ndarray:
    """Radial modulation 1 + g(n) >= 0.3 for (3, N) unit directions: ``amplitude`` times a sum of
    random cosine lobes (rows: unit direction xyz, angular frequency, phase) over sqrt(#lobes)."""
    g = np.zeros(directions.shape[1], dtype=np.float32)
    for row in np.asarray(lobes, dtype=np.float32):
        g += np.cos(row[3] * (row[:3] @ directions) + row[4])
    return np.maximum(1.0 + np.float32(amplitude / math.sqrt(max(len(lobes), 1))) * g, 0.3)


@dataclass(frozen=True)
class Tumour:
    """A glioma in subject space: lobulated enhancing rim around a necrotic core, with vasogenic
    oedema (its own, more irregular outline) spreading mostly through white matter."""

    centre: np.ndarray
    radius_mm: float          # mean outer radius of the enhancing rim
    core_fraction: float      # necrotic core radius / rim radius
    oedema_mm: float          # mean reach of the oedema beyond the rim
    lobes: np.ndarray         # (k, 5) tumour outline lobes, see _lobulation
    oedema_lobes: np.ndarray  # (k, 5) oedema outline lobes
    lobe_amplitude: float = 0.25
    oedema_amplitude: float = 0.45

    def fractions(self, pts: np.ndarray,
                  voxel_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(core, tumour, oedema-zone) fractions at (3, N) points, edges ramped over a voxel."""
        rel = pts - as_column(self.centre)
        r = np.sqrt((rel * rel).sum(0))
        n = np.divide(rel, r, out=np.zeros_like(rel), where=r > 1e-6)
        rho = r / _lobulation(self.lobes, self.lobe_amplitude, n)
        rho_oed = r / _lobulation(self.oedema_lobes, self.oedema_amplitude, n)

        def ramp(radius: float, dist: np.ndarray) -> np.ndarray:
            return np.clip((np.float32(radius) - dist) / np.float32(voxel_mm) + 0.5, 0.0, 1.0)

        tumour = ramp(self.radius_mm, rho)
        core = ramp(self.radius_mm * self.core_fraction, rho)
        oedema = np.clip(ramp(self.radius_mm + self.oedema_mm, rho_oed) - tumour, 0.0, 1.0)
        return core, tumour, oedema


def grow_ventricles(roi: np.ndarray, nearest: np.ndarray, gm: np.ndarray, wm: np.ndarray,
                    dist: np.ndarray, growth: tuple[float, ...], voxel_mm: float) -> None:
    """Turn parenchyma within ``growth`` mm of each ventricle into ventricle CSF (in place).

    ``nearest`` is the label of the closest ventricle, ``dist`` the MNI-mm distance to it; the
    CSF fraction ramps over one voxel so volume grows continuously with the growth distance.
    """
    for g, label in zip(growth, (ROI_LABELS["ventricle_l"], ROI_LABELS["ventricle_r"])):
        if g <= 0:
            continue
        zone = (nearest == label) & ((roi == 0) | (roi == label))
        conv = np.clip((g - dist[zone]) / voxel_mm + 0.5, 0.0, 1.0).astype(np.float32)
        gm[zone] *= 1.0 - conv
        wm[zone] *= 1.0 - conv
        labels = roi[zone]
        labels[conv >= 0.5] = label
        roi[zone] = labels
