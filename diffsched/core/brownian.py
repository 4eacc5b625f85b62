"""Brownian-tree noise: increments of one Brownian path, counter-based and jittable.

A stochastic sampler integrates an SDE whose noise is a Brownian motion W; drawing each
call's normal independently is one choice, and drawing it as the normalised increment of
*one* path between the call's two noise levels is another (Kidger et al. 2021, "Efficient
and Accurate Gradients for Neural SDEs", sec. 4: the virtual Brownian tree; k-diffusion's
``BrownianTreeNoiseSampler``, which dpmpp_sde users rely on): then a seed fixes the path,
and loops with different step counts see the same path, so the same seed gives nearly the
same image at 20 and 40 steps.

The path lives on the time τ ∈ [0, 1]. A scheduler maps its noise level to
τ = σ / (α + σ) (the native sample x = α x_0 + σ ε; for rectified flow τ is σ itself, for
variance-exploding samplers τ = σ / (1 + σ)), a monotone map, so the increments over
disjoint σ intervals are those over disjoint τ intervals. W is evaluated at any τ by
bisection of depth D = :data:`DEPTH` (a Brownian bridge at each node):

    W(1) = Z_0,                                                                     (1)
    W(m) = (W(l) + W(r)) / 2 + sqrt((r - l) / 4) Z_node,  m = (l + r) / 2,           (2)

descending into the half that holds τ (the bits of τ's leaf index, computed once in
float64 on the host: :func:`leaf`), then, inside the leaf [l, r] of width 2^-D,

    W(τ) = W(l) + (τ - l)/(r - l) (W(r) - W(l)) + sqrt((τ - l)(r - τ)/(r - l)) Z_leaf. (3)

Each Z is the standard normal stream of :func:`diffsched.core.ops.normal` keyed by
(seed, node index): node k of depth d has index 2^d + k, the leaf of (3) the index of its
depth-D node, Z_0 index 0. So W is a pure function of (seed, τ), the same on NumPy,
PyTorch and JAX; the joint law of W at points in distinct leaves is exactly Brownian
(bridges are conditionally independent given the dyadic skeleton), and two points in one
leaf (closer than 2^-D ≈ 1e-6) get a linear interpolation of one bridge. A call's noise is

    z = (W(τ') - W(τ)) / sqrt|τ' - τ|,                                               (4)

standard normal, independent across disjoint intervals, and additive:
W(τ'') - W(τ) = (W(τ'') - W(τ')) + (W(τ') - W(τ)).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import ops

Array = Any
DEPTH = 20  # leaves of width 2^-20 ≈ 1e-6 in τ
_TAG = 0x2545F491  # keys the tree's stream apart from the per-call draws of the same seed


def tree_seed(key: Array) -> Array:
    """The tree's seed from a state's 0-d int32 seed."""
    return key ^ _TAG


def _draw(seed: Array, index: Any, like: Array, dtype: Any) -> Array:
    xp = ops.namespace(like)
    if isinstance(index, int):
        index = xp.asarray(index, dtype=xp.int32, device=ops.device(like))
    counter = index
    return ops.normal(seed, counter, tuple(like.shape), dtype, like)


def leaf(t: float) -> tuple[int, float]:
    """(k, f): the level t in [0, 1] as its depth-D leaf k (0 <= k < 2^D) and the fraction
    f in [0, 1] of that leaf below t, computed in float64 (a table holds them exactly in
    any dtype: k < 2^24, and f only weighs the leaf's own bridge)."""
    scaled = float(t) * (1 << DEPTH)
    k = min(math.floor(scaled), (1 << DEPTH) - 1)
    return k, scaled - k


def value_host(seed: Array, t: Any, like: Array, dtype: Any, cache: dict | None = None) -> Array:
    """W(t) (eqs. 1-3) for a level known on the host (a float, or its (k, f) of
    :func:`leaf`); ``cache`` shares the draws of nodes two evaluations both visit."""
    cache = {} if cache is None else cache
    k, frac = leaf(t) if not isinstance(t, tuple) else (int(t[0]), float(t[1]))

    def z(index: int) -> Array:
        if index not in cache:
            cache[index] = _draw(seed, index, like, dtype)
        return cache[index]

    w_lo: Any = 0.0
    w_hi = z(0)  # eq. 1
    for depth in range(DEPTH):
        prefix = k >> (DEPTH - depth)  # the node of this depth on t's path
        w_mid = 0.5 * (w_lo + w_hi) + 2.0 ** (-(depth + 2) / 2) * z((1 << depth) + prefix)  # eq. 2
        if (k >> (DEPTH - 1 - depth)) & 1:
            w_lo = w_mid
        else:
            w_hi = w_mid
    out = w_lo + frac * (w_hi - w_lo)  # eq. 3, leaf width h = 2^-D
    spread = math.sqrt(max(frac * (1.0 - frac), 0.0) * 2.0**-DEPTH)
    if spread != 0.0:
        out = out + spread * z((1 << DEPTH) + k)
    return out


def value_traced(seed: Array, k: Array, frac: Array, like: Array, dtype: Any) -> Array:
    """W at the level (k, f) of :func:`leaf` given as 0-d arrays (under ``jax.jit`` /
    ``torch.compile``): the same draws and arithmetic, eq. 2's branch by ``where``."""
    xp = ops.namespace(like)
    k = xp.astype(k, xp.int32)
    w_lo = xp.zeros(tuple(like.shape), dtype=dtype, device=ops.device(like))
    w_hi = _draw(seed, 0, like, dtype)
    for depth in range(DEPTH):
        node = (k >> (DEPTH - depth)) + (1 << depth)
        w_mid = 0.5 * (w_lo + w_hi) + 2.0 ** (-(depth + 2) / 2) * _draw(seed, node, like, dtype)
        right = ((k >> (DEPTH - 1 - depth)) & 1) == 1
        w_lo, w_hi = xp.where(right, w_mid, w_lo), xp.where(right, w_hi, w_mid)
    spread = xp.sqrt(xp.maximum(frac * (1.0 - frac), xp.zeros_like(frac)) * 2.0**-DEPTH)
    leaf_z = _draw(seed, k + (1 << DEPTH), like, dtype)
    return w_lo + frac * (w_hi - w_lo) + spread * leaf_z


def increment(seed: Array, t0: float, t1: float, like: Array, dtype: Any = None) -> Array:
    """(W(t1) - W(t0)) / sqrt|t1 - t0| (eq. 4) for levels known on the host; 0 where
    t0 = t1. ``seed`` is the tree's (:func:`tree_seed`)."""
    dtype = like.dtype if dtype is None else dtype
    xp = ops.namespace(like)
    if t0 == t1:
        return xp.zeros(tuple(like.shape), dtype=dtype, device=ops.device(like))
    cache: dict = {}
    w1 = value_host(seed, float(t1), like, dtype, cache)
    w0 = value_host(seed, float(t0), like, dtype, cache)
    return (w1 - w0) * (1.0 / math.sqrt(abs(t1 - t0)))


def increment_traced(seed: Array, t0: Array, t1: Array, like: Array, dtype: Any) -> Array:
    """Eq. 4 for levels known only as 0-d arrays of ``like``'s namespace (a loop that
    decides its levels as it runs): their leaves (:func:`leaf`) are taken in the arrays'
    dtype, so the draws follow the levels' last bits; 0 where t0 = t1."""
    xp = ops.namespace(like)
    values = []
    for t in (t0, t1):
        scaled = t * float(1 << DEPTH)
        last = xp.full((), (1 << DEPTH) - 1, dtype=scaled.dtype, device=ops.device(like))
        k = xp.minimum(xp.floor(scaled), last)
        values.append(value_traced(seed, k, scaled - k, like, dtype))
    gap = xp.maximum(xp.abs(t1 - t0), xp.full((), 1e-30, dtype=t0.dtype, device=ops.device(like)))
    return (values[1] - values[0]) / xp.sqrt(gap)


def call_increment(seed: Array, row: tuple, like: Array, dtype: Any) -> Array:
    """Eq. 4 from a call's table row (k_0, f_0, k_1, f_1, 1/sqrt|τ_1 - τ_0|) of
    :func:`leaf_columns`: Python floats on the eager path, 0-d arrays when traced."""
    k0, f0, k1, f1, scale = row
    if isinstance(k0, float | int):
        cache: dict = {}
        w1 = value_host(seed, (k1, f1), like, dtype, cache)
        w0 = value_host(seed, (k0, f0), like, dtype, cache)
        return (w1 - w0) * scale
    w1 = value_traced(seed, k1, f1, like, dtype)
    w0 = value_traced(seed, k0, f0, like, dtype)
    return (w1 - w0) * scale


# -- a scheduler's levels -----------------------------------------------------------------


def flow_time(alpha: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """τ = σ / (α + σ) ∈ [0, 1] of a native sample x = α x_0 + σ ε (1 where α = 0)."""
    alpha, sigma = np.asarray(alpha, np.float64), np.asarray(sigma, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(np.isinf(sigma), 1.0, sigma / (alpha + sigma))
    return np.clip(np.nan_to_num(tau, nan=1.0), 0.0, 1.0)


def call_intervals(tau: np.ndarray, noise: np.ndarray, final: float = 0.0) -> np.ndarray:
    """(N, 2) the tree levels of each call's draw: from the call's level to the next level
    a later call is at that differs from it (the final sample's, ``final``, after the
    last); equal levels where the call draws no noise (``noise`` its coefficient column).
    For calls whose levels run down (or up at a churn and down again) the intervals of the
    calls that draw are disjoint, so their draws are independent."""
    tau = np.asarray(tau, np.float64)
    out = np.stack([tau, tau], axis=1)
    # the next level that differs from each call's, found in one pass from the end (a
    # loop of many calls at one level, a corrector's, must not cost their square)
    after = np.empty_like(tau)
    following = final
    for i in range(len(tau) - 1, -1, -1):
        after[i] = following
        if i > 0 and tau[i] != tau[i - 1]:
            following = tau[i]
    draws = np.asarray(noise) != 0
    out[draws, 1] = after[draws]
    return out


def leaf_columns(intervals: np.ndarray) -> np.ndarray:
    """(N, 5) per call: (k_0, f_0, k_1, f_1, 1/sqrt|τ_1 - τ_0|) of the (N, 2) levels of
    :func:`call_intervals` (0 for the scale where the call draws nothing), all computed in
    float64 on the host, so a float32 loop draws the noise a float64 one does."""
    out = np.zeros((len(intervals), 5))
    for i, (t0, t1) in enumerate(np.asarray(intervals, np.float64)):
        out[i, 0:2] = leaf(t0)
        out[i, 2:4] = leaf(t1)
        out[i, 4] = 0.0 if t0 == t1 else 1.0 / math.sqrt(abs(t1 - t0))
    return out
