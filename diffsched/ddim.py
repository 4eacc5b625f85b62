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
from typing import Any, NamedTuple

import numpy as np

from . import _ops, predictions, schedules
from .base import (
    DENOISED_SAMPLE_OPTIONS,
    NOISE_SCHEDULE_OPTIONS,
    SPACING_OPTIONS,
    Array,
    DenoisedSampleOptions,
    Scheduler,
    SpacingOptions,
    check_range,
    x0_table,
)


class DDIMState(NamedTuple):
    step: Array  # 0-d int32: index of the next step
    table: Array  # (num_steps, 6) coefficients, one row per step (see X0Row)
    key: Array  # 0-d int32 seed for the noise of eta > 0


@dataclass(frozen=True, kw_only=True)
class DDIM(DenoisedSampleOptions, SpacingOptions, Scheduler):
    """Denoising diffusion implicit models (Song et al. 2020).

    Attributes (besides the noise schedule of :class:`~diffsched.base.Scheduler`, the
    x_0 handling of :class:`~diffsched.base.DenoisedSampleOptions` and the timestep spacing
    of :class:`~diffsched.base.SpacingOptions`):
        rederive_noise: after clipping x̂_0, re-derive ε̂ from it, as GLIDE does
            (diffusers' ``use_clipped_model_output``).
        eta: weight η of the fresh noise (eq. 16); 0 is deterministic. The noise comes
            from the key in the state unless ``step(..., noise=...)`` gives it.
    """

    DIFFUSERS_CLASS = "DDIMScheduler"
    OPTIONS = NOISE_SCHEDULE_OPTIONS + SPACING_OPTIONS + DENOISED_SAMPLE_OPTIONS

    rederive_noise: bool = False
    eta: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_denoised_sample_options()
        self._check_spacing_options()
        check_range("eta", self.eta, 0.0, float("inf"))

    @property
    def deterministic(self) -> bool:  # type: ignore[override]
        return self.eta == 0

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        del init_options
        _, a_t, a_prev = self._levels(num_steps)
        return float(a_t[0]), float(a_prev[-1])

    def _levels(self, num_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(timesteps, ᾱ_t, ᾱ_{t-1}): each step goes from t to t - T // N."""
        ts = self.timesteps(num_steps)
        prev = ts - self.num_train_steps // num_steps
        acp = self.alphas_cumprod
        return ts, acp[ts], schedules.alpha_bar_at(acp, prev, self.final_alpha_cumprod)

    def _step_time_options(self) -> dict[str, Any]:
        return {"eta": float(self.eta), "rederive_noise": bool(self.rederive_noise)}

    def coefficient_table(self, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, table): every per-step coefficient of eq. 12 and 16, float64."""
        ts, a_t, a_prev = self._levels(num_steps)
        x0 = predictions.x0_coefficients(self.prediction_type, a_t)
        eps = predictions.noise_coefficients(self.prediction_type, a_t)
        # eq. 16; with ᾱ_{t-1} = 1 after the last step, σ = 0 there.
        sigma = self.eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        direction = np.sqrt(np.maximum(1 - a_prev - sigma**2, 0.0))
        prev_x0 = np.sqrt(a_prev)
        if self.rederive_noise and self._processes_x0:
            # ε̂ = (x_t - sqrt(ᾱ_t) x̂_0) / sqrt(1 - ᾱ_t), from the clipped x̂_0 (GLIDE)
            prev_x0 = prev_x0 - direction * np.sqrt(a_t) / np.sqrt(1 - a_t)
            prev_sample = direction / np.sqrt(1 - a_t)
            prev_prediction = np.zeros_like(a_t)
        else:
            prev_sample = direction * eps.sample_coef
            prev_prediction = direction * eps.prediction_coef
        return ts, x0_table(x0, prev_x0, prev_sample, prev_prediction, sigma, self._processes_x0)

    def init(self, num_steps: int, sample_template: Array, key: Any = 0) -> tuple[DDIMState, Array]:
        """The loop state and the ``num_steps`` timesteps to call the model at."""
        ts, table = self.coefficient_table(num_steps)
        xp, step, table, timesteps = self._init_arrays(sample_template, ts, table)
        return DDIMState(step, table, _ops.seed_array(xp, key, sample_template)), timesteps

    def step(
        self, state: DDIMState, sample: Array, prediction: Array, *, noise: Array | None = None
    ) -> tuple[DDIMState, Array]:
        """One DDIM step from x_t to x_{t-1}; ``noise`` overrides the draw when eta > 0."""
        rederive = self.rederive_noise and self._processes_x0
        return self._x0_step(
            state, sample, prediction, noise, stochastic=self.eta > 0,
            # ε̂ re-derived from x̂_0 needs x_t; ε̂ from the prediction needs x_t unless ε
            # is what the model predicts (Song et al. 2020, eq. 12)
            sample_term=rederive or predictions.noise_uses_sample(self.prediction_type),
            prediction_term=not rederive,
        )  # fmt: skip
