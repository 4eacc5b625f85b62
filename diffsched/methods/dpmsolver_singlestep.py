"""DPM-Solver singlestep: Lu, Zhou, Bao, Chen, Li & Zhu 2022a, "DPM-Solver: A Fast ODE Solver
for Diffusion Probabilistic Model Sampling in Around 10 Steps" (Alg. 1-2: DPM-Solver-2 and -3,
and the order schedule of DPM-Solver-fast), with the data-prediction form of Lu et al. 2022b,
"DPM-Solver++" (Alg. 1: DPM-Solver++(2S)), as diffusers' ``DPMSolverSinglestepScheduler``
runs them.

The sample is x_t = α_t x_0 + σ_t ε (variance preserving, or rectified flow α = 1 - σ), and
each step integrates the exact solution in λ = log(α_t / σ_t) from a level s to t,
h = λ_t - λ_s (:mod:`diffsched.methods._dpm_solver_coefficients`, eq. 1, 2, 7):

    x_t = c_x x_s + c_0 D_0 + c_1 D_1 + c_2 D_2 (+ c_z z),                             (1)

the D's being the prediction m (x̂_0 for ``dpmsolver++`` and ``sde-dpmsolver++``, ε̂ for
``dpmsolver``) and its λ-derivatives (times h, h²/2) at s. A singlestep method of order k
estimates them from k - 1 intermediate model calls between s and t; here, as in diffusers,
those intermediate levels are the grid's own: a group of k consecutive calls n, n + 1,
..., n + k - 1 starts at s = λ_n, its i-th call steps from the group's first sample x_n
(not from its predecessor's result) to λ_{n+i+1} with order i + 1, and its last result is
the next group's start (the kit's :func:`~diffsched.methods.kit.exponential_multistep`
with each call's origin at its group's first sample). With m_j the prediction at call j:

* order 1 (DPM-Solver-1, which is DDIM): D_0 = m_n;
* order 2 (DPM-Solver-2; 2022a, Alg. 1), s = λ_n, the call n + 1 at r_0 h:

      D_0 = m_n,   D_1 = (m_{n+1} - m_n) / r_0,   r_0 = (λ_{n+1} - λ_n) / h;          (2)

* order 3 (DPM-Solver-3; 2022a, Alg. 2), calls n + 1, n + 2 at r_1 h, r_0 h:

      D1_0 = (m_{n+1} - m_n) / r_1,   D1_1 = (m_{n+2} - m_n) / r_0,                      (3)
      D_1 = (r_0 D1_0 - r_1 D1_1) / (r_0 - r_1),   D_2 = 2 (D1_1 - D1_0) / (r_0 - r_1),

  and ``midpoint`` uses D1_1 alone as its D_1, with the Taylor weight c_1 and no D_2
  (the paper's Alg. 2: its last stage).

``midpoint`` weighs the D_1 of (2) with c_0 / 2 (2022a, Alg. 1: the model output at r_0 h
weighted by c_0 / (2 r_0)), ``heun`` with the Taylor weight c_1 = α_t h φ_2(-h) (or
-σ_t h φ_2(h) in the ε form); D_2 is weighted by α_t h φ_3(-h) (-σ_t h φ_3(h)).
``sde-dpmsolver++`` draws fresh noise at every call (eq. 7 of the coefficient module); its
third-order ``heun`` stage weighs D_2 as diffusers does (a sign slip) unless
``sde_third_order="corrected"`` (2 α_t h φ_3(-2h); measured: W2 error on an exact Gaussian
model at N = 81, 162 of 3.2, 3.2 with diffusers' weight, 9.5e-2, 7.1e-3 corrected; see
:mod:`diffsched.methods.dpmsolver`).

The orders over the N calls are diffusers' ``get_order_list``: groups (1, 2, 3) (or
(1, 2)) repeated; with ``lower_order_final`` the tail is cut into smaller groups so that
the last group ends on the last call; a final σ = 0 is always reached at first order.
diffusers turns ``lower_order_final`` on by itself (in its config) when N is not a multiple
of the order or the final σ is 0; here the same rule is applied without changing the option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families, predictions
from ..core.engine import Tableau
from ..core.options import option, with_default
from ..core.scheduler import (
    BrownianNoise,
    Scheduler,
    SigmaGrid,
    SolverOptions,
    VarianceChannels,
    document,
)
from ..schedules import solver_grid
from . import _dpm_solver_coefficients as dpm
from ._img2img import first_call
from .dpmsolver import (
    SDE_THIRD_ORDER,
    SolverGridLevels,
    Thresholding,
    custom_timesteps,
    flow_prediction_type_option,
    restarted_on_grid,
    sde_third_order_option,
)
from .kit import data_estimate, exponential_multistep, noise_estimate

ALGORITHM_TYPES = ("dpmsolver++", "dpmsolver", "sde-dpmsolver++")
DATA_FORMS = ("dpmsolver++", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


def order_list(num_steps: int, order: int, lower_order_final: bool, final_zero: bool) -> list:
    """The order of each call (diffusers' ``get_order_list``): groups 1, 2, ..., order."""
    n = num_steps
    if lower_order_final:
        full, rest = divmod(n, order)
        if order == 3:
            tail = {0: [1, 2, 1], 1: [1], 2: [1, 2]}[rest]
            orders = [1, 2, 3] * (full - (rest == 0)) + tail
        elif order == 2:
            orders = [1, 2] * (full - (rest == 0)) + ([1, 1] if rest == 0 else [1])
        else:
            orders = [1] * n
    else:
        orders = list(range(1, order + 1)) * (n // order)
    if final_zero:
        orders[-1] = 1
    return orders


@document
@dataclass(frozen=True, kw_only=True)
class DPMSolverSinglestep(
    VarianceChannels, BrownianNoise, Thresholding, SolverGridLevels, SigmaGrid, Scheduler
):
    """DPM-Solver singlestep (Lu et al. 2022a, Alg. 1-2; DPM-Solver++ of Lu et al. 2022b).

    Order ``solver_order`` (2 by default; 1-3), reached within each group of as many calls
    (diffusers' order schedule); one model call per step; deterministic, stochastic with
    ``algorithm_type="sde-dpmsolver++"``. diffusers: ``DPMSolverSinglestepScheduler``. Not
    to be confused with DPM-Solver multistep (``DPMSolverMultistep``), whose higher orders
    reuse the previous steps' outputs, or DPM2 (``DPM2``, k-diffusion's second-order
    Heun-like method in σ with a midpoint call).

    ``init(..., timesteps=[...])``: custom integer timesteps (σ's interpolated), as
    diffusers' ``set_timesteps(timesteps=...)``; ``init(..., mu=μ)`` with
    ``use_dynamic_shifting``: flow levels shifted by s = e^μ (diffusers sets flow_shift).
    With ``algorithm_type="dpmsolver"`` and ``thresholding``, x̂_0 is formed at the call's
    own level and ε̂ re-derived from it; diffusers fails there (it indexes its tables with a
    missing timestep).
    """

    DIFFUSERS_CLASS = "DPMSolverSinglestepScheduler"
    FAMILY = families.SOLVERS
    CLI_NAME = "dpm++2s"
    PREDICTION_TYPES = predictions.FLOW_PREDICTION_TYPES
    ORDER = 2

    prediction_type: str = flow_prediction_type_option()
    solver_order: int = option(
        2, "the order k of each singlestep group (1, 2 or 3; 3 for unconditional sampling, 2 "
        "for guided)", "solver_order", low=1, high=3,
    )  # fmt: skip
    algorithm_type: str = option(
        "dpmsolver++", "dpmsolver++ (the data-prediction form, Lu et al. 2022b), dpmsolver "
        "(the noise-prediction form, Lu et al. 2022a) or sde-dpmsolver++ (the reverse SDE "
        "in the data-prediction form: fresh noise every call)", "algorithm_type",
        choices=ALGORITHM_TYPES,
    )  # fmt: skip
    solver_type: str = option(
        "midpoint", "the weight of D_1 at second order: midpoint (c_0 / 2) or heun (the "
        "Taylor weight); at third order, midpoint uses D1_1 alone, heun D_1 and D_2",
        "solver_type", choices=SOLVER_TYPES,
    )  # fmt: skip
    lower_order_final: bool = option(
        False, "cut the last group short so that it ends on the last call (forced when N is "
        "not a multiple of solver_order or the final σ is 0)", "lower_order_final",
    )  # fmt: skip
    use_flow_sigmas: bool = with_default(SolverOptions, "use_flow_sigmas", False)
    flow_shift: float = with_default(SolverOptions, "flow_shift", 1.0)
    final_sigmas_type: str = with_default(SolverOptions, "final_sigmas_type", "zero")
    lambda_min_clipped: float = with_default(SolverOptions, "lambda_min_clipped", -float("inf"))
    variance_type: str | None = with_default(SolverOptions, "variance_type", None)
    use_dynamic_shifting: bool = with_default(SolverOptions, "use_dynamic_shifting", False)
    time_shift_type: str = with_default(SolverOptions, "time_shift_type", "exponential")
    sde_third_order: str = sde_third_order_option()

    def _check(self) -> None:
        owner = type(self).__name__
        self.check_flow_grid()
        if self.prediction_type == predictions.FLOW and self.algorithm_type not in DATA_FORMS:
            raise ValueError(f"{owner}: prediction_type='flow' needs a data-prediction "
                             f"algorithm_type {DATA_FORMS}")  # fmt: skip
        if self.algorithm_type not in DATA_FORMS and self.final_sigmas_type == "zero":
            raise ValueError(
                f"{owner}: algorithm_type={self.algorithm_type!r} cannot step to σ = 0 (its ε "
                "form has no x̂_0 there); use final_sigmas_type='sigma_min'"
            )

    @property
    def deterministic(self) -> bool:
        return self.algorithm_type != "sde-dpmsolver++"

    # -- the grid ------------------------------------------------------------------------

    def _grid(
        self, num_steps: int | None, timesteps: Any = None, mu: float | None = None
    ) -> solver_grid.SolverGrid:
        """diffusers' ``set_timesteps``: timesteps and N + 1 levels (float32 values)."""
        kind = "flow" if self.use_flow_sigmas else self.sigma_kind
        shift = self.flow_shift_of(mu)
        if timesteps is not None:
            timesteps = custom_timesteps(timesteps, self.num_train_steps)
            if kind is not None:
                raise ValueError(f"custom timesteps= cannot be combined with {kind} sigmas")
        return solver_grid.solver_grid(
            self.alphas_cumprod, num_steps, spacing="linspace",
            sigma_schedule=kind, final_sigma=self.final_sigmas_type,
            lambda_min_clipped=self.lambda_min_clipped, round_karras=True,
            flow_shift=shift, flow_base="ramp", timesteps=timesteps,
        )  # fmt: skip

    def orders(self, num_steps: int | None, **init_options: Any) -> list:
        """The order of each model call of an N-step loop (diffusers' ``get_order_list``)."""
        n = len(self._grid(num_steps, **init_options).timesteps)
        return self._orders(n)

    def _orders(self, n: int) -> list:
        zero = self.final_sigmas_type == "zero"
        lower = self.lower_order_final or n % self.solver_order != 0 or zero
        return order_list(n, self.solver_order, lower, zero)

    # -- the table -----------------------------------------------------------------------

    def tableau(
        self, num_steps: int | None, timesteps: Any = None, mu: Any = None, strength: float = 1.0
    ) -> Tableau:
        grid = self._grid(num_steps, timesteps, mu)
        n = len(grid.timesteps)
        cut = first_call(n, strength)  # image-to-image: calls before the cut never run
        sig = grid.sigmas
        alpha, sigma = solver_grid.alpha_sigma(sig, grid.flow)
        lam = solver_grid.half_log_snr(alpha, sigma)
        # diffusers' flow x̂_0 = x - σ v uses the grid's σ (σ_t itself on flow grids)
        level = sig[:n] if self.prediction_type == predictions.FLOW else sigma[:n]
        x0 = predictions.x0_from_alpha_sigma(self.prediction_type, alpha[:n], level)
        data = self.algorithm_type in DATA_FORMS
        # m of (1): x̂_0, or ε̂ (from the thresholded x̂_0 where x̂_0 is thresholded)
        if data:
            estimate = data_estimate(n)
        else:
            estimate = noise_estimate(
                self.prediction_type, alpha[:n], sigma[:n], from_x0=self.thresholding,
                direct_velocity=True,
            )  # fmt: skip
        # diffusers lowers a group's order where its first calls were not run (a cut)
        orders = [min(k, j - cut + 1) for j, k in enumerate(self._orders(n))]

        # call j steps from its group's first sample x_s (eq. 1): keep, origin s, weights
        keep, origin, rows, noise = np.zeros(n), np.arange(n), [{} for _ in range(n)], np.zeros(n)
        for j in range(cut, n):
            k = orders[j]
            s, t = j - k + 1, j + 1  # from the group's first call to the next level
            second = "taylor" if k == 3 or self.solver_type == "heun" else "midpoint"
            weights = dpm.data_prediction if data else dpm.noise_prediction
            kwargs = {}
            if self.algorithm_type == "sde-dpmsolver++":
                kwargs = {"stochastic": True, "sde_third": SDE_THIRD_ORDER[self.sde_third_order]}
            c = weights(alpha[s], sigma[s], alpha[t], sigma[t], second=second, **kwargs)
            keep[j], origin[j], noise[j] = c.x, s, c.noise
            h = lam[t] - lam[s]
            # D_0, D_1, D_2 as weights of m_s, m_{s+1}, m_{s+2} (eq. 2-3)
            d = np.zeros((3, k))
            d[0, 0] = 1.0
            if k == 2:
                inv_r0 = h / (lam[s + 1] - lam[s])
                d[1] = [-inv_r0, inv_r0]
            elif k == 3:
                r0, r1 = (lam[s + 2] - lam[s]) / h, (lam[s + 1] - lam[s]) / h
                d1_0 = np.array([-1.0, 1.0, 0.0]) / r1
                d1_1 = np.array([-1.0, 0.0, 1.0]) / r0
                if self.solver_type == "midpoint":
                    d[1] = d1_1
                else:
                    d[1] = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
                    d[2] = 2.0 * (d1_1 - d1_0) / (r0 - r1)
            used = 1 if k == 1 else 3 if k == 3 and self.solver_type == "heun" else 2
            for i, w in enumerate(np.array([c.d0, c.d1, c.d2][:used]) @ d[:used]):
                if w != 0.0:
                    rows[j][j - s - i] = float(w)  # m_{s+i}, j - s - i calls back
        tab = Tableau(
            timesteps=grid.timesteps,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update=exponential_multistep(keep, rows, estimate, origin=origin),
            noise=None if self.deterministic else noise,
            start=(float(alpha[0]), float(sigma[0])),
            init_noise_sigma=1.0,
        )
        return restarted_on_grid(tab, grid, cut)
