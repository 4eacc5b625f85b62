"""Shifts of a flow-matching σ grid (rectified flow, x_σ = (1 - σ) x_0 + σ ε).

* static shift (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 23):
  σ' = s σ / (1 + (s - 1) σ); s > 1 spends more steps at high noise;
* dynamic (resolution-dependent) shift, FLUX's form: with μ = log s,
  exponential σ' = e^μ / (e^μ + (1/σ - 1)^γ), linear σ' = μ / (μ + (1/σ - 1)^γ), γ = 1;
  μ grows linearly with the image's token count (:func:`mu_from_image_seq_len`);
* terminal stretch (LTX-Video): 1 - σ rescaled so that the last level is ``shift_terminal``.

Each takes ``dtype``: float64 by default; float32 computes op by op in float32 (Python
scalars rounded to float32 first), as diffusers' flow-matching schedulers compute custom
``sigmas=`` (a float32 NumPy array), so that such grids are diffusers' to the last bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

TIME_SHIFT_TYPES = ("exponential", "linear")


def shift(sigmas: np.ndarray, s: float, dtype=np.float64) -> np.ndarray:
    """σ' = s σ / (1 + (s - 1) σ) (Esser et al. 2024, eq. 23)."""
    sigmas = np.asarray(sigmas, dtype=dtype)
    f = sigmas.dtype.type
    return f(s) * sigmas / (f(1) + f(s - 1) * sigmas)


def time_shift(
    sigmas: np.ndarray,
    mu: float,
    kind: str = "exponential",
    gamma: float = 1.0,
    dtype=np.float64,
):
    """The dynamic shift of FLUX: exponential e^μ / (e^μ + (1/σ - 1)^γ), or linear
    μ / (μ + (1/σ - 1)^γ)."""
    sigmas = np.asarray(sigmas, dtype=dtype)
    f = sigmas.dtype.type
    if kind == "exponential":
        scale = f(math.exp(mu))
    elif kind == "linear":
        scale = f(mu)
    else:
        raise ValueError(f"time_shift_type must be one of {TIME_SHIFT_TYPES}, got: {kind!r}")
    return scale / (scale + (f(1) / sigmas - f(1)) ** f(gamma))


def mu_from_image_seq_len(
    image_seq_len: int,
    base_image_seq_len: int = 256,
    max_image_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """μ for an image of ``image_seq_len`` latent tokens: linear in the token count, from
    ``base_shift`` at ``base_image_seq_len`` to ``max_shift`` at ``max_image_seq_len`` (the
    FLUX pipeline's ``calculate_shift``, evaluated in its order, so that μ is bit-identical)."""
    slope = (max_shift - base_shift) / (max_image_seq_len - base_image_seq_len)
    intercept = base_shift - slope * base_image_seq_len
    return float(image_seq_len * slope + intercept)


def checked_mu(mu: Any, *, dynamic: bool, who: str, required: bool = False) -> float | None:
    """μ of diffusers' ``set_timesteps(mu=)`` (the dynamic shift of flow grids, e^μ or μ),
    checked: a finite number, given only with ``use_dynamic_shifting=True`` (and given, where
    ``required``: the classes whose diffusers form has no default shift); None if not given."""
    if mu is None:
        if dynamic and required:
            raise ValueError(f"{who} with use_dynamic_shifting=True needs init(..., mu=μ)")
        return None
    if not dynamic:
        raise ValueError(
            f"{who}: init(..., mu=) is used only with use_dynamic_shifting=True, got mu={mu!r}"
        )
    if isinstance(mu, bool) or not isinstance(mu, int | float | np.integer | np.floating):
        raise TypeError(f"mu must be a number, got: {mu!r}")
    if not math.isfinite(mu):
        raise ValueError(f"mu must be finite, got: {mu}")
    return float(mu)


def stretch_to_terminal(sigmas: np.ndarray, terminal: float, dtype=np.float64) -> np.ndarray:
    """1 - σ scaled so that the last level becomes ``terminal`` (LTX-Video)."""
    sigmas = np.asarray(sigmas, dtype=dtype)
    f = sigmas.dtype.type
    one_minus = f(1) - sigmas
    factor = one_minus[-1] / f(1 - terminal)
    return f(1) - one_minus / factor
