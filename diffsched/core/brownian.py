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

descending into the half that holds τ, then, inside the leaf [l, r] of width 2^-D,

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


def value_host(seed: Array, t: float, like: Array, dtype: Any, cache: dict | None = None) -> Array:
    """W(t) (eqs. 1-3) for a level known on the host; ``cache`` shares the draws of nodes
    two evaluations both visit."""
    cache = {} if cache is None else cache

    def z(index: int) -> Array:
        if index not in cache:
            cache[index] = _draw(seed, index, like, dtype)
        return cache[index]

    lo, hi, k = 0.0, 1.0, 0
    w_lo: Any = 0.0
    w_hi = z(0)  # eq. 1
    for depth in range(DEPTH):
        mid = 0.5 * (lo + hi)
        w_mid = 0.5 * (w_lo + w_hi) + 2.0 ** (-(depth + 2) / 2) * z((1 << depth) + k)  # eq. 2
        if t < mid:
            hi, w_hi, k = mid, w_mid, 2 * k
        else:
            lo, w_lo, k = mid, w_mid, 2 * k + 1
    h = hi - lo
    frac = (t - lo) / h
    spread = math.sqrt(max((t - lo) * (hi - t), 0.0) / h)
    out = w_lo + frac * (w_hi - w_lo)  # eq. 3
    if spread != 0.0:
        out = out + spread * z((1 << DEPTH) + k)
    return out


def value_traced(seed: Array, t: Array, like: Array, dtype: Any) -> Array:
    """W(t) (eqs. 1-3) for a 0-d array level (under ``jax.jit`` / ``torch.compile``): the
    same draws and arithmetic, the branch of eq. 2 taken by ``where``."""
    xp = ops.namespace(like)
    lo = xp.zeros_like(t)
    hi = xp.ones_like(t)
    k = xp.asarray(0, dtype=xp.int32, device=ops.device(like))
    w_lo = xp.zeros(tuple(like.shape), dtype=dtype, device=ops.device(like))
    w_hi = _draw(seed, 0, like, dtype)
    for depth in range(DEPTH):
        mid = 0.5 * (lo + hi)
        node = k + (1 << depth)
        w_mid = 0.5 * (w_lo + w_hi) + 2.0 ** (-(depth + 2) / 2) * _draw(seed, node, like, dtype)
        left = t < mid
        hi, lo = xp.where(left, mid, hi), xp.where(left, lo, mid)
        w_hi, w_lo = xp.where(left, w_mid, w_hi), xp.where(left, w_lo, w_mid)
        k = 2 * k + xp.astype(xp.logical_not(left), xp.int32)
    h = hi - lo
    frac = (t - lo) / h
    spread = xp.sqrt(xp.maximum((t - lo) * (hi - t), xp.zeros_like(t)) / h)
    leaf = _draw(seed, k + (1 << DEPTH), like, dtype)
    return w_lo + frac * (w_hi - w_lo) + spread * leaf


def increment(seed: Array, t0: Any, t1: Any, like: Array, dtype: Any = None) -> Array:
    """(W(t1) - W(t0)) / sqrt|t1 - t0| (eq. 4): Python-float levels on the host, 0-d
    arrays when traced; 0 where t0 = t1. ``seed`` is the tree's (:func:`tree_seed`)."""
    dtype = like.dtype if dtype is None else dtype
    xp = ops.namespace(like)
    if isinstance(t0, float | int) and isinstance(t1, float | int):
        if t0 == t1:
            return xp.zeros(tuple(like.shape), dtype=dtype, device=ops.device(like))
        cache: dict = {}
        w1 = value_host(seed, float(t1), like, dtype, cache)
        w0 = value_host(seed, float(t0), like, dtype, cache)
        return (w1 - w0) * (1.0 / math.sqrt(abs(t1 - t0)))
    w1 = value_traced(seed, t1, like, dtype)
    w0 = value_traced(seed, t0, like, dtype)
    gap = xp.abs(t1 - t0)
    return (w1 - w0) / xp.sqrt(xp.where(gap > 0, gap, xp.ones_like(gap)))


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
    for i in np.flatnonzero(np.asarray(noise) != 0):
        later = [t for t in tau[i + 1 :] if t != tau[i]]
        out[i, 1] = later[0] if later else final
    return out
