"""ComfyUI's single-step samplers: Euler, Heun, DPM2 and Heun++ (explicit Runge-Kutta in σ,
with Karras et al.'s churn), and DPM-Solver-fast (Runge-Kutta in λ = -log σ).

All integrate the probability-flow ODE of the variance-exploding sample x = x_0 + σ ε
(Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
eq. 4 with s = 1; ComfyUI runs them unchanged on the flow sample):

    dx/dσ = d(x, σ) = (x - x̂_0(x, σ)) / σ.                                           (1)

**Churn** (Alg. 2, lines 4-6), with ``s_churn`` > 0: step i first raises the sample to
σ̂_i = (1 + γ_i) σ_i, γ_i = min(S_churn / N, sqrt(2) - 1) on S_tmin <= σ_i <= S_tmax,

    x̂_i = x_i + S_noise sqrt(σ̂_i² - σ_i²) z,                                          (2)

and the step starts from (x̂_i, σ̂_i): ComfyUI calls the model there (at σ̂_i's timestep).
The noise of (2) is drawn by the update that ends step i - 1 (``noise=`` replaces it);
that of step 0 is part of the initial noise, whose scale becomes sqrt(a² + σ̂_0² - σ_0²)
(a the scale of ComfyUI's noise_scaling), equal in distribution. With
``noise_stream="comfy"`` the draws are ComfyUI's ``torch.randn_like`` on its global
generator for the seed, and ``comfy_initial_noise`` folds the first step's draw into the
initial noise exactly (:mod:`diffsched.methods._comfy_noise`).

Each step from σ̂_i to σ_{i+1}, h = σ_{i+1} - σ̂_i, d_i = d(x̂_i, σ̂_i):

* Euler (Alg. 2 without line 8; ComfyUI's ``euler`` and ``ddim``):
  x_{i+1} = x̂_i + h d_i;                                                               (3)
* Heun (Alg. 2, lines 7-8, the explicit trapezoidal rule), Euler when σ_{i+1} = 0:
  x' = x̂_i + h d_i, x_{i+1} = x̂_i + h (d_i + d(x', σ_{i+1})) / 2;                     (4)
* DPM2 (k-diffusion's ``sample_dpm_2``: the midpoint rule in log σ, after Lu et al. 2022,
  "DPM-Solver", Alg. 1 with r = 1/2), Euler when σ_{i+1} = 0: σ_m = sqrt(σ̂_i σ_{i+1}),
  x' = x̂_i + (σ_m - σ̂_i) d_i, x_{i+1} = x̂_i + h d(x', σ_m);                          (5)
* Heun++ (``heunpp2``; Carzit's sd-webui-samplers-scheduler): three stages at σ̂_i,
  σ_{i+1}, σ_{i+2} along Euler steps, weighted by the level,
  x' = x̂_i + h d_i, x'' = x' + (σ_{i+2} - σ_{i+1}) d(x', σ_{i+1}),
  x_{i+1} = x̂_i + h (w_1 d_i + w_2 d' + w_3 d''), w_2 = σ_{i+1}/(3 σ_0),
  w_3 = σ_{i+2}/(3 σ_0), w_1 = 1 - w_2 - w_3;                                          (6)
  on the step before the last, Heun with w_2 = σ_{i+1}/(2 σ_0), w_1 = 1 - w_2; the last step
  (to the list's last level) Euler.

**DPM-Solver-fast** (Lu et al. 2022, "DPM-Solver", sec. 3.3 and Alg. 1-2; ``dpm_fast``):
N model calls on a grid uniform in λ = -log σ from σ_0 to the *last nonzero* level (the
list's interior levels are not used, and the loop ends there: no step to 0): M = ⌊N/3⌋ + 1
steps of order 3 (r = 1/3, 2/3), the last two of order 2 and 1 when 3 | N, else the last of
order N mod 3. With h = λ_{t} - λ_{s} and ε̂ = d (eq. 1 is the ε-form at α = 1):

    DPM-Solver-1: x_t = x_s - σ_t (e^h - 1) ε̂_s,
    DPM-Solver-2: u = x_s - σ_{s1} (e^{h/2} - 1) ε̂_s,
                  x_t = x_s - σ_t (e^h - 1) ε̂_s - σ_t (e^h - 1) (ε̂(u) - ε̂_s),
    DPM-Solver-3: u_1 = x_s - σ_{s1} (e^{h/3} - 1) ε̂_s,
                  u_2 = x_s - σ_{s2} (e^{2h/3} - 1) ε̂_s
                        - 2 σ_{s2} ((e^{2h/3} - 1)/(2h/3) - 1) (ε̂(u_1) - ε̂_s),
                  x_t = x_s - σ_t (e^h - 1) ε̂_s - (3/2) σ_t ((e^h - 1)/h - 1) (ε̂(u_2) - ε̂_s).

Every step is a Runge-Kutta step of the kit (:func:`~diffsched.methods.kit.runge_kutta`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..core import ops
from ..core.options import option, with_default
from ..core.scheduler import BrownianNoise, Churn, document
from ..schedules import sigmas as sigma_schedules
from ._comfy import Calls, CFGPlusPlus, ComfySampler, check_step_count
from ._comfy_noise import GLOBAL, ComfyNoise, generator_draw, generator_state, initial_noise
from .kit import EULER, HEUN, RALSTON, RKStep, butcher_step, churn_levels, runge_kutta


def first_stages(steps: list[RKStep]) -> np.ndarray:
    """(calls,) True at the first stage of each step."""
    return np.concatenate([np.arange(len(st.sigmas)) == 0 for st in steps])


@dataclass(frozen=True, kw_only=True)
class _ChurnSampler(ComfyNoise, BrownianNoise, Churn, ComfySampler):
    """A single-step ComfyUI sampler with Karras et al.'s churn (eq. 2)."""

    # noise_stream="comfy": ComfyUI's churn draws torch.randn_like, the global generator
    COMFY_STREAM = GLOBAL
    # ComfyUI's heunpp2 draws its churn normal every step, used or not
    COMFY_CHURN_EVERY_STEP: ClassVar[bool] = False

    def _comfy_churns(self, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((N,) whether ComfyUI draws a churn normal at the start of step i, σ̂)."""
        hat = churn_levels(sigmas, self.s_churn, self.s_tmin, self.s_tmax)
        n = len(hat)
        return (np.ones(n, bool) if self.COMFY_CHURN_EVERY_STEP else hat > sigmas[:n]), hat

    def comfy_draws(self, sigmas: np.ndarray) -> np.ndarray:
        """Step i's churn normal (ComfyUI draws it before step i's first call) is drawn by
        the last call of step i - 1, over (σ_i, σ̂_i); step 0's: see :meth:`comfy_skip`."""
        churns, hat = self._comfy_churns(sigmas)
        step = np.cumsum(self.calls(sigmas).first) - 1  # each call's step
        out = np.full((len(step), 2), np.nan)
        for i in np.flatnonzero(churns[1:]) + 1:
            out[np.flatnonzero(step == i - 1)[-1]] = sigmas[i], hat[i]
        return out

    def comfy_skip(self, sigmas: np.ndarray) -> int:
        return int(self._comfy_churns(sigmas)[0][0])

    def comfy_initial_noise(self, seed: int, shape: Any, num_steps: int | None, **init_options):
        """ComfyUI's start where step 0 churns: x = a n_0 + S_noise sqrt(σ̂_0² - σ_0²) z_0
        (z_0 the global generator's next draw), scaled to unit variance by this class's
        start scale (``init_noise_scale``), so the loop's first sample is ComfyUI's."""
        n0 = initial_noise(seed, shape).double()
        sig = self.sigmas(num_steps, **init_options)
        hat = churn_levels(sig, self.s_churn, self.s_tmin, self.s_tmax)
        if not hat[0] > sig[0]:
            return n0
        z0 = generator_draw(generator_state(seed, tuple(n0.shape)), tuple(n0.shape))[0].double()
        program = self.program(num_steps, **init_options)
        total = program.init_noise_scale * float(program.input_scale[0])  # native start scale
        a = self.model_sampling.noise_scaling(float(sig[0]))[0]
        c = self.s_noise * math.sqrt(hat[0] ** 2 - sig[0] ** 2)
        return (a * n0 + c * z0) / total

    @property
    def deterministic(self) -> bool:
        return self.s_churn == 0

    # the Butcher tableau (a, b, c) of a step (the kit's EULER, HEUN, RALSTON), or None
    # where the class writes its own step_rows
    BUTCHER: ClassVar[tuple | None] = None

    def step_rows(self, sig: np.ndarray, hat: np.ndarray, i: int, noise: float) -> RKStep:
        """Step i from (x̂_i, σ̂_i) to σ_{i+1}, adding ``noise`` · z (the next churn): the
        class's Butcher tableau, Euler's on the step to σ = 0."""
        if self.BUTCHER is None:
            raise NotImplementedError
        tableau = EULER if sig[i + 1] == 0 else self.BUTCHER
        return butcher_step(hat[i], sig[i + 1], *tableau, noise=noise)

    def calls(self, sigmas: np.ndarray) -> Calls:
        hat = churn_levels(sigmas, self.s_churn, self.s_tmin, self.s_tmax)
        n = len(hat)
        churn = self.s_noise * np.sqrt(np.maximum(hat**2 - sigmas[:n] ** 2, 0.0))  # eq. 2
        steps = [
            self.step_rows(sigmas, hat, i, float(churn[i + 1]) if i + 1 < n else 0.0)
            for i in range(n)
        ]
        levels, update, noise = runge_kutta(steps)
        noise = noise if self.s_churn > 0 else None
        return Calls(levels, update, noise, start_sigma=hat[0], first=first_stages(steps))

    def brownian_intervals(
        self, tau: np.ndarray, noise: np.ndarray, num_steps: int, init_options: dict
    ) -> np.ndarray:
        """The churn of eq. 2 raises step i + 1's start from σ_{i+1} to σ̂_{i+1}: the draw
        of the call that ends step i spans (σ_{i+1}, σ̂_{i+1}), in τ (Heun++ ends its steps
        with a stage at σ_{i+2}, whose own level would overlap the next step's)."""
        sig = self.sigmas(num_steps, **init_options)
        hat = churn_levels(sig, self.s_churn, self.s_tmin, self.s_tmax)
        step = np.cumsum(self.calls(sig).first) - 1  # each call's step
        flow = self.model_sampling.flow and not self.CFG_PP_VE_SPLIT
        to_tau = (lambda v: v) if flow else (lambda v: v / (1.0 + v))
        out = np.stack([tau, tau], axis=1)
        for i in np.flatnonzero(np.asarray(noise) != 0):
            j = int(step[i]) + 1  # the step whose churn this call draws
            out[i] = to_tau(sig[j]), to_tau(hat[j])
        return np.clip(out, 0.0, 1.0)  # a churned flow level above 1: the path's end


