"""The probability-flow ODE reference (diffsched.exact.reference): convergence, exact solutions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference_checks import (
    assert_converges,
    nearest_training_image,
    relative_difference,
    rk4,
    start_points,
)

from diffsched.exact.models import EmpiricalDenoiser, GaussianMixture, make_denoiser
from diffsched.exact.reference import SIGMA_MIN, sigma_from_alpha_bar, solve_pf_ode

ALPHA_BAR_START = 0.05  # σ ≈ 4.4, the noisy end of a typical sampling run


def rk4_log_sigma(denoiser, x_start, alpha_bar_start, sigma_end, steps):
    """x̃(σ_end) by classical fixed-step RK4 in u = log σ on dx̃/du = x̃ - E[x_0 | x̃].

    Written independently of the reference: the denoiser is called with its VP arguments
    x_t = x̃ / sqrt(1 + σ²), ᾱ = 1 / (1 + σ²) directly.
    """

    def slope(u, y):
        variance = 1.0 + math.exp(2 * u)  # 1 + σ² = 1/ᾱ
        return y - denoiser.posterior_mean(y / math.sqrt(variance), 1.0 / variance)

    u0 = math.log(sigma_from_alpha_bar(alpha_bar_start))
    y = x_start / math.sqrt(alpha_bar_start)
    return rk4(slope, y, u0, math.log(sigma_end), steps)


@pytest.mark.parametrize("name", ["digits", "gmm"])
@pytest.mark.parametrize("alpha_bar_end", [0.6, 1.0])
def test_converges_when_tolerance_is_tightened(name, alpha_bar_end):
    x = start_points(name, 3, seed=0)
    assert_converges(solve_pf_ode, make_denoiser(name), x, ALPHA_BAR_START, alpha_bar_end,
                     rtol=1e-11, atol=1e-13, tol=1e-8)  # fmt: skip


@pytest.mark.parametrize("name", ["digits", "gmm"])
@pytest.mark.parametrize("alpha_bar_end", [0.6, 1.0])
def test_matches_fixed_step_rk4(name, alpha_bar_end):
    """500 RK4 steps in log σ (h ≈ 0.04 down to σ_min; error ~1e-11 to 1e-8) agree to 1e-6.

    For digits at ᾱ_end = 1 the RK4 end point is snapped to the nearest training image
    instead of calling the denoiser, an independent route to the σ → 0 limit.
    """
    denoiser = make_denoiser(name)
    x = start_points(name, 3, seed=1)
    reference = solve_pf_ode(denoiser, x, ALPHA_BAR_START, alpha_bar_end)
    if alpha_bar_end < 1:
        sigma_end = sigma_from_alpha_bar(alpha_bar_end)
        crude = math.sqrt(alpha_bar_end) * rk4_log_sigma(
            denoiser, x, ALPHA_BAR_START, sigma_end, 500
        )
    else:
        end = rk4_log_sigma(denoiser, x, ALPHA_BAR_START, SIGMA_MIN, 500)
        if name == "digits":
            crude = nearest_training_image(denoiser, end)
        else:
            crude = denoiser.posterior_mean(end, 1 / (1 + SIGMA_MIN**2))
    assert relative_difference(reference, crude) < 1e-6


@pytest.mark.parametrize("dim", [1, 3])
def test_single_gaussian_closed_form(dim):
    """For data N(μ, s² I) the flow is x̃(σ) - μ = (x̃(σ_0) - μ) sqrt((s² + σ²)/(s² + σ_0²))."""
    gmm = GaussianMixture(n_components=1, dim=dim, seed=5, std_range=(0.05, 0.05))
    mu, s = gmm.means[0], gmm.stds[0]
    x = start_points("gmm", 4, seed=2)[:, :1] + np.zeros((1, dim))
    x_tilde = x / math.sqrt(ALPHA_BAR_START)
    sigma0 = sigma_from_alpha_bar(ALPHA_BAR_START)
    for alpha_bar_end in (0.3, 0.99, 0.9999, 1.0):
        sigma = sigma_from_alpha_bar(alpha_bar_end)
        exact = mu + (x_tilde - mu) * math.sqrt((s**2 + sigma**2) / (s**2 + sigma0**2))
        exact = math.sqrt(alpha_bar_end) * exact
        got = solve_pf_ode(gmm, x, ALPHA_BAR_START, alpha_bar_end)
        assert relative_difference(got, exact) < 1e-9, alpha_bar_end


def test_single_point_closed_form():
    """For one data point y, D = y and the flow is x̃(σ) = y + (x̃(σ_0) - y) σ / σ_0."""
    y = np.linspace(-1, 1, 6)
    denoiser = EmpiricalDenoiser(y[None])
    x = start_points("gmm", 6, seed=3)[:, :1] + np.zeros((1, 6))
    x_tilde = x / math.sqrt(ALPHA_BAR_START)
    sigma0 = sigma_from_alpha_bar(ALPHA_BAR_START)
    for alpha_bar_end in (0.3, 0.99):
        sigma = sigma_from_alpha_bar(alpha_bar_end)
        exact = math.sqrt(alpha_bar_end) * (y + (x_tilde - y) * sigma / sigma0)
        got = solve_pf_ode(denoiser, x, ALPHA_BAR_START, alpha_bar_end)
        assert relative_difference(got, exact) < 1e-9
    np.testing.assert_array_equal(
        solve_pf_ode(denoiser, x, ALPHA_BAR_START, 1.0), np.broadcast_to(y, x.shape)
    )


def test_clean_limit_mixture_tail_is_negligible():
    """For a mixture the σ → 0 limit taken at σ_min has an error c σ_min² (docstring).

    Ending at σ_min = 1e-5 and 1e-6 must differ from ending at 1e-7 by ratios of ~100:1
    (the σ² law, so the solver noise is negligible), and the law then bounds the error of the
    default σ_min = 1e-7 by |r(1e-6) - r(1e-7)| / 99, which must be below 1e-12 relative.
    It is also checked directly against the exact one-component flow at σ_min.
    """
    gmm = GaussianMixture()
    x = start_points("gmm", 16, seed=4)
    final = {s: solve_pf_ode(gmm, x, ALPHA_BAR_START, 1.0, sigma_min=s) for s in (1e-5, 1e-6)}
    default = solve_pf_ode(gmm, x, ALPHA_BAR_START, 1.0)
    far, near = (np.max(np.abs(final[s] - default)) for s in (1e-5, 1e-6))
    assert 80 < far / near < 120
    assert near / 99 < 1e-12 * np.max(np.abs(default))
    # One component (the responsibilities are frozen far above σ_min): x̃(σ) known exactly.
    rng = np.random.default_rng(5)
    k = np.argmin(gmm.stds)  # the worst case: error ∝ 1/s
    clean = gmm.means[k] + 3 * gmm.stds[k] * rng.choice([-1.0, 1.0], size=(4, 2))
    x_tilde = gmm.means[k] + (clean - gmm.means[k]) * math.sqrt(1 + SIGMA_MIN**2 / gmm.stds[k] ** 2)
    limit = gmm.posterior_mean(x_tilde / math.sqrt(1 + SIGMA_MIN**2), 1 / (1 + SIGMA_MIN**2))
    assert np.max(np.abs(limit - clean)) < 1e-12


def test_clean_limit_digits_is_a_training_image():
    """For empirical data the flow ends exactly on a training image, whatever σ_min."""
    denoiser = make_denoiser("digits")
    x = start_points("digits", 4, seed=6)
    default = solve_pf_ode(denoiser, x, ALPHA_BAR_START, 1.0)
    flat = default.reshape(4, 64)
    gaps = np.min(np.sum((flat[:, None] - denoiser.data[None]) ** 2, axis=2), axis=1)
    assert np.all(gaps < 1e-24)
    coarse = solve_pf_ode(denoiser, x, ALPHA_BAR_START, 1.0, sigma_min=1e-3)
    np.testing.assert_allclose(coarse, default, rtol=0, atol=1e-12)


def test_composition():
    """Solving ᾱ_0 → ᾱ_1 then ᾱ_1 → ᾱ_2 equals solving ᾱ_0 → ᾱ_2 (a flow map)."""
    gmm = GaussianMixture(dim=3, seed=1)
    x = start_points("gmm", 5, seed=7)[:, :1] * np.ones((1, 3))
    for end in (0.95, 1.0):
        direct = solve_pf_ode(gmm, x, 0.02, end)
        middle = solve_pf_ode(gmm, x, 0.02, 0.4)
        assert relative_difference(solve_pf_ode(gmm, middle, 0.4, end), direct) < 1e-9


def test_trivial_interval_and_validation():
    gmm = GaussianMixture()
    x = start_points("gmm", 2, seed=8)
    same = solve_pf_ode(gmm, x, 0.3, 0.3)
    np.testing.assert_array_equal(same, x)
    assert same is not x
    with pytest.raises(ValueError, match=r"alpha_bar_start must be in \(0.0, 1.0\), got 0.0"):
        solve_pf_ode(gmm, x, 0.0, 0.5)
    with pytest.raises(ValueError, match="alpha_bar_start must be in"):
        solve_pf_ode(gmm, x, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"alpha_bar_end must be in \[0.3, 1.0\], got 0.2"):
        solve_pf_ode(gmm, x, 0.3, 0.2)
    with pytest.raises(ValueError, match="alpha_bar_end must be in"):
        solve_pf_ode(gmm, x, 0.3, 1.5)
    with pytest.raises(ValueError, match="batch axis"):
        solve_pf_ode(gmm, np.float64(1.0), 0.3, 0.5)
    with pytest.raises(ValueError, match="finite"):
        solve_pf_ode(gmm, np.full((1, 2), np.nan), 0.3, 0.5)
    with pytest.raises(ValueError, match="posterior_mean"):
        solve_pf_ode(object(), x, 0.3, 0.5)
    with pytest.raises(ValueError, match="sigma_min"):
        solve_pf_ode(gmm, x, 0.3, 1.0, sigma_min=0.0)
