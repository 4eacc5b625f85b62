"""PNDM: Liu, Ren, Lin & Zhao 2022, "Pseudo Numerical Methods for Diffusion Models on
Manifolds".

Each step moves the sample with the transfer part of DDIM (eq. 11),

    φ(x, ε, t → t') = sqrt(ᾱ_t'/ᾱ_t) x
                      - (ᾱ_t' - ᾱ_t) / (sqrt(ᾱ_t) (sqrt(ᾱ_t (1-ᾱ_t')) + sqrt(ᾱ_t' (1-ᾱ_t)))) ε,

with ε replaced by a higher-order estimate (the gradient part):

* F-PNDM (the default): three pseudo Runge-Kutta steps (eq. 13), four model calls each,
  as warm-up; then the pseudo linear multistep method of order four (eq. 12),
  ε' = (55 ε_t - 59 ε_{t+δ} + 37 ε_{t+2δ} - 9 ε_{t+3δ}) / 24.
* ``reduce_warmup=True`` (diffusers' ``skip_prk_steps``): the multistep method from the
  start, with an improved-Euler first step and orders two and three until enough history
  exists (the warm-up of diffusers' PLMS pipeline).

The schedule of model calls, the timesteps each φ runs between and the ε combination of
every call are worked out once in ``init`` (:meth:`PNDM.plan`); each call's result is a
linear combination of the Runge-Kutta step's starting sample and model outputs, which the
engine stores where later calls read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..core import families, ops
from ..core.engine import OUTPUT, SAMPLE, Tableau, Update
from ..core.options import option, with_default
from ..core.scheduler import FinalAlpha, Scheduler, Spacing, document, spaced_timesteps
from ._img2img import first_call

# Linear multistep weights on (ε_n, ε_{n-1}, ...), by order (Adams-Bashforth; eq. 12).
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


class Call(NamedTuple):
    """One model call of the plan."""

    timestep: int  # where the model is called
    t_from: int  # φ runs from ᾱ at t_from ...
    t_to: int  # ... to ᾱ at t_to (negative: past t = 0)
    anchor: int  # index of the call whose sample φ starts from
    output: dict[int, float]  # ε estimate: weight per call index
    push: bool  # whether this call's output enters the multistep history


@document
@dataclass(frozen=True, kw_only=True)
class PNDM(Spacing, FinalAlpha, Scheduler):
    """Pseudo numerical methods for diffusion models (Liu et al. 2022).

    Order four (F-PNDM: pseudo Runge-Kutta warm-up, then pseudo linear multistep); one model
    call per step after the warm-up (four per warm-up step); deterministic. diffusers:
    ``PNDMScheduler``. Not to be confused with iPNDM (Zhang & Chen 2023; ``IPNDM``), which
    applies the multistep weights to the ODE derivative in σ. ``prediction_type`` is
    ``"noise"`` or ``"angular_velocity"``; ``alpha_clip_strategy`` defaults to
    ``"alpha_zero"`` here.

    ``init(..., strength=s)``: image-to-image as diffusers computes it when an img2img
    pipeline hands ``PNDMScheduler`` its timesteps from step c = N - floor(N s) on.
    diffusers counts calls, not levels, so the warm-up runs on those timesteps: with
    ``reduce_warmup`` the second call run is taken as the improved-Euler redo of the first
    (for c >= 2 the later calls then read their sample one step off its level), and the
    Runge-Kutta warm-up moves from the full schedule's first levels to the given ones. That
    is what diffusers computes, not a sound solver: for image-to-image prefer a one-step or
    a multistep method that restarts cleanly (``DPMSolverMultistep``).
    """

    DIFFUSERS_CLASS = "PNDMScheduler"
    FAMILY = families.VARIANCE_PRESERVING
    CLI_NAME = "pndm"
    PREDICTION_TYPES = ("noise", "angular_velocity")
    ORDER = 4

    alpha_clip_strategy: str = with_default(FinalAlpha, "alpha_clip_strategy", "alpha_zero")
    reduce_warmup: bool = option(
        False, "replace the Runge-Kutta warm-up (N + 9 model calls for N steps) by lower-order "
        "multistep steps (N + 1 calls)", "skip_prk_steps",
    )  # fmt: skip

    # -- the plan: which calls, between which timesteps, with which ε estimate ----------

    def plan(self, num_steps: int, strength: float = 1.0) -> list[Call]:
        """The model calls of an N-step loop, in order; with ``strength`` s < 1, the calls
        diffusers makes when an img2img pipeline hands it the timesteps from step
        N - floor(N s) on (see the class docstring)."""
        full = self._full_plan(num_steps)
        cut = first_call(num_steps, strength)
        if cut == 0:
            return full
        passed = [call.timestep for call in full][cut:]
        delta = self.num_train_steps // num_steps
        if self.reduce_warmup:
            return _multistep_calls(passed, delta, reduced=True)
        firsts = [call.timestep for call in full[:12]]  # t_from of the Runge-Kutta steps
        return _runge_kutta_calls(firsts, passed[:12], delta // 2) + _multistep_calls(
            passed[12:], delta, reduced=False, history=[0, 4, 8]
        )

    def _full_plan(self, num_steps: int) -> list[Call]:
        ops.check_num_steps(num_steps)
        minimum = 1 if self.reduce_warmup else 4
        if num_steps < minimum:
            warmup = "reduce_warmup=True" if self.reduce_warmup else "the Runge-Kutta warm-up"
            raise ValueError(
                f"PNDM with {warmup} expected at least {minimum} steps, got: {num_steps}"
            )
        ts = spaced_timesteps(self, num_steps)
        delta = self.num_train_steps // num_steps
        if self.reduce_warmup:  # one step: a single call, no improved-Euler redo
            return _multistep_calls([ts[0], *ts[1:2], *ts[1:]], delta, reduced=True)
        # three Runge-Kutta steps (12 calls) whose first outputs seed the history
        prk = []
        for i in range(3):  # each from t to t - δ: at t, twice at the midpoint, at t - δ
            mid = int(ts[i + 1]) + delta // 2
            prk += [int(ts[i]), mid, mid, int(ts[i + 1])]
        return _runge_kutta_calls(prk, prk, delta // 2) + _multistep_calls(
            list(ts[3:]), delta, reduced=False, history=[0, 4, 8]
        )

    def noise_levels(self, num_steps: int, strength: float = 1.0) -> tuple[float, float]:
        calls = self.plan(num_steps, strength)
        acp, last = self.alphas_cumprod, calls[-1].t_to
        return float(acp[calls[0].timestep]), float(
            acp[last] if last >= 0 else self.final_alpha_cumprod
        )

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        """Each call: φ from its anchor sample with its ε combination (eq. 11-13)."""
        calls = self.plan(num_steps, strength)
        acp, final = self.alphas_cumprod, self.final_alpha_cumprod
        n_calls = len(calls)
        update = Update(n_calls)
        for n, call in enumerate(calls):
            alpha, beta = self._transfer(acp, final, call)
            update.add(SAMPLE, n - call.anchor, n, alpha)
            for j, w in call.output.items():
                update.add(OUTPUT, n - j, n, beta * w)
        zeros = np.zeros(n_calls)
        a_start = float(acp[calls[0].timestep])
        return Tableau(
            timesteps=np.asarray([call.timestep for call in calls], dtype=np.int64),
            x0_sample=zeros,
            x0_output=zeros,
            update=update,
            start=(math.sqrt(a_start), math.sqrt(1.0 - a_start)),
        )

    def _transfer(self, acp: np.ndarray, final: float, call: Call) -> tuple[float, float]:
        """φ(x, M) = alpha x + beta M for the model output M at t_from (eq. 11)."""
        a = float(acp[call.t_from])
        a_prev = float(acp[call.t_to]) if call.t_to >= 0 else final
        ratio = np.sqrt(a_prev / a)
        eps = (a_prev - a) / (np.sqrt(a) * (np.sqrt(a * (1 - a_prev)) + np.sqrt(a_prev * (1 - a))))
        if self.prediction_type == "angular_velocity":
            # ε = sqrt(1-ᾱ) x + sqrt(ᾱ) v at t_from, with x the sample φ starts from
            return ratio - eps * np.sqrt(1 - a), -eps * np.sqrt(a)
        return ratio, -eps


def _runge_kutta_calls(firsts: list[int], passed: list[int], half: int) -> list[Call]:
    """The pseudo Runge-Kutta warm-up (eq. 13): the calls at the timesteps ``passed`` (12
    or fewer), three steps of four calls from t to t - δ.

    Each step calls the model at t, twice at the midpoint t - δ/2 and at t - δ, always
    moving from the step's starting sample, and ends with the weights (1, 2, 2, 1)/6 of the
    classical Runge-Kutta method; δ/2 = (T // N) // 2, as in diffusers. As diffusers counts
    them, call k of the warm-up moves from ``firsts[4 (k // 4)]`` (the full schedule's)
    to ``passed[k]`` less δ/2 at the even calls: for a full loop (``passed`` = ``firsts``,
    [t, t - δ/2, t - δ/2, t - δ] per step) that is t - δ/2, t - δ/2, t - δ, t - δ.
    """
    calls = []
    for k, t in enumerate(passed[:12]):
        g = 4 * (k // 4)  # index of this step's first call
        out = {g: 1 / 6, g + 1: 2 / 6, g + 2: 2 / 6, g + 3: 1 / 6} if k % 4 == 3 else {k: 1.0}
        calls.append(Call(int(t), firsts[g], int(t) - (0 if k % 2 else half), g, out, k == g))
    return calls


def _multistep_calls(
    ts: list[int], delta: int, *, reduced: bool, history: list[int] | None = None
) -> list[Call]:
    """Linear multistep calls (eq. 12) at ``ts``; ``history``: earlier pushed call indices.

    With ``reduced`` (no Runge-Kutta warm-up), the second call re-does the first step with
    the mean of two outputs (improved Euler; it joins no history) and the order then rises
    from two to four as history accumulates.
    """
    history = list(history or [])
    first = 4 * len(history)  # calls made before these: one Runge-Kutta step per entry
    calls = []
    for k, t in enumerate(ts):
        n = first + k
        t = int(t)
        if reduced and k == 1:
            calls.append(Call(t, t + delta, t, n - 1, {n - 1: 0.5, n: 0.5}, False))
            continue
        history.append(n)
        weights = ADAMS_BASHFORTH[min(len(history), 4)]
        output = dict(zip(reversed(history), weights, strict=False))
        calls.append(Call(t, t, t - delta, n, output, True))
    return calls
