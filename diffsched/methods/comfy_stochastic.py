"""ComfyUI's stochastic samplers: ancestral steps, DPM-Solver++ SDE solvers, DDPM, LCM,
RES multistep with ancestral noise, the ER-SDE solver, SEEDS and SA-Solver (the last two
in their classes' docstrings).

Every sampler works on the variance-exploding sample x = x_0 + σ ε (ε-, v-, x_0- and LCM
models) or on the rectified-flow sample x = (1 - σ) x_0 + σ ε (flow, flux). Write
x = α (x_0 + (σ/α) ε), α = 1 (VE) or 1 - σ (flow), and λ = log(α/σ) for the half
log-SNR: λ = -log σ (VE) or log((1 - σ)/σ) (flow). z is a fresh standard normal draw.

**Ancestral steps** (Ho et al. 2020's posterior sample in VE variables; k-diffusion's
``get_ancestral_step``): from σ_s to σ_t, with η the ancestral strength,

    σ_up = min(σ_t, η sqrt(σ_t² (σ_s² - σ_t²) / σ_s²)),  σ_down = sqrt(σ_t² - σ_up²),   (1)

step deterministically to σ_down, then add S_noise σ_up z. On flow models ComfyUI's RF
forms step to σ_down = σ_t (1 + (σ_t/σ_s - 1) η) and renoise as

    x_t = (α_t/α_down) x_down + S_noise sqrt(σ_t² - σ_down² α_t²/α_down²) z.            (2)

The deterministic parts:

* ``euler_ancestral``: Euler to σ_down (Karras et al. 2022, eq. 4), on flow models the
  exact interpolation x_down = (σ_down/σ_s) x + (1 - σ_down/σ_s) x̂_0;
* ``dpm_2_ancestral``: the log-σ midpoint step (DPM-Solver-2, Lu et al. 2022, r = 1/2)
  to σ_down, σ_m = sqrt(σ_s σ_down), Euler when σ_down = 0;
* ``dpmpp_2s_ancestral``: DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1, r = 1/2) to
  σ_down: u = (σ_m/σ_s) x - (e^{-h/2} - 1) x̂_0, x_down = (σ_down/σ_s) x - (e^{-h} - 1)
  x̂_0(u), h = λ_down - λ_s; on flow models σ_m at λ_s + h/2 (0.9999 when σ_s = 1) and
  x_down = (σ_down/σ_s) x + (1 - σ_down/σ_s) x̂_0(u).

**DPM-Solver++ SDE** (Lu et al. 2022b, sec. 5 and App. B; the SDE solver with
η-scaled noise, h = λ_t - λ_s, h_η = (1 + η) h):

    x_t = (σ_t/σ_s) e^{-η h} x_s + α_t (1 - e^{-h_η}) x̂_0,s
          + σ_t S_noise sqrt(1 - e^{-2 η h}) z  (+ the multistep corrections)          (3)

* ``dpmpp_2m_sde``: + (α_t/r) c (x̂_0,s - x̂_0,{s-1}), r = h_{i-1}/h, c = (1 - e^{-h_η})/2
  (midpoint) or (1 - e^{-h_η})/(-h_η) + 1 (heun);
* ``dpmpp_3m_sde``: with D_1 = (x̂_0,i - x̂_0,{i-1})/r_0, D_1' = (x̂_0,{i-1} - x̂_0,{i-2})/r_1
  (r_k = h_{i-1-k}/h), d_1 = D_1 + (D_1 - D_1') r_0/(r_0 + r_1), d_2 = (D_1 - D_1')/(r_0 + r_1),
  φ_2 = (e^{-h_η} - 1)/h_η + 1, φ_3 = φ_2/h_η - 1/2: + α_t φ_2 d_1 - α_t φ_3 d_2
  (the 2M form on the second step, first order on the first);
* ``dpmpp_sde``: two stages, the first at λ_s + r h, each an ancestral data-prediction
  step (1) in e^{-λ}: x_u = (α_u/α_s) e^{-h'} x_s - α_u (e^{-h'} - 1) x̂_0,s
  + α_u S_noise σ_up z_1, h' = -log σ_down - λ_s, and the step to t with
  x̂_0 = (1 - 1/(2r)) x̂_0,s + x̂_0(x_u)/(2r) and a second draw z_2.

Each lands on x̂_0 on the step to σ = 0. On flow models a first level σ_0 >= 1 (λ = -∞) is
replaced by ``percent_to_sigma(1e-4)`` (ComfyUI's ``offset_first_sigma_for_snr``): the
first model call is made there, from the loop's initial noise.

**DDPM** (Ho et al. 2020, eq. 6-7) in VP variables, ᾱ = 1/(1 + σ²), α = ᾱ_s/ᾱ_t:
x_vp = x_s sqrt(ᾱ_s), ε̂ = (x_s - x̂_0)/σ_s,
μ = (x_vp - (1 - α) ε̂ / sqrt(1 - ᾱ_s)) / sqrt(α), x_t = (μ + sqrt((1 - α)(1 - ᾱ_t)/(1 - ᾱ_s)) z)
/ sqrt(ᾱ_t).

**LCM** multistep sampling (Luo et al. 2023, Alg. 1): x_t = x̂_0 + σ_t z (flow: σ_t z +
(1 - σ_t) x̂_0).

**RES multistep, ancestral** (Zhang et al. 2023, arXiv:2308.02157, the 2-step method of
``res_multistep``) to σ_down of (1), then + S_noise σ_up z; with λ = -log σ,
h = λ_down - λ_s, c_2 = (λ_{i-1} - λ_{down,i-1})/h: x_down = e^{-h} x_s
+ h ((φ_1(-h) - φ_2(-h)/c_2) x̂_0,i + φ_2(-h)/c_2 x̂_0,{i-1}); Euler on the first step and
where σ_down = 0.

**ER-SDE-Solver-3** (Cui et al. 2023, "Elucidating the Solution Space of Extended
Reverse-Time SDE for Diffusion Models", arXiv:2309.06169, VP form, eq. 18-20) in
ρ = e^{-λ} = σ/α with the noise scaler f: r = f(ρ_t)/f(ρ_s),

    x_t = (α_t/α_s) r x_s + α_t (1 - r) x̂_0,s
          + α_t (ρ_t - ρ_s + f(ρ_t) S_1) D_1 + α_t ((ρ_t - ρ_s)²/2 + f(ρ_t) S_2) D_2
          + α_t S_noise sqrt(ρ_t² - ρ_s² r²) z,                                         (4)

S_1 = ∫_{ρ_t}^{ρ_s} dρ/f(ρ), S_2 = ∫_{ρ_t}^{ρ_s} (ρ - ρ_s)/f(ρ) dρ (each by the left
rectangle rule on 200 equal cells from ρ_t, as ComfyUI), D_1 = (x̂_0,i - x̂_0,{i-1})/
(ρ_i - ρ_{i-1}), D_2 = (D_1,i - D_1,{i-1}) / ((ρ_i - ρ_{i-2})/2): stage 1 on the first step,
stage 2 on the second, up to ``max_stage``. f(ρ) = ρ (e^{ρ^0.3} + 10) (``er_sde``, the
paper's ER-SDE 5) or ρ^{η + 1} (``reverse_time_sde``: η = 1 is the reverse-time SDE,
η = 0 the ODE).

ComfyUI draws noise where it multiplies it by 0 (η = 0, the step to σ = 0 of some
samplers); these classes draw only the normals they use, one per call at most. Each records
where ComfyUI draws (``add_noise(..., draw=(σ, σ'))``, the pair ComfyUI's noise sampler is
asked for), so that with ``noise_stream="comfy"`` they draw ComfyUI's own normals for a seed
(its seeded torch.Generator; torchsde's Brownian tree for dpmpp_sde, dpmpp_2m_sde and
dpmpp_3m_sde): :mod:`diffsched.methods._comfy_noise`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..core.engine import NOISE, SAMPLE, X0, Update
from ..core.options import option
from ..core.scheduler import BrownianNoise, document
from ._comfy import Calls, CFGPlusPlus, ComfySampler
from ._comfy_noise import BROWNIAN, ComfyNoise

QUADRATURE_POINTS = 200  # ComfyUI's er_sde: cells of the rectangle rule of S_1, S_2


def ancestral_step(sigma: Any, sigma_next: Any, eta: float, xp: Any = None) -> tuple[Any, Any]:
    """(σ_down, σ_up) of eq. 1 (no noise when η = 0): of floats, or with ``xp`` of 0-d
    arrays of that namespace (a loop that decides its levels as it runs)."""
    if eta == 0:
        return sigma_next, 0.0
    smaller = min if xp is None else xp.minimum
    up = smaller(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - up**2) ** 0.5, up


def _down_step(down: float, lam_s: float) -> float:
    """h = λ_down - λ_s of a stage that steps to σ_down; +inf where the ancestral split
    leaves no deterministic part (σ_down = 0: η large for the step), so that the stage
    lands on x̂_0 (e^{-h} = 0, -expm1(-h) = 1) plus its noise, as ComfyUI's arithmetic
    gives there."""
    return math.inf if down == 0 else -math.log(down) - lam_s


def rf_ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float, float]:
    """(σ_down, α_t/α_down, renoise coefficient) of the rectified-flow form (eq. 2)."""
    down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    ratio = (1 - sigma_next) / (1 - down)
    renoise = max(sigma_next**2 - down**2 * ratio**2, 0.0) ** 0.5
    return down, ratio, renoise


class _Loop:
    """A sampler's model calls built call by call: each call's level and its update as
    {(operand, call it belongs to): coefficient}, plus its fresh-noise coefficient."""

    def __init__(self) -> None:
        self.levels: list[float] = []
        self.rows: list[dict[tuple[str, int], float]] = []
        self.noise: list[float] = []
        self.first: list[bool] = []
        self.draws: list[tuple[float, float]] = []  # ComfyUI's draw after each call

    def call(self, sigma: float, first: bool = True) -> int:
        """A new model call at ``sigma``; its index."""
        self.levels.append(float(sigma))
        self.rows.append({})
        self.noise.append(0.0)
        self.first.append(first)
        self.draws.append((math.nan, math.nan))
        return len(self.levels) - 1

    def steps(
        self, sigmas: np.ndarray, land: bool = True
    ) -> Iterator[tuple[int, float, float, int]]:
        """Each step of ``sigmas`` as (i, σ_s, σ_t, its model call at σ_s). With ``land``
        the step to σ = 0 lands on that call's x̂_0 and is not yielded."""
        for i in range(len(sigmas) - 1):
            s, t = float(sigmas[i]), float(sigmas[i + 1])
            c = self.call(s)
            if land and t == 0:
                self.add(X0, c, 1.0)
                continue
            yield i, s, t, c

    def add(self, operand: str, call: int, value: float) -> None:
        """Adds value · operand(call) to the last call's next sample."""
        key = (operand, call)
        self.rows[-1][key] = self.rows[-1].get(key, 0.0) + float(value)

    def add_noise(self, value: float, draw: tuple[float, float] | None = None) -> None:
        """Adds value · z to the last call's next sample; ``draw``: the (σ, σ') ComfyUI asks
        its noise sampler for there, recorded even where ``value`` is 0 (ComfyUI draws and
        multiplies by 0; its stream moves on: ``noise_stream="comfy"``)."""
        self.noise[-1] += float(value)
        if draw is None and value == 0:
            return
        if not math.isnan(self.draws[-1][0]):
            raise ValueError("ComfyUI's samplers draw at most once after a model call")
        self.draws[-1] = (0.0, 0.0) if draw is None else (float(draw[0]), float(draw[1]))

    def calls(self, **extra) -> Calls:
        n = len(self.levels)
        update = Update(n)
        for i, row in enumerate(self.rows):
            for (operand, src), value in row.items():
                if value != 0:
                    update.add(operand, i - src, i, value)
        noise = np.asarray(self.noise) if any(self.noise) else None
        return Calls(
            np.asarray(self.levels),
            update,
            noise,
            first=np.asarray(self.first),
            draws=np.asarray(self.draws, np.float64).reshape(-1, 2),
            **extra,
        )


