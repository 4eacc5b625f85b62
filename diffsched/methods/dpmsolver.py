"""Multistep DPM-Solver and DPM-Solver++: Lu, Zhou, Bao, Chen, Li & Zhu 2022a, "DPM-Solver:
A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps", and 2022b,
"DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models", as
diffusers' ``DPMSolverMultistepScheduler`` runs them (the sampler of "DPM++ 2M Karras").

The sample is x_t = α_t x_0 + σ_t ε: variance preserving, α = 1/sqrt(σ² + 1) and
σ_t = σ α for the variance-exploding level σ of the grid, or rectified flow
(``use_flow_sigmas``), α = 1 - σ and σ_t = σ. The model is called on x_t itself. The solver
steps in the half-log-SNR λ = log(α_t/σ_t) (Lu et al. 2022a, sec. 3.1), h = λ_t - λ_s from
call s to the next level t, through the exact solutions

    x_t = (α_t/α_s) x_s - α_t ∫_{λ_s}^{λ_t} e^{-λ} ε̂(λ) dλ    (DPM-Solver; 2022a, eq. 3.4)  (1)
    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x̂_0(λ) dλ    (DPM-Solver++; 2022b)         (2)

with the prediction m (ε̂ for (1), x̂_0 for (2), formed from the model output at the call's
level and, for x̂_0, optionally thresholded) expanded at λ_s (see
:mod:`diffsched.methods._dpm_solver_coefficients` for the weights):

    order 1 (DDIM):      x_t = c_x x_s + c_0 m_0                                            (3)
    order 2 (2M):        x_t = c_x x_s + c_0 D_0 + c_1 D_1,   D_1 = (h/h_0)(m_0 - m_1)      (4)
    order 3 (3M):        x_t = c_x x_s + c_0 D_0 + c_1 D_1 + c_2 D_2                         (5)

m_1, m_2 the predictions of the one and two calls before, h_0, h_1 their λ steps; for (2),
c_x = σ_t/σ_s, c_0 = α_t (1 - e^{-h}), c_1 = c_0 / 2 (``midpoint``: DPM-Solver++(2M), 2022b,
Alg. 2) or α_t h φ_2(-h) (``heun``: the Taylor term), c_2 = α_t h φ_3(-h); for (1),
c_x = α_t/α_s, c_0 = -σ_t (e^h - 1), c_1 = c_0/2 or -σ_t h φ_2(h), c_2 = -σ_t h φ_3(h).
``solver_type`` chooses c_1 of (4) only: the third-order step (5) always takes the Taylor
c_1, and D_1, D_2 of (5) are the divided differences of the last three predictions
(:func:`~diffsched.methods._dpm_solver_coefficients.multistep_differences`). Its c_2 is half
the Taylor term's, as in Lu's reference code and diffusers (so (5) is exact for quadratic
predictions only up to that term; DEIS, ``DEIS``, takes the full term).

The stochastic variants (``sde-dpmsolver++``, ``sde-dpmsolver``) integrate the reverse SDE's
linear part exactly and add one fresh noise per call:

    x_t = (σ_t/σ_s) e^{-h} x_s + α_t (1 - e^{-2h}) (D_0 + ...) + σ_t sqrt(1 - e^{-2h}) z     (6)
    x_t = (α_t/α_s) x_s - 2 σ_t (e^h - 1) (D_0 + ...) + σ_t sqrt(e^{2h} - 1) z                (7)

**Order at each call** (of N): 1 at the first call, at most 2 at the second (the multistep
warm-up); at the last call 1 when ``euler_at_final``, when ``lower_order_final`` and
N < 15, or when the final level is σ = 0 (``final_sigmas_type="zero"``: h = ∞, and the step
lands on x̂_0); at the second-to-last at most 2 when ``lower_order_final`` and N < 15. Each
order is one row of the table: the multistep history is the x̂_0 (or ε̂) of the last
two calls, which the engine keeps.

**Finite where diffusers is not.** A repeated level (h = 0: a re-gridded σ grid ending at
the training σ_0 with ``final_sigmas_type="sigma_min"``, or the inverse's trailing grid)
makes diffusers' second-order ``heun`` and third-order steps 0/0 = NaN (r_0 = h_0/h = ∞);
here the weights are written with h/h_0 and φ's, and the step is the identity, as it should.
diffusers has no third-order ``sde-dpmsolver`` step (an UnboundLocalError); here it is (7)
with the D_2 weight -2 σ_t h φ_3(h).

**The third-order sde-dpmsolver++ weight** (``sde_third_order``). diffusers weighs D_2 of
(6) by α_t ((1 - e^{-2h} - 2h)/(2h)² - 1/2) = -α_t (φ_2(-2h) + 1/2) ≈ -α_t: the sign of
the 1/2 is slipped. Carrying the deterministic step's convention (c_2 = α_t h φ_3(-h), Lu's
reference code and diffusers' ODE) to (6), whose integrals are 2 α_t h^{n+1} φ_{n+1}(-2h),
gives α_t (1/2 - φ_2(-2h)) = 2 α_t h φ_3(-2h) ≈ α_t h/3, consistent with its other weights;
diffusers' O(1) weight on D_2 = O(h²) leaves an O(h²) error per step. Measured
(``tests/test_sde_third_order.py``: the exact law of the final sample on an exact Gaussian
model, 2-Wasserstein error against the exact law, linspace grid, N = 40, 80, 160, 320):
diffusers' weight 9.0e-1, 3.6e-1, 4.1e-1, 3.1e-1 (no convergence); the corrected one
5.2e-1, 1.0e-1, 1.0e-2, 1.7e-3 (orders 2.3, 3.4, 2.6); with Karras levels (N = 20 to 160)
1.4e-1, 6.0e-2, 2.3e-2, 9.4e-3 (order 1.2-1.4) against 7.3e-2, 6.2e-3, 1.6e-3, 4.1e-4;
the second-order step (2M SDE) gives 3.8e-2, 1.0e-2, 2.5e-3 at N = 80, 160, 320. The full
Taylor weight (twice the corrected one) converges alike, with larger errors here. So:
``sde_third_order="diffusers"`` (the default, so that diffusers configs give diffusers'
samples) keeps the slip; ``"corrected"`` is the weight to use.

The grid is :func:`diffsched.schedules.solver_grid.solver_grid` with this class's settings
(float32 levels, as diffusers stores them): λ clipping, Karras and Lu timesteps rounded
except for the cosine schedule, the final level 0 or the training σ_0 (also on flow grids,
as diffusers), custom integer ``timesteps=``, and the flow shift e^μ of ``init(mu=)``.
``prediction_type="flow"`` forms x̂_0 = x - σ v with the grid's σ (σ_t on flow grids), as
diffusers. Each row of (3)-(7) is the kit's exponential step
(:func:`diffsched.methods.kit.exponential_multistep`, with m formed by its
:func:`~diffsched.methods.kit.noise_estimate` / ``data_estimate``).
The inverse (``DPMSolverMultistepInverse``) runs (3)-(5) over the ascending grid
(h < 0), from a clean sample up to the top of the spaced range.
"""

