"""Tuned grids: the N-step grid that brings a scheduler's final samples closest to the
probability-flow ODE solution of the user's own model.

A model call is the whole cost of sampling, and the grid decides how much accuracy each
call buys (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion
Sampling", GITS; Sabour et al. 2024, Align Your Steps). :func:`tune` searches the grid for
one scheduler, one number of steps and one model, in three stages:

1. **Reference.** The calibration noise is carried down the probability-flow ODE by a
   tight solve with the same model: variable-step iPNDM (fourth order,
   :class:`~diffsched.VariableIPNDM`) on ``candidates`` levels even in log σ from the
   largest trained level to the smallest, each interval cut into ``substeps``, then on to
   the scheduler's final level. Its samples at the candidate levels and at the end are
   the reference trajectory.
2. **Starting grids.** The scheduler's own N-step grid (its first call moved to the
   largest trained level, where the tuner always starts), the named grids of
   :mod:`diffsched.grids` (EDM's ρ = 7, logSNR-uniform, Align Your Steps), and GITS'
   grid: by dynamic programming over the candidate levels, the path of exactly N steps
   that minimizes the summed local error of one first-order step (DDIM / Euler) from the
   reference sample at each level to the reference sample at the next, measured at the
   variance-preserving scale x / sqrt(1 + σ²) (the scale at which an error at level σ
   reaches the final sample). The local costs reuse the reference solve's model calls.
3. **Refinement.** Coordinate search on the levels of the best start against the
   end-to-end error on the calibration set (the distance of the scheduler's own final
   samples to the reference), in log σ, or in integer timesteps for methods that take
   ``timesteps=``. A move is kept only where it lowers the error, so the result is never
   worse than any start on the calibration set. The scheduler's own grid is left (for a
   start, or for the refined grid) only where the fall in error is two standard errors of
   the paired per-sample differences or more: a fall carried by a few samples does not
   carry over to other noise (an empirical model's samples flip between training images;
   on digits with 64 calibration samples the refined grid landed every calibration sample
   on its image and did worse than the own grid on held-out noise).
4. **Confirmation.** A result whose fall from the untuned scheduler is below
   :data:`CONFIRMED` (4) standard errors on the calibration batch, within reach of the
   largest of the few hundred grids the search compared, is run on the negated
   calibration noise as well (its reference solved for it) and kept unless it does worse
   there by :data:`REFUTED` (1) standard error or more (:func:`_confirmation`;
   ``tune="coefficients"`` / ``"both"`` the same, a refuted table falling back to its grid
   with the base's own weights, then to the untuned one).

Why this search: the local costs of (2) see the curvature of the model's trajectories and
give a good global shape in a few hundred model calls, but they score a first-order step,
while the scheduler's multistep or higher-order steps, and its final step, err
differently; (3) corrects for that with the true objective. The objective is a black box
in any backend (no gradients through the model are needed) of N - 1 free levels, where a
derivative-free coordinate search converges in a few hundred loops.

The grid is returned as the keyword arguments of ``init``: ``sigmas=`` (N + 1 levels, the
last one final) for methods that take custom σ's, else ``timesteps=`` (N integers).

``tune="coefficients"`` / ``"both"`` tune the table's x̂_0 history weights as well
(:mod:`diffsched.tuning_coefficients`) and return a :class:`~diffsched.Tuned` scheduler;
its base is the scheduler, or another method for the same model (:func:`candidate_bases`;
:func:`candidate_flow_bases` for flows) whose starting grids beat the scheduler's clearly
(:meth:`Score.beats`) on the calibration batch, at N model calls per start. There every
grid of (2) and (3) is scored after its last call's x̂_0 combination, fitted in closed form
at no model call (:class:`~diffsched.tuning_coefficients.FinalScorer`): the grid is chosen
for what the fitted table will make of it.
Rectified-flow schedulers that take custom ``sigmas=`` (a static shift, or a dynamic one
at a given ``mu``) are searched in logit σ against a model-only Heun reference
(:func:`flow_reference`).
"""

from __future__ import annotations

import inspect
import itertools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .core import ops, predictions
from .core.ops import check_num_steps, to_numpy64
from .core.scheduler import Array, Scheduler
from .exact.threads import small_matrices
from .grids import NAMED_GRIDS, Grid, check_tunable, flow_shift, is_flow, named_sigmas
from .methods.tuned import Tuned
from .schedules import sigmas as sigma_schedules
from .schedules.shifts import checked_mu

Model = Callable[[Array, Array], Array]
Run = Callable[[Array], np.ndarray]  # a batch of noise -> its final samples

MAX_CANDIDATES = 2000  # reference levels (100 by default): each holds the batch's states
MAX_SUBSTEPS = 100  # reference steps per candidate interval (4 by default)
MAX_EVALUATIONS = 100_000  # end-to-end runs of the refinement (100-300 by default)
RESOLUTION = 1e-6  # relative error of the reference solve (measured: 1e-6 to 2e-6)
MIN_GAIN = 1e-3  # the least relative fall in error that the refinement counts as one
SIGNIFICANCE = 2.0  # standard errors of the paired per-sample fall to leave the own grid
# standard errors of the paired fall from the untuned base above which a result needs no
# confirmation on other noise: the refinement compares up to a few hundred grids, and the
# largest of 300 independent null z-scores is about 3 (:func:`_confirmation`)
CONFIRMED = 4.0
# standard errors of the paired rise on the negated calibration noise that refute such a
# result (:func:`_confirmation`)
REFUTED = 1.0


class TuneResult(NamedTuple):
    """What :func:`search` found, and what it cost."""

    init_options: dict[str, list]  # the tuned grid, as init's keyword arguments
    start_options: dict[str, list]  # the scheduler's own grid, the same way
    start_error: float  # the scheduler's own grid's error on the calibration set
    error: float  # the tuned grid's error on the calibration set
    model_calls: int  # model calls, each on the whole calibration batch
    seconds: float
    base: Scheduler | None = None  # the method the grid is for (None: the scheduler tuned)
    # the check on the negated calibration noise (:func:`_confirmation`), where the gain
    # needed one: the errors there, the significances and what was "kept" (None: own grid)
    confirmation: dict[str, Any] | None = None


def tune(
    model: Model,
    scheduler: Scheduler,
    num_steps: int,
    calibration_noise: Array,
    tune: str = "grid",
    **options: Any,
) -> Any:
    """The ``init`` keyword arguments (``sigmas=`` or ``timesteps=``) of the N-step grid
    that minimizes, for ``scheduler``, the distance of its final samples from
    ``calibration_noise`` to the model's probability-flow ODE solution from the same noise.

    ``model(sample, t)`` predicts in the scheduler's ``prediction_type`` (any backend: the
    noise's); every candidate grid starts at the model's largest trained noise level.
    ``options`` go to :func:`search` (``candidates``, ``substeps``, ``max_evaluations``).
    Use the result as ``scheduler.init(None, x, **grid)`` or ``ds.sample(..., **grid)``.

    The calibration batch decides how well the grid carries over to other noise: the error
    of a few-step loop comes mostly from the few samples whose paths pass between modes,
    and a grid fitted to a small batch learns those. On the exact models 256 samples gave
    grids that did 1.5-3.5x better on held-out noise than 64 at 10 steps; use as many as
    the model's cost allows (the tuner's cost is ~2000 loops' worth of model calls).

    ``tune`` chooses what is tuned: ``"grid"`` (the default: the result is ``init``'s
    keyword arguments, as above), ``"coefficients"`` (the x̂_0 history weights of the
    scheduler's table on its own grid, its first call moved to the top) or ``"both"`` (the
    grid, then the weights on it). The last two return a :class:`~diffsched.Tuned`
    scheduler, run as ``tuned.init(num_steps, x)`` or ``ds.sample(model, tuned, noise,
    num_steps)`` and saved by :func:`diffsched.save_tuned`; ``options`` then also take
    :func:`diffsched.tuning_coefficients.fit_coefficients`' (``history``, ``moments``,
    ``final_moments``, ``calls``, ``ridges``, ``iterations``, ``select``, ``holdout``,
    ``seed``; ``times=True`` tunes the time each call but the first passes the model too,
    eq. (3) of :mod:`diffsched.methods.tuned`; ``samples=True`` the weights of the earlier
    samples too, eq. (4) there) and ``bases``: by default (``"auto"``) the
    tuned table's base may be another method for the same model (UniPC or DPM-Solver++ of
    order 2 or 3, variable-step iPNDM) where its grids clearly do better on the
    calibration batch (:func:`search_coefficients`). A scheduler whose ``init`` takes no
    custom grid (DDIM, DEIS, LMS, PNDM, DPM2) cannot start at the top level the reference
    starts from: for it ``"grid"`` is refused, and ``"coefficients"`` / ``"both"`` tune one
    of its bases in its place (the result's ``base_scheduler`` says which).

    ``end="lowest"`` fits the final samples to the discrete limit (the ODE to the lowest
    trained level, then the jump to x̂_0 there: where a loop that calls a discrete-time model
    at its trained levels only converges) instead of the ODE's solution at σ = 0 (the
    default, ``"zero"``).

    A flow scheduler with ``use_dynamic_shifting=True`` takes ``mu=`` (the μ its ``init``
    takes, one resolution's shift): the grid is tuned for that μ, and the result carries
    it (``init_options["mu"]``, or the tuned table's ``grid_mu``).
    """
    if tune == "grid":
        check_grid_options(options)
        return search(model, scheduler, num_steps, calibration_noise, **options).init_options
    if tune not in ("coefficients", "both"):
        raise ValueError(f"tune must be 'grid', 'coefficients' or 'both', got {tune!r}")
    return search_coefficients(
        model, scheduler, num_steps, calibration_noise, grid=tune == "both", **options
    ).scheduler


