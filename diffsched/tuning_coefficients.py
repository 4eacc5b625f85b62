"""Tuned coefficients: the x̂_0 history weights of a multistep method, fitted to the
user's model as a small correction of the method's table (:mod:`diffsched.methods.tuned`,
eq. (1)-(2)).

Learned solvers that fit the solver's coefficients as well as its grid (S4S, Frankel et
al. 2025; EPD, Zhu et al. 2025; PAS, Wang et al. 2025) reach a few times the accuracy per
model call of those that fit the grid only (GITS, AYS, LD3). Here the fit is:

1. **Parameters.** At call n, the corrections δ_{n,0..L} of the x̂_0 of this call and the
   L before lie in the null space of the moment conditions (2) of ``moments`` orders
   (``final_moments`` at the last call, whose step lands on σ = 0 and jumps to x̂_0: a
   discrete-time model has no level below its lowest trained one, and a tuned final
   combination of the last x̂_0 estimates is the cheapest place to remove error):
   δ_n = E_n θ_n, E_n an orthonormal basis of that null space. By default one moment
   (Σ_j δ_{n,j} = 0: the tuned table stays consistent, exact on a constant x̂_0) is a
   constraint and the higher-order conditions are a prior, through the ridge toward the
   base table of step 2: with the first moment as a constraint too (``moments=2``) the
   held-out error on the exact mixture was 13-16% higher at 5 and 10 calls (64
   calibration samples, three draws). With ``times=True`` each call but the first also
   has the time it passes the model shifted, t'_n = t_n + τ_n (eq. (3) of
   :mod:`diffsched.methods.tuned`, within the trained range; S4S, Frankel et al. 2025),
   held toward τ_n = 0 by a ridge ``TIME_RIDGE`` times a weight's. With ``samples=True``
   each call also weights its sample and the L before (eq. (4) of
   :mod:`diffsched.methods.tuned`): its parameters are then the x̂_0's effective weights
   δ + vA, in the null space above, and the noise estimates' vS, in the null space of one
   moment fewer (with the default, free: their sum rescales the step's noise, and only the
   ridge holds it). With that sum a constraint too, the fit gained nothing on the trained
   network (5 calls, 256 calibration samples, development noise: 0.0434 on held-out noise
   with and without the sample weights; 0.0361 with the sum free). Where the fit with the
   sample weights is refused (below), the table without them is fitted as with
   ``samples=False``.
2. **Objective.** ||x_N(θ) - x*||² / ||x*||² + μ ||θ||² on the calibration batch, x*
   the reference ODE solution (:func:`diffsched.tuning.reference_trajectory`), x_N the
   tuned table's final samples: ridge toward the base table.
3. **Fit.** Levenberg-Marquardt (damped Gauss-Newton). The Jacobian is by finite
   differences that reuse the run's prefix: a change of θ_n changes x_{n+1} only, so its
   column costs the N - n - 1 calls after n (none for the last call, where the final
   sample is linear in θ); a time τ_n changes call n's output, its column the N - n calls
   from n (its difference 10⁻² timesteps, toward the inside of the range).
4. **The ridge μ**, from a path μ = s·(10⁻², 10⁻³, 10⁻⁴), s per parameter its own
   diagonal of JᵀJ at the base (a weight of the last call, whose column is small, is held
   toward the base as firmly as one of the first call, whose change reaches every later
   call: with one s for all, the trace's mean, the fit at 20 calls could not even reach
   the last call's own least-squares combination, and on the exact mixture the tuned
   table ended 3 times worse than diffusers' best there), each fit starting from the one
   before. By default (``select="loo"``) every
   fit is on the whole calibration batch and is scored by its leave-one-out error: at
   the fit's last linearisation, the residual each sample would have had were it left out
   of the fit, by the block Woodbury form of ridge regression's leave-one-out identity
   (:func:`leave_one_out`; Golub, Heath and Wahba 1979), which costs P x P solves and no
   model call. With ``select="split"`` the fits are on ``1 - holdout`` of the batch, scored
   on the rest and the best refitted on the whole batch (one more fit). Either way the
   base itself (μ = ∞) is on the path, a fit leaves the base only where its out-of-sample
   error is 2% below the base's, and a calibration error below the reference's accuracy
   (1e-6: the loop already lands on the reference, as an empirical model's samples land
   on its training points) is not fitted at all. The fitted table is kept only where its
   fall in error on the whole batch is two standard errors of the paired per-sample
   differences or more (:meth:`diffsched.tuning.Score.beats`): a fall carried by a few
   samples does not carry over to other noise. Nor is a fit that extrapolates
   (:class:`_Stress`): on the calibration noise negated (the same law, other
   trajectories) it may move at most one sample more than 4 times as far from the base's
   result as it moved any calibration sample; else the fit of the next least leave-one-out
   error is judged. Where the fit of every call is dropped, the last call's combination alone
   (linear: one least-squares solve) is fitted and judged the same way.
   Leave-one-out uses every calibration sample for the fit (the split sets a quarter
   aside) and saves the refit: on the exact mixture at 10 calls, 256 calibration samples,
   three draws, scored on 2048 held-out noises, the grid and weights of UniPC gave 0.0320
   (leave-one-out) against 0.0314 (split), and the weights on UniPC's own grid 0.0531
   against 0.0649 (``benchmarks/tune_coefficients.py`` has both).
   A path 10⁻³..10⁻⁵ lowered the held-out error of ``tune="both"`` on the exact
   mixture at 10 calls (256 calibration samples, three draws,
   ``benchmarks/tune_coefficients.py``) from 0.0278 to 0.0236 at the same cost, but raised
   it on the digits model at 5 calls (64 samples: 0.1455 to 0.1514; 256: 0.1155 to 0.1185,
   one draw's fit no longer passing the guards): the default stays.

Cost: with L = 4 (the default: on development noise, not the benchmark's, 4 lowered the
error at 10 calls by a fifth against 3, and 6 no further) and one moment, about 4
parameters per call; a Jacobian costs the calls after each parameter's (about P·N/2), each
fit two iterations per ridge; with the reference (~360 calls), the candidate bases' starts
and, for ``"both"``, the grid search (100 runs at most), ``tune="both"`` costs about
200-300 × N batch model calls at 5-10 calls (210-320 × N with ``times=True``, whose
columns rerun the loop from their own call; 225-330 × N with ``samples=True``, whose
parameters per call are twice as many, and about 440 × N where its fit is refused and
the table without sample weights is fitted as well; ``benchmarks/tune_coefficients.py``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .core import ops
from .core.engine import OUTPUT, SAMPLE, X0
from .core.ops import to_numpy64
from .core.scheduler import Array, BaseScheduler, Scheduler
from .methods.tuned import Tuned, model_time_range
from .schedules import sigmas as sigma_schedules
from .tuning import Score

Model = Callable[[Array, Array], Array]
RIDGES = (1e-2, 1e-3, 1e-4)  # μ / s on the path, large to small (select="split")
RESOLUTION = 1e-6  # the reference's relative accuracy: a smaller error is not fitted
MIN_GAIN = 0.02  # the held-out split must fall by this fraction to leave the base table


class CoefficientResult(NamedTuple):
    """What :func:`fit_coefficients` found, and what it cost."""

    scheduler: Tuned  # the tuned table (its base's grid, or the tuned grid)
    start_error: float  # the base table's error on the calibration batch
    error: float  # the tuned table's error on the calibration batch
    held_errors: dict[float, float]  # μ/s -> error on the held-out split (inf: the base)
    ridge: float  # the chosen μ/s (inf: the base kept)
    model_calls: int  # batch model calls of the fit (the reference's not included)
    seconds: float
    # the check on the negated calibration noise where the gain needed one
    # (``diffsched.tuning._confirmation``: the errors there, the significances, and what
    # was "kept": "tuned", "grid alone" with the base's weights, or None, the untuned table)
    confirmation: dict[str, Any] | None = None


def null_basis(lams: np.ndarray, moments: int) -> np.ndarray:
    """An orthonormal basis (columns) of the weights δ over the levels ``lams`` (λ of this
    call first, then the earlier ones) whose moments Σ δ_j (λ_j - λ_0)^k vanish for
    k < ``moments``."""
    k = len(lams)
    with np.errstate(invalid="ignore"):  # λ = -inf: the zero-SNR top level, held by no moment
        gaps = np.nan_to_num(lams - lams[0], nan=0.0, posinf=0.0, neginf=0.0)
    rows = [np.ones(k) if p == 0 else gaps**p for p in range(min(moments, k))]
    if not rows:
        return np.eye(k)
    c = np.array(rows, dtype=np.float64)
    scale = np.max(np.abs(c), axis=1, keepdims=True)
    c = c / np.where(scale > 0, scale, 1.0)
    _, s, vt = np.linalg.svd(c)
    rank = int(np.sum(s > 1e-10 * s[0])) if len(s) else 0
    return vt[rank:].T.copy()


class _Loop:
    """The table run in its native space on host float64 arrays, with the corrections
    W (N, L + 1) of eq. (1); the model is called on the noise's backend."""

    def __init__(self, model: Model, scheduler: Scheduler, num_steps: int, grid: dict,
                 like: Array) -> None:  # fmt: skip
        tab = scheduler.tableau(num_steps, **grid)
        if tab.noise is not None and np.any(tab.column_noise() != 0):
            raise ValueError("coefficient tuning needs a deterministic scheduler")
        if scheduler.processes_x0:
            raise ValueError(
                f"coefficient tuning needs a linear x̂_0: {type(scheduler).__name__} clips or "
                "thresholds it (thresholding / clip_sample)"
            )
        self.model = model
        self.n = tab.num_calls
        self.scale = np.ones(self.n + 1) if tab.input_scale is None else np.asarray(tab.input_scale)
        self.a = np.broadcast_to(np.asarray(tab.x0_sample, np.float64), (self.n,))
        self.b = np.broadcast_to(np.asarray(tab.x0_output, np.float64), (self.n,))
        self.terms = {term: tab.column(term) for term in tab.update}
        self.like = like
        self.xp = ops.namespace(like)
        _, self.timesteps = scheduler.init(num_steps, like, **grid)
        self.times = np.asarray(tab.timesteps, dtype=np.float64)  # the base's, per call
        self.span = model_time_range(scheduler)  # where eq. (3)'s times may go (None: fixed)
        self.init_scale = scheduler.init_noise_scale(num_steps, **grid)
        self.calls = 0
        from .grids import is_flow

        ts = self.times
        if is_flow(scheduler):  # x = (1 - σ) x_0 + σ ε at t = σ T: λ = log((1 - σ) / σ)
            sig = np.clip(ts / scheduler.num_train_steps, 1e-9, 1 - 1e-9)
            self.lams = np.log((1 - sig) / sig)
        else:
            log_train = np.log(sigma_schedules.from_alphas_cumprod(scheduler.alphas_cumprod))
            self.lams = -np.interp(ts, np.arange(len(log_train)), log_train)  # λ = -log σ
        self._table = (scheduler, tab, num_steps, grid)  # for the levels, when asked

    @functools.cached_property
    def levels(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Eq. (4) of methods.tuned: the native sample of call k is A_k x_0 + S_k ε, read
        off the table's x̂_0 conversion (None: its prediction type says nothing of the
        level); only the fit with sample weights asks, not every grid the search scores."""
        scheduler, tab, num_steps, grid = self._table
        return scheduler.native_levels(tab, num_steps, grid)

    def _model(self, x: np.ndarray, k: int, shifts: np.ndarray | None = None) -> np.ndarray:
        self.calls += 1
        held = x / self.scale[k]
        if isinstance(self.like, np.ndarray):
            arg = held.astype(self.like.dtype, copy=False)
        else:
            arg = ops.asarray(self.xp, held, self.like.dtype, self.like)
        t = self.timesteps[k]
        if shifts is not None and shifts[k] != 0:  # eq. (3): the call at a time of its own
            t = ops.asarray(self.xp, self.model_time(k, shifts[k]), ops.timestep_dtype(
                self.xp, np.float64(0)), self.like)  # fmt: skip
        return to_numpy64(self.model(arg, t))

    def model_time(self, k: int, shift: float) -> float:
        """Call k's timestep moved by ``shift``, within the trained range."""
        lo, hi = self.span
        return float(np.clip(self.times[k] + shift, lo, hi))

    def times_of(self, shifts: np.ndarray | None) -> np.ndarray | None:
        """The model's times (eq. (3)) of these shifts; None where none moved."""
        if shifts is None or not np.any(shifts != 0):
            return None
        return np.array([self.model_time(k, s) for k, s in enumerate(shifts)])

    def start(self, noise: np.ndarray) -> np.ndarray:
        return noise * self.init_scale * self.scale[0]

    def run(self, x: np.ndarray, w: np.ndarray, first: int = 0, hist: tuple | None = None,
            shifts: np.ndarray | None = None,
            v: np.ndarray | None = None) -> tuple[np.ndarray, tuple]:  # fmt: skip
        """From native sample x at call ``first`` (with the operands of the calls before
        in ``hist``), the x̂_0 corrections ``w`` of eq. (1), the model's times moved by
        ``shifts`` (eq. (3); None: the base's) and the sample weights ``v`` of eq. (4)
        (None: none): (the final native sample, the operands of every call)."""
        xs, ms, ds = ([], [], []) if hist is None else (list(h[:first]) for h in hist)
        for k in range(first, self.n):
            m = self._model(x, k, shifts)
            d = self.a[k] * x + self.b[k] * m
            xs.append(x)
            ms.append(m)
            ds.append(d)
            nxt = 0.0
            for (operand, lag), col in self.terms.items():
                c = col[k]
                if c != 0 and k - lag >= 0:
                    src = {SAMPLE: xs, OUTPUT: ms, X0: ds}[operand]
                    nxt = nxt + c * src[k - lag]
            for lag in range(w.shape[1]):
                if k - lag >= 0 and w[k, lag] != 0:
                    nxt = nxt + w[k, lag] * ds[k - lag]
            for lag in range(0 if v is None else v.shape[1]):
                if k - lag >= 0 and v[k, lag] != 0:
                    nxt = nxt + v[k, lag] * xs[k - lag]
            x = nxt
        return x / self.scale[self.n], (xs, ms, ds)


