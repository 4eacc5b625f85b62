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


def check_leading_ratio(ratio: int, timesteps: int, num_steps: int, divisor: int) -> None:
    """``leading`` steps r = T // N (T // (N + 1) on the solvers' grids: ``divisor``)
    timesteps apart: at r = 0 every step lands on one timestep (diffusers runs such a
    loop, each step of length zero but the last); refused by name."""
    if ratio < 1:
        raise ValueError(
            f"timestep_spacing='leading' with {num_steps} steps over {timesteps} training "
            f"timesteps puts every step at one timestep (a stride of {timesteps} // "
            f"{divisor} = 0); use fewer steps"
        )


def check_training_range(
    ts: np.ndarray, spacing: str, num_train_steps: int, num_steps: int, offset: int = 0
) -> np.ndarray:
    """``ts`` if every timestep is a training one, in [0, T - 1], else a ValueError naming
    the spacing, the offset and the step count that left it (``trailing`` with N > T gives
    -1, ``leading`` with an offset past T - 1 - (N - 1) T // N gives T or more; diffusers
    calls the model there at the σ of the nearest end of its table)."""
    low, high = float(np.min(ts)), float(np.max(ts))
    if low >= 0 and high <= num_train_steps - 1:
        return ts
    bad = low if low < 0 else high
    fix = (
        f"use at most num_train_steps={num_train_steps} steps"
        if spacing == "trailing"
        else "use a smaller timesteps_offset or fewer steps"
    )
    raise ValueError(
        f"timestep_spacing={spacing!r} with timesteps_offset={offset} and {num_steps} steps "
        f"gives timestep {bad:g}, outside the training timesteps [0, {num_train_steps - 1}]; "
        f"{fix}"
    )