def check_grid_options(options: dict) -> None:
    """Refuses, for ``tune="grid"``, an option that only the coefficients' fit takes."""
    import inspect

    from .tuning_coefficients import fit_coefficients

    grid = set(inspect.signature(search).parameters)
    table = {name for f in (search_coefficients, fit_coefficients)
             for name, p in inspect.signature(f).parameters.items()
             if p.kind is p.KEYWORD_ONLY}  # fmt: skip
    for_tables = sorted((set(options) - grid) & table)
    if for_tables:
        raise TypeError(
            f"{', '.join(for_tables)} tune{'s' if len(for_tables) == 1 else ''} a table's "
            "coefficients: it needs tune='coefficients' or 'both', not 'grid'"
        )


def search_coefficients(
    model: Model,
    scheduler: Scheduler,
    num_steps: int,
    calibration_noise: Array,
    *,
    grid: bool = True,
    candidates: int = 100,
    substeps: int = 4,
    max_evaluations: int = 100,
    tolerance: float = 2e-3,
    bases: Any = "auto",
    reference: Any = None,
    refine: int = 1,
    mu: float | None = None,
    grid_score: str = "final",
    end: str = "zero",
    **fit_options: Any,
):
    """:func:`tune` with ``tune="both"`` (``grid=True``) or ``"coefficients"``: the
    :class:`~diffsched.tuning_coefficients.CoefficientResult`, its ``model_calls`` the
    whole cost (reference, grid search and fit).

    ``bases``: the methods whose tables compete with ``scheduler``'s as the tuned table's
    base, for the same model: ``"auto"`` (:func:`candidate_bases`), a list of schedulers,
    or None (``scheduler`` alone). Their starting grids are scored on the calibration
    batch (N model calls each) and one leaves ``scheduler`` only where it
    :meth:`Score.beats` it; the grid search and the fit then tune that one. ``reference``:
    the :func:`reference_trajectory` (or flow reference) of this noise, if solved already
    (its calls are then not counted). ``grid_score``: ``"final"`` (the default) scores each
    grid and start after its last call's x̂_0 combination, fitted in closed form
    (:class:`~diffsched.tuning_coefficients.FinalScorer`: no model call), ``"plain"`` by the
    base table's own error. ``refine`` (with ``grid=True``): the number of bases
    whose grids are refined and whose tables are fitted, the first by its best start as
    above, the others the next bases by their best start's error (a quarter of
    ``max_evaluations`` each); the fitted table with the least error on the calibration
    split its fit did not see wins (another than the first only by 2% or more). On the
    exact mixture at 10 calls (256 samples, three draws) ``refine=2`` with
    ``ridges=(1e-4, 1e-5)`` lowered the held-out error from 0.0278 (the defaults) to
    0.0160, at 347 × N calls against 269 × N (5 calls: 0.0447 to 0.0446, 291 × N against
    245 × N; the network unchanged), but raised it on the digits model (64 samples: 5
    calls 0.1455 to 0.1491, 10 calls 0.0715 to 0.0731): a 16-sample split picks noisily."""
    from .tuning_coefficients import FinalScorer, check_fit_options, fit_coefficients

    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 1:
        raise ValueError(f"refine must be an integer >= 1, got {refine!r}")
    if grid_score not in ("final", "plain"):
        raise ValueError(f"grid_score must be 'final' or 'plain', got {grid_score!r}")
    _check_inputs(scheduler, calibration_noise, substeps=substeps, max_evaluations=max_evaluations,
                  tolerance=tolerance, least_batch=4)  # fmt: skip
    check_fit_options(int(calibration_noise.shape[0]), **fit_options)  # (its split: the batch)
    num_steps = check_num_steps(num_steps, maximum=MAX_CANDIDATES)  # a grid of candidate levels
    _check_candidates(candidates, num_steps)
    _check_end(end, scheduler)
    _mu_for_flow_only(scheduler, mu)
    t0 = time.perf_counter()
    others = _bases(scheduler, bases, num_steps)
    if not is_flow(scheduler):
        scheduler, others = stand_in(scheduler, num_steps, others)
    with small_matrices():
        counted = _CountingModel(model)
        g = FlowGrid.of(scheduler, num_steps, mu) if is_flow(scheduler) else Grid.of(
            scheduler, num_steps)  # fmt: skip
        own = g.init_options(g.start)
        solve = {"candidates": candidates, "substeps": substeps, "end": end, "mu": mu}
        if reference is not None:
            _check_reference(reference, scheduler, calibration_noise)
        ref = reference if reference is not None else solve_reference(
            counted, scheduler, num_steps, calibration_noise, **solve)  # fmt: skip
        init_options, base = own, scheduler
        scorer = None
        if grid_score == "final" and fit_options.get("calls", "all") in ("all", "final"):
            scorer = FinalScorer(counted, calibration_noise, ref.final,
                                 fit_options.get("history", 4),
                                 fit_options.get("final_moments", 1))  # fmt: skip
        if grid:
            founds = _search_bases(counted, scheduler, num_steps, calibration_noise,
                                   candidates=candidates, substeps=substeps,
                                   max_evaluations=max_evaluations, tolerance=tolerance,
                                   reference=ref, bases=others, refine=refine,
                                   mu=mu, scorer=scorer)  # fmt: skip
            result = None
            for found in founds:  # each base refined and fitted; the held-out split decides
                fitted = fit_coefficients(counted, found.base or scheduler, num_steps,
                                          calibration_noise, ref.final, found.init_options,
                                          **fit_options)  # fmt: skip
                if result is None or _held_error(fitted) < _held_error(result) * 0.98:
                    result = fitted
            result = _confirmed_table(result, counted, scheduler, num_steps, calibration_noise,
                                      ref.final, own, solve)  # fmt: skip
            return result._replace(model_calls=counted.calls, seconds=time.perf_counter() - t0)
        elif others:  # the method whose own grid clearly does best
            scored = {}
            for i, sched in enumerate((scheduler, *others)):
                try:
                    gg = FlowGrid.of(sched, num_steps, mu) if is_flow(sched) else Grid.of(
                        sched, num_steps)  # fmt: skip
                except (TypeError, ValueError):
                    continue
                opts = gg.init_options(gg.start)
                if scorer is not None:
                    scored[i] = (scorer(sched, num_steps, opts), sched, opts)
                else:
                    out = _run(counted, sched, calibration_noise, opts)
                    scored[i] = (Score.of(out, ref.final), sched, opts)
            pick = _pick_start({i: v[0] for i, v in scored.items()}, 0)
            _, base, init_options = scored[pick]
        result = fit_coefficients(counted, base, num_steps, calibration_noise, ref.final,
                                  init_options, **fit_options)  # fmt: skip
        result = _confirmed_table(result, counted, scheduler, num_steps, calibration_noise,
                                  ref.final, own, solve)  # fmt: skip
    return result._replace(model_calls=counted.calls, seconds=time.perf_counter() - t0)


