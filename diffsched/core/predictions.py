"""What the model predicts, and what to do with its estimate of the clean sample.

A model trained at ᾱ predicts one of (Ho et al. 2020; Salimans & Ho 2022, sec. 4):

* ``noise``: ε, the noise in x_t = sqrt(ᾱ) x_0 + sqrt(1-ᾱ) ε;
* ``angular_velocity``: v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x_0 (diffusers' ``v_prediction``);
* ``sample``: x_0 itself.

Each is linear in (x_t, prediction), so the conversions are returned as coefficient pairs,
computed on the host in ``init``; ``step`` only multiplies and adds.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import ops as _ops

PREDICTION_TYPES = ("noise", "angular_velocity", "sample")

# Our prediction type names and diffusers' names for them.
DIFFUSERS_PREDICTION_TYPES = {
    "noise": "epsilon",
    "angular_velocity": "v_prediction",
    "sample": "sample",
}


class Linear(NamedTuple):
    """``sample_coef * x_t + prediction_coef * prediction``, both float64 arrays over steps."""

    sample_coef: np.ndarray
    prediction_coef: np.ndarray


def check_prediction_type(prediction_type: str, allowed: tuple[str, ...] = PREDICTION_TYPES) -> str:
    """``prediction_type`` if it is one of ``allowed``, else a ValueError naming them."""
    if not isinstance(prediction_type, str) or prediction_type not in allowed:
        raise ValueError(f"prediction_type must be one of {allowed}, got: {prediction_type!r}")
    return prediction_type


@np.errstate(divide="ignore", invalid="ignore")
def x0_coefficients(prediction_type: str, alpha_bar: np.ndarray) -> Linear:
    """x_0 as a linear function of (x_t, prediction) at ᾱ.

    Where ᾱ = 0 (zero terminal SNR) x_0 cannot be recovered from ε, and the coefficients
    are not finite; the scheduler's ``init`` rejects such a table with a clear error.
    """
    a, b = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    if prediction_type == "noise":  # x_0 = (x_t - sqrt(1-ᾱ) ε) / sqrt(ᾱ)
        return Linear(1.0 / a, -b / a)
    if prediction_type == "angular_velocity":  # x_0 = sqrt(ᾱ) x_t - sqrt(1-ᾱ) v
        return Linear(a, -b)
    if prediction_type == "sample":
        return Linear(np.zeros_like(a), np.ones_like(a))
    check_prediction_type(prediction_type)
    raise AssertionError  # unreachable


@np.errstate(divide="ignore", invalid="ignore")
def noise_coefficients(prediction_type: str, alpha_bar: np.ndarray) -> Linear:
    """ε as a linear function of (x_t, prediction) at ᾱ (not finite for x_0 models at ᾱ = 1)."""
    a, b = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    if prediction_type == "noise":
        return Linear(np.zeros_like(a), np.ones_like(a))
    if prediction_type == "angular_velocity":  # ε = sqrt(1-ᾱ) x_t + sqrt(ᾱ) v
        return Linear(b, a)
    if prediction_type == "sample":  # ε = (x_t - sqrt(ᾱ) x_0) / sqrt(1-ᾱ)
        return Linear(1.0 / b, -a / b)
    check_prediction_type(prediction_type)
    raise AssertionError  # unreachable


def dynamic_threshold(x0, ratio: float, max_value: float):
    """Dynamic thresholding of the predicted x_0 (Saharia et al. 2022, "Imagen", sec. 2.3).

    Per batch item: s = the ``ratio`` quantile of |x_0| (linear interpolation), clamped to
    [1, ``max_value``]; then x_0 is clipped to [-s, s] and divided by s. The batch axis is
    the first one; the quantile runs over all the others.
    """
    xp = _ops.namespace(x0)
    shape = x0.shape
    if len(shape) < 2:
        raise ValueError(
            f"dynamic thresholding needs a batch axis and at least one more, got shape {shape}"
        )
    if shape[0] == 0:  # an empty batch: nothing to threshold
        return x0
    if math.prod(shape[1:]) == 0:
        raise ValueError(
            f"dynamic thresholding (thresholding=True) needs at least one value per batch "
            f"item to take its quantile, got shape {tuple(shape)}"
        )
    flat = xp.reshape(x0, (shape[0], -1))
    n = flat.shape[1]
    ordered = xp.sort(xp.abs(flat), axis=1)
    position = ratio * (n - 1)
    lo = int(np.floor(position))
    hi = min(lo + 1, n - 1)
    frac = position - lo
    s = ordered[:, lo] + frac * (ordered[:, hi] - ordered[:, lo])
    s = xp.clip(s, 1.0, max_value)
    s = xp.reshape(s, (shape[0],) + (1,) * (len(shape) - 1))
    return xp.minimum(xp.maximum(x0, -s), s) / s


def x0_from_ve(
    prediction_type: str, sigma: np.ndarray, sigma_hat: np.ndarray | None = None
) -> Linear:
    """x̂_0 as a linear function of (x, prediction) for a variance-exploding sample
    x = x_0 + σ ε (Karras et al. 2022, table 1), float64 over steps.

    ``sigma_hat`` is the level the sample has been raised to by churn (Karras et al. 2022,
    Alg. 2), where an ε model's x̂_0 = x - σ̂ ε; the model itself saw level σ.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    hat = sigma if sigma_hat is None else np.asarray(sigma_hat, dtype=np.float64)
    if prediction_type == "noise":
        return Linear(np.ones_like(sigma), -hat)
    if prediction_type == "angular_velocity":  # x_vp = x / sqrt(σ²+1), ᾱ = 1/(σ²+1)
        return Linear(1.0 / (sigma**2 + 1), -sigma / np.sqrt(sigma**2 + 1))
    if prediction_type == "sample":
        return Linear(np.zeros_like(sigma), np.ones_like(sigma))
    check_prediction_type(prediction_type)
    raise AssertionError  # unreachable


