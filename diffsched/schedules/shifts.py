"""Shifts of a flow-matching σ grid (rectified flow, x_σ = (1 - σ) x_0 + σ ε).

* static shift (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 23):
  σ' = s σ / (1 + (s - 1) σ); s > 1 spends more steps at high noise;
* dynamic (resolution-dependent) shift, FLUX's form: with μ = log s,
  exponential σ' = e^μ / (e^μ + (1/σ - 1)^γ), linear σ' = μ / (μ + (1/σ - 1)^γ), γ = 1;
  μ grows linearly with the image's token count (:func:`mu_from_image_seq_len`);
* terminal stretch (LTX-Video): 1 - σ rescaled so that the last level is ``shift_terminal``.
"""

from __future__ import annotations

import math

import numpy as np

TIME_SHIFT_TYPES = ("exponential", "linear")


def shift(sigmas: np.ndarray, s: float) -> np.ndarray:
    """σ' = s σ / (1 + (s - 1) σ) (Esser et al. 2024, eq. 23)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return s * sigmas / (1 + (s - 1) * sigmas)


def time_shift(sigmas: np.ndarray, mu: float, kind: str = "exponential", gamma: float = 1.0):
    """The dynamic shift of FLUX: exponential e^μ / (e^μ + (1/σ - 1)^γ), or linear
    μ / (μ + (1/σ - 1)^γ)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if kind == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** gamma)
    if kind == "linear":
        return mu / (mu + (1 / sigmas - 1) ** gamma)
    raise ValueError(f"time_shift_type must be one of {TIME_SHIFT_TYPES}, got: {kind!r}")


def mu_from_image_seq_len(
    image_seq_len: int,
    base_image_seq_len: int = 256,
    max_image_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """μ for an image of ``image_seq_len`` latent tokens: linear in the token count, from
    ``base_shift`` at ``base_image_seq_len`` to ``max_shift`` at ``max_image_seq_len`` (the
    FLUX pipeline's ``calculate_shift``)."""
    slope = (max_shift - base_shift) / (max_image_seq_len - base_image_seq_len)
    return float(image_seq_len * slope + base_shift - slope * base_image_seq_len)


def stretch_to_terminal(sigmas: np.ndarray, terminal: float) -> np.ndarray:
    """1 - σ scaled so that the last level becomes ``terminal`` (LTX-Video)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    one_minus = 1 - sigmas
    factor = one_minus[-1] / (1 - terminal)
    return 1 - one_minus / factor