def _confirmed_table(result, model: Model, scheduler: Scheduler, num_steps: int,
                     noise: Array, reference: np.ndarray, own: dict, solve: dict):  # fmt: skip
    """``result`` (a :class:`~diffsched.tuning_coefficients.CoefficientResult`) unless the
    negated batch refutes its gain over the untuned scheduler (:func:`_confirmation`);
    then its grid with the base's own weights, unless refuted too; then the untuned
    scheduler's table on its own grid."""
    from .tuning_coefficients import _tuned

    untuned = _tuned(scheduler, num_steps, own, None)
    table = result.scheduler
    if table == untuned:
        return result
    plain = _tuned(table.base_scheduler, num_steps, table.grid_options, None)
    fallbacks = ()
    tuned = (table.weights, table.sample_weights, table.model_timesteps)
    if any(t is not None for t in tuned) and plain != untuned:
        fallbacks = (("grid alone", lambda x: _sample(model, plain, x, num_steps, {})),)
    check = _confirmation(
        noise, reference,
        lambda x: _sample(model, table, x, num_steps, {}),
        lambda x: _sample(model, untuned, x, num_steps, {}),
        lambda: solve_reference(model, scheduler, num_steps, -noise, **solve).final,
        fallbacks,
    )  # fmt: skip
    if check is None:
        return result
    if check["kept"] == "tuned":
        return result._replace(confirmation=check)
    if check["kept"] == "grid alone":  # the fit started from it: its calibration error
        return result._replace(scheduler=plain, error=result.start_error, ridge=math.inf,
                               confirmation=check)  # fmt: skip
    error = relative_error(_sample(model, untuned, noise, num_steps, {}), reference)
    return result._replace(scheduler=untuned, start_error=error, error=error, ridge=math.inf,
                           confirmation=check)  # fmt: skip


def _held_error(result) -> float:
    """A fit's error on the calibration split it did not see, at the ridge it chose (its
    calibration error where nothing was fitted)."""
    return result.held_errors.get(result.ridge, result.error)


def search(
    model: Model,
    scheduler: Scheduler,
    num_steps: int,
    calibration_noise: Array,
    *,
    candidates: int = 100,
    substeps: int = 4,
    max_evaluations: int = 300,
    tolerance: float = 2e-3,
    mu: float | None = None,
    end: str = "zero",
) -> TuneResult:
    """:func:`tune`, with the errors before and after and the cost.

    Args:
        candidates: levels of the reference trajectory (and of the dynamic programming),
            from ``num_steps`` to :data:`MAX_CANDIDATES`.
        substeps: reference steps per candidate interval (at most :data:`MAX_SUBSTEPS`).
        max_evaluations: end-to-end runs of the refinement, at most (at most
            :data:`MAX_EVALUATIONS`).
        tolerance: the refinement stops when every level's move is below this (in log σ).
        mu: the dynamic shift's μ, for a flow scheduler with ``use_dynamic_shifting=True``
            (required there, refused elsewhere): the grid is tuned for that μ, which the
            result's ``init_options`` carry.
        end: what the final samples are fitted to: ``"zero"`` (the default), the ODE's
            solution at σ = 0; ``"lowest"``, the discrete limit (the ODE to the lowest
            trained level, then the jump to x̂_0 there: :func:`reference_trajectory`), for a
            discrete-time model, which is never called below that level.
    """
    _check_inputs(scheduler, calibration_noise, substeps=substeps, max_evaluations=max_evaluations,
                  tolerance=tolerance)  # fmt: skip
    num_steps = check_num_steps(num_steps, maximum=MAX_CANDIDATES)  # a grid of candidate levels
    _check_candidates(candidates, num_steps)
    _check_end(end, scheduler)
    _mu_for_flow_only(scheduler, mu)
    with small_matrices():  # the tuner's models multiply small matrices (see exact.threads)
        return _search(model, scheduler, num_steps, calibration_noise, candidates=candidates,
                       substeps=substeps, max_evaluations=max_evaluations,
                       tolerance=tolerance, mu=mu, end=end)  # fmt: skip


def _check_inputs(scheduler: Any, calibration_noise: Any, *, substeps: Any,
                  max_evaluations: Any, tolerance: Any, least_batch: int = 1) -> None:  # fmt: skip
    """Refuses, before any model call, what the tuner cannot take."""
    from .core.scheduler import BaseScheduler

    if not isinstance(scheduler, BaseScheduler):
        raise TypeError(f"scheduler must be a diffsched scheduler, got {type(scheduler).__name__}")
    if isinstance(scheduler, Tuned):
        raise TypeError(
            "scheduler is a Tuned table already: tune its base (tuned.base_scheduler), whose "
            "table the tuner corrects anew"
        )
    shape = getattr(calibration_noise, "shape", None)
    if shape is None or not hasattr(calibration_noise, "dtype"):
        raise TypeError(
            "calibration_noise must be an array (NumPy, PyTorch or JAX) of shape (batch, ...), "
            f"got {type(calibration_noise).__name__}"
        )
    shape = tuple(shape)
    if len(shape) < 1 or 0 in shape or shape[0] < least_batch:
        raise ValueError(
            f"calibration_noise must be a batch of at least {least_batch} sample"
            f"{'s' if least_batch > 1 else ''}, got shape {shape}"
        )
    xp = ops.namespace(calibration_noise)
    if not xp.isdtype(calibration_noise.dtype, "real floating"):
        raise TypeError(
            f"calibration_noise must be real floating-point, got dtype {calibration_noise.dtype}"
        )
    if not np.all(np.isfinite(to_numpy64(calibration_noise))):
        raise ValueError("calibration_noise must be finite, got NaN or inf values")
    bounds = (("substeps", substeps, 1, MAX_SUBSTEPS),
              ("max_evaluations", max_evaluations, 0, MAX_EVALUATIONS))  # fmt: skip
    for name, value, low, high in bounds:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, int | float)
        or not (math.isfinite(tolerance) and tolerance > 0)
    ):
        raise ValueError(f"tolerance must be a positive number, got {tolerance!r}")


def _check_reference(reference: Any, scheduler: Scheduler, calibration_noise: Array) -> None:
    """Refuses a ``reference=`` that is not :func:`solve_reference`'s of this noise."""
    kind = _FlowReference if is_flow(scheduler) else Reference
    if not isinstance(reference, kind):
        raise TypeError(
            f"reference must be the {kind.__name__} that solve_reference(model, scheduler, "
            f"num_steps, calibration_noise) returns, got {type(reference).__name__}"
        )
    shape, final = tuple(calibration_noise.shape), np.shape(reference.final)
    if final != shape:
        raise ValueError(
            f"reference must be of this calibration_noise: its final samples have shape "
            f"{final}, the noise {shape}"
        )


def _finite_reference(final: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(final)):
        raise ValueError(
            "the reference ODE solve met NaN or inf: the model's output is not finite on the "
            "calibration batch (check the model and the scheduler's prediction_type)"
        )
    return final


def _mu_for_flow_only(scheduler: Scheduler, mu: Any) -> None:
    if mu is not None and not is_flow(scheduler):
        raise ValueError(
            f"tune takes mu= for flow schedulers with use_dynamic_shifting=True only; "
            f"{type(scheduler).__name__} has no flow levels, got mu={mu!r}"
        )


