"""The exact flow-matching models and the rectified-flow ODE reference
(diffsched.exact.models.FlowModel, diffsched.exact.reference.solve_flow_ode): convergence,
an independent RK4, the probability-flow ODE it is, closed forms, and the flow samplers
converging to it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference_checks import (
    assert_converges,
    nearest_training_image,
    relative_difference,
    rk4,
    start_points,
)

from diffsched.exact import models
from diffsched.exact.models import (
    EmpiricalDenoiser,
    FlowModel,
    GaussianMixture,
    flow_posterior_mean,
    make_denoiser,
    make_flow_model,
)
from diffsched.exact.reference import SIGMA_MIN, solve_flow_ode, solve_pf_ode
from diffsched.methods.flow_match import FlowMatchEuler, FlowMatchHeun


def velocity(denoiser, x, sigma):
    """v = (x - E[x_0 | x]) / σ, the posterior mean taken by the variance-exploding route,
    independently of flow_posterior_mean: x̃ = x / (1 - σ) at level s = σ / (1 - σ), called
    with its VP arguments x̃ / sqrt(1 + s²), ᾱ = 1 / (1 + s²) (at σ = 1: ᾱ = 0, x_t = x)."""
    if sigma == 1.0:
        x0 = denoiser.posterior_mean(x, 0.0)
    else:
        s = sigma / (1 - sigma)
        x0 = denoiser.posterior_mean(x / (1 - sigma) / math.sqrt(1 + s * s), 1 / (1 + s * s))
    return (x - x0) / sigma


def rk4_sigma(denoiser, x, sigma_start, sigma_end, steps):
    """x(σ_end) by classical fixed-step RK4 in σ itself on dx/dσ = v(x, σ)."""
    y = np.array(x, dtype=np.float64)
    return rk4(lambda s, y: velocity(denoiser, y, s), y, sigma_start, sigma_end, steps)


LEVELS = [(1.0, 0.3), (1.0, 0.0), (0.7, 0.05), (0.7, 0.0)]


@pytest.mark.parametrize("name", ["digits", "gmm"])
@pytest.mark.parametrize(("sigma_start", "sigma_end"), LEVELS)
def test_converges_when_tolerance_is_tightened(name, sigma_start, sigma_end):
    x = start_points(name, 3, seed=0)
    assert_converges(solve_flow_ode, make_denoiser(name), x, sigma_start, sigma_end,
                     rtol=1e-12, atol=1e-14, tol=1e-9)  # fmt: skip


@pytest.mark.parametrize("name", ["digits", "gmm"])
@pytest.mark.parametrize(("sigma_start", "sigma_end"), LEVELS)
def test_matches_fixed_step_rk4(name, sigma_start, sigma_end):
    """500 RK4 steps in σ (not in log σ, with the VE route to the posterior mean) agree to
    1e-8. To σ = 0 RK4 runs to σ_min, then digits snap to the nearest training image and
    the mixture takes the posterior mean there."""
    denoiser = make_denoiser(name)
    x = start_points(name, 3, seed=1)
    reference = solve_flow_ode(denoiser, x, sigma_start, sigma_end)
    crude = rk4_sigma(denoiser, x, sigma_start, max(sigma_end, SIGMA_MIN), 500)
    if sigma_end == 0:
        if name == "digits":
            crude = nearest_training_image(denoiser, crude)
        else:
            crude = crude - SIGMA_MIN * velocity(denoiser, crude, SIGMA_MIN)  # x̂_0 (eq. 2)
    assert relative_difference(reference, crude) < 1e-8


@pytest.mark.parametrize("name", ["digits", "gmm"])
@pytest.mark.parametrize(("sigma_start", "sigma_end"), [(0.8, 0.2), (0.8, 0.0), (0.3, 0.01)])
def test_is_the_probability_flow_ode(name, sigma_start, sigma_end):
    """The same ODE as solve_pf_ode's in the variance-exploding variable x̃ = x / (1 - σ) at
    level s = σ / (1 - σ), ᾱ = 1 / (1 + s²) (VP sample sqrt(ᾱ) x̃)."""
    denoiser = make_denoiser(name)
    x = start_points(name, 3, seed=2) * sigma_start
    flow = solve_flow_ode(denoiser, x, sigma_start, sigma_end)

    def alpha_bar(sigma):
        return 1 / (1 + (sigma / (1 - sigma)) ** 2)

    a_start, a_end = alpha_bar(sigma_start), alpha_bar(sigma_end)
    vp = solve_pf_ode(denoiser, math.sqrt(a_start) * x / (1 - sigma_start), a_start, a_end)
    converted = vp if sigma_end == 0 else (1 - sigma_end) * vp / math.sqrt(a_end)
    assert relative_difference(flow, converted) < 1e-8


@pytest.mark.parametrize("sigma_start", [1.0, 0.6])
def test_single_gaussian_closed_form(sigma_start):
    """For data N(μ, s² I): x(σ) = (1 - σ) μ + sqrt((1 - σ)² s² + σ²) z, z constant."""
    gmm = GaussianMixture(n_components=1, dim=3, seed=5, std_range=(0.05, 0.05))
    mu, s = gmm.means[0], gmm.stds[0]
    x = start_points("gmm", 4, seed=3)[:, :1] + np.zeros((1, 3))
    z = (x - (1 - sigma_start) * mu) / math.hypot((1 - sigma_start) * s, sigma_start)
    for sigma in (0.5, 0.01, 1e-4, 0.0):
        exact = (1 - sigma) * mu + math.hypot((1 - sigma) * s, sigma) * z
        got = solve_flow_ode(gmm, x, sigma_start, sigma)
        assert relative_difference(got, exact) < 1e-9, sigma


def test_single_point_is_a_straight_line():
    """For one data point y the flow is the straight line x(σ) = y + σ (x(1) - y) / 1."""
    y = np.linspace(-1, 1, 6)
    denoiser = EmpiricalDenoiser(y[None])
    x = start_points("gmm", 3, seed=4)[:, :1] + np.zeros((1, 6))
    for sigma in (0.9, 0.4, 1e-3):
        got = solve_flow_ode(denoiser, x, 1.0, sigma)
        assert relative_difference(got, y + sigma * (x - y)) < 1e-10
    np.testing.assert_array_equal(
        solve_flow_ode(denoiser, x, 1.0, 0.0), np.broadcast_to(y, x.shape)
    )


def test_composition_and_trivial_interval():
    gmm = GaussianMixture(dim=3, seed=1)
    x = start_points("gmm", 5, seed=7)[:, :1] * np.ones((1, 3))
    for end in (0.05, 0.0):
        direct = solve_flow_ode(gmm, x, 1.0, end)
        middle = solve_flow_ode(gmm, x, 1.0, 0.4)
        assert relative_difference(solve_flow_ode(gmm, middle, 0.4, end), direct) < 1e-9
    same = solve_flow_ode(gmm, x, 0.3, 0.3)
    np.testing.assert_array_equal(same, x)
    assert same is not x


def test_validation():
    gmm = GaussianMixture()
    x = start_points("gmm", 2, seed=8)
    with pytest.raises(ValueError, match=r"sigma_start must be in \(0.0, 1.0\], got 0.0"):
        solve_flow_ode(gmm, x, 0.0, 0.0)
    with pytest.raises(ValueError, match="sigma_start must be in"):
        solve_flow_ode(gmm, x, 1.5, 0.0)
    with pytest.raises(ValueError, match=r"sigma_end must be in \[0.0, 0.5\], got 0.6"):
        solve_flow_ode(gmm, x, 0.5, 0.6)
    with pytest.raises(ValueError, match="batch axis"):
        solve_flow_ode(gmm, np.float64(1.0), 1.0, 0.5)
    with pytest.raises(ValueError, match="posterior_mean"):
        solve_flow_ode(object(), x, 1.0, 0.5)
    with pytest.raises(ValueError, match="sigma_min"):
        solve_flow_ode(gmm, x, 1.0, 0.0, sigma_min=0.0)


# -- the exact flow model ------------------------------------------------------------------


def test_flow_posterior_mean_is_the_denoisers():
    """E[x_0 | x_σ] by (F1) equals the VE route for σ < 1 and the data mean at σ = 1."""
    for name in ("digits", "gmm"):
        denoiser = make_denoiser(name)
        x = start_points(name, 3, seed=9)
        for sigma in (0.999, 0.7, 0.2, 1e-3):
            got = flow_posterior_mean(denoiser, x, sigma)
            ve = x - sigma * velocity(denoiser, x, sigma)
            np.testing.assert_allclose(got, ve, rtol=1e-10, atol=1e-10)
        mean = flow_posterior_mean(denoiser, x, 1.0)
        np.testing.assert_allclose(mean, denoiser.posterior_mean(x, 0.0), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match=r"sigma must be in \(0, 1\]"):
        flow_posterior_mean(make_denoiser("gmm"), x, 0.0)


def test_flow_model_velocity_for_one_point():
    """With one data point y, x̂_0 = y exactly, so the model returns ε - y at t = σ T."""
    y = np.array([0.5, -1.0, 2.0])
    model = models.flow_model_for(EmpiricalDenoiser(y[None]), num_train_steps=500)
    eps = np.random.default_rng(0).standard_normal((4, 3))
    for sigma in (1.0, 0.6, 0.05):
        x = (1 - sigma) * y + sigma * eps
        np.testing.assert_allclose(model(x, sigma * 500), eps - y, rtol=1e-12, atol=1e-12)
    assert model.prediction_type == "flow" and model.num_train_steps == 500


def test_flow_model_on_every_backend():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    model = make_flow_model("gmm")
    x = start_points("gmm", 5, seed=10)
    expected = model(x, 700.0)
    assert isinstance(model, FlowModel) and expected.shape == x.shape
    got_torch = model(torch.asarray(x), torch.tensor(700.0))
    np.testing.assert_allclose(got_torch.numpy(), expected, rtol=1e-12, atol=1e-12)
    jitted = jax.jit(lambda xx, t: model(xx, t))
    np.testing.assert_allclose(np.asarray(jitted(jnp.asarray(x), 700.0)), expected, rtol=1e-12)
    low = model(x.astype(np.float32), np.float32(700.0))
    assert low.dtype == np.float32
    np.testing.assert_allclose(low, expected, rtol=1e-4, atol=1e-4)
    digits = make_flow_model("digits")
    assert digits(start_points("digits", 2, seed=1), 1000).shape == (2, 1, 8, 8)


def test_flow_model_validation():
    model = make_flow_model("gmm", num_train_steps=1000)
    x = start_points("gmm", 2, seed=11)
    for bad in (0, -1.0, 1000.5):
        with pytest.raises(ValueError, match=r"timestep must be in \(0, 1000\]"):
            model(x, bad)
    with pytest.raises(ValueError, match="one-element"):
        model(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="posterior_mean"):
        FlowModel(object())
    with pytest.raises(ValueError, match="num_train_steps"):
        make_flow_model("gmm", num_train_steps=0)
    with pytest.raises(ValueError, match="model name"):
        make_flow_model("mnist")


# -- the flow samplers converge to the reference ----------------------------------------------


def run(sched, n, model, x):
    state, timesteps = sched.init(n, x)
    y = x * sched.init_noise_scale(n)
    for t in timesteps:
        state, y = sched.step(state, y, model(y, float(t)))
    return y


# T = 1e5 puts the last level before 0 at about 1e-5 (shifted twice), so that the jump
# from it to 0 does not hide the order of the method
T = 100_000


def test_flow_samplers_converge_to_the_reference():
    """On the mixture, FlowMatchEuler's error halves and FlowMatchHeun's falls about four
    times when the steps double; both end at the exact flow ODE solution from σ = 1 to 0."""
    model = make_flow_model("gmm", num_train_steps=T)
    x = start_points("gmm", 8, seed=12)
    for sched, steps, (low, high) in (
        (FlowMatchEuler(shift=3.0, num_train_steps=T), (20, 40, 80, 160), (1.8, 2.2)),
        (FlowMatchHeun(shift=3.0, num_train_steps=T), (40, 80, 160, 320), (3.2, 4.5)),
    ):
        start, end = sched.noise_levels(20)
        assert (start, end) == (1.0, 0.0)
        exact = solve_flow_ode(model.denoiser, x, start, end)
        errors = [
            np.linalg.norm(run(sched, n, model, x) - exact) / np.linalg.norm(exact) for n in steps
        ]
        ratios = [errors[i] / errors[i + 1] for i in range(len(errors) - 1)]
        assert all(low < r < high for r in ratios), (type(sched).__name__, errors, ratios)
        assert errors[-1] < 1e-2


def test_heun_lands_on_the_reference_digits():
    """On the digits the flow ends on training images; 80 Heun steps find the same ones."""
    model = make_flow_model("digits", num_train_steps=T)
    x = start_points("digits", 4, seed=13)
    sched = FlowMatchHeun(shift=3.0, num_train_steps=T)
    exact = solve_flow_ode(model.denoiser, x, *sched.noise_levels(80))
    assert relative_difference(run(sched, 80, model, x), exact) < 1e-9
