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

    The rows are every program's calls, then the wait row and the done row. ``reads`` has,
    per row, the coefficient of each (operand, lag) of the ring: operand w (0: the held
    sample, 1: the model output, 2: the processed x̂_0) of the call ``lag`` = 1..L back,
    at column ``w * L + lag - 1``.
    """

    step: Array  # 0-d int32: the global call index
    coefs: Array  # (R, 8) per-row coefficients (engine.COEF_COLUMNS)
    reads: Array  # (R, W * L) per-row ring coefficients
    start: Array  # o's shape, int32: the global call of each element's first row
    base: Array  # o's shape, int32: the row of each element's first call
    length: Array  # o's shape, int32: each element's number of calls
    keys: Array  # o's shape, int32: each element's noise seed (element_key)
    history: Any  # the ring: W * L arrays (NumPy, PyTorch; lag-major, newest first) or one
    # (L + 1, W, *shape) array (JAX, indexed by the global call modulo L + 1)


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


class Plan(NamedTuple):
    """A per-element loop on the host: its tables and each element's place in them."""

    coefs: np.ndarray  # (R, 8)
    reads: np.ndarray  # (R, W * L)
    timesteps: np.ndarray  # (R,)
    start: np.ndarray  # element shape
    base: np.ndarray
    length: np.ndarray
    num_calls: int  # global calls of the loop
    operands: int  # W
    lags: int  # L
    stochastic: bool
    programs: tuple  # the programs, in row order