def _search(model, scheduler, num_steps, calibration_noise, *, candidates, substeps,
            max_evaluations, tolerance, reference=None, bases=(),
            mu=None, end="zero") -> TuneResult:  # fmt: skip
    """:func:`search`; ``bases``: other methods for the same model whose starts compete
    with the scheduler's (the result's ``base`` says which one the grid is for). A grid
    whose gain over the own one is not :data:`CONFIRMED` on the calibration batch is
    kept unless the negated batch refutes it (:func:`_confirmation`)."""
    t0 = time.perf_counter()
    counted = _CountingModel(model)
    solve = {"candidates": candidates, "substeps": substeps, "end": end, "mu": mu}
    ref = reference if reference is not None else solve_reference(
        counted, scheduler, num_steps, calibration_noise, **solve)  # fmt: skip
    found = _search_bases(model, scheduler, num_steps, calibration_noise, candidates=candidates,
                          substeps=substeps, max_evaluations=max_evaluations,
                          tolerance=tolerance, reference=ref, bases=bases,
                          mu=mu)[0]  # fmt: skip
    tuned = found.base or scheduler
    if found.init_options != found.start_options or tuned is not scheduler:
        untuned = _untuned_run(counted, scheduler, num_steps, mu)
        check = _confirmation(
            calibration_noise, ref.final,
            lambda noise: _run(counted, tuned, noise, found.init_options), untuned,
            lambda: solve_reference(counted, scheduler, num_steps, -calibration_noise,
                                    **solve).final,
        )  # fmt: skip
        if check is not None:
            found = found._replace(confirmation=check)
            if check["kept"] is None:  # refuted on other noise: the own grid
                found = found._replace(init_options=found.start_options,
                                       error=found.start_error, base=scheduler)  # fmt: skip
    return found._replace(model_calls=found.model_calls + counted.calls,
                          seconds=time.perf_counter() - t0)  # fmt: skip


