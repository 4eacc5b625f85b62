"""ComfyUI's linear multistep samplers in σ: LMS, iPNDM, iPNDM-v, gradient estimation and
DEIS.

Each integrates the probability-flow ODE of x = x_0 + σ ε (Karras et al. 2022, eq. 4 with
s = 1), dx/dσ = d = (x - x̂_0) / σ, with one model call per step and the derivatives of the
last p calls (the kit's :func:`~diffsched.methods.kit.linear_multistep`):

    x_{i+1} = x_i + Σ_{k<p} w_{ik} d_{i-k},   p = min(i + 1, order).                   (1)

The step to σ = 0 is x_{i+1} = x̂_0 (w = -σ_i, p = 1) in all of them. The weights:

* **LMS** (``lms``; Hairer, Nørsett & Wanner, sec. III.5, as k-diffusion's ``sample_lms``)
  and **DEIS ρAB** (``deis`` with ``deis_mode="rhoab"``; Zhang & Chen 2023, "Fast Sampling
  of Diffusion Models with Exponential Integrator", eq. 14 in ρ = σ): variable-step
  Adams-Bashforth, the exact integral of the Lagrange polynomial through the last p
  derivatives,

      w_{ik} = ∫_{σ_i}^{σ_{i+1}} ℓ_{ik}(σ) dσ;                                          (2)

* **iPNDM** (``ipndm``; Zhang & Chen 2023, app. B): the equal-step Adams-Bashforth weights
  whatever the grid, w = h (1), h (3/2, -1/2), h (23, -16, 5)/12, h (55, -59, 37, -9)/24,
  h = σ_{i+1} - σ_i;                                                                    (3)
* **Gradient estimation** (``gradient_estimation``; Permenter & Yuan 2024, "Interpreting
  and Improving Diffusion Models from an Optimization Perspective", Alg. 2): Euler with
  the derivative extrapolated by γ, d̄ = γ d_i + (1 - γ) d_{i-1}: w = h (γ, 1 - γ);     (4)
* **DEIS tAB** (``deis``, ``deis_mode="tab"``; Zhang & Chen 2023, eq. 14 in the VP time t):
  σ is mapped to the time t of a variance-preserving SDE with linear β(t) through the EDM
  constants σ_min = 0.002, σ_max = 80, ε_s = 10⁻³ (ᾱ(t) = exp(-β_0 t - (β_1 - β_0) t²/2),
  σ² = 1/ᾱ - 1), and

      w_{ik} = ∫_{t_i}^{t_{i+1}} ℓ_{ik}(τ) (-½ d log ᾱ/dτ) / sqrt(ᾱ (1 - ᾱ)) dτ,        (5)

  ℓ_{ik} the Lagrange basis over t_i, ..., t_{i-p+1}; as ComfyUI, the integral is the sum
  of the integrand at 10 000 evenly spaced points from t_i to t_{i+1} (both included)
  times (t_{i+1} - t_i) / 10 000 (1e-6 to 1e-5 off the exact integral: this rule is
  ComfyUI's result);
* **iPNDM-v** (``ipndm_v``; the variable-step iPNDM of the diff-solvers code of Zhou et
  al. 2024, "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps" (AMED), used by
  GITS): with h = σ_{i+1} - σ_i, h_k = σ_{i-k+1} - σ_{i-k}, r = h/h_1,

      p = 2: w = h (1 + r/2, -r/2),
      p = 3: T_1 = (1 - h/(3 (h + h_1)) · h (h + h_1) / (h_1 (h_1 + h_2))) / 2,
             w = h (1 + r/2 + T_1, -r/2 - (1 + h_1/h_2) T_1, T_1 h_1/h_2),
      p = 4: q = h_1 (h_1 + h_2) / (h_2 (h_2 + h_3)),
             T_2 = ((1 - h/(3 (h + h_1)))/2 + (1 - h/(2 (h + h_1))) h/(6 (h + h_1 + h_2)))
                   · h (h + h_1)(h + h_1 + h_2) / (h_1 (h_1 + h_2)(h_1 + h_2 + h_3)),
             w = (p = 3's weights) + h T_2 (1, -(1 + h_1/h_2 + q), h_1/h_2 + q (1 + h_2/h_3))
                 and a fourth, -h T_2 q h_1/h_2.                                         (6)

  They reduce to eq. 3 on an even grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.options import option
from ..core.scheduler import document
from ._comfy import Calls, CFGPlusPlus, ComfySampler
from .kit import adams_bashforth_weights, linear_multistep

IPNDM_WEIGHTS = (  # eq. 3: equal-step Adams-Bashforth, orders 1 to 4
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)
DEIS_POINTS = 10_000  # ComfyUI's rule for eq. 5
# the EDM constants of ComfyUI's σ -> VP-time map (DEIS's edm2t)
DEIS_SIGMA_MIN, DEIS_SIGMA_MAX, DEIS_EPSILON = 0.002, 80.0, 1e-3


@dataclass(frozen=True, kw_only=True)
class _Multistep(ComfySampler):
    """Eq. 1 with the weights of ``weights(sigmas, i)`` (the step to 0 lands on x̂_0)."""

    def weights(self, sigmas: np.ndarray, i: int) -> np.ndarray:
        raise NotImplementedError

    def calls(self, sigmas: np.ndarray) -> Calls:
        n = len(sigmas) - 1
        rows = [
            np.array([-sigmas[i]]) if sigmas[i + 1] == 0 else self.weights(sigmas, i)
            for i in range(n)
        ]
        return Calls(sigmas[:n], linear_multistep(sigmas[:n], rows))


@document
@dataclass(frozen=True, kw_only=True)
class ComfyLMS(_Multistep):
    """ComfyUI's ``lms``: linear multistep in σ (k-diffusion's ``sample_lms``; eq. 2).

    Order ``order`` (lower during the warm-up); one model call per step; deterministic.
    The same numbers as diffsched's ``LMS`` on the same grid, with ComfyUI's convention
    (nearest-index timesteps, the step to 0 landing on x̂_0).

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 4
    COMFY_NAMES = ("lms",)

    order: int = option(4, "the number of derivatives the polynomial runs through (eq. 2)", low=1)

    def weights(self, sigmas, i):
        return adams_bashforth_weights(sigmas, i, self.order)