@dataclass(frozen=True, kw_only=True)
class _Stochastic(ComfyNoise, BrownianNoise, ComfySampler):
    """A ComfyUI sampler drawing fresh noise, S_noise times (eq. 1-4)."""

    s_noise: float = option(1.0, "S_noise: the scale of the added noise", low=0.0)
    # η; the samplers with an η option declare it (ddpm and lcm always take the full step)
    eta: ClassVar[float] = 1.0

    @property
    def deterministic(self) -> bool:
        return self.s_noise == 0 or self.eta == 0

    # the half log-SNR λ = log(α/σ) and its inverse (VE: α = 1; flow: α = 1 - σ)
    def lam(self, sigma: float) -> float:
        if self.model_sampling.flow:
            return math.log((1 - sigma) / sigma)
        return -math.log(sigma)

    def sigma_of(self, lam: float) -> float:
        if self.model_sampling.flow:
            return 1.0 / (1.0 + math.exp(lam))
        return math.exp(-lam)

    def alpha(self, sigma: float) -> float:
        return 1.0 - sigma if self.model_sampling.flow else 1.0

    def offset_first(self, sigmas: np.ndarray) -> np.ndarray:
        """ComfyUI's offset_first_sigma_for_snr: on flow models a first level >= 1 (λ = -∞)
        becomes percent_to_sigma(1e-4)."""
        if self.model_sampling.flow and len(sigmas) > 1 and sigmas[0] >= 1:
            sigmas = sigmas.copy()
            sigmas[0] = self.model_sampling.percent_to_sigma(1e-4)
        return sigmas


def _derivative(loop: _Loop, call: int, weight: float, sigma: float) -> None:
    """weight · (x_call - x̂_0,call) / σ."""
    loop.add(SAMPLE, call, weight / sigma)
    loop.add(X0, call, -weight / sigma)


