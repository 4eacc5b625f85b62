"""Embedded Runge-Kutta pairs with PI step-size control on the probability-flow ODE
(Hairer, Nørsett & Wanner, "Solving Ordinary Differential Equations I", sec. II.4;
Bogacki & Shampine 1989; Dormand & Prince 1980), the adaptive solver Skrample's RKMoire
and torchdiffeq offer, on ComfyUI's model convention.

The probability-flow ODE of x = x_0 + σ ε (Karras et al. 2022, eq. 4 with s = 1), and of
the rectified-flow sample x = (1 - σ) x_0 + σ ε alike (its velocity ε - x_0 is (x - x̂_0)/σ),
is dx/dσ = (x - x̂_0(x, σ)) / σ. In the time τ = -log σ, which runs forward from
τ_0 = -log σ_max and in which the solution is smooth down to small σ,

    dx/dτ = f(x, τ) = x̂_0(x, e^{-τ}) - x.                                             (1)

A step of size h from (τ, x) with the pair (a, b, b̂, c) of s stages (``solver``):

    k_j = f(x + h Σ_{l<j} a_{jl} k_l, τ + c_j h),   x_new = x + h Σ_j b_j k_j,
    e = h Σ_j (b_j - b̂_j) k_j                                                          (2)

Both pairs are FSAL: the last stage is f at x_new, so an accepted step costs s - 1 model
calls (a rejected one too; its first stage is kept) and the first call of the loop one
more. The error norm (Hairer's eq. 4.11), over every element of the sample (batch
included: one step size for the whole sample),

    err = sqrt(mean((e / (atol + rtol · max(|x|, |x_new|)))²))                        (3)

accepts the step when err <= 1; the next step is h · fac (Gustafsson's PI controller,
Hairer & Wanner II, sec. IV.2, eq. (2.43c); Hairer I, sec. II.4 after eq. (4.13)),

    fac = clip(safety · err^{-α} · err_prev^{β}, 0.2, 10),  α = 1/q - 0.75 β           (4)

(q the embedded order plus one; err_prev the last accepted error, 10⁻⁴ at first; after a
rejection fac <= 1), and steps are cut to end exactly at τ_end = -log σ_min.

**Ends.** The loop integrates from the first level of the σ list to its last nonzero
level σ_min. Where the list ends at 0 (every KSampler scheduler) the result is the final
step to 0, x̂_0(x, σ_min) = x + k_s of the last accepted step: the FSAL stage already holds
it, so it costs no call (``final_denoise=False``: the result is x at σ_min, as
``dpm_adaptive`` returns). When ``max_calls`` runs out first, the result is the same
quantity at the last accepted level.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import ops
from ..core.options import option
from ..core.scheduler import document
from . import kit
from ._adaptive import (
    CALLS,
    E0,
    E2,
    END,
    FINAL,
    SIGMA,
    STAGE,
    AdaptiveComfy,
    AdaptiveState,
    H,
    S,
    T,
    _counts,
    _where,
    const,
    host_value,
    pi_factor,
)

Array = Any
FAC_MIN, FAC_MAX = 0.2, 10.0  # Hairer's facmin, facmax
ERR_PREV_START = 1e-4  # Hairer's facold


@document
@dataclass(frozen=True, kw_only=True)
class AdaptiveRK(AdaptiveComfy):
    """An embedded Runge-Kutta pair (``solver``: Bogacki-Shampine 3(2) or Dormand-Prince
    5(4)) with PI step-size control on the probability-flow ODE in τ = -log σ, from the
    first level of the σ list to its last nonzero one, then x̂_0 there (no extra call).

    Adaptive (``ADAPTIVE = True``): ``init(max_calls, template, key, steps=N)`` takes the
    bound on model calls; the σ list (``scheduler`` with ``steps``, default 20, or
    ``sigmas=``, ``denoise=``) gives only its ends. bosh3: 3 calls per attempt, dopri5: 6
    (FSAL), plus one for the first. On any ComfyUI model sampling (``model``); the model
    input and timesteps are ComfyUI's, like every ComfyUI class here.

    Not in diffusers nor ComfyUI (Skrample's RKMoire and torchdiffeq's dopri5 are the
    same kind of solver).
    """

    ORDER = 3
    CALLS_PER_STEP = 3

    solver: str = option(
        "bosh3", "the embedded pair (2): bosh3 (Bogacki & Shampine 1989, order 3 with a "
        "2nd-order estimate) or dopri5 (Dormand & Prince 1980, order 5 with a 4th-order "
        "estimate)", choices=tuple(kit.EMBEDDED_PAIRS),
    )  # fmt: skip
    rtol: float = option(0.01, "the relative tolerance of the error norm (3)", low=0.0)
    atol: float = option(0.001, "the absolute tolerance of the error norm (3)", low=0.0)
    h_init: float = option(0.1, "the first step, in τ = -log σ", low=0.0, low_open=True)
    safety: float = option(0.9, "the safety factor of the controller (4)", low=0.0,
                           high=1.0, low_open=True)  # fmt: skip
    beta: float = option(0.04, "β of the PI controller (4) (0: the classical I controller)",
                         low=0.0, high=0.2)  # fmt: skip
    final_denoise: bool = option(
        True, "where the σ list ends at 0, return x̂_0 at σ_min (the final step to 0, from the "
        "last stage's call); False: x at σ_min",
    )  # fmt: skip

    def _check(self) -> None:
        super()._check()
        if self.rtol == 0 and self.atol == 0:
            raise ValueError(
                "AdaptiveRK options rtol and atol: at least one must be positive (the error "
                "norm would divide by 0), got rtol=0.0, atol=0.0"
            )
        for name in ("rtol", "atol", "h_init"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(
                    f"AdaptiveRK option {name} must be finite, got: {getattr(self, name)!r}"
                )

    @property
    def pair(self) -> kit.EmbeddedPair:
        """The embedded pair of ``solver``."""
        return kit.EMBEDDED_PAIRS[self.solver]

    def _running(self, s: Any, end: Any) -> Any:
        return s < end

    def _start(self, sigma_start: float, sigma_end: float, sigma_last: float):
        s, end = -math.log(sigma_start), -math.log(sigma_end)
        clock = [0.0] * (FINAL + 1)
        clock[S], clock[END], clock[H] = s, end, self.h_init
        clock[T] = min(end, s + self.h_init)
        clock[SIGMA] = sigma_start
        clock[E0] = ERR_PREV_START
        # E2 (unused by the controller): whether the result is x̂_0 (the list ends at 0)
        clock[E2] = float(self.final_denoise and sigma_last == 0.0)
        return clock, self.pair.stages

    def _tables(self, xp, like: Array):
        """(A (s, s): row j the next stage's a-row after stage j (row s-1: a_1, for the
        next attempt's first new stage), c (s,) likewise, b - b̂ (s,)), compute dtype."""
        pair = self.pair
        a = np.asarray(pair.a, np.float64)
        rows = np.concatenate([a[1:], a[1:2]])
        c = np.asarray(pair.c, np.float64)
        c_next = np.concatenate([c[1:], c[1:2]])
        diff = np.asarray(pair.b, np.float64) - np.asarray(pair.b_hat, np.float64)
        dev, dtype = ops.device(like), like.dtype
        return tuple(xp.asarray(v, dtype=dtype, device=dev) for v in (rows, c_next, diff))

    def _advance(self, xp, state: AdaptiveState, x_call: Array, denoised: Array,
                 noise: Array | None):  # fmt: skip
        pair = self.pair
        stages = pair.stages
        clock, counts = state.clock, state.counts
        rows, c_next, diff = self._tables(xp, clock)
        stage = counts[STAGE]
        # the stage: a 0-d array (traced: every branch's arrays are made and selected), or
        # read on the host (eager NumPy / PyTorch on the CPU: only the selected arrays are
        # made, the same expressions, so the same bits)
        host = host_value(xp, stage)
        last = stage == stages - 1 if host is None else host == stages - 1

        pick = functools.partial(_where, xp=xp)  # a where the flag, else b

        s, t = clock[S], clock[T]
        h = t - s
        start = counts[CALLS] == 0 if host is None else ops.concrete_int(counts[CALLS]) == 0
        x = pick(start, x_call, state.x)  # the loop's start
        f = denoised - x_call  # (1)
        expand = (stages,) + (1,) * x.ndim
        if host is None:
            index = xp.reshape(xp.arange(stages, device=ops.device(x)), expand)
            k = xp.where(index == xp.astype(stage, index.dtype), f[None, ...], state.extra)
        else:
            k = xp.concat([state.extra[:host], f[None, ...], state.extra[host + 1 :]], axis=0)

        def combine(weights: Array, ks: Array) -> Array:
            return xp.sum(xp.reshape(weights, expand) * ks, axis=0)

        # within an attempt: the next stage's sample (2) (not made at an attempt's end)
        u_next, sigma_stage = x, clock[SIGMA]
        if last is not True:
            u_next = x + h * combine(ops.row(rows, stage), k)
            sigma_stage = xp.exp(-(s + ops.row(c_next, stage) * h))

        # the attempt's end: error (3), PI control (4) (made at its last call only)
        accept = reject = False
        fac = err = clock[E0]
        if last is not False:
            e = h * combine(diff, k)
            scale = self.atol + self.rtol * xp.maximum(xp.abs(x), xp.abs(x_call))
            ratio = e / scale
            # an empty sample has no error: its sum of squares, 0 (the mean would be 0 / 0)
            squares = ratio * ratio
            err = xp.sqrt(xp.mean(squares) if math.prod(ratio.shape) else xp.sum(squares))
            ok = err <= 1.0
            if last is True:
                accept = bool(ops.concrete_int(ok))
                reject = not accept
            else:
                accept, reject = last & ok, last & ~ok
            fac = pi_factor(err, clock[E0], pair.embedded_order + 1, self.beta, self.safety, xp)
            fac = xp.minimum(xp.maximum(fac, const(xp, FAC_MIN, fac)), const(xp, FAC_MAX, fac))
            fac = pick(accept, fac, xp.minimum(fac, const(xp, 1.0, fac)))
        h_new = pick(last, h * fac, clock[H])
        s_new = pick(accept, t, s)
        x_new = pick(accept, x_call, x)
        if accept is not False:  # FSAL
            k_first = pick(accept, k[stages - 1], k[0])
            k = xp.concat([k_first[None, ...], k[1:]], axis=0)
        err_prev = pick(accept, xp.maximum(err, const(xp, ERR_PREV_START, err)), clock[E0])
        t_new = pick(last, xp.minimum(clock[END], s_new + h_new), t)
        # after the attempt: its successor's first new stage
        nxt, sigma_next = u_next, sigma_stage
        if last is not False:
            h_next = t_new - s_new
            u_after = x_new + h_next * combine(rows[stages - 1], k)
            sigma_after = xp.exp(-(s_new + c_next[stages - 1] * h_next))
            nxt = pick(last, u_after, u_next)
            sigma_next = pick(last, sigma_after, sigma_stage)
        clock = xp.stack([s_new, t_new, h_new, sigma_next, err_prev, clock[E0 + 1],
                          clock[E2], clock[END], clock[FINAL]])  # fmt: skip
        stage_next = pick(last, stage * 0 + 1, stage + 1)
        counts = _counts(xp, counts, stage_next, accept, reject)
        finished = ~self._running(s_new, clock[END]) & accept
        return x_new, k, clock, counts, finished, nxt

    def _result(self, xp, state: AdaptiveState, x: Array, extra: Array) -> Array:
        to_zero = state.clock[E2] > 0.5
        return xp.where(to_zero, x + extra[0], x)