from __future__ import annotations

import math
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
    Spacing,
    VarianceChannels,
    X0Processing,
    ZeroTerminalSNR,
    document,
)
from ..schedules import discrete, shifts, solver_grid
from . import _dpm_solver_coefficients as coefficients
from ._img2img import first_call, restarted
from .kit import data_estimate, exponential_multistep, noise_estimate

ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
# the D_2 weight of third-order sde-dpmsolver++ steps -> the coefficient module's name
SDE_THIRD_ORDER = {"diffusers": "diffusers", "corrected": "reference"}


def sde_third_order_option() -> Any:
    """``sde_third_order``: diffusers' D_2 weight of third-order ``sde-dpmsolver++`` steps
    (a sign slip, kept for parity) or the corrected one (the module docstring)."""
    return option(
        "diffusers",
        "the D_2 weight of third-order sde-dpmsolver++ steps: diffusers (its value, "
        "-α_t (φ_2(-2h) + 1/2) ≈ -α_t, a sign slip: first order at best) or corrected "
        "(α_t (1/2 - φ_2(-2h)) = 2 α_t h φ_3(-2h), the weight of the deterministic third-order "
        "step carried to the SDE; third order in a weak-error measurement, see the module "
        "docstring); ours only, so diffusers configs load as diffusers",
        None, choices=tuple(SDE_THIRD_ORDER),
    )  # fmt: skip


