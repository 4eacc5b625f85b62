"""ComfyUI's exponential multistep samplers in λ = -log σ: DPM-Solver++(2M), RES multistep
and UniPC.

With the data prediction x̂_0, the probability-flow ODE of x = x_0 + σ ε has the exact
solution from σ_s to σ_t (Lu et al. 2022b, "DPM-Solver++", eq. 9 with α = 1; h = λ_t - λ_s)

    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^λ x̂_0(λ) dλ,                               (1)

and each method interpolates x̂_0 through the last calls' estimates (the kit's
:func:`~diffsched.methods.kit.exponential_multistep`). With φ_1(z) = (e^z - 1)/z and
φ_2(z) = (φ_1(z) - 1)/z:

* **DPM-Solver++(2M)** (``dpmpp_2m``; Lu et al. 2022b, Alg. 2), r = h_{i-1}/h_i:
  x_{i+1} = (σ_{i+1}/σ_i) x_i - (e^{-h} - 1) ((1 + 1/(2r)) x̂_0,i - x̂_0,{i-1}/(2r));     (2)
* **RES multistep** (``res_multistep``; Zhang et al. 2023, "Improved Order Analysis and
  Design of Exponential Integrator for Diffusion Models Sampling", arXiv:2308.02157, the
  2-step method), c_2 = (λ_{i-1} - λ_i)/h:
  x_{i+1} = e^{-h} x_i + h (b_1 x̂_0,i + b_2 x̂_0,{i-1}),
  b_1 = φ_1(-h) - φ_2(-h)/c_2, b_2 = φ_2(-h)/c_2;                                       (3)

  both first order (DPM-Solver++(1) = DDIM) on the first step and landing on x̂_0 on the
  step to σ = 0.
* **UniPC** (``uni_pc``, ``uni_pc_bh2``; Zhao et al. 2023, "UniPC", Alg. 2 and 3 with the
  data prediction) in the variance-preserving sample x_vp = α x, α = 1/sqrt(σ² + 1),
  σ_vp = α σ, λ = log(α/σ_vp) = -log σ: with the last p outputs m_0 (the previous call),
  m_1, ..., r_k = (λ_{s_k} - λ_{s_0})/h, D_k = (m_k - m_0)/r_k, ĥ = -h, B(h) = ĥ (bh1) or
  e^ĥ - 1 (bh2), g_i = ĥ φ_{i+1}(ĥ) i!/B(h),

      x̃_t = (σ_vp,t/σ_vp,s) x^c_s - α_t (e^ĥ - 1) m_0 - α_t B(h) Σ_{k<p} ρ^p_k D_k,     (4)
      x^c_t = x̃_t - α_t B(h) (Σ_{k<p} (ρ^c_k - ρ^p_k) D_k + ρ^c_p (m_t - m_0)),         (5)

  ρ^p solving Σ_k ρ_k r_k^{i-1} = g_i (i < p; ρ^p = 1/2 at p = 2), ρ^c the same with the
  point r_p = 1 (i <= p; ρ^c = 1/2 at p = 1). The model is called at the predicted x̃_t
  (one call per step; the corrected x^c_t is never a model input). ComfyUI's orders: p
  rises by one per step up to min(3, N - 1), and falls to N + 1 - k at step k; the last
  step has no corrector. ComfyUI's quirks, reproduced here: the loop ends at σ = 0.001,
  not 0 (it sets the list's last level to 0.001 in place), the result is x_vp / α(0.001),
  and on flow models ComfyUI's final rescale divides it by 1 - 0.001; the φ's are
  computed by ComfyUI's recursion φ_{k+1}(z) = (φ_k(z) - 1/k!)/z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.options import option
from ..core.scheduler import document
from ._comfy import Calls, CFGPlusPlus, ComfySampler
from .kit import UniPCRhos, data_estimate, exponential_multistep, half_log_snr, unipc_rhos

UNIPC_END = 0.001  # ComfyUI's uni_pc ends here instead of at σ = 0


@dataclass(frozen=True, kw_only=True)
class _ExponentialMultistep(ComfySampler):
    """x_{i+1} = (σ_{i+1}/σ_i) x_i + Σ_k c_{ik} x̂_0,{i-k} with ``weights`` (eq. 1)."""

    def weights(self, lam: np.ndarray, i: int) -> list[float]:
        raise NotImplementedError

    def calls(self, sigmas: np.ndarray) -> Calls:
        n = len(sigmas) - 1
        lam = half_log_snr(sigmas)
        rows = []
        for i in range(n):
            if i == 0 or sigmas[i + 1] == 0:  # first order; at σ = 0: x̂_0
                rows.append([-math.expm1(-(lam[i + 1] - lam[i]))])
            else:
                rows.append(self.weights(lam, i))
        keep = sigmas[1:] / sigmas[:n]  # e^{-h} of eq. 1
        return Calls(sigmas[:n], exponential_multistep(keep, rows, data_estimate(n)))


@document
@dataclass(frozen=True, kw_only=True)
class ComfyDPMPP2M(CFGPlusPlus, _ExponentialMultistep):
    """ComfyUI's ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2; eq. 2).

    Second order (first on the first step and on the step to σ = 0); one model call per
    step; deterministic. diffsched's ``DPMSolverMultistep`` is the same method on diffusers'
    grids.

    ``dpmpp_2m_cfg_pp`` (``cfg_pp=True``): eq. 2 with x_i = x̂_0(u) + σ_i ε̂(u) and
    x̂_0(g) in place of the current x̂_0 (the kept x̂_0,{i-1} is the unconditional one), on
    every model: the engine's CFG++ rule on this class (its split is x̂_0 + σ ε̂,
    ``CFG_PP_VE_SPLIT``), which the option only names; without ``unconditional=`` it is
    ``dpmpp_2m``.

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 2
    COMFY_NAMES = ("dpmpp_2m", "dpmpp_2m_cfg_pp")
    COMFY_OPTIONS = {"dpmpp_2m_cfg_pp": {"cfg_pp": True}}  # noqa: RUF012
    CFG_PP_VE_SPLIT = True  # as ComfyUI's cfg_pp variant of it

    def weights(self, lam, i):
        h = lam[i + 1] - lam[i]
        r = (lam[i] - lam[i - 1]) / h
        e = math.expm1(-h)
        return [-e * (1 + 1 / (2 * r)), e / (2 * r)]  # eq. 2