_ETA = dict(low=0.0)
# A stage at λ_s + r h enters the step with weight ~1/r (its x̂_0 difference from the
# first stage's, over r h), so 1/r multiplies the model's rounding: below 1e-3 that costs
# a float32 loop more than half its digits, and r = 2e-158 gave 1e141 (the fuzzer).
# ComfyUI's nodes step r by 0.01.
_STAGE = dict(low=1e-3)


@document
@dataclass(frozen=True, kw_only=True)
class ComfyEulerAncestral(CFGPlusPlus, _Stochastic):
    """ComfyUI's ``euler_ancestral``: Euler to σ_down, then fresh noise σ_up (eq. 1); on
    flow models its RF form (eq. 2).

    First order; one model call and one normal per step (none on the step to 0).

    ``euler_ancestral_cfg_pp`` (``cfg_pp=True``): ComfyUI's CFG++ form, a DDIM-like
    ancestral step in x/α on every model (no RF form), with guided g and unconditional u:
    ρ = σ/α, (ρ_down, ρ_up) of eq. 1 from (ρ_s, ρ_t),

        x_t = α_t x̂_0(g) + α_t ρ_down (x_s - α_s x̂_0(u))/σ_s + α_t S_noise ρ_up z,

    α = σ e^λ (1, or 1 - σ on flow models; at σ_s = 1 on a flow model ρ_s = ∞, where
    ComfyUI's eq. 1 gives ρ_up = ρ_t whatever η: kept), x_t = x̂_0(g) on the step to 0,
    noise only where η > 0 and S_noise > 0 (η = 0 is ``euler_cfg_pp``). Without
    ``unconditional=`` it is this step with u = the prediction: ``euler_ancestral`` on
    ε-, v- and x_0-models, the DDIM-like form above (not the RF one) on flow models.

    Not in diffusers as such (diffsched's ``EulerAncestral`` is diffusers' grid of it):
    ComfyUI's convention (model input, nearest-index timesteps, its schedulers).
    """

    COMFY_NAMES = ("euler_ancestral", "euler_ancestral_cfg_pp")
    COMFY_OPTIONS = {"euler_ancestral_cfg_pp": {"cfg_pp": True}}  # noqa: RUF012
    eta: float = option(1.0, "η of eq. 1: 0 is Euler, 1 the ancestral (DDPM-like) step", **_ETA)

    def cfg_pp_calls(self, sigmas: np.ndarray) -> Calls:
        """ComfyUI's euler_ancestral_cfg_pp (the class docstring)."""
        loop, guided = _Loop(), []
        for _, s, t, c in loop.steps(sigmas, land=False):
            if t == 0:
                loop.add(X0, c, 1.0)
                guided.append(1.0)
                continue
            a_s, a_t = self.alpha(s), self.alpha(t)
            # ρ_s = ∞ at α_s = 0: eq. 1's root is NaN there and min(ρ_t, NaN) keeps ρ_t,
            # as ComfyUI's min() of tensors does (ρ_down = 0, ρ_up = ρ_t)
            rho_s = s / a_s if a_s > 0 else math.inf
            with np.errstate(invalid="ignore"):
                down, up = ancestral_step(rho_s, t / a_t, self.eta)
            loop.add(SAMPLE, c, a_t * down / s)
            loop.add(X0, c, a_t - a_t * down * a_s / s)
            guided.append(a_t)
            if self.eta > 0 and self.s_noise > 0:
                loop.add_noise(a_t * self.s_noise * up)
        return loop.calls(guided=np.array(guided))

    def calls(self, sigmas: np.ndarray) -> Calls:
        if self.cfg_pp:
            return self.cfg_pp_calls(sigmas)
        loop = _Loop()
        flow = self.model_sampling.flow
        for _, s, t, c in loop.steps(sigmas, land=False):
            if flow:
                if t == 0:
                    loop.add(X0, c, 1.0)
                    continue
                down, ratio, renoise = rf_ancestral_step(s, t, self.eta)
                scale = ratio if self.eta > 0 else 1.0
                loop.add(SAMPLE, c, scale * down / s)
                loop.add(X0, c, scale * (1 - down / s))
                if self.eta > 0:
                    loop.add_noise(self.s_noise * renoise, (s, t))
                continue
            down, up = ancestral_step(s, t, self.eta)
            if down == 0:
                loop.add(X0, c, 1.0)
                continue
            loop.add(SAMPLE, c, 1.0)
            _derivative(loop, c, down - s, s)
            loop.add_noise(self.s_noise * up, (s, t))
        return loop.calls()


@document
@dataclass(frozen=True, kw_only=True)
class ComfyDPM2Ancestral(_Stochastic):
    """ComfyUI's ``dpm_2_ancestral``: the log-σ midpoint step (DPM-Solver-2) to σ_down, then
    fresh noise (eq. 1); on flow models its RF form (eq. 2).

    Second order; two model calls per step (one on the step to 0), one normal per step.
    ComfyUI's KSampler asks its scheduler for N + 1 steps and drops the second-to-last level.

    Not in diffusers as such (diffsched's ``KDPM2AncestralDiscrete`` is diffusers' grid of
    it): ComfyUI's convention (model input, nearest-index timesteps, its schedulers).
    """

    ORDER = 2
    CALLS_PER_STEP = 2
    DISCARD_PENULTIMATE = True
    COMFY_NAMES = ("dpm_2_ancestral",)
    eta: float = option(1.0, "η of eq. 1: 0 is DPM2, 1 the ancestral step", **_ETA)

    def calls(self, sigmas: np.ndarray) -> Calls:
        loop = _Loop()
        flow = self.model_sampling.flow
        for _, s, t, c in loop.steps(sigmas, land=False):
            if flow:
                down, ratio, noise = rf_ancestral_step(s, t, self.eta)
            else:
                (down, noise), ratio = ancestral_step(s, t, self.eta), 1.0
            if down == 0:  # Euler
                loop.add(SAMPLE, c, 1.0)
                _derivative(loop, c, down - s, s)
                continue
            mid = math.exp(math.log(s) + 0.5 * (math.log(down) - math.log(s)))
            loop.add(SAMPLE, c, 1.0)
            _derivative(loop, c, mid - s, s)
            m = loop.call(mid, first=False)
            loop.add(SAMPLE, c, ratio)
            _derivative(loop, m, ratio * (down - s), mid)
            loop.add_noise(self.s_noise * noise, (s, t))
        return loop.calls()


