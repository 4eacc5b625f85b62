"""The variance-exploding grid of a model trained at discrete timesteps, as diffusers'
Euler-type schedulers build it (Euler, Euler ancestral, Heun, DPM2, LMS, variable-step iPNDM).

The probability-flow ODE of Karras et al. 2022 in x = x_0 + σ ε runs on the σ's of the
model's training steps,

    σ_t = sqrt((1 - ᾱ_t) / ᾱ_t),   t = 0, ..., T - 1,                                  (1)

at N of them chosen by a spacing (or a named σ grid, or custom ``sigmas=`` /
``timesteps=``), then a final level (0, or the lowest training σ, σ_0); the model is called
at the fractional training timestep of each σ (log-linear interpolation over (1),
:func:`diffsched.schedules.sigmas.sigma_to_t`). Every parameter is explicit: a class passes
its own options, and the defaults of the ones it lacks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import sigmas as sigma_schedules

# diffusers' ``rescale_betas_zero_snr`` σ_max clamp: ᾱ_{T-1} = 2^-24, not 0, so σ is finite
ZERO_SNR_ALPHA_BAR = 2.0**-24


def training_alphas_cumprod(alphas_cumprod: np.ndarray, *, zero_terminal_snr: bool) -> np.ndarray:
    """ᾱ of the training steps, with diffusers' finite clamp under zero terminal SNR
    (ᾱ_{T-1} = 2^-24 where the rescaled betas give 0)."""
    acp = np.array(alphas_cumprod, dtype=np.float64)
    if zero_terminal_snr:
        acp[-1] = ZERO_SNR_ALPHA_BAR
    return acp


def descending(name: str, values: Any) -> np.ndarray:
    """``values`` as a non-empty, non-increasing float64 array of finite numbers."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size < 1 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a non-empty list of finite numbers")
    if np.any(np.diff(arr) > 0):
        raise ValueError(f"{name} must be non-increasing, got: {arr.tolist()}")
    return arr


class GridOptions(NamedTuple):
    """The options of :func:`ve_grid`, one field each (no defaults: every class states all).

    Attributes:
        spacing, offset: the timestep spacing of the N levels and its offset (``leading``).
        sigma_schedule: None (the spacing's own σ's) or a re-gridding kind
            (:data:`diffsched.schedules.sigmas.SIGMA_SCHEDULES`).
        interpolation: σ of the spaced timesteps, ``linear`` in t over (1) or ``log_linear``
            (evenly in log σ over the whole training range, N + 1 levels).
        sigma_min, sigma_max: bounds of the re-gridded σ's (None: the loop's own).
        final_sigma: the final level, ``zero`` or ``sigma_min`` (σ_0 of (1)).
        continuous_timesteps: the model's timestep is 0.25 log σ (angular-velocity models
            with diffusers' ``timestep_type="continuous"``), not the training index.
        zero_terminal_snr: the training ᾱ's end at 0 (rescaled betas), clamped to 2^-24.
    """

    spacing: str
    offset: int
    sigma_schedule: str | None
    interpolation: str
    sigma_min: float | None
    sigma_max: float | None
    final_sigma: str
    continuous_timesteps: bool
    zero_terminal_snr: bool


def ve_grid(
    alphas_cumprod: np.ndarray,
    num_steps: int | None,
    options: GridOptions,
    *,
    sigmas: Any,
    timesteps: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps, σ's with the final level appended), as diffusers' ``set_timesteps``.

    ``sigmas``: N + 1 custom levels (the last one final); ``timesteps``: N custom
    (fractional) timesteps, σ's interpolated linearly in t over (1) (with ``log_linear``
    interpolation, diffusers' N + 1 levels even in log σ, which ignore the timesteps'
    values); at most one of them.
    """
    acp = training_alphas_cumprod(alphas_cumprod, zero_terminal_snr=options.zero_terminal_snr)
    log_train = np.log(sigma_schedules.from_alphas_cumprod(acp))
    kind = options.sigma_schedule
    if sigmas is not None and timesteps is not None:
        raise ValueError("pass at most one of sigmas= and timesteps=")
    if sigmas is not None:
        sig = sigma_schedules.as_float32(descending("sigmas", sigmas))
        ts = sigma_schedules.sigma_to_t(sig[:-1], log_train)
    else:
        if timesteps is not None:
            if kind is not None:
                raise ValueError(f"timesteps= cannot be combined with sigma schedule {kind!r}")
            ts = sigma_schedules.as_float32(descending("timesteps", timesteps))
            train = np.exp(log_train)
            sig = np.interp(ts, np.arange(len(train)), train)
            if options.interpolation == "log_linear":
                # diffusers' log_linear levels depend on N alone, custom timesteps or not
                _, sig = sigma_schedules.discrete_grid(
                    acp, len(ts), spacing=options.spacing, offset=options.offset,
                    interpolation="log_linear",
                )  # fmt: skip
        else:
            ts, sig = sigma_schedules.discrete_grid(
                acp, num_steps, spacing=options.spacing, offset=options.offset, kind=kind,
                interpolation=options.interpolation, sigma_min=options.sigma_min,
                sigma_max=options.sigma_max,
            )  # fmt: skip
        final = 0.0
        if options.final_sigma == "sigma_min":
            final = float(np.sqrt((1 - acp[0]) / acp[0]))
        sig = sigma_schedules.as_float32(np.concatenate([sig, [final]]))
    if options.continuous_timesteps:
        ts = sigma_schedules.as_float32(0.25 * np.log(sig[:-1]))
    return sigma_schedules.as_float32(ts), sig
