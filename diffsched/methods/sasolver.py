"""SA-Solver: Xue, Yi, Luo, Zhang, Sun, Li & Ma 2023, "SA-Solver: Stochastic Adams Solver for
Fast Sampling of Diffusion Models".

The sample is x = α x_0 + σ ε (variance preserving, α² + σ² = 1, or rectified flow,
α = 1 - σ), and time is the half-log-SNR λ = log(α / σ) (Lu et al. 2022, "DPM-Solver",
sec. 3). The paper's family of reverse SDEs, indexed by τ >= 0 (τ = 0: the probability-flow
ODE; τ = 1: the reverse SDE of Song et al. 2021), has the exact solution from λ_s to λ_t,
h = λ_t - λ_s, in data-prediction form (x_θ: the model's x̂_0)

    x_t = (σ_t / σ_s) e^{-τ² h} x_s
          + (1 + τ²) σ_t ∫_{λ_s}^{λ_t} e^{-τ² (λ_t - λ)} e^{λ} x_θ(λ) dλ
          + σ_t sqrt(1 - e^{-2 τ² h}) z,                                          (1)

and in noise-prediction form (ε_θ: the model's ε̂)

    x_t = (α_t / α_s) x_s - (1 + τ²) α_t ∫_{λ_s}^{λ_t} e^{-λ} ε_θ(λ) dλ
          + τ σ_t sqrt(e^{2h} - 1) z.                                              (2)

Both integrals are, with c = 1 + τ² (data) or c = -1 (noise) and u = λ_t - λ,

    (1 + τ²) α_t ∫_0^h e^{-c u} M(λ_t - u) du   and   -(1 + τ²) σ_t ∫_0^h e^{-c u} M du.  (3)

Stochastic Adams methods replace M = x_θ or ε_θ by its Lagrange polynomial through the
model outputs M_j at the last levels λ_j, ℓ_k being the basis polynomials, so the weights

    W_k = ∫_0^h e^{-c u} ℓ_k(λ_t - u) du = h Σ_m q_{k,m} E_m(c h),
    E_m(x) = ∫_0^1 e^{-x s} s^m ds,                                               (4)

with q_{k,m} the coefficients of ℓ_k in s = u / h, are exact (no quadrature).

* **Predictor** (SA-Predictor, stochastic Adams-Bashforth) of order p, at call n: from
  the corrected sample x^c_n to λ_{n+1}, nodes λ_n, ..., λ_{n-p+1}, fresh noise z_n.
* **Corrector** (SA-Corrector, stochastic Adams-Moulton) of order q, at call n + 1: the
  same step from x^c_n with the same z_n, nodes λ_{n+1}, ..., λ_{n+2-q}: it includes the
  model output M_{n+1} of x_{n+1}, the predictor's result, and replaces x_{n+1} by x^c_{n+1}
  before the next prediction. The model never sees x^c: it is called on x_{n+1}.

Because the corrector repeats the predictor's step from the same x^c_n with the same σ's,
τ and z_n, only the gradient parts differ, and

    x^c_{n+1} = x_{n+1} + Σ_k C_{n,k} M_{n+1-k} - Σ_k P_{n,k} M_{n-k}:                (5)

the noise of a call is never reused, and each call is one linear row: its predictor, on
the sample corrected by (5), in terms of this call's and earlier calls' M (the kit's
:func:`~diffsched.methods.kit.exponential_multistep`; M = ε̂ from its
:func:`~diffsched.methods.kit.noise_estimate`).

For order 2 in data-prediction form, diffusers (and the authors' code) integrate the slope
term of the linear Lagrange polynomial without the exponential weight, as UniPC's
B(h) = h variant does: the slope's weight h² (E_0 - E_1)(c h) becomes h² / 2,

    W_0 += Δ,  W_1 -= Δ,  Δ = h² (1/2 - E_0(c h) + E_1(c h)) / (λ_a - λ_b),        (6)

λ_a, λ_b the two nodes (λ_n, λ_{n-1} for the predictor; λ_{n+1}, λ_n = h for the
corrector).

Orders rise by one per call as outputs accumulate (p <= n + 1, q <= n + 2); with
``lower_order_final`` they fall again at the end (p <= N - n, q <= N - n + 1). The last
call's prediction is not corrected (there is no next model call).

τ is a function of the call's timestep: diffusers' default is τ = 1 for 200 <= t <= 800
and 0 elsewhere (stochastic in the middle of the trajectory only); a constant τ is the
option ``tau``. The grid is diffusers' for its variance-preserving multistep solvers
(:mod:`diffsched.schedules.solver_grid`), with the final level at the training σ_0, or a
repeat of the last level for re-gridded σ's (the last step then moves nothing).
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
    document,
)
from ..schedules import solver_grid as grids
from ._img2img import first_call, restarted
from .kit import data_estimate, exponential_multistep, noise_estimate

ALGORITHM_TYPES = ("data_prediction", "noise_prediction")
MAX_ORDER = 4  # diffusers' closed forms stop at Lagrange polynomials of degree 3
DEFAULT_TAU_RANGE = (200, 800)  # diffusers' default τ(t): 1 on this range, 0 elsewhere


class ConstantTau(float):
    """A constant τ as diffusers' ``tau_func``: a number (JSON-serialisable, hashable, read
    back as the number) that diffusers can also call with a timestep."""

    def __call__(self, timestep: Any) -> float:
        return float(self)


def _tau_from_diffusers(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise TypeError(
            f"tau_func must be null (diffusers' default) or a constant number, got: {value!r} "
            "(a function of the timestep cannot be read; pass tau=<constant>)"
        )
    value = float(value)
    if not value >= 0:
        raise ValueError(f"tau_func must be a number >= 0, got: {value!r}")
    return value


def exp_moments(x: float, m_max: int) -> np.ndarray:
    """E_m(x) = ∫_0^1 e^{-x s} s^m ds for m = 0..m_max (eq. 4), float64, any real x.

    A power series for |x| < 1.5 (no cancellation), else the recursion
    E_0 = (1 - e^{-x}) / x, E_m = (m E_{m-1} - e^{-x}) / x, stable there for m <= 3.
    """
    out = np.zeros(m_max + 1)
    if abs(x) < 1.5:
        for m in range(m_max + 1):  # Σ_j (-x)^j / (j! (m + j + 1))
            term, total = 1.0, 0.0
            for j in range(40):
                total += term / (m + j + 1)
                term *= -x / (j + 1)
            out[m] = total
        return out
    e = math.exp(-x)
    out[0] = -math.expm1(-x) / x
    for m in range(1, m_max + 1):
        out[m] = (m * out[m - 1] - e) / x
    return out


def step_weights(
    lam_to: float, lam_from: float, nodes: np.ndarray, c: float, unweighted_slope: bool
) -> np.ndarray:
    """W_k (eq. 4, with eq. 6 when ``unweighted_slope`` and two nodes) of the step from
    ``lam_from`` to ``lam_to`` for the Lagrange basis on ``nodes`` (newest first)."""
    h = lam_to - lam_from
    order = len(nodes)
    if h == 0:
        return np.zeros(order)  # a repeated final level: the step moves nothing
    s_nodes = (lam_to - np.asarray(nodes, dtype=np.float64)) / h  # nodes in s = u / h
    moments = exp_moments(c * h, order - 1)
    weights = np.zeros(order)
    for k in range(order):
        others = np.delete(s_nodes, k)
        basis = np.polynomial.polynomial.polyfromroots(others) / np.prod(s_nodes[k] - others)
        weights[k] = h * float(basis @ moments[: len(basis)])
    if unweighted_slope and order == 2:  # eq. 6
        delta = h * h * (0.5 - moments[0] + moments[1]) / (nodes[0] - nodes[1])
        weights += (delta, -delta)
    return weights


def _orders(num_calls: int, predictor: int, corrector: int, lower_final: bool, begin: int = 0):
    """(p_n, q_n) per call: the predictor's order at call n and the order of the corrector
    that call n + 1 applies to it (warm-up from call ``begin``: one more output per call)."""
    history = max(predictor, corrector - 1)
    p, q = np.zeros(num_calls, np.int64), np.zeros(num_calls, np.int64)
    for n in range(begin, num_calls):
        have = min(n - begin, history)  # outputs before this call (diffusers' lower_order_nums)
        p_cap = min(predictor, num_calls - n) if lower_final else predictor
        q_cap = min(corrector, num_calls - n + 1) if lower_final else corrector
        p[n], q[n] = min(p_cap, have + 1), min(q_cap, have + 2)
    return p, q


@document
@dataclass(frozen=True, kw_only=True)
class SASolver(VarianceChannels, BrownianNoise, SigmaGrid, Spacing, Scheduler):
    """Stochastic Adams solver, predictor-corrector (Xue et al. 2023, SA-Solver).

    Order ``predictor_order`` / ``corrector_order`` (2 / 2 by default; lower during the
    warm-up and, with ``lower_order_final``, at the end); one model call per step (the
    corrector reuses the next call's output); stochastic where τ > 0 (diffusers' default τ
    is 1 for timesteps 200..800), deterministic for ``tau=0``. diffusers:
    ``SASolverScheduler``. Not to be confused with UniPC (Zhao et al. 2023), a
    deterministic predictor-corrector on the probability-flow ODE, or DPM-Solver++ SDE,
    whose noise enters a single-step exponential integrator; SA-Solver's Adams weights
    (eq. 4) carry the e^{-τ² h} of the SDE family (eq. 1-2).

    ``tau``: diffusers' ``tau_func`` is a function of the timestep; here it is a number, a
    constant τ for every call, or None for diffusers' default function. In a diffusers
    config a constant is written as a number that diffusers can also call
    (:class:`ConstantTau`); a config holding another function cannot be read.

    The re-gridded σ's (``use_karras_sigmas``, ``use_exponential_sigmas``,
    ``use_beta_sigmas``) span the whole training range, whatever the spacing. With
    ``algorithm_type="noise_prediction"`` and ``thresholding``, ε̂ is re-derived from the
    thresholded x̂_0 at the call's own (α, σ); diffusers indexes its tables with a missing
    timestep there and fails.

    ``init(..., strength=s)``: image-to-image over the last floor(N s) calls of the N-step
    grid, the warm-up restarted there (no corrector at the first call run), as diffusers
    runs it after a pipeline's ``set_begin_index``; ``add_noise`` starts at that call's
    (α, σ) (diffusers' ``add_noise`` reads ᾱ at the timestep instead, which differs on the
    re-gridded σ's).
    """

    DIFFUSERS_CLASS = "SASolverScheduler"
    FAMILY = families.SOLVERS
    CLI_NAME = "sa-solver"
    PREDICTION_TYPES = predictions.FLOW_PREDICTION_TYPES
    ORDER = 2

    timestep_spacing: str = with_default(Spacing, "timestep_spacing", "linspace")
    predictor_order: int = option(
        2, "p: the number of model outputs the stochastic Adams-Bashforth predictor runs "
        "through (eq. 4)", "predictor_order", low=1, high=MAX_ORDER,
    )  # fmt: skip
    corrector_order: int = option(
        2, "q: the number of model outputs, this call's included, the stochastic "
        "Adams-Moulton corrector runs through (eq. 4-5)", "corrector_order", low=1,
        high=MAX_ORDER,
    )  # fmt: skip
    tau: float | None = option(
        None, "τ of the SDE family (eq. 1-2), constant over the loop: 0 is the "
        "probability-flow ODE (deterministic), 1 the reverse SDE; None: diffusers' default "
        "τ(t) = 1 for 200 <= t <= 800, else 0; at most 10 (beyond, the (1 + τ²) factors "
        "of eq. 1-3 only amplify the noise terms until float64 overflows)", "tau_func",
        nullable=True, low=0.0, high=10.0,
        to_diffusers=lambda v: None if v is None else ConstantTau(v),
        from_diffusers=_tau_from_diffusers,
    )  # fmt: skip
    thresholding: bool = with_default(X0Processing, "thresholding", False)
    dynamic_thresholding_ratio: float = with_default(
        X0Processing, "dynamic_thresholding_ratio", 0.995
    )
    sample_max_value: float = with_default(X0Processing, "sample_max_value", 1.0)
    algorithm_type: str = option(
        "data_prediction", "the form integrated: data_prediction (eq. 1, M = x̂_0) or "
        "noise_prediction (eq. 2, M = ε̂)", "algorithm_type", choices=ALGORITHM_TYPES,
    )  # fmt: skip
    lower_order_final: bool = option(
        True, "lower the orders over the last steps (p <= N - n, q <= N - n + 1)",
        "lower_order_final",
    )  # fmt: skip
    use_flow_sigmas: bool = with_default(SolverOptions, "use_flow_sigmas", False)
    flow_shift: float = with_default(SolverOptions, "flow_shift", 1.0)
    lambda_min_clipped: float = with_default(SolverOptions, "lambda_min_clipped", -float("inf"))
    variance_type: str | None = with_default(SolverOptions, "variance_type", None)

    def _check(self) -> None:
        owner = type(self).__name__
        self.check_flow_grid()
        if self.prediction_type == predictions.FLOW and not self.use_flow_sigmas:
            raise ValueError(f"{owner}: prediction_type='flow' needs use_flow_sigmas=True")
        if self.prediction_type == predictions.FLOW and self.algorithm_type != "data_prediction":
            raise ValueError(
                f"{owner}: prediction_type='flow' needs algorithm_type='data_prediction'"
            )

    @property
    def deterministic(self) -> bool:
        return self.tau == 0

    @property
    def processes_x0(self) -> bool:
        return self.thresholding

    def _process(self, x0: Any, owned: bool) -> Any:
        return predictions.dynamic_threshold(
            x0, self.dynamic_thresholding_ratio, self.sample_max_value
        )

    # -- the grid ------------------------------------------------------------------------

    def grid(self, num_steps: int) -> grids.SolverGrid:
        """The timesteps of the model calls and the N + 1 levels (diffusers' grid)."""
        if num_steps > self.num_train_steps:
            raise ValueError(
                f"num_steps must be at most num_train_steps={self.num_train_steps}, "
                f"got: {num_steps}"
            )
        kind = "flow" if self.use_flow_sigmas else self.sigma_kind
        return grids.solver_grid(
            self.alphas_cumprod, num_steps, spacing=self.timestep_spacing,
            offset=self.timesteps_offset, sigma_schedule=kind, final_sigma="sigma_min",
            converted_final_sigma="last", lambda_min_clipped=self.lambda_min_clipped,
            flow_shift=self.flow_shift,
        )  # fmt: skip

    def taus(self, timesteps: np.ndarray) -> np.ndarray:
        """τ of each model call: the constant ``tau``, or diffusers' default τ(t)."""
        if self.tau is not None:
            return np.full(len(timesteps), self.tau)
        lo, hi = DEFAULT_TAU_RANGE
        return np.where((timesteps >= lo) & (timesteps <= hi), 1.0, 0.0)

    def noise_levels(self, num_steps: int, strength: float = 1.0) -> tuple[float, float]:
        g = self.grid(num_steps)
        alpha, sigma = grids.alpha_sigma(g.sigmas, g.flow)
        snr = alpha**2 / (alpha**2 + sigma**2)  # ᾱ of the same signal-to-noise ratio
        return float(snr[first_call(num_steps, strength)]), float(snr[-1])

    # -- the tableau ---------------------------------------------------------------------

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        g = self.grid(num_steps)
        n_calls = len(g.timesteps)
        cut = first_call(n_calls, strength)  # image-to-image: the warm-up restarts here
        alpha, sigma = grids.alpha_sigma(g.sigmas, g.flow)
        lam = grids.half_log_snr(alpha, sigma)
        tau = self.taus(g.timesteps)
        data = self.algorithm_type == "data_prediction"
        p_ord, q_ord = _orders(
            n_calls, self.predictor_order, self.corrector_order, self.lower_order_final, cut
        )
        lags = max(self.predictor_order, self.corrector_order) + 1
        pred = np.zeros((n_calls, lags))  # P_{n,k} (eq. 3-4, 6): on M_{n-k}
        corr = np.zeros((n_calls, lags))  # C_{n,k}: on M_{n+1-k}, applied at call n + 1
        keep, fresh = np.zeros(n_calls), np.zeros(n_calls)
        for n in range(cut, n_calls):  # calls before the cut are never run
            t2, h = tau[n] ** 2, lam[n + 1] - lam[n]
            if data:  # eq. 1 and 3
                c, scale = 1.0 + t2, (1.0 + t2) * alpha[n + 1]
                keep[n] = math.exp(-t2 * h) * sigma[n + 1] / sigma[n]
                fresh[n] = sigma[n + 1] * math.sqrt(-math.expm1(-2.0 * t2 * h))
            else:  # eq. 2 and 3
                c, scale = -1.0, -(1.0 + t2) * sigma[n + 1]
                keep[n] = alpha[n + 1] / alpha[n]
                fresh[n] = tau[n] * sigma[n + 1] * math.sqrt(math.expm1(2.0 * h))
            p = p_ord[n]
            nodes = lam[n - np.arange(p)]  # λ_n, λ_{n-1}, ...
            pred[n, :p] = scale * step_weights(lam[n + 1], lam[n], nodes, c, data)
            if n + 1 < n_calls:
                q = q_ord[n]
                nodes = lam[n + 1 - np.arange(q)]  # λ_{n+1}, λ_n, ...
                corr[n, :q] = scale * step_weights(lam[n + 1], lam[n], nodes, c, data)
        # call n: x_{n+1} = keep_n x^c_n + Σ_k P_{n,k} M_{n-k} + fresh_n z_n, with x^c_n of
        # eq. 5 (x^c_0 = x_0): the weight of M_{n-j} in x_{n+1}
        weight = np.zeros((n_calls, lags))
        weight[:, :] = pred
        weight[1:, :] += keep[1:, None] * corr[:-1]
        weight[1:, 1:] -= keep[1:, None] * pred[:-1, :-1]
        # M of eq. 1 (x̂_0) or eq. 2 (ε̂, from the thresholded x̂_0 where x̂_0 is thresholded)
        if data:
            estimate = data_estimate(n_calls)
        else:
            estimate = noise_estimate(
                self.prediction_type, alpha[:n_calls], sigma[:n_calls], from_x0=self.thresholding,
                direct_velocity=True,
            )  # fmt: skip
        rows = [{j: weight[n, j] for j in range(min(lags, n + 1))} for n in range(n_calls)]
        update = exponential_multistep(keep, rows, estimate)
        x0 = predictions.x0_from_alpha_sigma(self.prediction_type, alpha[:n_calls], sigma[:n_calls])
        tab = Tableau(
            timesteps=g.timesteps,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update=update,
            noise=None if self.deterministic else fresh,
            start=(float(alpha[0]), float(sigma[0])),
        )
        return restarted(tab, cut, (float(alpha[cut]), float(sigma[cut])))