SOLVER_TYPES = ("midpoint", "heun")


@dataclass(frozen=True, kw_only=True)
class Thresholding:
    """Dynamic thresholding of x̂_0 (Saharia et al. 2022), without clipping: the VP solvers'
    option group (their diffusers classes have no ``clip_sample``)."""

    thresholding: bool = with_default(X0Processing, "thresholding", False)
    dynamic_thresholding_ratio: float = with_default(
        X0Processing, "dynamic_thresholding_ratio", 0.995
    )
    sample_max_value: float = with_default(X0Processing, "sample_max_value", 1.0)

    @property
    def processes_x0(self) -> bool:
        return self.thresholding

    def _process(self, x0: Any, owned: bool) -> Any:
        return predictions.dynamic_threshold(
            x0, self.dynamic_thresholding_ratio, self.sample_max_value
        )


def flow_prediction_type_option() -> Any:
    """``prediction_type`` with the rectified-flow velocity as a fourth choice."""
    return option(
        "noise",
        "what the model predicts: noise (ε), angular_velocity (v = α ε - σ_t x_0), sample "
        "(x_0) or flow (v = ε - x_0 of x = (1 - σ) x_0 + σ ε, diffusers' flow_prediction: "
        "x̂_0 = x - σ v with the grid's σ)",
        "prediction_type",
        choices=predictions.FLOW_PREDICTION_TYPES,
        diffusers_values=predictions.DIFFUSERS_PREDICTION_TYPES,
    )


def custom_timesteps(values: Any, num_train_steps: int) -> np.ndarray:
    """``timesteps=`` as diffusers takes them: integers, in [0, T), descending. A value
    with a fraction is refused (diffusers truncates it: 999.5 ran as 999)."""
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"timesteps must be a list of integers, got: {values!r}") from None
    if arr.size < 1 or not np.all(np.isfinite(arr)):
        raise ValueError(f"timesteps must be a non-empty list of integers, got: {values!r}")
    fractional = arr[arr != np.floor(arr)]
    if fractional.size:
        raise ValueError(
            f"timesteps must be integers (the model's training timesteps), got "
            f"{fractional[0]:g} among {arr.tolist()}"
        )
    ts = arr.astype(np.int64)
    if ts.min() < 0 or ts.max() >= num_train_steps or np.any(np.diff(ts) >= 0):
        raise ValueError(
            f"timesteps must be strictly decreasing integers in [0, {num_train_steps - 1}], "
            f"got: {ts.tolist()}"
        )
    return ts


class SolverGridLevels:
    """For a class whose ``_grid(num_steps, **init_options)`` is diffusers' ``set_timesteps``
    grid (:class:`~diffsched.schedules.solver_grid.SolverGrid`): its noise levels, the first
    call's of an image-to-image loop (``strength``) included, and its flow shift."""

    def flow_shift_of(self, mu: Any) -> float:
        """The static ``flow_shift``, or e^μ of ``init(..., mu=μ)`` with
        ``use_dynamic_shifting`` (diffusers sets flow_shift = e^μ)."""
        dynamic = self.use_dynamic_shifting  # type: ignore[attr-defined]
        mu = shifts.checked_mu(mu, dynamic=dynamic, who=type(self).__name__)
        return self.flow_shift if mu is None else math.exp(mu)  # type: ignore[attr-defined]

    def noise_levels(self, num_steps: int | None, **init_options: Any) -> tuple[float, float]:
        strength = init_options.pop("strength", 1.0)
        grid = self._grid(num_steps, **init_options)  # type: ignore[attr-defined]
        cut = first_call(len(grid.timesteps), strength)
        alpha, sigma = solver_grid.alpha_sigma(grid.sigmas[[cut, -1]], grid.flow)
        abar = alpha**2 / (alpha**2 + sigma**2)  # the variance-preserving level of (α, σ_t)
        return float(abar[0]), float(abar[1])