@document
@dataclass(frozen=True, kw_only=True)
class ComfyDPMPP2SAncestral(CFGPlusPlus, _Stochastic):
    """ComfyUI's ``dpmpp_2s_ancestral``: DPM-Solver++(2S) to σ_down, then fresh noise
    (eq. 1); on flow models its RF form (eq. 2; the midpoint at 0.9999 when σ_s = 1).

    Second order; two model calls per step (one on the step to 0), one normal per step.

    ``dpmpp_2s_ancestral_cfg_pp`` (``cfg_pp=True``): ComfyUI's CFG++ form, in λ = -log σ
    and eq. 1 on every model (no RF form), with guided g_k and unconditional u_k of the
    step's calls k = 1 (at σ_s) and 2 (at σ_m):

        x_m = x̂_0(g_1) + σ_m (x_s - x̂_0(u_1))/σ_s,
        x_down = (σ_down/σ_s) (x_s + x̂_0(g_1) - x̂_0(u_2)) + (1 - σ_down/σ_s) x̂_0(g_2),

    then + S_noise σ_up z; x̂_0(g_1) on the step where σ_down = 0. ComfyUI's second line
    mixes the first call's guided x̂_0 with the second call's unconditional one (its hook
    keeps the latest u); here x̂_0(g_1) = x_m - (σ_m/σ_s)(x_s - x̂_0(u_1)), from what the
    loop keeps. So without ``unconditional=`` (u = the prediction) it is not
    ``dpmpp_2s_ancestral``: x_down gains (σ_down/σ_s)(x̂_0(g_1) - x̂_0(g_2)).

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 2
    CALLS_PER_STEP = 2
    COMFY_NAMES = ("dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp")
    COMFY_OPTIONS = {"dpmpp_2s_ancestral_cfg_pp": {"cfg_pp": True}}  # noqa: RUF012
    eta: float = option(1.0, "η of eq. 1: 0 is DPM-Solver++(2S), 1 the ancestral step", **_ETA)

    def cfg_pp_calls(self, sigmas: np.ndarray) -> Calls:
        """ComfyUI's dpmpp_2s_ancestral_cfg_pp (the class docstring), each update written
        with the current call's x̂_0 as u's and ``guided`` the part from g."""
        loop, guided = _Loop(), []
        for _, s, t, c in loop.steps(sigmas, land=False):
            down, up = ancestral_step(s, t, self.eta)
            if down == 0:
                loop.add(X0, c, 1.0)
                guided.append(1.0)
            else:
                h = math.log(s) - math.log(down)  # λ_down - λ_s
                half, full = math.exp(-0.5 * h), math.exp(-h)  # σ_m/σ_s, σ_down/σ_s
                loop.add(SAMPLE, c, half)  # x_m = g_1 + (σ_m/σ_s)(x_s - u_1)
                loop.add(X0, c, 1.0 - half)
                guided.append(1.0)
                m = loop.call(s * half, first=False)
                # x_down = (σ_down/σ_s)(x_s + g_1 - u_2) + (1 - σ_down/σ_s) g_2, with
                # g_1 = x_m - (σ_m/σ_s)(x_s - u_1)
                loop.add(SAMPLE, c, full * (1.0 - half))
                loop.add(SAMPLE, m, full)
                loop.add(X0, c, full * half)
                loop.add(X0, m, 1.0 - 2.0 * full)
                guided.append(1.0 - full)
            if t > 0:
                loop.add_noise(self.s_noise * up)
        return loop.calls(guided=np.array(guided))

    def brownian_intervals(
        self, tau: np.ndarray, noise: np.ndarray, num_steps: int, init_options: dict
    ) -> np.ndarray:
        """Step i's draw (at its midpoint call) spans the step's own levels (σ_{i+1}, σ_i),
        in τ: the midpoint lies below σ_{i+1} when the step goes down to σ_down."""
        sig = self.sigmas(num_steps, **init_options)
        step = np.cumsum(self.calls(sig).first) - 1  # each call's step
        flow = self.model_sampling.flow and not self.CFG_PP_VE_SPLIT
        to_tau = (lambda v: v) if flow else (lambda v: v / (1.0 + v))
        out = np.stack([tau, tau], axis=1)
        for i in np.flatnonzero(np.asarray(noise) != 0):
            j = int(step[i])
            out[i] = to_tau(sig[j + 1]), to_tau(sig[j])
        return np.clip(out, 0.0, 1.0)

    def calls(self, sigmas: np.ndarray) -> Calls:
        if self.cfg_pp:
            return self.cfg_pp_calls(sigmas)
        loop = _Loop()
        flow = self.model_sampling.flow
        for _, s, t, c in loop.steps(sigmas, land=False):
            if flow:
                down, ratio, noise = rf_ancestral_step(s, t, self.eta)
            else:
                (down, noise), ratio = ancestral_step(s, t, self.eta), 1.0
            if (t == 0) if flow else (down == 0):  # Euler
                loop.add(SAMPLE, c, 1.0)
                _derivative(loop, c, down - s, s)
                if t > 0:  # η > 1 can take σ_down to 0 above the end: σ_up = σ_t
                    loop.add_noise(self.s_noise * noise, (s, t))
                continue
            if flow:
                if s == 1.0:
                    mid = 0.9999
                else:
                    lam_s = math.log((1 - s) / s)
                    mid = self.sigma_of(lam_s + 0.5 * (math.log((1 - down) / down) - lam_s))
                loop.add(SAMPLE, c, mid / s)
                loop.add(X0, c, 1 - mid / s)
                m = loop.call(mid, first=False)
                scale = ratio if self.eta > 0 else 1.0
                loop.add(SAMPLE, c, scale * down / s)
                loop.add(X0, m, scale * (1 - down / s))
                if self.eta > 0:
                    loop.add_noise(self.s_noise * noise, (s, t))
                continue
            h = math.log(s) - math.log(down)  # λ_down - λ_s
            mid = math.exp(-(-math.log(s) + 0.5 * h))
            loop.add(SAMPLE, c, mid / s)
            loop.add(X0, c, -math.expm1(-0.5 * h))
            m = loop.call(mid, first=False)
            loop.add(SAMPLE, c, math.exp(-h))
            loop.add(X0, m, -math.expm1(-h))
            loop.add_noise(self.s_noise * noise, (s, t))
        return loop.calls()


@document
@dataclass(frozen=True, kw_only=True)
class ComfyDPMPPSDE(_Stochastic):
    """ComfyUI's ``dpmpp_sde`` (and ``dpmpp_sde_gpu``): the two-stage DPM-Solver++ SDE
    solver, the intermediate stage at λ_s + r h (eq. 1, 3).

    Two model calls per step (one on the step to 0) and a normal after each. ComfyUI draws
    them from a Brownian tree over σ (``_gpu``: on the latent's device); here they are the
    engine's fresh normals (``noise=`` replays ComfyUI's: one per call).

    Not in diffusers as such (diffusers' ``DPMSolverSDEScheduler`` is the Karras-grid
    version): ComfyUI's convention (model input, nearest-index timesteps, its schedulers).
    """

    ORDER = 2
    CALLS_PER_STEP = 2
    COMFY_STREAM = BROWNIAN  # noise_stream="comfy": torchsde's tree, as ComfyUI
    COMFY_NAMES = ("dpmpp_sde", "dpmpp_sde_gpu")
    eta: float = option(1.0, "η of eq. 1 in each stage: 0 is DPM-Solver++(2S)-like", **_ETA)
    r: float = option(0.5, "the intermediate stage at λ_s + r h", **_STAGE)

    def calls(self, sigmas: np.ndarray) -> Calls:
        loop = _Loop()
        sigmas = self.offset_first(sigmas)
        noisy = self.eta > 0 and self.s_noise > 0
        for _, s, t, c in loop.steps(sigmas):
            lam_s, lam_t = self.lam(s), self.lam(t)
            h = lam_t - lam_s
            lam_u = lam_s + self.r * h
            u = self.sigma_of(lam_u)
            a_s, a_u, a_t = s * math.exp(lam_s), u * math.exp(lam_u), t * math.exp(lam_t)
            fac = 1 / (2 * self.r)
            down, up = ancestral_step(math.exp(-lam_s), math.exp(-lam_u), self.eta)
            hh = _down_step(down, lam_s)
            loop.add(SAMPLE, c, a_u / a_s * math.exp(-hh))
            loop.add(X0, c, -a_u * math.expm1(-hh))
            if noisy:
                loop.add_noise(a_u * self.s_noise * up, (s, u))
            m = loop.call(u, first=False)
            down, up = ancestral_step(math.exp(-lam_s), math.exp(-lam_t), self.eta)
            hh = _down_step(down, lam_s)
            loop.add(SAMPLE, c, a_t / a_s * math.exp(-hh))
            w = -a_t * math.expm1(-hh)
            loop.add(X0, c, w * (1 - fac))
            loop.add(X0, m, w * fac)
            if noisy:
                loop.add_noise(a_t * self.s_noise * up, (s, t))
        return loop.calls()


@dataclass(frozen=True, kw_only=True)
class _SDEMultistep(_Stochastic):
    """Eq. 3 with the multistep corrections of :meth:`corrections`."""

    def corrections(self, loop: _Loop, i: int, hs: list[float], h_eta: float, a_t: float):
        raise NotImplementedError

    def calls(self, sigmas: np.ndarray) -> Calls:
        loop = _Loop()
        sigmas = self.offset_first(sigmas)
        hs: list[float] = []  # the h of each step so far
        for _, s, t, c in loop.steps(sigmas):
            lam_s, lam_t = self.lam(s), self.lam(t)
            h = lam_t - lam_s
            h_eta = h * (self.eta + 1)
            a_t = t * math.exp(lam_t)
            loop.add(SAMPLE, c, t / s * math.exp(-h * self.eta))
            loop.add(X0, c, -a_t * math.expm1(-h_eta))
            hs.append(h)
            self.corrections(loop, c, hs, h_eta, a_t)
            if self.eta > 0 and self.s_noise > 0:
                loop.add_noise(t * math.sqrt(-math.expm1(-2 * h * self.eta)) * self.s_noise, (s, t))
        return loop.calls()


@document
@dataclass(frozen=True, kw_only=True)
class ComfyDPMPP2MSDE(_SDEMultistep):
    """ComfyUI's ``dpmpp_2m_sde``, ``dpmpp_2m_sde_heun`` and their ``_gpu`` forms:
    DPM-Solver++(2M) SDE (Lu et al. 2022b; eq. 3), the midpoint or Heun correction.

    Second order (first on the first step); one model call and one normal per step (none
    on the step to 0). ComfyUI draws from a Brownian tree over σ (``_gpu``: on the latent's
    device); here the engine's fresh normals (``noise=`` replays ComfyUI's).

    Not in diffusers as such (diffsched's ``DPMSolverMultistep`` with
    ``algorithm_type="sde-dpmsolver++"`` is diffusers' grid of it): ComfyUI's convention.
    """

    ORDER = 2
    COMFY_STREAM = BROWNIAN  # noise_stream="comfy": torchsde's tree, as ComfyUI
    COMFY_NAMES = ("dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
                   "dpmpp_2m_sde_heun_gpu")  # fmt: skip
    COMFY_DEFAULTS = {  # noqa: RUF012
        "dpmpp_2m_sde_heun": {"solver_type": "heun"},
        "dpmpp_2m_sde_heun_gpu": {"solver_type": "heun"},
    }
    eta: float = option(1.0, "η of eq. 3: 0 is DPM-Solver++(2M), 1 the SDE solver", **_ETA)
    solver_type: str = option(
        "midpoint", "the second-order correction: midpoint or heun", choices=("midpoint", "heun")
    )

    def corrections(self, loop, c, hs, h_eta, a_t):
        if len(hs) < 2 or c == 0:
            return
        r = hs[-2] / hs[-1]
        e = -math.expm1(-h_eta)
        w = a_t * (e / -h_eta + 1) / r if self.solver_type == "heun" else 0.5 * a_t * e / r
        loop.add(X0, c, w)
        loop.add(X0, c - 1, -w)


@document
@dataclass(frozen=True, kw_only=True)
class ComfyDPMPP3MSDE(_SDEMultistep):
    """ComfyUI's ``dpmpp_3m_sde`` (and ``dpmpp_3m_sde_gpu``): DPM-Solver++(3M) SDE (eq. 3).

    Third order (first, second on the first two steps); one model call and one normal per
    step (none on the step to 0). ComfyUI draws from a Brownian tree over σ; here the
    engine's fresh normals (``noise=`` replays ComfyUI's).

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 3
    COMFY_STREAM = BROWNIAN  # noise_stream="comfy": torchsde's tree, as ComfyUI
    COMFY_NAMES = ("dpmpp_3m_sde", "dpmpp_3m_sde_gpu")
    eta: float = option(1.0, "η of eq. 3: 0 is DPM-Solver++(3M), 1 the SDE solver", **_ETA)

    def corrections(self, loop, c, hs, h_eta, a_t):
        h = hs[-1]
        phi2 = math.expm1(-h_eta) / h_eta + 1
        if len(hs) >= 3:
            r0, r1 = hs[-2] / h, hs[-3] / h
            # d_1 = D_1 (1 + r0/(r0+r1)) - D_1' r0/(r0+r1), d_2 = (D_1 - D_1')/(r0+r1)
            phi3 = phi2 / h_eta - 0.5
            k1 = a_t * phi2 * (1 + r0 / (r0 + r1)) - a_t * phi3 / (r0 + r1)  # · D_1
            k2 = -a_t * phi2 * r0 / (r0 + r1) + a_t * phi3 / (r0 + r1)  # · D_1'
            for call, w in ((c, k1 / r0), (c - 1, -k1 / r0 + k2 / r1), (c - 2, -k2 / r1)):
                loop.add(X0, call, w)
        elif len(hs) == 2:
            r = hs[-2] / h
            loop.add(X0, c, a_t * phi2 / r)
            loop.add(X0, c - 1, -a_t * phi2 / r)