# a time's ridge against a weight's (each on its own JᵀJ diagonal), for times=True: chosen
# on development noise (the exact mixture, calibration seeds 200-202, 1024 held-out noises
# of seed 8, not the benchmark's): 1, 10, 100 and 1000 gave 0.050, 0.051, 0.049, 0.051 at
# 5 calls and 64 samples (0.055 without times), 0.034, 0.039, 0.035, 0.036 with 256
# (0.037), and at 10 calls 0.016-0.019 with and without. At 6 and 8 calls every ridge
# did worse than no times on those noises; on 8192 of them and six draws the times were
# within 4% of none but at 8 calls with 64 samples (+12%) and 5 with 256 (-8%): a wash on
# the mixture (docs/tuning.md), so times=True is not the default
TIME_RIDGE = 100.0


class _Params:
    """θ -> (W, the model times' shifts, V): per tuned call, its null-space basis (module
    docstring, step 1), then with ``times`` a shift of each call's model time (eq. (3) of
    :mod:`diffsched.methods.tuned`, in timesteps) but the first's. With ``levels`` (the
    native (A_k, S_k) of each call's sample, ``_Loop.levels``) each call weights its earlier
    samples as well (eq. (4)): the effective weights of the x̂_0's, δ + vA, in the null
    space of the moments, and of the noise estimates ε̂, vS, in that of one moment fewer,
    so a block's basis has 2 (L_n + 1) rows, δ's then v's."""

    def __init__(self, lams: np.ndarray, history: int, moments: int, final_moments: int,
                 calls: str, times: bool = False,
                 levels: tuple[np.ndarray, np.ndarray] | None = None) -> None:  # fmt: skip
        n = len(lams)
        self.shape = (n, history + 1)
        self.samples = levels is not None
        # (call, basis (L_n + 1, f_n); 2 (L_n + 1) rows with levels)
        self.blocks: list[tuple[int, np.ndarray]] = []
        for k in range(n):
            if calls == "final" and k != n - 1:
                continue
            lk = min(history, k)
            lags = k - np.arange(lk + 1)
            kept = final_moments if k == n - 1 else moments
            basis = null_basis(lams[lags], kept)
            if levels is not None:
                a, s = levels[0][lags, None], levels[1][lags, None]
                # the noise estimates keep one moment fewer: their weights' sum, a rescaling
                # of the noise the step carries, is held by the prior only (methods.tuned)
                g = null_basis(lams[lags], max(0, kept - 1))
                # columns: an x̂_0 correction (δ = e, v = 0), then a noise one: the weights g
                # of the ε̂'s, v = g / S, δ = -v A (x = A x̂_0 + S ε̂ at each call)
                zero = np.zeros((len(lags), basis.shape[1]))
                basis = np.block([[basis, -g * a / s], [zero, g / s]])
            if basis.shape[1]:
                self.blocks.append((k, basis))
        self.size_w = sum(b.shape[1] for _, b in self.blocks)
        # the first call stays at the top level, where every candidate grid starts
        self.time_calls = list(range(1, n)) if times else []  # (check_fit_options: "all")
        self.size = self.size_w + len(self.time_calls)
        self.penalty = np.ones(self.size)  # the ridge's factor per parameter
        self.penalty[self.size_w :] = TIME_RIDGE

    def shifts(self, theta: np.ndarray) -> np.ndarray | None:
        """The shifts of the model's times (timesteps; None: no time tuned)."""
        if not self.time_calls:
            return None
        out = np.zeros(self.shape[0])
        out[self.time_calls] = theta[self.size_w :]
        return out

    def weights(self, theta: np.ndarray) -> np.ndarray:
        """The x̂_0 corrections δ of eq. (1) (calls, L + 1)."""
        return self._rows(theta)[0]

    def sample_weights(self, theta: np.ndarray) -> np.ndarray | None:
        """The sample weights v of eq. (4) (calls, L + 1; None: not tuned)."""
        return self._rows(theta)[1] if self.samples else None

    def _rows(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, v = np.zeros(self.shape), np.zeros(self.shape)
        i = 0
        for k, basis in self.blocks:
            f = basis.shape[1]
            rows = basis @ theta[i : i + f]
            m = len(rows) // 2 if self.samples else len(rows)
            w[k, :m] = rows[:m]
            v[k, : len(rows) - m] = rows[m:]
            i += f
        return w, v


MAX_ITERATIONS = 100  # Gauss-Newton iterations (2 by default; 6 measured no better)
MAX_RIDGES = 32  # entries of a ridge path (3 by default)


def check_fit_options(batch: int | None = None, **options: Any) -> None:
    """Refuses, before any model call, an option :func:`fit_coefficients` does not take or
    a value it cannot use (a TypeError or ValueError naming it)."""
    import inspect

    known = [
        p.name
        for p in inspect.signature(fit_coefficients).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"unknown tuning option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"the fit takes {', '.join(known)}"
        )
    bounds = {"history": (1, None), "moments": (0, None), "final_moments": (0, None),
              "iterations": (0, MAX_ITERATIONS)}  # fmt: skip
    for name, (low, high) in bounds.items():
        value = options.get(name, low)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | np.integer)
            or value < low
            or (high is not None and value > high)
        ):
            where = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"{name} must be an integer {where}, got {value!r}")
    if options.get("calls", "all") not in ("all", "final"):
        raise ValueError(f"calls must be 'all' or 'final', got {options['calls']!r}")
    for flag in ("times", "samples"):
        if not isinstance(options.get(flag, False), bool):
            raise TypeError(f"{flag} must be True or False, got {options[flag]!r}")
    if options.get("times", False) and options.get("calls", "all") != "all":
        raise ValueError("times=True tunes every call's time: it needs calls='all'")
    if options.get("select", "loo") not in ("loo", "split"):
        raise ValueError(f"select must be 'loo' or 'split', got {options['select']!r}")
    holdout = options.get("holdout", 0.25)
    if (
        isinstance(holdout, bool)
        or not isinstance(holdout, int | float | np.floating)
        or not (0 < holdout < 1)
    ):
        raise ValueError(f"holdout must be a number in (0, 1), got {holdout!r}")
    fitted = None if batch is None else batch - max(1, round(holdout * batch))
    if options.get("select", "loo") == "split" and fitted is not None and fitted < 2:
        raise ValueError(
            f"select='split' with holdout={holdout} leaves {fitted} of the {batch} "
            "calibration samples to fit (2 or more needed): a smaller holdout or a larger batch"
        )
    seed = options.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    ridges = options.get("ridges", RIDGES)
    if isinstance(ridges, str) or not isinstance(ridges, Sequence | np.ndarray):
        raise TypeError(f"ridges must be a sequence of numbers, got {type(ridges).__name__}")
    values = list(ridges)
    if not 1 <= len(values) <= MAX_RIDGES or not all(
        not isinstance(r, bool)
        and isinstance(r, int | float | np.integer | np.floating)
        and math.isfinite(r)
        and r >= 0
        for r in values
    ):
        raise ValueError(
            f"ridges must be 1 to {MAX_RIDGES} finite numbers >= 0 (the ridge path), got {ridges!r}"
        )