@dataclass(frozen=True, kw_only=True)
class _DPMSolverBase(
    VarianceChannels, Thresholding, SolverGridLevels, SigmaGrid, Spacing, Scheduler
):
    """The options of diffusers' DPM-Solver multistep classes (forward and inverse)."""

    PREDICTION_TYPES = predictions.FLOW_PREDICTION_TYPES
    ORDER = 2

    prediction_type: str = flow_prediction_type_option()
    solver_order: int = option(
        2, "the multistep order: 1 (DDIM), 2 (guided sampling) or 3 (unconditional)",
        "solver_order", low=1, high=3,
    )  # fmt: skip
    algorithm_type: str = option(
        "dpmsolver++",
        "dpmsolver++ (the x̂_0 form, eq. 2; Lu et al. 2022b), dpmsolver (the ε form, eq. 1; "
        "2022a), or their stochastic variants sde-dpmsolver++ / sde-dpmsolver (eq. 6-7)",
        "algorithm_type", choices=ALGORITHM_TYPES,
    )  # fmt: skip
    solver_type: str = option(
        "midpoint", "the weight c_1 of the second-order term: midpoint (c_0 / 2, Lu et al. "
        "2022b, Alg. 2) or heun (the Taylor term, h φ_2)", "solver_type",
        choices=SOLVER_TYPES,
    )  # fmt: skip
    lower_order_final: bool = option(
        True, "with fewer than 15 steps, first order at the last call and at most second "
        "order at the one before", "lower_order_final",
    )  # fmt: skip
    euler_at_final: bool = option(
        False, "first order (Euler / DDIM) at the last call, whatever the number of steps",
        "euler_at_final",
    )  # fmt: skip
    use_flow_sigmas: bool = with_default(SolverOptions, "use_flow_sigmas", False)
    flow_shift: float = with_default(SolverOptions, "flow_shift", 1.0)
    lambda_min_clipped: float = with_default(SolverOptions, "lambda_min_clipped", -float("inf"))
    variance_type: str | None = with_default(SolverOptions, "variance_type", None)
    timestep_spacing: str = with_default(Spacing, "timestep_spacing", "linspace")

    @property
    def deterministic(self) -> bool:
        return not self.algorithm_type.startswith("sde")

    @property
    def data_prediction(self) -> bool:
        """Whether the solver integrates x̂_0 (DPM-Solver++) rather than ε̂ (DPM-Solver)."""
        return self.algorithm_type.endswith("++")

    @property
    def processes_x0(self) -> bool:
        return self.thresholding

    def _check_solver(self, *, use_lu_lambdas: bool) -> None:
        """The checks of both classes (``use_lu_lambdas``: the forward class's option, False
        for the inverse, which has none)."""
        owner = type(self).__name__
        chosen = {
            "use_karras_sigmas": self.use_karras_sigmas,
            "use_exponential_sigmas": self.use_exponential_sigmas,
            "use_beta_sigmas": self.use_beta_sigmas,
            "use_lu_lambdas": use_lu_lambdas,
        }
        kinds = [name for name, on in chosen.items() if on]
        if self.use_flow_sigmas:
            kinds.append("use_flow_sigmas")
        if self.sigma_schedule is not None:
            kinds.append(f"sigma_schedule={self.sigma_schedule!r}")
        if len(kinds) > 1:
            raise ValueError(
                f"{owner}: at most one of use_karras_sigmas, use_exponential_sigmas, "
                "use_beta_sigmas, use_lu_lambdas, use_flow_sigmas, sigma_schedule may be set, "
                "got: " + ", ".join(kinds)
            )
        if not self.data_prediction and self.prediction_type == predictions.FLOW:
            raise ValueError(
                f"{owner} with prediction_type='flow' needs algorithm_type 'dpmsolver++' or "
                f"'sde-dpmsolver++', got: {self.algorithm_type!r} (as diffusers)"
            )

    def _grid_kind(self, *, use_lu_lambdas: bool) -> str | None:
        kind = self.sigma_kind
        if kind is None and use_lu_lambdas:
            kind = "lu"
        if kind is None and self.use_flow_sigmas:
            kind = "flow"
        return kind

    # -- the table -------------------------------------------------------------------------

    def _orders(self, n: int, sig: np.ndarray, begin: int, *, to_zero: bool) -> list[int]:
        """The order of each of the n calls (module docstring, "Order at each call"), the
        warm-up starting at call ``begin``; ``to_zero``: ``final_sigmas_type="zero"``."""
        return multistep_orders(
            n, self.solver_order, sig, lower_order_final=self.lower_order_final,
            last_first=self.euler_at_final or to_zero, begin=begin,
        )  # fmt: skip

    def _table(
        self, grid: solver_grid.SolverGrid, strength: float, *, sde_third: str, to_zero: bool
    ) -> Tableau:
        cut = first_call(len(grid.timesteps), strength)
        tab = multistep_tableau(
            grid, self._orders(len(grid.timesteps), grid.sigmas, cut, to_zero=to_zero),
            prediction_type=self.prediction_type, data=self.data_prediction,
            second="taylor" if self.solver_type == "heun" else "midpoint",
            stochastic=not self.deterministic, processes_x0=self.processes_x0,
            sde_third=SDE_THIRD_ORDER[sde_third],
        )  # fmt: skip
        return restarted_on_grid(tab, grid, cut)


