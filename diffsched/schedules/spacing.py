"""Inference timestep spacings: which training timesteps an N-step loop visits."""

from __future__ import annotations

import numpy as np

TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")


def spaced_timesteps(
    spacing: str, num_train_steps: int, num_steps: int, offset: int = 0
) -> np.ndarray:
    """``num_steps`` training timesteps, descending, picked by ``spacing``.

    * ``leading``: 0, r, 2r, ... with r = T // N, shifted by ``offset`` (DDIM, Song et al.
      2020, sec. 4.2; the offset is the "steps_offset" of Stable Diffusion's config).
    * ``linspace``: N points evenly spread over [0, T-1], rounded.
    * ``trailing``: T, T - T/N, ..., rounded, minus one, so the first step is always T-1
      (Lin et al. 2023, sec. 3.3, Table 2).
    """
    if spacing == "leading":
        ratio = num_train_steps // num_steps
        ts = np.arange(num_steps, dtype=np.int64) * ratio + offset
        return ts[::-1].copy()
    if spacing == "linspace":
        ts = np.linspace(0, num_train_steps - 1, num_steps).round().astype(np.int64)
        return ts[::-1].copy()
    if spacing == "trailing":
        ratio = num_train_steps / num_steps
        return np.round(np.arange(num_train_steps, 0, -ratio)).astype(np.int64) - 1
    raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got: {spacing!r}")