def fit_coefficients(
    model: Model,
    scheduler: Scheduler,
    num_steps: int,
    calibration_noise: Array,
    reference: np.ndarray,
    grid: dict | None = None,
    *,
    history: int = 4,
    moments: int = 1,
    final_moments: int = 1,
    calls: str = "all",
    ridges: Sequence[float] = RIDGES,
    iterations: int = 2,
    holdout: float = 0.25,
    seed: int = 0,
    select: str = "loo",
    times: bool = False,
    samples: bool = False,
) -> CoefficientResult:
    """The tuned table (:class:`~diffsched.Tuned`) of ``scheduler`` on ``grid`` (``init``
    options; None: its own) whose final samples from ``calibration_noise`` come closest to
    ``reference`` (the ODE solution from the same noise), by the fit of the module
    docstring. ``calls="final"`` tunes the last call's combination only; ``times=True``
    (with ``calls="all"``) the model's time at every call but the first as well (eq. (3)
    of :mod:`diffsched.methods.tuned`); ``samples=True`` the weights of the earlier
    samples too (eq. (4) there)."""
    t0 = time.perf_counter()
    grid = dict(grid or {})
    shape = tuple(getattr(calibration_noise, "shape", ()))
    check_fit_options(shape[0] if shape else None, history=history, moments=moments,
                      final_moments=final_moments, calls=calls, ridges=ridges,
                      iterations=iterations, holdout=holdout, seed=seed, select=select,
                      times=times, samples=samples)  # fmt: skip
    loop = _Loop(model, scheduler, num_steps, grid, calibration_noise)
    if times and loop.span is None:
        raise ValueError(
            f"times=True needs a base whose timesteps index its training levels (a discrete "
            f"or flow-matching table); {type(scheduler).__name__}'s do not"
        )
    levels = loop.levels if samples else None
    if samples and (levels is None or not all(np.all(np.isfinite(v)) for v in levels)
                    or not np.all(levels[1] > 0)):  # fmt: skip
        raise ValueError(
            f"samples=True needs the level of each call's sample; {type(scheduler).__name__}'s "
            f"prediction type {getattr(scheduler, 'prediction_type', None)!r} does not give it"
        )
    params = _Params(loop.lams, history, moments, final_moments, calls, times, levels)
    noise = to_numpy64(calibration_noise)
    ref = np.asarray(reference, dtype=np.float64)
    batch = noise.shape[0]
    if batch < 4:
        raise ValueError(f"coefficient tuning needs a calibration batch of 4 or more, got {batch}")
    order = np.random.default_rng(seed).permutation(batch)
    n_held = max(1, round(holdout * batch))
    split = np.sort(order[n_held:]), np.sort(order[:n_held])  # (fit, held out)
    zero = np.zeros(params.size)
    start, untuned = _score(loop, params, loop.start(noise), ref, zero, outputs=True)
    stress = _Stress(loop, noise, untuned)  # the base's run is shared by every fit judged
    if (
        params.size == 0 or start.error < RESOLUTION
    ):  # nothing to fit above the reference's accuracy
        return CoefficientResult(_tuned(scheduler, num_steps, grid, None), start.error,
                                 start.error, {}, math.inf, loop.calls,
                                 time.perf_counter() - t0)  # fmt: skip
    path = sorted(ridges, reverse=True)

    def fitted(params: _Params, iterations: int) -> CoefficientResult:
        if select == "loo":
            return _fit_loo(loop, params, noise, ref, start, scheduler, num_steps, grid, path,
                            iterations, t0, stress)  # fmt: skip
        return _fit_split(loop, params, noise, ref, start, scheduler, num_steps, grid, path,
                          iterations, t0, stress, split)  # fmt: skip

    result = fitted(params, iterations)
    if result.ridge == math.inf and samples:  # refused: the table samples=False fits
        result = fitted(_Params(loop.lams, history, moments, final_moments, calls, times),
                        iterations)  # fmt: skip
    if result.ridge == math.inf and calls == "all":  # the last call alone (linear)
        final = _Params(loop.lams, history, moments, final_moments, "final")
        if final.size:
            result = fitted(final, 1)
    return result