def plan(programs: list, which: np.ndarray, offsets: np.ndarray, processes_x0: bool) -> Plan:
    """The plan of elements whose program is ``programs[which_e]``, starting at ``offsets_e``."""
    operands = (SAMPLE, OUTPUT, X0) if processes_x0 else (SAMPLE, OUTPUT)
    lags = max((lag for p in programs for (_, lag) in p.held.terms), default=0)
    width = len(operands) * lags
    rows_c, rows_r, rows_t, bases = [], [], [], []
    total = 0
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
        r = np.zeros((n, width))
        for (operand, lag), col in held.terms.items():
            if lag > 0:
                r[:, operands.index(operand) * lags + lag - 1] = col
        rows_c.append(c)
        rows_r.append(r)
        rows_t.append(np.asarray(p.timesteps, np.float64))
        bases.append(total)
        total += n
    identity = np.zeros((2, len(engine.COEF_COLUMNS)))  # the wait row, then the done row
    identity[:, _C["out_sample"]] = 1.0
    identity[:, _C["start_clean"]] = np.nan  # add_noise reads each element's first row
    identity[:, _C["start_noise"]] = np.nan
    coefs = np.concatenate([*rows_c, identity])
    reads = np.concatenate([*rows_r, np.zeros((2, width))])
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
    return Plan(coefs, reads, timesteps, start, base, length, num_calls, len(operands), lags,
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
    out = []
    for k in range(p.num_calls):
        rel = np.clip(k - p.start, 0, p.length - 1)
        out.append(p.timesteps[p.base + rel])
    return np.stack(out)


# -- init, step, add_noise -------------------------------------------------------------------

_HOST: dict[int, tuple[Any, Plan]] = {}


def init(p: Plan, sample_template: Array, key: Any) -> tuple[ElementState, Array]:
    xp = ops.namespace(sample_template)
    dtype = ops.compute_dtype(xp, sample_template.dtype)
    like = sample_template
    dev = ops.device(sample_template)
    shape = tuple(sample_template.shape)
    index = ops.index_dtype(xp)
    flat = np.arange(p.start.size).reshape(p.start.shape)
    keys = np.vectorize(lambda e: element_key(key, int(e)), otypes=[np.int64])(flat)
    keys = np.where(keys >= 1 << 31, keys - (1 << 32), keys)
    as_int = lambda a: xp.asarray(np.asarray(a, np.int64), dtype=index, device=dev)  # noqa: E731
    state_coefs = ops.asarray(xp, p.coefs, dtype, like)
    ring = p.operands * p.lags
    if ops.is_jax(xp):
        history = xp.zeros((p.lags + 1, p.operands, *shape) if ring else (0, *shape), dtype=dtype)
    else:
        history = tuple(xp.zeros(shape, dtype=dtype, device=dev) for _ in range(ring))
    state = ElementState(
        step=xp.asarray(0, dtype=xp.int32, device=dev),
        coefs=state_coefs,
        reads=ops.asarray(xp, p.reads, dtype, like),
        start=as_int(p.start),
        base=as_int(p.base),
        length=as_int(p.length),
        keys=xp.asarray(keys.astype(np.int32), dtype=xp.int32, device=dev),
        history=history,
    )
    if not ops.is_jax(xp):  # the eager path reads the plan on the host (see _plan_of)
        ident = id(state_coefs)
        with contextlib.suppress(TypeError):  # arrays without weak references: no fast path
            ref = weakref.ref(state_coefs, lambda _, k=ident, table=_HOST: table.pop(k, None))
            _HOST[ident] = (ref, p)
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
            host_keys = ops.to_numpy64(keys).astype(np.int64)
            host_rels = np.maximum(ops.to_numpy64(rels).astype(np.int64), 0)
            parts = [ops.host_normal(ops.seed_array(xp, int(host_keys[e]), x),
                                     int(host_rels[e]), sub) for e in range(count)]  # fmt: skip
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


def step(
    name: str, state: ElementState, sample: Array, prediction: Array, noise: Array | None, *,
    process, stochastic: bool,
) -> tuple[ElementState, Array]:  # fmt: skip
    """One global call: every element at its own row."""
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
    for label, arr in (("sample", sample), ("prediction", prediction)):
        if not ops.is_float(arr):
            raise TypeError(f"expected a floating-point {label}, got dtype {arr.dtype}")
    eshape = tuple(state.start.shape)
    pairs = zip(eshape, shape, strict=False)
    if len(eshape) != len(shape) or any(e not in (1, s) for e, s in pairs):
        raise ValueError(f"sample shape {shape} does not match the offsets' shape {eshape}")
    dtype = state.coefs.dtype
    if noise is not None:
        if not stochastic:
            raise ValueError(f"{name} with this configuration draws no noise; noise= is not used")
        if tuple(noise.shape) != shape:
            raise ValueError(
                f"noise must have the sample's shape {shape}, got {tuple(noise.shape)}"
            )
        noise = noise if noise.dtype == dtype else xp.astype(noise, dtype)
    x = sample if sample.dtype == dtype else xp.astype(sample, dtype)
    m = prediction if prediction.dtype == dtype else xp.astype(prediction, dtype)
    k_host = None if ops.is_jax(xp) else ops.host_index(state.step)
    host = _plan_of(state) if k_host is not None else None
    if k_host is not None and k_host >= (host.num_calls if host else 1 << 62):
        raise IndexError(
            f"{name}.step called after the last of its {host.num_calls} model calls "
            f"(call index {k_host}); call init again to start a new loop"
        )
    k = state.step
    rel = k - state.start
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
    lags = state.reads.shape[1] // (3 if process is not None else 2) if state.reads.shape[1] else 0
    width = 3 if process is not None else 2
    operands = (x, m, d)[:width]
    if lags:
        r = _columns(xp, state.reads, rows, eshape)
        live = None
        if host is not None:  # eager: only the ring entries some element reads now
            host_rows = rows_at(host, k_host)
            live = np.flatnonzero(np.any(host.reads[host_rows.reshape(-1)] != 0, axis=0))
        history = state.history
        for j in range(width * lags) if live is None else live:
            w, lag = divmod(int(j), lags)
            lag += 1
            if ops.is_jax(xp):
                from jax import lax

                slot = (k - lag + (lags + 1) * (1 << 20)) % (lags + 1)  # k - lag >= -lags
                value = lax.dynamic_index_in_dim(history, slot, 0, keepdims=False)[w]
            else:
                value = history[(lag - 1) * width + w]
            out = out + r[..., j] * value
        if ops.is_jax(xp):
            from jax import lax

            slot = k % (lags + 1)
            now = xp.stack([o.astype(dtype) for o in operands])
            history = lax.dynamic_update_index_in_dim(history, now, slot, 0)
        else:  # a shift register: the newest call's operands first (copies: callers may
            # reuse their arrays); an operand no row ever reads back stays zeros
            read = None if host is None else host.reads.reshape(-1, width, lags).any(axis=(0, 2))
            now = tuple(
                ops.combine([(1.0, o)]) if read is None or read[w] else history[w]
                for w, o in enumerate(operands)
            )
            history = now + tuple(history[: width * (lags - 1)])
    else:
        history = state.history
    if stochastic:
        if noise is not None:
            z = noise
        else:
            z = _element_noise(xp, state, rel, x, eager=k_host is not None)
        out = out + col("out_noise") * z
    if out.dtype != sample.dtype:
        out = xp.astype(out, sample.dtype)
    return state._replace(step=k + 1, history=history), out


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
