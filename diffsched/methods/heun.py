"""Heun's method: Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Alg. 1 (k-diffusion's ``sample_heun`` without churn).

The probability-flow ODE in the variance-exploding variable x = x_0 + σ ε (eq. 4 with
s = 1) is dx/dσ = d(x, σ) = (x - x̂_0(x, σ)) / σ. Over the grid σ_0 > ... > σ_{N-1} >
σ_N = 0, each step is the explicit trapezoidal rule: an Euler predictor, then the mean of
the slopes at both ends (Alg. 1, lines 4-8):

    d_i = (x_i - x̂_0(x_i, σ_i)) / σ_i                                             (1)
    x'_{i+1} = x_i + (σ_{i+1} - σ_i) d_i                                           (2)
    d'_i = (x'_{i+1} - x̂_0(x'_{i+1}, σ_{i+1})) / σ_{i+1}                           (3)
    x_{i+1} = x_i + (σ_{i+1} - σ_i) (d_i + d'_i) / 2                               (4)

The last step, to σ_N = 0 where (3) is undefined, is the Euler step (2) alone (line 6);
it lands on x̂_0. An N-step loop thus makes 2N - 1 model calls, at σ_0, σ_1, σ_1, σ_2,
σ_2, ..., σ_{N-1}: every inner grid point is visited twice, first by the corrector (3)
of the step ending there, then by the predictor (1) of the step starting there.
x̂_0 may be clipped (``clip_denoised_sample``): (1) and (3) both use the clipped estimate.

The grid: the spacing's timesteps with σ interpolated over the training σ's, or a Karras /
exponential / beta grid between the same end points (:mod:`diffsched.schedules.sigmas`),
or an explicit list: ``init(None, template, sigmas=[σ_0, ..., σ_N])`` (float32 values, as
``Euler``'s; not in diffusers, whose Heun takes custom timesteps only). The model is
called on x / sqrt(σ² + 1), the variance-preserving sample it was trained on; that is the
sample this scheduler holds (``input_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families, predictions
from ..core.engine import Tableau
from ..core.options import option, with_default
from ..core.scheduler import Clipping, document
from ..schedules import betas as beta_schedules
from ._karras import TwoStageBase, interleave
from .kit import EULER, HEUN, butcher_step, runge_kutta


@document
@dataclass(frozen=True, kw_only=True)
class Heun(Clipping, TwoStageBase):
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1).

    Second order; two model calls per step (one on the last step, to σ = 0); deterministic.
    diffusers: ``HeunDiscreteScheduler``. Not to be confused with EDM's stochastic sampler
    (Karras et al. 2022, Alg. 2, Heun with churn) or with DPM2 (``DPM2``), whose second
    call is at the log-σ midpoint of the step rather than at its end.

    ``init(..., timesteps=[...])`` gives a custom grid, as diffusers' ``set_timesteps``;
    ``init(..., strength=s)`` is image-to-image.
    """

    DIFFUSERS_CLASS = "HeunDiscreteScheduler"
    FAMILY = families.KARRAS
    CLI_NAME = "heun"
    PREDICTION_TYPES = predictions.PREDICTION_TYPES
    ORDER = 2

    beta_schedule: str = option(
        "linear",
        "the training betas: linear (Ho et al. 2020), quadratic (evenly spaced in sqrt(β); "
        "diffusers' scaled_linear), squared_cosine (Nichol & Dhariwal 2021, eq. 17) or "
        "exponential (ᾱ(u) = e^{-12 u}, discretised as squared_cosine; diffusers' exp)",
        "beta_schedule",
        choices=beta_schedules.EXPONENTIAL_BETA_SCHEDULES,
        diffusers_values=beta_schedules.DIFFUSERS_EXPONENTIAL_BETA_SCHEDULES,
    )
    CALLS_PER_STEP = 2  # one on the last step, to σ = 0

    clip_denoised_sample: bool = with_default(Clipping, "clip_denoised_sample", False)

    def tableau(
        self, num_steps: int, timesteps: Any = None, strength: float = 1.0, sigmas: Any = None
    ) -> Tableau:
        ts, sig = self._grid(num_steps, sigmas=sigmas, timesteps=timesteps, strength=strength)
        n = len(ts)
        s, s_next = sig[:n], sig[1 : n + 1]
        # call 2i: the predictor (1-2) at σ_i; call 2i + 1: the corrector (3-4) at σ_{i+1}
        sigma = interleave(s, s_next)
        x0 = predictions.x0_from_ve(self.prediction_type, sigma)
        # (1-4): the trapezoidal rule (Heun) per step, Euler (2) alone on the last one
        steps = [butcher_step(s[i], s_next[i], *(HEUN if i < n - 1 else EULER)) for i in range(n)]
        _, update, _ = runge_kutta(steps)
        return Tableau(
            timesteps=interleave(ts, ts[1:]),
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update=update,
            input_scale=np.append(np.sqrt(sigma**2 + 1), 1.0),
            start=(1.0, float(s[0])),
            init_noise_sigma=self._init_noise_sigma(sig),
        )
