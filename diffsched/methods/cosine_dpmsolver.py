"""The SDE DPM-Solver++ of Stable Audio (diffusers' ``CosineDPMSolverMultistepScheduler``):
multistep SDE-DPM-Solver++ on a σ_data-preconditioned denoiser, with the cosine model's
timesteps and noise from a Brownian tree.

Evans et al. 2024 ("Stable Audio Open") sample their v-model with k-diffusion's
``sample_dpmpp_2m_sde`` on an exponential σ grid; the model sees the preconditioned input
c_in x (c_in = 1/sqrt(σ² + σ_d²)) at the timestep t = (2/π) arctan σ (the angle of the
cosine schedule whose σ is tan(π t / 2)), and the denoiser is EDM's (Karras et al. 2022,
eq. 7)

    D = c_skip x + c_out F,  c_skip = σ_d² / (σ² + σ_d²),  c_out = ∓ σ σ_d / sqrt(σ² + σ_d²)  (1)

(minus for v-prediction). With λ = -log σ and h = λ_t - λ_s, the step is Lu et al. 2022b's
SDE-DPM-Solver++ (sec. 5; the same coefficients as :class:`EDMDPMSolverMultistep` with
``algorithm_type="sde-dpmsolver++"``):

    x_t = (σ_t/σ_s) e^{-h} x_s + (1 - e^{-2h}) D_0 + c_1 (1 - e^{-2h}) D_1
          + σ_t sqrt(1 - e^{-2h}) z,                                                    (2)

D_1 = (D_0 - D_{-1}) / r_0 the difference of the last two denoised outputs (second order,
c_1 = 1/2 for ``midpoint``; ``heun``'s Taylor weight instead), first order during the
warm-up and at the end. diffusers draws z as the normalised increment of a torchsde
Brownian tree over [σ_min, σ_max] between the call's two σ's; here the default
``noise_type="brownian"`` draws it from :mod:`diffsched.core.brownian` over the same
interval (the same law, another generator); ``noise=`` replays any draws.
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
from .edm import EDMDenoiser, EDMEuler
from .edm_dpmsolver import SOLVER_TYPES, EDMDPMSolverMultistep


@document
@dataclass(frozen=True, kw_only=True)
class CosineDPMSolverMultistep(BrownianNoise, EDMDenoiser, BaseScheduler):
    """Multistep SDE-DPM-Solver++ of Stable Audio (eqs. 1-2; k-diffusion's
    ``sample_dpmpp_2m_sde`` with σ_data preconditioning and arctan timesteps).

    Order ``solver_order`` (1 or 2; first order during the warm-up and at the end); one
    model call per step; stochastic. diffusers: ``CosineDPMSolverMultistepScheduler``. Not
    to be confused with ``EDMDPMSolverMultistep`` (EDM's c_noise timesteps, ODE by default)
    or ``DPMSolverMultistep`` (a model with betas). ``noise=`` replaces the one draw of a
    call.
    """

    DIFFUSERS_CLASS = "CosineDPMSolverMultistepScheduler"
    FAMILY = families.SOLVERS
    PREDICTION_TYPES = EDMEuler.PREDICTION_TYPES
    ORDER = 2
    TRAINING_TIMESTEPS = False  # (2/π) arctan σ

    noise_type: str = with_default(BrownianNoise, "noise_type", "brownian")
    sigma_min: float = with_default(EDMEuler, "sigma_min", 0.3)
    sigma_max: float = with_default(EDMEuler, "sigma_max", 500.0)
    sigma_data: float = with_default(EDMEuler, "sigma_data", 1.0)
    sigma_schedule: str = with_default(EDMEuler, "sigma_schedule", "exponential")
    num_train_steps: int = with_default(EDMEuler, "num_train_steps", 1000)
    prediction_type: str = with_default(EDMEuler, "prediction_type", "angular_velocity")
    rho: float = with_default(EDMEuler, "rho", 7.0)
    solver_order: int = option(2, "the multistep order: 1 or 2", "solver_order", low=1, high=2)
    solver_type: str = option(
        "midpoint", "the weight c_1 of eq. 2: midpoint (1/2) or heun (the Taylor term)",
        "solver_type", choices=SOLVER_TYPES,
    )  # fmt: skip
    lower_order_final: bool = with_default(EDMDPMSolverMultistep, "lower_order_final", True)
    euler_at_final: bool = with_default(EDMDPMSolverMultistep, "euler_at_final", False)
    final_sigmas_type: str = option(
        "zero", "the level of the final sample: zero (the last step lands on D) or sigma_min "
        "(never above the last call's float32 level, where diffusers' step gives NaN)",
        "final_sigmas_type", choices=("zero", "sigma_min"),
    )  # fmt: skip

    algorithm_type = "sde-dpmsolver++"  # what EDMDPMSolverMultistep's table reads

    @property
    def deterministic(self) -> bool:
        return False

    def _grid(self, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """((2/π) arctan σ of each call in float32, the N levels and the final one)."""
        _, sig = EDMDPMSolverMultistep._grid(self, num_steps)  # type: ignore[arg-type]
        f32 = np.float32  # diffusers: float32 atan(σ) / π * 2 (torch's atan is within an ulp
        angle = np.arctan(sig[:-1]).astype(f32) / f32(math.pi) * f32(2)  # of this one)
        return angle.astype(np.float64), sig

    def noise_levels(self, num_steps: int) -> tuple[float, float]:
        _, sig = self._grid(num_steps)
        abar = sigma_schedules.alpha_bar_of(sig[[0, -1]])
        return float(abar[0]), float(abar[1])

    def native_levels(
        self, tableau: Tableau, num_steps: int, init_options: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """(1, σ) of each call: the native sample is x = x_0 + σ ε."""
        _, sig = self._grid(num_steps)
        return np.ones(len(sig) - 1), sig[:-1]

    def tableau(self, num_steps: int) -> Tableau:
        return EDMDPMSolverMultistep.tableau(self, num_steps)  # type: ignore[arg-type]
