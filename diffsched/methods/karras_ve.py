"""Stochastic sampling of the variance-exploding SDE: Karras, Aittala, Aila & Laine 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models", Alg. 2, as diffusers'
(deprecated) ``KarrasVeScheduler`` and its ``KarrasVePipeline`` run it.

Step i of an N-step loop goes from level σ_i to σ_{i+1} (σ_N = 0):

    γ_i = min(S_churn / N, sqrt(2) - 1) if S_min <= σ_i <= S_max else 0        (line 5)
    σ̂_i = (1 + γ_i) σ_i,   x̂_i = x_i + sqrt(σ̂_i² - σ_i²) S_noise z_i            (lines 6-7)
    d_i = (x̂_i - D(x̂_i, σ̂_i)) / σ̂_i,   x_{i+1} = x̂_i + (σ_{i+1} - σ̂_i) d_i       (lines 7-8)
    if σ_{i+1} ≠ 0:  d'_i = (x_{i+1} - D(x_{i+1}, σ_{i+1})) / σ_{i+1},
                     x_{i+1} = x̂_i + (σ_{i+1} - σ̂_i) (d_i + d'_i) / 2              (lines 9-11)

with the denoiser D(x, σ) = x + σ F(x, σ), F being the model output (diffusers' step:
pred_original_sample = sample + σ · model_output). The grid is diffusers':
σ_i = σ_max² (σ_min² / σ_max²)^(i / (N - 1)) (the *squares* of the paper's geometric levels,
as diffusers' ``schedule`` holds them and its pipeline uses them), and the loop starts from
σ_max z.

The churn z_i is drawn before the model call of step i: it is the noise column of the call
before (the second call of step i - 1), and the first one merges with the start noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import ops
from ..core.engine import OUTPUT, SAMPLE, Tableau, Update
from ..core.options import option
from ..core.scheduler import BaseScheduler, BrownianNoise, document
from ..schedules import sigmas as sigma_schedules


@document
@dataclass(frozen=True, kw_only=True)
class KarrasVe(BrownianNoise, BaseScheduler):
    """Karras et al. 2022's stochastic second-order sampler (Alg. 2), diffusers' variant.

    Second order; two model calls per step (one on the last step); stochastic.
    diffusers: ``KarrasVeScheduler`` (deprecated; driven as ``KarrasVePipeline`` drives
    it). Not to be confused with ``EDMEuler`` with churn (first order, EDM's σ grid) or
    ``Heun`` (deterministic, variance-preserving model).

    The model is F with D(x, σ) = x + σ F(x, σ) (the pipeline wraps its UNet as
    F = (σ/2) unet((x + 1)/2, σ/2)); ``timesteps`` are the levels it is called at: σ̂_i, then
    σ_{i+1}. ``noise=``: the churn z_{i+1} of the next step, given to the second call of
    step i (diffusers draws it before the next model call); the first call of a step takes
    no noise. The start noise stands for σ_max z + the first churn: ``init_noise_scale`` is
    sqrt(σ_max² + S_noise² (σ̂_0² - σ_0²)). N >= 2.
    """

    DIFFUSERS_CLASS = "KarrasVeScheduler"
    TRAINING_TIMESTEPS = False  # the model takes σ
    ORDER = 2
    CALLS_PER_STEP = 2
    PREDICTION_TYPES = ("negative_noise",)

    sigma_min: float = option(0.02, "σ_min: the last level is σ_min²", "sigma_min", low=0.0,
                              low_open=True)  # fmt: skip
    sigma_max: float = option(100.0, "σ_max: the first level is σ_max², the start σ_max z",
                              "sigma_max", low=0.0, low_open=True)  # fmt: skip
    s_noise: float = option(1.007, "S_noise: the scale of the churn noise (line 6)", "s_noise",
                            low=0.0)  # fmt: skip
    s_churn: float = option(80.0, "S_churn: how much noise is added back (line 5)", "s_churn",
                            low=0.0)  # fmt: skip
    s_min: float = option(0.05, "S_tmin: churn only where σ_i >= S_tmin", "s_min", low=0.0)
    s_max: float = option(50.0, "S_tmax: churn only where σ_i <= S_tmax", "s_max", low=0.0)
    prediction_type: str = option(
        "negative_noise", "what F predicts: -ε (D = x + σ F)", None, choices=PREDICTION_TYPES
    )

    def _check(self) -> None:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"KarrasVe option sigma_min must be below sigma_max={self.sigma_max}, "
                f"got: {self.sigma_min}"
            )

    @property
    def deterministic(self) -> bool:
        return False

    def _levels(self, num_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(σ_i, σ̂_i, churn sqrt(σ̂_i² - σ_i²) S_noise) of the N steps."""
        ops.check_num_steps(num_steps, minimum=2)
        i = np.arange(num_steps)
        ratio = self.sigma_min**2 / self.sigma_max**2
        sigma = self.sigma_max**2 * ratio ** (i / (num_steps - 1))
        on = (self.s_min <= sigma) & (sigma <= self.s_max)
        gamma = np.where(on, min(self.s_churn / num_steps, 2**0.5 - 1), 0.0)
        hat = sigma + gamma * sigma
        return sigma, hat, np.sqrt(hat**2 - sigma**2) * self.s_noise

    def noise_levels(self, num_steps: int) -> tuple[float, float]:
        _, hat, _ = self._levels(num_steps)
        return float(sigma_schedules.alpha_bar_of(hat[0])), 1.0

    def tableau(self, num_steps: int) -> Tableau:
        sigma, hat, churn = self._levels(num_steps)
        nxt = np.append(sigma[1:], 0.0)
        n_calls = 2 * num_steps - 1
        ts, x0_out, noise = np.zeros(n_calls), np.zeros(n_calls), np.zeros(n_calls)
        upd = Update(n_calls)
        for i in range(num_steps):
            a = 2 * i  # the Euler call at σ̂_i, on x̂_i
            h = nxt[i] - hat[i]
            ts[a], x0_out[a] = hat[i], hat[i]
            # line 8: x_{i+1} = x̂_i + h d_i, d_i = (x̂_i - D) / σ̂_i = -F (written with F,
            # not as x̂_i and D: their difference is F's own scale times σ̂_i, and forming
            # it in half or single precision cancels digits where σ is small)
            upd.add(SAMPLE, 0, a, 1.0)
            upd.add(OUTPUT, 0, a, -h)
            if i == num_steps - 1:
                break
            b = a + 1  # the correction at σ_{i+1}, on the Euler result
            ts[b], x0_out[b] = nxt[i], nxt[i]
            # line 11: x̂_i + h (d_i + d'_i) / 2 with d'_i = -F', then the next step's churn
            upd.add(SAMPLE, 1, b, 1.0)
            upd.add(OUTPUT, 1, b, -0.5 * h)
            upd.add(OUTPUT, 0, b, -0.5 * h)
            noise[b] = churn[i + 1]
        return Tableau(
            timesteps=ts,
            x0_sample=np.ones(n_calls),
            x0_output=x0_out,
            update=dict(upd),
            noise=noise,
            init_noise_sigma=float(np.sqrt(self.sigma_max**2 + churn[0] ** 2)),
        )
