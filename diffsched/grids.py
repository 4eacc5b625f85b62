"""Grids as ``init`` arguments: published and named σ grids for any scheduler that takes a
custom grid, and tuned grids saved to and read from JSON.

Named grids (N levels from the model's largest trained σ down to its smallest, then the
method's final level; ``init(None, x, **named_grid(name, sched, N))``):

* ``edm``: EDM's time-uniform grid (Karras et al. 2022, eq. 5), evenly spaced in σ^(1/ρ)
  (ρ = 7 by default; ρ = 1 is even in σ, ρ → ∞ even in log σ);
* ``logsnr``: evenly spaced in log-SNR = -2 log σ (Lu et al. 2022, sec. 3.3);
* ``ays-sd15``, ``ays-sdxl``, ``ays-svd``: Align Your Steps (Sabour et al. 2024), the
  published 10-step lists, log-linearly interpolated to N (:mod:`diffsched.schedules.ays`).

The σ-based classes also take these grids as an option, ``sigma_schedule="edm"`` (ρ = 7),
``"logsnr"``, ``"ays-sd15"``, ... (see :class:`diffsched.core.scheduler.SigmaGrid`); this
module gives them, and EDM's grid at any ρ, to every method that takes a custom grid.

Methods that take ``sigmas=`` get these σ's; methods that take integer ``timesteps=`` get
the nearest training steps (an error if two levels fall on one step).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .core.scheduler import Scheduler
from .schedules import discrete
from .schedules import sigmas as sigma_schedules

NAMED_GRIDS = ("edm", "logsnr", *sigma_schedules.AYS_SCHEDULES)


def named_grid(name: str, scheduler: Scheduler, num_steps: int, *, rho: float = 7.0) -> dict:
    """The ``init`` keyword arguments of the named N-step grid (see the module docstring)."""
    from .core import ops
    from .core.options import describe

    if isinstance(rho, bool) or not (isinstance(rho, int | float) and 0 < rho < float("inf")):
        raise ValueError(f"rho must be a positive number (finite), got: {describe(rho)}")
    ops.check_num_steps(num_steps)  # before any work: the bound on N
    grid = Grid.of(scheduler, num_steps)
    sig = named_sigmas(name, grid, num_steps, rho)
    levels = grid.snap(np.log(sig))
    if levels is None:
        raise ValueError(
            f"the {name} grid of {num_steps} steps puts two levels on one training step of "
            f"{type(scheduler).__name__}; take fewer steps or a method that takes sigmas="
        )
    return grid.init_options(levels)


def named_sigmas(name: str, grid: Any, num_steps: int, rho: float = 7.0) -> np.ndarray:
    """The N call levels σ of a named grid over the training range of ``grid`` (a
    a :class:`Grid`), not below its lowest trained σ."""
    lo, hi = float(np.exp(grid.log_train[0])), float(np.exp(grid.log_train[-1]))
    if name not in NAMED_GRIDS:
        raise ValueError(f"grid must be one of {NAMED_GRIDS} or a JSON file, got: {name!r}")
    if name == "edm":
        sig = sigma_schedules.karras(lo, hi, num_steps, rho)
    else:  # logsnr: even in log σ; ays-*: the published lists, interpolated
        kind = "exponential" if name == "logsnr" else name
        sig = sigma_schedules.convert(kind, np.array([hi, lo]), num_steps, lo, hi)
    return np.maximum(sig, lo)


def save_grid(path: str | os.PathLike, init_options: dict) -> Path:
    """Writes a grid (``{"sigmas": [...]}`` or ``{"timesteps": [...]}``) as JSON that
    :func:`load_grid` and ``init(None, x, **json.load(f))`` read back."""
    from .core.files import write_atomic

    _check_grid(init_options, "the grid")
    return write_atomic(Path(path), json.dumps(init_options, indent=1) + "\n")


def load_grid(path: str | os.PathLike) -> dict[str, list]:
    """A grid saved by :func:`save_grid` (or ``diffsched tune --save``): ``init``'s
    keyword arguments."""
    from .core.config import load_json

    data = load_json(path, "grid file")
    _check_grid(data, str(path))
    return data


def _check_grid(data: Any, where: str) -> None:
    if (
        not isinstance(data, dict)
        or len(data) != 1
        or next(iter(data)) not in ("sigmas", "timesteps")
        or not isinstance(next(iter(data.values())), list)
    ):
        raise ValueError(
            f"{where} must be one of {{'sigmas': [...]}} or {{'timesteps': [...]}}, got: "
            f"{data if len(str(data)) < 80 else type(data).__name__}"
        )


# -- the search grid of the tuner (diffsched.tuning) ----------------------------------------


class Grid(NamedTuple):
    """The N call levels of a scheduler's loop as searched: log σ (``mode == "sigmas"``)
    or integer timesteps (``"timesteps"``), the first fixed at the largest trained level."""

    mode: str
    start: np.ndarray  # the scheduler's own levels, first moved to the top
    log_train: np.ndarray  # log σ of the training steps, ascending in t

    @staticmethod
    def of(scheduler: Scheduler, num_steps: int) -> Grid:
        check_tunable(scheduler)
        params = inspect.signature(scheduler.tableau).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        modes = [m for m in scheduler.TUNED_LEVELS if takes_any or m in params]
        zero_snr = bool(getattr(scheduler, "rescale_betas_zero_snr", False))  # any class
        acp = discrete.training_alphas_cumprod(scheduler.alphas_cumprod, zero_terminal_snr=zero_snr)
        log_train = np.log(sigma_schedules.from_alphas_cumprod(acp))
        program = scheduler.program(num_steps)
        ts = np.asarray(program.timesteps, dtype=np.float64)
        _, first = np.unique(ts, return_index=True)
        ts = ts[np.sort(first)]  # the N step levels (two-stage methods repeat them)
        ts[0] = len(log_train) - 1
        for mode in modes:  # σ's where the method takes them for this config, else timesteps
            start = (
                np.round(ts)
                if mode == "timesteps"
                else np.interp(ts, np.arange(len(log_train)), log_train)
            )
            grid = Grid(mode, start, log_train)
            try:
                scheduler.program(None, **grid.init_options(start))
            except ValueError:
                continue
            if scheduler.noise_levels(num_steps)[1] < 1.0:
                raise ValueError(
                    f"tune takes loops that end at σ = 0; {type(scheduler).__name__} with "
                    "these options ends above it (final_sigmas_type='zero' where the method "
                    "has it)"
                )
            return grid
        raise TypeError(
            f"{type(scheduler).__name__} with these options takes no custom grid (init has "
            "neither sigmas= nor timesteps= for it): it cannot be tuned"
        )

    def init_options(self, levels: np.ndarray) -> dict[str, list]:
        if self.mode == "timesteps":
            return {"timesteps": [int(t) for t in levels]}
        return {"sigmas": [*np.exp(levels).tolist(), 0.0]}

    def valid(self, levels: np.ndarray) -> bool:
        """Strictly decreasing, first at the top, last at or above the lowest training
        level (integers apart in timesteps mode)."""
        gaps = -np.diff(levels)
        if levels[0] != self.start[0]:
            return False
        if self.mode == "timesteps":
            return bool(np.all(gaps >= 1) and levels[-1] >= 0)
        return bool(np.all(gaps > 1e-4) and levels[-1] >= self.log_train[0])

    def snap(self, log_sigmas: np.ndarray) -> np.ndarray | None:
        """Levels given in log σ, in this grid's coordinates (None if not valid there)."""
        levels = np.asarray(log_sigmas, dtype=np.float64).copy()
        levels[0] = self.log_train[-1]
        if self.mode == "timesteps":
            levels = np.round(sigma_schedules.sigma_to_t(np.exp(levels), self.log_train))
            levels[0] = len(self.log_train) - 1
        return levels if self.valid(levels) else None


