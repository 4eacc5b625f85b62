"""DEIS: Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"
(ICLR 2023), its multistep ρAB-DEIS with polynomial extrapolation in log ρ (diffusers'
``logrho``), as diffusers' ``DEISMultistepScheduler`` runs it.

The sample is x_t = α_t x_0 + σ_t ε (variance preserving, α = 1/sqrt(σ² + 1), σ_t = σ α for
the grid's variance-exploding σ; or rectified flow, α = 1 - σ, σ_t = σ), called as is. In
ρ = σ_t / α_t (the variance-exploding σ; sec. 4, "Exponential integrator in ρ") the
probability-flow ODE with the noise prediction ε̂ is

    d(x / α) / dρ = ε̂(x, ρ),   so   x_t / α_t = x_s / α_s + ∫_{ρ_s}^{ρ_t} ε̂(ρ) dρ.        (1)

ρAB-DEIS replaces ε̂ by the Lagrange polynomial through the last p predictions (this call
and the p - 1 before, at ρ_{s_0} > ρ_{s_1} > ...), in u = log ρ (``logrho``), and
integrates it exactly:

    x_t = α_t (x_s / α_s + Σ_{k<p} C_k ε̂_k),   C_k = ∫_{ρ_s}^{ρ_t} ℓ_k(log ρ) dρ,          (2)
    ℓ_k(u) = Π_{j<p, j≠k} (u - u_j) / (u_k - u_j).                                        (3)

With λ = log(α/σ_t) = -u, dρ = -ρ dλ, (2) is the ε form of DPM-Solver (Lu et al. 2022a,
eq. 3.4) with the polynomial's Taylor coefficients at λ_s, which the φ functions integrate
exactly (:mod:`diffsched.methods._dpm_solver_coefficients`, eq. 3):

    x_t = (α_t/α_s) x_s - σ_t (h φ_1(h) D_0 + h φ_2(h) D_1 + 2 h φ_3(h) D_2),             (4)

h = λ_t - λ_s, D_1 = h ε̂'(λ_s) and D_2 = h² ε̂''(λ_s) / 2 of the interpolating polynomial
(the divided differences of DPM-Solver's multistep, exact for it): DPM-Solver's table
(:func:`diffsched.methods.dpmsolver.multistep_tableau`, on the kit's exponential step).
Order 1 is DDIM, order 2
DPM-Solver's multistep ``heun`` step; order 3 differs from DPM-Solver's third-order step by
its full D_2 term (DPM-Solver's reference code halves it). (4) is used here rather than
diffusers' closed-form integrals of (2), which subtract values of size ρ (log ρ)² / h² to
get one of size ρ h (in float32 they lose most digits with many steps); they agree in
float64.

The order rises 1, 2, ... over the first calls; with ``lower_order_final`` and fewer than 15
steps the last call is first order and the one before at most second. The grid is
:func:`diffsched.schedules.solver_grid.solver_grid` with DEIS's settings: no λ clipping,
Karras timesteps always rounded, and the final level the training σ_0 (spaced grids) or a
repeat of the last level (Karras / exponential / beta / flow grids; that last step moves
nothing, and is the identity here as in diffusers).

ε̂ is formed from x̂_0 as diffusers does, ε̂ = (x - α_t x̂_0) / σ_t after any thresholding of
x̂_0; for ``prediction_type="flow"`` diffusers takes the grid's σ both in x̂_0 = x - σ v and
in that σ_t (the same on flow grids; on variance-preserving grids a flow model is a misuse
that both reproduce alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core import families, predictions
from ..core.engine import Tableau
from ..core.options import option, with_default
from ..core.scheduler import Scheduler, SigmaGrid, SolverOptions, Spacing, document
from ..schedules import solver_grid
from ._img2img import first_call
from .dpmsolver import (
    DPMSolverMultistep,
    SolverGridLevels,
    Thresholding,
    flow_prediction_type_option,
    multistep_orders,
    multistep_tableau,
    restarted_on_grid,
)


@document
@dataclass(frozen=True, kw_only=True)
class DEIS(Thresholding, SolverGridLevels, SigmaGrid, Spacing, Scheduler):
    """Diffusion exponential integrator sampler, multistep in log ρ (Zhang & Chen 2023).

    Order ``solver_order`` (2 by default; 1, 2 during the warm-up, lower at the end); one
    model call per step; deterministic. diffusers: ``DEISMultistepScheduler``. Not to be
    confused with DPM-Solver's multistep (``DPMSolverMultistep(algorithm_type="dpmsolver")``),
    the same exponential integrator of ε̂, whose second order with ``solver_type="heun"`` is
    this method's, but whose third order halves the D_2 term; nor with DPM-Solver++
    (``DPMSolverMultistep``), which integrates x̂_0.

    ``init(..., mu=μ)``: the flow shift becomes e^μ, as diffusers' ``set_timesteps(mu=...)``
    (needs ``use_dynamic_shifting``). ``init(..., strength=s)``: image-to-image over the
    last floor(N s) calls of the N-step grid, the warm-up restarted there, as diffusers
    runs it after a pipeline's ``set_begin_index``.
    """

    DIFFUSERS_CLASS = "DEISMultistepScheduler"
    FAMILY = families.SOLVERS
    CLI_NAME = "deis"
    PREDICTION_TYPES = predictions.FLOW_PREDICTION_TYPES
    ORDER = 2

    prediction_type: str = flow_prediction_type_option()
    solver_order: int = option(
        2, "p, the number of predictions the log-ρ polynomial runs through (eq. 2-3): 1 "
        "(DDIM), 2 (guided sampling) or 3", "solver_order", low=1, high=3,
    )  # fmt: skip
    algorithm_type: str = option(
        "deis", "the solver: deis (the exponential integrator of ε̂, eq. 1)", "algorithm_type",
        choices=("deis",),
    )  # fmt: skip
    solver_type: str = option(
        "logrho", "the polynomial's variable: logrho (log ρ, eq. 3)", "solver_type",
        choices=("logrho",),
    )  # fmt: skip
    lower_order_final: bool = with_default(DPMSolverMultistep, "lower_order_final", True)
    use_flow_sigmas: bool = with_default(SolverOptions, "use_flow_sigmas", False)
    flow_shift: float = with_default(SolverOptions, "flow_shift", 1.0)
    timestep_spacing: str = with_default(Spacing, "timestep_spacing", "linspace")
    use_dynamic_shifting: bool = with_default(SolverOptions, "use_dynamic_shifting", False)
    time_shift_type: str = with_default(SolverOptions, "time_shift_type", "exponential")

    def _check(self) -> None:
        self.check_flow_grid()

    def _grid(self, num_steps: int | None, mu: Any = None) -> solver_grid.SolverGrid:
        """diffusers' ``set_timesteps``: timesteps and N + 1 levels (float32 values)."""
        kind = self.sigma_kind or ("flow" if self.use_flow_sigmas else None)
        shift = self.flow_shift_of(mu)
        return solver_grid.solver_grid(
            self.alphas_cumprod, num_steps,
            spacing=self.timestep_spacing, offset=self.timesteps_offset,
            sigma_schedule=kind, final_sigma="sigma_min", converted_final_sigma="last",
            flow_shift=shift,
        )  # fmt: skip

    def tableau(self, num_steps: int | None, mu: Any = None, strength: float = 1.0) -> Tableau:
        grid = self._grid(num_steps, mu)
        n = len(grid.timesteps)
        cut = first_call(n, strength)
        orders = multistep_orders(
            n, self.solver_order, grid.sigmas, lower_order_final=self.lower_order_final, begin=cut
        )
        tab = multistep_tableau(
            grid, orders, prediction_type=self.prediction_type, data=False,
            second="taylor", third="taylor", processes_x0=self.processes_x0,
            direct_velocity=False,  # diffusers' DEIS forms ε̂ from x̂_0, for v models too
        )  # fmt: skip
        return restarted_on_grid(tab, grid, cut)
