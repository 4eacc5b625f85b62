"""The few array primitives every scheduler's ``step`` is written in.

The schedulers are written once against the array API standard (via ``array-api-compat``),
so the same code runs on NumPy, PyTorch and JAX. This module holds the handful of helpers
where one backend has a much faster spelling of the same arithmetic (PyTorch's in-place
fused multiply-add, ``lerp``), plus the counter-based random numbers that make stochastic
steps reproducible and compilable on every backend. No scheduler math lives here.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

Array = Any


# array type -> its namespace (NumPy and PyTorch types; JAX's cover tracers: not cached).
# Keyed by single types, filled when a type is first seen eagerly (init): a lookup under
# torch.compile then never inserts, so dynamo's guard on the dict's size holds
_NAMESPACES: dict[type, Any] = {}


def template(sample_template: Any) -> Array:
    """``init``'s sample template as an array: a JAX ``jax.ShapeDtypeStruct`` (a shape, a
    dtype and an optional sharding, no values: Bumblebee's ``Nx.template``) becomes zeros
    of that spec; any other value is returned as it is (an array's values are never
    read)."""
    kind = type(sample_template)
    if kind.__name__ == "ShapeDtypeStruct" and kind.__module__.split(".")[0] == "jax":
        import jax.numpy as jnp

        shape, dtype = sample_template.shape, sample_template.dtype
        sharding = getattr(sample_template, "sharding", None)
        if sharding is None:
            return jnp.zeros(shape, dtype)
        return jnp.zeros(shape, dtype, device=sharding)
    return sample_template


def namespace(*arrays: Array):
    """The array-API namespace of ``arrays`` (all from one library)."""
    found = [_NAMESPACES.get(type(a)) for a in arrays]
    if found and found[0] is not None and all(xp is found[0] for xp in found):
        return found[0]
    types = tuple(type(a) for a in arrays)
    try:
        xp = array_api_compat.array_namespace(*arrays)
    except TypeError as err:
        kinds = ", ".join(sorted({t.__name__ for t in types}))
        raise TypeError(
            f"expected NumPy, PyTorch or JAX arrays (all of one library), got: {kinds}"
        ) from err
    for t in types:
        if t.__module__.split(".")[0] in ("numpy", "torch"):
            _NAMESPACES[t] = xp
    return xp


def device(x: Array):
    return array_api_compat.device(x)


def is_torch(xp) -> bool:
    return array_api_compat.is_torch_namespace(xp)


def is_numpy(xp) -> bool:
    return array_api_compat.is_numpy_namespace(xp)


def is_jax(xp) -> bool:
    return array_api_compat.is_jax_namespace(xp)


def compute_dtype(xp, dtype):
    """The dtype a step computes in: float64 for float64 samples, float32 for the rest.

    Half-precision samples are upcast for the arithmetic and cast back at the end, so no
    intermediate (1/sqrt(ᾱ) reaches ~70 for common schedules) can overflow float16.
    """
    if not xp.isdtype(dtype, "real floating"):
        raise TypeError(f"expected a floating-point sample, got dtype {dtype}")
    return xp.float64 if dtype == xp.float64 else xp.float32


def index_dtype(xp):
    """int64 where the backend has it enabled, else int32 (JAX without x64)."""
    if is_jax(xp):
        import jax

        return xp.int64 if jax.config.jax_enable_x64 else xp.int32
    return xp.int64


def asarray(xp, values: np.ndarray, dtype, like: Array) -> Array:
    """A host NumPy array copied to the backend, dtype and device of ``like``: always a new
    array (never a view of ``values``, which may be shared)."""
    values = np.asarray(values)
    if values.ndim == 0:  # torch refuses to cast a 0-d NumPy array on copy (float64 -> 32)
        one = xp.asarray(values.reshape(1), dtype=dtype, device=device(like), copy=True)
        return xp.reshape(one, ())
    return xp.asarray(values, dtype=dtype, device=device(like), copy=True)


def select(flag: Array, a: Array, b: Array) -> Array:
    """``a`` where the 0-d ``flag`` is 1, ``b`` where it is 0, chosen without a host sync.

    Exact for finite values on every backend (PyTorch's lerp returns ``end`` exactly at
    weight 1 and ``start`` exactly at weight 0, and is much faster than its ``where``).
    """
    xp = namespace(a)
    if is_torch(xp):
        import torch

        return torch.lerp(b, a, flag)
    return xp.where(flag > 0.5, a, b)


def clip(x: Array, limit: float, owned: bool) -> Array:
    """x clipped to [-limit, limit]; in place when the caller owns ``x``."""
    xp = namespace(x)
    if owned and is_torch(xp):
        return x.clamp_(-limit, limit)
    if owned and is_numpy(xp):
        return np.clip(x, -limit, limit, out=x)
    return xp.clip(x, -limit, limit)


def concrete_int(x: Array) -> int | None:
    """The value of a 0-d integer array when reading it costs no device sync, else None.

    Used where eager code may branch on the step index (the engine's eager path, the
    past-the-end error); compiled or traced code (``jax.jit``, ``torch.compile``) and
    arrays on accelerators get None.
    """
    if type(x) is np.ndarray or isinstance(x, np.generic):
        return int(x)
    module = type(x).__module__
    if module.startswith("torch"):
        import torch

        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return None
        return int(x)
    if module.startswith("jax"):
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
        return int(x) if next(iter(x.devices())).platform == "cpu" else None
    return None


# ----------------------------------------------------------------------------------------
# Counter-based random normals: the same stream on every backend, compilable, no state but
# (key, counter). Each element hashes (key, counter, index) with the "lowbias32" integer
# mixer (C. Wellons, 2018) in int32 arithmetic, which wraps modulo 2**32 on every backend;
# two 24-bit uniforms then give a normal by the Box-Muller transform.
# ----------------------------------------------------------------------------------------

_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # the same bits as a signed int32


_TORCH_MULTIPLIERS: dict[Any, tuple[Array, Array]] = {}  # device -> (M1, M2) int32 tensors


def _multipliers(x: Array) -> tuple[Any, Any]:
    """(M1, M2) for ``x``'s backend: Python ints, or on PyTorch 0-d int32 tensors (one pair
    per device, never handed out). torch.compile (2.13) folds a Python-int factor into a
    range analysis that saturates an int32 product whose operand's range it knows (the
    counter of a Brownian-tree node, ``(k >> d) + 2**d``) at 2**31 - 1 instead of wrapping
    it: the draws under compile differed from NumPy's. A tensor factor is not folded."""
    if type(x).__module__.split(".")[0] != "torch":
        return _M1, _M2
    dev = x.device
    pair = _TORCH_MULTIPLIERS.get(dev)
    if pair is None:
        import torch

        pair = (torch.tensor(_M1, dtype=torch.int32, device=dev),
                torch.tensor(_M2, dtype=torch.int32, device=dev))  # fmt: skip
        _TORCH_MULTIPLIERS[dev] = pair
    return pair


