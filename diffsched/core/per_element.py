"""Per-element schedules: one ``step`` advances elements at different points of their loops.

``init(num_steps, template, key, offsets=o)`` (and ``strength=`` given as an array) runs the
method's program once per *element*: an element is an entry of ``o``'s shape, which
broadcasts against the sample (``(B, 1, 1, 1)``: one schedule per image; ``(1, 1, F, 1, 1)``:
per video frame; ``(1, T, 1)``: per token). Element e starts its own loop at global call
``o_e``: at global call k it runs row ``k - o_e`` of its program. Before its start it
*waits* (its sample passes through unchanged and its timestep is its first); after its last
call it is *done* (unchanged; its timestep is its last). An offset of minus the program's
calls or less makes an element done from the start (a conditioning frame or token). The
loop has ``max_e(o_e + calls_e)`` global calls.

Every method runs so, because every method is a table: the state holds the rows of every
program the elements use (one per distinct ``strength``) plus a *wait* and a *done* row
(both the identity), and each element gathers its own row at each call. The history is a
ring over the last L calls of the operands the method reads back (the held sample, the
model output, and the processed x̂_0 where the method clips or thresholds it): lag l is
always l global calls back for every element, since every active element advances one row
per call, so one ring serves elements at any rows.

Noise: element e's fresh noise at its own call n is what a loop of the same scheduler run
alone on that element (its block of the sample), with the key :func:`element_key` (key,
e), draws at its call n. So an element's result does not depend on what else is in the
batch or when it starts. ``noise=`` still overrides the draw, for the whole array.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, NamedTuple

import numpy as np

from . import engine, ops

Array = Any
SAMPLE, OUTPUT, X0 = engine.SAMPLE, engine.OUTPUT, engine.X0
_C = {name: i for i, name in enumerate(engine.COEF_COLUMNS)}
MAX_ELEMENTS = 1 << 20


class ElementState(NamedTuple):
    """The loop state of a per-element loop (fixed shapes, arrays only, so loops compile).

    The rows are every program's calls, then the wait row and the done row. The ring holds,
    per call, W combinations of that call's (held sample, model output, processed x̂_0):
    ``writes[row]`` says which, ``reads[row, (lag - 1) * W + w]`` the coefficient of entry
    w of the call ``lag`` = 1..L back.
    """

    step: Array  # 0-d int32: the global call index
    coefs: Array  # (R, 8) per-row coefficients (engine.COEF_COLUMNS)
    reads: Array  # (R, L * W) per-row ring coefficients
    writes: Array  # (R, W, 3) per-row ring combinations
    start: Array  # o's shape, int: the global call of each element's first row
    base: Array  # o's shape, int: the row of each element's first call
    length: Array  # o's shape, int: each element's number of calls
    keys: Array  # o's shape, int32: each element's noise seed (element_key)
    history: Any  # the ring: L * W arrays, newest call first (NumPy, PyTorch), or one
    # (L + 1, W, *shape) array indexed by the global call modulo L + 1 (JAX)
    fingerprint: Any = None  # (1,) int32: the fingerprint of the config that made it


def element_key(key: int, index: int) -> int:
    """The noise seed of element ``index`` (its flat index in ``offsets``' shape, C order)
    of a per-element loop with integer ``key``: a loop of the same scheduler alone on that
    element, with this key, draws the element's noise."""
    if isinstance(key, bool) or not isinstance(key, int | np.integer):
        raise TypeError(f"per-element loops take an integer key, got: {key!r}")
    return ops._splitmix64((int(key) % (1 << 64)) ^ (0x5851F42D4C957F2D * (int(index) + 1)
                                                    % (1 << 64))) % (1 << 31)  # fmt: skip


def element_shape(offsets: Any, sample_shape: tuple[int, ...], name: str = "offsets") -> tuple:
    """The element shape of ``offsets``: its shape, left-padded with 1's to the sample's
    rank; each axis is 1 or the sample's."""
    shape = tuple(np.shape(offsets))
    if len(shape) > len(sample_shape):
        raise ValueError(
            f"{name} must broadcast against the sample of shape {sample_shape}, got shape {shape}"
        )
    shape = (1,) * (len(sample_shape) - len(shape)) + shape
    for axis, (e, s) in enumerate(zip(shape, sample_shape, strict=True)):
        if e not in (1, s):
            raise ValueError(
                f"{name} must broadcast against the sample of shape {sample_shape}: axis "
                f"{axis} has {e} entries (1 or {s} expected)"
            )
    if int(np.prod(shape)) > MAX_ELEMENTS:
        raise ValueError(f"{name} may have at most {MAX_ELEMENTS} elements, got {shape}")
    return shape


def _integers(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if np.any(np.abs(arr) > 1 << 30):
        raise ValueError(f"{name} must lie within ±2**30, got {int(np.abs(arr).max())}")
    return arr.astype(np.int64)


MAX_ENTRIES = 50_000_000  # (global calls) x (elements): the timesteps init returns, 400 MB


class Plan(NamedTuple):
    """A per-element loop on the host: its tables and each element's place in them."""

    coefs: np.ndarray  # (R, 8)
    reads: np.ndarray  # (R, L * W): coefficient of ring entry w of the call lag = 1..L back
    writes: np.ndarray  # (R, W, 3): ring entry w = this (sample, output, x̂_0) combination
    timesteps: np.ndarray  # (R,)
    start: np.ndarray  # element shape
    base: np.ndarray
    length: np.ndarray
    num_calls: int  # global calls of the loop
    stochastic: bool
    programs: tuple  # the programs, in row order


def _ring_rows(held: engine.HeldColumns, n: int, lags: int, operands: tuple) -> tuple:
    """Per row j, the combinations of its operands that later rows read (``writes``), and
    per row n the coefficient of each (lag, combination) (``reads``), as the engine keeps
    them: one combination where every later use of row j is a multiple of one (the usual
    case: an x̂_0 or a derivative), else the operands themselves."""
    used = {}  # source row j -> [(lag, vector)]
    for lag in range(1, lags + 1):
        cols = [held.terms.get((op, lag)) for op in operands]
        for dest in range(lag, n):
            vec = np.array([0.0 if c is None else float(c[dest]) for c in cols])
            if np.any(vec != 0):
                used.setdefault(dest - lag, []).append((lag, vec))
    basis_of, width = {}, 1
    for j, uses in used.items():
        first = uses[0][1]
        if all(np.linalg.norm(v - (v @ first / (first @ first)) * first)
               <= 1e-12 * np.linalg.norm(v) for _, v in uses):  # fmt: skip
            basis_of[j] = [first]
        else:
            basis_of[j] = [np.eye(len(operands))[i] for i in range(len(operands))
                           if any(v[i] != 0 for _, v in uses)]  # fmt: skip
        width = max(width, len(basis_of[j]))
    writes = np.zeros((n, width, 3))
    reads = np.zeros((n, lags * width))
    for j, basis in basis_of.items():
        for w, vec in enumerate(basis):
            writes[j, w, : len(operands)] = vec
        matrix = np.stack(basis, axis=1)  # (operands, basis)
        for lag, v in used[j]:
            coef = np.linalg.lstsq(matrix, v, rcond=None)[0]
            reads[j + lag, (lag - 1) * width : lag * width][: len(basis)] = coef
    return writes, reads, width


def plan(programs: list, which: np.ndarray, offsets: np.ndarray, processes_x0: bool) -> Plan:
    """The plan of elements whose program is ``programs[which_e]``, starting at ``offsets_e``."""
    operands = (SAMPLE, OUTPUT, X0) if processes_x0 else (SAMPLE, OUTPUT)
    lags = max((lag for p in programs for (_, lag) in p.held.terms), default=0)
    rows_c, rings, rows_t, bases = [], [], [], []
    total, width = 0, 1
    for p in programs:
        n = p.num_calls
        c = np.zeros((n, len(engine.COEF_COLUMNS)))
        held = p.held
        c[:, _C["x0_sample"]] = held.x0_sample
        c[:, _C["x0_output"]] = held.x0_output
        for column, operand in (("out_sample", SAMPLE), ("out_output", OUTPUT), ("out_x0", X0)):
            if (operand, 0) in held.terms:
                c[:, _C[column]] = held.terms[(operand, 0)]
        c[:, _C["out_noise"]] = held.noise
        c[:, _C["start_clean"]] = p.coefs[:n, _C["start_clean"]]
        c[:, _C["start_noise"]] = p.coefs[:n, _C["start_noise"]]
        ring = _ring_rows(held, n, lags, operands)
        width = max(width, ring[2])
        rows_c.append(c)
        rings.append(ring)
        rows_t.append(np.asarray(p.timesteps, np.float64))
        bases.append(total)
        total += n
    writes = np.zeros((total + 2, width, 3))  # + the wait row and the done row: no writes
    reads = np.zeros((total + 2, lags * width))
    for b, (w, r, wd) in zip(bases, rings, strict=True):
        n = w.shape[0]
        writes[b : b + n, :wd] = w
        for lag in range(lags):
            reads[b : b + n, lag * width : lag * width + wd] = r[:, lag * wd : (lag + 1) * wd]
    identity = np.zeros((2, len(engine.COEF_COLUMNS)))  # the wait row, then the done row
    identity[:, _C["out_sample"]] = 1.0
    identity[:, _C["start_clean"]] = np.nan  # add_noise reads each element's first row
    identity[:, _C["start_noise"]] = np.nan
    coefs = np.concatenate([*rows_c, identity])
    timesteps = np.concatenate([*rows_t, [np.nan, np.nan]])
    lengths = np.array([p.num_calls for p in programs])
    length = lengths[which]
    base = np.array(bases)[which]
    done = offsets <= -length
    start = np.where(done, -(1 << 30), offsets)
    if np.any((offsets < 0) & ~done):
        bad = int(offsets[(offsets < 0) & ~done].flat[0])
        raise ValueError(
            f"offsets must be >= 0, or <= minus the element's model calls (done from the "
            f"start), got {bad}: an element cannot start inside its loop without its history"
        )
    num_calls = int(np.max(np.where(done, 0, start + length)))
    if num_calls < 1:
        raise ValueError("every element is done from the start (offsets <= -calls): no loop")
    ops.check_calls("a per-element loop", num_calls, "its offsets and model calls")
    if num_calls * start.size > MAX_ENTRIES:  # init returns a timestep per element and call
        raise ValueError(
            f"a per-element loop of {num_calls} calls over {start.size} elements has "
            f"{num_calls * start.size} timesteps; expected at most {MAX_ENTRIES}: fewer "
            "elements (offsets broadcast over fewer axes) or smaller offsets"
        )
    return Plan(coefs, reads, writes, timesteps, start, base, length, num_calls,
                any(p.stochastic for p in programs), tuple(programs))  # fmt: skip


def rows_at(plan_or_state: Any, k: int, xp=np) -> Any:
    """Each element's row at global call ``k`` (the wait row before its start, the done row
    after its end)."""
    start, base, length = plan_or_state.start, plan_or_state.base, plan_or_state.length
    n_rows = plan_or_state.coefs.shape[0]
    rel = k - start
    return xp.where(rel < 0, n_rows - 2, xp.where(rel >= length, n_rows - 1, base + rel))


def timesteps(p: Plan) -> np.ndarray:
    """(calls, *element shape): each element's timestep at each global call (its first
    before it starts, its last after it ends)."""
    k = np.arange(p.num_calls).reshape((-1,) + (1,) * p.start.ndim)
    return p.timesteps[p.base + np.clip(k - p.start, 0, p.length - 1)]


# -- init, step, add_noise -------------------------------------------------------------------

_HOST: dict[int, tuple[Any, Plan, dict]] = {}


def init(
    p: Plan, sample_template: Array, key: Any, fingerprint: int | None = None
) -> tuple[ElementState, Array]:
    xp = ops.namespace(sample_template)
    dtype = ops.compute_dtype(xp, sample_template.dtype)
    if dtype != xp.float64:  # as the whole-sample engine: every program the elements run
        for program in p.programs:
            engine._check_fits_float32(program)
    like = sample_template
    dev = history_dev = ops.device(sample_template)
    shape = tuple(sample_template.shape)
    if ops.is_jax(xp):
        shardings = engine._jax_shardings(sample_template)
        if shardings is not None:  # a template sharded over a mesh: the tables replicated,
            # the ring sharded as the sample on its sample axes
            from jax.sharding import NamedSharding, PartitionSpec

            dev = shardings[0]
            sharding = sample_template.sharding
            history_dev = NamedSharding(
                sharding.mesh, PartitionSpec(None, None, *sharding.spec),
                memory_kind=sharding.memory_kind,
            )  # fmt: skip
            like = xp.zeros((), dtype=xp.int32, device=dev)
    index = ops.index_dtype(xp)
    flat = np.arange(p.start.size).reshape(p.start.shape)
    keys = np.vectorize(lambda e: element_key(key, int(e)), otypes=[np.int64])(flat)
    width = p.writes.shape[1]
    lags = p.reads.shape[1] // width
    state_coefs = ops.asarray(xp, p.coefs, dtype, like)
    if ops.is_jax(xp):
        history = xp.zeros(
            (lags + 1, width, *shape) if lags else (0, *shape), dtype=dtype,
            device=history_dev if lags else dev,
        )  # fmt: skip
    else:
        history = tuple(xp.zeros(shape, dtype=dtype, device=dev) for _ in range(lags * width))
    state = ElementState(
        step=xp.asarray(0, dtype=xp.int32, device=dev),
        coefs=state_coefs,
        reads=ops.asarray(xp, p.reads, dtype, like),
        writes=ops.asarray(xp, p.writes, dtype, like),
        start=xp.asarray(p.start, dtype=index, device=dev),
        base=xp.asarray(p.base, dtype=index, device=dev),
        length=xp.asarray(p.length, dtype=index, device=dev),
        keys=xp.asarray(keys.astype(np.int32), dtype=xp.int32, device=dev),
        history=history,
        fingerprint=None
        if fingerprint is None
        else xp.asarray([fingerprint], dtype=xp.int32, device=dev),
    )
    if not ops.is_jax(xp):  # the eager path reads the plan on the host (see _plan_of)
        ident = id(state_coefs)
        with contextlib.suppress(TypeError):  # arrays without weak references: no fast path
            ref = weakref.ref(state_coefs, lambda _, k=ident, table=_HOST: table.pop(k, None))
            _HOST[ident] = (ref, p, {})  # the plan, and its per-call terms (_host_call)
    ts = timesteps(p)
    return state, ops.asarray(xp, ts, ops.timestep_dtype(xp, ts), like)


def _plan_of(state: ElementState) -> Plan | None:
    entry = _HOST.get(id(state.coefs))
    if entry is not None and entry[0]() is state.coefs:
        return entry[1]
    return None


def _columns(xp, table: Array, rows: Array, shape: tuple) -> Array:
    """``table[rows]`` as (*element shape, columns)."""
    flat = xp.reshape(rows, (-1,))
    picked = table.index_select(0, flat) if ops.is_torch(xp) else xp.take(table, flat, axis=0)
    return xp.reshape(picked, (*shape, table.shape[1]))


def _element_noise(xp, state: ElementState, rel: Array, x: Array, eager: bool) -> Array:
    """Each element's own draw at its own call (see the module doc)."""
    eshape = tuple(state.start.shape)
    axes = [a for a, n in enumerate(eshape) if n > 1]
    moved = [a for a in range(x.ndim) if a not in axes]
    count = int(np.prod(eshape))
    block = tuple(x.shape[a] for a in moved)
    if eager:
        keys = ops.to_numpy64(state.keys).astype(np.int64).reshape(-1)
        rels = np.asarray(rel if isinstance(rel, np.ndarray) else ops.to_numpy64(rel))
        rels = rels.astype(np.int64).reshape(-1)
    else:
        keys = xp.reshape(state.keys, (-1,))
        rels = xp.reshape(rel, (-1,))
    if ops.is_jax(xp) and not eager:
        import jax

        like = xp.zeros((), dtype=x.dtype)

        def draw(k, n):
            return ops.normal(k, xp.maximum(n, 0), block, x.dtype, like)

        z = jax.vmap(draw)(keys, rels)
    else:
        sub = xp.zeros(block, dtype=x.dtype, device=ops.device(x))
        if eager:  # the host knows each element's seed and call: the solo eager draw
            parts = [ops.host_normal(ops.seed_array(xp, int(keys[e]), x),
                                     max(int(rels[e]), 0), sub) for e in range(count)]  # fmt: skip
        else:  # compiled PyTorch: the counter-based stream, no host read
            zero = xp.zeros_like(rels[0])
            parts = [ops.normal(keys[e], xp.maximum(rels[e], zero), block, x.dtype, sub)
                     for e in range(count)]  # fmt: skip
        z = xp.stack(parts)
    # (count, *block) back to the sample's layout
    z = xp.reshape(z, (*[eshape[a] for a in axes], *block))
    order = axes + moved
    inverse = [order.index(a) for a in range(x.ndim)]
    return xp.permute_dims(z, tuple(inverse))


def _check(name, state, sample, prediction, noise, stochastic):
    xp = ops.namespace(sample, prediction)
    if ops.namespace(state.coefs) is not xp:
        raise TypeError(
            f"the state holds {type(state.coefs).__name__} arrays but step was given "
            f"{type(sample).__name__} arrays; init and step must use one array library"
        )
    shape = tuple(sample.shape)
    if tuple(prediction.shape) != shape:
        raise ValueError(
            f"sample and prediction must have the same shape, got {shape} "
            f"and {tuple(prediction.shape)}"
        )
    eshape = tuple(state.start.shape)
    pairs = zip(eshape, shape, strict=False)
    if len(eshape) != len(shape) or any(e not in (1, s) for e, s in pairs):
        raise ValueError(f"sample shape {shape} does not match the offsets' shape {eshape}")
    history = state.history  # the template's shape, where the loop holds any history
    held = (tuple(history.shape[2:]) if history.shape[0] else None) if ops.is_jax(xp) else (
        tuple(history[0].shape) if history else None)  # fmt: skip
    if held is not None and held != shape:
        raise ValueError(f"sample shape {shape} differs from the template's {held} given to init")
    engine.check_operands(name, xp, state.coefs.dtype, sample, prediction, noise, stochastic)
    return xp


def check_maker(name: str, call: str, state: ElementState, fingerprint, describe) -> None:
    """Refuses a state another config made (where its fingerprint is readable for free)."""
    if fingerprint is None or state.fingerprint is None:
        return
    made = ops.concrete_int(state.fingerprint[0])
    if made is not None and made != fingerprint:
        raise ValueError(engine._foreign(name, call, made, fingerprint, describe))


def step(
    name: str, state: ElementState, sample: Array, prediction: Array, noise: Array | None, *,
    process, stochastic: bool, fingerprint: int | None = None, describe_maker=None,
) -> tuple[ElementState, Array]:  # fmt: skip
    """One global call: every element at its own row."""
    check_maker(name, "step", state, fingerprint, describe_maker)
    xp = _check(name, state, sample, prediction, noise, stochastic)
    dtype = state.coefs.dtype
    x = sample if sample.dtype == dtype else xp.astype(sample, dtype)
    m = prediction if prediction.dtype == dtype else xp.astype(prediction, dtype)
    z = None if noise is None else (noise if noise.dtype == dtype else xp.astype(noise, dtype))
    k = None if ops.is_jax(xp) else ops.host_index(state.step)
    host = _plan_of(state) if k is not None else None
    if host is not None:
        if k >= host.num_calls:
            raise IndexError(
                f"{name}.step called after the last of its {host.num_calls} model calls "
                f"(call index {k}); call init again to start a new loop"
            )
        out, history = _host_step(xp, state, host, k, x, m, z, process, stochastic)
    else:
        out, history = _traced_step(xp, state, x, m, z, process, stochastic, k is None)
    if out.dtype != sample.dtype:
        out = xp.astype(out, sample.dtype)
    new_step = state.step + 1 if k is None else ops.next_step(state.step, k)
    return state._replace(step=new_step, history=history), out


class _Coef:
    """One coefficient column at one call on the eager path: a Python float where every
    element has the same value (then the uniform engine's arithmetic), else an array of
    the element shape."""

    __slots__ = ("uniform", "value", "zero")

    def __init__(self, uniform: bool, value: Any) -> None:
        self.uniform = uniform
        self.zero = uniform and value == 0
        self.value = value


def _combine(xp, terms: list, like: Array) -> Array:
    """Σ c · A for (_Coef, array) terms, skipping zero columns, in a new array."""
    floats = [(c.value, a) for c, a in terms if c.uniform and not c.zero]
    arrays = [(c.value, a) for c, a in terms if not c.uniform]
    out = ops.combine(floats) if floats else None
    for c, a in arrays:
        if out is None:
            out = c * a
        elif hasattr(out, "addcmul_"):  # torch: in place into the array made here
            out.addcmul_(c, a)
        else:
            out = out + c * a
    return xp.zeros_like(like) if out is None else out


def _host_calls(xp, host: Plan, like: Array, processes: bool) -> list:
    """What the eager step of each global call computes, with its coefficients as Python
    floats (uniform columns) or element-shaped arrays: per call (x̂_0 terms, output terms,
    noise coefficient, ring writes), the terms as (coefficient, source): "x", "m", "d", a
    ring index. Computed once per plan, dtype and device, vectorized over the calls."""
    calls = np.arange(host.num_calls).reshape((-1,) + (1,) * host.start.ndim)
    rows = rows_at(host, calls)  # (K, *element shape)
    eshape = host.start.shape
    count = host.num_calls

    def columns(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        values = table[rows].reshape(count, -1, table.shape[-1])  # (K, E, C)
        uniform = np.all(values == values[:, :1], axis=1)  # (K, C)
        first = values[:, 0, :].tolist()
        return values, uniform, first

    def coef(values, uniform, first, k: int, j: int) -> _Coef:
        if uniform[k, j]:
            return _Coef(True, first[k][j])
        return _Coef(False, ops.asarray(xp, values[k, :, j].reshape(eshape), like.dtype, like))

    cv, cu, cf = columns(host.coefs)
    width = host.writes.shape[1]
    lags = host.reads.shape[1] // width
    if lags:
        rv, ru, rf = columns(host.reads)
        wv, wu, wf = columns(host.writes.reshape(host.writes.shape[0], width * 3))
        live_reads = np.any(rv != 0, axis=1)  # (K, L * W)
        live_writes = np.any(wv != 0, axis=1)  # (K, W * 3)
    out = []
    for k in range(count):
        x0 = ()
        if processes:
            x0 = ((coef(cv, cu, cf, k, _C["x0_sample"]), "x"),
                  (coef(cv, cu, cf, k, _C["x0_output"]), "m"))  # fmt: skip
        terms = [(coef(cv, cu, cf, k, _C["out_sample"]), "x"),
                 (coef(cv, cu, cf, k, _C["out_output"]), "m")]  # fmt: skip
        if processes:
            terms.append((coef(cv, cu, cf, k, _C["out_x0"]), "d"))
        writes = []
        if lags:
            for j in np.flatnonzero(live_reads[k]):
                terms.append((coef(rv, ru, rf, k, int(j)), int(j)))
            for w in range(width):
                writes.append([(coef(wv, wu, wf, k, 3 * w + i), "xmd"[i]) for i in range(3)
                               if live_writes[k, 3 * w + i]])  # fmt: skip
        terms = [(c, src) for c, src in terms if not c.zero]
        noise = coef(cv, cu, cf, k, _C["out_noise"])
        out.append((x0, terms, None if noise.zero else noise, writes, lags, width))
    return out


def _host_step(xp, state, host, k, x, m, z, process, stochastic):
    """Eager NumPy / PyTorch: the rows on the host (each call's terms computed once per
    plan, dtype and device), uniform columns as Python floats, only the terms some element
    needs."""
    cache = _HOST[id(state.coefs)][2]
    key = (x.dtype, ops.device(x))
    calls = cache.get(key)
    if calls is None:
        calls = cache[key] = _host_calls(xp, host, x, process is not None)
    x0, terms, noise_coef, writes, lags, width = calls[k]
    history = state.history
    values = {"x": x, "m": m}
    if process is not None:
        values["d"] = process(_combine(xp, [(c, values[s]) for c, s in x0], x), True)
    parts = [(c, history[s] if isinstance(s, int) else values[s]) for c, s in terms]
    if stochastic and noise_coef is not None:
        if z is None:
            z = _element_noise(xp, state, np.asarray(k - host.start), x, eager=True)
        parts.append((noise_coef, z))
    out = _combine(xp, parts, x)
    if lags:
        now = tuple(
            _combine(xp, [(c, values[s]) for c, s in parts_w], x) if parts_w else history[w]
            for w, parts_w in enumerate(writes)
        )
        history = now + tuple(history[: width * (lags - 1)])
    return out, history


def _traced_step(xp, state, x, m, z, process, stochastic, traced):
    """Every backend without a host plan (``jax.jit``, ``torch.compile``, eager JAX):
    gathered rows, every term."""
    eshape = tuple(state.start.shape)
    k = state.step
    rows = rows_at(state, k, xp)
    c = _columns(xp, state.coefs, rows, eshape)

    def col(name_: str) -> Array:
        return c[..., _C[name_]]

    d = None
    if process is not None:
        d = process(col("x0_sample") * x + col("x0_output") * m, True)
    out = col("out_sample") * x + col("out_output") * m
    if d is not None:
        out = out + col("out_x0") * d
    width = state.writes.shape[1]
    lags = state.reads.shape[1] // width
    history = state.history
    if lags:
        r = _columns(xp, state.reads, rows, eshape)
        flat = xp.reshape(rows, (-1,))
        w_all = (state.writes.index_select(0, flat) if ops.is_torch(xp)
                 else xp.take(state.writes, flat, axis=0))  # fmt: skip
        w_all = xp.reshape(w_all, (*eshape, width, 3))
        operands = [x, m] if d is None else [x, m, d]
        now = []
        for w in range(width):
            value = w_all[..., w, 0] * x + w_all[..., w, 1] * m
            if d is not None:
                value = value + w_all[..., w, 2] * d
            now.append(value)
        del operands
        if ops.is_jax(xp):
            from jax import lax

            # the write first, then the reads of the updated ring: the slot written (k mod
            # L + 1) is never one read (k - lag), and the reads' dependency on the update
            # lets XLA update the ring in place (no copy of it in a loop body)
            history = lax.dynamic_update_index_in_dim(
                history, xp.stack([v.astype(history.dtype) for v in now]), k % (lags + 1), 0
            )
            for lag in range(1, lags + 1):
                slot = (k - lag + (lags + 1) * (1 << 20)) % (lags + 1)  # k - lag >= -lags
                past = lax.dynamic_index_in_dim(history, slot, 0, keepdims=False)
                for w in range(width):
                    out = out + r[..., (lag - 1) * width + w] * past[w]
        else:
            for j in range(lags * width):
                out = out + r[..., j] * history[j]
            history = tuple(now) + tuple(history[: width * (lags - 1)])
    if stochastic:
        zz = z if z is not None else _element_noise(xp, state, k - state.start, x, eager=False)
        out = out + col("out_noise") * zz
    return out, history


def add_noise(state: ElementState, clean: Array, noise: Array) -> Array:
    """Each element noised to its own first model call."""
    xp = ops.namespace(clean, noise)
    eshape = tuple(state.start.shape)
    c = _columns(xp, state.coefs, state.base, eshape)
    dtype = state.coefs.dtype
    out = c[..., _C["start_clean"]] * xp.astype(clean, dtype) + c[
        ..., _C["start_noise"]
    ] * xp.astype(noise, dtype)
    return out if out.dtype == clean.dtype else xp.astype(out, clean.dtype)
