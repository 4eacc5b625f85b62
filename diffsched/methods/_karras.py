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
from ..schedules import discrete
from ..schedules import sigmas as sigma_schedules
from ._img2img import first_call


class KarrasGrid:
    """The grid, the first sample's level and the loop's noise levels of a discrete-time
    σ-based method (a mixin of a :class:`~diffsched.core.scheduler.Scheduler` with
    :class:`~diffsched.core.scheduler.Spacing`)."""

    def grid_options(self) -> discrete.GridOptions:
        """This class's options of :func:`~diffsched.schedules.discrete.ve_grid`: the
        spacing, and the defaults of the options that only some classes have (a class with
        one of them replaces its default by its own)."""
        return discrete.GridOptions(
            spacing=self.timestep_spacing, offset=self.timesteps_offset,  # type: ignore[attr-defined]
            sigma_schedule=None, interpolation="linear", sigma_min=None, sigma_max=None,
            final_sigma="zero", continuous_timesteps=False, zero_terminal_snr=False,
        )  # fmt: skip

    def _grid(
        self, num_steps: int, sigmas: Any = None, timesteps: Any = None, strength: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, σ's with the final level appended), as diffusers' set_timesteps."""
        options = self.grid_options()
        if timesteps is not None and sigmas is None and options.sigma_schedule is not None:
            raise ValueError(f"timesteps= cannot be combined with {self.sigma_option()}")  # type: ignore[attr-defined]
        ts, sig = discrete.ve_grid(
            self.alphas_cumprod,
            num_steps,
            options,
            sigmas=sigmas,
            timesteps=timesteps,  # type: ignore[attr-defined]
        )
        # diffusers' img2img pipelines count the N steps asked, not the calls: the
        # log-linear continuous loop makes N + 1 calls and keeps its last floor(N s) + 1
        steps = len(ts) if sigmas is not None or timesteps is not None else num_steps
        cut = first_call(steps, strength)
        return ts[cut:], sig[cut:]

    def _init_noise_sigma(self, sig: np.ndarray) -> float:
        top = float(np.max(sig))
        if self.timestep_spacing in ("linspace", "trailing"):  # type: ignore[attr-defined]
            return top
        return float(np.sqrt(top**2 + 1))

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        ts, sig = self._grid(num_steps, **init_options)
        n = len(ts)
        return float(sigma_schedules.alpha_bar_of(sig[0])), float(
            sigma_schedules.alpha_bar_of(sig[n])
        )


@dataclass(frozen=True, kw_only=True)
class EulerBase(KarrasGrid, ZeroTerminalSNR, Spacing, Scheduler):
    """The options of diffusers' Euler-type schedulers (linspace spacing, zero terminal SNR)."""

    timestep_spacing: str = with_default(Spacing, "timestep_spacing", "linspace")

    def grid_options(self) -> discrete.GridOptions:
        return super().grid_options()._replace(zero_terminal_snr=self.rescale_betas_zero_snr)


@dataclass(frozen=True, kw_only=True)
class TwoStageBase(KarrasGrid, SigmaGrid, Spacing, Scheduler):
    """The options shared by diffusers' Heun and DPM2 schedulers (Stable Diffusion's betas,
    linspace spacing), and Euler's σ grid and initial noise level."""

    beta_start: float = with_default(Scheduler, "beta_start", 0.00085)
    beta_end: float = with_default(Scheduler, "beta_end", 0.012)
    timestep_spacing: str = with_default(Spacing, "timestep_spacing", "linspace")

    def grid_options(self) -> discrete.GridOptions:
        return super().grid_options()._replace(sigma_schedule=self.sigma_kind)


def interleave(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per-call values of a two-stage loop: ``first[i]`` at call 2i (N of them), then
    ``second[i]`` at call 2i + 1 (the N - 1 steps that have a second stage)."""
    out = np.empty(2 * len(first) - 1)
    out[0::2] = first
    out[1::2] = second[: len(first) - 1]
    return out
