"""DDIM: Song, Meng & Ermon 2020, "Denoising Diffusion Implicit Models".

From the model's prediction at ᾱ_t the step forms the predicted clean sample (eq. 12,
middle term), optionally clips or thresholds it, and moves to the previous timestep:

    x_{t-1} = sqrt(ᾱ_{t-1}) x̂_0 + sqrt(1 - ᾱ_{t-1} - σ_t²) ε̂ + σ_t z          (eq. 12)
    σ_t = η sqrt((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_{t-1})          (eq. 16)

η = 0 is the deterministic DDIM sampler, η = 1 ancestral DDPM.

The previous timestep. By default (``prev_timestep="stride"``) a step goes from t to
t - T // N whatever the spacing, as in the seed's system and in diffusers'
``DDIMScheduler.step``. With ``timestep_spacing="trailing"`` or ``"linspace"`` and N not
dividing T, the list's gaps are T // N and T // N + 1 (``linspace``: about T / N), so a step
can end one training step (or more) above the timestep the next model call is made at: the
model is then called on a sample at ᾱ_{t - T//N} as if it were at ᾱ_{t'}, an error that
does not vanish as N grows (diffusers issues #12633, #11347; its DDPMScheduler looks the
previous timestep up in the list since #9384). On the exact Gaussian-mixture model, zero
terminal SNR, v-prediction, trailing spacing, T = 1000, the error against the exact ODE
solution is 4.96e-3 at N = 200 and 3.90e-3 at 250 (T // N exact) but 6.7e-2 at 300, 0.157
at 350 and 0.131 at 400, equal to diffusers', and the same without zero SNR: the
mislabelled steps near t = 0, where σ_t ∝ sqrt(t), dominate. ``prev_timestep="next"``
steps to the next timestep of the list (the last step to ``final_alpha_cumprod``), the
DDIM of the paper on that list: 3.3e-3, 2.8e-3, 2.5e-3 there, and the same as the default
wherever T // N is every gap (leading spacing, N dividing T).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families, ops, predictions
from ..core.engine import OUTPUT, SAMPLE, X0, Tableau
from ..core.options import option
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
    prev_timestep: str = option(
        "stride", "where a step ends: stride, at t - T // N whatever the spacing (diffusers); "
        "next, at the next timestep of the list (the last step at final_alpha_cumprod). They "
        "differ for trailing or linspace spacing where N does not divide T (see the module "
        "docstring)", choices=("stride", "next"),
    )  # fmt: skip

    @property
    def deterministic(self) -> bool:
        return self.eta == 0

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        _, a_t, a_prev = self._levels(num_steps, **init_options)
        return float(a_t[0]), float(a_prev[-1])

    def _levels(self, num_steps: int, strength: float = 1.0):
        """(timesteps, ᾱ_t, ᾱ_{t-1}): each step goes from t to t - T // N, or to the next
        timestep of the list (``prev_timestep="next"``; -1, final_alpha_cumprod, after the
        last)."""
        ts = spaced_timesteps(self, num_steps)
        if self.prev_timestep == "next":
            prev = np.append(ts[1:], -1)
        else:
            prev = ts - self.num_train_steps // num_steps
        first = first_call(num_steps, strength)
        ts, prev = ts[first:], prev[first:]
        acp = self.alphas_cumprod
        return ts, acp[ts], alpha_bar_at(acp, prev, self.final_alpha_cumprod)

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        return self._tableau(*self._levels(num_steps, strength))

    def step_at(self, timestep: int, num_steps: int) -> Tableau:
        """The one step of eq. 12 from any training ``timestep`` t to t - T // N (the
        stride of an N-step loop; ``final_alpha_cumprod`` below 0), as diffusers' DDIM
        steps from a timestep that is not one of its loop's (its step reads only t and
        N). Not for ``prev_timestep="next"``, whose target is the loop's next timestep."""
        if self.prev_timestep != "stride":
            raise ValueError(
                f"{type(self).__name__} with prev_timestep={self.prev_timestep!r} steps to the "
                "loop's next timestep: it has no step from a timestep off the loop"
            )
        ops.check_num_steps(num_steps)
        t = int(timestep)
        if t != timestep or not 0 <= t < self.num_train_steps:
            raise ValueError(
                f"timestep must be an integer in [0, {self.num_train_steps - 1}], got: {timestep}"
            )
        ts = np.array([t], dtype=np.int64)
        acp = self.alphas_cumprod
        prev = ts - self.num_train_steps // num_steps
        return self._tableau(ts, acp[ts], alpha_bar_at(acp, prev, self.final_alpha_cumprod))

    def _tableau(self, ts: np.ndarray, a_t: np.ndarray, a_prev: np.ndarray) -> Tableau:
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