def check_tunable(scheduler: Scheduler) -> None:
    """Refuses, before any model call, a scheduler the tuner cannot tune."""
    name = type(scheduler).__name__
    if not isinstance(scheduler, Scheduler) or not getattr(scheduler, "TRAINING_TIMESTEPS", True):
        raise TypeError(f"tune needs a scheduler of a discrete-time model, got: {name}")
    if getattr(scheduler, "timestep_type", "discrete") != "discrete":  # (Euler's 0.25 log σ)
        raise TypeError(
            f"tune needs a model called at its training timesteps; {name} with "
            f"timestep_type={scheduler.timestep_type!r} calls it at 0.25 log σ (the reference "
            "and the candidate bases would call it at training timesteps: another convention)"
        )
    if not scheduler.deterministic:
        raise ValueError(
            f"tune needs a deterministic scheduler (it fits the probability-flow ODE), got {name} "
            "with stochastic options"
        )
    from .methods import DDIMInverse, DPMSolverMultistepInverse

    if isinstance(scheduler, DDIMInverse | DPMSolverMultistepInverse):
        raise TypeError(
            f"tuned and named grids are for loops from noise to data; {name} runs from data to "
            "noise (an inversion): there is no sampling error to tune"
        )
    if getattr(scheduler, "use_flow_sigmas", False) or scheduler.prediction_type == "flow":
        raise ValueError(
            f"tune does not take rectified-flow grids yet, got {name} with flow levels"
        )


def is_flow(scheduler: Scheduler) -> bool:
    """Whether the scheduler samples a rectified-flow model, x = (1 - σ) x_0 + σ ε."""
    prediction = getattr(scheduler, "prediction_type", None)  # (ComfyUI's samplers: none)
    return prediction == "flow" or bool(getattr(scheduler, "use_flow_sigmas", False))


def flow_shift(scheduler: Scheduler) -> float:
    """A flow scheduler's static shift s (FlowMatchEuler's ``shift``, the solvers'
    ``flow_shift``; 1 where it has neither)."""
    return float(getattr(scheduler, "shift", None) or getattr(scheduler, "flow_shift", 1.0))
