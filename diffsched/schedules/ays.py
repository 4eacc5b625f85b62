"""Align Your Steps: Sabour, Fidler & Kreis 2024, "Align Your Steps: Optimizing Sampling
Schedules in Diffusion Models".

The paper publishes 10-step σ grids (and their timesteps) optimised per model family; other
step counts are interpolated log-linearly between them (the paper's recipe: log σ is
interpolated linearly over an even ramp of positions). Use them as a custom grid of any
σ-based method, e.g. ``ds.Euler(...).init(None, x, sigmas=ays.sigmas("sd15", 15))``.
"""

from __future__ import annotations

import numpy as np

# The published 10-step grids, final level 0 included (the paper's Table / project page).
SIGMAS = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.38, 0.234, 0.113, 0.0),
    "svd": (700.0, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.0),
}
TIMESTEPS = {
    "sd15": (999, 850, 736, 645, 545, 455, 343, 233, 124, 24),
    "sdxl": (999, 845, 730, 587, 443, 310, 193, 116, 53, 13),
}


def loglinear(levels: np.ndarray, count: int) -> np.ndarray:
    """``count`` levels, log-linearly interpolated over an even ramp between the given
    (positive, descending) ones: the same list back when ``count == len(levels)``."""
    levels = np.asarray(levels, dtype=np.float64)
    xs = np.linspace(0.0, 1.0, len(levels))
    out = np.exp(np.interp(np.linspace(0.0, 1.0, count), xs, np.log(levels[::-1])))[::-1]
    if count == len(levels):
        return levels.copy()  # exactly the published list (no exp(log) rounding)
    return out


def sigmas(model: str, num_steps: int = 10) -> np.ndarray:
    """The AYS σ grid of ``model`` ("sd15", "sdxl", "svd") for ``num_steps`` steps: N + 1
    levels, the last one 0 (what ``init(..., sigmas=...)`` takes)."""
    if model not in SIGMAS:
        raise ValueError(f"AYS model must be one of {sorted(SIGMAS)}, got: {model!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got: {num_steps!r}")
    published = np.asarray(SIGMAS[model][:-1])
    return np.append(loglinear(published, num_steps), 0.0)