def _fit_split(loop: _Loop, params: _Params, noise: np.ndarray, ref: np.ndarray, start: Score,
               scheduler: Scheduler, num_steps: int, grid: dict, path: Sequence[float],
               iterations: int, t0: float, stress: _Stress,
               split: tuple[np.ndarray, np.ndarray]) -> CoefficientResult:  # fmt: skip
    """The fit of the module docstring with ``select="split"``: along ``path`` (μ/s, large
    to small, each fit starting from the one before) a fit on the ``split[0]`` rows of the
    batch, scored on the ``split[1]`` rows; the best, where it is ``MIN_GAIN`` below the
    base there, refitted on the whole batch and kept where it beats the base
    (:meth:`diffsched.tuning.Score.beats`) and does not extrapolate (:class:`_Stress`)."""
    fit, held = split
    zero = np.zeros(params.size)

    def held_error(theta: np.ndarray) -> float:
        out, _ = loop.run(loop.start(noise[held]), params.weights(theta),
                          shifts=params.shifts(theta), v=params.sample_weights(theta))  # fmt: skip
        return Score.of(out, ref[held]).error

    held_errors = {math.inf: held_error(zero)}
    theta = zero
    s = None
    thetas = {}
    for ridge in path:
        theta, s = _levenberg_marquardt(loop, params, noise, ref, fit, theta, ridge, s,
                                        iterations)  # fmt: skip
        thetas[ridge] = theta
        held_errors[ridge] = held_error(theta)
    best = min(thetas, key=held_errors.get)
    table: tuple = (None, None, None)
    ridge, err = math.inf, start.error
    if held_errors[best] < held_errors[math.inf] * (1 - MIN_GAIN):  # the base, unless beaten
        theta, _ = _levenberg_marquardt(loop, params, noise, ref, np.arange(noise.shape[0]),
                                        thetas[best], best, s, iterations)  # fmt: skip
        scored, out = _score(loop, params, loop.start(noise), ref, theta, outputs=True)
        if scored.beats(start) and not stress.extrapolates(  # not a few samples' fall, nor
            params.weights(theta), params.shifts(theta), out, params.sample_weights(theta)
        ):  # a correction acting where it was not fitted
            ridge, err = best, scored.error
            table = (params.weights(theta), loop.times_of(params.shifts(theta)),
                     params.sample_weights(theta))  # fmt: skip
    return CoefficientResult(
        scheduler=_tuned(scheduler, num_steps, grid, *table),
        start_error=start.error,
        error=err,
        held_errors=held_errors,
        ridge=ridge,
        model_calls=loop.calls,
        seconds=time.perf_counter() - t0,
    )