def solve_reference(model: Model, scheduler: Scheduler, num_steps: int, noise: Array, *,
                    candidates: int = 100, substeps: int = 4, end: str = "zero",
                    mu: float | None = None) -> Reference | _FlowReference:  # fmt: skip
    """The tuner's reference from ``noise`` (the calibration batch, or any other): the
    :func:`reference_trajectory` from the model's largest trained level, or for a
    rectified-flow scheduler the :func:`flow_reference` from its first level (at ``mu``)
    in ``candidates * substeps / 2`` Heun steps."""
    _check_candidates(candidates, num_steps)
    if is_flow(scheduler):
        g = FlowGrid.of(scheduler, num_steps, mu)
        extra = {} if mu is None else {"mu": g.mu}
        start = noise * scheduler.init_noise_scale(num_steps, **extra)
        return _FlowReference(flow_reference(model, scheduler, start, g.sigma0,
                                             steps=candidates * substeps // 2))  # fmt: skip
    g = Grid.of(scheduler, num_steps)
    start = noise * scheduler.init_noise_scale(None, **g.init_options(g.start))
    return reference_trajectory(model, scheduler, start, g, candidates, substeps, end)


def _check_candidates(candidates: Any, num_steps: int) -> None:
    if (
        isinstance(candidates, bool)
        or not isinstance(candidates, int)
        or not num_steps <= candidates <= MAX_CANDIDATES
    ):
        raise ValueError(
            f"candidates (the reference trajectory's levels) must be an integer in "
            f"[num_steps={num_steps}, {MAX_CANDIDATES}], got {candidates!r}"
        )


def _untuned_run(model: Model, scheduler: Scheduler, num_steps: int, mu: float | None) -> Run:
    """The untuned scheduler's final samples from a batch: its own grid (a discrete-time
    method's first call moved to the largest trained level, where the tuner starts)."""
    if is_flow(scheduler):
        extra = {} if mu is None else {"mu": FlowGrid.of(scheduler, num_steps, mu).mu}
        return lambda noise: _sample(model, scheduler, noise, num_steps, extra)
    g = Grid.of(scheduler, num_steps)
    return lambda noise: _run(model, scheduler, noise, g.init_options(g.start))


def _confirmation(
    noise: Array,
    reference: np.ndarray,
    tuned: Run,
    untuned: Run,
    negated_reference: Callable[[], np.ndarray],
    fallbacks: tuple[tuple[str, Run], ...] = (),
) -> dict[str, Any] | None:
    """None where the tuned result's paired fall from the untuned one on the calibration
    batch is :data:`CONFIRMED` standard errors or more. Else the result is run on the
    negated batch (the same law, other trajectories; its reference solved for this, one
    more reference's model calls) and kept unless it does worse there than the untuned
    one by :data:`REFUTED` standard errors of the paired differences or more (then each of
    ``fallbacks``, ``(name, run)``, is judged the same way, in order): the dict gives the
    errors there (``"tuned"``, ``"base"``, and each fallback's), their ``"... significance"``
    against the untuned one, the calibration gain's (``"significance"``) and which was
    ``"kept"`` (None: none, the untuned one).

    On the digits model at 10 calls and 64 samples a grid refined to 0.023 from 0.039
    (2.1 standard errors) did 0.121 against 0.083 on the negated batch (-1.5 standard
    errors) and 0.093 against 0.063 on 1024 held-out noises. Refuting rather than
    confirming: on digits a negated batch of 256 samples holds a handful of the samples
    that decide the error, and a table at 0.042 against the untuned 0.083 on 1024
    held-out noises did 0.058 against 0.036 there (-0.7 standard errors)."""
    z = Score.of(tuned(noise), reference).significance(Score.of(untuned(noise), reference))
    if z >= CONFIRMED:
        return None
    negated = -noise
    ref = negated_reference()
    base = Score.of(untuned(negated), ref)
    check: dict[str, Any] = {"base": base.error, "significance": z, "kept": None}
    for name, run in (("tuned", tuned), *fallbacks):
        score = Score.of(run(negated), ref)
        check[name] = score.error
        check[f"{name} significance"] = significance = score.significance(base)
        if significance > -REFUTED:
            check["kept"] = name
            break
    return check


def _search_bases(model, scheduler, num_steps, calibration_noise, *, candidates, substeps,
                  max_evaluations, tolerance, reference, bases=(),
                  refine=1, mu=None, scorer=None) -> list[TuneResult]:  # fmt: skip
    """:func:`_search` on ``reference`` (:func:`solve_reference` of the calibration
    noise), the grids of the ``refine`` bases whose best starts do best each
    refined: the first is :func:`_search`'s, the others those of the next bases by their
    best start's error (each kept only where it :meth:`Score.beats` the own grid's).
    ``scorer(scheduler, num_steps, init_options)``: a grid's :class:`Score` on the
    calibration batch (default: its final samples' error; ``tune="both"`` passes
    :class:`~diffsched.tuning_coefficients.FinalScorer`)."""
    if is_flow(scheduler):
        return [_search_flow(model, scheduler, num_steps, calibration_noise,
                             substeps=substeps, candidates=candidates,
                             max_evaluations=max_evaluations, tolerance=tolerance,
                             reference=reference, mu=mu, scorer=scorer,
                             bases=bases)]  # fmt: skip
    t0 = time.perf_counter()
    counted = _CountingModel(model)
    grid = Grid.of(scheduler, num_steps)
    ref = reference

    def error(sched: Scheduler, g: Grid, levels: np.ndarray) -> Score:
        if scorer is not None:
            return scorer(sched, num_steps, g.init_options(levels))
        out = _run(counted, sched, calibration_noise, g.init_options(levels))
        return Score.of(out, ref.final)

    gits = ref.dynamic_programming(num_steps)
    tried, scored, grids = {}, {}, {}
    for i, sched in enumerate((scheduler, *bases)):
        if i == 0:
            g, path = grid, gits
        else:
            try:
                g = Grid.of(sched, num_steps)
            except (TypeError, ValueError):
                continue
            path = g.snap(np.log(ref.sigmas[ref.dynamic_programming(num_steps, index=True)]))
        grids[i] = (sched, g)
        starts = {"own": g.start, "gits": path}
        for name in NAMED_GRIDS:
            try:
                starts[name] = g.snap(np.log(named_sigmas(name, g, num_steps)))
            except ValueError:
                continue
        for name, levels in starts.items():
            # (the reference's dynamic programme finds no path where its levels, rounded to
            # integer timesteps, are too few for the steps: no start then)
            if levels is not None and (name == "own" or g.valid(np.asarray(levels))):
                tried[i, name] = levels
                scored[i, name] = error(sched, g, levels)
    return _refined(error, grids, tried, scored, refine, max_evaluations, tolerance, counted, t0)


def _refined(error: Callable, grids: dict, tried: dict, scored: dict[Any, Score], refine: int,
             max_evaluations: int, tolerance: float, counted: _CountingModel,
             t0: float) -> list[TuneResult]:  # fmt: skip
    """The search's last stages, for either kind of grid (:class:`Grid`,
    :class:`FlowGrid`): from the starts scored (``scored[i, name]``, their levels
    ``tried[i, name]``, method i's ``grids[i] = (scheduler, grid)``, 0 the scheduler's own)
    the best is picked (:func:`_pick_start`), and the ``refine`` - 1 next methods' best as
    well; each is refined by :func:`_coordinate_search` and replaces the own grid only as
    :func:`_kept` allows."""
    best_key = _pick_start(scored, (0, "own"))
    keys = [best_key]
    for i in sorted(grids, key=lambda i: min(e.error for k, e in scored.items() if k[0] == i)):
        if len(keys) < refine and i != best_key[0]:
            keys.append(min((k for k in scored if k[0] == i), key=lambda k: scored[k].error))
    scheduler, grid = grids[0]
    own = scored[0, "own"]
    results = []
    for rank, key in enumerate(keys):
        sched, g = grids[key[0]]
        levels, best = _coordinate_search(
            lambda lv, sched=sched, g=g: error(sched, g, lv),
            g,
            tried[key],
            scored[key],
            max_evaluations if rank == 0 else max_evaluations // 4,
            tolerance,
        )
        if not _kept(best, own, key == (0, "own")):  # the own grid
            if any(r.base is scheduler for r in results):
                continue
            sched, g, levels, best = scheduler, grid, grid.start, own
        results.append(
            TuneResult(
                init_options=g.init_options(levels),
                start_options=grid.init_options(grid.start),
                start_error=own.error,
                error=best.error,
                model_calls=counted.calls,
                seconds=time.perf_counter() - t0,
                base=sched,
            )
        )
    return results


def stand_in(scheduler: Scheduler, num_steps: int,
              others: list[Scheduler]) -> tuple[Scheduler, list[Scheduler]]:  # fmt: skip
    """(the method whose table is tuned first, the other bases): ``scheduler``, or where its
    ``init`` takes no custom grid (DDIM, DEIS, LMS, PNDM: diffusers' classes that set their
    own timesteps) the first of ``others`` that does. Such a loop cannot start at the top
    level the reference starts from, so it cannot be scored against it; a tuned table of
    another method for the same model is what ``tune="coefficients"`` / ``"both"`` can
    give (the result's ``base`` says which)."""
    check_tunable(scheduler)
    try:
        Grid.of(scheduler, num_steps)
        return scheduler, others
    except TypeError as err:
        usable = []
        for other in others:
            try:
                Grid.of(other, num_steps)
            except (TypeError, ValueError):
                continue
            usable.append(other)
        if not usable:
            raise TypeError(
                f"{err}; tune='coefficients' or 'both' tunes another method's table for the "
                "same model in its place, with bases='auto' or a list of methods that take one"
            ) from None
        return usable[0], usable[1:]


def _bases(scheduler: Scheduler, bases: Any, num_steps: int) -> list[Scheduler]:
    if bases is None:
        return []
    if isinstance(bases, str):
        if bases != "auto":
            raise ValueError(f"bases must be 'auto', a list of schedulers or None, got {bases!r}")
        return candidate_flow_bases(scheduler) if is_flow(scheduler) else candidate_bases(scheduler)
    if is_flow(scheduler):
        raise ValueError("bases of a flow scheduler: 'auto' or None (candidate_flow_bases)")
    if not isinstance(bases, list | tuple):
        raise TypeError(
            f"bases must be 'auto', a list of schedulers or None, got {type(bases).__name__}"
        )
    out = list(bases)
    for b in out:
        if not isinstance(b, Scheduler) or isinstance(b, Tuned):
            raise TypeError(
                f"bases must hold schedulers of a discrete-time model (untuned), got "
                f"{type(b).__name__}"
            )
        try:  # one the grid search can run (a custom grid, deterministic, from noise)
            Grid.of(b, num_steps)
        except (TypeError, ValueError) as err:
            raise ValueError(f"bases: {type(b).__name__} cannot be a tuned base: {err}") from None
        for key in ("prediction_type", "num_train_steps"):
            if getattr(b, key, None) != getattr(scheduler, key, None):
                raise ValueError(f"bases must be methods for the same model: {type(b).__name__} "
                                 f"has {key}={getattr(b, key, None)!r}, the scheduler "
                                 f"{getattr(scheduler, key, None)!r}")  # fmt: skip
        if not np.allclose(b.alphas_cumprod, scheduler.alphas_cumprod, rtol=1e-12):
            raise ValueError(f"bases must be methods for the same model: {type(b).__name__} "
                             "has another training schedule (alphas_cumprod)")  # fmt: skip
    return out


def candidate_bases(scheduler: Scheduler) -> list[Scheduler]:
    """The methods that :func:`tune` tries beside ``scheduler`` (``bases="auto"``): UniPC
    and DPM-Solver++ of orders 2 and 3 and variable-step iPNDM, on its config (the same
    model: training schedule and prediction type), those that take it."""
    from .methods.dpmsolver import DPMSolverMultistep
    from .methods.ipndm_variable import VariableIPNDM
    from .methods.unipc import UniPC

    config = {k: v for k, v in scheduler.to_config().items() if k in BASE_KEYS}
    mine = json_config(scheduler)
    out = []
    for cls, kw in ((UniPC, {"solver_order": 3}), (UniPC, {"solver_order": 2}),
                    (DPMSolverMultistep, {"solver_order": 3}),
                    (DPMSolverMultistep, {"solver_order": 2}),
                    (VariableIPNDM, {"solver_order": 4})):  # fmt: skip
        try:
            other = cls.from_config(config, **kw)
        except (TypeError, ValueError):
            continue
        if json_config(other) != mine and other.deterministic and not other.processes_x0:
            out.append(other)
    return out


# the config keys a candidate base takes from the scheduler: the model (training schedule,
# prediction type) and the loop's own grid
BASE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
             "prediction_type", "rescale_betas_zero_snr", "timestep_spacing", "steps_offset",
             "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
             "final_sigmas_type")  # fmt: skip


def json_config(scheduler: Scheduler) -> str:
    import json

    return json.dumps(scheduler.to_config(), sort_keys=True)


# -- the grid: what is searched, and how it becomes init's arguments ----------------------


# -- the reference trajectory ---------------------------------------------------------------


class Reference(NamedTuple):
    """The reference trajectory at the candidate levels and its final sample."""

    sigmas: np.ndarray  # (K,) candidate levels, descending
    levels: np.ndarray  # (K,) the same in the grid's coordinates
    native: list[np.ndarray]  # K samples x = x_0 + σ ε (host float64)
    denoised: list[np.ndarray]  # K x̂_0 of the model's output there
    final: np.ndarray  # the reference final sample (σ = 0), host float64

    def dynamic_programming(self, n: int, index: bool = False) -> np.ndarray:
        """GITS' grid: the N candidate levels whose first-order steps (the last one to
        σ = 0) have the least summed local error along the reference trajectory (their
        indices among the candidates if ``index``)."""
        sig = self.sigmas
        k = len(sig)
        targets = [*self.native, self.final]  # node k: the final level, σ = 0
        target_sigma = np.append(sig, 0.0)
        cost = np.full((k, k + 1), np.inf)
        for i in range(k):
            d, x = self.denoised[i], self.native[i]
            for j in range(i + 1, k + 1):  # DDIM / Euler: x_j = x̂_0 + (σ_j / σ_i)(x_i - x̂_0)
                step = d + (target_sigma[j] / sig[i]) * (x - d)
                cost[i, j] = np.linalg.norm(step - targets[j]) / math.sqrt(1 + target_sigma[j] ** 2)
        # best[m, j]: the least cost of m steps from node 0 to node j
        best = np.full((n + 1, k + 1), np.inf)
        back = np.zeros((n + 1, k + 1), dtype=np.int64)
        best[0, 0] = 0.0
        for m in range(1, n + 1):
            total = best[m - 1, :k, None] + cost  # (from i, to j)
            back[m] = np.argmin(total, axis=0)
            best[m] = total[back[m], np.arange(k + 1)]
        path, j = [], k
        for m in range(n, 0, -1):
            j = int(back[m, j])
            path.append(j)
        chosen = np.array(path[::-1])
        return chosen if index else self.levels[chosen]


def reference_trajectory(
    model: Model,
    scheduler: Scheduler,
    start: Array,
    grid: Grid,
    candidates: int = 100,
    substeps: int = 4,
    end: str = "zero",
) -> Reference:
    """The probability-flow ODE from the model input ``start`` at the largest trained
    level down to σ = 0, solved with variable-step iPNDM (fourth order) on ``candidates``
    levels even in log σ (down to the lowest training level), each interval cut in
    ``substeps``, and one step from there to 0 (a discrete-time model has no level below
    its lowest trained one) of the order the model's own x̂_0 near that level supports
    (:func:`_final_sample`): the fourth-order multistep step where it is consistent with
    extrapolations of x̂_0 to σ = 0, lower orders where these stop converging (on a trained
    network the step to 0, ten times longer than those before it, missed the exact
    solution by 0.11, the jump to x̂_0 by 0.012).

    ``end="lowest"``: the final sample is instead the jump to x̂_0 at the lowest trained
    level, x̂_0(x(σ_L), σ_L): the *discrete limit*, where every sampler that calls the
    model only at its trained levels converges as its steps grow (diffusers' loops end with
    that jump), which the model's ODE to σ = 0 misses by its last interval (on the
    benchmark's trained network by 0.012, a tenth of the 5-call error and half the 10-call
    one)."""
    from .methods.ipndm_variable import VariableIPNDM

    _check_end(end)
    log_train = grid.log_train
    log_sig = np.linspace(log_train[-1], log_train[0], candidates)
    if grid.mode == "timesteps":  # integer timesteps: their own training levels
        levels = np.unique(np.round(sigma_schedules.sigma_to_t(np.exp(log_sig), log_train)))[::-1]
        log_sig = log_train[levels.astype(np.int64)]
    else:
        levels = log_sig
    pieces = [np.linspace(a, b, substeps + 1)[:-1] for a, b in itertools.pairwise(log_sig)]
    fine = np.exp(np.concatenate([*pieces, log_sig[-1:]]))
    fine = np.append(fine, 0.0)  # one step: the model has no level below the lowest trained
    solver = VariableIPNDM.from_config(scheduler.to_config(), solver_order=4)
    x0 = predictions.x0_from_ve(solver.prediction_type, np.exp(log_sig))
    state, timesteps = solver.init(None, start, sigmas=fine.tolist())
    x, native, denoised = start, [], []
    for i, t in enumerate(timesteps):
        out = model(x, t)
        if i % substeps == 0 and i // substeps < len(log_sig):
            k = i // substeps
            xk = to_numpy64(x) * math.sqrt(
                1 + math.exp(2 * log_sig[k])
            )  # the held sample is x / sqrt(1 + σ²)
            native.append(xk)
            denoised.append(x0.sample_coef[k] * xk + x0.prediction_coef[k] * to_numpy64(out))
        state, x = solver.step(state, x, out)
    if end == "lowest":  # the discrete limit: the jump to x̂_0 at the lowest trained level
        final = _finite_reference(denoised[-1].copy())
    else:
        final = _finite_reference(_final_sample(np.exp(log_sig), denoised, to_numpy64(x)))
    return Reference(np.exp(log_sig), levels, native, denoised, final)


ENDS = ("zero", "lowest")


def _check_end(end: Any, scheduler: Scheduler | None = None) -> None:
    if end not in ENDS:
        raise ValueError(f"end must be one of {ENDS}, got {end!r}")
    if end == "lowest" and scheduler is not None and is_flow(scheduler):
        raise ValueError(
            "end='lowest' is for discrete-time models; a rectified-flow model is called at any "
            f"σ down to 0 ({type(scheduler).__name__} has flow levels)"
        )


def _final_sample(sigmas: np.ndarray, denoised: list[np.ndarray], stepped: np.ndarray,
                  ratio: float = math.sqrt(2.0), most: int = 4,
                  growth: float = 2.0) -> np.ndarray:  # fmt: skip
    """The ODE's end x(0) from the last level σ_L, of an order each sample's own
    trajectory supports. Along the probability-flow ODE x̂_0(σ) = x(σ) - σ ε(x(σ), σ) has
    dx̂_0/dσ = -σ dε/dσ (Karras et al. 2022, eq. 4 with D = x̂_0), so for ε smooth in σ,
    x̂_0(σ) = x(0) + c_2 σ² + c_3 σ³ + ... (no σ term): the estimates, in rising order, are
    the jump x̂_0(σ_L) (error O(σ_L²)), the extrapolations to σ = 0 of x̂_0 at the
    levels nearest σ_L, ratio σ_L, ratio² σ_L, ... on the basis 1, σ², σ³, ... (1 + k
    levels: error O(σ^(k+2))), and the fourth-order multistep step ``stepped``. A model
    whose x̂_0 is not smooth in σ near its lowest level (a trained network) makes the
    higher orders diverge, so (as Romberg's and Bulirsch-Stoer's extrapolations, Hairer et
    al. 1993, II.9) each sample takes the estimate E_k whose change from E_(k-1), the
    error estimate of E_(k-1), is least: the orders past the point where they stop
    converging are not used."""
    sig = np.asarray(sigmas, np.float64)
    low = sig[-1]
    picks: list[int] = []
    for j in range(most):
        i = int(np.argmin(np.abs(np.log(sig) - np.log(low * ratio**j))))
        if i not in picks:
            picks.append(i)
    estimates = [denoised[-1]]
    for k in range(2, len(picks) + 1):
        nodes = sig[picks[:k]]
        powers = np.array([0, *range(2, k + 1)])
        basis = nodes[None, :] ** powers[:, None]  # (k, k): row p, node i
        weights = np.linalg.solve(basis, np.eye(k)[:, 0])  # Σ_i w_i σ_i^p = [p = 0]
        estimates.append(sum(w * denoised[i] for w, i in zip(weights, picks[:k], strict=True)))
    estimates.append(stepped)
    stack = np.stack([np.asarray(e, np.float64) for e in estimates])  # (M, batch, ...)
    axes = tuple(range(2, stack.ndim))
    change = np.sqrt(np.sum((stack[1:] - stack[:-1]) ** 2, axis=axes))  # (M - 1, batch)
    best = np.argmin(change, axis=0) + 1  # per sample: E_k with the least |E_k - E_(k-1)|
    for k in range(1, len(change)):  # and on while the next change is no jump out of line
        up = (best == k) & (change[k] <= growth * change[k - 1])
        best = np.where(up, k + 1, best)
    return np.take_along_axis(stack, best.reshape(1, -1, *([1] * len(axes))), 0)[0]


# -- rectified flows ------------------------------------------------------------------------


class FlowGrid(NamedTuple):
    """The N call levels of a flow scheduler's loop as searched: u = logit σ, the first
    fixed at the loop's own first level; ``init_options`` undoes the config's static
    shift σ ↦ sσ / (1 + (s - 1)σ) (Esser et al. 2024, eq. 23), which the scheduler applies
    to custom ``sigmas=`` as well."""

    start: np.ndarray  # the scheduler's own levels (u), first fixed
    sigma0: float  # the first call's σ (the reference starts there)
    shift: float
    low: float  # the least u a level may take
    final: bool = False  # whether sigmas= takes the final level 0 as well (N + 1 values)
    mu: float | None = None  # the dynamic shift's μ (use_dynamic_shifting), passed to init

    mode = "sigmas"

    @staticmethod
    def of(scheduler: Scheduler, num_steps: int, mu: float | None = None) -> FlowGrid:
        """The grid of ``scheduler``'s N-step loop; ``mu``: the dynamic shift's μ, which a
        scheduler with ``use_dynamic_shifting=True`` needs (and the others refuse). A
        dynamic shift (FLUX: e^μ / (e^μ + 1/σ - 1), or μ / (μ + 1/σ - 1)) maps custom
        ``sigmas=`` as the static shift s = e^μ (or μ) does, so the grid is tuned for that
        μ (one resolution) and ``init_options`` carry it."""
        name = type(scheduler).__name__
        if not scheduler.deterministic:
            raise ValueError(f"tune needs a deterministic scheduler, got {name} with noise")
        dynamic = bool(getattr(scheduler, "use_dynamic_shifting", False))
        if dynamic and mu is None:
            raise ValueError(
                f"tune of {name} with use_dynamic_shifting=True needs mu= (the μ its init "
                "takes: the grid is tuned for that shift)"
            )
        if mu is not None:
            mu = checked_mu(mu, dynamic=dynamic, who=f"tune of {name}")
        if getattr(scheduler, "invert_sigmas", False):
            raise ValueError(
                f"tuned grids are for loops from noise to data; {name} with invert_sigmas=True "
                "runs from data to noise (an inversion): there is no sampling error to tune"
            )
        if "sigmas" not in inspect.signature(scheduler.tableau).parameters:
            raise ValueError(
                f"tune takes rectified-flow grids through custom sigmas= only; {name} with flow "
                "levels takes none (integer timesteps= only): use UniPC or FlowMatchEuler"
            )
        try:
            grid = FlowGrid._searched(scheduler, num_steps, mu)
            back = scheduler.tableau(num_steps, **grid.init_options(grid.start)).timesteps
        except (TypeError, ValueError, OverflowError) as err:  # (an inversion, a μ too large,
            raise ValueError(  # sigmas= and mu= together where the class takes one of them)
                f"tune cannot set the flow levels of {name} with these options"
                f"{'' if mu is None else f' and mu={mu!r}'}: {err}"
            ) from None
        if not np.allclose(np.asarray(back) / scheduler.num_train_steps, grid.sigmas(grid.start),
                           rtol=1e-3, atol=2e-3):  # fmt: skip
            raise ValueError(
                f"tune cannot set the flow levels of {name} with these options"
                f"{'' if mu is None else f' and mu={mu!r}'}: custom sigmas= come back as other "
                "levels (a terminal shift, a named σ schedule, a shift the class does not apply "
                "to custom sigmas=, or one so extreme that the levels merge, reshapes them)"
            )
        return grid

    @staticmethod
    def _searched(scheduler: Scheduler, num_steps: int, mu: float | None) -> FlowGrid:
        """The grid of :meth:`of`, before the check that custom ``sigmas=`` come back."""
        extra = {} if mu is None else {"mu": mu}
        tab = scheduler.tableau(num_steps, **extra)
        sigma0 = float(tab.start[1]) if tab.start is not None else 1.0
        sig = np.asarray(tab.timesteps, np.float64) / scheduler.num_train_steps
        sig[0] = sigma0
        if mu is not None:  # (4) of schedules.flow as the static shift (3)
            linear = getattr(scheduler, "time_shift_type", "exponential") == "linear"
            shift = float(mu) if linear else math.exp(mu)
        else:
            shift = flow_shift(scheduler)
        grid = FlowGrid(_logit(sig), sigma0, shift, float(_logit(np.array([1e-3]))[0]), mu=mu)
        try:
            calls = scheduler.tableau(num_steps, **grid.init_options(grid.start)).num_calls
        except ValueError:
            calls = None
        if calls != num_steps:  # diffusers' multistep solvers: N + 1 levels, the last final
            grid = grid._replace(final=True)
        return grid

    def sigmas(self, levels: np.ndarray) -> np.ndarray:
        sig = 1.0 / (1.0 + np.exp(-np.asarray(levels, np.float64)))
        sig[0] = self.sigma0
        return sig

    def init_options(self, levels: np.ndarray) -> dict[str, list]:
        sig = self.sigmas(levels)
        base = sig / (self.shift - (self.shift - 1.0) * sig)  # the inverse of the shift
        out: dict[str, Any] = {"sigmas": [*base.tolist(), 0.0] if self.final else base.tolist()}
        if self.mu is not None:
            out["mu"] = self.mu
        return out

    def valid(self, levels: np.ndarray) -> bool:
        gaps = -np.diff(levels)
        return bool(levels[0] == self.start[0] and np.all(gaps > 1e-4) and levels[-1] >= self.low)


def _logit(sig: np.ndarray) -> np.ndarray:
    sig = np.clip(np.asarray(sig, np.float64), 1e-12, 1 - 1e-12)
    return np.log(sig / (1 - sig))


def flow_reference(model: Model, scheduler: Scheduler, start: Array, sigma0: float,
                   steps: int = 200, sigma_min: float = 1e-3) -> np.ndarray:  # fmt: skip
    """The rectified-flow ODE dx/dσ = v(x, σ) from ``start`` at σ0 to σ = 0 with the model
    alone: Heun's method (second order) on ``steps`` levels spaced as σ^(1/3) evenly down to
    ``sigma_min``, then x̂_0 = x - σ v there (the model has no level below its lowest)."""
    xp = ops.namespace(start)
    like = start
    big_t = scheduler.num_train_steps

    def velocity(x: np.ndarray, sigma: float) -> np.ndarray:
        arg = x if isinstance(like, np.ndarray) else ops.asarray(xp, x, like.dtype, like)
        t = np.float64(sigma * big_t)
        if not isinstance(like, np.ndarray):
            t = ops.asarray(xp, np.asarray(t), like.dtype, like)
        return to_numpy64(model(arg, t))

    rho = 3.0
    ramp = np.linspace(0.0, 1.0, steps + 1)
    sig = (sigma0 ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma0 ** (1 / rho))) ** rho
    x = to_numpy64(start)
    for a, b in itertools.pairwise(sig):
        v = velocity(x, a)
        guess = x + (b - a) * v
        x = x + (b - a) * 0.5 * (v + velocity(guess, b))
    return _finite_reference(x - sig[-1] * velocity(x, sig[-1]))