@document
@dataclass(frozen=True, kw_only=True)
class ComfyIPNDM(_Multistep):
    """ComfyUI's ``ipndm``: iPNDM, equal-step Adams-Bashforth weights on any grid (eq. 3).

    Order ``max_order`` (1 to 4; lower during the warm-up); one model call per step.

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 4
    COMFY_NAMES = ("ipndm",)

    max_order: int = option(4, "the most past derivatives a step combines (eq. 3)", low=1, high=4)

    def weights(self, sigmas, i):
        return (sigmas[i + 1] - sigmas[i]) * np.array(IPNDM_WEIGHTS[min(i + 1, self.max_order) - 1])


def ipndm_v_weights(sigmas: np.ndarray, i: int, order: int) -> np.ndarray:
    """w_{i0..p-1} of eq. 6 (iPNDM-v), p = min(i + 1, order)."""
    p = min(i + 1, order)
    h = sigmas[i + 1] - sigmas[i]
    if p == 1:
        return np.array([h])
    h1 = sigmas[i] - sigmas[i - 1]
    r = h / h1
    c = [1 + r / 2, -r / 2]  # Adams-Bashforth 2 on the uneven grid
    if p >= 3:
        h2 = sigmas[i - 1] - sigmas[i - 2]
        t1 = (1 - h / (3 * (h + h1)) * h * (h + h1) / (h1 * (h1 + h2))) / 2
        c = [c[0] + t1, c[1] - (1 + h1 / h2) * t1, t1 * h1 / h2]
        if p == 4:
            h3 = sigmas[i - 2] - sigmas[i - 3]
            q = h1 * (h1 + h2) / (h2 * (h2 + h3))
            t2 = (
                ((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2)))
                * h * (h + h1) * (h + h1 + h2) / (h1 * (h1 + h2) * (h1 + h2 + h3))
            )  # fmt: skip
            c = [
                c[0] + t2,
                c[1] - (1 + h1 / h2 + q) * t2,
                c[2] + (h1 / h2 + q * (1 + h2 / h3)) * t2,
                -t2 * q * h1 / h2,
            ]
    return h * np.array(c)


@document
@dataclass(frozen=True, kw_only=True)
class ComfyIPNDMV(_Multistep):
    """ComfyUI's ``ipndm_v``: iPNDM with variable steps, the closed-form weights of the
    diff-solvers code (eq. 6).

    Order ``max_order`` (1 to 4); one model call per step. On an even grid these are the
    Adams-Bashforth weights of eq. 3; on an uneven one, order 2 is the variable-step
    Adams-Bashforth weight of eq. 2 but orders 3 and 4 are not (diffsched's
    ``VariableIPNDM`` takes the exact eq. 2 at every order).

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 4
    COMFY_NAMES = ("ipndm_v",)

    max_order: int = option(4, "the most past derivatives a step combines (eq. 6)", low=1, high=4)

    def weights(self, sigmas, i):
        return ipndm_v_weights(sigmas, i, self.max_order)