def restarted_on_grid(tab: Tableau, grid: solver_grid.SolverGrid, cut: int) -> Tableau:
    """``tab``'s calls from ``cut`` on (image-to-image), the loop starting at level ``cut``
    of ``grid``: x = α x_0 + σ_t ε there."""
    if cut == 0:
        return tab
    alpha, sigma = solver_grid.alpha_sigma(grid.sigmas[cut : cut + 1], grid.flow)
    return restarted(tab, cut, (float(alpha[0]), float(sigma[0])))


def multistep_orders(
    n: int,
    solver_order: int,
    sigmas: np.ndarray,
    *,
    lower_order_final: bool,
    last_first: bool = False,
    begin: int = 0,
) -> list[int]:
    """The order of each of n calls: the warm-up (1, 2, ...) from call ``begin`` (where an
    image-to-image loop starts: diffusers restarts the warm-up at a pipeline's begin index),
    with ``lower_order_final`` and n < 15 first order at the last call and at most second at
    the one before, first order at the last call when ``last_first``, and first order into a
    final level σ = 0 (h = ∞)."""
    second_last_second = lower_order_final and n < 15
    last_first = last_first or second_last_second
    out = []
    for i in range(n):
        k = i - begin  # calls made before this one
        if solver_order == 1 or k < 1 or (i == n - 1 and last_first) or sigmas[i + 1] == 0:
            out.append(1)
        elif solver_order == 2 or k < 2 or (i == n - 2 and second_last_second):
            out.append(2)
        else:
            out.append(3)
    return out


