"""Image-to-image: where a loop of ``strength`` s < 1 starts (diffusers' img2img pipelines)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..core.engine import Tableau


def check_strength(strength: Any) -> float:
    """``strength`` as a float in (0, 1], or a ValueError naming the range."""
    ok = isinstance(strength, int | float | np.floating | np.integer) and not isinstance(
        strength, bool | np.bool_
    )
    if not ok or not (0.0 < float(strength) <= 1.0) or math.isnan(float(strength)):
        raise ValueError(f"strength must be a number in (0.0, 1.0], got: {strength!r}")
    return float(strength)


def first_call(num_steps: int, strength: float) -> int:
    """The index of the first step run: diffusers' ``get_timesteps`` keeps the last
    min(floor(N · s), N) steps of the N-step schedule."""
    strength = check_strength(strength)
    kept = min(int(num_steps * strength), num_steps)
    if kept < 1:
        raise ValueError(
            f"strength={strength} keeps floor({num_steps} * {strength}) = 0 of {num_steps} "
            "steps; raise strength or num_steps"
        )
    return num_steps - kept


def restarted(tab: Tableau, cut: int, start: tuple[float, float]) -> Tableau:
    """The calls of ``tab`` from call ``cut`` on, as a loop of their own: image-to-image for
    a multistep method, whose table the method builds over the whole N-step grid with its
    warm-up restarted at call ``cut`` (so no call from ``cut`` on reads an earlier one), as
    diffusers does when a pipeline sets its begin index. ``start``: the native (clean,
    noise) coefficients of call ``cut``'s sample (for ``add_noise``)."""
    n = tab.num_calls
    if not 0 <= cut < n:
        raise ValueError(f"the first call {cut} must lie in [0, {n})")
    if cut == 0:
        return dataclasses.replace(tab, start=start)

    def cols(value: Any) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, np.float64), (n,))[cut:].copy()

    update = {}
    for (operand, lag), col in tab.update.items():
        col = cols(col)
        if np.any(col[:lag] != 0):  # a read of a call before the cut: the method's bug
            raise AssertionError(f"call {cut + int(np.argmax(col[:lag] != 0))} reads a call "
                                 f"before the first call {cut}")  # fmt: skip
        if np.any(col != 0):
            update[(operand, lag)] = col
    return Tableau(
        timesteps=np.asarray(tab.timesteps)[cut:],
        x0_sample=cols(tab.x0_sample),
        x0_output=cols(tab.x0_output),
        update=update,
        noise=None if tab.noise is None else cols(tab.noise),
        input_scale=None if tab.input_scale is None else np.asarray(tab.input_scale)[cut:],
        start=start,
        init_noise_sigma=tab.init_noise_sigma,
    )


def strength_of_cut(num_steps: int, cut: int) -> float:
    """A ``strength`` whose loop starts at step ``cut`` of N (``first_call(N, s) == cut``),
    safe from rounding: (N - cut + 1/2) / N, or 1."""
    kept = num_steps - cut
    return 1.0 if kept >= num_steps else (kept + 0.5) / num_steps