class _FlowReference(NamedTuple):
    final: np.ndarray


def _search_flow(model, scheduler, num_steps, calibration_noise, *, substeps, candidates,
                 max_evaluations, tolerance, reference, mu=None, scorer=None,
                 bases=()) -> TuneResult:  # fmt: skip
    """:func:`search` for rectified-flow schedulers: the reference is
    :func:`flow_reference`; the starts are each method's own grid, σ even (the unshifted
    grid) and u = logit σ even (the scheduler's, and those of ``bases``: other flow methods
    for the same model and shift, from the same first level); then the same coordinate
    search, in u, of the best start (another method's only where it :meth:`Score.beats`
    the scheduler's own grid)."""
    t0 = time.perf_counter()
    counted = _CountingModel(model)
    grid = FlowGrid.of(scheduler, num_steps, mu)
    extra = {} if mu is None else {"mu": grid.mu}
    ref = reference

    def error(sched: Scheduler, g: FlowGrid, levels: np.ndarray) -> Score:
        if scorer is not None:
            return scorer(sched, num_steps, g.init_options(levels))
        out = _run(counted, sched, calibration_noise, g.init_options(levels))
        return Score.of(out, ref.final)

    from .sampling import sample

    tried, scored, grids = {}, {}, {}
    for i, sched in enumerate((scheduler, *bases)):
        try:
            g = grid if i == 0 else FlowGrid.of(sched, num_steps, mu)
        except (TypeError, ValueError):
            continue
        if abs(g.sigma0 - grid.sigma0) > 1e-5:  # the reference starts at the scheduler's
            continue
        grids[i] = (sched, g)
        own = g.start
        starts = {"own": own}
        even = np.linspace(g.sigma0, g.sigma0 / num_steps, num_steps)
        starts["even"] = _logit(g.shift * even / (1 + (g.shift - 1) * even))
        starts["logit"] = (
            np.concatenate([own[:1], np.linspace(own[1], own[-1], num_steps - 1)])
            if num_steps > 1
            else own[:1]  # one step: its only level is the first, which stays
        )
        for name, levels in starts.items():
            levels = np.concatenate([own[:1], levels[1:]])
            if np.all(np.isfinite(levels[1:])) and g.valid(levels):
                tried[i, name] = levels
                scored[i, name] = error(sched, g, levels)
        # the own grid exactly (its σ's may differ from the levels' round trip by 1e-3)
        if scorer is not None:
            scored[i, "own"] = scorer(sched, num_steps, extra)
        else:
            out = to_numpy64(sample(counted, sched, calibration_noise, num_steps, **extra))
            scored[i, "own"] = Score.of(out, ref.final)
        tried[i, "own"] = own
    return _refined(error, grids, tried, scored, 1, max_evaluations, tolerance, counted, t0)[0]


