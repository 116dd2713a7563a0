"""Evaluation metrics against closed forms, brute-force sums and MONAI (seed 003 §2.5.7, seed 002 §3)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from monai.metrics import PSNRMetric, SSIMMetric
from monai.metrics.fid import get_fid_score
from scipy.spatial.distance import pdist

from bsynth_hpc import ops
from bsynth_hpc.errors import InputError
from bsynth_hpc.eval.fid import RunningStats, feature_stats, fid_from_features, frechet_distance
from bsynth_hpc.eval.io import VolumeRef, VolumeSet
from bsynth_hpc.eval.lpips_slices import lpips_slices, triplanar_lpips
from bsynth_hpc.nn.lpips import load_lpips
from bsynth_hpc.eval.mmd import gaussian_mixture_kernel, median_heuristic, mmd, mmd2_unbiased, resolve_kernel
from bsynth_hpc.eval.paired import mse, psnr
from bsynth_hpc.eval.protocols import ReconConfig, evaluate_recon, summarise
from bsynth_hpc.slicing import slice_indices, triplanar_slices
from bsynth_hpc.eval.ssim import (
    MS_SSIM_WEIGHTS,
    ms_ssim,
    ms_ssim_settings,
    pairwise_ms_ssim,
    sample_pairs,
    ssim,
    ssim_settings,
    triplanar_ssim,
)


def smooth_volume(seed: int, shape=(24, 28, 20)) -> np.ndarray:
    """A smooth random volume in [0, 1] (blurred noise inside an ellipsoid)."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.random(shape).astype(np.float32))[None, None]
    x = F.avg_pool3d(F.avg_pool3d(x, 3, 1, 1), 3, 1, 1)[0, 0].numpy()
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = (grid ** 2).sum(0) < 0.8
    v = np.where(inside, 0.3 + 0.6 * (x - x.min()) / (x.max() - x.min()), 0.0)
    return v.astype(np.float32)


# ---------------------------------------------------------------------------------------- FID
def test_fid_of_identical_sets_is_zero_also_when_covariance_is_singular():
    rng = np.random.default_rng(0)
    for n, d in ((200, 16), (10, 64)):  # well-posed, and fewer samples than dimensions
        f = rng.normal(size=(n, d))
        assert fid_from_features(f, f.copy()) == pytest.approx(0.0, abs=1e-7)


def test_frechet_distance_matches_closed_forms():
    # 1-D: the squared 2-Wasserstein distance (mu1 - mu2)^2 + (s1 - s2)^2.
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == \
        pytest.approx(9.0 + 1.0)
    # Commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.default_rng(1)
    mu1, mu2, a, b = rng.normal(size=5), rng.normal(size=5), rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # General SPD covariances: the definition with scipy's matrix square root as reference.
    m1, m2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = m1 @ m1.T + 0.5 * np.eye(6), m2 @ m2.T + 0.5 * np.eye(6)
    ref = np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert frechet_distance(np.zeros(6), s1, np.zeros(6), s2) == pytest.approx(ref, rel=1e-8)
    # Symmetric in its arguments.
    assert frechet_distance(np.zeros(6), s1, np.ones(6), s2) == pytest.approx(frechet_distance(np.ones(6), s2,
                                                                                              np.zeros(6), s1))


def test_fid_of_two_gaussian_samples_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -1.0])
    c1 = np.array([[1.0, 0.3, 0.0], [0.3, 2.0, 0.2], [0.0, 0.2, 0.5]])
    c2 = np.array([[0.5, 0.0, 0.1], [0.0, 1.0, 0.0], [0.1, 0.0, 1.5]])
    x = rng.multivariate_normal(mu1, c1, size=200_000)
    y = rng.multivariate_normal(mu2, c2, size=200_000)
    exact = frechet_distance(mu1, c1, mu2, c2)
    assert fid_from_features(x, y) == pytest.approx(exact, abs=0.02)


