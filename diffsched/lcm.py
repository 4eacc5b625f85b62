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
from typing import Any, NamedTuple

import numpy as np

from . import _ops, predictions
from .base import (
    DENOISED_SAMPLE_OPTIONS,
    NOISE_SCHEDULE_OPTIONS,
    Array,
    DenoisedSampleOptions,
    Option,
    Scheduler,
    check_int,
    check_range,
    x0_table,
)

SIGMA_DATA = 0.5


class LCMState(NamedTuple):
    step: Array  # 0-d int32: index of the next step
    table: Array  # (num_steps, 6) coefficients, one row per step (see X0Row)
    key: Array  # 0-d int32 seed for the noise injected between steps


@dataclass(frozen=True, kw_only=True)
class LCM(DenoisedSampleOptions, Scheduler):
    """Latent consistency models (Luo et al. 2023), multistep sampling.

    Attributes (besides the noise schedule of :class:`~diffsched.base.Scheduler` and the
    x_0 handling of :class:`~diffsched.base.DenoisedSampleOptions`; the defaults here are
    those of Stable Diffusion's schedule, without clipping):
        num_original_steps: the number of steps of the schedule the model was distilled on
            (diffusers' ``original_inference_steps``).
        boundary_condition_timestep_scale: the factor ``scale`` applied to t in c_skip and
            c_out (diffusers' ``timestep_scaling``).
    """

    DIFFUSERS_CLASS = "LCMScheduler"
    OPTIONS = (
        NOISE_SCHEDULE_OPTIONS
        + DENOISED_SAMPLE_OPTIONS
        + (
            Option("num_original_steps", "original_inference_steps", int, int),
            Option("boundary_condition_timestep_scale", "timestep_scaling", float, float),
        )
    )

    beta_schedule: str = "quadratic"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    clip_denoised_sample: bool = False
    num_original_steps: int = 50
    boundary_condition_timestep_scale: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_denoised_sample_options()
        check_int("num_original_steps", self.num_original_steps, 1)
        if self.num_original_steps > self.num_train_steps:
            raise ValueError(
                f"num_original_steps must be at most num_train_steps={self.num_train_steps}, "
                f"got: {self.num_original_steps}"
            )
        check_range(
            "boundary_condition_timestep_scale",
            self.boundary_condition_timestep_scale,
            0.0,
            float("inf"),
        )

    deterministic = False  # noise is injected between steps

    def noise_levels(self, num_steps: int, strength: float = 1.0) -> tuple[float, float]:
        return float(self.alphas_cumprod[self.timesteps(num_steps, strength)[0]]), 1.0

    def timesteps(self, num_steps: int, strength: float = 1.0) -> np.ndarray:
        """The N timesteps, descending: N evenly taken of the original schedule's last
        floor(num_original_steps · strength) points (image-to-image uses strength < 1)."""
        check_int("num_steps", num_steps, 1)
        check_range("strength", strength, 0.0, 1.0, lo_open=True)
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

    def coefficient_table(
        self, num_steps: int, strength: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, table): the boundary condition and re-noising of every step."""
        ts = self.timesteps(num_steps, strength)
        acp = self.alphas_cumprod
        a_t = acp[ts]
        a_next = np.concatenate([acp[ts[1:]], [1.0]])  # the last step adds no noise
        x0 = predictions.x0_coefficients(self.prediction_type, a_t)
        scaled = ts * self.boundary_condition_timestep_scale
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / np.sqrt(scaled**2 + SIGMA_DATA**2)
        prev_x0 = np.sqrt(a_next) * c_out
        prev_sample = np.sqrt(a_next) * c_skip
        return ts, x0_table(
            x0, prev_x0, prev_sample, np.zeros_like(a_t), np.sqrt(1 - a_next), self._processes_x0
        )

    def init(
        self, num_steps: int, sample_template: Array, key: Any = 0, *, strength: float = 1.0
    ) -> tuple[LCMState, Array]:
        """The loop state and the timesteps; ``strength`` < 1 for image-to-image, where the
        loop starts from an image noised to the first timestep instead of pure noise."""
        ts, table = self.coefficient_table(num_steps, strength)
        xp, step, table, timesteps = self._init_arrays(sample_template, ts, table)
        return LCMState(step, table, _ops.seed_array(xp, key, sample_template)), timesteps

    def step(
        self, state: LCMState, sample: Array, prediction: Array, *, noise: Array | None = None
    ) -> tuple[LCMState, Array]:
        """One consistency step; ``noise`` overrides the injected noise draw."""
        return self._x0_step(
            state, sample, prediction, noise, stochastic=True,
            sample_term=True, prediction_term=False,
        )  # fmt: skip
