"""TCD: Zheng, Hu, Fan, Wang, Ding, Tao & Cham 2024, "Trajectory Consistency Distillation",
strategic stochastic sampling (SSS).

A trajectory consistency model predicts, from x_t, the point of the probability-flow
trajectory at any earlier time s, in the semi-linear (DDIM, first-order exponential
integrator) form of its parameterisation:

    x̂_0 and ε̂ from the model output at ᾱ_t (the prediction type's conversion)
    x_s = sqrt(ᾱ_s) x̂_0 + sqrt(1 - ᾱ_s) ε̂                                      (1)

Strategic stochastic sampling with γ ∈ [0, 1] (diffusers' ``eta``) goes from t to the loop's
next timestep t' in two moves: the model's prediction takes the sample past t', down to

    s = ⌊(1 - γ) t'⌋,                                                          (2)

and the forward process brings it back up to t' with fresh noise:

    x_{t'} = sqrt(ᾱ_{t'} / ᾱ_s) x_s + sqrt(1 - ᾱ_{t'} / ᾱ_s) z.                    (3)

γ = 0 is the deterministic DDIM-type consistency sampler (s = t'); γ = 1 is the multistep
consistency sampling of LCM (s = 0, all the way down, then re-noised). The last step
returns x_s of (1) with t' = 0, so s = 0: the final sample sits at ᾱ_0, not at clean data.

The timesteps are LCM's: N taken evenly from the skipping-step schedule of
``num_original_steps`` points the model was distilled on (TCD sec. 4; LCM sec. 4.2).

Unlike LCM there is no boundary condition (c_skip, c_out): x̂_0 and ε̂ enter (1) as they
are. diffusers evaluates (1 - γ) t' of (2) in float32 (a Python float times an integer
tensor), which sometimes rounds across an integer (γ = 0.3, t' = 90 gives s = 63, where
float64 gives 62); so does this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families, predictions
from ..core.engine import OUTPUT, SAMPLE, X0, Tableau
from ..core.options import with_default
from ..core.scheduler import BrownianNoise, Scheduler, ZeroTerminalSNR, document, step_time
from .lcm import LCM


def consistency_target(next_timesteps: np.ndarray, gamma: float) -> np.ndarray:
    """s = ⌊(1 - γ) t'⌋ of eq. 2, in float32 arithmetic as diffusers forms it."""
    scaled = np.float32(1.0 - gamma) * np.asarray(next_timesteps, dtype=np.float32)
    return np.floor(scaled.astype(np.float32)).astype(np.int64)


@document
@dataclass(frozen=True, kw_only=True)
class TCD(BrownianNoise, ZeroTerminalSNR, Scheduler):
    """Trajectory consistency distillation sampling (Zheng et al. 2024), strategic
    stochastic sampling.

    First order; one model call per step; stochastic for γ = ``eta`` > 0 (no noise at the
    last step), deterministic for γ = 0. diffusers: ``TCDScheduler``. Not to be confused
    with LCM (``LCM``; Luo et al. 2023), which applies the consistency boundary condition
    to x̂_0 and re-noises from s = 0 at every step (TCD's γ = 1, without c_skip, c_out),
    where TCD keeps the predicted noise ε̂ down to s = ⌊(1 - γ) t'⌋ (eq. 1-3).

    ``init(..., strength=s)``: image-to-image over the last floor(num_original_steps · s)
    points of the original schedule, as diffusers' ``set_timesteps(strength=...)``;
    ``init(None, ..., timesteps=[...])``: custom training timesteps, strictly decreasing.

    diffusers' ``TCDScheduler`` accepts, and never reads, the keys ``clip_sample``,
    ``clip_sample_range``, ``thresholding``, ``dynamic_thresholding_ratio``,
    ``sample_max_value``, ``set_alpha_to_one`` (the last step lands on ᾱ_0 whatever it is),
    ``steps_offset``, ``timestep_spacing`` and ``timestep_scaling`` (no boundary condition):
    they are accepted in configs and change nothing, so they are not options here.
    """

    DIFFUSERS_CLASS = "TCDScheduler"
    FAMILY = families.VARIANCE_PRESERVING
    CLI_NAME = "tcd"
    INERT_KEYS = frozenset(
        {
            "clip_sample",
            "clip_sample_range",
            "thresholding",
            "dynamic_thresholding_ratio",
            "sample_max_value",
            "set_alpha_to_one",
            "steps_offset",
            "timestep_spacing",
            "timestep_scaling",
        }
    )

    beta_schedule: str = with_default(Scheduler, "beta_schedule", "quadratic")
    beta_start: float = with_default(Scheduler, "beta_start", 0.00085)
    beta_end: float = with_default(Scheduler, "beta_end", 0.012)
    num_original_steps: int = with_default(LCM, "num_original_steps", 50)
    eta: float = step_time(
        0.3, "γ of strategic stochastic sampling (eq. 2-3): the fraction of the way to t = 0 "
        "the prediction goes before re-noising to t'; 0 is deterministic", low=0.0, high=1.0,
    )  # fmt: skip

    # the skipping-step schedule and its checks are LCM's (diffusers' code is the same)
    _check = LCM._check
    timesteps = LCM.timesteps

    @property
    def deterministic(self) -> bool:
        return self.eta == 0

    # LCM's: the levels at the training timesteps, which the boundary condition hides
    native_levels = LCM.native_levels

    def _levels(self, num_steps: int | None, strength: float = 1.0, timesteps: Any = None):
        """(timesteps, ᾱ_t, ᾱ_{t'}, ᾱ_s) of every step (t' = 0 after the last)."""
        ts = self.timesteps(num_steps, strength, timesteps)
        nxt = np.append(ts[1:], 0)
        s = consistency_target(nxt, self.eta)
        acp = self.alphas_cumprod
        return ts, acp[ts], acp[nxt], acp[s]

    def noise_levels(
        self, num_steps: int | None, strength: float = 1.0, timesteps: Any = None
    ) -> tuple[float, float]:
        _, a_t, _, a_s = self._levels(num_steps, strength, timesteps)
        return float(a_t[0]), float(a_s[-1])

    def tableau(
        self, num_steps: int | None, strength: float = 1.0, timesteps: Any = None
    ) -> Tableau:
        ts, a_t, a_next, a_s = self._levels(num_steps, strength, timesteps)
        x0 = predictions.x0_coefficients(self.prediction_type, a_t)
        eps = predictions.noise_coefficients(self.prediction_type, a_t)
        last = np.arange(len(ts)) == len(ts) - 1
        # eq. 3: back up from s to t' (the last step stops at x_s)
        keep = np.where(last, 1.0, np.sqrt(a_next / a_s))
        fresh = np.where(last, 0.0, np.sqrt(np.maximum(1.0 - a_next / a_s, 0.0)))
        update = {  # eq. 1, carried by eq. 3
            (X0, 0): keep * np.sqrt(a_s),
            (SAMPLE, 0): keep * np.sqrt(1.0 - a_s) * eps.sample_coef,
            (OUTPUT, 0): keep * np.sqrt(1.0 - a_s) * eps.prediction_coef,
        }
        return Tableau(
            timesteps=ts,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update=update,
            noise=None if self.deterministic else fresh,
            start=(float(np.sqrt(a_t[0])), float(np.sqrt(1.0 - a_t[0]))),
        )
