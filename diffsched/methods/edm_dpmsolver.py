"""EDM DPM-Solver multistep: DPM-Solver++ (Lu, Zhou, Bao, Chen, Li & Zhu 2022b, "DPM-Solver++:
Fast Solver for Guided Sampling of Diffusion Probabilistic Models", Alg. 2) on the
preconditioned denoiser of Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space
of Diffusion-Based Generative Models", as diffusers' ``EDMDPMSolverMultistepScheduler`` runs
it.

The sample is variance exploding, x = x_0 + σ ε: α_t = 1 and σ_t = σ, so the half-log-SNR
is λ = -log σ and a step from σ_s to σ_t has h = log(σ_s / σ_t). The denoiser is EDM's
(eq. 7, Table 1; see :mod:`diffsched.methods.edm`):

    D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ)),                       (1)
    c_skip = σ_data² / (σ² + σ_data²),  c_out = ± σ σ_data / sqrt(σ² + σ_data²),
    c_in = 1 / sqrt(σ² + σ_data²),      c_noise = ¼ ln σ,

with c_out negated for diffusers' ``v_prediction``. DPM-Solver++ integrates the exact
solution of the probability-flow ODE in its data-prediction form (2022b, sec. 3),

    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} D(λ) dλ,                             (2)

expanding D in λ through the last p outputs D_0 (this call), D_1, D_2
(:mod:`diffsched.methods._dpm_solver_coefficients`, eq. 8-9), with α_t = 1:

    x_t = (σ_t/σ_s) x_s + (1 - σ_t/σ_s) D_0 + c_1 D_1 + c_2 D_2,                       (3)

c_1 = (1 - e^{-h}) / 2 (``midpoint``, DPM-Solver++(2M)) or h φ_2(-h) (``heun``), and at
third order c_1 = h φ_2(-h), c_2 = h φ_3(-h). ``sde-dpmsolver++`` integrates the reverse
SDE's linear part exactly (the coefficient module's eq. 7):

    x_t = (σ_t/σ_s) e^{-h} x_s + (1 - e^{-2h}) D_0 + ... + σ_t sqrt(1 - e^{-2h}) z.     (4)

The order rises 1, 2, ... over the first calls (the multistep warm-up) and falls to 1 at
the last call with ``euler_at_final``, with ``lower_order_final`` when N < 15 (and to at
most 2 at the call before), and always into a final σ = 0, where (3) gives x = D_0.

The grid, N levels and a final one (0, or σ_min with ``final_sigmas_type="sigma_min"``):

    karras:       σ_i = (σ_max^(1/ρ) + i/(N-1) (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ        (eq. 5)
    exponential:  σ_{N-1-i} = exp(ln σ_min + i/(N-1) (ln σ_max - ln σ_min)),

evaluated in float32 as diffusers does (torch's default dtype; the last power or exponential
correctly rounded, within an ulp of torch's): σ_0 of the karras grid is then
(σ_max^(1/ρ))^ρ with σ_max^(1/ρ) rounded to float32, not σ_max, and the model's first input
shows it. Its last level can so fall an ulp below σ_min: the final level is then that last
level (a step of h = 0, the identity), where diffusers steps up to σ_min (h < 0), which
``sde-dpmsolver++`` turns into NaN (the variance 1 - e^{-2h} < 0).

The model is called on c_in(σ_i) x_i: that is the sample this scheduler holds
(``input_scale`` = 1 / c_in), at timestep c_noise(σ_i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core import families
from ..core.engine import Tableau
from ..core.options import option, with_default
from ..core.scheduler import BaseScheduler, BrownianNoise, document
from ..schedules import sigmas as sigma_schedules
from ._img2img import first_call, restarted
from .dpmsolver import DPMSolverMultistep, Thresholding, multistep_orders, multistep_rows
from .edm import EDMDenoiser, EDMEuler
from .kit import data_estimate, exponential_multistep

ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


def float32_linspace(start: float, end: float, num: int) -> np.ndarray:
    """torch's float32 ``linspace``: start + i·step over the first half of the points and
    end - (num - 1 - i)·step over the second, step = (end - start)/(num - 1), each point
    rounded once to float32 (NumPy's linspace rounds differently in the last bit)."""
    a, b = np.float32(start), np.float32(end)
    if num == 1:
        return np.array([a])
    step = np.float64(np.float32((b - a) / np.float32(num - 1)))
    i = np.arange(num)
    head = np.float64(a) + step * i  # exact in float64: one rounding, below
    tail = np.float64(b) - step * (num - 1 - i)
    return np.where(i < num // 2, head, tail).astype(np.float32)


@document
@dataclass(frozen=True, kw_only=True)
class EDMDPMSolverMultistep(BrownianNoise, Thresholding, EDMDenoiser, BaseScheduler):
    """Multistep DPM-Solver++ on EDM's preconditioned denoiser (Lu et al. 2022b, Alg. 2;
    Karras et al. 2022, eq. 7).

    Order ``solver_order`` (2 by default; 1-3, lower during the warm-up and at the end);
    one model call per step; deterministic, stochastic with
    ``algorithm_type="sde-dpmsolver++"``. diffusers: ``EDMDPMSolverMultistepScheduler``.
    Not to be confused with DPM-Solver multistep (``DPMSolverMultistep``), the same solver
    on a variance-preserving model with betas (timesteps, x / sqrt(σ² + 1) input), nor with
    EDM's Euler (``EDMEuler``) or the Heun sampler of Karras et al. 2022 (Alg. 1).

    Third-order ``sde-dpmsolver++`` (which diffusers cannot run: its third-order step has
    no SDE branch and fails) weighs D_2 with 2 h φ_3(-2h), the stochastic counterpart of the
    deterministic weight (the coefficient module's ``sde_third="reference"``). With
    ``final_sigmas_type="sigma_min"`` the last step never goes up (module docstring), where
    diffusers' ``sde-dpmsolver++`` returns NaN.
    """

    DIFFUSERS_CLASS = "EDMDPMSolverMultistepScheduler"
    FAMILY = families.SOLVERS
    CLI_NAME = "edm-dpm++2m"
    PREDICTION_TYPES = EDMEuler.PREDICTION_TYPES
    ORDER = 2
    TRAINING_TIMESTEPS = False  # c_noise(σ) = log(σ) / 4

    sigma_min: float = with_default(EDMEuler, "sigma_min", 0.002)
    sigma_max: float = with_default(EDMEuler, "sigma_max", 80.0)
    sigma_data: float = with_default(EDMEuler, "sigma_data", 0.5)
    sigma_schedule: str = with_default(EDMEuler, "sigma_schedule", "karras")
    num_train_steps: int = with_default(EDMEuler, "num_train_steps", 1000)
    prediction_type: str = with_default(EDMEuler, "prediction_type", "noise")
    rho: float = with_default(EDMEuler, "rho", 7.0)
    solver_order: int = option(
        2, "the multistep order: 1, 2 (guided sampling) or 3 (unconditional)",
        "solver_order", low=1, high=3,
    )  # fmt: skip
    algorithm_type: str = option(
        "dpmsolver++", "dpmsolver++ (the probability-flow ODE, eq. 3) or sde-dpmsolver++ "
        "(the reverse SDE, eq. 4: fresh noise every call)", "algorithm_type",
        choices=ALGORITHM_TYPES,
    )  # fmt: skip
    solver_type: str = option(
        "midpoint", "the weight c_1 of the second-order term: midpoint ((1 - e^{-h}) / 2, "
        "DPM-Solver++(2M)) or heun (the Taylor term h φ_2(-h))", "solver_type",
        choices=SOLVER_TYPES,
    )  # fmt: skip
    lower_order_final: bool = with_default(DPMSolverMultistep, "lower_order_final", True)
    euler_at_final: bool = with_default(DPMSolverMultistep, "euler_at_final", False)
    final_sigmas_type: str = option(
        "zero", "the level of the final sample: zero (the last step lands on D) or sigma_min "
        "(σ_min, or the grid's last level where float32 puts it below σ_min)",
        "final_sigmas_type", choices=("zero", "sigma_min"),
    )  # fmt: skip

    @property
    def deterministic(self) -> bool:
        return self.algorithm_type == "dpmsolver++"

    def _grid(self, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(c_noise timesteps, the N levels and the final one), float32 values."""
        f32 = np.float32  # diffusers evaluates the grid in float32 (torch's default dtype)
        if self.sigma_schedule == "karras":  # eq. 5
            ramp = float32_linspace(0.0, 1.0, num_steps)
            lo, hi = f32(self.sigma_min ** (1 / self.rho)), f32(self.sigma_max ** (1 / self.rho))
            sig = (hi + ramp * (lo - hi)).astype(np.float64) ** self.rho
        else:  # evenly in log σ, built from σ_min upwards
            logs = float32_linspace(math.log(self.sigma_min), math.log(self.sigma_max), num_steps)
            sig = np.exp(logs.astype(np.float64))[::-1]
        sig = sigma_schedules.as_float32(sig)
        # σ_min itself, but never above the last call's level (the float32 grid's last level
        # can fall an ulp below σ_min; a step up would be a negative SDE variance)
        final = min(self.sigma_min, sig[-1]) if self.final_sigmas_type == "sigma_min" else 0.0
        sig = sigma_schedules.as_float32(np.append(sig, final))
        ts = sigma_schedules.as_float32(0.25 * np.log(sig[:-1]))  # c_noise (Table 1)
        return ts, sig

    def noise_levels(self, num_steps: int, strength: float = 1.0) -> tuple[float, float]:
        _, sig = self._grid(num_steps)
        abar = sigma_schedules.alpha_bar_of(sig[[first_call(num_steps, strength), -1]])
        return float(abar[0]), float(abar[1])

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        ts, sig = self._grid(num_steps)
        n = len(ts)
        cut = first_call(n, strength)  # image-to-image: the warm-up restarts here
        s = sig[:n]
        c_skip, c_out = self.preconditioning(s)  # eq. 1 at each call: D = c_skip x + c_out F
        orders = multistep_orders(
            n, self.solver_order, sig, lower_order_final=self.lower_order_final,
            last_first=self.euler_at_final or self.final_sigmas_type == "zero", begin=cut,
        )  # fmt: skip
        stochastic = not self.deterministic
        second = "taylor" if self.solver_type == "heun" else "midpoint"
        with np.errstate(divide="ignore"):
            lam = -np.log(sig)  # λ = -log σ (α = 1; +∞ at a final σ = 0)
        # eq. 3-4, the third-order step with the Taylor c_1 whatever solver_type
        keep, rows, noise = multistep_rows(
            np.ones_like(sig), sig, lam, orders, data=True, second=second, third="reference",
            stochastic=stochastic, sde_third="reference",
        )  # fmt: skip
        update = exponential_multistep(keep, rows, data_estimate(n))
        tab = Tableau(
            timesteps=ts,
            x0_sample=c_skip,
            x0_output=c_out,
            update=update,
            noise=noise if stochastic else None,
            input_scale=np.append(np.sqrt(s**2 + self.sigma_data**2), 1.0),  # 1 / c_in
            start=(1.0, float(s[0])),
            init_noise_sigma=math.sqrt(self.sigma_max**2 + 1),  # diffusers' value
        )
        return restarted(tab, cut, (1.0, float(s[cut])))