TIME_EPS = 1e-2  # timesteps: a time's finite difference (a float32 t of 1000 resolves 6e-5)


def _jacobian(loop: _Loop, params: _Params, x0: np.ndarray, target: np.ndarray, norm: float,
              theta: np.ndarray,
              eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(r, J) at θ: the per-sample residuals (B, D) of the final samples against ``target``
    (divided by ``norm``) and their finite-difference Jacobian (B, D, P), each column from
    the run's prefix (module docstring, step 3)."""
    w, shifts, v = params.weights(theta), params.shifts(theta), params.sample_weights(theta)
    out, hist = loop.run(x0, w, shifts=shifts, v=v)
    b = x0.shape[0]
    r = ((out - target) / norm).reshape(b, -1)
    cols = []
    xs, _, ds = hist
    for k, basis in params.blocks:
        if k == loop.n - 1:  # the final sample is linear in the last call's weights
            cols.extend(_final_columns(loop, basis, ds, xs, b, norm, params.samples))
            continue
        for f in range(basis.shape[1]):
            dx = _combination(basis[:, f], ds, xs, k, params.samples)
            pert, _ = loop.run(xs[k + 1] + eps * dx, w, first=k + 1, hist=hist, shifts=shifts,
                               v=v)  # fmt: skip
            cols.append(((pert - out) / eps / norm).reshape(b, -1))
    for k in params.time_calls:  # the call itself again, at a moved time (into the range)
        lo, hi = loop.span
        t = loop.model_time(k, shifts[k])
        step = TIME_EPS if t + TIME_EPS <= hi or t - TIME_EPS < lo else -TIME_EPS
        moved = shifts.copy()
        moved[k] += step
        pert, _ = loop.run(xs[k], w, first=k, hist=hist, shifts=moved, v=v)
        cols.append(((pert - out) / step / norm).reshape(b, -1))
    return r, np.stack(cols, axis=-1)


def _combination(column: np.ndarray, ds: list[np.ndarray], xs: list[np.ndarray], k: int,
                 samples: bool) -> np.ndarray:  # fmt: skip
    """Call k's correction of one basis ``column``: its x̂_0 weights on ``ds`` (eq. (1)),
    then with ``samples`` its second half, the sample weights, on ``xs`` (eq. (4))."""
    m = len(column) // 2 if samples else len(column)
    out = sum(column[j] * ds[k - j] for j in range(m))
    return out + sum(column[m + j] * xs[k - j] for j in range(len(column) - m))


def _final_columns(loop: _Loop, basis: np.ndarray, ds: list[np.ndarray],
                   xs: list[np.ndarray], b: int, norm: float,
                   samples: bool = False) -> list[np.ndarray]:  # fmt: skip
    """The final samples' derivatives (B, D each) in the last call's parameters: the
    last call's x̂_0's (and with ``samples`` its samples) combined by each column of its
    null-space ``basis``."""
    k = loop.n - 1
    return [
        (_combination(basis[:, f], ds, xs, k, samples) / loop.scale[loop.n] / norm).reshape(b, -1)
        for f in range(basis.shape[1])
    ]


def leave_one_out(jac: np.ndarray, resid: np.ndarray, theta: np.ndarray,
                  mu: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Ridge regression on the linearisation r(θ') = r + J (θ' - θ) at θ, penalty
    μ||θ'||²: (its solution θ', each sample's squared residual had it been left out of
    the fit). ``jac`` (B, D, P) and ``resid`` (B, D) at ``theta``. With y = Jθ - r the fit
    solves (JᵀJ + μI) θ' = Jᵀy, and the residual e_i = J_i θ' - y_i of sample i (a block
    of D rows) left out is (I - J_i A⁻¹ J_iᵀ)⁻¹ e_i = e_i + J_i (A - J_iᵀ J_i)⁻¹ J_iᵀ e_i,
    A = JᵀJ + μI (Woodbury): the block form of ridge regression's leave-one-out identity
    (Golub, Heath and Wahba 1979, eq. 2.3; Allen's PRESS), P x P solves and no refit."""
    b, d, p = jac.shape
    flat = jac.reshape(b * d, p)
    y = flat @ theta - resid.ravel()
    a = flat.T @ flat + np.diag(np.broadcast_to(np.asarray(mu, np.float64), (p,)))
    new = np.linalg.solve(a, flat.T @ y)
    e = (flat @ new - y).reshape(b, d)
    own = np.einsum("bdp,bdq->bpq", jac, jac)  # J_iᵀ J_i
    jte = np.einsum("bdp,bd->bp", jac, e)
    z = np.linalg.solve(a[None] - own, jte[..., None])[..., 0]
    loo = e + np.einsum("bdp,bp->bd", jac, z)
    return new, np.sum(loo**2, axis=1)


FINAL_RIDGES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)  # μ / s of the scorer's final fit


class FinalScorer:
    """A grid's error on the calibration batch after its last call's x̂_0 combination is
    fitted, for the grid search of ``tune="both"`` (:func:`diffsched.tuning.search_coefficients`).

    The final sample is linear in the last call's weights δ_{N-1,j} (eq. (1)), so their
    ridge least-squares fit costs no model call: each grid is scored by what the fit will
    at least make of it, not by its base table alone. The ridge is chosen per grid from
    ``FINAL_RIDGES`` (and none: the base's last step) by the samples' leave-one-out errors
    (:func:`leave_one_out`, exact here: the problem is linear), which are the score, so the
    search compares out-of-sample numbers. On the exact mixture (UniPC, 256 calibration
    samples, three draws, 2048 held-out noises) the tuned table's error went from 0.0320 to
    0.021 at 10 calls and from 0.0505 to 0.044 at 5, at the same cost."""

    def __init__(self, model: Model, noise: Array, reference: np.ndarray, history: int = 4,
                 final_moments: int = 1) -> None:  # fmt: skip
        self.model = model
        self.noise = noise
        self.noise64 = to_numpy64(noise)
        self.ref = np.asarray(reference, dtype=np.float64)
        self.history = history
        self.final_moments = final_moments

    def __call__(self, scheduler: Scheduler, num_steps: int, grid: dict) -> Score:
        from .tuning import Score

        loop = _Loop(self.model, scheduler, num_steps, grid, self.noise)
        b = self.noise64.shape[0]
        out, (xs, _, ds) = loop.run(loop.start(self.noise64), np.zeros((loop.n, 1)))
        k = loop.n - 1
        m = min(self.history, k) + 1
        basis = null_basis(loop.lams[k - np.arange(m)], self.final_moments)
        norm = float(np.linalg.norm(self.ref)) or 1.0
        r = ((out - self.ref) / norm).reshape(b, -1)
        per = np.sum(r**2, axis=1)
        if basis.shape[1]:
            jac = np.stack(_final_columns(loop, basis, ds, xs, b, norm), axis=-1)
            scale = float(np.einsum("bdp,bdp->", jac, jac) / jac.shape[-1]) or 1.0
            zero = np.zeros(jac.shape[-1])
            for ridge in FINAL_RIDGES:
                _, loo = leave_one_out(jac, r, zero, ridge * scale)
                if loo.sum() < per.sum():
                    per = loo
        return Score(per * b, float(math.sqrt(per.sum())))


def _fit_loo(loop: _Loop, params: _Params, noise: np.ndarray, ref: np.ndarray, start: Score,
             scheduler: Scheduler, num_steps: int, grid: dict, path: Sequence[float],
             iterations: int, t0: float, stress: _Stress) -> CoefficientResult:  # fmt: skip
    """The fit of the module docstring on the whole batch, its ridge chosen by
    leave-one-out: along ``path`` (μ/s, large to small, each fit starting from the one
    before) the fitted θ's leave-one-out error (:func:`leave_one_out`, at the fit's last
    Jacobian) scores it, and the least wins; it is kept only where its leave-one-out
    error is ``MIN_GAIN`` below the base's, its errors on the whole batch beat the base's
    (:meth:`diffsched.tuning.Score.beats`) and it does not extrapolate (:class:`_Stress`;
    where it does, the fit of the next least leave-one-out error is judged the same way)."""
    norm = float(np.linalg.norm(ref))
    x0 = loop.start(noise)
    b = noise.shape[0]
    theta = np.zeros(params.size)
    s = None
    held_errors = {math.inf: start.error}
    fits = []
    for ridge in path:
        theta, s, last = _gauss_newton(loop, params, x0, ref, norm, theta, ridge, s,
                                       iterations)  # fmt: skip
        if last is None:
            continue
        _, per = leave_one_out(*last, ridge * s * params.penalty)  # the last linearisation
        held = Score(per * b, float(math.sqrt(per.sum())))
        held_errors[ridge] = held.error
        fits.append((ridge, theta, held))
    weights, times, samples, ridge, err = None, None, None, math.inf, start.error
    # the least leave-one-out error first; the next only where a better one extrapolates
    for best in sorted(fits, key=lambda f: f[2].error):
        if not best[2].error < start.error * (1 - MIN_GAIN):
            break
        fitted, out = _score(loop, params, x0, ref, best[1], outputs=True)
        if not fitted.beats(start):  # a fall carried by a few samples: the base
            break
        shifts = params.shifts(best[1])
        if stress.extrapolates(params.weights(best[1]), shifts, out,
                               params.sample_weights(best[1])):  # fmt: skip
            continue
        ridge, err = best[0], fitted.error
        weights, times = params.weights(best[1]), loop.times_of(shifts)
        samples = params.sample_weights(best[1])
        break
    return CoefficientResult(
        scheduler=_tuned(scheduler, num_steps, grid, weights, times, samples),
        start_error=start.error,
        error=err,
        held_errors=held_errors,
        ridge=ridge,
        model_calls=loop.calls,
        seconds=time.perf_counter() - t0,
    )


def _gauss_newton(loop: _Loop, params: _Params, x0: np.ndarray, target: np.ndarray,
                  norm: float, theta: np.ndarray, ridge: float,
                  s: float | None, iterations: int) -> tuple:  # fmt: skip
    """``iterations`` damped Gauss-Newton steps on ||r||² + μ||θ||², μ = ridge · s:
    (θ, s, the last linearisation (J (B, D, P), r (B, D), θ there) or None)."""
    last = None
    damping = 1e-3
    for _ in range(iterations):
        r, jac = _jacobian(loop, params, x0, target, norm, theta)
        last = (jac, r, theta)
        flat = jac.reshape(-1, jac.shape[-1])
        jtj = flat.T @ flat
        if s is None:
            s = _penalty_scale(jtj)
        mu = ridge * s * params.penalty  # per parameter
        g = flat.T @ r.ravel() + mu * theta
        f0 = float(np.sum(r**2) + theta @ (mu * theta))
        for _ in range(6):  # damping up until the objective falls
            step = np.linalg.solve(
                jtj + np.diag(mu) + damping * np.diag(np.diag(jtj) + np.mean(s) * 1e-9), -g
            )
            trial = theta + step
            out, _ = loop.run(x0, params.weights(trial), shifts=params.shifts(trial),
                              v=params.sample_weights(trial))  # fmt: skip
            rt = ((out - target) / norm).reshape(r.shape)
            if float(np.sum(rt**2) + trial @ (mu * trial)) < f0:
                theta, damping = trial, damping / 3
                break
            damping *= 10
        else:
            break
    return theta, s, last


PENALTY = "diagonal"


def _penalty_scale(jtj: np.ndarray) -> np.ndarray:
    """The ridge's scale per parameter at the base: each parameter's own JᵀJ diagonal
    (``PENALTY="diagonal"``: the prior toward the base is the same for a weight of the
    last call, whose column is small, as for one of the first, whose change reaches every
    later call), or their mean (``"trace"``)."""
    d = np.diag(jtj).astype(np.float64)
    mean = float(np.mean(d)) or 1.0
    if PENALTY == "trace":
        return np.full_like(d, mean)
    return np.maximum(d, 1e-12 * mean)


def _score(loop: _Loop, params: _Params, x0: np.ndarray, target: np.ndarray,
           theta: np.ndarray, outputs: bool = False) -> Any:  # fmt: skip
    """The :class:`Score` of θ's table on the batch (with its final samples: ``outputs``)."""
    out, _ = loop.run(x0, params.weights(theta), shifts=params.shifts(theta),
                      v=params.sample_weights(theta))  # fmt: skip
    return (Score.of(out, target), out) if outputs else Score.of(out, target)


STRESS_FACTOR = 4.0  # a correction this many times its largest on the calibration: refused


class _Stress:
    """The guard against a fit that extrapolates: a tuned table is a correction of the
    base's error, fitted on the calibration batch; where on other noise it moves two
    samples or more ``STRESS_FACTOR`` times farther from the base's result than it moved
    any calibration sample, it acts where it was never fitted, and is refused. The other
    noise is the calibration noise negated (the same law, other trajectories: no new draw,
    no reference solve; N model calls, N more per fit checked). On the 64-D mixture
    ``gmm64-far`` at 10 calls (UniPC's own grid, ``tune="coefficients"``, 64 samples) a fit
    whose leave-one-out error was 0.016 (the base's 0.132) gave 0.43 on 8192 held-out
    noises: its last calls' extrapolation of x̂_0 sent the 3% of samples still between two
    components at σ = 0.37 (the grid's last level) 15-22 away from the exact solution, where
    the base's worst was 5.6; on the negated noise its two largest moves were 21 times the
    largest on the calibration noise. Fits that did well on held-out noise moved one sample
    12 times as far and the next 1.3 times (a flip), or their two largest 6 and 3 times (the
    thresholds were set on these cases: ``benchmarks/tune_coefficients.py``, 64-D mixtures,
    8192 held-out noises)."""

    def __init__(self, loop: _Loop, noise: np.ndarray, untuned: np.ndarray) -> None:
        """``untuned``: the base's final samples from the calibration ``noise``."""
        self.loop, self.noise, self.untuned = loop, noise, untuned
        self.other: np.ndarray | None = None  # the base's from the negated noise, when asked

    def extrapolates(self, weights: np.ndarray, shifts: np.ndarray | None,
                     calibrated: np.ndarray,
                     samples: np.ndarray | None = None) -> bool:  # fmt: skip
        """Whether the table of these corrections (``_Params.weights``), model times'
        shifts (``_Params.shifts``) and sample weights (``_Params.sample_weights``), whose
        final samples from the calibration noise are ``calibrated``, extrapolates."""
        start = self.loop.start(-self.noise)
        if self.other is None:
            self.other, _ = self.loop.run(start, np.zeros_like(weights))
        b = calibrated.shape[0]
        moved = np.sqrt(((calibrated - self.untuned).reshape(b, -1) ** 2).sum(axis=1))
        other, _ = self.loop.run(start, weights, shifts=shifts, v=samples)
        away = np.sqrt(((other - self.other).reshape(b, -1) ** 2).sum(axis=1))
        # two samples or more: one can be a flip (a sample near a boundary between modes
        # that one table sends to the other side), which any table makes at its own rate
        return bool(np.sort(away)[-2] > STRESS_FACTOR * moved.max())


def _levenberg_marquardt(
    loop: _Loop,
    params: _Params,
    noise: np.ndarray,
    ref: np.ndarray,
    rows: np.ndarray,
    theta: np.ndarray,
    ridge: float,
    s: float | None,
    iterations: int,
) -> tuple[np.ndarray, float]:
    """``iterations`` damped Gauss-Newton steps on the samples ``rows`` (``select="split"``):
    (θ, s)."""
    theta, s, _ = _gauss_newton(loop, params, loop.start(noise[rows]), ref[rows],
                                float(np.linalg.norm(ref[rows])), theta, ridge, s,
                                iterations)  # fmt: skip
    return theta, s


def _tuned(scheduler: Scheduler, num_steps: int, grid: dict, weights: np.ndarray | None,
           times: np.ndarray | None = None,
           samples: np.ndarray | None = None) -> Tuned:  # fmt: skip
    kw: dict[str, Any] = {"base": scheduler, "tuned_steps": num_steps}
    if "sigmas" in grid:
        kw["grid_sigmas"] = [float(v) for v in grid["sigmas"]]
    if "timesteps" in grid:
        kw["grid_timesteps"] = [float(v) for v in grid["timesteps"]]
    if "mu" in grid:
        kw["grid_mu"] = float(grid["mu"])
    if weights is not None and np.any(weights != 0):
        kw["weights"] = np.asarray(weights, np.float64).ravel().tolist()
    if times is not None:
        kw["model_timesteps"] = [float(t) for t in times]
    if samples is not None and np.any(samples != 0):
        kw["sample_weights"] = np.asarray(samples, np.float64).ravel().tolist()
    return Tuned(**kw)


# -- the file -------------------------------------------------------------------------------

FORMAT = "diffsched-tuned"
VERSION = 1  # the file layout: a reader refuses another (it may mean other fields)


def save_tuned(path: str | os.PathLike, tuned: Tuned, **about: Any) -> Path:
    """Writes a tuned table as a small JSON file: its config (base config, steps, grid,
    weights) and ``about`` (what it was tuned on: model, calibration size, ...; JSON
    values). Atomic: written to a temporary file beside it, then renamed
    (an existing file keeps its permissions)."""
    from .core.files import write_atomic

    if not isinstance(tuned, Tuned):
        raise TypeError(f"save_tuned takes a Tuned scheduler, got {type(tuned).__name__}")
    data = {"format": FORMAT, "version": VERSION, "config": tuned.to_config(), "about": about}
    text = json.dumps(data, indent=1) + "\n"
    return write_atomic(path, text)


def model_differences(ours: Scheduler, theirs: Scheduler) -> list[str]:
    """What makes two schedulers' configs another model's (empty if none): the training
    schedule (ᾱ), the prediction type, the number of training steps, flow levels and
    their shift. The method, its order and its grid may differ: a tuned table brings its
    own (:func:`diffsched.tune` may pick another base method for the same model)."""
    from .grids import flow_shift, is_flow

    out = []
    for key in ("prediction_type", "num_train_steps"):
        a, b = getattr(ours, key, None), getattr(theirs, key, None)
        if a != b:
            out.append(f"{key}: {a!r} (tuned) vs {b!r}")
    if is_flow(ours) != is_flow(theirs):
        out.append(f"flow levels: {is_flow(ours)} (tuned) vs {is_flow(theirs)}")
    elif is_flow(ours):
        a, b = flow_shift(ours), flow_shift(theirs)
        if not math.isclose(a, b, rel_tol=1e-12):
            out.append(f"shift: {a!r} (tuned) vs {b!r}")
    else:
        a, b = (np.asarray(getattr(s, "alphas_cumprod", ()), np.float64) for s in (ours, theirs))
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-9, atol=0):
            config_a, config_b = ours.to_config(), theirs.to_config()
            keys = [k for k in ("beta_schedule", "beta_start", "beta_end", "trained_betas",
                                "rescale_betas_zero_snr")
                    if config_a.get(k) != config_b.get(k)]  # fmt: skip
            shown = ", ".join(f"{k}: {config_a.get(k)!r} (tuned) vs {config_b.get(k)!r}"
                              for k in keys)  # fmt: skip
            out.append(shown or "the training schedule (alphas_cumprod)")
    return out