def candidate_flow_bases(scheduler: Scheduler) -> list[Scheduler]:
    """The flow methods that :func:`tune` tries beside a flow ``scheduler``
    (``bases="auto"``): UniPC of orders 3 and 2 on flow σ's with its shift (static, or the
    same dynamic shift), those other than ``scheduler`` that take custom ``sigmas=``."""
    from .methods.unipc import UniPC

    kw: dict[str, Any] = {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                          "num_train_timesteps": scheduler.num_train_steps}  # fmt: skip
    if getattr(scheduler, "use_dynamic_shifting", False):
        kw |= {"use_dynamic_shifting": True,
               "time_shift_type": getattr(scheduler, "time_shift_type", "exponential")}  # fmt: skip
    else:
        kw["flow_shift"] = flow_shift(scheduler)
    mine = json_config(scheduler)
    out = []
    for order in (3, 2):
        try:
            other = UniPC.from_config(kw, solver_order=order)
        except (TypeError, ValueError):
            continue
        if json_config(other) != mine:
            out.append(other)
    return out


# -- the refinement ------------------------------------------------------------------------


def _coordinate_search(
    error: Callable[[np.ndarray], Score],
    grid: Grid,
    levels: np.ndarray,
    best: Score,
    max_evaluations: int,
    tolerance: float,
) -> tuple[np.ndarray, Score]:
    """Move each free level up or down by its own step, keeping a move only if the error
    falls (by more than ``MIN_GAIN`` of itself); a level's step grows after a kept move
    and halves after a round without one. Stops below ``RESOLUTION``, the accuracy of the
    reference itself, where a smaller error means nothing."""
    levels = levels.copy()
    n = len(levels)
    integer = grid.mode == "timesteps"
    gaps = -np.diff(np.append(levels, levels[-1] - 1.0))
    step = np.maximum(np.round(gaps / 3), 1.0) if integer else gaps / 3
    floor = 1.0 if integer else tolerance
    evaluations = 0
    while evaluations < max_evaluations and np.any(step[1:] >= floor) and best.error > RESOLUTION:
        for k in range(1, n):
            if step[k] < floor:
                continue
            moved = False
            for sign in (1.0, -1.0):
                trial = levels.copy()
                trial[k] += sign * step[k]
                if not grid.valid(trial):
                    continue
                evaluations += 1
                e = error(trial)
                if e.error < best.error * (1 - MIN_GAIN):
                    levels, best, moved = trial, e, True
                    break
            step[k] = step[k] * 1.5 if moved else step[k] / 2
            if integer:
                step[k] = np.round(step[k]) if step[k] >= 1 else 0.0
            if evaluations >= max_evaluations:
                break
    return levels, best


