"""Sampler grids and steps (against MONAI), the sampling loop on a Gaussian toy with an exact
oracle denoiser, classifier-free guidance, determinism, trajectories and errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler

from bsynth_hpc.diffusion import (DDPMProcess, RFlowProcess, cfg_combine, concat_conditions, ddpm_timesteps,
                                  guided_output, make_schedule, sample, trajectory_indices)
from bsynth_hpc.errors import ConfigError

T = 1000
MU, SIGMA = 1.5, 0.5  # toy data: every element ~ N(MU, SIGMA²)


def _ddpm(schedule: str = "cosine", prediction: str = "epsilon", variance: str = "fixed_small") -> DDPMProcess:
    return DDPMProcess(make_schedule(schedule, T), prediction, variance)


def monai_float64(ref, process: DDPMProcess):
    """Run a MONAI scheduler on our float64 tables, so comparisons test formulas, not float32 rounding."""
    ref.betas, ref.alphas, ref.alphas_cumprod = (process.schedule.betas, process.schedule.alphas,
                                                 process.schedule.alphas_cumprod)
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(ref, "final_alpha_cumprod"):
        ref.final_alpha_cumprod = ref.one
    return ref


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def ddpm_oracle(p: DDPMProcess):
    """Exact E[target | x_t] for x0 ~ N(mu, SIGMA²), in p's prediction type.

    E[ε | x_t] = b (x_t - a mu)/(a² SIGMA² + b²) with a = √ᾱ_t, b = √(1 - ᾱ_t).

    ``cond`` is None (mu = MU) or {"mu": (B, 1) tensor}.
    """
    def fn(x: torch.Tensor, model_t: torch.Tensor, cond) -> torch.Tensor:
        mu = MU if cond is None else _col(cond["mu"], x)
        abar = _col(p.alpha_bar(model_t), x)
        a, b = abar.sqrt(), (1 - abar).sqrt()
        eps = b * (x - a * mu) / (a * a * SIGMA ** 2 + b * b)
        return p.convert(eps, x, model_t, source="epsilon", target=p.prediction)
    return fn


def rflow_oracle(p: RFlowProcess):
    """Exact E[x0 - ε | x_s] for x0 ~ N(mu, SIGMA²), x_s = (1-s) x0 + s ε."""
    def fn(x: torch.Tensor, model_t: torch.Tensor, cond) -> torch.Tensor:
        mu = MU if cond is None else _col(cond["mu"], x)
        s = _col(model_t.double() / p.num_train_timesteps, x)
        var = (1 - s) ** 2 * SIGMA ** 2 + s ** 2
        centred = x - (1 - s) * mu
        return (mu + (1 - s) * SIGMA ** 2 / var * centred) - s / var * centred
    return fn


def standard_noise(n: int, seed: int = 0) -> torch.Tensor:
    """x_T with sample mean exactly 0 and std exactly 1, so deterministic samplers show only their bias."""
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (z - z.mean()) / z.std()


# --- grids ------------------------------------------------------------------------------------

def test_ddpm_grids_closed_forms():
    lead = ddpm_timesteps(T, 50, "leading")
    trail = ddpm_timesteps(T, 50, "trailing")
    lin = ddpm_timesteps(T, 50, "linspace")
    assert lead == list(range(980, -1, -20))
    assert trail == list(range(999, 18, -20))
    assert lin[0] == 999 and lin[-1] == 0 and len(set(lin)) == 50
    assert ddpm_timesteps(T, T, "linspace") == ddpm_timesteps(T, T, "trailing") == list(range(999, -1, -1))
    assert ddpm_timesteps(T, 1, "linspace") == [999] and ddpm_timesteps(T, 1, "trailing") == [999]
    for spacing in ("leading", "trailing", "linspace"):
        for n in (1, 7, 50, 333, 999):
            ts = ddpm_timesteps(T, n, spacing)
            assert len(ts) == n and all(a > b for a, b in zip(ts, ts[1:])) and 0 <= ts[-1] and ts[0] <= T - 1
    pairs = _ddpm().sampling_times("ddim", 4, (1,), "leading")
    assert pairs == [(750, 500), (500, 250), (250, 0), (0, -1)]


@pytest.mark.parametrize("n", [1, 10, 50, 999])
def test_linspace_grid_matches_monai(n):
    ref = DDPMScheduler(num_train_timesteps=T)
    ref.set_timesteps(n)
    assert ddpm_timesteps(T, n, "linspace") == ref.timesteps.tolist()
    ref = DDIMScheduler(num_train_timesteps=T)
    ref.set_timesteps(n)
    assert ddpm_timesteps(T, n, "linspace") == ref.timesteps.tolist()


def test_grid_errors():
    with pytest.raises(ConfigError, match="between 1 and num_train_timesteps=1000"):
        ddpm_timesteps(T, 1001)
    with pytest.raises(ConfigError, match="between 1 and"):
        ddpm_timesteps(T, 0)
    with pytest.raises(ConfigError, match="timestep_spacing='uniform'"):
        ddpm_timesteps(T, 10, "uniform")


@pytest.mark.parametrize("steps", [50, 7])
def test_rflow_grid_matches_monai(steps):
    p = RFlowProcess(T)
    ref = RFlowScheduler(num_train_timesteps=T)
    ref.set_timesteps(steps)
    pairs = p.sampling_times("euler", steps, (1, 4, 8, 8, 8))
    assert [round(s * T) for s, _ in pairs] == ref.timesteps.tolist()
    assert pairs[-1][1] == 0.0 and all(a == b for (_, a), (b, _) in zip(pairs, pairs[1:]))
    # with the resolution shift (MONAI quantises these through float16, hence the tolerance)
    kw = dict(use_timestep_transform=True, base_img_size_numel=8 ** 3)
    p = RFlowProcess(T, discrete_timesteps=False, **kw)
    ref = RFlowScheduler(num_train_timesteps=T, use_discrete_timesteps=False, spatial_dim=3, **kw)
    ref.set_timesteps(steps, input_img_size_numel=16 * 16 * 16)
    ours = torch.tensor(p.inference_times(steps, (1, 4, 16, 16, 16)), dtype=torch.float64) * T
    torch.testing.assert_close(ours, ref.timesteps.double(), rtol=0, atol=0.5)


# --- single steps against MONAI ---------------------------------------------------------------

@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_step_matches_monai(prediction, variance, clip):
    p = _ddpm("linear", prediction, variance)
    ref = monai_float64(DDPMScheduler(num_train_timesteps=T, variance_type=variance, clip_sample=clip,
                                      prediction_type=prediction), p)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g)
    out = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g)
    for t in (999, 500, 1, 0):
        prev, x0 = ref.step(out, t, x, generator=torch.Generator().manual_seed(t))
        ours = p.ddpm_step(out, x, t, t - 1, generator=torch.Generator().manual_seed(t),
                           clip_x0=(-1.0, 1.0) if clip else None)
        torch.testing.assert_close(ours.pred_x0, x0, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours.prev_sample, prev, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_monai(prediction, eta):
    p = _ddpm("scaled_linear", prediction)
    ref = monai_float64(DDIMScheduler(num_train_timesteps=T, clip_sample=False, prediction_type=prediction), p)
    ref.set_timesteps(50)  # MONAI steps from t to t - T // 50
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 4, 4, dtype=torch.float64, generator=g)
    out = torch.randn(2, 3, 4, 4, 4, dtype=torch.float64, generator=g)
    for t in (980, 520, 20, 0):
        prev, x0 = ref.step(out, t, x, eta=eta, generator=torch.Generator().manual_seed(t))
        ours = p.ddim_step(out, x, t, max(t - 20, -1), eta=eta, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(ours.pred_x0, x0, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours.prev_sample, prev, rtol=1e-10, atol=1e-10)


def test_ddim_eta_one_has_ancestral_variance():
    """Song et al. §4.1: η = 1 gives the DDPM posterior variance β̃ (the means differ by construction)."""
    p = _ddpm("linear")
    x, out = torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    z = torch.ones(1, 1, dtype=torch.float64)
    for t, s in [(500, 499), (999, 979)]:
        base = p.ddim_step(out, x, t, s, eta=1.0, noise=torch.zeros_like(z)).prev_sample
        spread = p.ddim_step(out, x, t, s, eta=1.0, noise=z).prev_sample - base
        _, var = p.posterior(x, x, t, s)
        assert spread.item() == pytest.approx(var.sqrt().item(), rel=1e-10)


def test_rflow_euler_step_matches_monai():
    p = RFlowProcess(T)
    ref = RFlowScheduler(num_train_timesteps=T)
    ref.set_timesteps(50)
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(2, 4, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, 4, generator=g)
    for s, s_next in p.sampling_times("euler", 50, x.shape)[::16]:
        prev, x0 = ref.step(v, round(s * T), x, round(s_next * T))
        ours = p.step("euler", v, x, s, s_next)
        torch.testing.assert_close(ours.prev_sample, prev)
        torch.testing.assert_close(ours.pred_x0, x0)


# --- sampling a Gaussian toy with the exact denoiser ------------------------------------------

@pytest.mark.parametrize("schedule, mean_tol", [("cosine", 0.002), ("linear", 0.01)])
def test_ddim_recovers_gaussian_and_converges_with_steps(schedule, mean_tol):
    p = _ddpm(schedule)
    errors = []
    for steps in (25, 50, 200):
        x = sample(ddpm_oracle(p), (4096, 1), p, steps, solver="ddim", x_init=standard_noise(4096),
                   dtype=torch.float64).sample
        # the linear schedule starts from N(0, 1) where the true marginal has mean √ᾱ_T·MU ≈ 0.01
        assert abs(x.mean().item() - MU) < mean_tol
        errors.append(abs(x.std().item() - SIGMA))
    # DDIM is a first-order ODE solver: the std bias shrinks ~4x from 50 to 200 steps and ends within 2 % of SIGMA
    assert errors[0] > errors[1] > errors[2]
    assert 3.0 < errors[1] / errors[2] < 5.0 and errors[2] < 0.01


def test_rflow_euler_recovers_gaussian_and_converges_with_steps():
    p = RFlowProcess(T)
    errors = []
    for steps in (10, 50, 200):
        x = sample(rflow_oracle(p), (4096, 1), p, steps, x_init=standard_noise(4096), dtype=torch.float64).sample
        errors.append((abs(x.mean().item() - MU), abs(x.std().item() - SIGMA)))
    assert all(mean_err < 1e-3 for mean_err, _ in errors)
    std_errors = [e for _, e in errors]
    assert std_errors[0] > std_errors[1] > std_errors[2]
    assert 3.0 < std_errors[1] / std_errors[2] < 5.0 and std_errors[2] < 0.005  # first-order Euler convergence
    assert std_errors[1] < 0.02  # 50 Euler steps (seed 003's setting): within 4 % of SIGMA


def test_ddpm_ancestral_recovers_gaussian():
    p = _ddpm("cosine")
    n = 4000
    x = sample(ddpm_oracle(p), (n, 1), p, generator=torch.Generator().manual_seed(3), dtype=torch.float64).sample
    # 1000 stochastic steps: only Monte-Carlo error remains (5 standard errors)
    assert abs(x.mean().item() - MU) < 5 * SIGMA / np.sqrt(n)
    assert abs(x.std().item() - SIGMA) < 5 * SIGMA / np.sqrt(2 * n)


def test_prediction_types_give_the_same_samples():
    outs = []
    for prediction in ("epsilon", "v_prediction", "sample"):
        p = _ddpm("linear", prediction)
        outs.append(sample(ddpm_oracle(p), (256, 1), p, 30, solver="ddim", generator=torch.Generator().manual_seed(4),
                           dtype=torch.float64).sample)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-9, atol=1e-9)


# --- classifier-free guidance -----------------------------------------------------------------

def _recording(fn):
    calls: list[int] = []

    def wrapped(x, t, cond):
        calls.append(x.shape[0])
        return fn(x, t, cond)
    return wrapped, calls


def test_guided_output_combines_one_batched_forward():
    p = _ddpm()
    model, calls = _recording(ddpm_oracle(p))
    x = torch.randn(3, 1, dtype=torch.float64)
    t = torch.full((3,), 400)
    cond = {"mu": torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)}
    uncond = {"mu": torch.zeros(1, 1, dtype=torch.float64)}  # batch 1 broadcasts
    c = ddpm_oracle(p)(x, t, cond)
    u = ddpm_oracle(p)(x, t, {"mu": torch.zeros(3, 1, dtype=torch.float64)})
    calls.clear()
    torch.testing.assert_close(guided_output(model, x, t, cond, uncond, 1.0), c, rtol=0, atol=1e-15)
    torch.testing.assert_close(guided_output(model, x, t, cond, uncond, 0.0), u, rtol=0, atol=1e-15)
    torch.testing.assert_close(guided_output(model, x, t, cond, uncond, 3.0), u + 3.0 * (c - u))
    assert calls == [6, 6, 6]
    torch.testing.assert_close(cfg_combine(torch.tensor(2.0), torch.tensor(1.0), 4.0), torch.tensor(5.0))


def test_sampling_with_guidance_one_and_zero():
    p = _ddpm()
    n = 8
    cond = {"mu": torch.full((n, 1), 2.0, dtype=torch.float64)}
    uncond = {"mu": torch.full((n, 1), -1.0, dtype=torch.float64)}

    def run(**kw):
        model, calls = _recording(ddpm_oracle(p))
        out = sample(model, (n, 1), p, 20, solver="ddim", generator=torch.Generator().manual_seed(5),
                     dtype=torch.float64, **kw).sample
        return out, calls

    conditional, calls_c = run(cond=cond)
    unconditional, _ = run(cond=uncond)
    guided1, calls_1 = run(cond=cond, uncond=uncond, guidance_scale=1.0)
    guided0, calls_0 = run(cond=cond, uncond=uncond, guidance_scale=0.0)
    guided3, _ = run(cond=cond, uncond=uncond, guidance_scale=3.0)
    assert torch.equal(guided1, conditional) and calls_1 == calls_c == [n] * 20  # s = 1: no unconditional pass
    torch.testing.assert_close(guided0, unconditional, rtol=0, atol=1e-12)
    assert calls_0 == [2 * n] * 20  # one batched forward per step
    assert guided3.mean().item() > conditional.mean().item() > unconditional.mean().item()


def test_guidance_works_for_rflow_and_nested_conditions():
    p = RFlowProcess(T)

    def model(x, t, cond):
        assert isinstance(cond, dict) and isinstance(cond["extra"], tuple) and cond["tag"] == "wfdm"
        return rflow_oracle(p)(x, t, {"mu": cond["extra"][0]})

    cond = {"extra": (torch.full((4, 1), 2.0),), "tag": "wfdm"}
    uncond = {"extra": (torch.zeros(1, 1),), "tag": "wfdm"}
    g0 = sample(model, (4, 1), p, 10, generator=torch.Generator().manual_seed(6), cond=cond, uncond=uncond,
                guidance_scale=0.0).sample
    ref = sample(model, (4, 1), p, 10, generator=torch.Generator().manual_seed(6),
                 cond={"extra": (torch.zeros(4, 1),), "tag": "wfdm"}).sample
    torch.testing.assert_close(g0, ref)


def test_condition_structure_errors():
    x = torch.zeros(2, 1)
    with pytest.raises(ValueError, match=r"cond: keys \['a'\] differ"):
        concat_conditions({"a": x}, {"b": x}, 2)
    with pytest.raises(ValueError, match=r"cond\.a: unconditional shape \(3, 1\)"):
        concat_conditions({"a": x}, {"a": torch.zeros(3, 1)}, 2)
    with pytest.raises(ValueError, match="non-tensor leaves must be equal"):
        concat_conditions({"a": x, "k": 1}, {"a": x, "k": 2}, 2)
    with pytest.raises(ValueError, match="needs batch 2"):
        concat_conditions(torch.zeros(3, 1), torch.zeros(3, 1), 2)
    both = concat_conditions([x, None], [torch.ones(1, 1), None], 2)
    assert torch.equal(both[0], torch.tensor([[0.0], [0.0], [1.0], [1.0]])) and both[1] is None


# --- determinism, trajectories, early stop ----------------------------------------------------

@pytest.mark.parametrize("solver, eta", [("ddpm", 0.0), ("ddim", 0.5)])
def test_stochastic_samplers_are_deterministic_under_a_seed(solver, eta):
    p = _ddpm()
    kw = dict(solver=solver, eta=eta, spacing="trailing")

    def run(seed):
        return sample(ddpm_oracle(p), (4, 1, 3, 3), p, 25, generator=torch.Generator().manual_seed(seed), **kw).sample

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # the steps inject fresh noise: the same x_T with a different step seed gives another sample
    x_init = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(7))
    d = sample(ddpm_oracle(p), (4, 1, 3, 3), p, 25, generator=torch.Generator().manual_seed(9), x_init=x_init,
               **kw).sample
    assert not torch.allclose(a, d)


def test_trajectory_intermediates():
    assert trajectory_indices(50, 5) == [0, 12, 24, 37, 49]
    assert trajectory_indices(3, 10) == [0, 1, 2] and trajectory_indices(10, 0) == []
    for p, oracle, kw in [(_ddpm(), ddpm_oracle, {"solver": "ddim"}), (RFlowProcess(T), rflow_oracle, {})]:
        out = sample(oracle(p), (16, 1), p, 50, generator=torch.Generator().manual_seed(10),
                     return_intermediates=5, **kw)
        assert len(out.intermediates) == 5 and out.steps_taken == 50
        assert list(out.intermediate_times) == sorted(out.intermediate_times, reverse=True)
        torch.testing.assert_close(out.intermediates[-1], out.sample)
        assert out.intermediates[0].shape == (16, 1)


def test_callback_stops_early_with_the_clean_estimate():
    p = _ddpm()
    seen = []

    def stop_at_four(info):
        seen.append(info.index)
        return info.index == 3

    out = sample(ddpm_oracle(p), (8, 1), p, 50, solver="ddim", generator=torch.Generator().manual_seed(11),
                 return_intermediates=2, callback=stop_at_four)
    assert seen == [0, 1, 2, 3] and out.steps_taken == 4
    assert torch.equal(out.sample, out.intermediates[-1])


# --- errors -----------------------------------------------------------------------------------

def test_sampling_errors():
    p, rf = _ddpm(), RFlowProcess(T)
    model = ddpm_oracle(p)
    with pytest.raises(ConfigError, match="solver 'euler' does not apply to scheduler 'ddpm'"):
        sample(model, (2, 1), p, 5, solver="euler")
    with pytest.raises(ConfigError, match="solver 'ddim' does not apply to scheduler 'rflow'"):
        sample(rflow_oracle(rf), (2, 1), rf, 5, solver="ddim")
    with pytest.raises(ConfigError, match="eta=0.5 applies to the ddim solver only"):
        sample(model, (2, 1), p, 5, solver="ddpm", eta=0.5)
    with pytest.raises(ConfigError, match="clip_x0 applies to DDPM"):
        sample(rflow_oracle(rf), (2, 1), rf, 5, clip_x0=(-1.0, 1.0))
    with pytest.raises(ConfigError, match="needs the unconditional"):
        sample(model, (2, 1), p, 5, guidance_scale=2.0, cond={"mu": torch.ones(2, 1)})
    with pytest.raises(ConfigError, match="between 1 and num_train_timesteps"):
        sample(model, (2, 1), p, 1001)
    with pytest.raises(ValueError, match=r"model output shape \(2, 2\)"):
        sample(lambda x, t, c: torch.cat([x, x], 1), (2, 1), p, 5)
    with pytest.raises(ValueError, match="x_init shape"):
        sample(model, (2, 1), p, 5, x_init=torch.zeros(3, 1))
    with pytest.raises(ConfigError, match="return_intermediates"):
        sample(model, (2, 1), p, 5, return_intermediates=-1)
