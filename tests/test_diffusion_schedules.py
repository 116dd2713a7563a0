"""β schedules, the DDPM/RFlow forward processes, conversions, posterior, losses, objective and config.

References: closed forms (Ho et al. 2020, Nichol & Dhariwal 2021, seed 003 §2.5.4) and MONAI's
schedulers as an independent implementation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler
from monai.networks.schedulers.rectified_flow import timestep_transform as monai_timestep_transform
from monai.networks.schedulers.scheduler import NoiseSchedules
from scipy import stats

from bsynth_hpc.diffusion import (DDPMProcess, DiffusionConfig, RFlowProcess, TrainingObjective, build_objective,
                                  build_process, diffusion_loss, make_schedule, register_schedule,
                                  timestep_transform)
from bsynth_hpc.diffusion.schedules import available_schedules, schedule_params
from bsynth_hpc.errors import ConfigError

T = 1000
MONAI_NAMES = {"linear": "linear_beta", "scaled_linear": "scaled_linear_beta", "cosine": "cosine"}


def _ddpm(schedule: str = "linear", prediction: str = "epsilon", **kw) -> DDPMProcess:
    return DDPMProcess(make_schedule(schedule, T, **kw), prediction)


# --- schedules --------------------------------------------------------------------------------

def test_linear_schedule_is_seed_000_closed_form():
    s = make_schedule("linear", T)
    b = s.betas.numpy()
    assert s.betas.dtype == torch.float64 and b.shape == (T,)
    assert b[0] == pytest.approx(1e-4, abs=1e-15) and b[-1] == pytest.approx(2e-2, abs=1e-15)
    np.testing.assert_allclose(np.diff(b), (2e-2 - 1e-4) / (T - 1), rtol=1e-9)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), np.cumprod(1.0 - b), rtol=1e-12)


def test_scaled_linear_schedule_is_linear_in_sqrt_beta():
    s = make_schedule("scaled_linear", T, beta_start=0.0015, beta_end=0.0195)
    r = np.sqrt(s.betas.numpy())
    assert r[0] ** 2 == pytest.approx(0.0015) and r[-1] ** 2 == pytest.approx(0.0195)
    np.testing.assert_allclose(np.diff(r), (math.sqrt(0.0195) - math.sqrt(0.0015)) / (T - 1), rtol=1e-9)


def test_cosine_alpha_bar_matches_nichol_dhariwal_formula():
    s = make_schedule("cosine", T, cosine_s=0.008, max_beta=0.999)

    def f(t: np.ndarray) -> np.ndarray:
        return np.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    t = np.arange(1, T + 1, dtype=np.float64)
    expected = f(t) / f(np.zeros(1))
    abar = s.alphas_cumprod.numpy()
    clipped = s.betas.numpy() >= 0.999
    assert clipped[-1] and clipped.sum() == 1  # only the last step, where f(T) = 0, hits the clip
    np.testing.assert_allclose(abar[:-1], expected[:-1], rtol=1e-10)
    assert abar[-1] == pytest.approx(abar[-2] * (1 - 0.999), rel=1e-12)


def test_cosine_ramp_is_seed_001_equation_2():
    s = make_schedule("cosine_ramp", T, beta_start=1e-4, beta_end=0.02)
    t = np.arange(1, T + 1) / T
    np.testing.assert_allclose(s.betas.numpy(), 1e-4 + (0.02 - 1e-4) * (1 - np.cos(t * math.pi / 2)), rtol=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.02)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine", "cosine_ramp"])
def test_alpha_bar_strictly_decreasing_in_unit_interval(name):
    s = make_schedule(name, T)
    abar = s.alphas_cumprod
    assert torch.all(torch.diff(abar) < 0)
    assert 0 < abar[-1] < abar[0] < 1
    torch.testing.assert_close(s.alphas, 1 - s.betas)
    assert torch.all(torch.diff(s.snr()) < 0)


@pytest.mark.parametrize("name, beta_atol", [("linear", 1e-8), ("scaled_linear", 1e-8), ("cosine", 5e-5)])
def test_schedules_match_monai(name, beta_atol):
    # MONAI builds the cosine β in float32 (ratio of cos² values near 1 and near 0): ~3e-5 off; ᾱ stays close
    ours = make_schedule(name, T)
    ref = DDPMScheduler(num_train_timesteps=T, schedule=MONAI_NAMES[name])
    torch.testing.assert_close(ours.betas, ref.betas.double(), rtol=0, atol=beta_atol)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), rtol=0, atol=1e-6)


def test_schedule_registry_and_errors():
    assert {"linear", "scaled_linear", "cosine", "cosine_ramp"} <= set(available_schedules())
    assert schedule_params("cosine") == ("cosine_s", "max_beta")
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        make_schedule("cosin", T)
    with pytest.raises(ConfigError, match="does not take beta_start"):
        make_schedule("cosine", T, beta_start=1e-4)
    with pytest.raises(ConfigError, match="beta_start <= beta_end"):
        make_schedule("linear", T, beta_start=0.03, beta_end=0.02)
    with pytest.raises(ConfigError, match="num_train_timesteps"):
        make_schedule("linear", 0)
    with pytest.raises(ConfigError, match="max_beta"):
        make_schedule("cosine", T, max_beta=1.0)

    name = "test_constant_beta"
    if name not in available_schedules():
        @register_schedule(name)
        def _constant(num_train_timesteps: int, beta: float = 0.01) -> np.ndarray:
            return np.full(num_train_timesteps, beta)
    s = make_schedule(name, 10, beta=0.1)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), 0.9 ** np.arange(1, 11))
    with pytest.raises(ValueError, match="already registered"):
        register_schedule("linear")(lambda num_train_timesteps: np.zeros(num_train_timesteps))
    with pytest.raises(ConfigError, match=r"every beta must lie in \(0, 1\)"):
        make_schedule(name, 10, beta=1.0)


# --- DDPM forward process ---------------------------------------------------------------------

@pytest.mark.parametrize("t", [0, 250, 999])
def test_add_noise_moments_match_marginal(t):
    p = _ddpm("cosine")
    g = torch.Generator().manual_seed(t)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    xt = p.add_noise(x0, torch.randn(n, 1, generator=g, dtype=torch.float64), torch.full((n,), t))
    abar = p.schedule.alphas_cumprod[t].item()
    se = math.sqrt((1 - abar) / n)
    assert abs(xt.mean().item() - math.sqrt(abar) * 0.7) < 5 * se
    assert xt.var().item() == pytest.approx(1 - abar, rel=5 * math.sqrt(2 / n))


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_add_noise_and_velocity_match_monai(name):
    p = _ddpm(name, "v_prediction")
    ref = DDPMScheduler(num_train_timesteps=T, schedule=MONAI_NAMES[name])
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(5, 2, 4, 4, 4, generator=g), torch.randn(5, 2, 4, 4, 4, generator=g)
    t = torch.tensor([0, 1, 400, 998, 999])
    torch.testing.assert_close(p.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(p.training_target(x0, noise, t), ref.get_velocity(x0, noise, t), rtol=1e-5,
                               atol=2e-5)


@pytest.mark.parametrize("source", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("target", ["epsilon", "v_prediction", "sample"])
def test_prediction_conversions_are_exact(source, target):
    p = _ddpm("cosine")
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 3, 5, dtype=torch.float64, generator=g)
    eps = torch.randn(6, 3, 5, dtype=torch.float64, generator=g)
    t = torch.tensor([0, 3, 100, 500, 900, 990])
    xt = p.add_noise(x0, eps, t)
    truth = {"epsilon": eps, "sample": x0, "v_prediction": p.velocity(x0, eps, t)}
    # the true value of one type converts into the true value of every other type ...
    torch.testing.assert_close(p.convert(truth[source], xt, t, source=source, target=target), truth[target],
                               rtol=1e-9, atol=1e-9)
    # ... and any value survives a round trip
    v = torch.randn(6, 3, 5, dtype=torch.float64, generator=g)
    back = p.convert(p.convert(v, xt, t, source=source, target=target), xt, t, source=target, target=source)
    torch.testing.assert_close(back, v, rtol=1e-9, atol=1e-9)


def test_predict_x0_and_epsilon_follow_prediction_type():
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(4, 8, dtype=torch.float64, generator=g), torch.randn(4, 8, dtype=torch.float64, generator=g)
    t = torch.tensor([5, 50, 500, 950])
    for pred in ("epsilon", "v_prediction", "sample"):
        p = _ddpm("linear", pred)
        xt = p.add_noise(x0, eps, t)
        out = p.training_target(x0, eps, t)
        torch.testing.assert_close(p.predict_x0(out, xt, t), x0, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(p.predict_epsilon(out, xt, t), eps, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("t_prev_offset", [1, 20])
def test_posterior_mean_from_epsilon_equals_mean_from_x0(t_prev_offset):
    p = _ddpm("scaled_linear")
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(5, 7, dtype=torch.float64, generator=g), torch.randn(5, 7, dtype=torch.float64, generator=g)
    t = torch.tensor([20, 21, 300, 700, 999])
    xt = p.add_noise(x0, eps, t)
    mean_x0, _ = p.posterior(x0, xt, t, t - t_prev_offset)
    mean_eps = p.posterior_mean_from_epsilon(eps, xt, t, t - t_prev_offset)
    torch.testing.assert_close(mean_eps, mean_x0, rtol=1e-10, atol=1e-10)


def test_posterior_is_gaussian_conditioning_of_the_forward_process():
    """q(x_s | x_t, x0) from the joint Gaussian of (x_s, x_t) given x0, independent of the code's formula."""
    p = _ddpm("cosine")
    abar = p.schedule.alphas_cumprod.double()
    x0 = torch.tensor([[0.3], [-1.2], [2.0]], dtype=torch.float64)
    xt = torch.tensor([[0.1], [0.5], [-0.4]], dtype=torch.float64)
    for t, s in [(1, 0), (400, 399), (400, 350), (999, 979), (5, -1)]:
        a_t = abar[t]
        a_s = abar[s] if s >= 0 else torch.tensor(1.0, dtype=torch.float64)
        alpha_ts = a_t / a_s
        var_s, var_t = 1 - a_s, 1 - a_t
        cov = alpha_ts.sqrt() * var_s
        mean_ref = a_s.sqrt() * x0 + cov / var_t * (xt - a_t.sqrt() * x0)
        var_ref = var_s - cov ** 2 / var_t
        mean, var = p.posterior(x0, xt, t, s)
        torch.testing.assert_close(mean, mean_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(var.reshape(()), var_ref.reshape(()), rtol=1e-9, atol=1e-15)


def monai_float64(ref, process: DDPMProcess):
    """A MONAI scheduler running on our float64 tables: compares formulas, not float32 table rounding
    (MONAI's 1 - ᾱ_t at small t loses ~1e-3 relative in float32)."""
    ref.betas, ref.alphas, ref.alphas_cumprod = (process.schedule.betas, process.schedule.alphas,
                                                 process.schedule.alphas_cumprod)
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(ref, "final_alpha_cumprod"):
        ref.final_alpha_cumprod = ref.one
    return ref


def test_posterior_matches_monai_and_seed_003_variance():
    p = _ddpm("linear")
    ref = monai_float64(DDPMScheduler(num_train_timesteps=T, schedule="linear_beta"), p)
    x0, xt = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    b, abar = p.schedule.betas, p.schedule.alphas_cumprod
    for t in (0, 1, 500, 999):
        mean, var = p.posterior(x0, xt, t)
        torch.testing.assert_close(mean, ref._get_mean(t, x0, xt), rtol=1e-12, atol=1e-12)
        # MONAI's fixed_small floors the variance at 1e-20 (it is exactly 0 at t = 0); our step does the same
        torch.testing.assert_close(var.reshape(()).clamp(min=1e-20), ref._get_variance(t).reshape(()), rtol=1e-12,
                                   atol=1e-30)
        abar_prev = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        assert var.item() == pytest.approx(((1 - abar_prev) / (1 - abar[t]) * b[t]).item(), rel=1e-12, abs=1e-30)


def test_timestep_validation():
    p = _ddpm()
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        p.add_noise(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([1000]))
    with pytest.raises(ValueError, match="integer indices"):
        p.add_noise(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="do not match a batch"):
        p.add_noise(torch.zeros(3, 2), torch.zeros(3, 2), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t_prev < t"):
        p.posterior(torch.zeros(1, 2), torch.zeros(1, 2), 5, 5)
    with pytest.raises(ConfigError, match="prediction='velocity'"):
        DDPMProcess(make_schedule("linear", T), "velocity")


def test_ddpm_time_from_uniform_covers_all_indices():
    p = _ddpm()
    u = torch.tensor([0.0, 0.0004, 0.001, 0.5, 0.9999999])
    assert p.time_from_uniform(u, (5, 1)).tolist() == [0, 0, 1, 500, 999]
    t = p.time_from_uniform(torch.rand(100_000, generator=torch.Generator().manual_seed(5)), (1,))
    counts = torch.bincount(t, minlength=T).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3


# --- RFlow forward process --------------------------------------------------------------------

def test_rflow_interpolation_and_velocity_closed_form_and_monai():
    p = RFlowProcess(T)
    ref = RFlowScheduler(num_train_timesteps=T)
    g = torch.Generator().manual_seed(6)
    x0, noise = torch.randn(4, 2, 3, 3, 3, generator=g), torch.randn(4, 2, 3, 3, 3, generator=g)
    s = torch.tensor([0.0, 0.25, 0.731, 1.0])
    xt = p.add_noise(x0, noise, s)
    torch.testing.assert_close(xt, (1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * noise)
    torch.testing.assert_close(xt, ref.add_noise(x0, noise, p.model_time(s)))
    torch.testing.assert_close(p.training_target(x0, noise, s), x0 - noise)  # MONAI's target: inputs - noise
    v = p.training_target(x0, noise, s)
    torch.testing.assert_close(p.predict_x0(v, xt, s), x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p.predict_epsilon(v, xt, s), noise, rtol=1e-6, atol=1e-6)
    # the velocity is the time derivative of the path: dx/ds = noise - x0 = -v
    h = 1e-3
    fd = (p.add_noise(x0.double(), noise.double(), s.double() + h) - p.add_noise(x0.double(), noise.double(),
                                                                                s.double())) / h
    torch.testing.assert_close(fd, -v.double(), rtol=1e-6, atol=1e-6)
    assert p.model_time(torch.tensor([0.98, 0.25])).tolist() == [980.0, 250.0]


@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("transform", [False, True])
def test_rflow_training_times_match_monai_sample_timesteps(discrete, transform):
    kw = dict(use_timestep_transform=transform, base_img_size_numel=8 ** 3)
    p = RFlowProcess(T, discrete_timesteps=discrete, **kw)
    ref = RFlowScheduler(num_train_timesteps=T, use_discrete_timesteps=discrete, **kw)
    x = torch.zeros(64, 4, 16, 12, 10)
    torch.manual_seed(7)
    t_ref = ref.sample_timesteps(x)
    torch.manual_seed(7)
    u = torch.rand((64,))
    s = p.time_from_uniform(u, x.shape)
    torch.testing.assert_close(p.model_time(s), t_ref.float(), rtol=1e-5, atol=1e-3)


def test_rflow_logit_normal_times_have_monai_distribution():
    p = RFlowProcess(T, time_sampling="logit-normal", loc=0.3, scale=0.8, discrete_timesteps=False)
    ref = RFlowScheduler(num_train_timesteps=T, use_discrete_timesteps=False, sample_method="logit-normal",
                         loc=0.3, scale=0.8)
    x = torch.zeros(20_000, 1, 2, 2)
    torch.manual_seed(8)
    s_ref = (ref.sample_timesteps(x) / T).numpy()
    s = p.time_from_uniform(torch.rand(20_000, generator=torch.Generator().manual_seed(9)), x.shape).numpy()
    assert stats.ks_2samp(s, s_ref).pvalue > 1e-3
    # closed form: logit(s) ~ N(0.3, 0.8^2)
    assert stats.kstest(np.log(s / (1 - s)), "norm", args=(0.3, 0.8)).pvalue > 1e-3


def test_rflow_timestep_transform_matches_monai():
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    for shape in [(1, 4, 64, 64, 32), (1, 4, 16, 16), (1, 4, 48, 56, 40)]:
        numel = math.prod(shape[2:])
        ref = monai_timestep_transform(s * T, torch.tensor(numel), base_img_size_numel=32 ** 3, scale=1.5,
                                       num_train_timesteps=T, spatial_dim=len(shape) - 2) / T
        torch.testing.assert_close(timestep_transform(s, shape, 32 ** 3, 1.5), ref.double(), rtol=1e-6, atol=1e-7)
    # larger volumes shift towards noise; the end points stay fixed
    big = timestep_transform(s, (1, 4, 64, 64, 64))
    assert torch.all(big[1:-1] > s[1:-1]) and big[0] == 0 and big[-1] == 1


def test_rflow_errors():
    with pytest.raises(ConfigError, match="time_sampling"):
        RFlowProcess(T, time_sampling="beta")
    with pytest.raises(ConfigError, match="scale"):
        RFlowProcess(T, time_sampling="logit-normal", scale=0.0)
    with pytest.raises(ConfigError, match="exceed num_train_timesteps"):
        RFlowProcess(10).sampling_times("euler", 11, (1, 1, 2, 2))
    with pytest.raises(ConfigError, match="DDPM grids"):
        RFlowProcess(T).sampling_times("euler", 10, (1, 1, 2, 2), spacing="trailing")


# --- losses and objective ---------------------------------------------------------------------

def test_diffusion_loss_closed_forms():
    pred = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert diffusion_loss(pred, target).item() == pytest.approx((1 + 4 + 0.25 + 4) / 4)
    assert diffusion_loss(pred, target, "l1").item() == pytest.approx((1 + 2 + 0.5 + 2) / 4)
    assert diffusion_loss(pred, target, "l2", "sum").item() == pytest.approx(9.25)
    torch.testing.assert_close(diffusion_loss(pred, target, "l1", "per_sample"), torch.tensor([1.5, 1.25]))
    torch.testing.assert_close(diffusion_loss(pred, target, "l2", "none"), (pred - target) ** 2)
    torch.testing.assert_close(diffusion_loss(pred, target, "l2", "per_sample", weight=torch.tensor([2.0, 0.0])),
                               torch.tensor([5.0, 0.0]))
    out = diffusion_loss(pred.bfloat16(), target.bfloat16())
    assert out.dtype == torch.float32
    with pytest.raises(ConfigError, match="loss='l3'"):
        diffusion_loss(pred, target, "l3")
    with pytest.raises(ConfigError, match="reduction"):
        diffusion_loss(pred, target, "l2", "avg")
    with pytest.raises(ValueError, match="differs from target shape"):
        diffusion_loss(pred, target[:1])


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_objective_ddpm_draw(prediction):
    p = _ddpm("cosine", prediction)
    obj = TrainingObjective(p, "l2")
    x0 = torch.randn(8, 2, 4, 4, 4, generator=torch.Generator().manual_seed(10))
    nb = obj.draw(x0, torch.Generator().manual_seed(11))
    assert nb.t.dtype == torch.long and torch.equal(nb.model_t, nb.t)
    torch.testing.assert_close(nb.x_t, p.add_noise(x0, nb.noise, nb.t))
    torch.testing.assert_close(nb.target, p.training_target(x0, nb.noise, nb.t))
    assert obj.loss(nb.target, nb).item() == 0.0
    again = obj.draw(x0, torch.Generator().manual_seed(11))
    assert torch.equal(again.x_t, nb.x_t) and torch.equal(again.t, nb.t)
    # caller-provided draws (the engine's per-sample seeded noise) are used as given
    u = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.999])
    given = obj.draw(x0, noise=nb.noise, u=u)
    assert given.t.tolist() == [0, 100, 200, 300, 400, 500, 600, 999]
    assert torch.equal(given.noise, nb.noise)


def test_objective_rflow_draw_and_errors():
    obj = build_objective(DiffusionConfig(scheduler="rflow", loss="l1"))
    x0 = torch.randn(4, 1, 6, 6)
    nb = obj.draw(x0, torch.Generator().manual_seed(12))
    s = nb.t.view(-1, 1, 1, 1)
    torch.testing.assert_close(nb.x_t, (1 - s) * x0 + s * nb.noise)
    torch.testing.assert_close(nb.target, x0 - nb.noise)
    torch.testing.assert_close(nb.model_t, (nb.t * T).round())
    assert obj.loss(nb.target + 1.0, nb).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="noise shape"):
        obj.draw(x0, noise=torch.zeros(4, 1, 6, 5))
    with pytest.raises(ValueError, match=r"u must have shape \(4,\)"):
        obj.draw(x0, u=torch.zeros(3))
    with pytest.raises(ConfigError, match="loss"):
        TrainingObjective(obj.process, "huber")