@document
@dataclass(frozen=True, kw_only=True)
class ComfyResMultistep(CFGPlusPlus, _ExponentialMultistep):
    """ComfyUI's ``res_multistep``: the second-order RES multistep method (Zhang et al.
    2023, arXiv:2308.02157; eq. 3), deterministic (η = 0).

    Second order; one model call per step. ComfyUI draws a normal per step and multiplies
    it by 0; this class draws none.

    ``res_multistep_cfg_pp`` (``cfg_pp=True``), ComfyUI's CFG++ form with guided g and
    unconditional u: x_{i+1} = e^{-h} (x_i + x̂_0(g) - x̂_0(u)) + h (b_1 x̂_0(u) + b_2
    x̂_0,{i-1}(u)), i.e. only the e^{-h} part of x̂_0 comes from g (the engine's rule
    would take e^{-h} + h b_1 from it); the first step and the step to 0: x_{i+1} =
    x̂_0(g) + σ_{i+1} (x_i - x̂_0(u))/σ_i. On every model (x = x̂_0 + σ ε̂). Without
    ``unconditional=`` it is ``res_multistep``.

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 2
    COMFY_NAMES = ("res_multistep", "res_multistep_cfg_pp")
    COMFY_OPTIONS = {"res_multistep_cfg_pp": {"cfg_pp": True}}  # noqa: RUF012

    def weights(self, lam, i):
        h = lam[i + 1] - lam[i]
        c2 = (lam[i - 1] - lam[i]) / h
        phi1 = math.expm1(-h) / -h
        phi2 = (phi1 - 1.0) / -h
        return [h * (phi1 - phi2 / c2), h * phi2 / c2]  # eq. 3 (e^-h = σ_{i+1}/σ_i)

    def calls(self, sigmas: np.ndarray) -> Calls:
        out = super().calls(sigmas)
        if not self.cfg_pp:
            return out
        n = len(sigmas) - 1
        lam = half_log_snr(sigmas)
        guided = [1.0 if i == 0 or sigmas[i + 1] == 0 else math.exp(-(lam[i + 1] - lam[i]))
                  for i in range(n)]  # fmt: skip
        return out._replace(guided=np.array(guided))


def unipc_step(lam: np.ndarray, k: int, p: int, variant: str) -> tuple[np.ndarray, UniPCRhos]:
    """(r, the weights) of UniPC's step into call level k from the p previous calls k-1, ...,
    k-p (eq. 4-5), the φ's by ComfyUI's recursion φ_{i+1}(z) = (φ_i(z) - 1/i!)/z."""
    h = lam[k] - lam[k - 1]
    r = np.array([(lam[k - 1 - i] - lam[k - 1]) / h for i in range(1, p)])
    hh = -h
    h_phis, h_phi_k, factorial = [], math.expm1(hh) / hh - 1, 1  # ĥ φ_2(ĥ)
    for i in range(1, p + 1):
        h_phis.append(h_phi_k)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return r, unipc_rhos(r, hh, variant, h_phis)


@document
@dataclass(frozen=True, kw_only=True)
class ComfyUniPC(ComfySampler):
    """ComfyUI's ``uni_pc`` (``variant="bh1"``) and ``uni_pc_bh2``: UniPC multistep with
    the corrector (Zhao et al. 2023; eq. 4-5), as ComfyUI runs it.

    Order up to 3 (min(3, N - 1)); one model call per step; deterministic. At one step
    ComfyUI calls the model once and returns the initial sample rescaled to σ = 0.001 (its
    order is 0); so does this class. ComfyUI's
    KSampler asks its scheduler for N + 1 steps and drops the second-to-last level. The
    loop ends at σ = 0.001 (ComfyUI's quirk; see the module notes). diffsched's ``UniPC``
    is the method on diffusers' grids, ending at 0.

    Not in diffusers: ComfyUI's convention (model input, nearest-index timesteps, its
    schedulers through ``scheduler`` or ``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
    """

    ORDER = 3
    DISCARD_PENULTIMATE = True
    COMFY_NAMES = ("uni_pc", "uni_pc_bh2")
    COMFY_OPTIONS = {"uni_pc": {"variant": "bh1"}, "uni_pc_bh2": {"variant": "bh2"}}  # noqa: RUF012

    variant: str = option("bh1", "B(h) of eq. 4-5: bh1 (ĥ) or bh2 (e^ĥ - 1)",
                          choices=("bh1", "bh2"))  # fmt: skip

    def calls(self, sigmas: np.ndarray) -> Calls:
        t = sigmas.copy()
        if t[-1] == 0:
            t[-1] = UNIPC_END
        n = len(t) - 1
        order = min(3, n - 1)
        log_alpha = 0.5 * np.log(1 / (t**2 + 1))  # ComfyUI's λ, α, σ_vp of σ
        alpha = np.exp(log_alpha)
        if n == 1:  # ComfyUI: order 0, the one call's output unused, x_vp / α(end) returned
            update = exponential_multistep([alpha[0] / alpha[1]], [[]], data_estimate(1))
            return Calls(sigmas[:1], update, end=float(t[-1]))
        std = np.sqrt(1.0 - np.exp(2.0 * log_alpha))
        lam = log_alpha - 0.5 * np.log(1.0 - np.exp(2.0 * log_alpha))

        def order_into(k: int) -> int:
            return k if k < order else min(order, n + 1 - k)

        keep, rows = np.zeros(n), []
        for k in range(n):
            # x^c_k = x̃_k + Σ_j e_j m_{k-j} (eq. 5; none at k = 0)
            corr: dict[int, float] = {}
            if k >= 1:
                p = order_into(k)
                r, st = unipc_step(lam, k, p, self.variant)
                scale = alpha[k] * st.b_h
                for i in range(1, p):  # D_i = (m_{k-1-i} - m_{k-1}) / r_i
                    w = scale * (st.rho_p[i - 1] - st.rho_c[i - 1]) / r[i - 1]
                    corr[1 + i] = corr.get(1 + i, 0.0) + w
                    corr[1] = corr.get(1, 0.0) - w
                corr[0] = corr.get(0, 0.0) - scale * st.rho_c[-1]  # - ρ^c_p (m_k - m_{k-1})
                corr[1] = corr.get(1, 0.0) + scale * st.rho_c[-1]
            # x̃_{k+1} (eq. 4) from x^c_k, in the variance-preserving sample
            p = order_into(k + 1)
            r, st = unipc_step(lam, k + 1, p, self.variant)
            ratio = std[k + 1] / std[k]
            vp = {j: ratio * e for j, e in corr.items()}
            vp[0] = vp.get(0, 0.0) - alpha[k + 1] * math.expm1(-(lam[k + 1] - lam[k]))
            for i in range(1, p):  # D_i = (m_{k-i} - m_k) / r_i
                w = -alpha[k + 1] * st.b_h * st.rho_p[i - 1] / r[i - 1]
                vp[i] = vp.get(i, 0.0) + w
                vp[0] -= w
            # native x = x_vp / α at both ends
            keep[k] = ratio * alpha[k] / alpha[k + 1]
            rows.append({j: c / alpha[k + 1] for j, c in vp.items()})
        update = exponential_multistep(keep, rows, data_estimate(n))
        return Calls(sigmas[:n], update, end=float(t[-1]))