def _mix32(x: Array) -> Array:
    m1, m2 = _multipliers(x)
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * m1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * m2
    return x ^ ((x >> 16) & 0xFFFF)


def _wrapping(xp):
    return np.errstate(over="ignore") if is_numpy(xp) else contextlib.nullcontext()


def seed_array(xp, key: Any, like: Array) -> Array:
    """A 0-d int32 seed from an integer seed or a JAX PRNG key, on ``like``'s device."""
    if isinstance(key, bool):
        raise TypeError(f"expected an integer seed or a JAX PRNG key, got: {key!r}")
    if type(like).__module__.split(".")[0] == "torch":
        _multipliers(like)  # made here, eagerly: a compiled step then finds them (one graph)
    if isinstance(key, int | np.integer):
        if not 0 <= int(key) < 1 << 32:  # the noise streams take 32 bits: no silent wrap
            raise ValueError(
                f"key: an integer seed must lie in [0, 2**32), got: {_short(key)}; "
                "derive a 32-bit seed from a larger one yourself"
            )
        word = int(key)
        word = word - (1 << 32) if word >= (1 << 31) else word
        return xp.asarray(word, dtype=xp.int32, device=device(like))
    if is_jax(xp):
        import jax

        data = key
        dtype = getattr(key, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            data = jax.random.key_data(key)
        elif dtype is None or not (
            np.issubdtype(dtype, np.integer) and dtype != np.bool_
        ):  # a float, NaN or a list was cast to a key silently
            raise TypeError(
                "expected an integer seed or a JAX PRNG key (jax.random.key or PRNGKey: "
                f"integer key data), got: {_short(key)}"
            )
        data = xp.reshape(xp.asarray(data), (-1,)).astype(xp.uint32).astype(xp.int32)
        word = data[0]
        for i in range(1, data.shape[0]):
            word = _mix32(word ^ data[i])
        return word
    raise TypeError(
        "expected an integer seed (any backend) or a JAX PRNG key (JAX arrays), "
        f"got: {type(key).__name__}"
    )


def normal(seed: Array, counter: Array, shape: tuple[int, ...], dtype, like: Array) -> Array:
    """Standard normal noise of ``shape``, a pure function of (seed, counter)."""
    xp = namespace(like)
    n = math.prod(shape)
    with _wrapping(xp):
        idx = xp.arange(n, dtype=xp.int32, device=device(like))
        stream = _mix32(seed ^ _mix32(xp.astype(counter, xp.int32) + 0x3C6EF372))
        bits_a = _mix32(_mix32(2 * idx) ^ stream)
        bits_b = _mix32(_mix32(2 * idx + 1) ^ stream)
    scale = 1.0 / (1 << 24)
    u1 = (xp.astype((bits_a >> 8) & 0xFFFFFF, xp.float32) + 0.5) * scale
    u2 = (xp.astype((bits_b >> 8) & 0xFFFFFF, xp.float32) + 0.5) * scale
    u1, u2 = xp.astype(u1, dtype), xp.astype(u2, dtype)
    z = xp.sqrt(-2.0 * xp.log(u1)) * xp.cos((2.0 * np.pi) * u2)
    return xp.reshape(z, shape)


# ----------------------------------------------------------------------------------------
# The engine's eager path: Python-float coefficients, only the nonzero terms.
# ----------------------------------------------------------------------------------------


def to_numpy64(x: Array) -> np.ndarray:
    """Any backend's array as a NumPy float64 array on the host (waits for JAX)."""
    if hasattr(x, "block_until_ready"):
        x.block_until_ready()
    if hasattr(x, "detach"):  # torch
        x = x.detach().cpu()
        if x.is_floating_point():  # (bfloat16 has no NumPy dtype: widened in torch, exactly)
            x = x.double()
    return np.asarray(x, dtype=np.float64)


def host_index(step: Array) -> int | None:
    """The step counter's value where reading it is free (see :func:`concrete_int`)."""
    return concrete_int(step)


_STEP_TENSORS: dict[tuple[str, int], tuple[Array, int]] = {}


def next_step(step: Array, index: int) -> Array:
    """``step + 1`` for a counter whose value ``index`` is known on the host, without a
    kernel launch (a cached 0-d tensor on PyTorch, shared by the states that reach it). A
    cached tensor a caller wrote into (its state's ``step += 1``: torch bumps the tensor's
    version) is never handed out again: a fresh one replaces it."""
    xp = namespace(step)
    if is_torch(xp):
        key = (str(step.device), index + 1)
        cached = _STEP_TENSORS.get(key)
        if cached is not None and cached[0]._version == cached[1]:
            return cached[0]
        import torch

        out = torch.tensor(index + 1, dtype=torch.int32, device=step.device)
        if len(_STEP_TENSORS) < 100_000 or cached is not None:
            _STEP_TENSORS[key] = (out, out._version)
        return out
    if is_numpy(xp):
        return np.asarray(index + 1, dtype=np.int32)
    return step + 1


def combine(terms: Sequence[tuple[float, Array]]) -> Array:
    """Σ c · A over the terms whose Python-float coefficient c is nonzero, in a new array.

    Never writes into any of the given arrays; the result never aliases one of them.
    """
    out = None
    live = [t for t in terms if t[0] != 0]
    if len(live) > 1 and hasattr(live[0][1], "add_"):  # torch: a unit term first saves a pass
        unit = next((i for i, (c, _) in enumerate(live) if c == 1.0), None)
        if unit is not None:
            first = live.pop(unit)
            c1, a1 = live.pop(0)
            out = torch_add(first[1], a1, c1)
            terms = live
    for c, a in terms:
        if c == 0:
            continue
        if out is None:
            out = a * c
            if isinstance(out, np.generic):  # NumPy gives scalars for 0-d arrays
                out = np.asarray(out)
        elif type(out) is np.ndarray:
            out += c * a
        elif hasattr(out, "add_"):  # torch: in place into the array this function made
            out.add_(a, alpha=c)
        else:
            out = out + c * a
    if out is None:
        a = terms[0][1]
        return namespace(a).zeros_like(a)
    return out


def combine_all(terms: Sequence[tuple[float, Array]]) -> Array:
    """Σ c · A over every term, zero coefficients included (0 · inf = NaN, as a compiled
    step computes it), in a new array."""
    (c0, a0), rest = terms[0], terms[1:]
    out = a0 * c0
    if isinstance(out, np.generic):
        out = np.asarray(out)
    for c, a in rest:
        out = out + c * a
    return out


def all_finite(x: Array) -> bool:
    """Whether every value of ``x`` is finite (eager CPU arrays: one read, a host sync).

    The sum is finite whenever every value is, except when finite values overflow it; only
    then are the values checked one by one.
    """
    if hasattr(x, "add_"):  # torch
        return math.isfinite(x.sum().item()) or bool(x.isfinite().all())
    with np.errstate(over="ignore", invalid="ignore"):
        return math.isfinite(np.add.reduce(x, axis=None)) or bool(np.isfinite(x).all())


def torch_add(a: Array, b: Array, alpha: float) -> Array:
    """a + alpha · b in one pass, into a new tensor."""
    return a.add(b, alpha=alpha)


def row(table: Array, step: Array) -> Array:
    """Row ``step`` of ``table`` by a gather (no host sync; compilable)."""
    xp = namespace(table)
    if is_torch(xp):
        return table.index_select(0, step.reshape(1))[0]
    return table[step]


def timestep_dtype(xp, timesteps: np.ndarray):
    """Integer timesteps (a NumPy integer array) stay integers; float ones (Euler-type,
    EDM: diffusers' are float there) are floats."""
    if np.asarray(timesteps).dtype.kind in "iu":
        return index_dtype(xp)
    if is_jax(xp):
        import jax

        return xp.float64 if jax.config.jax_enable_x64 else xp.float32
    return xp.float64


MAX_STEPS = 10_000  # the most steps (and custom grid points) a loop may have: building one
# costs at most a few seconds (the slowest classes run Python per call in init)
MAX_CALLS = 200_000  # the most model calls of one loop, where an option multiplies the calls
# per step (correctors, resampling jumps): its tables are built per call


def check_calls(owner: str, calls: int, options: str) -> int:
    """``calls``, or a ValueError naming the ``options`` that multiply them past
    :data:`MAX_CALLS` (checked before any per-call table is built)."""
    if calls > MAX_CALLS:
        raise ValueError(
            f"{owner}: {options} give {calls} model calls in one loop; expected at most "
            f"{MAX_CALLS}: lower them or the number of steps"
        )
    return calls


def check_step_arrays(owner: str, **arrays: Any) -> None:
    """A TypeError naming the argument of ``owner.step`` that is not an array (a model that
    returned a float or None gave an AttributeError deep in the step); ``noise`` and
    ``unconditional`` may be None."""
    for what, arr in arrays.items():
        if arr is None and what in ("noise", "unconditional"):
            continue
        if not (hasattr(arr, "shape") and hasattr(arr, "dtype")):
            raise TypeError(
                f"{owner}.step: the {what} must be an array (NumPy, PyTorch or JAX, as the "
                f"state's), got {type(arr).__name__}"
            )


def check_num_steps(num_steps: Any, minimum: int = 1, maximum: int = MAX_STEPS) -> int:
    """``num_steps`` as an int in [minimum, maximum], or a clear TypeError / ValueError
    (checked before anything is computed)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise TypeError(f"num_steps must be an integer, got: {_short(num_steps)}")
    if not minimum <= num_steps <= maximum:
        raise ValueError(
            f"num_steps: expected an integer in [{minimum}, {maximum}], got: {_short(num_steps)}"
        )
    return int(num_steps)


def _short(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to about ``limit`` characters (errors never echo a huge value)."""
    from .options import describe

    return describe(value, limit)


def is_float(x: Array) -> bool:
    """Whether ``x`` has a real floating dtype (cheap on every backend)."""
    dtype = x.dtype
    is_fp = getattr(dtype, "is_floating_point", None)  # torch
    if is_fp is not None:
        return bool(is_fp) and not getattr(dtype, "is_complex", False)
    kind = getattr(dtype, "kind", None)  # numpy, jax
    if kind is not None:
        return kind == "f" or str(dtype) == "bfloat16"
    return namespace(x).isdtype(dtype, "real floating")


_GENERATORS = threading.local()


def host_normal(seed: Array, index: int, like: Array) -> Array:
    """Standard normal noise for call ``index`` on the eager path.

    PyTorch draws from its own Philox generator, seeded from (seed, index): one kernel, as
    fast as ``torch.randn``. NumPy uses the counter-based stream of :func:`normal`, the
    same one JAX and compiled PyTorch use, so those backends agree draw for draw.
    """
    if hasattr(like, "add_"):  # torch
        import torch

        device = like.device
        gens = _GENERATORS.__dict__
        gen = gens.get(device)
        if gen is None:
            gen = gens[device] = torch.Generator(device=device)
        gen.manual_seed(_splitmix64(((int(seed) % (1 << 32)) << 32) | (index & 0xFFFFFFFF)))
        if like.dtype == torch.float32 and device.type == "cpu":
            return torch.randn(like.shape, generator=gen)
        return torch.randn(like.shape, generator=gen, dtype=like.dtype, device=device)
    xp = namespace(like)
    return normal(seed, xp.asarray(index, dtype=xp.int32), tuple(like.shape), like.dtype, like)


def _splitmix64(z: int) -> int:
    """A 64-bit integer mixer (Steele et al. 2014): every bit of the seed moves the low 32,
    which are all that PyTorch's CPU generator keeps."""
    mask = (1 << 64) - 1
    z = (z + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)