def test_standardised_fid_is_scale_free_and_equals_the_fid_of_the_whitened_features():
    """Random networks give features of arbitrary scale; standardised by the real set, FID is in real-spread
    units: unchanged by a per-dimension affine map of both sets, and equal to the plain FID of the mapped sets."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    y = rng.normal(loc=0.3, size=(300, 5)) @ rng.normal(size=(5, 5))
    scale, shift = np.array([1e-7, 3e-8, 2e-7, 1e-6, 5e-8]), rng.normal(size=5) * 1e-7
    tiny_x, tiny_y = x * scale + shift, y * scale + shift
    std = fid_from_features(x, y, standardize=True)
    assert fid_from_features(tiny_x, tiny_y, standardize=True) == pytest.approx(std, rel=1e-6)
    assert fid_from_features(tiny_x, tiny_y) < 1e-10 < std            # the defect it fixes: ~0 raw
    m, s = x.mean(0), x.std(0)
    assert std == pytest.approx(fid_from_features((x - m) / s, (y - m) / s), rel=1e-9)
    assert fid_from_features(x, x.copy(), standardize=True) == pytest.approx(0.0, abs=1e-7)


def test_fid_agrees_with_monai_and_streaming_statistics():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(300, 12)), rng.normal(0.2, 1.3, size=(250, 12))
    ours = fid_from_features(x, y)
    assert ours == pytest.approx(float(get_fid_score(torch.from_numpy(y), torch.from_numpy(x))), rel=1e-6)
    running = RunningStats(12)
    for chunk in np.array_split(x + 100.0, 7):  # a large offset: the shifted sums stay accurate
        running.update(chunk)
    ref = feature_stats(x + 100.0)
    got = running.stats()
    np.testing.assert_allclose(got.mu, ref.mu, rtol=1e-12)
    np.testing.assert_allclose(got.sigma, ref.sigma, atol=1e-9)


# ---------------------------------------------------------------------------------------- MMD
def brute_force_mmd2(x, y, sigmas, weights):
    def k(a, b):
        d2 = float(((a - b) ** 2).sum())
        return sum(w * math.exp(-d2 / (2 * s * s)) for s, w in zip(sigmas, weights))
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_the_definition_term_by_term():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1.0, size=(9, 3))
    sigmas, weights = (0.5, 1.0, 3.0), (0.2, 0.3, 0.5)
    assert mmd2_unbiased(x, y, sigmas, weights) == pytest.approx(brute_force_mmd2(x, y, sigmas, weights), rel=1e-10)


def test_mmd_is_zero_for_identical_sets_symmetric_and_nonnegative():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 8))
    same = mmd(x, x.copy())
    assert same.mmd2 <= 0.0 and same.mmd == 0.0  # the unbiased estimate of identical sets is never positive
    for shift in (0.0, 0.3, 1.0):
        y = rng.normal(shift, 1.0, size=(15, 8))
        a, b = mmd(x, y), mmd(y, x)
        assert a.mmd == pytest.approx(b.mmd, rel=1e-12) and a.sigmas == pytest.approx(b.sigmas)
        assert a.mmd >= 0.0 and a.mmd == pytest.approx(math.sqrt(max(a.mmd2, 0.0)))
    far = [mmd(x, rng.normal(s, 1.0, size=(20, 8))).mmd for s in (0.5, 2.0, 8.0)]
    assert far[0] < far[1] < far[2]


def test_kernel_bank_uses_the_median_heuristic_and_normalised_weights():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(10, 4)), rng.normal(size=(12, 4))
    assert median_heuristic(np.concatenate([x, y])) == pytest.approx(np.median(pdist(np.concatenate([x, y]))))
    sigmas, weights = resolve_kernel(x, y, ratios=(0.5, 1.0, 2.0), weights=(1.0, 1.0, 2.0))
    s0 = np.median(pdist(np.concatenate([x, y])))
    assert sigmas == pytest.approx((0.5 * s0, s0, 2 * s0)) and weights == pytest.approx((0.25, 0.25, 0.5))
    d2 = np.array([[0.0, 1.0]])
    np.testing.assert_allclose(gaussian_mixture_kernel(d2, (1.0,), (1.0,)), [[1.0, math.exp(-0.5)]])
    with pytest.raises(ValueError, match="non-negative"):
        resolve_kernel(x, y, ratios=(1.0, 2.0), weights=(1.0, -1.0))
    with pytest.raises(ValueError, match="one weight per sigma"):
        resolve_kernel(x, y, ratios=(1.0, 2.0), weights=(1.0,))


# ---------------------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_and_mse_follow_their_definitions_and_monai():
    v = smooth_volume(0)
    shifted = np.clip(v + 0.05, 0, 2)
    assert mse(v, shifted) == pytest.approx(0.0025, rel=1e-6)
    assert psnr(v, shifted) == pytest.approx(-20 * math.log10(0.05), rel=1e-6)
    noisy = v + np.random.default_rng(1).normal(0, 0.03, v.shape).astype(np.float32)
    monai_psnr = PSNRMetric(max_val=1.0)(torch.from_numpy(noisy)[None, None], torch.from_numpy(v)[None, None])
    assert psnr(v, noisy) == pytest.approx(float(monai_psnr), rel=1e-5)
    assert psnr(v, v.copy()) == math.inf


def _gauss(k: int, sigma: float) -> np.ndarray:
    g = np.exp(-((np.arange(k) - (k - 1) / 2) ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _valid_filter(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    for axis in range(x.ndim):
        x = np.apply_along_axis(lambda r: np.convolve(r, g, mode="valid"), axis, x)
    return x


def reference_ssim(a: np.ndarray, b: np.ndarray, k: int = 11, sigma: float = 1.5) -> float:
    """Wang et al. (2004) SSIM with a Gaussian window, valid region, data range 1 (numpy only)."""
    g = _gauss(k, sigma)
    a, b = a.astype(np.float64), b.astype(np.float64)
    mx, my = _valid_filter(a, g), _valid_filter(b, g)
    sxx = _valid_filter(a * a, g) - mx ** 2
    syy = _valid_filter(b * b, g) - my ** 2
    sxy = _valid_filter(a * b, g) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return float((((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))).mean())


def test_ssim_matches_an_independent_reference_and_monai():
    v = smooth_volume(1)
    noisy = np.clip(v + np.random.default_rng(2).normal(0, 0.05, v.shape), 0, 1).astype(np.float32)
    ours = ssim(v, noisy)
    assert ours == pytest.approx(reference_ssim(v, noisy), abs=1e-4)  # MONAI computes in float32
    monai_value = SSIMMetric(spatial_dims=3, data_range=1.0)(torch.from_numpy(noisy)[None, None],
                                                              torch.from_numpy(v)[None, None])
    assert ours == pytest.approx(float(monai_value), abs=1e-6)
    assert ssim(v, v.copy()) == pytest.approx(1.0, abs=1e-6)
    assert ssim_settings((8, 40, 40)).kernel_size == 7


def test_ms_ssim_settings_fit_the_volume_and_self_similarity_is_one():
    full = ms_ssim_settings((192, 224, 160))
    assert full.weights == MS_SSIM_WEIGHTS and full.kernel_size == 9  # 160 // 16 = 10 > 9 - 1
    assert ms_ssim_settings((256, 256, 256)).kernel_size == 11
    demo = ms_ssim_settings((48, 56, 40))
    assert len(demo.weights) == 4 and sum(demo.weights) == pytest.approx(1.0) and demo.kernel_size == 3
    with pytest.raises(InputError):
        ms_ssim_settings((2, 30, 30))
    v = smooth_volume(2)
    assert ms_ssim(v, v.copy()) == pytest.approx(1.0, abs=1e-6)
    values = [ms_ssim(v, np.clip(v + np.random.default_rng(3).normal(0, s, v.shape), 0, 1).astype(np.float32))
              for s in (0.01, 0.05, 0.2)]
    assert 1.0 > values[0] > values[1] > values[2]


def test_pair_sampling_and_generated_pair_ms_ssim():
    rng = np.random.default_rng(0)
    pairs = sample_pairs(10, 12, rng)
    assert len(pairs) == len(set(pairs)) == 12 and all(a < b for a, b in pairs)
    assert sample_pairs(5, 100, rng) == [(a, b) for a in range(5) for b in range(a + 1, 5)]
    assert sample_pairs(10, 12, np.random.default_rng(7)) == sample_pairs(10, 12, np.random.default_rng(7))
    v = smooth_volume(3)
    same = pairwise_ms_ssim(lambda i: v, n=4, k=3, seed=0)
    assert same.mean == pytest.approx(1.0, abs=1e-6) and same.n_pairs == 3
    vols = [smooth_volume(s) for s in range(4)]
    diverse = pairwise_ms_ssim(lambda i: vols[i], n=4, k=100, seed=0)
    assert diverse.n_pairs == 6 and diverse.mean < 0.99
    expected = np.mean([ms_ssim(vols[a], vols[b]) for a in range(4) for b in range(a + 1, 4)])
    assert diverse.mean == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------- slices
def test_triplanar_slices_are_evenly_spaced_and_oriented():
    idx = slice_indices(100, 32)
    assert len(idx) == 32 and len(set(idx)) == 32 and idx[0] > 0 and idx[-1] < 99
    assert np.all(np.diff(idx) >= 2)
    np.testing.assert_array_equal(slice_indices(20, 32), np.arange(20))
    shape = (40, 50, 36)
    vol = np.broadcast_to(np.arange(40, dtype=np.float32)[:, None, None], shape)
    s = triplanar_slices(vol, 8)
    assert s["sagittal"].shape == (8, 50, 36) and s["coronal"].shape == (8, 40, 36) and s["axial"].shape == (8, 40, 50)
    np.testing.assert_array_equal(s["sagittal"][:, 0, 0], slice_indices(40, 8))  # sagittal fixes x
    v = smooth_volume(4)
    assert triplanar_ssim(v, v.copy()) == pytest.approx(1.0, abs=1e-6)


def test_lpips_on_triplanar_slices(monkeypatch):
    monkeypatch.delenv("BSYNTH_WEIGHTS_DIR", raising=False)
    model, info = load_lpips(None, allow_random=True)  # no weights directory in tests: random trunk, stated
    assert info.random and info.verified == "random-init"
    a, b = smooth_volume(5), smooth_volume(6)
    assert triplanar_lpips(model, a, a.copy(), per_plane=4) == pytest.approx(0.0, abs=1e-6)
    value = triplanar_lpips(model, a, b, per_plane=4)
    sa, sb = triplanar_slices(a, 4), triplanar_slices(b, 4)
    manual = np.mean(np.concatenate([lpips_slices(model, sa[p], sb[p]) for p in sa]))
    assert value > 0 and value == pytest.approx(manual, rel=1e-6)


# ---------------------------------------------------------------------------------------- recon protocol
def _memory_set(volumes: list[np.ndarray], modalities: list[str]) -> VolumeSet:
    refs = [VolumeRef(volume_id=f"v{i}", modality=m, label=None, source=f"mem:{i}") for i, m in enumerate(modalities)]
    return VolumeSet(path=Path("mem"), kind="memory", refs=refs, shape=volumes[0].shape,
                     loader=lambda ref: volumes[int(ref.volume_id[1:])])


def test_recon_protocol_with_a_perfect_and_a_lossy_compressor():
    vols = [smooth_volume(10 + i) for i in range(4)]
    vs = _memory_set(vols, ["T1w", "T1w", "FLAIR", "FLAIR"])
    haar = evaluate_recon(vs, lambda x: ops.haar_idwt3d(ops.haar_dwt3d(x), tuple(x.shape[2:])),
                          ReconConfig(per_plane=4))
    assert haar["psnr"] > 100 and haar["ssim"] == pytest.approx(1.0, abs=1e-5) and haar["mse"] < 1e-10
    assert haar["ms_ssim"] == pytest.approx(1.0, abs=1e-5)

    def lossy(x):
        return F.interpolate(F.avg_pool3d(x, 2), size=tuple(x.shape[2:]), mode="trilinear")

    res = evaluate_recon(vs, lossy, ReconConfig(per_plane=4))
    rows = res["per_volume"]
    assert [r["modality"] for r in rows] == ["T1w", "T1w", "FLAIR", "FLAIR"]
    for r, v in zip(rows, vols):
        rec = lossy(torch.from_numpy(v)[None, None])[0, 0].numpy()
        assert r["mse"] == pytest.approx(float(((v.astype(np.float64) - rec) ** 2).mean()), rel=1e-6)
        assert r["psnr"] == pytest.approx(-10 * math.log10(r["mse"]), rel=1e-6)
        assert 0 < r["ssim"] < 1 and 0 < r["ms_ssim"] < 1
    assert set(res["by_modality"]) == {"T1w", "FLAIR"}
    assert res["by_modality"]["T1w"]["psnr"]["mean"] == pytest.approx(np.mean([rows[0]["psnr"], rows[1]["psnr"]]))
    assert res["psnr"] == pytest.approx(np.mean([r["psnr"] for r in rows])) and res["pooled"]["n"] == 4
    assert res["psnr"] < haar["psnr"] and res["ssim"] < haar["ssim"]
    assert summarise([1.0, math.inf]) == {"mean": "inf", "std": None, "n": 2}


# ---------------------------------------------------------------------------------------- synth protocol
class SliceStats(torch.nn.Module):
    """A stand-in 2D extractor (mean, std, min, max per slice) to check the slice-FID plumbing."""

    feature_dim = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1)
        return torch.stack([f.mean(1), f.std(1), f.amin(1), f.amax(1)], 1)


def test_synth_protocol_pools_over_the_generated_modalities_and_streams_slice_fid():
    from bsynth_hpc.eval.features_medicalnet import MedicalNetExtractor, extract_medicalnet_features
    from bsynth_hpc.eval.protocols import Slice2DConfig, SynthConfig, evaluate_synth
    from bsynth_hpc.slicing import plane_slices

    torch.manual_seed(0)
    extractor = MedicalNetExtractor(10).eval()
    real_vols = [smooth_volume(20 + i) for i in range(6)]
    real = _memory_set(real_vols, ["T1w", "T1w", "T1w", "FLAIR", "FLAIR", "FLAIR"])
    fake_vols = [smooth_volume(40 + i) for i in range(3)]
    fake = _memory_set(fake_vols, ["T1w"] * 3)  # a T1w-only generator
    res = evaluate_synth(real, fake, extractor, SynthConfig(n_pairs=2, seed=1, slice2d=Slice2DConfig(plane="coronal")),
                         inception=SliceStats())
    assert res["pooled"]["modalities"] == ["T1w"] and res["pooled"]["n_real"] == 3
    assert set(res["by_modality"]) == {"T1w"}
    f_real = extract_medicalnet_features(extractor, real_vols[:3])
    f_fake = extract_medicalnet_features(extractor, fake_vols)
    assert res["fid"] == pytest.approx(fid_from_features(f_real, f_fake), rel=1e-6)
    assert res["mmd"] == pytest.approx(mmd(f_real, f_fake).mmd, rel=1e-6)
    assert res["by_modality"]["T1w"]["fid"] == pytest.approx(res["fid"])
    assert res["ms_ssim"] == pytest.approx(res["by_modality"]["T1w"]["ms_ssim"]) and res["pooled"]["ms_ssim_pairs"] == 2

    def slice_feats(vols):
        s = [torch.from_numpy(x)[None, None] for v in vols for x in plane_slices(v, "coronal")]
        return torch.cat([SliceStats()(t) for t in s]).double().numpy()

    expected = fid_from_features(slice_feats(real_vols[:3]), slice_feats(fake_vols))
    assert res["pooled"]["fid2d"] == pytest.approx(expected, rel=1e-6)
    assert res["pooled"]["n_slices_real"] == 3 * real_vols[0].shape[1]


def test_small_n_fid_is_flagged_in_the_report():
    from bsynth_hpc.eval.report import SMALL_N, small_n_warning

    assert "Warning: FID/MMD from 8 real and 6 generated" in small_n_warning({"fid": 1.0, "n_real": 8, "n_fake": 6})[0]
    assert small_n_warning({"fid": 1.0, "n_real": SMALL_N, "n_fake": SMALL_N}) == []
    assert small_n_warning({"fid": None, "n_real": 2, "n_fake": 2}) == []
