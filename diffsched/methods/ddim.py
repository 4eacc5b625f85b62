"""DDIM: Song, Meng & Ermon 2020, "Denoising Diffusion Implicit Models".

From the model's prediction at ᾱ_t the step forms the predicted clean sample (eq. 12,
middle term), optionally clips or thresholds it, and moves to the previous timestep:

    x_{t-1} = sqrt(ᾱ_{t-1}) x̂_0 + sqrt(1 - ᾱ_{t-1} - σ_t²) ε̂ + σ_t z          (eq. 12)
    σ_t = η sqrt((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_{t-1})          (eq. 16)

η = 0 is the deterministic DDIM sampler, η = 1 ancestral DDPM. The previous timestep is
t - T // N whatever the spacing, as in the seed's system and in diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families, predictions
from ..core.engine import OUTPUT, SAMPLE, X0, Tableau
from ..core.scheduler import (
    BrownianNoise,
    FinalAlpha,
    Scheduler,
    Spacing,
    X0Processing,
    ZeroTerminalSNR,
    document,
    spaced_timesteps,
    step_time,
)
from ..schedules.betas import alpha_bar_at
from ._img2img import first_call


@document
@dataclass(frozen=True, kw_only=True)
class DDIM(BrownianNoise, X0Processing, Spacing, FinalAlpha, ZeroTerminalSNR, Scheduler):
    """Denoising diffusion implicit models (Song et al. 2020).

    First order; one model call per step; deterministic for η = 0, stochastic otherwise.
    diffusers: ``DDIMScheduler``. Not to be confused with DDPM (ancestral, η = 1 here) or
    DDIM inversion (``DDIMInverseScheduler``, data to noise).

    ``init(..., strength=s)``: image-to-image; the loop starts at the step a fraction ``s``
    of the way down the schedule, as diffusers' img2img pipelines do.
    """

    DIFFUSERS_CLASS = "DDIMScheduler"
    FAMILY = families.VARIANCE_PRESERVING
    CLI_NAME = "ddim"

    rederive_noise: bool = step_time(
        False, "after clipping x̂_0, re-derive ε̂ from it, as GLIDE does (diffusers' "
        "use_clipped_model_output)",
    )  # fmt: skip
    eta: float = step_time(0.0, "weight η of the fresh noise (eq. 16); 0 is deterministic",
                           low=0.0)  # fmt: skip

    @property
    def deterministic(self) -> bool:
        return self.eta == 0

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        _, a_t, a_prev = self._levels(num_steps, **init_options)
        return float(a_t[0]), float(a_prev[-1])

    def _levels(self, num_steps: int, strength: float = 1.0):
        """(timesteps, ᾱ_t, ᾱ_{t-1}): each step goes from t to t - T // N."""
        ts = spaced_timesteps(self, num_steps)
        ts = ts[first_call(num_steps, strength) :]
        prev = ts - self.num_train_steps // num_steps
        acp = self.alphas_cumprod
        return ts, acp[ts], alpha_bar_at(acp, prev, self.final_alpha_cumprod)

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        ts, a_t, a_prev = self._levels(num_steps, strength)
        x0 = predictions.x0_coefficients(self.prediction_type, a_t)
        eps = predictions.noise_coefficients(self.prediction_type, a_t)
        # eq. 16; with ᾱ_{t-1} = 1 after the last step, σ = 0 there.
        sigma = self.eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        direction = np.sqrt(np.maximum(1 - a_prev - sigma**2, 0.0))
        if self.rederive_noise and self.processes_x0:
            # ε̂ = (x_t - sqrt(ᾱ_t) x̂_0) / sqrt(1 - ᾱ_t), from the clipped x̂_0 (GLIDE)
            update = {
                (X0, 0): np.sqrt(a_prev) - direction * np.sqrt(a_t) / np.sqrt(1 - a_t),
                (SAMPLE, 0): direction / np.sqrt(1 - a_t),
            }
        else:  # eq. 12
            update = {
                (X0, 0): np.sqrt(a_prev),
                (SAMPLE, 0): direction * eps.sample_coef,
                (OUTPUT, 0): direction * eps.prediction_coef,
            }
        return Tableau(
            timesteps=ts,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update=update,
            noise=None if self.deterministic else sigma,
            start=(float(np.sqrt(a_t[0])), float(np.sqrt(1 - a_t[0]))),
        )
