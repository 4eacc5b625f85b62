"""Euler and Euler ancestral: Karras, Aittala, Aila & Laine 2022, "Elucidating the Design
Space of Diffusion-Based Generative Models", and k-diffusion's ``sample_euler`` /
``sample_euler_ancestral``.

Both integrate the probability-flow ODE in the variance-exploding variable x = x_0 + σ ε
(eq. 4 with s = 1), whose derivative is d = (x - x̂_0) / σ (Alg. 1, line 4):

    x_{i+1} = x_i + (σ_{i+1} - σ̂_i) d_i,     d_i = (x̂_i - x̂_0) / σ̂_i          (Euler)

* churn (Alg. 2, lines 4-6): γ_i = min(S_churn / N, sqrt(2) - 1) on
  S_tmin <= σ_i <= S_tmax, σ̂_i = (γ_i + 1) σ_i, x̂_i = x_i + sqrt(σ̂_i² - σ_i²) S_noise z
  (the model has seen x_i at σ_i, as in diffusers);
* ancestral: the step to σ_{i+1} is split into a deterministic step to σ_down and fresh
  noise of σ_up (Song et al. 2021's reverse SDE in σ; k-diffusion's ``get_ancestral_step``):

    σ_up = sqrt(σ_{i+1}² (σ_i² - σ_{i+1}²) / σ_i²),   σ_down = sqrt(σ_{i+1}² - σ_up²),
    x_{i+1} = x_i + (σ_down - σ_i) d_i + σ_up z.

The model is called on x_i / sqrt(σ_i² + 1), the variance-preserving sample it was trained
on; that is the sample this scheduler holds (``input_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families, predictions
from ..core.engine import SAMPLE, X0, Tableau
from ..core.options import option
from ..core.scheduler import (
    BrownianNoise,
    Churn,
    SigmaGrid,
    document,
)
from ..schedules import discrete
from ._karras import EulerBase


@document
@dataclass(frozen=True, kw_only=True)
class Euler(BrownianNoise, Churn, SigmaGrid, EulerBase):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 1 and 2).

    First order; one model call per step; deterministic unless ``s_churn`` > 0 (Alg. 2).
    diffusers: ``EulerDiscreteScheduler`` (the scheduler of Stable Diffusion XL). Not to be
    confused with Euler ancestral (``EulerAncestral``) or EDM's Euler (``EDMEuler``).

    ``init(..., sigmas=[...])`` (N + 1 levels, the last one final) or
    ``init(..., timesteps=[...])`` give a custom grid, as diffusers' ``set_timesteps``;
    ``init(..., strength=s)`` is image-to-image.
    """

    DIFFUSERS_CLASS = "EulerDiscreteScheduler"
    FAMILY = families.KARRAS
    CLI_NAME = "euler"

    interpolation_type: str = option(
        "linear", "σ of the spaced timesteps: linear in t over the training σ's, or log_linear "
        "(evenly in log σ over the whole training range, N + 1 levels)", "interpolation_type",
        choices=("linear", "log_linear"),
    )  # fmt: skip
    sigma_min: float | None = option(None, "lowest σ of Karras / exponential / beta grids "
                                     "(default: the loop's last)", "sigma_min", nullable=True,
                                     low=0.0, low_open=True)  # fmt: skip
    sigma_max: float | None = option(None, "highest σ of Karras / exponential / beta grids "
                                     "(default: the loop's first)", "sigma_max", nullable=True,
                                     low=0.0, low_open=True)  # fmt: skip
    timestep_type: str = option(
        "discrete", "the model's timestep: the training index (discrete) or, for angular-"
        "velocity models, 0.25 log σ (continuous)", "timestep_type",
        choices=("discrete", "continuous"),
    )  # fmt: skip
    final_sigmas_type: str = option(
        "zero", "the level of the final sample: zero, or the lowest training σ (sigma_min)",
        "final_sigmas_type", choices=("zero", "sigma_min"),
    )  # fmt: skip

    def grid_options(self) -> discrete.GridOptions:
        continuous = self.timestep_type == "continuous"
        return super().grid_options()._replace(
            sigma_schedule=self.sigma_kind, interpolation=self.interpolation_type,
            sigma_min=self.sigma_min, sigma_max=self.sigma_max,
            final_sigma=self.final_sigmas_type,
            continuous_timesteps=continuous and self.prediction_type == "angular_velocity",
        )  # fmt: skip

    @property
    def deterministic(self) -> bool:
        return self.s_churn == 0

    def tableau(self, num_steps: int, **init_options: Any) -> Tableau:
        ts, sig = self._grid(num_steps, **init_options)
        n = len(ts)  # log_linear grids carry one level more than they use
        s, s_next = sig[:n], sig[1 : n + 1]
        # Alg. 2, lines 4-6: γ counts every level of the full grid (diffusers' len(sigmas)-1)
        gamma = np.where(
            (self.s_tmin <= s) & (s <= self.s_tmax),
            min(self.s_churn / (len(sig) - 1), np.sqrt(2) - 1),
            0.0,
        )
        hat = s * (gamma + 1)
        churn = np.sqrt(hat**2 - s**2) * self.s_noise  # x̂ = x + churn · z
        x0 = predictions.x0_from_ve(self.prediction_type, s, hat)
        ratio = (s_next - hat) / hat  # x_{i+1} = x̂ + (σ_{i+1} - σ̂)(x̂ - x̂_0)/σ̂
        # x̂_0 is formed from x̂ = x + churn z: its z part moves into the noise column
        noise = churn * (1 + ratio) - ratio * x0.sample_coef * churn
        return Tableau(
            timesteps=ts,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update={(SAMPLE, 0): 1 + ratio, (X0, 0): -ratio},
            noise=None if self.deterministic else noise,
            input_scale=np.append(np.sqrt(s**2 + 1), 1.0),
            start=(1.0, float(s[0])),
            init_noise_sigma=self._init_noise_sigma(sig),
        )


@document
@dataclass(frozen=True, kw_only=True)
class EulerAncestral(BrownianNoise, EulerBase):
    """Euler ancestral sampling (k-diffusion's ``sample_euler_ancestral``; "Euler a").

    First order; one model call per step; stochastic. diffusers:
    ``EulerAncestralDiscreteScheduler``. Not to be confused with Euler with churn
    (``Euler(s_churn=...)``), which adds noise before the step instead of splitting it.
    """

    DIFFUSERS_CLASS = "EulerAncestralDiscreteScheduler"
    FAMILY = families.KARRAS
    CLI_NAME = "euler-a"

    @property
    def deterministic(self) -> bool:
        return False

    def tableau(self, num_steps: int, **init_options: Any) -> Tableau:
        ts, sig = self._grid(num_steps, **init_options)
        n = len(ts)  # log_linear grids carry one level more than they use
        s, s_next = sig[:n], sig[1 : n + 1]
        with np.errstate(invalid="ignore"):  # a rising level: NaN, refused with its cause
            up = np.sqrt(s_next**2 * (s**2 - s_next**2) / s**2)
            down = np.sqrt(s_next**2 - up**2)
        x0 = predictions.x0_from_ve(self.prediction_type, s)
        ratio = (down - s) / s
        return Tableau(
            timesteps=ts,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update={(SAMPLE, 0): 1 + ratio, (X0, 0): -ratio},
            noise=up,
            input_scale=np.append(np.sqrt(s**2 + 1), 1.0),
            start=(1.0, float(s[0])),
            init_noise_sigma=self._init_noise_sigma(sig),
        )