def multistep_rows(
    alpha: np.ndarray,
    sigma: np.ndarray,
    lam: np.ndarray,
    orders: list[int],
    *,
    data: bool,
    second: str,
    third: str,
    stochastic: bool,
    sde_third: str,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(c_x, the weights of m_i, ..., m_{i-p+1}, the noise c_z) of eq. 3-7 at each call i,
    p = ``orders[i]``, from the levels (α, σ_t, λ) of the calls and the final one; the rows
    of the kit's :func:`~diffsched.methods.kit.exponential_multistep`."""
    form = coefficients.data_prediction if data else coefficients.noise_prediction
    n = len(orders)
    keep, rows, noise = np.zeros(n), [], np.zeros(n)
    for i in range(n):
        p = orders[i]
        c = form(
            alpha[i], sigma[i], alpha[i + 1], sigma[i + 1],
            second="taylor" if p == 3 else second, third=third, stochastic=stochastic,
            **({"sde_third": sde_third} if data else {}),
        )  # fmt: skip
        h = lam[i + 1] - lam[i]
        h0 = lam[i] - lam[i - 1] if p >= 2 else math.nan
        h1 = lam[i - 1] - lam[i - 2] if p >= 3 else math.nan
        keep[i], noise[i] = c.x, c.noise
        w = coefficients.multistep_differences(h, h0, h1)
        rows.append(coefficients.model_weights(c, w, p)[:p])  # m_i, ..., m_{i-p+1}
    return keep, rows, noise


def multistep_tableau(
    grid: solver_grid.SolverGrid,
    orders: list[int],
    *,
    prediction_type: str,
    data: bool,
    second: str = "midpoint",
    third: str = "reference",
    stochastic: bool = False,
    processes_x0: bool = False,
    sde_third: str = "diffusers",
    direct_velocity: bool = True,
) -> Tableau:
    """The tableau of eq. 3-7 over ``grid`` with the given order at each call.

    ``data``: the x̂_0 form (2) (else the ε form (1), ε̂ formed from x̂_0 at the call's
    level, after thresholding when ``processes_x0``); ``second`` / ``third``: the weights
    c_1 (of second-order steps) and c_2 (see :mod:`._dpm_solver_coefficients`); ``sde_third``
    the c_2 of the stochastic x̂_0 form (eq. 6): ``diffusers``, ``reference`` or ``taylor``;
    ``direct_velocity``: the ε form's ε̂ of a v model (:func:`~.kit.noise_estimate`).
    """
    ts, sig = grid.timesteps, grid.sigmas
    n = len(ts)
    alpha, sigma = solver_grid.alpha_sigma(sig, grid.flow)
    lam = solver_grid.half_log_snr(alpha, sigma)
    # diffusers' flow x̂_0 = x - σ v uses the grid's σ (σ_t itself on flow grids), and so
    # does its ε̂ = (x - α x̂_0) / σ_t formed from it (DEIS: the ε form takes flow models)
    level = sig[:n] if prediction_type == predictions.FLOW else sigma[:n]
    x0 = predictions.x0_from_alpha_sigma(prediction_type, alpha[:n], level)
    # m of (3)-(7): x̂_0, or ε̂ (from the thresholded x̂_0 when ``processes_x0``)
    if data:
        estimate = data_estimate(n)
    else:
        estimate = noise_estimate(
            prediction_type, alpha[:n], level, from_x0=processes_x0,
            direct_velocity=direct_velocity,
        )  # fmt: skip
    keep, rows, noise = multistep_rows(
        alpha, sigma, lam, orders, data=data, second=second, third=third,
        stochastic=stochastic, sde_third=sde_third,
    )  # fmt: skip
    update = exponential_multistep(keep, rows, estimate)
    return Tableau(
        timesteps=ts,
        x0_sample=x0.sample_coef,
        x0_output=x0.prediction_coef,
        update=update,
        noise=noise if stochastic else None,
        start=(float(alpha[0]), float(sigma[0])),
        init_noise_sigma=1.0,
    )


@document
@dataclass(frozen=True, kw_only=True)
class DPMSolverMultistep(BrownianNoise, ZeroTerminalSNR, _DPMSolverBase):
    """Multistep DPM-Solver / DPM-Solver++ (Lu et al. 2022a, 2022b): "DPM++ 2M".

    Order ``solver_order`` (2 by default; 1, 2 during the warm-up, lower at the end, see the
    module docstring); one model call per step; deterministic for ``dpmsolver++`` and
    ``dpmsolver``, stochastic for ``sde-dpmsolver++`` and ``sde-dpmsolver`` (one noise per
    call). diffusers: ``DPMSolverMultistepScheduler`` (with ``use_karras_sigmas=True``,
    "DPM++ 2M Karras"; with ``sde-dpmsolver++``, "DPM++ 2M SDE"). Not to be confused with
    DPM-Solver (``algorithm_type="dpmsolver"``, Lu et al. 2022a), which integrates the noise
    prediction (eq. 1) where DPM-Solver++ integrates x̂_0 (eq. 2, the one to use with
    guidance and thresholding); nor with singlestep DPM-Solver (``DPMSolverSinglestep``),
    whose higher orders call the model at intermediate levels of each step instead of
    reusing earlier calls; nor with k-diffusion's DPM2 (``DPM2``).

    ``init(..., timesteps=[...])``: custom integer timesteps (descending), as diffusers'
    ``set_timesteps(timesteps=...)``. ``init(..., mu=μ)``: the flow shift becomes e^μ, as
    diffusers' ``set_timesteps(mu=...)`` (needs ``use_dynamic_shifting``).
    ``init(None, template, sigmas=[σ_0, ..., σ_N])``: an explicit list of levels, the final
    one included (variance-exploding σ's, or flow σ's with ``use_flow_sigmas``; float32
    values; not in diffusers): what ``ds.comfy.sampler_function`` runs ComfyUI's σ's with.
    ``init(..., strength=s)``: image-to-image over the last floor(N s) calls of the N-step
    grid, the warm-up restarted there (orders 1, 2, ... from the first call run; the
    lower-order final steps still counted on the whole grid), as diffusers runs it after a
    pipeline's ``set_begin_index``.

    Karras / Lu / exponential / beta levels span the whole training range [σ_0, σ_{T-1}]
    (not the spaced one). Third-order ``sde-dpmsolver++`` keeps diffusers' D_2 weight, a
    sign slip that stops its convergence, unless ``sde_third_order="corrected"`` (module
    docstring, with the measurement); third-order ``sde-dpmsolver`` (which diffusers cannot
    run) uses eq. 7's.
    """

    DIFFUSERS_CLASS = "DPMSolverMultistepScheduler"
    FAMILY = families.SOLVERS
    CLI_NAME = "dpm++2m"
    # tuned as diffusers' form takes a custom grid: integer training timesteps, at which the
    # model is called exactly (sigmas= is the ComfyUI interop's list)
    TUNED_LEVELS = ("timesteps", "sigmas")

    use_lu_lambdas: bool = option(
        False, "levels evenly spaced in λ over the training range (Lu et al. 2022a, "
        "sec. 3.3, uniform logSNR), timesteps rounded", "use_lu_lambdas",
    )  # fmt: skip
    final_sigmas_type: str = with_default(SolverOptions, "final_sigmas_type", "zero")
    use_dynamic_shifting: bool = with_default(SolverOptions, "use_dynamic_shifting", False)
    time_shift_type: str = with_default(SolverOptions, "time_shift_type", "exponential")
    sde_third_order: str = sde_third_order_option()

    def _check(self) -> None:
        self._check_solver(use_lu_lambdas=self.use_lu_lambdas)
        if not self.data_prediction and self.final_sigmas_type == "zero":
            raise ValueError(
                f"DPMSolverMultistep option final_sigmas_type='zero' needs algorithm_type "
                f"'dpmsolver++' or 'sde-dpmsolver++' (the ε form cannot step to σ = 0), got: "
                f"{self.algorithm_type!r}; use final_sigmas_type='sigma_min'"
            )

    def _grid(
        self, num_steps: int | None, timesteps: Any = None, mu: Any = None, sigmas: Any = None
    ) -> solver_grid.SolverGrid:
        """diffusers' ``set_timesteps``: timesteps and N + 1 levels (float32 values), or the
        explicit list ``sigmas=`` (not in diffusers), which replaces the grid options' levels."""
        if sigmas is not None:
            if timesteps is not None or mu is not None:
                raise ValueError("pass at most one of sigmas=, timesteps= and mu=")
            return solver_grid.custom_grid(
                self._training_alphas_cumprod(), sigmas, flow=self.use_flow_sigmas
            )
        kind = self._grid_kind(use_lu_lambdas=self.use_lu_lambdas)
        shift = self.flow_shift_of(mu)
        if timesteps is not None:
            if kind is not None:
                raise ValueError(f"timesteps= cannot be combined with {kind} levels")
            timesteps = custom_timesteps(timesteps, self.num_train_steps)
        return solver_grid.solver_grid(
            self._training_alphas_cumprod(), num_steps,
            spacing=self.timestep_spacing, offset=self.timesteps_offset,
            sigma_schedule=kind, final_sigma=self.final_sigmas_type,
            lambda_min_clipped=self.lambda_min_clipped,
            round_karras=self.beta_schedule != "squared_cosine",
            flow_shift=shift, timesteps=timesteps,
        )  # fmt: skip

    def _training_alphas_cumprod(self) -> np.ndarray:
        """ᾱ of the training steps, zero-SNR rescaled where asked (the grids' table)."""
        return discrete.training_alphas_cumprod(
            self.alphas_cumprod, zero_terminal_snr=self.rescale_betas_zero_snr
        )

    def tableau(
        self, num_steps: int | None, timesteps: Any = None, mu: Any = None, strength: float = 1.0,
        sigmas: Any = None,
    ) -> Tableau:  # fmt: skip
        return self._table(
            self._grid(num_steps, timesteps, mu, sigmas), strength,
            sde_third=self.sde_third_order, to_zero=self.final_sigmas_type == "zero",
        )  # fmt: skip


@document
@dataclass(frozen=True, kw_only=True)
class DPMSolverMultistepInverse(_DPMSolverBase):
    """Multistep DPM-Solver / DPM-Solver++ run from data to noise (DPM-Solver inversion).

    Order ``solver_order`` (as ``DPMSolverMultistep``); one model call per step;
    deterministic. diffusers: ``DPMSolverMultistepInverseScheduler``. Not to be confused
    with ``DPMSolverMultistep``, which runs the same steps (eq. 3-5) from noise to data: here
    the levels ascend, h = λ_t - λ_s < 0, and the loop starts from a clean sample (the first
    call is at the lowest level of the grid), ending at the top of the spaced range (σ at
    ``last - 1``) or, for re-gridded σ's, at a repeat of the last level (a step that moves
    nothing but the history). Nor with DDIM inversion (``DDIMInverse``), its first order.

    The grid: the N + 1-point spacings ascending without their top point (trailing: the
    forward grid's points), or Karras / exponential / beta levels from the training σ_0 up
    to σ_{T-1} (:func:`~diffsched.schedules.solver_grid.solver_grid` with ``reverse``).
    diffusers drops repeated timesteps but not their levels, so that after a repeat every
    call reads the level of the call before; here a repeated timestep is dropped with its
    level. (Exponential and beta levels are kept whole, as diffusers keeps them: their
    fractional timesteps never repeat, though two may truncate to one integer.) The
    stochastic variants are rejected: their noise variance σ_t² (1 - e^{-2h}) is
    negative for h < 0 (diffusers returns NaN). So are flow levels (``use_flow_sigmas``):
    diffusers' inverse flow grid descends, sampling instead of inverting.
    """

    DIFFUSERS_CLASS = "DPMSolverMultistepInverseScheduler"
    FAMILY = families.SOLVERS
    CLI_NAME = "dpm++2m-inverse"

    def _check(self) -> None:
        self._check_solver(use_lu_lambdas=False)
        if not self.deterministic:
            raise ValueError(
                f"DPMSolverMultistepInverse option algorithm_type={self.algorithm_type!r}: the "
                "stochastic variants cannot run from data to noise (their noise variance "
                "σ_t² (1 - e^{-2h}) is negative for h < 0; diffusers returns NaN); use "
                "'dpmsolver++' or 'dpmsolver'"
            )
        if self.use_flow_sigmas:
            raise ValueError(
                "DPMSolverMultistepInverse option use_flow_sigmas=True is not supported: "
                "diffusers' inverse flow grid descends (it samples instead of inverting)"
            )

    def _grid(self, num_steps: int | None) -> solver_grid.SolverGrid:
        """diffusers' ``set_timesteps``: ascending timesteps and N + 1 levels (float32)."""
        grid = solver_grid.solver_grid(
            self.alphas_cumprod, num_steps,
            spacing=self.timestep_spacing, offset=self.timesteps_offset,
            sigma_schedule=self._grid_kind(use_lu_lambdas=False), final_sigma="last",
            lambda_min_clipped=self.lambda_min_clipped, reverse=True,
        )  # fmt: skip
        # diffusers drops a repeat of its timesteps before their cast to integers: the
        # rounded Karras / spaced ones, but the fractional t of exponential and beta levels
        # (distinct, each level kept, though two may truncate to one integer timestep)
        kind = self._grid_kind(use_lu_lambdas=False)
        key = grid.timesteps if kind in (None, "karras") else grid.sigmas[:-1]
        _, first = np.unique(key, return_index=True)
        keep = np.sort(first)
        if len(keep) < len(grid.timesteps):  # a repeated timestep goes with its level
            levels = np.append(grid.sigmas[keep], grid.sigmas[-1])
            grid = grid._replace(timesteps=grid.timesteps[keep], sigmas=levels)
        return grid

    def tableau(self, num_steps: int | None) -> Tableau:
        # the inverse ends at the top of the spaced range, never at σ = 0
        return self._table(self._grid(num_steps), 1.0, sde_third="diffusers", to_zero=False)
