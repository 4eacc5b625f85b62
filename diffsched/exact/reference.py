"""The exact probability-flow ODE solution for an exact denoiser (NumPy float64, SciPy).

A deterministic sampler (DDIM, DPM-Solver, ...) is a discretisation of the probability-flow
ODE (Song et al. 2021). In the variance-exploding variable x̃ = x / sqrt(ᾱ) with noise level
σ = sqrt((1-ᾱ)/ᾱ) it reads (Karras et al. 2022, eq. 4 with s(t) = 1, σ(t) = t)

    dx̃/dσ = (x̃ - D(x̃; σ)) / σ,   D(x̃; σ) = E[x_0 | x̃] = posterior_mean(sqrt(ᾱ) x̃, ᾱ),

with ᾱ = 1/(1+σ²). In u = log σ it is dx̃/du = x̃ - D(x̃; e^u), which is smooth over the many
decades of σ a sampler crosses; :func:`solve_pf_ode` integrates it with a high-order adaptive
Runge-Kutta method to near machine precision, giving the reference a sampler converges to.

Flow matching. A rectified-flow sample x = (1 - σ) x_0 + σ ε, σ ∈ [0, 1] (Liu et al. 2022),
is x̃ = x / (1 - σ) at the variance-exploding level σ / (1 - σ), and the same ODE in x and σ
is the flow dx/dσ = v(x, σ) = (x - D_flow(x; σ)) / σ, D_flow(x; σ) = E[x_0 | x] (see
:func:`diffsched.exact.models.flow_posterior_mean`). In τ = log σ it reads

    dx/dτ = x - D_flow(x; e^τ),                                                      (R1)

finite at σ = 1 (τ = 0: pure noise, where D_flow is the data mean), where the flow
samplers start, and smooth over the decades down to σ → 0. :func:`solve_flow_ode`
integrates (R1) with DOP853, from the first level of a flow sampler to its last.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.integrate import solve_ivp

from .models import flow_posterior_mean
from .threads import small_matrices

SIGMA_MIN = 1e-7
"""Where the integration stops when ᾱ_end = 1 (clean data); see :func:`solve_pf_ode`.