# The velocity of rectified flow, v = ε - x_0 for x_σ = (1 - σ) x_0 + σ ε (Liu et al. 2022;
# Lipman et al. 2023): diffusers' ``flow_prediction``. Only methods that declare it in their
# PREDICTION_TYPES accept it.
FLOW = "flow"
FLOW_PREDICTION_TYPES = (*PREDICTION_TYPES, FLOW)
DIFFUSERS_PREDICTION_TYPES[FLOW] = "flow_prediction"


@np.errstate(divide="ignore", invalid="ignore")
def x0_from_alpha_sigma(prediction_type: str, alpha: np.ndarray, sigma: np.ndarray) -> Linear:
    """x̂_0 as a linear function of (x, prediction) for x = α x_0 + σ ε, any (α, σ) path.

    ``noise``: (x - σ ε)/α; ``angular_velocity``: α x - σ v (α² + σ² = 1); ``sample``: x_0;
    ``flow``: x - σ v with v = ε - x_0 (α = 1 - σ). Not finite where α = 0 for ε models.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if prediction_type == "noise":
        return Linear(1.0 / alpha, -sigma / alpha)
    if prediction_type == "angular_velocity":
        return Linear(alpha, -sigma)
    if prediction_type == "sample":
        return Linear(np.zeros_like(alpha), np.ones_like(alpha))
    if prediction_type == FLOW:
        return Linear(np.ones_like(alpha), -sigma)
    check_prediction_type(prediction_type, FLOW_PREDICTION_TYPES)
    raise AssertionError  # unreachable


@np.errstate(divide="ignore", invalid="ignore")
def noise_from_alpha_sigma(prediction_type: str, alpha: np.ndarray, sigma: np.ndarray) -> Linear:
    """ε̂ as a linear function of (x, prediction) for x = α x_0 + σ ε: (x - α x̂_0)/σ."""
    x0 = x0_from_alpha_sigma(prediction_type, alpha, sigma)
    sigma = np.asarray(sigma, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    return Linear((1.0 - alpha * x0.sample_coef) / sigma, -alpha * x0.prediction_coef / sigma)


@np.errstate(divide="ignore", invalid="ignore")
def native_levels(
    prediction_type: str, x0_sample: np.ndarray, x0_output: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """(α, σ) of each call's native sample x = α x_0 + σ ε, read off its x̂_0 conversion
    x̂_0 = a x + b F (the inverse of :func:`x0_from_alpha_sigma`, for a native sample that
    may be the paper's times any factor c):

    * ``noise`` (x̂_0 = (x/c - s ε)/r): α = 1/a, σ = -b/a;
    * ``angular_velocity`` and ``trigflow`` (x̂_0 = r x/c - s F, r² + s² = 1):
      α = (1 - b²)/a, σ = -b sqrt(1 - b²)/a;
    * ``flow`` (x̂_0 = x/c - s v): α = (1 + b)/a, σ = -b/a;
    * ``negative_noise`` (x̂_0 = x/c + s F): α = 1/a, σ = b/a;
    * ``data_velocity`` (x̂_0 = x/c + s u, u = x_0 - ε): α = (1 - b)/a, σ = b/a;
    * ``score`` (x̂_0 = x/c + s² ∇ log p): α = 1/a, σ = sqrt(b)/a.

    None for ``sample`` (x̂_0 = F says nothing of the level) and for other types.
    """
    a = np.asarray(x0_sample, dtype=np.float64)
    b = np.asarray(x0_output, dtype=np.float64)
    if prediction_type == "noise":
        return 1.0 / a, -b / a
    if prediction_type in ("angular_velocity", "trigflow"):
        r = np.sqrt(np.clip(1.0 - b**2, 0.0, None))
        return r * r / a, -b * r / a
    if prediction_type == FLOW:
        return (1.0 + b) / a, -b / a
    if prediction_type == "negative_noise":
        return 1.0 / a, b / a
    if prediction_type == "data_velocity":  # x̂_0 = x/c + s u, u = x_0 - ε = -v (MiniMax-H3)
        return (1.0 - b) / a, b / a
    if prediction_type == "score":
        return 1.0 / a, np.sqrt(np.clip(b, 0.0, None)) / a
    return None