@document
@dataclass(frozen=True, kw_only=True)
class ComfyEuler(CFGPlusPlus, _ChurnSampler):
    """ComfyUI's ``euler`` (and ``ddim``, which ComfyUI runs as Euler): Euler's method on
    the probability-flow ODE, with optional churn (Karras et al. 2022, Alg. 2; eq. 3).

    First order; one model call per step; deterministic unless ``s_churn`` > 0. Not to be
    confused with diffsched's ``Euler`` (diffusers' grid and timestep interpolation) or
    with ComfyUI's ``ddim`` being DDIM (it is not: same as this).

    ``euler_cfg_pp`` (``cfg_pp=True``): x_{i+1} = α_{i+1} x̂_0(g) + σ_{i+1} ε̂(u), ε̂(u) =
    (x_i - α_i x̂_0(u))/σ_i, with the model's α (1, or 1 - σ on flow models): the engine's
    CFG++ rule on this class, which the option only names; without ``unconditional=`` it is
    ``euler``.

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    COMFY_NAMES = ("euler", "ddim", "euler_cfg_pp")
    COMFY_OPTIONS = {"euler_cfg_pp": {"cfg_pp": True}}  # noqa: RUF012
    BUTCHER = EULER


@document
@dataclass(frozen=True, kw_only=True)
class ComfyHeun(_ChurnSampler):
    """ComfyUI's ``heun``: Heun's second-order method (Karras et al. 2022, Alg. 2; eq. 4).

    Second order; two model calls per step, one on the step to σ = 0 (2N - 1 calls).

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 2
    CALLS_PER_STEP = 2
    COMFY_NAMES = ("heun",)
    BUTCHER = HEUN


