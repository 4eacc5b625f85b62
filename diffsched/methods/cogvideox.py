"""CogVideoX's samplers: Yang et al. 2024, "CogVideoX: Text-to-Video Diffusion Models with An
Expert Transformer" (also CogView3-Plus), as diffusers' ``CogVideoXDDIMScheduler`` and
``CogVideoXDPMScheduler`` run them.

Both sample a variance-preserving model whose training ᾱ is the betas' cumulative product
with its signal-to-noise ratio divided by ``snr_shift_scale`` s (CogVideoX sec. 3.3,
following Hoogeboom et al. 2023's SNR shift), then optionally rescaled to zero terminal SNR
(Lin et al. 2023, Alg. 1, on sqrt(ᾱ)):

    ᾱ'_t = ᾱ_t / (s + (1 - s) ᾱ_t)        (SNR'_t = SNR_t / s)

and step from t to t' = t - T // N (ᾱ_{t'} = 1 past t = 0, or ᾱ_0 with
``set_alpha_to_one=False``), with x̂_0 from the model output at ᾱ_t (never clipped).

**DDIM** (Song et al. 2020, eq. 12 with η = 0, written through x_t and x̂_0):

    x_{t'} = a x_t + (sqrt(ᾱ_{t'}) - sqrt(ᾱ_t) a) x̂_0,   a = sqrt((1 - ᾱ_{t'}) / (1 - ᾱ_t)).

**DPM** (SDE-DPM-Solver++(2M): Lu et al. 2022b, "DPM-Solver++", sec. 5 and app. B, with
the stochastic term of Gonzalez et al. 2023's SDE variant), in λ = log(α/σ) of ᾱ, h = λ_{t'} - λ_t:

    x_{t'} = (σ_{t'}/σ_t) e^{-h} x_t + α_{t'} (1 - e^{-2h}) D + σ_{t'} sqrt(1 - e^{-2h}) z,
    D = x̂_0 on the first step and the last one (t' < 0);
    D = (1 + 1/(2r)) x̂_0 - 1/(2r) x̂_0^{back} otherwise, r = (λ_t - λ_back) / h,

where x̂_0^{back} and λ_back are those of the call before (the pipeline passes the previous
timestep as ``timestep_back`` and the previous x̂_0 as ``old_pred_original_sample``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import predictions
from ..core.engine import SAMPLE, X0, Tableau, Update
from ..core.options import option, with_default
from ..core.scheduler import (
    BrownianNoise,
    FinalAlpha,
    Scheduler,
    Spacing,
    ZeroTerminalSNR,
    document,
    spaced_timesteps,
)
from ..schedules import betas as beta_schedules
from ._img2img import first_call


@dataclass(frozen=True, kw_only=True)
class _CogVideoXBase(Spacing, FinalAlpha, ZeroTerminalSNR, Scheduler):
    # keys of diffusers' classes that their step never reads (no clipping, no thresholding)
    INERT_KEYS = frozenset({"clip_sample", "clip_sample_range", "sample_max_value"})

    beta_schedule: str = with_default(Scheduler, "beta_schedule", "quadratic")
    beta_start: float = with_default(Scheduler, "beta_start", 0.00085)
    beta_end: float = with_default(Scheduler, "beta_end", 0.012)
    snr_shift_scale: float = option(
        3.0, "s: the training SNR divided by s, ᾱ' = ᾱ / (s + (1 - s) ᾱ) (CogVideoX sec. 3.3)",
        "snr_shift_scale", low=0.0, low_open=True,
    )  # fmt: skip

    @property
    def betas(self) -> np.ndarray:
        """The training betas, float64 (before the SNR shift), held to the checks of every
        beta schedule (ᾱ decreasing, not below 1e-12: the fuzzer's beta_end=0.625 drove it
        to 6e-121 and a float32 loop to inf)."""
        betas = beta_schedules.betas(
            self.beta_schedule, self.num_train_steps, self.beta_start, self.beta_end,
            self.trained_betas,
        )  # fmt: skip
        beta_schedules.check_betas(betas)
        return betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ'_t for t = 0..T-1: shifted, then (``rescale_betas_zero_snr``) rescaled."""
        acp = beta_schedules.alphas_cumprod(self.betas)
        s = self.snr_shift_scale
        acp = acp / (s + (1 - s) * acp)
        if self.rescale_betas_zero_snr:  # Lin et al. 2023, Alg. 1, on sqrt(ᾱ)
            root = np.sqrt(acp)
            first, last = root[0], root[-1]
            root = (root - last) * first / (first - last)
            acp = root**2
        return acp

    def _levels(self, num_steps: int, strength: float = 1.0):
        """(timesteps, ᾱ_t, ᾱ_{t'}): each step goes from t to t - T // N."""
        ts = spaced_timesteps(self, num_steps)
        ts = ts[first_call(num_steps, strength) :]
        prev = ts - self.num_train_steps // num_steps
        acp = self.alphas_cumprod
        return ts, acp[ts], beta_schedules.alpha_bar_at(acp, prev, self.final_alpha_cumprod), prev

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        _, a_t, a_prev, _ = self._levels(num_steps, **init_options)
        return float(a_t[0]), float(a_prev[-1])