@document
@dataclass(frozen=True, kw_only=True)
class ComfyGradientEstimation(CFGPlusPlus, _Multistep):
    """ComfyUI's ``gradient_estimation``: Euler with the derivative extrapolated from the
    last two calls (Permenter & Yuan 2024, Alg. 2; eq. 4).

    Second order at γ = 2; one model call per step; deterministic.

    ``gradient_estimation_cfg_pp`` (``cfg_pp=True``): x̂_0 from the guided output g, the
    derivatives d = (x - x̂_0(u))/σ (and the one kept for the next step) from the
    unconditional u, x = x̂_0 + σ d on every model: the engine's CFG++ rule on this class
    (its split is x̂_0 + σ d, ``CFG_PP_VE_SPLIT``), which the option only names; without
    ``unconditional=`` it is ``gradient_estimation``.

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 2
    COMFY_NAMES = ("gradient_estimation", "gradient_estimation_cfg_pp")
    COMFY_OPTIONS = {"gradient_estimation_cfg_pp": {"cfg_pp": True}}  # noqa: RUF012
    CFG_PP_VE_SPLIT = True  # as ComfyUI's cfg_pp variant of it

    ge_gamma: float = option(2.0, "γ of eq. 4: 1 is Euler, 2 the second-order extrapolation")

    def weights(self, sigmas, i):
        h = sigmas[i + 1] - sigmas[i]
        return np.array([h]) if i == 0 else h * np.array([self.ge_gamma, 1.0 - self.ge_gamma])


def deis_time(sigmas: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(t of each σ, β_0, β_1) of DEIS's variance-preserving SDE with linear β(t) through
    (σ_min, ε_s) and (σ_max, 1): σ² + 1 = exp(β_0 t + (β_1 - β_0) t² / 2)."""
    log_lo = np.log(DEIS_SIGMA_MIN**2 + 1)
    log_hi = np.log(DEIS_SIGMA_MAX**2 + 1)
    beta_d = 2 * (log_lo / DEIS_EPSILON - log_hi) / (DEIS_EPSILON - 1)
    beta_min = log_hi - 0.5 * beta_d
    t = (np.sqrt(beta_min**2 + 2 * beta_d * np.log(sigmas**2 + 1)) - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def deis_tab_weights(t: np.ndarray, i: int, order: int, beta_0: float, beta_1: float):
    """w_{i0..p-1} of eq. 5 by ComfyUI's 10 000-point rule."""
    p = min(i + 1, order)
    taus = np.linspace(t[i], t[i + 1], DEIS_POINTS)
    alpha = np.exp(-0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0)  # ᾱ(τ)
    dlog = -taus * (beta_1 - beta_0) - beta_0  # d log ᾱ / dτ
    integrand = -0.5 * dlog / np.sqrt(alpha * (1 - alpha))
    dtau = (t[i + 1] - t[i]) / DEIS_POINTS
    nodes = t[i - np.arange(p)]
    out = np.empty(p)
    for j in range(p):
        basis = np.ones_like(taus)
        for k in range(p):
            if k != j:
                basis = basis * (taus - nodes[k]) / (nodes[j] - nodes[k])
        out[j] = np.sum(integrand * basis) * dtau
    return out


@document
@dataclass(frozen=True, kw_only=True)
class ComfyDEIS(_Multistep):
    """ComfyUI's ``deis``: DEIS multistep (Zhang & Chen 2023), tAB in the VP time with
    ComfyUI's numerical integral (eq. 5), or ρAB in σ (eq. 2).

    Order ``max_order`` (1 to 4; lower during the warm-up); one model call per step. With
    ``deis_mode="rhoab"`` ComfyUI itself fails once a step needs ``max_order`` points
    (from max_order + 2 steps on: its table has one weight too many); this class runs
    that step at ``max_order``, the method's definition, and equals ComfyUI wherever
    ComfyUI runs.

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 3
    COMFY_NAMES = ("deis",)

    max_order: int = option(3, "the most past derivatives a step combines", low=1, high=4)
    deis_mode: str = option(
        "tab", "tab (polynomial in the VP time, eq. 5) or rhoab (in σ, eq. 2)",
        choices=("tab", "rhoab"),
    )  # fmt: skip

    def calls(self, sigmas: np.ndarray) -> Calls:
        if self.deis_mode == "rhoab":
            return super().calls(sigmas)
        n = len(sigmas) - 1
        t, beta_0, beta_1 = deis_time(sigmas)
        rows = []
        for i in range(n):
            if sigmas[i + 1] == 0:
                rows.append(np.array([-sigmas[i]]))
            elif i == 0 or self.max_order == 1:
                rows.append(np.array([sigmas[i + 1] - sigmas[i]]))  # Euler
            else:
                rows.append(deis_tab_weights(t, i, self.max_order, beta_0, beta_1))
        return Calls(sigmas[:n], linear_multistep(sigmas[:n], rows))

    def weights(self, sigmas, i):  # ρAB: eq. 2
        return adams_bashforth_weights(sigmas, i, self.max_order)
