"""DDPM: Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models", with the
variance choices and strided sampling of Nichol & Dhariwal 2021, "Improved Denoising
Diffusion Probabilistic Models".

Ancestral sampling: each step draws x_{t'} from the Gaussian posterior q(x_{t'} | x_t, x̂_0)
(eq. 6), t' being the loop's next timestep (ᾱ_{t'} = 1 after the last). Over the stride from
t to t' (Nichol & Dhariwal 2021, sec. 4):

    α_t = ᾱ_t / ᾱ_{t'},   β_t = 1 - α_t
    x̂_0 from the model output at ᾱ_t (eq. 15 for ε), optionally clipped or thresholded
    μ̃_t = sqrt(ᾱ_{t'}) β_t / (1 - ᾱ_t) x̂_0 + sqrt(α_t) (1 - ᾱ_{t'}) / (1 - ᾱ_t) x_t      (eq. 7)
    β̃_t = (1 - ᾱ_{t'}) / (1 - ᾱ_t) β_t                                                   (eq. 7)
    x_{t'} = μ̃_t + σ_t z,   σ_t² = β̃_t (fixed_small) or β_t (fixed_large)              (sec. 3.2)

The ``_log`` variance types form σ_t through its logarithm, σ_t = exp(½ log σ_t²), as the
improved-diffusion code keeps variances: the same numbers (diffusers' fixed_large_log takes
the square root of log β_t instead, and returns NaN). β̃_t is floored at 1e-20 and no
noise is added at timestep 0, as in diffusers (a loop whose last timestep is above 0, e.g.
trailing spacing, adds σ_t z at its last step too).

A learned variance (Nichol & Dhariwal 2021, sec. 3.1) comes as C more output channels v
(:class:`~diffsched.core.scheduler.VarianceChannels`): ``learned_range`` interpolates the
log-variance between the two fixed choices (eq. 15),

    σ_t² = exp(u log β_t + (1 - u) log β̃_t),   u = (v + 1) / 2,

per element (β̃_t floored as above); ``learned`` takes σ_t² = v itself (diffusers').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import engine, families, ops, predictions
from ..core.engine import SAMPLE, X0, Tableau
from ..core.options import option
from ..core.scheduler import (
    LEARNED_VARIANCES,
    BrownianNoise,
    Scheduler,
    Spacing,
    VarianceChannels,
    X0Processing,
    ZeroTerminalSNR,
    document,
    given_timesteps,
    spaced_timesteps,
)
from ..schedules import betas as beta_schedules
from ._img2img import first_call

FIXED_VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")

MIN_POSTERIOR_VARIANCE = 1e-20  # diffusers' floor of β̃_t


class LearnedPosteriorVariance(VarianceChannels):
    """:class:`~diffsched.core.scheduler.VarianceChannels` for the posterior draw of eq. 7
    (DDPM, UnCLIP): the learned σ_t of eq. 15 scales the call's draw, from per-call columns
    the loop's table carries (``learned_variance_columns``; the class's ``_levels`` gives
    the stride's ᾱ_t, ᾱ_{t'})."""

    USES_LEARNED_VARIANCE = True

    def _compile(self, num_steps: int, init_options: dict) -> engine.Program:
        program = super()._compile(num_steps, init_options)  # type: ignore[misc]
        if not self.learns_variance:
            return program
        ts, a_t, a_prev = self._levels(num_steps, **init_options)  # type: ignore[attr-defined]
        return engine.with_columns(program, learned_variance_columns(ts, a_t, a_prev))

    def learned_noise(self, state, sample, variance, noise):
        return posterior_noise(self, state, sample, variance, noise)


@document
@dataclass(frozen=True, kw_only=True)
class DDPM(
    LearnedPosteriorVariance, BrownianNoise, X0Processing, Spacing, ZeroTerminalSNR, Scheduler
):
    """Denoising diffusion probabilistic models: ancestral sampling (Ho et al. 2020).

    First order; one model call per step; stochastic (no noise at timestep 0). diffusers:
    ``DDPMScheduler``. Not to be confused with DDIM with η = 1 (``DDIM(eta=1.0)``): the same
    step when x̂_0 is neither clipped nor thresholded and the timesteps agree, but DDIM keeps
    the model's ε̂ where DDPM keeps x_t (eq. 7), and DDIM steps to t - T // N for every
    spacing where DDPM steps to the loop's next timestep.

    ``init(..., timesteps=[...])``: custom training timesteps, strictly decreasing, as
    diffusers' ``set_timesteps(timesteps=...)``; ``init(..., strength=s)``: image-to-image.
    With ``variance_type="learned"`` or ``"learned_range"`` the model output has twice the
    sample's channels (axis 1): the prediction, then the variance (``prediction_shape``).
    """

    DIFFUSERS_CLASS = "DDPMScheduler"
    FAMILY = families.VARIANCE_PRESERVING
    CLI_NAME = "ddpm"

    beta_schedule: str = option(
        "linear",
        "the training betas: linear (Ho et al. 2020), quadratic (evenly spaced in sqrt(β); "
        "diffusers' scaled_linear), squared_cosine (Nichol & Dhariwal 2021, eq. 17), sigmoid "
        "(a logistic ramp from beta_start to beta_end; Xu et al. 2022, GeoDiff) or laplace "
        "(the Laplace log-SNR schedule, Hang et al. 2024, as diffusers discretises it)",
        "beta_schedule",
        choices=beta_schedules.EXTENDED_BETA_SCHEDULES,
        diffusers_values=beta_schedules.DIFFUSERS_EXTENDED_BETA_SCHEDULES,
    )
    variance_type: str = option(
        "fixed_small",
        "σ_t² of the added noise (Ho et al. 2020, sec. 3.2): fixed_small (β̃_t, the posterior "
        "variance) or fixed_large (β_t), each also through its log (fixed_small_log, "
        "fixed_large_log); or learned from C extra output channels v: learned_range "
        "(exp(u log β_t + (1 - u) log β̃_t), u = (v + 1)/2; Nichol & Dhariwal 2021, eq. 15) "
        "or learned (v itself)",
        "variance_type",
        choices=FIXED_VARIANCES + LEARNED_VARIANCES,
    )

    @property
    def deterministic(self) -> bool:
        return False

    def _timesteps(self, num_steps: int, timesteps: Any = None) -> np.ndarray:
        if timesteps is None:
            return spaced_timesteps(self, num_steps)
        return given_timesteps(timesteps, self.num_train_steps)

    def _levels(self, num_steps: int, timesteps: Any = None, strength: float = 1.0):
        """(timesteps, ᾱ_t, ᾱ_{t'}): each step goes to the next timestep of the loop."""
        ts = self._timesteps(num_steps, timesteps)
        ts = ts[first_call(len(ts), strength) :]
        prev = np.append(ts[1:], -1)
        acp = self.alphas_cumprod
        return ts, acp[ts], beta_schedules.alpha_bar_at(acp, prev, 1.0)

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        _, a_t, a_prev = self._levels(num_steps, **init_options)
        return float(a_t[0]), float(a_prev[-1])

    def tableau(self, num_steps: int, timesteps: Any = None, strength: float = 1.0) -> Tableau:
        ts, a_t, a_prev = self._levels(num_steps, timesteps, strength)
        return posterior_tableau(self.prediction_type, self.variance_type, ts, a_t, a_prev)


def posterior_tableau(
    prediction_type: str,
    variance_type: str,
    ts: np.ndarray,
    a_t: np.ndarray,
    a_prev: np.ndarray,
) -> Tableau:
    """Ancestral steps from ᾱ_t to ᾱ_{t'} at timesteps ``ts`` (eq. 7 over the stride; no
    noise at t = 0): DDPM's table, shared with the schedulers that differ only in their
    timesteps (UnCLIP)."""
    alpha = a_t / a_prev  # α_t over the stride (Nichol & Dhariwal 2021, sec. 4)
    beta = 1.0 - alpha
    x0 = predictions.x0_coefficients(prediction_type, a_t)
    # eq. 7: the posterior mean and variance
    mean_x0 = np.sqrt(a_prev) * beta / (1.0 - a_t)
    mean_x = np.sqrt(alpha) * (1.0 - a_prev) / (1.0 - a_t)
    posterior = np.maximum((1.0 - a_prev) / (1.0 - a_t) * beta, MIN_POSTERIOR_VARIANCE)
    if variance_type in LEARNED_VARIANCES:
        std = np.ones_like(beta)  # σ_t from the model: the step scales the draw itself
    else:
        variance = posterior if variance_type.startswith("fixed_small") else beta
        log = variance_type.endswith("_log")
        std = np.exp(0.5 * np.log(variance)) if log else np.sqrt(variance)
    return Tableau(
        timesteps=ts,
        x0_sample=x0.sample_coef,
        x0_output=x0.prediction_coef,
        update={(X0, 0): mean_x0, (SAMPLE, 0): mean_x},
        noise=np.where(ts > 0, std, 0.0),  # no noise at t = 0
        start=(float(np.sqrt(a_t[0])), float(np.sqrt(1.0 - a_t[0]))),
    )


def learned_variance_columns(ts: np.ndarray, a_t: np.ndarray, a_prev: np.ndarray) -> np.ndarray:
    """(N, 3) per call: log β̃_t, log β_t (the ends of eq. 15's interpolation; both floored
    at 1e-20 as diffusers floors β̃_t, which only a level visited twice makes bind for β_t)
    and whether the call adds noise (t > 0)."""
    beta = 1.0 - a_t / a_prev
    posterior = (1.0 - a_prev) / (1.0 - a_t) * beta
    floor = MIN_POSTERIOR_VARIANCE
    return np.stack(
        [np.log(np.maximum(posterior, floor)), np.log(np.maximum(beta, floor)),
         (ts > 0).astype(np.float64)], axis=1,
    )  # fmt: skip


def posterior_noise(
    sched: VarianceChannels, state: engine.EngineState, sample: Any, variance: Any, noise: Any
) -> Any:
    """σ_t z of this call from the model's variance channels ``variance`` (eq. 15 for
    learned_range; σ_t = sqrt(v) for learned), with ``learned_variance_columns`` last in the
    state's table; z is ``noise`` or the call's own draw."""
    min_log, max_log, adds = engine.extra_row(state)[-3:]
    if isinstance(adds, float) and adds == 0.0:
        return noise  # no noise at this call (the engine's coefficient is 0)
    if noise is not None and (
        type(noise) is not type(sample) or not ops.is_float(noise)
        or tuple(noise.shape) != tuple(sample.shape)
    ):  # fmt: skip
        return noise  # the engine's step names what it expects
    xp = ops.namespace(sample, variance)
    dtype = state.coefs.dtype
    x = sample if sample.dtype == dtype else xp.astype(sample, dtype)
    z = sched.call_draw(state, x) if noise is None else noise
    if z is None:
        return None
    z = z if z.dtype == dtype else xp.astype(z, dtype)
    v = variance if variance.dtype == dtype else xp.astype(variance, dtype)
    if sched.variance_type == "learned":
        return xp.sqrt(v) * z
    u = (v + 1.0) / 2.0  # eq. 15
    return xp.exp(0.5 * (u * max_log + (1.0 - u) * min_log)) * z