@document
@dataclass(frozen=True, kw_only=True)
class Ralston(_ChurnSampler):
    """Ralston's second-order Runge-Kutta method (Ralston 1962, eq. 3.5: c_2 = 2/3, weights
    1/4 and 3/4, the pair with the smallest error bound) on the probability-flow ODE, with
    optional churn; the step to σ = 0 is Euler's, as Heun's.

    Second order; two model calls per step, one on the step to σ = 0 (2N - 1 calls). Not to
    be confused with Heun (c_2 = 1, weights 1/2, 1/2).

    Not in diffusers (nor in ComfyUI): ComfyUI's convention (model input, nearest-index
    timesteps, its schedulers through ``scheduler`` or ``init(..., sigmas=[...])``).
    """

    ORDER = 2
    CALLS_PER_STEP = 2
    BUTCHER = RALSTON


@document
@dataclass(frozen=True, kw_only=True)
class ComfyDPM2(_ChurnSampler):
    """ComfyUI's ``dpm_2``: the log-σ midpoint rule (k-diffusion's DPM2; eq. 5).

    Second order; two model calls per step, one on the step to σ = 0. ComfyUI's KSampler
    asks its scheduler for N + 1 steps and drops the second-to-last level.

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 2
    CALLS_PER_STEP = 2
    DISCARD_PENULTIMATE = True
    COMFY_NAMES = ("dpm_2",)

    def step_rows(self, sig, hat, i, noise):
        lo, hi = hat[i], sig[i + 1]
        if hi == 0:
            return butcher_step(lo, hi, *EULER, noise=noise)
        mid = math.exp(math.log(lo) + 0.5 * (math.log(hi) - math.log(lo)))  # eq. 5
        a = np.array([[0.0, 0.0], [mid - lo, 0.0]])
        return RKStep(np.array([lo, mid]), a, np.array([0.0, hi - lo]), noise)


@document
@dataclass(frozen=True, kw_only=True)
class ComfyHeunPP2(_ChurnSampler):
    """ComfyUI's ``heunpp2``: Heun++, three Euler stages weighted by level (eq. 6).

    Three model calls per step (two on the step before the last, one on the last: 3N - 3
    calls). ComfyUI draws a churn normal every step, used only when ``s_churn`` > 0; this
    class draws only those it uses (with ``noise_stream="comfy"`` its stream moves as
    ComfyUI's does).

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 2
    CALLS_PER_STEP = 3
    COMFY_NAMES = ("heunpp2",)
    COMFY_CHURN_EVERY_STEP = True

    def step_rows(self, sig, hat, i, noise):
        s0, lo, hi, end = sig[0], hat[i], sig[i + 1], sig[-1]
        h = hi - lo
        if hi == end:
            return butcher_step(lo, hi, *EULER, noise=noise)
        if sig[i + 2] == end:
            w2 = hi / (2 * s0)
            a = np.array([[0.0, 0.0], [h, 0.0]])
            return RKStep(np.array([lo, hi]), a, h * np.array([1 - w2, w2]), noise)
        nxt = sig[i + 2]
        w2, w3 = hi / (3 * s0), nxt / (3 * s0)
        a = np.array([[0.0, 0.0, 0.0], [h, 0.0, 0.0], [h, nxt - hi, 0.0]])
        return RKStep(np.array([lo, hi, nxt]), a, h * np.array([1 - w2 - w3, w2, w3]), noise)


def _dpm_solver_step(t: float, t_next: float, order: int) -> RKStep:
    """DPM-Solver-1/2/3 (noise form, α = 1) from λ = t to t_next as a Runge-Kutta step on
    ε̂ = d, with the model called at σ = e^{-λ} of each stage (Lu et al. 2022, Alg. 1-2)."""
    h = t_next - t
    sig, sig_next = math.exp(-t), math.exp(-t_next)
    e = math.expm1(h)
    if order == 1:
        return RKStep(np.array([sig]), np.zeros((1, 1)), np.array([-sig_next * e]))
    if order == 2:
        r1 = 0.5
        s1 = math.exp(-(t + r1 * h))
        a = np.array([[0.0, 0.0], [-s1 * math.expm1(r1 * h), 0.0]])
        c = sig_next / (2 * r1) * e
        return RKStep(np.array([sig, s1]), a, np.array([-sig_next * e + c, -c]))
    r1, r2 = 1 / 3, 2 / 3
    s1, s2 = math.exp(-(t + r1 * h)), math.exp(-(t + r2 * h))
    e2 = math.expm1(r2 * h) / (r2 * h) - 1
    c2 = s2 * (r2 / r1) * e2
    a = np.array(
        [
            [0.0, 0.0, 0.0],
            [-s1 * math.expm1(r1 * h), 0.0, 0.0],
            [-s2 * math.expm1(r2 * h) + c2, -c2, 0.0],
        ]
    )
    c3 = sig_next / r2 * (e / h - 1)
    return RKStep(np.array([sig, s1, s2]), a, np.array([-sig_next * e + c3, 0.0, -c3]))


@document
@dataclass(frozen=True, kw_only=True)
class ComfyDPMFast(ComfySampler):
    """ComfyUI's ``dpm_fast``: DPM-Solver-fast (Lu et al. 2022, sec. 3.3), orders 3, ..., 3,
    2, 1 on a grid uniform in log σ from σ_0 to the last nonzero level of the list.

    N model calls for an N-step list, whose interior levels it does not use; the loop ends
    at the last nonzero level (ComfyUI's result; no step to 0). ComfyUI draws a normal per
    step and multiplies it by 0 (η = 0); this class draws none.

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 3
    COMFY_NAMES = ("dpm_fast",)

    def calls(self, sigmas: np.ndarray) -> Calls:
        check_step_count(type(self).__name__, sigmas, 1)
        nfe = len(sigmas) - 1
        low = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
        m = nfe // 3 + 1
        ts = np.linspace(-math.log(sigmas[0]), -math.log(low), m + 1)
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        steps = [_dpm_solver_step(ts[i], ts[i + 1], k) for i, k in enumerate(orders)]
        levels, update, _ = runge_kutta(steps)
        return Calls(levels, update, first=first_stages(steps))


# the single-step solvers a restart loop runs (Butcher tableaux of the kit)
RESTART_SOLVERS = {"euler": EULER, "heun": HEUN, "ralston": RALSTON}


@document
@dataclass(frozen=True, kw_only=True)
class Restart(BrownianNoise, ComfySampler):
    """Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative
    Processes", Alg. 1): an ODE solver on the main σ grid that, on reaching the level
    nearest t_min, jumps back up to the level nearest t_max by adding forward noise,

        x(t_max) = x(t_min) + S_noise · sqrt(t_max² - t_min²) ε,              (Alg. 1, l. 6)

    and solves the ODE down to t_min again on a Karras grid of N_restart steps (eq. 5 of
    Karras et al. 2022, ρ = 7), K times (l. 5-9); then the main grid goes on. The noise
    contracts the errors the ODE steps accumulated (sec. 3); between jumps the method is
    the deterministic solver (Heun's by default, as in the paper).

    ``restart_steps`` = N_restart and ``restart_times`` = K; 0 and 0 choose them by the
    main grid's N as the paper's Stable Diffusion setting is used in practice (interval
    [0.1, 2]): no restart below N = 20, N_restart = 9 and K = 1 from 20, N_restart = N // 4
    and K = 2 from 36. A restart adds K · N_restart steps to the N of the main grid.
    Stochastic (at the jumps); ``noise=`` overrides the draw of a jump.

    Not in diffusers nor in ComfyUI: ComfyUI's convention (model input, nearest-index
    timesteps, its schedulers through ``scheduler`` (default karras) or ``init(...,
    sigmas=[...])``).
    """

    ORDER = 2
    CALLS_PER_STEP = 2
    scheduler: str = with_default(ComfySampler, "scheduler", "karras")
    solver: str = option(
        "heun", "the ODE solver between jumps: heun (the paper's), euler or ralston",
        choices=tuple(RESTART_SOLVERS),
    )  # fmt: skip
    restart_min: float = option(0.1, "t_min: the restart interval's lower end (the main "
                                "grid's level nearest it)", low=0.0, low_open=True)  # fmt: skip
    restart_max: float = option(2.0, "t_max: the level the jumps reach (the main grid's "
                                "level nearest it)", low=0.0, low_open=True)  # fmt: skip
    restart_steps: int = option(0, "N_restart: ODE steps of each restart pass (0, with "
                                "restart_times 0: by N)", low=0, high=10_000)  # fmt: skip
    restart_times: int = option(0, "K: restart passes (0, with restart_steps 0: by N)",
                                low=0, high=100)  # fmt: skip
    s_noise: float = option(1.0, "S_noise: the scale of the jumps' noise", low=0.0)

    def _check(self) -> None:
        super()._check()
        if (self.restart_steps == 0) != (self.restart_times == 0):
            raise ValueError(
                "Restart options restart_steps and restart_times are both 0 (chosen by N) or "
                f"both positive, got restart_steps={self.restart_steps}, "
                f"restart_times={self.restart_times}"
            )
        if self.noise_type == "brownian":
            raise ValueError(
                "Restart option noise_type='brownian' does not apply: its K jumps revisit one "
                "interval (t_min, t_max), which needs independent draws, not one path's "
                "increments; use noise_type='gaussian'"
            )
        if self.restart_min >= self.restart_max:
            raise ValueError(
                f"Restart option restart_min={self.restart_min} must be below "
                f"restart_max={self.restart_max}"
            )

    @property
    def deterministic(self) -> bool:
        return False

    def plan(self, num_steps: int) -> tuple[int, int]:
        """(N_restart, K) for a main grid of ``num_steps`` steps."""
        if self.restart_times:
            return self.restart_steps, self.restart_times
        if num_steps >= 36:
            return num_steps // 4, 2
        return (9, 1) if num_steps >= 20 else (0, 0)

    def calls(self, sigmas: np.ndarray) -> Calls:
        n = len(sigmas) - 1
        tableau = RESTART_SOLVERS[self.solver]
        per_pass, times = self.plan(n)
        stages = len(RESTART_SOLVERS[self.solver][1])  # calls per step (its weights b)
        ops.check_calls(type(self).__name__, (n + times * per_pass) * stages,
                        f"{n} steps with restart_steps={per_pass} and "
                        f"restart_times={times}")  # fmt: skip
        levels = np.asarray(sigmas, dtype=np.float64)
        low = int(np.argmin(np.abs(levels - self.restart_min)))  # Alg. 1's t_min, t_max
        high = int(np.argmin(np.abs(levels - self.restart_max)))
        restart = per_pass > 0 and high < low < n and levels[low] > 0
        jump = self.s_noise * math.sqrt(levels[high] ** 2 - levels[low] ** 2) if restart else 0.0
        inner = (sigma_schedules.karras(levels[low], levels[high], per_pass + 1)
                 if restart else None)  # fmt: skip
        pairs: list[tuple[float, float]] = []
        for i in range(n):
            pairs.append((levels[i], levels[i + 1]))
            if restart and i + 1 == low:
                for _ in range(times):
                    pairs.extend(itertools.pairwise(inner))
        steps = []
        for k, (sigma, sigma_next) in enumerate(pairs):
            # the jump's noise ends the step that lands on t_min before a restart pass
            nxt = pairs[k + 1][0] if k + 1 < len(pairs) else sigma_next
            noise = jump if nxt > sigma_next else 0.0
            rule = EULER if sigma_next == 0 else tableau
            steps.append(butcher_step(sigma, sigma_next, *rule, noise=noise))
        calls_sigmas, update, noise = runge_kutta(steps)
        return Calls(calls_sigmas, update, noise if restart else None,
                     first=first_stages(steps))  # fmt: skip