@document
@dataclass(frozen=True, kw_only=True)
class ComfyDDPM(_Stochastic):
    """ComfyUI's ``ddpm``: the DDPM posterior step (Ho et al. 2020, eq. 6-7) in VP
    variables ᾱ = 1/(1 + σ²), on any model's σ's.

    One model call and one normal per step (none on the step to 0).

    Not in diffusers as such (diffsched's ``DDPM`` is diffusers' grid of it): ComfyUI's
    convention (model input, nearest-index timesteps, its schedulers).
    """

    COMFY_NAMES = ("ddpm",)

    def calls(self, sigmas: np.ndarray) -> Calls:
        loop = _Loop()
        for _, s, t, c in loop.steps(sigmas, land=False):
            ab_s, ab_t = 1 / (s * s + 1), 1 / (t * t + 1)
            alpha = ab_s / ab_t
            out = 1.0 if t == 0 else math.sqrt(1 + t**2)  # back to the VE sample
            # μ = (x sqrt(ᾱ_s) - (1 - α) (x - x̂_0)/(σ_s sqrt(1 - ᾱ_s))) / sqrt(α)
            k = (1 - alpha) / math.sqrt(1 - ab_s) / s
            loop.add(SAMPLE, c, out * (math.sqrt(ab_s) - k) / math.sqrt(alpha))
            loop.add(X0, c, out * k / math.sqrt(alpha))
            if t > 0:
                loop.add_noise(
                    out * self.s_noise * math.sqrt((1 - alpha) * (1 - ab_t) / (1 - ab_s)), (s, t)
                )
        return loop.calls()


