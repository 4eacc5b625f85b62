"""DDIM inversion: the deterministic DDIM sampler of Song, Meng & Ermon 2020, "Denoising
Diffusion Implicit Models", run from data to noise (sec. 4.3: DDIM as an ODE can be
integrated in either direction), as image-editing workflows use it to find the noise
that DDIM maps to a given image (Mokady et al. 2023, "Null-text Inversion", sec. 3;
Wallace et al. 2023, "EDICT").

Each step goes up from the level below t, at u = t - T // N, to the timestep t itself,
with the model called at t (diffusers' approximation: the model output at the sample's
own level u is never computed):

    x̂_0 = x̂_0(x_u, ε_θ(x_u, t); ᾱ_u),  optionally clipped                       (eq. 12)
    ε̂ = ε̂(x_u, ε_θ(x_u, t); ᾱ_u)                                (before clipping)
    x_t = sqrt(ᾱ_t) x̂_0 + sqrt(1 - ᾱ_t) ε̂                            (eq. 12, σ_t = 0)

The first step starts below t = 0 (u < 0): there ᾱ_u is 1 (clean data; diffusers'
``set_alpha_to_one``) or ᾱ_0. The timesteps ascend: leading 0, r, 2r, ... (+ offset),
r = T // N, or trailing T/N - 1, 2T/N - 1, ..., T - 1; u is clamped to at most T - 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..core import families, ops, predictions
from ..core.engine import OUTPUT, SAMPLE, X0, Tableau
from ..core.options import option, with_default
from ..core.scheduler import (
    Clipping,
    Scheduler,
    Spacing,
    ZeroTerminalSNR,
    _alpha_strategy,
    document,
    spaced_timesteps,
)
from ..schedules import betas as beta_schedules


@document
@dataclass(frozen=True, kw_only=True)
class DDIMInverse(Clipping, ZeroTerminalSNR, Scheduler):
    """Inverted denoising diffusion implicit models (DDIM inversion).

    First order; one model call per step; deterministic. diffusers:
    ``DDIMInverseScheduler``. Not to be confused with DDIM (``DDIM``), which runs the same
    step from noise to data: inverting N steps and then sampling N steps with DDIM (same
    spacing, clipping off) returns close to the start, the closer the more steps.

    The loop starts from a clean sample (its first input is the data, not noise); the
    final sample is the latent at ᾱ of the last timestep. diffusers' deprecated keyword
    ``set_alpha_to_zero``, when given, sets ``set_alpha_to_one`` to the *same* value (True
    means ᾱ_u = 1, whatever the name says) and is not stored in diffusers' config; a config
    holding it is read the same way here, into ``alpha_clip_strategy``.
    ``prediction_type="sample"`` cannot give ε̂ at ᾱ_u = 1 (diffusers returns NaN): use
    ``alpha_clip_strategy="alpha_zero"`` with it.
    """

    DIFFUSERS_CLASS = "DDIMInverseScheduler"
    FAMILY = families.VARIANCE_PRESERVING
    CLI_NAME = "ddim-inverse"
    DIFFUSERS_ALIASES: ClassVar[dict[str, str]] = {"set_alpha_to_zero": "set_alpha_to_one"}

    alpha_clip_strategy: str = option(
        "one",
        "ᾱ below t = 0, where the first step starts: one (clean data) or alpha_zero (ᾱ_0; "
        "diffusers' set_alpha_to_one=False)",
        "set_alpha_to_one",
        choices=beta_schedules.ALPHA_CLIP_STRATEGIES,
        to_diffusers=lambda v: v == "one",
        from_diffusers=_alpha_strategy,
    )
    timestep_spacing: str = option(
        "leading",
        "leading (0, r, 2r, ... + offset; r = T // N) or trailing (T/N - 1, 2T/N - 1, ..., "
        "T - 1; Lin et al. 2023, Table 2), ascending",
        "timestep_spacing",
        choices=("leading", "trailing"),
    )
    timesteps_offset: int = with_default(Spacing, "timesteps_offset", 0)

    def _levels(self, num_steps: int):
        """(timesteps, ᾱ_u, ᾱ_t): each step goes up from u = t - T // N to t."""
        return self._up_to(spaced_timesteps(self, num_steps)[::-1].copy(), num_steps)

    def _up_to(self, ts: np.ndarray, num_steps: int):
        """(ts, ᾱ_u, ᾱ_t) of the steps up from u = t - T // N to each t of ``ts``."""
        below = np.minimum(ts - self.num_train_steps // num_steps, self.num_train_steps - 1)
        acp = self.alphas_cumprod
        start = beta_schedules.final_alpha_cumprod(acp, self.alpha_clip_strategy)
        return ts, beta_schedules.alpha_bar_at(acp, below, start), acp[ts]

    def noise_levels(self, num_steps: int) -> tuple[float, float]:
        _, a_u, a_t = self._levels(num_steps)
        return float(a_u[0]), float(a_t[-1])

    def _bad_call(self, program_tableau: Tableau, n: int) -> str:
        if self.prediction_type == "sample":
            return (
                f"DDIMInverse: model call {n} starts at ᾱ = 1 (clean data), where "
                "prediction_type='sample' gives no noise estimate; use "
                "alpha_clip_strategy='alpha_zero'"
            )
        return super()._bad_call(program_tableau, n)

    def tableau(self, num_steps: int) -> Tableau:
        return self._tableau(*self._levels(num_steps))

    def step_at(self, timestep: int, num_steps: int) -> Tableau:
        """The one step from u = t - T // N up to any training ``timestep`` t, as
        diffusers' DDIMInverse steps from a timestep that is not one of its loop's (its
        step reads only t and N)."""
        ops.check_num_steps(num_steps)
        t = int(timestep)
        if t != timestep or not 0 <= t < self.num_train_steps:
            raise ValueError(
                f"timestep must be an integer in [0, {self.num_train_steps - 1}], got: {timestep}"
            )
        return self._tableau(*self._up_to(np.array([t], dtype=np.int64), num_steps))

    def _tableau(self, ts: np.ndarray, a_u: np.ndarray, a_t: np.ndarray) -> Tableau:
        x0 = predictions.x0_coefficients(self.prediction_type, a_u)
        eps = predictions.noise_coefficients(self.prediction_type, a_u)
        direction = np.sqrt(1.0 - a_t)
        return Tableau(
            timesteps=ts,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update={  # eq. 12 with σ_t = 0, ε̂ from the unclipped x̂_0
                (X0, 0): np.sqrt(a_t),
                (SAMPLE, 0): direction * eps.sample_coef,
                (OUTPUT, 0): direction * eps.prediction_coef,
            },
            start=(float(np.sqrt(a_u[0])), float(np.sqrt(1.0 - a_u[0]))),
        )
