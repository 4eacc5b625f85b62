"""The σ grid of the discrete-time σ-based methods, as diffusers' Euler-type schedulers build
it, shared by Euler, Euler ancestral, Heun, DPM2, LMS and variable-step iPNDM (one place).

The probability-flow ODE of Karras et al. 2022 in x = x_0 + σ ε runs on the σ's of the model's
training steps, σ_t = sqrt((1 - ᾱ_t) / ᾱ_t), at N of them chosen by a spacing (or a named σ
grid, or custom ``sigmas=`` / ``timesteps=``), then a final level (0, or the lowest training σ);
the model is called at the fractional training timestep of each σ (log-linear
interpolation). :class:`KarrasGrid` is that grid as a mixin; :class:`EulerBase` and
:class:`TwoStageBase` are the option sets of diffusers' Euler-type and Heun/DPM2 classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.options import with_default
from ..core.scheduler import Scheduler, SigmaGrid, Spacing, ZeroTerminalSNR
from ..schedules import sigmas as sigma_schedules
from ._img2img import first_call

# diffusers' ``rescale_betas_zero_snr`` σ_max clamp: ᾱ_{T-1} = 2^-24, not 0, so σ is finite
ZERO_SNR_ALPHA_BAR = 2.0**-24


def training_alphas_cumprod(sched: Scheduler) -> np.ndarray:
    """ᾱ of the training steps, with diffusers' finite clamp under zero terminal SNR."""
    acp = sched.alphas_cumprod
    if getattr(sched, "rescale_betas_zero_snr", False):
        acp[-1] = ZERO_SNR_ALPHA_BAR
    return acp


class KarrasGrid:
    """The grid, the first sample's level and the loop's noise levels of a discrete-time
    σ-based method (a mixin of a :class:`~diffsched.core.scheduler.Scheduler` with
    :class:`~diffsched.core.scheduler.Spacing`)."""

    def _grid(
        self, num_steps: int, sigmas: Any = None, timesteps: Any = None, strength: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, σ's with the final level appended), as diffusers' set_timesteps."""
        acp = training_alphas_cumprod(self)
        log_train = np.log(sigma_schedules.from_alphas_cumprod(acp))
        kind = self.sigma_kind if isinstance(self, SigmaGrid) else None
        if sigmas is not None and timesteps is not None:
            raise ValueError("pass at most one of sigmas= and timesteps=")
        if sigmas is not None:
            sig = sigma_schedules.as_float32(descending("sigmas", sigmas))
            ts = sigma_schedules.sigma_to_t(sig[:-1], log_train)
        else:
            if timesteps is not None:
                if kind is not None:
                    raise ValueError(f"timesteps= cannot be combined with {self.sigma_option()}")
                ts = sigma_schedules.as_float32(descending("timesteps", timesteps))
                train = np.exp(log_train)
                sig = np.interp(ts, np.arange(len(train)), train)
            else:
                ts, sig = sigma_schedules.discrete_grid(
                    acp, num_steps, spacing=self.timestep_spacing, offset=self.timesteps_offset,
                    kind=kind, interpolation=getattr(self, "interpolation_type", "linear"),
                    sigma_min=getattr(self, "sigma_min", None),
                    sigma_max=getattr(self, "sigma_max", None),
                )  # fmt: skip
            final = 0.0
            if getattr(self, "final_sigmas_type", "zero") == "sigma_min":
                final = float(np.sqrt((1 - acp[0]) / acp[0]))
            sig = sigma_schedules.as_float32(np.concatenate([sig, [final]]))
        if getattr(self, "timestep_type", "discrete") == "continuous" and (
            self.prediction_type == "angular_velocity"
        ):
            ts = sigma_schedules.as_float32(0.25 * np.log(sig[:-1]))
        ts = sigma_schedules.as_float32(ts)
        cut = first_call(len(ts), strength)
        return ts[cut:], sig[cut:]

    def _init_noise_sigma(self, sig: np.ndarray) -> float:
        top = float(np.max(sig))
        if self.timestep_spacing in ("linspace", "trailing"):
            return top
        return float(np.sqrt(top**2 + 1))

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        ts, sig = self._grid(num_steps, **init_options)
        n = len(ts)
        return float(sigma_schedules.alpha_bar_of(sig[0])), float(
            sigma_schedules.alpha_bar_of(sig[n])
        )


def descending(name: str, values: Any) -> np.ndarray:
    """``values`` as a non-empty, non-increasing float64 array of finite numbers."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size < 1 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a non-empty list of finite numbers")
    if np.any(np.diff(arr) > 0):
        raise ValueError(f"{name} must be non-increasing, got: {arr.tolist()}")
    return arr


@dataclass(frozen=True, kw_only=True)
class EulerBase(KarrasGrid, ZeroTerminalSNR, Spacing, Scheduler):
    """The options of diffusers' Euler-type schedulers (linspace spacing, zero terminal SNR)."""

    timestep_spacing: str = with_default(Spacing, "timestep_spacing", "linspace")


@dataclass(frozen=True, kw_only=True)
class TwoStageBase(KarrasGrid, SigmaGrid, Spacing, Scheduler):
    """The options shared by diffusers' Heun and DPM2 schedulers (Stable Diffusion's betas,
    linspace spacing), and Euler's σ grid and initial noise level."""

    beta_start: float = with_default(Scheduler, "beta_start", 0.00085)
    beta_end: float = with_default(Scheduler, "beta_end", 0.012)
    timestep_spacing: str = with_default(Spacing, "timestep_spacing", "linspace")


def interleave(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per-call values of a two-stage loop: ``first[i]`` at call 2i (N of them), then
    ``second[i]`` at call 2i + 1 (the N - 1 steps that have a second stage)."""
    out = np.empty(2 * len(first) - 1)
    out[0::2] = first
    out[1::2] = second[: len(first) - 1]
    return out