@document
@dataclass(frozen=True, kw_only=True)
class ComfyLCM(_Stochastic):
    """ComfyUI's ``lcm``: LCM multistep sampling (Luo et al. 2023, Alg. 1): jump to x̂_0,
    then noise it to the next level as ComfyUI's noise_scaling does.

    One model call and one normal per step (none on the step to 0).

    Not in diffusers as such (diffsched's ``LCM`` is diffusers' grid of it): ComfyUI's
    convention (model input, nearest-index timesteps, its schedulers).
    """

    COMFY_NAMES = ("lcm",)

    def calls(self, sigmas: np.ndarray) -> Calls:
        loop = _Loop()
        ms = self.model_sampling
        for _, s, t, c in loop.steps(sigmas):
            a, b = ms.noise_scaling(t, max_denoise=False)
            loop.add(X0, c, b)
            loop.add_noise(self.s_noise * a, (s, t))
        return loop.calls()


@document
@dataclass(frozen=True, kw_only=True)
class ComfyResMultistepAncestral(CFGPlusPlus, _Stochastic):
    """ComfyUI's ``res_multistep_ancestral``: the second-order RES multistep method to
    σ_down, then fresh noise σ_up (eq. 1).

    Second order (Euler on the first step); one model call and one normal per step (none
    on the step to 0).

    ``res_multistep_ancestral_cfg_pp`` (``cfg_pp=True``), ComfyUI's CFG++ form with guided
    g and unconditional u: x_down = e^{-h} (x_s + x̂_0(g) - x̂_0(u)) + h (b_1 x̂_0(u) +
    b_2 x̂_0,{i-1}(u)) (only the e^{-h} part of x̂_0 from g), on the first step and where
    σ_down = 0 x_down = x̂_0(g) + σ_down (x_s - x̂_0(u))/σ_s; then the same noise. Without
    ``unconditional=`` it is ``res_multistep_ancestral``.

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 2
    COMFY_NAMES = ("res_multistep_ancestral", "res_multistep_ancestral_cfg_pp")
    COMFY_OPTIONS = {"res_multistep_ancestral_cfg_pp": {"cfg_pp": True}}  # noqa: RUF012
    eta: float = option(1.0, "η of eq. 1: 0 is res_multistep", **_ETA)

    def calls(self, sigmas: np.ndarray) -> Calls:
        loop, guided = _Loop(), []
        old_down = None
        for i, s, t, c in loop.steps(sigmas, land=False):
            down, up = ancestral_step(s, t, self.eta)
            if down == 0 or old_down is None:  # Euler
                loop.add(SAMPLE, c, 1.0)
                _derivative(loop, c, down - s, s)
                guided.append(1.0)
            else:
                h = math.log(s) - math.log(down)
                c2 = (math.log(old_down) - math.log(float(sigmas[i - 1]))) / h
                phi1 = math.expm1(-h) / -h
                phi2 = (phi1 - 1) / -h
                b1, b2 = phi1 - phi2 / c2, phi2 / c2
                b1, b2 = (b if math.isfinite(b) else 0.0 for b in (b1, b2))
                loop.add(SAMPLE, c, math.exp(-h))
                loop.add(X0, c, h * b1)
                loop.add(X0, c - 1, h * b2)
                guided.append(math.exp(-h))  # CFG++: only e^{-h} x̂_0 from g
            if t > 0:
                loop.add_noise(self.s_noise * up, (s, t))
            old_down = down
        return loop.calls(guided=np.array(guided) if self.cfg_pp else None)


def _reverse_time_scaler(eta: float):
    return lambda x: x ** (eta + 1)


def _er_sde_scaler(x):
    return x * (np.exp(x**0.3) + 10.0)


@document
@dataclass(frozen=True, kw_only=True)
class ComfyERSDE(_Stochastic):
    """ComfyUI's ``er_sde``: ER-SDE-Solver-3 (Cui et al. 2023; eq. 4) with ComfyUI's
    200-cell quadrature of its integrals.

    Up to third order (``max_stage``); one model call and one normal per step (none on the
    step to 0). ``noise_scaler``: ``er_sde`` (ComfyUI's default) or ``reverse_time_sde``
    (f(ρ) = ρ^{η+1}, the ``SamplerER_SDE`` node's "Reverse-time SDE"; η = 0 with
    s_noise = 0 its "ODE").

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 3
    COMFY_NAMES = ("er_sde",)
    noise_scaler: str = option(
        "er_sde", "the noise scaler f of eq. 4: er_sde (ρ (e^{ρ^0.3} + 10)) or "
        "reverse_time_sde (ρ^{η+1})", choices=("er_sde", "reverse_time_sde"),
    )  # fmt: skip
    eta: float = option(1.0, "η of the reverse_time_sde scaler (unused by er_sde)", **_ETA)
    max_stage: int = option(3, "the highest stage of eq. 4 (1, 2 or 3)", low=1, high=3)

    @property
    def deterministic(self) -> bool:
        return self.s_noise == 0

    def calls(self, sigmas: np.ndarray) -> Calls:
        f = _er_sde_scaler if self.noise_scaler == "er_sde" else _reverse_time_scaler(self.eta)
        loop = _Loop()
        sigmas = self.offset_first(sigmas)
        rho = [math.exp(-self.lam(float(x))) if x > 0 else 0.0 for x in sigmas]
        cells = np.arange(QUADRATURE_POINTS, dtype=np.float64)
        for i, s, t, c in loop.steps(sigmas):
            stage = min(self.max_stage, i + 1)
            a_s, a_t = s / rho[i], t / rho[i + 1]
            ratio = float(f(rho[i + 1]) / f(rho[i]))
            loop.add(SAMPLE, c, a_t / a_s * ratio)
            loop.add(X0, c, a_t * (1 - ratio))
            if stage >= 2:
                dt = rho[i + 1] - rho[i]
                width = -dt / QUADRATURE_POINTS
                pos = rho[i + 1] + cells * width  # left ends of the cells from ρ_t
                fp = f(pos)
                s1 = float(np.sum(1 / fp) * width)
                f_t = float(f(rho[i + 1]))
                k1 = a_t * (dt + s1 * f_t) / (rho[i] - rho[i - 1])  # · (x̂_0,i - x̂_0,i-1)
                loop.add(X0, c, k1)
                loop.add(X0, c - 1, -k1)
                if stage >= 3:
                    s2 = float(np.sum((pos - rho[i]) / fp) * width)
                    k2 = a_t * (dt**2 / 2 + s2 * f_t) / ((rho[i] - rho[i - 2]) / 2)
                    # D_1,i - D_1,i-1
                    d_i = 1 / (rho[i] - rho[i - 1])
                    d_p = 1 / (rho[i - 1] - rho[i - 2])
                    loop.add(X0, c, k2 * d_i)
                    loop.add(X0, c - 1, -k2 * (d_i + d_p))
                    loop.add(X0, c - 2, k2 * d_p)
            if self.s_noise > 0:
                var = rho[i + 1] ** 2 - rho[i] ** 2 * ratio**2
                loop.add_noise(a_t * self.s_noise * math.sqrt(var) if var > 0 else 0.0, (s, t))
        return loop.calls()


def _phi1_h(z: float) -> float:
    """z φ_1(z) = e^z - 1."""
    return math.expm1(z)


def _phi2_h(z: float) -> float:
    """z φ_2(z) = (e^z - 1 - z)/z."""
    return (math.expm1(z) - z) / z


@dataclass(frozen=True, kw_only=True)
class _SEEDS(_Stochastic):
    """SEEDS (Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast High-Quality
    Sampling from Diffusion Models", NeurIPS 2023; the data-prediction forms, ComfyUI's
    ``seeds_2`` and ``seeds_3``), stages at λ_s + r_k h.

    Each stage k is the exponential SDE step of eq. 3 from s to its level σ_k,

        x_k = (σ_k/σ_s) e^{-η r_k h} x_s - α_k Σ_j a_kj x̂_0,j + σ_k S_noise n_k,

    and its noise n_k is the Ornstein-Uhlenbeck increment of one path over the step:
    n_k = e^{-η (r_k - r_{k-1}) h} n_{k-1} + sqrt(1 - e^{-2 η (r_k - r_{k-1}) h}) z_k (n_0 = 0),
    so a stage uses the draws of the stages before it again (the engine's "noise" terms).
    """

    ORDER = 2
    eta: float = option(1.0, "η: the SDE's stochasticity (0: the exponential ODE solver)", **_ETA)

    def stage_weights(self, h_eta: float) -> tuple[list[float], list[list[float]]]:
        """(r_k of each stage and the end, the weights a_kj of x̂_0 of stage j)."""
        raise NotImplementedError

    def calls(self, sigmas: np.ndarray) -> Calls:
        loop = _Loop()
        sigmas = self.offset_first(sigmas)
        noisy = self.eta > 0 and self.s_noise > 0
        for _, s, t, c in loop.steps(sigmas):
            lam_s, lam_t = self.lam(s), self.lam(t)
            h = lam_t - lam_s
            h_eta = h * (self.eta + 1)
            rs, weights = self.stage_weights(h_eta)
            calls = [c]
            draws: list[tuple[int, float]] = []  # (call whose draw, factor) of n_{k-1}
            r_prev, sig_prev = 0.0, s
            for k, (r, row) in enumerate(zip(rs, weights, strict=True)):
                last = k == len(rs) - 1
                lam_k = lam_t if last else lam_s + r * (lam_t - lam_s)
                sig_k = t if last else self.sigma_of(lam_k)
                a_k = sig_k * math.exp(lam_k)
                loop.add(SAMPLE, c, sig_k / s * math.exp(-r * h * self.eta))
                for j, w in enumerate(row):
                    loop.add(X0, calls[j], -a_k * w)
                if noisy:
                    seg = (r_prev - r) * h * self.eta  # <= 0
                    draws = [(src, f * math.exp(seg)) for src, f in draws]
                    for src, f in draws:  # the draws of the stages before, again
                        loop.add(NOISE, src, sig_k * self.s_noise * f)
                    fresh = math.sqrt(-math.expm1(2 * seg))
                    loop.add_noise(sig_k * self.s_noise * fresh, (sig_prev, sig_k))
                    draws.append((len(loop.levels) - 1, fresh))
                r_prev, sig_prev = r, sig_k
                if not last:
                    calls.append(loop.call(sig_k, first=False))
        return loop.calls()


@document
@dataclass(frozen=True, kw_only=True)
class ComfySEEDS2(_SEEDS):
    """ComfyUI's ``seeds_2``: SEEDS-2, two stages (the second at λ_s + r h), x̂_0 mixed as
    (1 - 1/(2r)) x̂_0,s + x̂_0,2/(2r) in the final step.

    Two model calls and two normals per step (one call on the step to 0); the final step
    uses the first stage's draw again.

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    CALLS_PER_STEP = 2
    COMFY_NAMES = ("seeds_2",)
    r: float = option(0.5, "the intermediate stage at λ_s + r h", **_STAGE, high=1.0)

    def stage_weights(self, h_eta):
        r, fac = self.r, 1 / (2 * self.r)
        return [r, 1.0], [[_phi1_h(-r * h_eta)], [_phi1_h(-h_eta) * (1 - fac),
                                                  _phi1_h(-h_eta) * fac]]  # fmt: skip


@document
@dataclass(frozen=True, kw_only=True)
class ComfySEEDS3(_SEEDS):
    """ComfyUI's ``seeds_3``: SEEDS-3, stages at λ_s + r_1 h and λ_s + r_2 h.

    Third order; three model calls and three normals per step (one call on the step to 0);
    each stage uses the draws of the stages before it again.

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 3
    CALLS_PER_STEP = 3
    COMFY_NAMES = ("seeds_3",)
    r_1: float = option(1 / 3, "the first stage at λ_s + r_1 h", **_STAGE, high=1.0)
    r_2: float = option(2 / 3, "the second stage at λ_s + r_2 h", **_STAGE, high=1.0)

    def _check(self) -> None:
        super()._check()
        if not self.r_1 < self.r_2:
            raise ValueError(
                f"ComfySEEDS3: the stages must be in order, r_1 < r_2; got r_1={self.r_1}, "
                f"r_2={self.r_2}"
            )

    def stage_weights(self, h_eta):
        r1, r2 = self.r_1, self.r_2
        a32 = r2 / r1 * _phi2_h(-r2 * h_eta)
        a31 = _phi1_h(-r2 * h_eta) - a32
        b3 = _phi2_h(-h_eta) / r2
        b1 = _phi1_h(-h_eta) - b3
        return [r1, r2, 1.0], [[_phi1_h(-r1 * h_eta)], [a31, a32], [b1, 0.0, b3]]


def _sa_weights(
    lams: np.ndarray, lam_s: float, lam_t: float, alpha_t: float, tau: float
) -> np.ndarray:
    """SA-Solver's b_k (Xue et al. 2023, eq. 15 and 18, data prediction): x̂_0 interpolated
    by the Lagrange polynomial ℓ_k through the nodes ``lams`` and integrated exactly,

        b_k = α_t (1 + τ²) ∫_{λ_s}^{λ_t} e^{(1 + τ²)(λ - λ_t)} ℓ_k(λ) dλ,

    in u = λ - λ_t (the monomial integrals I_j = ∫_{-h}^0 (1 + τ²) e^{(1 + τ²) u} u^j du by
    parts: I_j = [e^{(1+τ²) u} u^j] - j I_{j-1} / (1 + τ²))."""
    a = 1 + tau**2
    h = lam_t - lam_s
    nodes = np.asarray(lams, np.float64) - lam_t
    p = len(nodes)
    integrals = np.empty(p)
    for j in range(p):
        boundary = (1.0 if j == 0 else 0.0) - math.exp(-a * h) * (-h) ** j
        integrals[j] = boundary - (j / a * integrals[j - 1] if j else 0.0)
    out = np.empty(p)
    for k in range(p):
        others = np.delete(nodes, k)
        coef = np.atleast_1d(np.poly(others))[::-1] / np.prod(nodes[k] - others)  # ascending
        out[k] = alpha_t * float(coef @ integrals)
    return out


@document
@dataclass(frozen=True, kw_only=True)
class ComfySASolver(_Stochastic):
    """ComfyUI's ``sa_solver`` and ``sa_solver_pece``: SA-Solver, the stochastic Adams
    predictor-corrector method (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for
    Fast Sampling of Diffusion Models", NeurIPS 2023, Alg. 1, data prediction).

    With the SDE's stochasticity τ(σ) (``eta`` for σ between ``percent_to_sigma`` of
    ``sde_start_percent`` and ``sde_end_percent``, else 0), the predictor from λ_i to
    λ_{i+1} (h = λ_{i+1} - λ_i) is

        x̃_{i+1} = (σ_{i+1}/σ_i) e^{-τ² h} x_i + Σ_k b^p_k x̂_0,{i-k}
                  + σ_{i+1} S_noise sqrt(1 - e^{-2 τ² h}) z_i,

    b^p through the last ``predictor_order`` estimates; the model is called at x̃_{i+1},
    and the corrector recomputes x_{i+1} with b^c through ``corrector_order`` estimates
    that include the new one, with the same e^{-τ² h} x_i and the same draw z_i: so
    x_{i+1} = x̃_{i+1} + Σ b^c x̂_0 - Σ b^p x̂_0 (the draw needs no keeping).
    ``use_pece`` (``sa_solver_pece``) calls the model again at x_{i+1} and uses that
    estimate. Orders fall towards the end of a list ending at 0 (ComfyUI's), and
    ``simple_order_2`` takes the paper's App. D order-2 weights.

    One model call and at most one normal per step (PECE: two calls, one on the first
    step). Not in diffusers (diffsched's ``SASolver`` is diffusers' grid of the method):
    ComfyUI's convention.
    """

    ORDER = 3
    COMFY_NAMES = ("sa_solver", "sa_solver_pece")
    COMFY_OPTIONS = {"sa_solver_pece": {"use_pece": True}}  # noqa: RUF012
    eta: float = option(1.0, "τ inside the SDE interval (0: the ODE, Adams predictor-"
                        "corrector)", **_ETA)  # fmt: skip
    sde_start_percent: float = option(
        0.2, "the SDE interval starts at percent_to_sigma of this", low=0.0, high=1.0
    )
    sde_end_percent: float = option(
        0.8, "the SDE interval ends at percent_to_sigma of this", low=0.0, high=1.0
    )
    predictor_order: int = option(3, "the predictor's number of estimates", low=1, high=6)
    corrector_order: int = option(4, "the corrector's number of estimates (0: none)", low=0,
                                  high=6)  # fmt: skip
    use_pece: bool = option(False, "call the model at the corrected sample (PECE)")
    simple_order_2: bool = option(False, "the paper's simple order-2 weights (App. D)")

    @property
    def deterministic(self) -> bool:
        return self.s_noise == 0 or self.eta == 0

    def tau(self, sigma: float) -> float:
        ms = self.model_sampling
        start = ms.percent_to_sigma(self.sde_start_percent)
        end = ms.percent_to_sigma(self.sde_end_percent)
        return self.eta if self.eta > 0 and start >= sigma >= end else 0.0

    def weights(self, lams, lam_s, lam_t, sigma_t, tau, corrector):
        alpha_t = sigma_t * math.exp(lam_t)
        if self.simple_order_2 and len(lams) == 2:  # App. D: [older, newer]
            a, h = 1 + tau**2, lam_t - lam_s
            if corrector:
                b1 = alpha_t * 0.5 * a * h
                return np.array([alpha_t * -math.expm1(-h * a) - b1, b1])
            b2 = alpha_t * 0.5 * a * h**2 / (lams[-2] - lam_s)
            return np.array([b2, alpha_t * -math.expm1(-h * a) - b2])
        return _sa_weights(lams, lam_s, lam_t, alpha_t, tau)

    def calls(self, sigmas: np.ndarray) -> Calls:
        loop = _Loop()
        sigmas = self.offset_first(sigmas)
        n = len(sigmas) - 1
        lams = [self.lam(float(x)) if x > 0 else math.inf for x in sigmas]
        most = max(self.predictor_order, self.corrector_order)
        to_end = sigmas[-1] == 0
        finals: list[int] = []  # the call whose x̂_0 is step j's estimate
        last_pred: dict[tuple[str, int], float] = {}  # the previous predictor's Σ b^p x̂_0
        tau = 0.0
        for i, s, t, a in loop.steps(sigmas, land=False):
            finals.append(a)
            known = min(i + 1, most)
            p_order = min(self.predictor_order, known)
            c_order = 0 if i == 0 or (t == 0 and not self.use_pece) else min(
                self.corrector_order, known)  # fmt: skip
            if to_end:
                p_order = min(p_order, n - 1 - i)
                c_order = min(c_order, n - i)
            # x_i as {(operand, call): coefficient}
            x_i: dict[tuple[str, int], float] = {(SAMPLE, a): 1.0}
            if c_order:
                b = self.weights(np.array(lams[i - c_order + 1 : i + 1]), lams[i - 1], lams[i],
                                 s, tau, corrector=True)  # fmt: skip
                for k, w in enumerate(b):
                    key = (X0, finals[i - c_order + 1 + k])
                    x_i[key] = x_i.get(key, 0.0) + float(w)
                for key, w in last_pred.items():
                    x_i[key] = x_i.get(key, 0.0) - w
                if self.use_pece:
                    for (op, src), w in x_i.items():
                        loop.add(op, src, w)
                    finals[-1] = loop.call(s, first=False)
                    x_i = {(SAMPLE, finals[-1]): 1.0}
            if t == 0:
                loop.add(X0, finals[-1], 1.0)
                continue
            tau = self.tau(t)
            h = lams[i + 1] - lams[i]
            b = self.weights(np.array(lams[i - p_order + 1 : i + 1]), lams[i], lams[i + 1], t,
                             tau, corrector=False)  # fmt: skip
            decay = t / s * math.exp(-(tau**2) * h)
            for (op, src), w in x_i.items():
                loop.add(op, src, decay * w)
            last_pred = {}
            for k, w in enumerate(b):
                key = (X0, finals[i - p_order + 1 + k])
                last_pred[key] = last_pred.get(key, 0.0) + float(w)
                loop.add(X0, key[1], float(w))
            if tau > 0 and self.s_noise > 0:
                loop.add_noise(t * math.sqrt(-math.expm1(-2 * tau**2 * h)) * self.s_noise, (s, t))
        return loop.calls()
