"""Image-to-image: where a loop of ``strength`` s < 1 starts (diffusers' img2img pipelines)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


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