class Score(NamedTuple):
    """The error of one run on the calibration batch, and each sample's share of it."""

    per_sample: np.ndarray  # ||x_i - x*_i||² B / ||x*||²: their mean is the error squared
    error: float  # the relative error on the whole batch

    @staticmethod
    def of(out: np.ndarray, ref: np.ndarray) -> Score:
        b = len(ref)
        d = ((out - ref).reshape(b, -1) ** 2).sum(axis=1)
        return Score(d / max(float((ref**2).sum()), 1e-300) * b, relative_error(out, ref))

    def beats(self, other: Score) -> bool:
        """Whether this run is clearly better than ``other``: its error is lower by
        ``MIN_GAIN`` of itself, and the fall is ``SIGNIFICANCE`` standard errors of the
        paired per-sample differences or more. A fall carried by a few samples (as an
        empirical model's samples that flip onto another training image) is not taken: it
        does not carry over to other noise."""
        if not self.error < other.error * (1 - MIN_GAIN):
            return False
        return len(self.per_sample) < 2 or self.significance(other) >= SIGNIFICANCE

    def significance(self, other: Score) -> float:
        """The mean paired fall from ``other`` to this run, in standard errors of the
        per-sample differences (inf where every sample falls alike)."""
        diff = other.per_sample - self.per_sample
        mean = float(np.mean(diff))
        spread = float(np.std(diff, ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
        if spread == 0.0:
            return math.inf if mean > 0 else (-math.inf if mean < 0 else 0.0)
        return mean / spread


START_GAIN = 0.02  # the fall in error that picks another start, on a large batch
GAIN_BATCH = 128  # the least batch on which that fall alone is enough


def _pick_start(scored: dict[Any, Score], own: Any = "own") -> Any:
    """The start with the least error among the scheduler's own grid (key ``own``) and
    those that clearly beat it: on a batch of ``GAIN_BATCH`` samples or more, by an error
    ``START_GAIN`` lower; on a smaller one, by a fall that :meth:`Score.beats` it. The
    starts are untuned grids and methods, a handful scored on the whole batch: a choice
    among them does not fit the batch as a refinement does, and on an empirical model a
    grid that lands every sample on its training image differs from one that flips two of
    256 by too few samples for the paired test (digits, 256 samples, 6 / 8 / 20 calls:
    0.161 / 0.107 / 0.026 with the test, 0.111 / 0.092 / 3e-6 without); on 64 samples the
    test is needed (digits at 10 calls: 0.0751 with it, 0.0835 without, the untuned
    UniPC 0.0625; three draws, 1024 held-out noises)."""
    base = scored[own]

    def allowed(e: Score) -> bool:
        return _gains(e, base)

    keys = [k for k, e in scored.items() if k == own or allowed(e)]
    return min(keys, key=lambda k: scored[k].error)


def _kept(best: Score, own: Score, from_own: bool) -> bool:
    """Whether the refined grid replaces the scheduler's own grid: refined from the own
    grid, by a fall that :meth:`Score.beats` it (the refinement fits the batch: on digits
    with 64 samples a refined own grid that moved two samples onto their images did worse
    on other noise); refined from another start, as that start was picked
    (:func:`_pick_start`)."""
    if from_own:
        return best.beats(own)
    return _gains(best, own)


def _gains(score: Score, base: Score) -> bool:
    """:func:`_pick_start`'s rule: ``START_GAIN`` lower error on a batch of ``GAIN_BATCH``
    or more, else :meth:`Score.beats`."""
    if len(base.per_sample) < GAIN_BATCH:
        return score.beats(base)
    return score.error < base.error * (1 - START_GAIN)


# -- helpers -------------------------------------------------------------------------------


class _CountingModel:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.calls = 0

    def __call__(self, sample: Array, t: Any) -> Array:
        self.calls += 1
        return self.model(sample, t)


def _run(model: Model, scheduler: Scheduler, noise: Array, init_options: dict) -> np.ndarray:
    from .sampling import sample

    return to_numpy64(sample(model, scheduler, noise, None, **init_options))


def _sample(model: Model, scheduler: Scheduler, noise: Array, num_steps: int,
            options: dict) -> np.ndarray:  # fmt: skip
    from .sampling import sample

    return to_numpy64(sample(model, scheduler, noise, num_steps, **options))


def relative_error(samples: np.ndarray, reference: np.ndarray) -> float:
    """||x - x*|| / ||x*|| over the whole batch (as ``diffsched bench``)."""
    return float(np.linalg.norm(samples - reference) / np.linalg.norm(reference))
