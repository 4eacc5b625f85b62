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
every call are worked out once in ``init`` (:meth:`PNDM.plan`). Everything is linear in
the samples and model outputs, so ``step`` is a single multiply-add over fixed slots: the
current sample and output, the two previous outputs, and three slots for the multistep
history. A Runge-Kutta stage needs the sample its step started from; it is recovered
exactly from the current sample and the previous output, since the current sample is the
previous call's φ of it, so no sample is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import _ops
from .base import (
    NOISE_SCHEDULE_OPTIONS,
    SPACING_OPTIONS,
    Array,
    Option,
    Scheduler,
    SpacingOptions,
    check_int,
)

# Linear multistep weights on (ε_n, ε_{n-1}, ...), by order (Adams-Bashforth; eq. 12).
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}
SLOTS = ("sample", "output", "last1", "last2", "ets1", "ets2", "ets3")


class PNDMState(NamedTuple):
    step: Array  # 0-d int32: index of the next model call
    table: Array  # (num_calls, 8): a coefficient per slot, then the history push flag
    last1: Array  # model output of the previous call
    last2: Array  # model output of the call before that
    ets1: Array  # multistep history, newest first (see PNDM._refill)
    ets2: Array
    ets3: Array


class Call(NamedTuple):
    """One model call of the plan, before it is mapped onto state slots."""

    timestep: int  # where the model is called
    t_from: int  # φ runs from ᾱ at t_from ...
    t_to: int  # ... to ᾱ at t_to (negative: past t = 0)
    anchor: int  # index of the call whose sample φ starts from
    output: dict[int, float]  # ε estimate: weight per call index
    push: bool  # whether this call's output enters the multistep history


@dataclass(frozen=True, kw_only=True)
class PNDM(SpacingOptions, Scheduler):
    """Pseudo numerical methods for diffusion models (Liu et al. 2022).

    Attributes (besides the noise schedule of :class:`~diffsched.base.Scheduler`, whose
    ``alpha_clip_strategy`` defaults to ``"alpha_zero"`` here, and whose
    ``prediction_type`` is ``"noise"`` or ``"angular_velocity"``, and the timestep spacing
    of :class:`~diffsched.base.SpacingOptions`):
        reduce_warmup: replace the Runge-Kutta warm-up (N + 9 model calls for N steps)
            by lower-order multistep steps (N + 1 calls); diffusers' ``skip_prk_steps``.
    """

    DIFFUSERS_CLASS = "PNDMScheduler"
    OPTIONS = (
        NOISE_SCHEDULE_OPTIONS
        + SPACING_OPTIONS
        + (Option("reduce_warmup", "skip_prk_steps", bool, bool),)
    )
    PREDICTION_TYPES = ("noise", "angular_velocity")

    alpha_clip_strategy: str = "alpha_zero"
    reduce_warmup: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_spacing_options()

    @property
    def _refill(self) -> int:
        """Which history slot becomes the head when a call joins no history.

        F-PNDM: the last (a rotation), so that after the three non-joining stages of a
        Runge-Kutta step the history is back in order. With ``reduce_warmup``: the first
        (a copy), so that the single non-joining call loses nothing the next ones need.
        """
        return 0 if self.reduce_warmup else 2

    # -- the plan: which calls, between which timesteps, with which ε estimate ----------

    def plan(self, num_steps: int) -> list[Call]:
        """The model calls of an N-step loop, in order."""
        check_int("num_steps", num_steps, 1)
        minimum = 2 if self.reduce_warmup else 4
        if num_steps < minimum:
            warmup = "reduce_warmup=True" if self.reduce_warmup else "the Runge-Kutta warm-up"
            raise ValueError(
                f"PNDM with {warmup} expected at least {minimum} steps, got: {num_steps}"
            )
        ts = self.timesteps(num_steps)
        delta = self.num_train_steps // num_steps
        if self.reduce_warmup:
            return _multistep_calls([ts[0], ts[1], *ts[1:]], delta, reduced=True)
        # three Runge-Kutta steps (12 calls) whose first outputs seed the history
        return _runge_kutta_calls(ts[:4], delta // 2) + _multistep_calls(
            list(ts[3:]), delta, reduced=False, history=[0, 4, 8]
        )

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        del init_options
        calls = self.plan(num_steps)
        acp, last = self.alphas_cumprod, calls[-1].t_to
        return float(acp[calls[0].timestep]), float(
            acp[last] if last >= 0 else self.final_alpha_cumprod
        )

    def coefficient_table(self, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, table): each call's coefficient for every state slot, float64."""
        calls = self.plan(num_steps)
        acp, final = self.alphas_cumprod, self.final_alpha_cumprod
        moves = [self._transfer(acp, final, call) for call in calls]
        rows, ets = [], [None, None, None]
        for n, call in enumerate(calls):
            where = _slots_at(n, ets)
            row = dict.fromkeys(SLOTS, 0.0)
            for symbol, coef in _combination(calls, moves, n).items():
                row[where[symbol]] += coef  # KeyError here: an output no slot holds
            rows.append([row[name] for name in SLOTS] + [float(call.push)])
            ets = [n if call.push else ets[self._refill], ets[0], ets[1]]
        timesteps = np.asarray([call.timestep for call in calls], dtype=np.int64)
        return timesteps, np.asarray(rows, dtype=np.float64)

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

    # -- the contract --------------------------------------------------------------------

    def init(self, num_steps: int, sample_template: Array, key: Any = 0) -> tuple[PNDMState, Array]:
        """The loop state and the timesteps of every model call (points repeat)."""
        del key  # PNDM is deterministic
        ts, table = self.coefficient_table(num_steps)
        xp, step, table, timesteps = self._init_arrays(sample_template, ts, table)
        # five distinct arrays: torch.compile specialises on aliasing between inputs
        history = [
            xp.zeros(sample_template.shape, dtype=table.dtype, device=_ops.device(sample_template))
            for _ in range(5)
        ]
        return PNDMState(step, table, *history), timesteps

    def step(self, state: PNDMState, sample: Array, prediction: Array) -> tuple[PNDMState, Array]:
        """One model call's update: a Runge-Kutta stage or a multistep step."""
        _, s, e, _, c = self._begin_step(state, sample, prediction, None)
        if state.last1.shape != s.shape:
            raise ValueError(
                f"sample shape {tuple(s.shape)} differs from the template's "
                f"{tuple(state.last1.shape)} given to init"
            )
        prev = _ops.lincomb(
            (c[0], s),
            (c[1], e),
            (c[2], state.last1),
            (c[3], state.last2),
            (c[4], state.ets1),
            (c[5], state.ets2),
            (c[6], state.ets3),
        )
        # the history moves down one slot; its new head is this output if it joins the
        # history, else an entry that must survive (see _refill)
        head = _ops.select(c[7], e, (state.ets1, state.ets2, state.ets3)[self._refill])
        state = PNDMState(state.step + 1, state.table, e, state.last1, head, state.ets1, state.ets2)
        return state, self._finish(sample, prev)