Smaller is not possible in float64: ᾱ = 1/(1+σ²) must stay below 1 (σ² > 2^-53).
"""


def sigma_from_alpha_bar(alpha_bar: float) -> float:
    """σ = sqrt((1-ᾱ)/ᾱ) for 0 < ᾱ <= 1 (0 at ᾱ = 1)."""
    return math.sqrt((1.0 - alpha_bar) / alpha_bar)


def _check_interval(value: Any, name: str, low: float, high: float, closed: str) -> float:
    """``value`` as a float in the interval from ``low`` to ``high``, ``closed`` at "low",
    "high" or "both" ends, else ValueError."""
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real number, got {value!r}") from err
    low_ok = value >= low if closed in ("low", "both") else value > low
    high_ok = value <= high if closed in ("high", "both") else value < high
    if not (low_ok and high_ok):
        left = "[" if closed in ("low", "both") else "("
        right = "]" if closed in ("high", "both") else ")"
        raise ValueError(f"{name} must be in {left}{low!r}, {high!r}{right}, got {value!r}")
    return value


def _check_start(denoiser: Any, x_start: Any) -> np.ndarray:
    """``x_start`` as a float64 copy, checked with the ``denoiser`` it goes to."""
    if not callable(getattr(denoiser, "posterior_mean", None)):
        raise ValueError(
            "denoiser must have a posterior_mean(x_t, alpha_bar) method, "
            f"got {type(denoiser).__name__}"
        )
    try:
        x = np.array(x_start, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"x_start must be a real array of shape (B, ...), got {type(x_start).__name__}"
        ) from err
    if x.ndim < 1:
        raise ValueError(f"x_start must have a batch axis, shape (B, ...), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x_start must be finite, got NaN or inf entries")
    return x


def _check_tolerances(rtol: float, atol: float, sigma_min: float) -> None:
    if not (rtol > 0 and atol > 0 and 0 < sigma_min < 1):
        raise ValueError(
            f"rtol, atol and sigma_min must be positive (sigma_min < 1), got "
            f"{rtol!r}, {atol!r}, {sigma_min!r}"
        )


def _dop853(rhs: Any, x: np.ndarray, t_start: float, t_end: float, rtol: float, atol: float,
            what: str) -> np.ndarray:  # fmt: skip
    """x(t_end) from x(t_start) by SciPy's DOP853 on dx/dt = rhs(t, x), every sample of the
    batch in one system (they do not interact, but share steps)."""
    shape = x.shape
    solution = solve_ivp(
        lambda t, y: rhs(t, y.reshape(shape)).ravel(),
        (t_start, t_end),
        x.ravel(),
        method="DOP853",
        t_eval=[t_end],
        rtol=rtol,
        atol=atol,
    )
    if not solution.success:
        raise RuntimeError(f"{what} integration failed: {solution.message}")
    return solution.y[:, -1].reshape(shape)


def denoise_at_sigma(denoiser: Any, x_tilde: np.ndarray, sigma: float) -> np.ndarray:
    """D(x̃; σ) = E[x_0 | x̃ = x_0 + σ ε] = posterior_mean(sqrt(ᾱ) x̃, ᾱ), ᾱ = 1/(1+σ²)."""
    alpha_bar = 1.0 / (1.0 + sigma * sigma)
    with small_matrices():  # small products: one BLAS thread (see .threads)
        return np.asarray(denoiser.posterior_mean(math.sqrt(alpha_bar) * x_tilde, alpha_bar))


def solve_pf_ode(
    denoiser: Any,
    x_start: np.ndarray,
    alpha_bar_start: float,
    alpha_bar_end: float,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    sigma_min: float = SIGMA_MIN,
) -> np.ndarray:
    """The probability-flow ODE solution from ``x_start`` at ᾱ_start to ᾱ_end (VP scaling).

    ``x_start`` (B, *S) is read as float64; 0 < ᾱ_start < 1 and ᾱ_start <= ᾱ_end <= 1, where
    ᾱ_end = 1 means the σ → 0 limit (clean data) and ᾱ_end = ᾱ_start returns a copy of
    ``x_start``. All samples are integrated together (they do not interact, but share steps)
    in u = log σ with SciPy's DOP853 at the given ``rtol``/``atol`` (applied to x̃), and the
    result is sqrt(ᾱ_end) x̃(σ_end).

    The σ → 0 limit. log σ = -inf cannot be reached, so for ᾱ_end = 1 the ODE is integrated
    down to ``sigma_min`` and D(x̃(σ_min); σ_min) is returned, which is the limit up to:

    * empirical data: exponentially small terms. Once σ is far below the distance between
      training points the posterior is a single point y (weights exp(-Δ/σ²) ≈ 0 for the
      others, Δ > 0 the gap in squared distances), so D = y exactly while x̃(σ) = y + cσ;
    * smooth densities such as a Gaussian mixture: O(σ_min²). For one component N(μ, s² I)
      the flow is x̃(σ) - μ = (x̃(0) - μ) sqrt(1 + σ²/s²) and D(x̃(σ); σ) - μ =
      (x̃(0) - μ) / sqrt(1 + σ²/s²), an error of |x̃(0) - μ| σ²/(2 s²) ≈ 3 σ²/(2 s); with the
      default σ_min = 1e-7 and s >= 0.05 (the default mixtures) that is below 3e-13, while
      the responsibilities are frozen at exp(-(cluster gap)²/σ²) ≈ 0 long before σ_min.

    σ_min = 1e-7 is the smallest float64 allows (ᾱ = 1/(1+σ²) must stay < 1); 1 - ᾱ then
    carries a ~1% rounding error, which only enters D through terms of relative size
    (1-ᾱ)/s² ~ 1e-11, and the integration from σ_min's neighbourhood costs few steps since the
    flow is nearly constant there (dx̃/du = O(σ) or O(σ²)).
    """
    x = _check_start(denoiser, x_start)
    a_start = _check_interval(alpha_bar_start, "alpha_bar_start", 0.0, 1.0, closed="neither")
    a_end = _check_interval(alpha_bar_end, "alpha_bar_end", a_start, 1.0, closed="both")
    _check_tolerances(rtol, atol, sigma_min)
    if a_end == a_start:
        return x

    sigma_start = sigma_from_alpha_bar(a_start)
    sigma_end = sigma_min if a_end == 1.0 else sigma_from_alpha_bar(a_end)
    x_tilde = x / math.sqrt(a_start)
    if sigma_end < sigma_start:  # dx̃/du = x̃ - D(x̃; e^u), u = log σ
        x_tilde = _dop853(
            lambda u, state: state - denoise_at_sigma(denoiser, state, math.exp(u)),
            x_tilde, math.log(sigma_start), math.log(sigma_end), rtol, atol,
            "probability-flow ODE",
        )  # fmt: skip
    if a_end == 1.0:
        return denoise_at_sigma(denoiser, x_tilde, min(sigma_end, sigma_start))
    return math.sqrt(a_end) * x_tilde


def solve_flow_ode(
    denoiser: Any,
    x_start: np.ndarray,
    sigma_start: float,
    sigma_end: float,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    sigma_min: float = SIGMA_MIN,
) -> np.ndarray:
    """The rectified-flow ODE solution from ``x_start`` at level σ_start to σ_end.

    ``x_start`` (B, *S) is a flow sample x = (1 - σ_start) x_0 + σ_start ε, read as float64;
    0 < σ_start <= 1 (1: pure noise, where the flow samplers start) and
    0 <= σ_end <= σ_start; σ_end = σ_start returns a copy. The exact velocity
    v = (x - E[x_0 | x]) / σ of ``denoiser`` is integrated in τ = log σ (R1) with SciPy's
    DOP853 at ``rtol``/``atol`` (applied to x), all samples together.

    σ_end = 0 is the clean limit, taken as :func:`solve_pf_ode` takes it: the flow is
    integrated down to ``sigma_min`` and E[x_0 | x(σ_min)] is returned. The error is the
    same: exponentially small for empirical data; for a Gaussian component N(μ, s² I),
    x(σ) = (1 - σ) μ + sqrt((1 - σ)² s² + σ²) z and E[x_0 | x(σ)] - μ =
    s z / sqrt(1 + σ²/((1 - σ)² s²)), a relative error σ²/(2 s²) (below 1e-11 for the
    default σ_min = 1e-7 and s >= 0.05).
    """
    x = _check_start(denoiser, x_start)
    s_start = _check_interval(sigma_start, "sigma_start", 0.0, 1.0, closed="high")
    s_end = _check_interval(sigma_end, "sigma_end", 0.0, s_start, closed="both")
    _check_tolerances(rtol, atol, sigma_min)
    if s_end == s_start:
        return x
    stop = sigma_min if s_end == 0.0 else s_end

    def rhs(tau: float, state: np.ndarray) -> np.ndarray:  # (R1)
        with small_matrices():  # small products: one BLAS thread (see .threads)
            return state - flow_posterior_mean(denoiser, state, math.exp(tau))

    if stop < s_start:
        x = _dop853(rhs, x, math.log(s_start), math.log(stop), rtol, atol, "flow ODE")
    if s_end == 0.0:
        return np.asarray(flow_posterior_mean(denoiser, x, min(stop, s_start)))
    return x
