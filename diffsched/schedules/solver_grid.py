"""The timestep / σ grid of the variance-preserving multistep solvers (DPM-Solver and kin).

Lu et al. 2022a ("DPM-Solver", sec. 3.3) step through the half-log-SNR
λ_t = log(α_t / σ_t) of the noise schedule x_t = α_t x_0 + σ_t ε; diffusers'
``DPMSolverMultistepScheduler.set_timesteps`` picks the loop's levels, and its DEIS, UniPC,
SA-Solver and DPM-Solver singlestep schedulers copy that code with small drifts. This
module is the one function all of them call, each with its own keyword settings.

The grid of an N-step loop is N model calls and a final level, N + 1 σ's in all
(σ in the variance-exploding sense, σ = sqrt((1 - ᾱ) / ᾱ), except for flow grids):

1. **λ clipping** (``lambda_min_clipped``, Lu et al. 2022b, app. D): training steps whose
   λ lies below the bound are never visited; the spacings run over the first
   ``last = T - #{t: λ_t < bound}`` training steps (for the cosine schedule, whose λ
   plunges near t = T).
2. **spacing** of N + 1 points, the last (t = 0 side) dropped, as the model is called at
   the first N:

   * ``linspace``: round(linspace(0, last - 1, N + 1)), descending, without 0;
   * ``leading``: r = last // (N + 1); N r, (N - 1) r, ..., r, plus ``offset``;
   * ``trailing``: round(arange(last, 0, -T/N)) - 1 (T/N whatever ``last`` is, so a
     clipped trailing grid has fewer than N points).

   Their σ's are interpolated linearly in t over the training σ's.
3. **re-gridded σ's** (``sigma_schedule``), over the whole training range
   [σ_0, σ_{T-1}] (not the spaced one), with timesteps from
   :func:`~diffsched.schedules.sigmas.sigma_to_t`:

   * ``karras``: Karras et al. 2022, eq. 5 (ρ = 7); timesteps rounded when
     ``round_karras``;
   * ``lu``: evenly in λ (Lu et al. 2022a, sec. 3.3, "uniform logSNR"); λ = -log σ, so
     these are evenly spaced in log σ; timesteps rounded when ``round_karras``;
   * ``exponential``: evenly in log σ (the same levels as ``lu``, timesteps not rounded);
   * ``beta``: Lee et al. 2024, the Beta(0.6, 0.6) quantiles;
   * ComfyUI's (``simple``, ``normal``, ``kl_optimal``, ...; :mod:`diffsched.schedules.comfy`)
     on the training σ table, timesteps truncated;
   * ``flow``: rectified flow, x = (1 - σ) x_0 + σ ε, σ ∈ (0, 1): the ramp
     σ_k = (1 - 1/T) k / N, k = N..1 (``flow_base="ramp"``) or linspace(1, 1/T, N + 1)
     without its last point (``flow_base="linspace"``), then shifted, statically
     (:func:`~diffsched.schedules.shifts.shift` by ``flow_shift``) or, with ``flow_mu``,
     dynamically (:func:`~diffsched.schedules.shifts.time_shift`); timestep = σ T.

   Timesteps are integers (diffusers casts them to int64, truncating).
4. **final level**: ``zero`` (σ = 0: the last step lands on x̂_0), ``sigma_min`` (the
   training σ_0) or ``last`` (a repeat of the last call's σ: the last step moves nothing
   but the multistep history). Re-gridded σ's use ``converted_final_sigma`` when given.
5. The σ's are stored in float32, as diffusers stores them; every coefficient is then
   formed in float64 from those values (:func:`alpha_sigma`).

The drifts, as each diffusers class has them (0.42.1):

=====================  ================  =============  =========================
class                  lambda clipping   Karras ts      final σ
=====================  ================  =============  =========================
DPMSolverMultistep     yes               rounded        zero / sigma_min
                                         (not cosine)
DPMSolverSinglestep    yes (linspace)    rounded        zero / sigma_min
DEIS, SA-Solver        DEIS no / SA yes  rounded        sigma_min; re-gridded: last
UniPC                  no                rounded        zero / sigma_min; re-gridded
                                                        sigma_min: last
DPMSolverMultistep-    yes               rounded        ascending, the top (``reverse``)
Inverse
=====================  ================  =============  =========================
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import comfy, shifts
from . import sigmas as sigma_schedules
from .spacing import check_leading_ratio, check_training_range

SIGMA_SCHEDULES = ("karras", "lu", "exponential", "beta", "flow",
                   *sigma_schedules.AYS_SCHEDULES, *sigma_schedules.COMFY_SCHEDULES)  # fmt: skip
FINAL_SIGMAS = ("zero", "sigma_min", "last")
FLOW_BASES = ("ramp", "linspace")


class SolverGrid(NamedTuple):
    """An N-step loop's grid: the model calls' timesteps and the N + 1 levels.

    Attributes:
        timesteps: (N,) int64, the model's timestep at each call.
        sigmas: (N + 1,) float64 holding float32 values: σ of each call and the final one
            (variance-exploding σ, or the flow σ when ``flow``).
        flow: whether the levels are rectified-flow σ's (α = 1 - σ).
    """

    timesteps: np.ndarray
    sigmas: np.ndarray
    flow: bool


def alpha_sigma(sigmas: np.ndarray, flow: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(α_t, σ_t) of x_t = α_t x_0 + σ_t ε at each grid level, float64.

    Variance preserving: α = 1 / sqrt(σ² + 1), σ_t = σ α; flow: α = 1 - σ, σ_t = σ.
    """
    s = np.asarray(sigmas, dtype=np.float64)
    if flow:
        return 1.0 - s, s
    alpha = 1.0 / np.sqrt(s**2 + 1.0)
    return alpha, s * alpha