# --- config -----------------------------------------------------------------------------------

def test_config_defaults_are_seed_000():
    cfg = DiffusionConfig.from_dict(None)
    p = build_process(cfg)
    assert isinstance(p, DDPMProcess) and p.prediction == "epsilon" and p.schedule.name == "linear"
    assert p.schedule.betas[0].item() == pytest.approx(1e-4) and p.schedule.betas[-1].item() == pytest.approx(0.02)
    assert cfg.solver == "ddpm" and cfg.sampling_kwargs()["spacing"] == "linspace"


def test_config_wfdm_variants():
    rf = DiffusionConfig.from_dict({"scheduler": "rflow", "time_sampling": "logit-normal",
                                    "sampling": {"steps": 50}})
    p = build_process(rf)
    assert isinstance(p, RFlowProcess) and p.prediction == "v_prediction" and p.time_sampling == "logit-normal"
    assert rf.sampling_kwargs() == {"solver": "euler", "steps": 50, "eta": 0.0, "guidance_scale": 1.0,
                                    "clip_x0": None}
    dd = DiffusionConfig.from_dict({"beta_schedule": "cosine", "prediction": "v_prediction", "loss": "l1",
                                    "beta_start": "1e-4", "sampling": {"solver": "ddim", "steps": 50, "eta": 0.5}})
    p = build_process(dd)
    assert isinstance(p, DDPMProcess) and p.schedule.name == "cosine" and p.prediction == "v_prediction"
    assert build_objective(dd, p).loss_kind == "l1" and dd.sampling_kwargs()["solver"] == "ddim"


@pytest.mark.parametrize("raw, message", [
    ({"scheduler": "rflow", "prediction": "epsilon"}, "predicts velocity"),
    ({"scheduler": "rflow", "sampling": {"solver": "ddim"}}, "does not apply to rflow"),
    ({"sampling": {"solver": "euler"}}, "does not apply to ddpm"),
    ({"sampling": {"eta": 0.5}}, "solver: ddim only"),
    ({"sampling": {"solver": "ddim", "eta": -1.0}}, "must be >= 0"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule='sigmoid' is unknown"),
    ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start <= beta_end"),
    ({"num_train_timesteps": 100, "sampling": {"steps": 200}}, "exceeds num_train_timesteps"),
    ({"scheduler": "rflow", "sampling": {"clip_x0": [-1, 1]}}, "clip_x0 applies"),
    ({"sampling": {"clip_x0": [1, -1]}}, "low < high"),
    ({"sampling": {"guidance_scale": float("nan")}}, "finite"),
    ({"scheduler": "ddim"}, "scheduler='ddim' is not allowed"),
    ({"prediction_type": "epsilon"}, "unknown key diffusion.prediction_type"),
])
def test_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        DiffusionConfig.from_dict(raw)
