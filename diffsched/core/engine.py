"""The step engine: every method is a table of coefficients; one ``step`` runs them all.

Glossary (used the same way in every module):

* **model call**: one evaluation of the model. ``step`` runs once per model call, so a
  two-stage method (Heun, DPM2) takes two ``step`` calls per interval of its grid.
* **timestep**: the value ``t`` the model is called with (``timesteps[i]``).
* **sample**: the array the scheduler holds. It *is* the model input: there is no
  ``scale_model_input``; where a paper (and diffusers) keeps its sample in another space
  (Euler's variance-exploding x, EDM's unscaled x), that **native** sample is the held one
  times the call's ``input_scale``, and the table absorbs the factor.
* **model output**: what the model returns, in the config's ``prediction_type``.
* **x̂_0**: the denoised estimate, linear in (sample, model output) at the call's noise level,
  then optionally clipped or thresholded: the only nonlinear operation of any method.
* **σ**: only ever the noise level (x = x_0 + σ ε in the variance-exploding view).

A method describes its model calls as a :class:`Tableau` in its native space: per call,
the x̂_0 conversion and the next sample as a linear combination of *operands*: the sample,
the model output and x̂_0 of this call or of an earlier one (``lag`` calls back), plus
fresh noise. :func:`compile` turns it, once, in ``init``, into a :class:`Program`:

* the held-space coefficients;
* which past quantities must be kept, each as one array (a fixed linear combination of an
  earlier call's operands, or the operands themselves when later calls need more than one
  combination of them), and the physical history slot of each, assigned for its whole life
  (storage never moves);
* per call, the slots it reads (with coefficients) and writes.

:func:`step` then runs one call of any program: form x̂_0 (and process it) if asked, take
the linear combination, store what later calls read, add noise.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from . import ops

Array = Any
SAMPLE, OUTPUT, X0 = "sample", "output", "x0"
OPERANDS = (SAMPLE, OUTPUT, X0)
# a tableau term only (lag >= 1): the fresh noise an earlier call drew (see resolve_noise)
NOISE = "noise"
Term = tuple[str, int]  # (operand, lag): lag 0 is this call, 1 the call before, ...

# Columns of the per-call coefficient table (``EngineState.coefs``).
COEF_COLUMNS = (
    "x0_sample",  # x̂_0 = x0_sample · sample + x0_output · output (processed x̂_0 only)
    "x0_output",
    "out_sample",  # next sample = out_sample · sample + out_output · output
    "out_output",  #   + out_x0 · x̂_0 + Σ reads + out_noise · z
    "out_x0",
    "out_noise",
    "start_clean",  # add_noise: the first model input = start_clean · x_0 + start_noise · ε
    "start_noise",
)
_C = {name: i for i, name in enumerate(COEF_COLUMNS)}


@dataclass(frozen=True, eq=False)
class Tableau:
    """A method's model calls, in its native space: what its paper writes down.

    Attributes:
        timesteps: (N,) the timestep of each model call.
        x0_sample, x0_output: (N,) x̂_0 = x0_sample · x + x0_output · output at each call
            (the prediction-type conversion at that call's noise level, native x).
        update: {(operand, lag): (N,) coefficients}: the next native sample, as
            Σ coef · operand(call n - lag); operands are "sample", "output" and "x0", and
            "noise" with lag >= 1: the fresh noise drawn at an earlier call, used again
            (SEEDS; :func:`resolve_noise`).
        noise: (N,) coefficient of fresh standard normal noise, or None (deterministic).
        input_scale: (N + 1,) native sample = input_scale · held sample; entry N is for the
            final sample (1 for every method: the final sample is native). None: all 1.
        start: (2,) native (clean, noise) coefficients of the first call's sample, for
            ``add_noise`` (image-to-image); None if the method has no such start.
        init_noise_sigma: diffusers' ``init_noise_sigma``: the native first sample is
            standard normal noise times this.
    """

    timesteps: np.ndarray
    x0_sample: np.ndarray
    x0_output: np.ndarray
    update: Mapping[Term, np.ndarray]
    noise: np.ndarray | None = None
    input_scale: np.ndarray | None = None
    start: tuple[float, float] | None = None
    init_noise_sigma: float = 1.0

    def __post_init__(self) -> None:
        n = len(self.timesteps)
        if n < 1:
            raise ValueError("a tableau needs at least one model call")
        cols = {"x0_sample": self.x0_sample, "x0_output": self.x0_output}
        cols |= {f"update{term}": c for term, c in self.update.items()}
        if self.noise is not None:
            cols["noise"] = self.noise
        for name, col in cols.items():
            arr = np.broadcast_to(np.asarray(col, np.float64), (n,))
            if arr.shape != (n,):
                raise ValueError(f"tableau column {name} must have shape ({n},)")
        for (operand, lag), col in self.update.items():
            reused = operand == NOISE and lag >= 1 and self.noise is not None
            if not (reused or operand in OPERANDS) or not 0 <= lag < n:
                raise ValueError(f"bad tableau term {(operand, lag)!r}")
            early = np.asarray(col, np.float64)[:lag] if np.ndim(col) else np.zeros(0)
            if np.any(early != 0):
                raise ValueError(f"term {(operand, lag)!r} is used before call {lag} exists")
        if self.input_scale is not None and np.shape(self.input_scale) != (n + 1,):
            raise ValueError(f"input_scale must have shape ({n + 1},)")

    @property
    def num_calls(self) -> int:
        return len(self.timesteps)

    def column_noise(self) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.noise, np.float64), (self.num_calls,)).copy()

    def column(self, term: Term) -> np.ndarray:
        col = self.update.get(term)
        if col is None:
            return np.zeros(self.num_calls)
        return np.broadcast_to(np.asarray(col, np.float64), (self.num_calls,)).copy()


class Update(dict):
    """A tableau's ``update`` built call by call: ``add(operand, lag, call, value)`` adds
    ``value`` to the coefficient of ``operand`` of call ``call - lag`` in call ``call``'s
    next sample."""

    def __init__(self, num_calls: int) -> None:
        super().__init__()
        self.num_calls = num_calls

    def add(self, operand: str, lag: int, call: int, value: float) -> None:
        column = self.get((operand, lag))
        if column is None:
            column = self[(operand, lag)] = np.zeros(self.num_calls)
        column[call] += value


class HeldColumns(NamedTuple):
    """A tableau in held space: per call (N,) columns, before any storage is planned."""

    scale: np.ndarray  # (N + 1,) native sample = scale · held sample
    x0_sample: np.ndarray  # x̂_0 = x0_sample · held sample + x0_output · output
    x0_output: np.ndarray
    terms: dict[Term, np.ndarray]  # (operand, lag) -> coefficient of the next held sample
    noise: np.ndarray  # coefficient of fresh noise


@dataclass(frozen=True, eq=False)
class Program:
    """A compiled tableau: the arrays of an engine state, on the host, float64.

    ``coefs`` has one row per call plus a last row of NaN: under ``jax.jit`` or
    ``torch.compile`` a step past the end cannot raise, so it reads that row and returns
    NaN, unmistakably. ``reads[n]`` holds (slot, coefficient) pairs, ``writes[n]``
    (slot, sample, output, x̂_0) rows: the new content of a slot as a combination of this
    call's operands.
    """

    timesteps: np.ndarray  # (N,)
    coefs: np.ndarray  # (N + 1, len(COEF_COLUMNS))
    reads: np.ndarray  # (N + 1, R, 2)
    writes: np.ndarray  # (N + 1, W, 4)
    num_slots: int  # K
    init_noise_scale: float
    processes_x0: bool
    stochastic: bool
    # (N + 1,) native sample = input_scale · held sample (for adapters that hold the native one)
    input_scale: np.ndarray = field(default_factory=lambda: np.ones(1))
    host: dict = field(default_factory=dict)  # per-call Python rows for the eager path
    held: HeldColumns | None = None  # the tableau in held space (per-element schedules)

    def __post_init__(self) -> None:
        # a program is shared by every equal config (the scheduler's cache): its arrays are
        # read-only, and init hands each state copies (nothing a caller holds reaches them)
        arrays = [getattr(self, name) for name in ("timesteps", "coefs", "reads", "writes",
                                                   "input_scale")]  # fmt: skip
        if self.held is not None:  # the held columns too (per-element plans read them)
            held = self.held
            arrays += [held.scale, held.x0_sample, held.x0_output, held.noise,
                       *held.terms.values()]  # fmt: skip
        for arr in arrays:
            if isinstance(arr, np.ndarray):
                arr.setflags(write=False)

    @property
    def num_calls(self) -> int:
        return len(self.timesteps)

    @property
    def nbytes(self) -> int:
        """Host memory held: the tables, plus the eager path's per-call rows (Python
        numbers, about 40 bytes each) once built."""
        arrays = (self.timesteps, self.coefs, self.reads, self.writes, self.input_scale)
        size = sum(np.asarray(a).nbytes for a in arrays)
        row = self.coefs.shape[1] + self.reads[0].size + self.writes[0].size
        return size + len(self.host) * self.num_calls * (row * 40 + 200)


class EngineState(NamedTuple):
    """The loop state of every method: fixed shapes, arrays only, so loops compile.

    ``history`` is a tuple of K arrays of the sample's shape on NumPy and PyTorch (a step
    replaces the ones it writes, never writing into an array), and one (K, *shape) array
    on JAX, where ``jax.jit`` updates the written slot in place.
    """

    step: Array  # 0-d int32: index of the next model call
    coefs: Array  # (N + 1, 8) per-call coefficients (COEF_COLUMNS); row N is NaN
    reads: Array  # (N + 1, R, 2) history reads: (slot, coefficient)
    writes: Array  # (N + 1, W, 4) history writes: (slot, sample, output, x̂_0 coefficient)
    key: Array  # 0-d int32 seed of the noise draws
    history: Any  # K arrays of the sample's shape (see above)
    # (2 + ndim,) int32: what made the state: the config's fingerprint, the init options'
    # fingerprint, then the template's shape (see :func:`origin`); None: not known
    fingerprint: Any = None


# ----------------------------------------------------------------------------------------
# Compiling a tableau
# ----------------------------------------------------------------------------------------


def held_columns(tableau: Tableau, *, processes_x0: bool) -> HeldColumns:
    """The tableau's update in held space; x̂_0 is expanded into sample and output unless
    ``processes_x0`` keeps it as its own (nonlinear) operand."""
    tableau = resolve_noise(tableau)
    n_calls = tableau.num_calls
    scale = (
        np.ones(n_calls + 1)
        if tableau.input_scale is None
        else np.array(tableau.input_scale, np.float64)  # a copy: the program's is read-only
    )
    a = np.asarray(np.broadcast_to(tableau.x0_sample, (n_calls,)), np.float64) * scale[:-1]
    b = np.asarray(np.broadcast_to(tableau.x0_output, (n_calls,)), np.float64).copy()
    calls = np.arange(n_calls)
    next_scale = scale[1:]

    # held-space combination: coef[(operand, lag)] as (N,) columns
    coef: dict[Term, np.ndarray] = {}
    for (operand, lag), _ in tableau.update.items():
        col = tableau.column((operand, lag))
        src = calls - lag
        valid = src >= 0
        if operand == SAMPLE:
            col = np.where(valid, col * scale[np.clip(src, 0, None)], 0.0)
        col = col / next_scale
        if operand == X0 and not processes_x0:  # x̂_0 is linear: expand it
            for target, factor in ((SAMPLE, a), (OUTPUT, b)):
                add = np.where(valid, col * factor[np.clip(src, 0, None)], 0.0)
                coef[(target, lag)] = coef.get((target, lag), 0.0) + add
            continue
        coef[(operand, lag)] = coef.get((operand, lag), 0.0) + col
    noise = np.zeros(n_calls) if tableau.noise is None else tableau.column_noise() / next_scale
    return HeldColumns(scale, a, b, coef, noise)


def resolve_noise(tableau: Tableau) -> Tableau:
    """``tableau`` with its ("noise", L) terms written in the other operands.

    The noise z_m drawn at call m is in call m + 1's sample: x_{m+1} = Σ U_m · (operands of
    calls <= m) + c_m z_m, so z_m = (x_{m+1} - Σ U_m · ...) / c_m, a fixed combination of
    operands the engine keeps anyway: reusing a draw (SEEDS, Gonzalez et al. 2023) costs no
    history of noise and keeps the loop fixed-shape. Needs c_m != 0 (a clear error).
    """
    terms = [t for t in tableau.update if t[0] == NOISE]
    if not terms:
        return tableau
    n = tableau.num_calls
    fresh = tableau.column_noise()
    cols = {t: tableau.column(t) for t in tableau.update if t[0] != NOISE}
    reuse = {t: tableau.column(t) for t in terms}
    for call in range(n):  # in call order: an earlier call's row is already resolved
        for (_, lag), col in reuse.items():
            w = col[call]
            if w == 0:
                continue
            m = call - lag
            if fresh[m] == 0:
                raise ValueError(
                    f"model call {call} reuses the noise of call {m}, which draws none"
                )
            k = w / fresh[m]
            parts = [((SAMPLE, lag - 1), k)]
            parts += [((op, lag + j), -k * c[m]) for (op, j), c in cols.items() if c[m] != 0]
            for term, value in parts:
                cols.setdefault(term, np.zeros(n))[call] += value
    return dataclasses.replace(tableau, update=cols)


def compile(tableau: Tableau, *, processes_x0: bool, describe_bad: Callable[[int], str]) -> Program:
    """The program of ``tableau``; ``processes_x0`` keeps x̂_0 as its own (nonlinear) operand.

    ``describe_bad(n)`` explains a non-finite coefficient at call n (for the error).
    """
    n_calls = tableau.num_calls
    scale, a, b, coef, noise = held_columns(tableau, processes_x0=processes_x0)

    def current(operand: str) -> np.ndarray:
        return np.asarray(coef.get((operand, 0), np.zeros(n_calls)), np.float64)

    # what each call must keep for later calls: usage vectors over (sample, output, x̂_0)
    usage: dict[int, list[tuple[int, np.ndarray]]] = {}
    lags = sorted({lag for (_, lag) in coef if lag > 0})
    for lag in lags:
        for n in range(lag, n_calls):
            vec = np.array([float(coef.get((op, lag), np.zeros(n_calls))[n]) for op in OPERANDS])
            if np.any(vec != 0):
                usage.setdefault(n - lag, []).append((n, vec))

    kept: list[tuple[int, np.ndarray, list[tuple[int, float]]]] = []  # (call, vector, reads)
    for j in sorted(usage):
        uses = usage[j]
        first = uses[0][1]
        ratios = [float(v @ first / (first @ first)) for _, v in uses]
        if all(
            np.linalg.norm(v - r * first) <= 1e-12 * np.linalg.norm(v)
            for (_, v), r in zip(uses, ratios, strict=True)
        ):
            kept.append((j, first, [(n, r) for (n, _), r in zip(uses, ratios, strict=True)]))
            continue
        for i in range(len(OPERANDS)):  # several combinations: keep the operands themselves
            reads = [(n, float(v[i])) for n, v in uses if v[i] != 0]
            if reads:
                kept.append((j, np.eye(len(OPERANDS))[i], reads))

    # slots: an array is written at its call and read until its last use; a slot is reused
    # only by an array written after the previous one's last read
    free_after: list[int] = []
    reads_at: list[list[tuple[int, float]]] = [[] for _ in range(n_calls)]
    writes_at: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n_calls)]
    for j, vec, reads in kept:
        last = max(n for n, _ in reads)
        slot = next((k for k, f in enumerate(free_after) if f < j), None)
        if slot is None:
            slot = len(free_after)
            free_after.append(last)
        free_after[slot] = last
        writes_at[j].append((slot, vec))
        for n, r in reads:
            reads_at[n].append((slot, r))
    num_reads = max((len(r) for r in reads_at), default=0)
    num_writes = max((len(w) for w in writes_at), default=0)
    num_slots = len(free_after)
    if num_writes and any(len(w) < num_writes for w in writes_at):
        num_slots += 1  # a scratch slot: branch-free steps with fewer writes write there
    scratch = num_slots - 1

    coefs = np.zeros((n_calls + 1, len(COEF_COLUMNS)))
    if processes_x0:
        coefs[:n_calls, _C["x0_sample"]] = a
        coefs[:n_calls, _C["x0_output"]] = b
    coefs[:n_calls, _C["out_sample"]] = current(SAMPLE)
    coefs[:n_calls, _C["out_output"]] = current(OUTPUT)
    coefs[:n_calls, _C["out_x0"]] = current(X0)
    coefs[:n_calls, _C["out_noise"]] = noise
    if tableau.start is not None:
        coefs[:n_calls, _C["start_clean"]] = tableau.start[0] / scale[0]
        coefs[:n_calls, _C["start_noise"]] = tableau.start[1] / scale[0]
    else:
        coefs[:n_calls, _C["start_clean"]] = np.nan
        coefs[:n_calls, _C["start_noise"]] = np.nan
    reads = np.zeros((n_calls + 1, num_reads, 2))
    writes = np.zeros((n_calls + 1, num_writes, 4))
    writes[:, :, 0] = scratch
    for n in range(n_calls):
        for r, (slot, c) in enumerate(reads_at[n]):
            reads[n, r] = (slot, c)
        for w, (slot, vec) in enumerate(writes_at[n]):
            writes[n, w] = (slot, *vec)
    check_cols = [c for c in COEF_COLUMNS if not c.startswith("start")]
    body = np.concatenate(
        [
            coefs[:n_calls, [_C[c] for c in check_cols]],
            reads[:n_calls, :, 1],
            writes[:n_calls, :, 1:].reshape(n_calls, -1),
        ],
        axis=1,
    )
    bad = ~np.isfinite(body).all(axis=1)
    if bad.any():
        raise ValueError(describe_bad(int(np.argmax(bad))))
    coefs[n_calls, :] = np.nan  # past the end
    reads[n_calls, :, 1] = np.nan
    return Program(
        timesteps=np.array(tableau.timesteps),
        coefs=coefs,
        reads=reads,
        writes=writes,
        num_slots=num_slots,
        init_noise_scale=float(tableau.init_noise_sigma / scale[0]),
        input_scale=scale,
        processes_x0=processes_x0,
        stochastic=tableau.noise is not None and bool(np.any(noise != 0)),
        held=HeldColumns(
            scale, a, b, {t: np.broadcast_to(c, (n_calls,)).copy() for t, c in coef.items()}, noise
        ),
    )


# ----------------------------------------------------------------------------------------
# init and step
# ----------------------------------------------------------------------------------------


def init(
    program: Program, sample_template: Array, key: Any, origin: tuple[int, int] = (0, 0)
) -> tuple[EngineState, Array]:
    """The engine state of ``program`` on the template's backend, dtype and device.

    ``origin`` is (the config's fingerprint, the init options' fingerprint): ``step``
    compares the first with its scheduler's. Every array returned is the caller's own (a
    copy of the shared program's tables, never a view of them).
    """
    xp = ops.namespace(sample_template)
    dtype = ops.compute_dtype(xp, sample_template.dtype)
    if dtype != xp.float64:
        _check_fits_float32(program)
    dev = history_dev = ops.device(sample_template)
    like = sample_template  # where the small arrays go (ops.asarray, seed_array)
    if ops.is_jax(xp):
        sharded = _jax_shardings(sample_template)
        if sharded is not None:  # a template sharded over a mesh
            dev, history_dev = sharded
            like = xp.zeros((), dtype=xp.int32, device=dev)
    step = xp.asarray(0, dtype=xp.int32, device=dev)
    coefs = ops.asarray(xp, program.coefs, dtype, like)
    reads = ops.asarray(xp, program.reads, dtype, like)
    writes = ops.asarray(xp, program.writes, dtype, like)
    shape = tuple(sample_template.shape)
    if ops.is_jax(xp):
        history = xp.zeros((program.num_slots, *shape), dtype=dtype, device=history_dev)
    else:  # distinct arrays: torch.compile guards on aliasing between inputs
        history = tuple(xp.zeros(shape, dtype=dtype, device=dev) for _ in range(program.num_slots))
        _register_host_rows(coefs, program, np.float64 if dtype == xp.float64 else np.float32)
    key = ops.seed_array(xp, key, like)
    made = (*origin, *shape)
    fingerprint = xp.asarray(made, dtype=xp.int32, device=dev)
    _remember_origin(fingerprint, made, bool(np.isfinite(program.coefs[0, _C["start_clean"]])))
    state = EngineState(step, coefs, reads, writes, key, history, fingerprint)
    ts_dtype = ops.timestep_dtype(xp, program.timesteps)
    return state, ops.asarray(xp, program.timesteps, ts_dtype, like)


# -- what made a state --------------------------------------------------------------------

_ORIGINS: dict[int, tuple[Any, tuple[int, ...], bool]] = {}


def _remember_origin(fingerprint: Array, made: tuple[int, ...], has_start: bool) -> None:
    """Keeps the values of a state's fingerprint array on the host (keyed by the array,
    while it lives), so the eager check reads no array."""
    key = id(fingerprint)
    try:
        ref = weakref.ref(fingerprint, lambda _, key=key: _ORIGINS.pop(key, None))
    except TypeError:
        return
    _ORIGINS[key] = (ref, made, has_start)


def _foreign(name: str, call: str, maker: int, user: int, describe) -> str:
    """The message for a state stepped by a config other than the one that made it."""
    describe = describe or (lambda fp: f"fingerprint {fp}")
    return (
        f"{name}.{call} was given a state that another configuration's init made: made by "
        f"{describe(maker)}; {call} of {describe(user)}. Use the scheduler that made the "
        "state (or init a new one)"
    )


def origin(state: EngineState) -> tuple[int, ...] | None:
    """(config fingerprint, init-options fingerprint, *template shape) of the init that made
    ``state``; None where unknown (a state built by hand) or not readable for free (traced
    under ``jax.jit`` or ``torch.compile``, or on an accelerator: then nothing is checked)."""
    fp = getattr(state, "fingerprint", None)
    if fp is None:
        return None
    entry = _ORIGINS.get(id(fp))
    if entry is not None and entry[0]() is fp:
        return entry[1]
    if ops.concrete_int(fp[0]) is None:
        return None
    return tuple(int(v) for v in ops.to_numpy64(fp).tolist())


def _jax_shardings(template: Array):
    """For a JAX template sharded over several devices by a ``NamedSharding``: (the
    sharding of the small arrays, replicated over its mesh; the sharding of the (K, *shape)
    history, the template's on the sample axes, K unsharded). None for any other template.

    The template's own sharding (``ops.device``) cannot place them: its partition spec is
    for the sample's rank, and the tables' rows (N + 1) need not divide over the mesh.
    """
    from jax.sharding import NamedSharding, PartitionSpec

    sharding = getattr(template, "sharding", None)
    if not isinstance(sharding, NamedSharding) or sharding.num_devices == 1:
        return None
    mesh, kind = sharding.mesh, sharding.memory_kind
    return (
        NamedSharding(mesh, PartitionSpec(), memory_kind=kind),
        NamedSharding(mesh, PartitionSpec(None, *sharding.spec), memory_kind=kind),
    )


class Float32RangeError(ValueError):
    """A table whose coefficients float32 cannot hold (raised by ``init`` for a float32
    sample; the scheduler names its noise-schedule options in the message)."""


def _check_fits_float32(program: Program) -> None:
    """Coefficients beyond float32's range would turn a float32 step into inf / NaN."""
    n = program.num_calls
    values = np.concatenate(
        [
            program.coefs[:n].reshape(n, -1),
            program.reads[:n, :, 1],
            program.writes[:n, :, 1:].reshape(n, -1),
        ],
        axis=1,
    )
    values = np.nan_to_num(values, nan=0.0)  # the start columns of methods without add_noise
    big = np.abs(values).max(axis=1) > 1e18  # two such factors in a row overflow float32
    if big.any():
        i = int(np.argmax(big))
        raise Float32RangeError(
            f"model call {i} (timestep {program.timesteps[i]}) has a coefficient of magnitude "
            f"{np.abs(values[i]).max():.3g}, beyond float32's range: the noise schedule "
            "reaches a level float32 cannot represent, or an option scales a coefficient past "
            "it; use a float64 sample_template"
        )


# -- the eager path's per-call rows, as Python floats ---------------------------------------

_HOST_ROWS: dict[int, tuple[Any, list]] = {}


def _register_host_rows(coefs: Array, program: Program, dtype) -> None:
    """Remember, for this state's coefficient table, each call's row as Python numbers
    (rounded to the compute dtype, so the eager path multiplies by exactly the values the
    compiled path reads from the table)."""
    rows = program.host.get(dtype)
    if rows is None:
        c = program.coefs.astype(dtype).astype(np.float64).tolist()
        r = program.reads.astype(dtype).astype(np.float64).tolist()
        w = program.writes.astype(dtype).astype(np.float64).tolist()
        rows = [
            (
                tuple(c[n]),
                tuple((int(a), b) for a, b in r[n]),
                tuple((int(k), *rest) for k, *rest in w[n]),
            )
            for n in range(program.num_calls)
        ]
        program.host[dtype] = rows
    key = id(coefs)
    try:
        ref = weakref.ref(coefs, lambda _, key=key: _HOST_ROWS.pop(key, None))
    except TypeError:  # an array type without weak references: rows are read per step
        return
    _HOST_ROWS[key] = (ref, rows)


def _host_rows(state: EngineState, i: int):
    entry = _HOST_ROWS.get(id(state.coefs))
    if entry is not None and entry[0]() is state.coefs:
        return entry[1][i]
    c = state.coefs[i].tolist()
    reads = tuple((int(a), b) for a, b in state.reads[i].tolist())
    writes = tuple((int(k), *rest) for k, *rest in state.writes[i].tolist())
    return tuple(c), reads, writes


Process = Callable[[Array, bool], Array] | None  # (x̂_0, owned) -> processed x̂_0


def check_operands(name: str, xp: Any, dtype: Any, sample: Array, prediction: Array,
                   noise: Array | None, stochastic: bool) -> None:  # fmt: skip
    """Refuses a step's operands (of one shape, checked before) that a state computing in
    ``dtype`` cannot take: non-float arrays, a float64 sample for a lower-precision state,
    noise where none is drawn, or noise of another library, shape or dtype."""
    for what, arr in (("sample", sample), ("prediction", prediction)):
        if not ops.is_float(arr):
            raise TypeError(f"expected a floating-point {what}, got dtype {arr.dtype}")
    if sample.dtype != dtype and sample.dtype == xp.float64:
        raise TypeError(
            f"{name}.step got a float64 sample but the state computes in {dtype} (init was "
            "given a lower-precision sample_template): pass a float64 template to init"
        )
    if noise is None:
        return
    if not stochastic:
        raise ValueError(f"{name} with this configuration draws no noise; noise= is not used")
    if type(noise) is not type(sample) and ops.namespace(noise) is not xp:
        raise TypeError(
            f"noise must be a {type(sample).__name__} like the sample, got {type(noise).__name__}"
        )
    shape = tuple(sample.shape)
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise must have the sample's shape {shape}, got {tuple(noise.shape)}")
    if not ops.is_float(noise):
        raise TypeError(f"expected a floating-point noise, got dtype {noise.dtype}")


def step(
    name: str,
    state: EngineState,
    sample: Array,
    prediction: Array,
    noise: Array | None,
    *,
    process: Process,
    stochastic: bool,
    fingerprint: int | None = None,
    describe_maker: Callable[[int], str] | None = None,
) -> tuple[EngineState, Array]:
    """One model call of any method: (next state, next sample in the sample's dtype).

    ``fingerprint``: the stepping config's; a state another config made is refused (where
    the state's origin is readable for free, see :func:`origin`).
    """
    ops.check_step_arrays(name, sample=sample, prediction=prediction)
    xp = ops.namespace(sample, prediction)
    coefs = state.coefs
    if ops.namespace(coefs) is not xp:
        raise TypeError(
            f"the state holds {type(coefs).__name__} arrays but step was given "
            f"{type(sample).__name__} arrays; init and step must use one array library"
        )
    made = origin(state)
    if made is not None and fingerprint is not None and made[0] != fingerprint:
        raise ValueError(_foreign(name, "step", made[0], fingerprint, describe_maker))
    shape = tuple(sample.shape)
    if made is not None and tuple(made[2:]) != shape:
        raise ValueError(
            f"sample shape {shape} differs from the template's {tuple(made[2:])} given to init"
        )
    if tuple(prediction.shape) != shape:
        raise ValueError(
            f"sample and prediction must have the same shape, got {shape} "
            f"and {tuple(prediction.shape)}"
        )
    dtype = coefs.dtype
    check_operands(name, xp, dtype, sample, prediction, noise, stochastic)
    if noise is not None:
        noise = noise if noise.dtype == dtype else xp.astype(noise, dtype)
    x = sample if sample.dtype == dtype else xp.astype(sample, dtype)
    m = prediction if prediction.dtype == dtype else xp.astype(prediction, dtype)
    history = state.history
    held = tuple(history.shape[1:]) if ops.is_jax(xp) else (history[0].shape if history else None)
    if held is not None and tuple(held) != shape:
        raise ValueError(
            f"sample shape {shape} differs from the template's {tuple(held)} given to init"
        )
    index = ops.host_index(state.step)
    num_calls = coefs.shape[0] - 1
    if index is not None and not 0 <= index < num_calls:
        raise IndexError(
            f"{name}.step called after the last of its {num_calls} model calls "
            f"(call index {index}); call init again to start a new loop"
        )
    if ops.is_jax(xp):
        out, history = _branch_free_jax(state, x, m, noise, process, stochastic)
        new_step = state.step + 1
    elif index is not None:
        out, history = _host_step(state, index, x, m, noise, process, stochastic)
        new_step = ops.next_step(state.step, index)
    else:
        out, history = _branch_free_tuple(xp, state, x, m, noise, process, stochastic)
        new_step = state.step + 1
    if out.dtype != sample.dtype:
        out = xp.astype(out, sample.dtype)
    return EngineState(
        new_step, coefs, state.reads, state.writes, state.key, history, state.fingerprint
    ), out


def _host_step(state, i, x, m, noise, process, stochastic):
    """Eager NumPy / PyTorch on the CPU: the call index is on the host, so only the terms
    that are nonzero at this call are computed, with Python-float coefficients.

    Non-finite input: the compiled paths compute every term, so a NaN or inf in the sample
    or the model output reaches the result (0 · inf = NaN) even at a zero coefficient, as
    in diffusers, whose step always reads both. Where this path skips the sample or the
    model output (a zero coefficient), it checks that array with one reduction (a read,
    no write) and, if it holds a non-finite value, keeps its zero-weight terms, so the
    result is the compiled path's, element for element.
    """
    c, reads, writes = _host_rows(state, i)
    history = state.history
    d = None
    skipped = (c[2] == 0 or (process is not None and c[0] == 0),
               c[3] == 0 or (process is not None and c[1] == 0))  # fmt: skip
    keep = (skipped[0] and not ops.all_finite(x)) or (skipped[1] and not ops.all_finite(m))
    combine = ops.combine_all if keep else ops.combine
    terms = [(c[2], x), (c[3], m)]
    if process is not None:
        d = process(combine(((c[0], x), (c[1], m))), True)
        terms.append((c[4], d))
    for slot, coef in reads:
        terms.append((coef, history[slot]))
    if stochastic and c[5] != 0:
        z = noise if noise is not None else ops.host_normal(state.key, i, x)
        terms.append((c[5], z))
    out = combine(terms)
    if writes:
        history = list(history)
        for slot, ws, wo, wx in writes:
            if ws == 0 and wo == 0 and (d is None or wx == 0):
                continue  # a padding write
            parts = ((ws, x), (wo, m)) if d is None else ((ws, x), (wo, m), (wx, d))
            history[slot] = ops.combine(parts)
        history = tuple(history)
    return out, history


def _gathered(state):
    """This call's rows as arrays (a gather by the traced step index)."""
    return (
        ops.row(state.coefs, state.step),
        ops.row(state.reads, state.step),
        ops.row(state.writes, state.step),
    )


def _draw(state, x, noise, stochastic):
    if not stochastic:
        return None
    if noise is not None:
        return noise
    return ops.normal(state.key, state.step, tuple(x.shape), x.dtype, x)


def _branch_free_jax(state, x, m, noise, process, stochastic):
    """Under ``jax.jit`` (and eager JAX): every term, gathered rows, slots updated in place.

    The writes come first and the reads then read the updated history: a slot written at a
    call is never read at that call (see :func:`compile`), so the result is the same, and
    the reads' dependency on the update lets XLA update the slots in place, with no copy
    of the history or of the sample in the loop body.
    """
    from jax import lax

    c, reads, writes = _gathered(state)
    d = None
    if process is not None:
        d = process(c[0] * x + c[1] * m, True)
    history = state.history
    for w in range(writes.shape[0]):
        value = writes[w, 1] * x + writes[w, 2] * m
        if d is not None:
            value = value + writes[w, 3] * d
        slot = writes[w, 0].astype("int32")
        history = lax.dynamic_update_index_in_dim(history, value.astype(history.dtype), slot, 0)
    out = c[2] * x + c[3] * m
    if d is not None:
        out = out + c[4] * d
    for r in range(reads.shape[0]):
        slot = reads[r, 0].astype("int32")
        out = out + reads[r, 1] * lax.dynamic_index_in_dim(history, slot, 0, keepdims=False)
    z = _draw(state, x, noise, stochastic)
    if z is not None:
        out = out + c[5] * z
    return out, history


def _branch_free_tuple(xp, state, x, m, noise, process, stochastic):
    """``torch.compile`` and PyTorch on accelerators: no host read of the step index."""
    c, reads, writes = _gathered(state)
    d = None
    if process is not None:
        d = process(c[0] * x + c[1] * m, True)
    out = c[2] * x + c[3] * m
    if d is not None:
        out = out + c[4] * d
    history = state.history
    for k, h in enumerate(history):
        weight = 0.0
        for r in range(reads.shape[0]):
            weight = weight + xp.where(reads[r, 0] == k, reads[r, 1], 0.0)
        out = out + weight * h
    z = _draw(state, x, noise, stochastic)
    if z is not None:
        out = out + c[5] * z
    if writes.shape[0]:
        new = list(history)
        for k in range(len(history)):
            for w in range(writes.shape[0]):
                value = writes[w, 1] * x + writes[w, 2] * m
                if d is not None:
                    value = value + writes[w, 3] * d
                flag = xp.astype(writes[w, 0] == k, value.dtype)
                new[k] = ops.select(flag, value, new[k])
        history = tuple(new)
    return out, history


def add_noise(
    state: EngineState,
    clean: Array,
    noise: Array,
    *,
    name: str = "add_noise",
    fingerprint: int | None = None,
    describe_maker: Callable[[int], str] | None = None,
) -> Array:
    """The first model input of the loop from a clean sample: α x_0 + σ ε in held space.

    A method without an image-to-image start (its start columns are NaN) is refused (for
    the state ``init`` made, on any device); traced, where nothing is readable, it gives
    NaN.
    """
    xp = ops.namespace(clean, noise)
    if ops.namespace(state.coefs) is not xp:
        raise TypeError("add_noise: clean, noise and the state must use one array library")
    for what, arr in (("clean", clean), ("noise", noise)):
        if not ops.is_float(arr):
            raise TypeError(
                f"{name}.add_noise expects a floating-point {what} array, got dtype {arr.dtype}"
            )
    if tuple(clean.shape) != tuple(noise.shape):
        raise ValueError(
            f"clean and noise must have the same shape, got {tuple(clean.shape)} "
            f"and {tuple(noise.shape)}"
        )
    made = origin(state)
    if made is not None and fingerprint is not None and made[0] != fingerprint:
        raise ValueError(_foreign(name, "add_noise", made[0], fingerprint, describe_maker))
    fp = getattr(state, "fingerprint", None)
    entry = None if fp is None else _ORIGINS.get(id(fp))
    if entry is not None and entry[0]() is fp:
        has_start = entry[2]
    elif ops.concrete_int(state.step) is not None:
        has_start = not np.isnan(ops.to_numpy64(state.coefs[0, _C["start_clean"]]))
    else:
        has_start = True  # not readable for free: a method without a start gives NaN
    if not has_start:
        raise ValueError(
            f"{name} has no image-to-image start: its first model call needs history "
            "that a noised clean sample does not give (add_noise is not defined for it)"
        )
    row = state.coefs[0]
    dtype = state.coefs.dtype
    out = row[_C["start_clean"]] * xp.astype(clean, dtype) + row[_C["start_noise"]] * xp.astype(
        noise, dtype
    )
    return out if out.dtype == clean.dtype else xp.astype(out, clean.dtype)


def call_noise(state: EngineState, like: Array) -> Array:
    """The standard normal draw ``step`` makes at this call (shape, dtype and device of
    ``like``), for a method that must see its noise before the engine's step (a step size
    that depends on the draw; see :mod:`diffsched.methods.score_sde`)."""
    index = ops.host_index(state.step)
    if index is not None:
        return ops.host_normal(state.key, index, like)
    return ops.normal(state.key, state.step, tuple(like.shape), like.dtype, like)


# -- per-call numbers a method's own step reads (beyond the engine's columns) ---------------


def with_columns(program: Program, columns: np.ndarray) -> Program:
    """``program`` whose coefficient table carries ``columns`` ((N, E) float64, finite)
    after :data:`COEF_COLUMNS`: per-call numbers for a method whose ``step`` does more than
    the engine's (RePaint's known region); the engine's own step never reads them, the
    method reads them with :func:`extra_row`."""
    n = program.num_calls
    columns = np.asarray(columns, dtype=np.float64).reshape(n, -1)
    if not np.isfinite(columns).all():
        raise ValueError("extra per-call columns must be finite")
    extra = np.full((n + 1, columns.shape[1]), np.nan)  # past the end: NaN, as the rest
    extra[:n] = columns
    coefs = np.concatenate([program.coefs, extra], axis=1)
    return dataclasses.replace(program, coefs=coefs, host={})


def extra_row(state: EngineState) -> tuple:
    """This call's entries of the columns added by :func:`with_columns`: Python floats on
    the eager path, 0-d arrays when the step index is traced."""
    index = ops.host_index(state.step)
    if index is not None:
        if index >= state.coefs.shape[0] - 1:
            raise IndexError(f"step called after the last of {state.coefs.shape[0] - 1} calls")
        return tuple(_host_rows(state, index)[0][len(COEF_COLUMNS) :])
    row = ops.row(state.coefs, state.step)
    return tuple(row[k] for k in range(len(COEF_COLUMNS), state.coefs.shape[1]))


# -- CFG++: guidance-aware steps ------------------------------------------------------------


def guided_step(
    name: str,
    state: EngineState,
    sample: Array,
    prediction: Array,
    unconditional: Array,
    noise: Array | None,
    *,
    weight: Any,
    process: Process,
    stochastic: bool,
) -> tuple[EngineState, Array]:
    """One CFG++ call (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free
    Guidance for Diffusion Models"): ``prediction`` is the guided output g, ``unconditional``
    the unconditional one u.

    The rule, for any table: write this call's update A x + B F (+ P x̂_0 where x̂_0 is
    processed) in the basis (x̂_0, ε̂), x = α x̂_0 + σ ε̂ at the call's level, and take x̂_0
    from g and ε̂ from u; every history write (what later calls read as earlier outputs)
    is formed from u, as ComfyUI's multistep cfg_pp samplers keep the unconditional x̂_0.
    With x̂_0 = a x + b F this is

        out = step(x, u) + w (g - u) + P (proc x̂_0(g) - proc x̂_0(u)),  w = B + α (A b - B a),

    ``weight`` the call's w (computed in init: ``BaseScheduler._with_step_columns``). So
    u = g gives the plain step exactly (the correction is an exact zero).
    """
    xp = ops.namespace(sample, prediction)
    if ops.namespace(unconditional) is not xp and type(unconditional) is not type(sample):
        raise TypeError(
            f"unconditional must be a {type(sample).__name__} like the prediction, "
            f"got {type(unconditional).__name__}"
        )
    if tuple(unconditional.shape) != tuple(prediction.shape):
        raise ValueError(
            f"unconditional must have the prediction's shape {tuple(prediction.shape)}, "
            f"got {tuple(unconditional.shape)}"
        )
    if not ops.is_float(unconditional):
        raise TypeError(f"expected a floating-point unconditional, got {unconditional.dtype}")
    new_state, out = step(
        name, state, sample, unconditional, noise, process=process, stochastic=stochastic
    )
    dtype = state.coefs.dtype
    g = prediction if prediction.dtype == dtype else xp.astype(prediction, dtype)
    u = unconditional if unconditional.dtype == dtype else xp.astype(unconditional, dtype)
    total = out if out.dtype == dtype else xp.astype(out, dtype)
    index = ops.host_index(state.step)
    if index is not None:
        row = _host_rows(state, index)[0]
        terms = [(1.0, total), (float(weight), g - u)]  # g - u first: u = g adds exact zeros
        if process is not None and row[4] != 0:
            x = sample if sample.dtype == dtype else xp.astype(sample, dtype)
            d_g = process(ops.combine(((row[0], x), (row[1], g))), True)
            d_u = process(ops.combine(((row[0], x), (row[1], u))), True)
            terms.append((row[4], d_g - d_u))
        total = ops.combine(terms)
    else:
        total = total + weight * (g - u)
        if process is not None:
            c = ops.row(state.coefs, state.step)
            x = sample if sample.dtype == dtype else xp.astype(sample, dtype)
            total = total + c[4] * (process(c[0] * x + c[1] * g, True)
                                    - process(c[0] * x + c[1] * u, True))  # fmt: skip
    if total.dtype != sample.dtype:
        total = xp.astype(total, sample.dtype)
    return new_state, total
