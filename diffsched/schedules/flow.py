"""The grid of diffusers' flow-matching schedulers (rectified flow, x_σ = (1 - σ) x_0 + σ ε;
Esser et al. 2024, "Scaling Rectified Flow Transformers"), with every parameter explicit.

With T training steps (``num_train_steps``), diffusers' ``set_timesteps`` builds

    training levels   σ_k = k / T, k = T, ..., 1, statically shifted (3) unless dynamic  (1)
    N levels          linspace(σ_max, σ_min, N) between the first and last of (1)        (2)
    static shift      σ' = s σ / (1 + (s - 1) σ)             (Esser et al. 2024, eq. 23)  (3)
    dynamic shift     σ' = e^μ / (e^μ + 1/σ - 1)  or  μ / (μ + 1/σ - 1)  (exponential /    (4)
                      linear; FLUX)
    terminal stretch  1 - σ'' = (1 - σ') (1 - σ_term) / (1 - σ'_{N-1})   (LTX-Video)     (5)
    re-gridding       Karras / exponential / beta levels between the first and last level  (6)
                      of (5), or ComfyUI's schedules on the flow table
    timesteps         t_i = σ_i T                                                       (7)
    inversion         σ ↦ 1 - σ and a final level of 1 (Mochi's ``invert_sigmas``)      (8)

With a static shift s the low end is shifted twice, as in diffusers: σ_min in (2) is the
last *shifted* training level, and (3) is applied to (2) again. Levels are stored in
float32 as diffusers stores them; custom levels are shifted in float32 arithmetic, the
default grid in float64, as diffusers computes them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import comfy, shifts
from . import sigmas as sigma_schedules


def levels(name: str, values: Any, low: float, high: float) -> np.ndarray:
    """A custom grid as a non-empty, finite, non-increasing float64 vector within [low, high]."""
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a list of numbers, got: {values!r}") from None
    if arr.size < 1 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a non-empty list of finite numbers, got: {values!r}")
    if np.any(np.diff(arr) > 0):
        raise ValueError(f"{name} must be non-increasing, got: {arr.tolist()}")
    if arr.min() < low or arr.max() > high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got: {arr.tolist()}")
    return arr


def training_ends(num_train_steps: int, shift: float | None) -> tuple[float, float]:
    """The first and last training levels (1), T/T and 1/T, statically shifted by ``shift``
    (None: not shifted), in float32 arithmetic op by op, as diffusers computes them in its
    ``__init__``, so that the grid spanned between them is diffusers' to the last bit."""
    sig = np.array([num_train_steps, 1], dtype=np.float32) / np.float32(num_train_steps)
    if shift is not None:  # (3), each operation rounded to float32
        sig = (np.float32(shift) * sig) / (np.float32(1) + np.float32(shift - 1) * sig)
    return float(sig[0]), float(sig[1])


class GridOptions(NamedTuple):
    """The options of :func:`flow_grid`, one field each (no defaults: every class states all).

    Attributes:
        num_train_steps: T of (1) and (7).
        shift: the static shift s of (3) (not used with a dynamic μ).
        time_shift_type: the dynamic shift (4), ``exponential`` or ``linear``.
        shift_terminal: σ_term of (5); None or 0: no stretch.
        sigma_schedule: None or the re-gridding kind of (6).
        invert_sigmas: the inversion (8).
    """

    num_train_steps: int
    shift: float
    time_shift_type: str
    shift_terminal: float | None
    sigma_schedule: str | None
    invert_sigmas: bool


def flow_grid(
    num_steps: int | None,
    options: GridOptions,
    *,
    mu: float | None,
    sigmas: Any,
    timesteps: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps of the N calls, their N levels and the final one), float32 values.

    ``mu``: the dynamic shift (4) (None: the static shift (3)); ``sigmas``: N custom levels
    before the shift; ``timesteps``: N custom timesteps (used as given; their levels t / T
    are shifted).
    """
    T = options.num_train_steps
    dynamic = mu is not None
    custom_ts = None
    work = np.float32
    if timesteps is not None:
        custom_ts = levels("timesteps", timesteps, 0.0, T).astype(np.float32)
    if sigmas is not None:
        base = levels("sigmas", sigmas, 0.0, 1.0).astype(np.float32)
    elif custom_ts is not None:
        base = custom_ts / np.float32(T)
    else:
        # (2) between the first and last training levels (1)
        top, bottom = training_ends(T, None if dynamic else options.shift)
        base = np.linspace(top * T, bottom * T, num_steps) / T
        work = np.float64
    if dynamic:  # (4)
        sig = shifts.time_shift(base, mu, options.time_shift_type, dtype=work)
    else:  # (3)
        sig = shifts.shift(base, options.shift, dtype=work)
    terminal = options.shift_terminal
    if terminal:  # (5); diffusers skips a terminal of 0 as it skips None
        if sig[-1] == 1:
            raise ValueError(
                f"shift_terminal={terminal} stretches 1 - σ to end at the last model call, "
                "whose level is 1 here (a single step from pure noise): use more steps"
            )
        sig = shifts.stretch_to_terminal(sig, terminal, dtype=work)
    sig = np.asarray(sig, dtype=np.float64)
    kind = options.sigma_schedule
    if kind is not None:  # (6); ComfyUI's schedules on this grid's own flow levels
        model = None
        if kind in sigma_schedules.COMFY_SCHEDULES:
            model = comfy.flow_sampling(T, options.shift, mu, options.time_shift_type)
        sig = sigma_schedules.convert(kind, sig, num_steps, None, None, model)
    sig = sigma_schedules.as_float32(sig)
    if custom_ts is not None:
        ts = custom_ts.astype(np.float64)
    else:
        ts = sigma_schedules.as_float32(sig * T)  # (7)
    final = 0.0
    if options.invert_sigmas:  # (8)
        sig = sigma_schedules.as_float32(1.0 - sig)
        ts = sigma_schedules.as_float32(sig * T)
        final = 1.0
    return ts, np.append(sig, final)
