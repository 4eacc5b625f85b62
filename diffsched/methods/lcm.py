"""LCM: Luo, Tan, Huang, Li & Zhao 2023, "Latent Consistency Models".

A consistency model maps any noisy sample straight to a clean one. Each step forms the
predicted x̂_0 from the model's output, applies the consistency boundary condition
(Song et al. 2023, "Consistency Models", app. C; LCM eq. 9)

    f(x_t, t) = c_skip(t) x_t + c_out(t) x̂_0,
    c_skip = σ_d² / (s² + σ_d²),   c_out = s / sqrt(s² + σ_d²),   s = t · scale, σ_d = 0.5,

and, on every step but the last, noises the result to the next timestep:

    x_{t'} = sqrt(ᾱ_{t'}) f(x_t, t) + sqrt(1 - ᾱ_{t'}) z.                     (Alg. 1)

Timesteps come from the ``num_original_steps`` skipping-step schedule the model was
distilled on (LCM sec. 4.2): every (T // num_original_steps)-th training step, of which
N are taken evenly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families, ops, predictions
from ..core.engine import SAMPLE, X0, Tableau
from ..core.options import option, with_default
from ..core.scheduler import (
    BrownianNoise,
    FinalAlpha,
    Scheduler,
    X0Processing,
    ZeroTerminalSNR,
    document,
)
from ._img2img import check_strength
from .dpmsolver import custom_timesteps

SIGMA_DATA = 0.5


@document
@dataclass(frozen=True, kw_only=True)
class LCM(BrownianNoise, X0Processing, FinalAlpha, ZeroTerminalSNR, Scheduler):
    """Latent consistency models (Luo et al. 2023), multistep sampling.

    One model call per step; stochastic (noise is injected between steps). diffusers:
    ``LCMScheduler``. Not to be confused with TCD (Zheng et al. 2024), which keeps part of
    the predicted noise. The defaults are those of Stable Diffusion's schedule, without
    clipping. ``init(..., strength=s)``: image-to-image over the last floor(
    num_original_steps · s) points of the original schedule; ``init(None, ...,
    timesteps=[...])``: custom training timesteps, strictly decreasing.
    """

    DIFFUSERS_CLASS = "LCMScheduler"
    FAMILY = families.VARIANCE_PRESERVING
    CLI_NAME = "lcm"
    # LCMScheduler has spacing keys that its set_timesteps never reads
    INERT_KEYS = frozenset({"steps_offset", "timestep_spacing"})

    beta_schedule: str = with_default(Scheduler, "beta_schedule", "quadratic")
    beta_start: float = with_default(Scheduler, "beta_start", 0.00085)
    beta_end: float = with_default(Scheduler, "beta_end", 0.012)
    clip_denoised_sample: bool = with_default(X0Processing, "clip_denoised_sample", False)
    num_original_steps: int = option(
        50, "the number of steps of the schedule the model was distilled on",
        "original_inference_steps", low=1,
    )  # fmt: skip
    boundary_condition_timestep_scale: float = option(
        10.0, "the factor applied to t in c_skip and c_out", "timestep_scaling", low=0.0
    )

    def _check(self) -> None:
        if self.num_original_steps > self.num_train_steps:
            raise ValueError(
                f"num_original_steps must be at most num_train_steps={self.num_train_steps}, "
                f"got: {self.num_original_steps}"
            )

    @property
    def deterministic(self) -> bool:
        return False  # noise is injected between steps

    def native_levels(
        self, tableau: Tableau, num_steps: int, init_options: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """(sqrt(ᾱ_t), sqrt(1 - ᾱ_t)) at each call's training timestep (the boundary
        condition's c_skip, c_out hide the level from the x̂_0 conversion)."""
        abar = self.alphas_cumprod[np.asarray(tableau.timesteps, np.int64)]
        return np.sqrt(abar), np.sqrt(1.0 - abar)

    def noise_levels(
        self, num_steps: int | None, strength: float = 1.0, timesteps: Any = None
    ) -> tuple[float, float]:
        return float(self.alphas_cumprod[self.timesteps(num_steps, strength, timesteps)[0]]), 1.0

    def timesteps(
        self, num_steps: int | None, strength: float = 1.0, timesteps: Any = None
    ) -> np.ndarray:
        """The N timesteps, descending: N evenly taken of the original schedule's last
        floor(num_original_steps · strength) points (image-to-image uses strength < 1), or
        ``timesteps``: custom training timesteps, strictly decreasing, as diffusers'
        ``set_timesteps(timesteps=...)`` (the skipping-step schedule is then not used)."""
        if timesteps is not None:
            if check_strength(strength) != 1.0:
                raise ValueError(
                    f"{type(self).__name__}.init: custom timesteps take no strength (they are "
                    f"the loop), got strength={strength}"
                )
            return custom_timesteps(timesteps, self.num_train_steps)
        ops.check_num_steps(num_steps)
        strength = check_strength(strength)
        if num_steps > self.num_train_steps:
            raise ValueError(
                f"num_steps must be at most num_train_steps={self.num_train_steps}, "
                f"got: {num_steps}"
            )
        if num_steps > self.num_original_steps:
            raise ValueError(
                f"num_steps must be at most num_original_steps={self.num_original_steps}, "
                f"got: {num_steps}"
            )
        usable = int(self.num_original_steps * strength)
        if num_steps > usable:
            raise ValueError(
                f"num_steps must be at most floor(num_original_steps * strength) = "
                f"floor({self.num_original_steps} * {strength}) = {usable}, got: {num_steps}"
            )
        skip = self.num_train_steps // self.num_original_steps
        original = (np.arange(1, usable + 1, dtype=np.int64) * skip - 1)[::-1]
        picks = np.floor(np.linspace(0, usable, num_steps, endpoint=False)).astype(np.int64)
        return original[picks]

    def tableau(
        self, num_steps: int | None, strength: float = 1.0, timesteps: Any = None
    ) -> Tableau:
        """The boundary condition and re-noising of every step."""
        ts = self.timesteps(num_steps, strength, timesteps)
        acp = self.alphas_cumprod
        a_t = acp[ts]
        a_next = np.concatenate([acp[ts[1:]], [1.0]])  # the last step adds no noise
        x0 = predictions.x0_coefficients(self.prediction_type, a_t)
        scaled = ts * self.boundary_condition_timestep_scale
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / np.sqrt(scaled**2 + SIGMA_DATA**2)
        return Tableau(
            timesteps=ts,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update={(X0, 0): np.sqrt(a_next) * c_out, (SAMPLE, 0): np.sqrt(a_next) * c_skip},
            noise=np.sqrt(1 - a_next),
            start=(float(np.sqrt(a_t[0])), float(np.sqrt(1 - a_t[0]))),
        )