@document
@dataclass(frozen=True, kw_only=True)
class CogVideoXDDIM(_CogVideoXBase):
    """Deterministic DDIM on CogVideoX's SNR-shifted schedule (Yang et al. 2024).

    First order; one model call per step; deterministic (diffusers' step takes ``eta`` and
    ignores it). diffusers: ``CogVideoXDDIMScheduler`` (CogVideoX, CogView3-Plus). Not to be
    confused with ``DDIM``, whose ᾱ has no SNR shift and whose x̂_0 is clipped.
    ``init(..., strength=s)``: image-to-image (video-to-video).
    """

    DIFFUSERS_CLASS = "CogVideoXDDIMScheduler"

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        ts, a_t, a_prev, _ = self._levels(num_steps, strength)
        x0 = predictions.x0_coefficients(self.prediction_type, a_t)
        with np.errstate(divide="ignore", invalid="ignore"):  # ᾱ_t = 1: refused by compile
            a = np.sqrt((1 - a_prev) / (1 - a_t))
        return Tableau(
            timesteps=ts,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update={(SAMPLE, 0): a, (X0, 0): np.sqrt(a_prev) - np.sqrt(a_t) * a},
            start=(float(np.sqrt(a_t[0])), float(np.sqrt(1 - a_t[0]))),
        )


@document
@dataclass(frozen=True, kw_only=True)
class CogVideoXDPM(BrownianNoise, _CogVideoXBase):
    """SDE-DPM-Solver++(2M) on CogVideoX's SNR-shifted schedule (Yang et al. 2024).

    Second order (first on the first and last steps); one model call per step; stochastic.
    diffusers: ``CogVideoXDPMScheduler`` (driven as ``CogVideoXPipeline`` drives it, with
    ``timestep_back`` the previous timestep and the previous x̂_0, both carried here by the
    state). Not to be confused with ``DPMSolverMultistep(algorithm_type="sde-dpmsolver++")``
    (its own grid and ᾱ). ``noise=``: the draw the step uses (diffusers draws twice on the
    second-order steps and uses the second). ``init(..., strength=s)``: image-to-image.
    """

    DIFFUSERS_CLASS = "CogVideoXDPMScheduler"
    ORDER = 2

    @property
    def deterministic(self) -> bool:
        return False

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        ts, a_t, a_prev, prev = self._levels(num_steps, strength)
        n = len(ts)
        x0 = predictions.x0_coefficients(self.prediction_type, a_t)
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.log(np.sqrt(a_t / (1 - a_t)))  # λ = log(α/σ); -inf at zero SNR
            lam_next = np.log(np.sqrt(a_prev / (1 - a_prev)))  # +inf past t = 0
            h = lam_next - lam
            decay = np.sqrt((1 - a_prev) / (1 - a_t)) * np.exp(-h)  # (σ_{t'}/σ_t) e^{-h}
            weight = -np.expm1(-2 * h) * np.sqrt(a_prev)  # α_{t'} (1 - e^{-2h})
            noise = np.sqrt(1 - a_prev) * np.sqrt(-np.expm1(-2 * h))
            h_last = np.concatenate([[np.nan], lam[1:] - lam[:-1]])  # λ_t - λ_back
            half_inv_r = 0.5 * h / h_last  # 1 / (2r)
        upd = Update(n)
        for i in range(n):
            upd.add(SAMPLE, 0, i, decay[i])
            if i == 0 or prev[i] < 0:  # first order: no x̂_0 before, or the last step
                upd.add(X0, 0, i, weight[i])
            else:
                upd.add(X0, 0, i, weight[i] * (1 + half_inv_r[i]))
                upd.add(X0, 1, i, -weight[i] * half_inv_r[i])
        return Tableau(
            timesteps=ts,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update=dict(upd),
            noise=noise,
            start=(float(np.sqrt(a_t[0])), float(np.sqrt(1 - a_t[0]))),
        )