def _combination(
    calls: list[Call], moves: list[tuple[float, float]], n: int
) -> dict[tuple[str, int], float]:
    """Call n's result as a linear combination of samples ("s", j) and outputs ("e", j).

    φ moves the anchor sample with the call's ε estimate M_n. When the anchor is an earlier
    call's sample it is recovered from this one: the current sample is the previous call's
    φ of the same anchor, s_n = alpha' s_anchor + beta' M_{n-1}.
    """
    call, (alpha, beta) = calls[n], moves[n]
    combo = {("e", j): beta * w for j, w in call.output.items()}
    if call.anchor == n:
        combo[("s", n)] = alpha
        return combo
    prev_alpha, prev_beta = moves[n - 1]
    assert calls[n - 1].anchor == call.anchor
    combo[("s", n)] = alpha / prev_alpha
    for j, w in calls[n - 1].output.items():
        combo[("e", j)] = combo.get(("e", j), 0.0) - alpha * prev_beta * w / prev_alpha
    return combo


def _slots_at(n: int, ets: list[int | None]) -> dict[tuple[str, int], str]:
    """Which state slot holds each sample or output at call n (``ets``: the history's
    call indices, newest first)."""
    where = {("s", n): "sample", ("e", n): "output", ("e", n - 1): "last1", ("e", n - 2): "last2"}
    for name, label in zip(("ets1", "ets2", "ets3"), ets, strict=True):
        if label is not None:
            where.setdefault(("e", label), name)
    return where


def _runge_kutta_calls(ts: np.ndarray, half: int) -> list[Call]:
    """The pseudo Runge-Kutta warm-up over the three intervals of ``ts`` (4 points, eq. 13).

    Each step from t to t - δ calls the model at t, twice at the midpoint and at t - δ,
    always moving from the step's starting sample, and ends with the weights
    (1, 2, 2, 1)/6 of the classical Runge-Kutta method. The midpoint is t - δ + δ/2 with
    δ/2 = (T // N) // 2, as in diffusers.
    """
    calls = []
    for i in range(3):
        start, end = int(ts[i]), int(ts[i + 1])
        mid = end + half
        g = 4 * i  # index of this step's first call
        calls += [
            Call(start, start, start - half, g, {g: 1.0}, True),
            Call(mid, start, mid, g, {g + 1: 1.0}, False),
            Call(mid, start, mid - half, g, {g + 2: 1.0}, False),
            Call(end, start, end, g, {g: 1 / 6, g + 1: 2 / 6, g + 2: 2 / 6, g + 3: 1 / 6}, False),
        ]
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
