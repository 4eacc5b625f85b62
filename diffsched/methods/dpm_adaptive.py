"""DPM-Solver-12 and DPM-Solver-23 with adaptive step size: Lu, Zhou, Bao, Chen, Li & Zhu
2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around
10 Steps", sec. 4 and app. (Alg. 4-5), with the PID step-size controller of Söderlind 2003
("Digital filters in adaptive time-stepping", ACM TOMS 29(1)), as ComfyUI's ``dpm_adaptive``
runs them.

In the time τ = -log σ (λ of the paper with α = 1: the variance-exploding x = x_0 + σ ε,
on which ComfyUI also runs flow samples) and the noise estimate ε̂ = (x - x̂_0(x, σ)) / σ,
a step from s to t = s + h of DPM-Solver-k (paper, Alg. 1-2, with e^h - 1 = expm1(h)):

    DPM-Solver-1:  x_t = x_s - σ_t (e^h - 1) ε̂(x_s, s)                                  (1)
    DPM-Solver-2:  u = x_s - σ_{s1} (e^{r1 h} - 1) ε̂_s,  s1 = s + r1 h,
                   x_t = x_s - σ_t (e^h - 1) ε̂_s - σ_t/(2 r1) (e^h - 1) (ε̂(u, s1) - ε̂_s)   (2)
    DPM-Solver-3:  r1 = 1/3, r2 = 2/3, u1 as in (2),
                   u2 = x_s - σ_{s2} (e^{r2 h} - 1) ε̂_s
                        - σ_{s2} (r2/r1) ((e^{r2 h} - 1)/(r2 h) - 1) (ε̂(u1, s1) - ε̂_s),
                   x_t = x_s - σ_t (e^h - 1) ε̂_s - σ_t/r2 ((e^h - 1)/h - 1) (ε̂(u2, s2) - ε̂_s)  (3)

An attempt of ``order`` k ∈ {2, 3} computes the pair (x_low, x_high) = (DPM-Solver-(k-1),
DPM-Solver-k) sharing their model calls (k = 3: DPM-Solver-2 with r1 = 1/3, whose stage is
DPM-Solver-3's first), k calls per attempt (the call at s is made again after a rejected
attempt, as ComfyUI makes it). The error (Alg. 4)

    E = ‖(x_low - x_high) / δ‖_2 / sqrt(n),  δ = max(atol, rtol · max(|x_low|, |x_prev|))   (4)

(x_prev the last accepted x_low, n the number of elements of the whole sample) drives the
PID controller: with ê_k = 1/(E + 10⁻⁸) and the memories ê_{k-1}, ê_{k-2} (all three ê_0 at
the first attempt),

    f = 1 + atan(ê_k^{b1} ê_{k-1}^{b2} ê_{k-2}^{b3} - 1),
    b1 = (p + i + d)/k, b2 = -(p + 2 d)/k, b3 = d/k                                      (5)

(p, i, d = ``pcoeff``, ``icoeff``, ``dcoeff``); the attempt is accepted when f >= ``accept_safety``
(then x = x_high, the memories shift), and the proposed step is multiplied by f either
way. The next attempt steps to t = min(τ_end, s + h). The loop ends when s >= τ_end - 10⁻⁵.

With η > 0 (ancestral noise, k-diffusion's stochastic variant of Alg. 4) an attempt from s
to t splits σ_t as an ancestral step does (Song et al. 2021, eq. 16 with η; ComfyUI's
``get_ancestral_step``):

    σ_u = min(σ_t, η sqrt(σ_t² (σ_s² - σ_t²) / σ_s²)),   σ_d = sqrt(σ_t² - σ_u²),
    t' = min(τ_end, -log σ_d),   σ_u' = sqrt(σ_t² - σ_{t'}²)                              (6)

The pair (x_low, x_high) and the error (4) are computed from s to t' (h = t' - s in
(1)-(3)); an accepted attempt sets x = x_high + s_noise σ_u' z (z a fresh standard normal,
drawn at acceptance only) and s = t; the controller (5) takes k = 1.5 in place of the
order (the strong order of the noisy step).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from ..core import brownian, ops
from ..core.options import option
from ..core.scheduler import BrownianNoise, document
from ._adaptive import (
    ACCEPTED,
    CALLS,
    E0,
    E1,
    E2,
    END,
    FINAL,
    REJECTED,
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
)
from ._comfy_noise import (
    NOISE_STREAMS,
    check_eager_cpu,
    check_seed,
    generator_draw,
    generator_state,
)
from .comfy_stochastic import ancestral_step

Array = Any


@document
@dataclass(frozen=True, kw_only=True)
class ComfyDPMAdaptive(BrownianNoise, AdaptiveComfy):
    """ComfyUI's ``dpm_adaptive``: DPM-Solver-12 / 23 with PID step-size control (Lu et al.
    2022, Alg. 4-5), from the first level of the σ list to its last nonzero one.

    Adaptive (``ADAPTIVE = True``): ``init(max_calls, template, key, steps=N)`` takes the
    bound on model calls; the σ list (``scheduler`` with ``steps``, default 20, or
    ``sigmas=``, ``denoise=``) gives only its two ends, as ComfyUI's. ``order`` calls per
    attempt; the loop ends at the last nonzero level, whose x is the result (ComfyUI's: no
    step to 0). When ``max_calls`` runs out first, ``done`` is set, ``reached`` is not, and
    the result is the last accepted x, at σ = e^{-s} (``info(state)``, ``next_sigma``).
    ``eta`` > 0 adds ancestral noise at each accepted step ((6) of the module; ComfyUI's
    ``SamplerDPMAdaptative`` node): ``init``'s ``key`` seeds it, ``step(..., noise=z)``
    replaces a draw, and ``noise_stream="comfy"`` draws ComfyUI's own (its torch.Generator
    seeded with ``key``, one draw per accepted step; eager PyTorch on the CPU);
    ``noise_type="brownian"`` draws each accepted step's noise as the increment of one
    Brownian path over its levels (so rejected attempts and the tolerance do not change
    the path a seed gives). The σ's of every call equal ComfyUI's, and so do its accepted
    steps and its result (with η > 0, for the same draws).

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps).
    """

    ORDER = 3
    CALLS_PER_STEP = 3
    COMFY_NAMES = ("dpm_adaptive",)
    EXTRA = 3  # x_prev, ε̂_s, ε̂(u1, s1)

    order: int = option(3, "k: DPM-Solver-12 (2) or DPM-Solver-23 (3); k calls per attempt",
                        low=2, high=3)  # fmt: skip
    rtol: float = option(0.05, "the relative tolerance of (4)", low=0.0)
    atol: float = option(0.0078, "the absolute tolerance of (4)", low=0.0)
    # (a first step below ~1e-7 of λ is lost in float32's rounding of λ + h and gives 0/0
    # in the error estimate: NaN; the controller grows any small step within a few attempts)
    h_init: float = option(0.05, "the first proposed step in τ = -log σ", low=1e-4)
    # |p|, |i|, |d| <= 10 keep the product of (5) finite: ê <= 1e8 and |b1|, |b2| <= 15,
    # |b3| <= 5 give at most 1e280; far larger coefficients overflow it to inf (then NaN)
    pcoeff: float = option(0.0, "p of the PID controller (5)", low=-10.0, high=10.0)
    icoeff: float = option(1.0, "i of the PID controller (5)", low=-10.0, high=10.0)
    dcoeff: float = option(0.0, "d of the PID controller (5)", low=-10.0, high=10.0)
    accept_safety: float = option(0.81, "an attempt is accepted when the factor f of (5) is "
                                  "at least this", low=0.0, low_open=True)  # fmt: skip
    eta: float = option(0.0, "η of the ancestral split (6): 0 is the ODE solver (ComfyUI's "
                        "default), 1 the full ancestral noise", low=0.0)  # fmt: skip
    s_noise: float = option(1.0, "the factor of the noise an accepted step adds (6) (with "
                            "eta > 0)", low=0.0)  # fmt: skip
    noise_stream: str = option(
        "diffsched", "diffsched (draw k of the seed init's key is, k the accepted steps so "
        "far) or comfy (ComfyUI's seeded torch.Generator stream: equal to ComfyUI draw for "
        "draw; eager PyTorch on the CPU)", choices=NOISE_STREAMS,
    )  # fmt: skip

    def _check(self) -> None:
        super()._check()
        if self.noise_stream == "comfy" and self.noise_type != "gaussian":
            raise ValueError(
                "ComfyDPMAdaptive: noise_stream='comfy' draws ComfyUI's own noise, which "
                f"noise_type={self.noise_type!r} would replace; use noise_type='gaussian'"
            )
        if self.rtol == 0 and self.atol == 0:
            raise ValueError(
                "ComfyDPMAdaptive options rtol and atol: at least one must be positive (δ of the "
                "error norm would be 0), got rtol=0.0, atol=0.0"
            )
        finite = ("rtol", "atol", "h_init", "pcoeff", "icoeff", "dcoeff", "accept_safety", "eta",
                  "s_noise")  # fmt: skip
        for name in finite:
            if not math.isfinite(getattr(self, name)):
                raise ValueError(
                    f"ComfyDPMAdaptive option {name} must be finite, got: {getattr(self, name)!r}"
                )

    @property
    def deterministic(self) -> bool:
        return self.eta == 0

    def _key(self, key: Any, sample_template: Array) -> Array:
        """The seed array, or with ``noise_stream="comfy"`` (η > 0) the state of ComfyUI's
        torch.Generator seeded with ``key``."""
        if self.noise_stream != "comfy":
            return super()._key(key, sample_template)
        seed = check_seed(key, "ComfyDPMAdaptive.init key (ComfyUI's seed)")
        if self.deterministic:  # nothing is drawn
            return super()._key(0, sample_template)
        check_eager_cpu("ComfyDPMAdaptive", sample_template, "sample_template")
        return generator_state(seed)

    def _noise(self, xp, state: AdaptiveState, sample: Array, noise: Array | None):
        """The draw of the attempt this call may accept (``noise`` where given): the seed's
        (:class:`AdaptiveComfy`), the Brownian path's increment over the attempt's levels
        σ_s > σ_t (τ = σ / (α + σ) of the native sample: α = 1, flow models 1 - σ), or
        ComfyUI's generator's (its stream moving on at an accepted attempt, ``noise`` given
        or not). Where the stage is known on the host (eager, on the CPU), a call that ends
        no attempt draws nothing; traced, every call draws and ``step`` keeps an accepted
        attempt's."""
        comfy = self.noise_stream == "comfy"
        if comfy:
            check_eager_cpu("ComfyDPMAdaptive", sample, "sample")
        stage = ops.concrete_int(state.counts[STAGE])
        if stage is not None and stage != self.order - 1:  # no attempt ends at this call
            return (xp.zeros_like(state.x) if noise is None else noise), state.key
        if comfy:
            z, after = generator_draw(state.key, tuple(state.x.shape))
            return (z.to(state.x.dtype) if noise is None else noise), after
        if self.noise_type == "brownian" and noise is None:
            levels = []
            for time in (state.clock[S], state.clock[T]):
                sigma = xp.exp(-time)
                levels.append(sigma if self.model_sampling.flow else sigma / (1 + sigma))
            seed = brownian.tree_seed(state.key)
            return brownian.increment_traced(seed, *levels, state.x, state.x.dtype), state.key
        return super()._noise(xp, state, sample, noise)

    def _first_sigma(self, sigma_start: float) -> float:
        tau = -math.log(sigma_start)  # ComfyUI's round trip through τ = -log σ
        return math.exp(-tau)

    def _start(self, sigma_start: float, sigma_end: float, sigma_last: float):
        s, end = -math.log(sigma_start), -math.log(sigma_end)
        clock = [0.0] * (FINAL + 1)
        clock[S], clock[END], clock[H] = s, end, self.h_init
        clock[T] = min(end, s + self.h_init)
        clock[SIGMA] = math.exp(-s)
        return clock, self.EXTRA

    def _advance(self, xp, state: AdaptiveState, x_call: Array, denoised: Array,
                 noise: Array | None):  # fmt: skip
        clock, counts, x = state.clock, state.counts, state.x
        stage = counts[STAGE]
        # the call's flags: 0-d arrays (traced: every stage's arrays are made and selected),
        # or Python bools where the counts are read on the host (eager NumPy / PyTorch on
        # the CPU: only the arrays this call selects are made, the same expressions)
        host = host_value(xp, stage)
        if host is None:
            first, second, last = stage == 0, stage == 1, stage == self.order - 1
            start = counts[CALLS] == 0
            fresh = (counts[ACCEPTED] + counts[REJECTED]) == 0
        else:
            first, second, last = host == 0, host == 1, host == self.order - 1
            start = ops.concrete_int(counts[CALLS]) == 0
            fresh = ops.concrete_int(counts[ACCEPTED] + counts[REJECTED]) == 0

        pick = functools.partial(_where, xp=xp)  # a where the flag, else b

        s, t = clock[S], clock[T]
        t_up = t  # the time the attempt steps to: t, or t' of (6)
        if not self.deterministic:
            sig_t = xp.exp(-t)
            down, _ = ancestral_step(xp.exp(-s), sig_t, self.eta, xp)
            t_up = xp.minimum(clock[END], -xp.log(down))
            renoise = xp.sqrt(xp.maximum(sig_t**2 - xp.exp(-t_up) ** 2, 0 * sig_t))  # σ_u'
        h = t_up - s
        x = pick(first & start, x_call, x)  # the loop's start
        eps = (x_call - denoised) / clock[SIGMA]
        eps0 = pick(first, eps, state.extra[1])
        x_prev = pick(start, x_call, state.extra[0])

        def sig(tau):
            return xp.exp(-tau)

        sig_t, em = sig(t_up), xp.expm1(h)
        # the next stage's sample and σ (not made at an attempt's last call, on the host),
        # and the pair (x_low, x_high) (made at the last call only, on the host)
        stage_next, sigma_stage, x_low, x_high = x, clock[SIGMA], x, x
        if self.order == 2:
            r1 = 1 / 2
            s1 = s + r1 * h
            if last is not True:
                stage_next, sigma_stage = x - sig(s1) * xp.expm1(r1 * h) * eps0, sig(s1)  # (2)
            if last is not False:
                x_low = x - sig_t * em * eps0  # (1)
                x_high = x - sig_t * em * eps0 - sig_t / (2 * r1) * em * (eps - eps0)  # (2)
            eps1 = state.extra[2]
        else:
            r1, r2 = 1 / 3, 2 / 3
            s1, s2 = s + r1 * h, s + r2 * h
            eps1 = pick(second, eps, state.extra[2])
            if last is not True:
                u1 = u2 = x
                if first is not False:
                    u1 = x - sig(s1) * xp.expm1(r1 * h) * eps0
                if first is not True:
                    e2 = xp.expm1(r2 * h)
                    u2 = (x - sig(s2) * e2 * eps0
                          - sig(s2) * (r2 / r1) * (e2 / (r2 * h) - 1) * (eps1 - eps0))  # fmt: skip
                stage_next = pick(first, u1, u2)
                sigma_stage = pick(first, sig(s1), sig(s2))
            if last is not False:
                x_low = x - sig_t * em * eps0 - sig_t / (2 * r1) * em * (eps1 - eps0)  # (2)
                x_high = x - sig_t * em * eps0 - sig_t / r2 * (em / h - 1) * (eps - eps0)  # (3)

        # the error (4) and the PID controller (5), used at the attempt's last call
        inv = e1 = e2m = factor = clock[E0]  # (not made before the last call, on the host)
        accept = reject = False
        if last is not False:
            atol = const(xp, self.atol, x)
            delta = xp.maximum(atol, self.rtol * xp.maximum(xp.abs(x_low), xp.abs(x_prev)))
            ratio = (x_low - x_high) / delta
            n = math.prod(x.shape)
            error = xp.sqrt(xp.sum(ratio * ratio)) / n**0.5
            inv = 1 / (error + 1e-8)
            e1 = pick(fresh, inv, clock[E1])
            e2m = pick(fresh, inv, clock[E2])
            k = self.order if self.deterministic else 1.5  # (5); η > 0: the noisy step's order
            b1 = (self.pcoeff + self.icoeff + self.dcoeff) / k
            b2 = -(self.pcoeff + 2 * self.dcoeff) / k
            b3 = self.dcoeff / k
            factor = inv**b1 * e1**b2 * e2m**b3
            factor = 1 + xp.atan(factor - 1)
            ok = factor >= self.accept_safety
            if last is True:
                accept = bool(ops.concrete_int(ok))
                reject = not accept
            else:
                accept, reject = last & ok, last & ~ok

        if not self.deterministic and accept is not False:  # (6): the accepted step's noise
            x_high = x_high + (self.s_noise * renoise) * noise
        x_new = pick(accept, x_high, x)
        s_new = pick(accept, t, s)
        h_new = pick(last, clock[H] * factor, clock[H])
        t_new = pick(last, xp.minimum(clock[END], s_new + h_new), t)
        e1_new = pick(accept, inv, pick(last & fresh, e1, clock[E1]))
        e2_new = pick(accept, e1, pick(last & fresh, e2m, clock[E2]))
        sigma_next = pick(last, sig(s_new), sigma_stage)
        clock = xp.stack([s_new, t_new, h_new, sigma_next, pick(last, inv, clock[E0]),
                          e1_new, e2_new, clock[END], clock[FINAL]])  # fmt: skip
        extra = xp.stack([
            pick(accept, x_low, x_prev),
            eps0,
            pick(second, eps1, state.extra[2]) if self.order == 3 else eps1,
        ])  # fmt: skip
        counts = _counts(xp, counts, pick(last, stage * 0, stage + 1), accept, reject)
        finished = ~self._running(s_new, clock[END]) & last & accept
        nxt = pick(last, x_new, stage_next)
        return x_new, extra, clock, counts, finished, nxt