@np.errstate(divide="ignore")
def half_log_snr(alpha: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """λ = log α - log σ (Lu et al. 2022a, sec. 2); +inf at σ = 0."""
    return np.log(alpha) - np.log(sigma)


def clipped_last_timestep(alphas_cumprod: np.ndarray, lambda_min_clipped: float) -> int:
    """``last``: T minus the number of training steps with λ_t < ``lambda_min_clipped``."""
    acp = np.asarray(alphas_cumprod, dtype=np.float64)
    lam = half_log_snr(np.sqrt(acp), np.sqrt(1.0 - acp))  # decreasing in t
    clipped = int(np.searchsorted(lam[::-1], lambda_min_clipped, side="left"))
    return len(acp) - clipped


def spaced_timesteps(
    spacing: str,
    num_train_steps: int,
    last: int,
    num_steps: int,
    offset: int = 0,
    *,
    reverse: bool = False,
) -> np.ndarray:
    """The N + 1-point spacings of step 2 of the module docstring, int64.

    Descending, without the point nearest t = 0; with ``reverse``, ascending without the
    point nearest ``last`` (for ``trailing``, the same points as the forward grid).
    """
    if spacing == "linspace":
        points = np.linspace(0, last - 1, num_steps + 1).round()
    elif spacing == "leading":
        ratio = last // (num_steps + 1)
        check_leading_ratio(ratio, last, num_steps, num_steps + 1)
        points = (np.arange(0, num_steps + 1) * ratio).round()
    elif spacing == "trailing":
        ts = np.arange(last, 0, -num_train_steps / num_steps).round() - 1
        return (ts[::-1] if reverse else ts).astype(np.int64)
    else:
        raise ValueError(
            f"timestep_spacing must be one of ('linspace', 'leading', 'trailing'), got: {spacing!r}"
        )
    ts = points[:-1] if reverse else points[::-1][:-1]
    if spacing == "leading":
        ts = ts + offset
    return ts.astype(np.int64)


def _truncate(values: np.ndarray) -> np.ndarray:
    """diffusers' float -> int64 cast of timesteps (toward zero)."""
    return np.trunc(np.asarray(values, dtype=np.float64)).astype(np.int64)


def _final(kind: str, sig: np.ndarray, train_sigma_0: float, name: str) -> float:
    if kind == "zero":
        return 0.0
    if kind == "sigma_min":
        return train_sigma_0
    if kind == "last":
        return float(sig[-1])
    raise ValueError(f"{name} must be one of {FINAL_SIGMAS}, got: {kind!r}")


def solver_grid(
    alphas_cumprod: np.ndarray,
    num_steps: int | None,
    *,
    spacing: str = "linspace",
    offset: int = 0,
    sigma_schedule: str | None = None,
    final_sigma: str = "zero",
    converted_final_sigma: str | None = None,
    lambda_min_clipped: float = -math.inf,
    round_karras: bool = True,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    flow_shift: float = 1.0,
    flow_base: str = "ramp",
    flow_mu: float | None = None,
    time_shift_type: str = "exponential",
    shift_terminal: float | None = None,
    flow_nudge_from_one: bool = False,
    karras_as_flow: bool = False,
    timesteps: Any = None,
    sigmas: Any = None,
    reverse: bool = False,
) -> SolverGrid:
    """The grid of an N-step loop (see the module docstring for each step).

    Args:
        alphas_cumprod: ᾱ of the training steps (after any zero-terminal-SNR clamp).
        num_steps: N; None with ``timesteps=`` or ``sigmas=``.
        spacing, offset: the spacing of the σ's when ``sigma_schedule`` is None.
        sigma_schedule: None (the spacing's own σ's) or one of :data:`SIGMA_SCHEDULES`.
        final_sigma: the final level: ``zero``, ``sigma_min`` (training σ_0), ``last``.
        converted_final_sigma: the final level of re-gridded σ's (``karras``, ``lu``,
            ``exponential``, ``beta``, ``flow``); None: ``final_sigma``.
        lambda_min_clipped: skip training steps with λ below this (-inf: none).
        round_karras: round the timesteps of ``karras`` and ``lu`` grids.
        sigma_min, sigma_max: bounds of ``karras`` / ``exponential`` / ``beta`` grids
            (default: the training range).
        flow_shift: the static shift s of flow grids (Esser et al. 2024, eq. 23).
        flow_base: ``ramp`` (DPM-Solver's) or ``linspace`` (UniPC's) unshifted flow σ's.
        flow_mu, time_shift_type: the dynamic shift of flow grids (instead of the static).
        shift_terminal: stretch a flow grid so that its last σ is this (LTX-Video).
        flow_nudge_from_one: lower a first flow σ of 1 by 1e-6 (UniPC).
        karras_as_flow: a ``karras`` grid turned into flow σ's, σ / (σ + 1) (UniPC).
        timesteps: custom integer timesteps (N of them, descending), σ's interpolated.
        sigmas: custom unshifted flow σ's (N of them) replacing the flow base.
        reverse: the grid of the same solver run from data to noise (DPM-Solver
            inversion): ascending levels; the final level is the top of the spaced range
            (σ at ``last - 1``), or a repeat of the last re-gridded σ.
    """
    acp = np.asarray(alphas_cumprod, dtype=np.float64)
    num_train = len(acp)
    train = sigma_schedules.from_alphas_cumprod(acp)  # ascending in t
    log_train = np.log(train)
    kind = sigma_schedule
    if kind is not None and kind not in SIGMA_SCHEDULES:
        raise ValueError(f"sigma schedule must be one of {SIGMA_SCHEDULES}, got: {kind!r}")
    if flow_base not in FLOW_BASES:
        raise ValueError(f"flow_base must be one of {FLOW_BASES}, got: {flow_base!r}")
    if timesteps is not None and kind is not None:
        raise ValueError(f"custom timesteps cannot be combined with {kind} sigmas")
    if sigmas is not None and kind != "flow":
        raise ValueError("custom sigmas are flow sigmas: they need the flow sigma schedule")
    if timesteps is not None:
        ts = np.asarray(timesteps).astype(np.int64).reshape(-1)
        num_steps = len(ts)
    elif sigmas is not None:
        num_steps = len(np.asarray(sigmas).reshape(-1))
    if num_steps is None or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got: {num_steps!r}")
    last = clipped_last_timestep(acp, lambda_min_clipped)
    if timesteps is None and kind is None:
        ts = spaced_timesteps(spacing, num_train, last, num_steps, offset, reverse=reverse)
        if last > 0:  # else lambda_min_clipped left no level: the engine names it
            check_training_range(ts, spacing, num_train, num_steps, offset)
    flow = kind == "flow" or (kind == "karras" and karras_as_flow)
    final_kind = final_sigma
    if kind is not None and converted_final_sigma is not None:
        final_kind = converted_final_sigma
    # the re-gridded σ's run over the training range, descending (ascending with reverse)
    lo_hi = train if reverse else train[::-1]
    if kind is None:
        sig = np.interp(ts, np.arange(num_train), train)
    elif kind in ("karras", "exponential", "beta", *sigma_schedules.AYS_SCHEDULES):
        lo = float(lo_hi[-1]) if sigma_min is None or reverse else float(sigma_min)
        hi = float(lo_hi[0]) if sigma_max is None or reverse else float(sigma_max)
        sig = sigma_schedules.convert(kind, lo_hi, num_steps, lo, hi)
        if kind == "karras" and karras_as_flow:
            sig = sig / (sig + 1)
            ts = _truncate(sig * num_train)
        else:
            t = sigma_schedules.sigma_to_t(sig, log_train)
            ts = _truncate(t.round() if kind == "karras" and round_karras else t)
    elif kind in sigma_schedules.COMFY_SCHEDULES:  # ComfyUI's, on the training σ table
        sig = comfy.grid_sigmas(kind, sigma_schedules.comfy_table(kind, train), num_steps)
        if reverse:
            sig = sig[::-1]
        ts = _truncate(sigma_schedules.sigma_to_t(sig, log_train))
    elif kind == "lu":  # evenly in λ = -log σ (ρ = 1 in Karras' formula)
        lam = np.log(lo_hi)
        lam = lam[0] + np.linspace(0, 1, num_steps) * (lam[-1] - lam[0])
        sig = np.exp(lam)
        t = sigma_schedules.sigma_to_t(sig, log_train)
        ts = _truncate(t.round() if round_karras else t)
    else:  # flow
        if sigmas is not None:
            sig = np.asarray(sigmas, dtype=np.float64).reshape(-1)
        elif flow_base == "ramp":
            sig = (1.0 - np.linspace(1, 1 / num_train, num_steps + 1))[::-1][:-1]
        else:
            sig = np.linspace(1, 1 / num_train, num_steps + 1)[:-1]
        if flow_mu is not None:
            sig = shifts.time_shift(sig, flow_mu, time_shift_type)
        else:
            sig = shifts.shift(sig, flow_shift)
        if shift_terminal:
            sig = shifts.stretch_to_terminal(sig, shift_terminal)
        if flow_nudge_from_one and abs(sig[0] - 1) < 1e-6:
            sig = sig.copy()
            sig[0] -= 1e-6
        if reverse:
            sig = sig[::-1]
        ts = _truncate(sig * num_train)
    if reverse and kind is None:
        top = last - 1
        final = float(train[top])
    else:
        name = "final_sigma" if final_kind is final_sigma else "converted_final_sigma"
        final = _final(final_kind, sig, float(train[0]), name)
    grid = sigma_schedules.as_float32(np.concatenate([np.asarray(sig, np.float64), [final]]))
    return SolverGrid(timesteps=np.asarray(ts, dtype=np.int64), sigmas=grid, flow=flow)


def custom_grid(alphas_cumprod: Any, sigmas: Any, flow: bool = False) -> SolverGrid:
    """The grid of an explicit list of N + 1 levels, the final one included (``init(...,
    sigmas=)`` of the solver classes; float32 values, as every grid here): variance-exploding
    σ's with the timestep of each call at its place among the training σ's (rounded, as
    Karras grids), or with ``flow`` rectified-flow σ's in [0, 1] with timesteps σ · T."""
    sig = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if sig.size < 2 or not np.all(np.isfinite(sig)) or np.any(sig < 0):
        raise ValueError(f"sigmas must hold at least 2 finite levels >= 0, got: {sig.tolist()}")
    if np.any(np.diff(sig) >= 0):
        raise ValueError(f"sigmas must be decreasing, got: {sig.tolist()}")
    if flow and sig[0] > 1:
        raise ValueError(f"flow sigmas must lie in [0, 1], got: {sig.tolist()}")
    sig = sigma_schedules.as_float32(sig)
    acp = np.asarray(alphas_cumprod, dtype=np.float64)
    if flow:
        ts = _truncate(sig[:-1] * len(acp))
    else:
        log_train = np.log(sigma_schedules.from_alphas_cumprod(acp))
        ts = _truncate(sigma_schedules.sigma_to_t(sig[:-1], log_train).round())
    return SolverGrid(timesteps=ts, sigmas=sig, flow=flow)
