"""unCLIP's DDPM: Ramesh, Dhariwal, Nichol, Chu & Chen 2022, "Hierarchical Text-Conditional
Image Generation with CLIP Latents" (DALL·E 2's prior and decoder; Karlo and Kandinsky's
priors in diffusers).

Ancestral DDPM sampling (Ho et al. 2020, eq. 7, over the stride of Nichol & Dhariwal 2021,
sec. 4; see :mod:`diffsched.methods.ddpm`) on the squared-cosine betas, with the σ_t of the
posterior variance formed through its log (``fixed_small_log``) and x̂_0 clipped. Only the
timesteps differ from DDPM: N points evenly over the whole training range, both ends
included,

    t_i = round((N - 1 - i) (T - 1) / (N - 1)),   i = 0..N-1   (t_0 = T - 1, t_{N-1} = 0),

each step going to the loop's next timestep (the pipelines pass it as ``prev_timestep``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import ops, predictions
from ..core.engine import Tableau
from ..core.options import option, with_default
from ..core.scheduler import (
    MAX_TRAIN_STEPS,
    BaseScheduler,
    BrownianNoise,
    Clipping,
    document,
)
from ..schedules import betas as beta_schedules
from ._img2img import first_call
from .ddpm import LearnedPosteriorVariance, posterior_tableau

VARIANCE_TYPES = ("fixed_small_log", "learned_range")


@document
@dataclass(frozen=True, kw_only=True)
class UnCLIP(LearnedPosteriorVariance, BrownianNoise, Clipping, BaseScheduler):
    """unCLIP's ancestral sampler (Ramesh et al. 2022): DDPM on timesteps spread over the
    whole training range.

    With ``variance_type="learned_range"`` (unCLIP's decoder) the model output has twice
    the sample's channels (axis 1): the prediction, then the variance (as ``DDPM``'s).

    First order; one model call per step; stochastic (no noise at timestep 0). diffusers:
    ``UnCLIPScheduler`` (the Kandinsky prior, Karlo / unCLIP pipelines). Not to be confused
    with ``DDPM``, whose spacings leave out timestep T - 1 or 0. N >= 2.
    ``init(..., strength=s)``: image-to-image.
    """

    DIFFUSERS_CLASS = "UnCLIPScheduler"
    PREDICTION_TYPES = ("noise", "sample")

    num_train_steps: int = option(
        1000, "number of diffusion steps the model was trained with (T)", "num_train_timesteps",
        low=2, high=MAX_TRAIN_STEPS,
    )  # fmt: skip
    beta_schedule: str = option(
        "squared_cosine", "the training betas: squared_cosine (Nichol & Dhariwal 2021, "
        "eq. 17), the only one diffusers' UnCLIPScheduler takes", "beta_schedule",
        choices=("squared_cosine",), diffusers_values=beta_schedules.DIFFUSERS_BETA_SCHEDULES,
    )  # fmt: skip
    variance_type: str = option(
        "fixed_small_log", "σ_t of the added noise: fixed_small_log (the posterior variance, "
        "through its log); learned_range (extra output channels of the model) is rejected",
        "variance_type", choices=VARIANCE_TYPES,
    )  # fmt: skip
    prediction_type: str = option(
        "noise", "what the model predicts: noise (ε) or sample (x_0)", "prediction_type",
        choices=PREDICTION_TYPES, diffusers_values=predictions.DIFFUSERS_PREDICTION_TYPES,
    )  # fmt: skip
    clip_denoised_sample: bool = with_default(Clipping, "clip_denoised_sample", True)

    @property
    def deterministic(self) -> bool:
        return False

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ_t for t = 0..T-1, float64."""
        betas = beta_schedules.betas(self.beta_schedule, self.num_train_steps, 0.0, 0.0, None)
        return beta_schedules.alphas_cumprod(betas)

    def timesteps(self, num_steps: int) -> np.ndarray:
        """The N timesteps, from T - 1 down to 0."""
        ops.check_num_steps(num_steps, minimum=2)
        ratio = (self.num_train_steps - 1) / (num_steps - 1)
        return np.round(np.arange(num_steps) * ratio)[::-1].astype(np.int64)

    def _levels(self, num_steps: int, strength: float = 1.0):
        ts = self.timesteps(num_steps)
        ts = ts[first_call(num_steps, strength) :]
        acp = self.alphas_cumprod
        return ts, acp[ts], beta_schedules.alpha_bar_at(acp, np.append(ts[1:], -1), 1.0)

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        _, a_t, a_prev = self._levels(num_steps, **init_options)
        return float(a_t[0]), float(a_prev[-1])

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        ts, a_t, a_prev = self._levels(num_steps, strength)
        return posterior_tableau(self.prediction_type, self.variance_type, ts, a_t, a_prev)