def as_scheduler(base: Any) -> BaseScheduler:
    """Our scheduler of ``base``: one of ours (a :class:`~diffsched.Tuned` table: its base;
    in diffusers' interface: the one it wraps), a diffusers scheduler, a config dict or
    its JSON text, or a ``scheduler_config.json`` file or model folder."""
    from .diffusers import DiffusersScheduler
    from .interop.config import from_config
    from .methods.tuned import base_json

    if isinstance(base, DiffusersScheduler):
        base = base.wrapped
    if isinstance(base, Tuned):
        return base.base_scheduler
    if isinstance(base, BaseScheduler):
        return base
    if isinstance(base, os.PathLike) or (isinstance(base, str) and base.lstrip()[:1] != "{"):
        return from_config(base)  # a file or folder (its own errors name it)
    config = getattr(base, "config", None)
    if config is not None and not isinstance(base, dict | str):  # a diffusers scheduler
        return from_config({**dict(config), "_class_name": type(base).__name__})
    return Tuned(base=base_json(base)).base_scheduler


def load_tuned(path: str | os.PathLike, base: Any = None, num_steps: int | None = None) -> Tuned:
    """The :class:`~diffsched.Tuned` scheduler saved by :func:`save_tuned`. Given ``base``
    (the scheduler it is meant to replace: ours, diffusers', a config, its file or model
    folder; :func:`as_scheduler`) or ``num_steps``, a file tuned for
    another model (:func:`model_differences`: training schedule, prediction type, flow
    shift) or another number of steps is refused with a ValueError that names what
    differs."""
    from .core.config import load_json
    from .interop.config import from_config

    # a regular file of sane size (a FIFO or /dev/zero would block or never end)
    data = load_json(path, "tuned table")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a tuned table (no 'format': {FORMAT!r})")
    if data.get("version") != VERSION:
        raise ValueError(
            f"{path}: a tuned table of version {data.get('version')!r}; this diffsched reads "
            f"version {VERSION}"
        )
    if not isinstance(data.get("config"), dict):
        raise ValueError(
            f"{path}: a tuned table's 'config' must be a Tuned config dict, got: "
            f"{type(data.get('config')).__name__}"
        )
    tuned = from_config(data["config"])
    if not isinstance(tuned, Tuned):
        raise ValueError(f"{path} holds a {type(tuned).__name__} config, not a Tuned one")
    if num_steps is not None and (
        isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer)
    ):
        raise TypeError(f"load_tuned's num_steps expects an integer, got: {num_steps!r}")
    if num_steps is not None and num_steps != tuned.tuned_steps:
        raise ValueError(
            f"{path} was tuned for num_steps={tuned.tuned_steps}, not num_steps={num_steps}"
        )
    if base is not None:
        differ = model_differences(tuned.base_scheduler, as_scheduler(base))
        if differ:
            raise ValueError(
                f"{path} was tuned for another model's schedule; differing: {', '.join(differ)}"
            )
    return tuned
