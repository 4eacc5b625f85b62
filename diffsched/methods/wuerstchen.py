"""Würstchen's DDPM: Pernias, Rampas, Richter, Pal & Aubreville 2023, "Würstchen: An
Efficient Architecture for Large-Scale Text-to-Image Diffusion Models" (Stable Cascade's
prior and decoder), on continuous time t ∈ [0, 1].

The noise schedule is the cosine one of Nichol & Dhariwal 2021 (eq. 17) in continuous time,
with an optional warp of t and a clamp:

    t' = 1 - (1 - t)^k (k > 1),   t^k (k < 1),   t (k = 1)             (k: ``scaler``)
    ᾱ(t) = clamp(cos²((t' + s) / (1 + s) · π/2) / cos²(s / (1 + s) · π/2), 1e-4, 0.9999)

An N-step loop visits t_i = 1 - i/N, i = 0..N-1, and steps to t_{i+1} (t_N = 0) by
ancestral sampling with the model's ε̂ (Ho et al. 2020, eq. 11, over the stride):

    α = ᾱ(t_i) / ᾱ(t_{i+1})
    x_{i+1} = (x_i - (1 - α) ε̂ / sqrt(1 - ᾱ(t_i))) / sqrt(α) + σ_i z,
    σ_i² = (1 - α)(1 - ᾱ(t_{i+1})) / (1 - ᾱ(t_i)),  and no noise on the step to t = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import ops
from ..core.engine import OUTPUT, SAMPLE, Tableau
from ..core.options import option
from ..core.scheduler import BaseScheduler, BrownianNoise, document
from ._img2img import first_call

ALPHA_BAR_RANGE = (0.0001, 0.9999)


@document
@dataclass(frozen=True, kw_only=True)
class DDPMWuerstchen(BrownianNoise, BaseScheduler):
    """Würstchen / Stable Cascade ancestral sampling in continuous time (Pernias et al.
    2023).

    First order; one model call per step; stochastic (no noise on the last step). diffusers:
    ``DDPMWuerstchenScheduler`` (Stable Cascade's prior and decoder pipelines, which call
    the model with ``timestep_ratio`` = t). Not to be confused with ``DDPM`` (discrete
    training steps, posterior mean through x̂_0).

    ``timesteps`` are the N values t_i ∈ (0, 1] the model is called at;
    ``init(..., strength=s)``: image-to-image.
    """

    DIFFUSERS_CLASS = "DDPMWuerstchenScheduler"
    TRAINING_TIMESTEPS = False  # continuous t in [0, 1]
    PREDICTION_TYPES = ("noise",)

    scaler: float = option(
        1.0, "k, the warp of t before the cosine: 1 - (1 - t)^k above 1, t^k below",
        "scaler", low=0.0, low_open=True,
    )  # fmt: skip
    s: float = option(0.008, "the cosine schedule's offset s (Nichol & Dhariwal 2021, eq. 17)",
                      "s", low=0.0)  # fmt: skip
    prediction_type: str = option("noise", "what the model predicts: the noise ε", None,
                                  choices=PREDICTION_TYPES)  # fmt: skip

    @property
    def deterministic(self) -> bool:
        return False

    def alpha_bar(self, t: np.ndarray) -> np.ndarray:
        """ᾱ(t) of the warped, clamped cosine schedule, float64."""
        t = np.asarray(t, dtype=np.float64)
        if self.scaler > 1:
            t = 1 - (1 - t) ** self.scaler
        elif self.scaler < 1:
            t = t**self.scaler
        s = self.s
        start = math.cos(s / (1 + s) * math.pi * 0.5) ** 2
        value = np.cos((t + s) / (1 + s) * math.pi * 0.5) ** 2 / start
        return np.clip(value, *ALPHA_BAR_RANGE)

    def _grid(self, num_steps: int, strength: float = 1.0) -> np.ndarray:
        """The N + 1 values of t, the last one final (float64; diffusers' float32 linspace
        agrees to float32 precision)."""
        grid = np.linspace(1.0, 0.0, ops.check_num_steps(num_steps) + 1)
        return grid[first_call(num_steps, strength) :]

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        grid = self._grid(num_steps, **init_options)
        a = self.alpha_bar(grid)
        return float(a[0]), float(a[-1])

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        grid = self._grid(num_steps, strength)
        a_t, a_next = self.alpha_bar(grid[:-1]), self.alpha_bar(grid[1:])
        alpha = a_t / a_next
        std = np.sqrt((1 - alpha) * (1 - a_next) / (1 - a_t))
        return Tableau(
            timesteps=grid[:-1],
            x0_sample=1 / np.sqrt(a_t),
            x0_output=-np.sqrt(1 - a_t) / np.sqrt(a_t),
            update={
                (SAMPLE, 0): 1 / np.sqrt(alpha),
                (OUTPUT, 0): -(1 - alpha) / np.sqrt(1 - a_t) / np.sqrt(alpha),
            },
            noise=np.where(grid[1:] != 0, std, 0.0),
            start=(float(np.sqrt(a_t[0])), float(np.sqrt(1 - a_t[0]))),
        )
