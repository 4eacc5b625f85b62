"""The method kit: the builders every method of a family shares, so that a method module
holds only its coefficients.

Every builder writes an engine :class:`~diffsched.core.engine.Update` (one row of
coefficients per model call, in the method's native variance-exploding sample
x = x_0 + σ ε) from a few numbers per step:

* :func:`derivative`: the probability-flow ODE derivative as a tableau column expression,
  d(x, σ) = (x - x̂_0) / σ (Karras et al. 2022, "Elucidating the Design Space of
  Diffusion-Based Generative Models", eq. 4 with s = 1, Alg. 1 line 4);
* :func:`runge_kutta`: explicit Runge-Kutta steps from a Butcher tableau (Butcher 2016,
  "Numerical Methods for Ordinary Differential Equations", sec. 23), one model call per
  stage; :func:`butcher_step` gives the step of a tableau (a, b, c) in σ, and methods in
  log σ or λ = -log σ (exponential integrators) pass their stage levels and weights;
* :func:`adams_bashforth_weights` and :func:`linear_multistep`: linear multistep in σ
  (variable-step Adams-Bashforth; Hairer, Nørsett & Wanner, "Solving Ordinary Differential
  Equations I", sec. III.1 and III.5), x_{i+1} = x_i + Σ_k w_{ik} d_{i-k};
* :func:`exponential_multistep`: exponential integrators in the half log-SNR
  λ = log(α/σ) (Lu et al. 2022a/b, "DPM-Solver" eq. 3.4 and "DPM-Solver++" eq. 9; Zhang &
  Chen 2023, "DEIS"; Zhao et al. 2023, "UniPC"; Xue et al. 2023, "SA-Solver"; Zhang et al.
  2023, "RES", arXiv:2308.02157): x_{i+1} = keep_i x_i + Σ_k c_{ik} m_{i-k}, with the
  prediction m = x̂_0 or ε̂ formed in one place (:func:`noise_estimate`,
  :func:`data_estimate`), and the B(h) family of UniPC (:func:`unipc_rhos`).

Each step's numbers are computed by the method, in float64, in ``init``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..core import predictions
from ..core.engine import OUTPUT, SAMPLE, X0, Update


def derivative(update: Update, call: int, lag: int, weight: float, sigma: float) -> None:
    """Adds ``weight`` · d_{call - lag} to call ``call``'s next sample, where
    d_j = (x_j - x̂_0,j) / σ_j is the ODE derivative at call j (x_j its native sample)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # σ = 0: the engine says which call
        w = np.float64(weight) / np.float64(sigma)
    update.add(SAMPLE, lag, call, w)
    update.add(X0, lag, call, -w)


# -- explicit Runge-Kutta ------------------------------------------------------------------


@dataclass(frozen=True)
class RKStep:
    """One explicit Runge-Kutta step with s stages, one model call each, in absolute form.

    Attributes:
        sigmas: (s,) the noise level of each stage's model call.
        a: (s, s) strictly lower triangular: stage k's sample is x + Σ_{j<k} a[k, j] d_j,
            x the first stage's sample and d_j the derivative at stage j (the Butcher
            matrix times the step size).
        b: (s,) the step's result, x + Σ_j b[j] d_j (the weights times the step size).
        noise: coefficient of fresh standard normal noise added to the result (the churn
            of the next step: Karras et al. 2022, Alg. 2, line 5).
    """

    sigmas: np.ndarray
    a: np.ndarray
    b: np.ndarray
    noise: float = 0.0

    def __post_init__(self) -> None:
        s = len(self.sigmas)
        if np.shape(self.a) != (s, s) or np.shape(self.b) != (s,):
            raise ValueError(f"a Runge-Kutta step of {s} stages needs a ({s}, {s}) and b ({s},)")
        if np.any(np.triu(self.a) != 0):
            raise ValueError("an explicit Runge-Kutta matrix is strictly lower triangular")


def butcher_step(
    sigma: float, sigma_next: float, a: Sequence[Sequence[float]], b: Sequence[float],
    c: Sequence[float], noise: float = 0.0,
) -> RKStep:  # fmt: skip
    """The step from σ to σ_next of the Butcher tableau (a, b, c) in σ: stage levels
    σ + c_k h (σ_next itself where c_k = 1), matrix h a, weights h b, h = σ_next - σ."""
    h = sigma_next - sigma
    c = np.asarray(c, np.float64)
    # the end points exactly (a model's timestep is the nearest table entry: one ulp can
    # flip a tie)
    levels = np.where(c == 0, sigma, np.where(c == 1, sigma_next, sigma + h * c))
    return RKStep(
        sigmas=levels,
        a=h * np.asarray(a, np.float64),
        b=h * np.asarray(b, np.float64),
        noise=noise,
    )


EULER = ([[0.0]], [1.0], [0.0])  # (a, b, c): Euler's method
HEUN = ([[0.0, 0.0], [1.0, 0.0]], [0.5, 0.5], [0.0, 1.0])  # the explicit trapezoidal rule
# Ralston 1962 ("Runge-Kutta methods with minimum error bounds", Math. Comp. 16, eq. 3.5):
# the second-order pair with the smallest truncation-error bound, c_2 = 2/3
RALSTON = ([[0.0, 0.0], [2 / 3, 0.0]], [0.25, 0.75], [0.0, 2 / 3])


def runge_kutta(steps: Sequence[RKStep]) -> tuple[np.ndarray, Update, np.ndarray]:
    """(the level of every model call, the update, the noise column) of consecutive
    Runge-Kutta steps: calls in order, stage by stage, step by step.

    Stage k's call holds that stage's sample; after it, the next call's sample (stage k + 1,
    or the next step's first stage) is formed from the first stage's sample (k calls back)
    and the derivatives of the stages so far.
    """
    sigmas = np.concatenate([np.asarray(st.sigmas, np.float64) for st in steps])
    n = len(sigmas)
    update = Update(n)
    noise = np.zeros(n)
    call = 0
    for st in steps:
        s = len(st.sigmas)
        for k in range(s):
            weights = st.a[k + 1] if k + 1 < s else st.b  # the next sample's row
            update.add(SAMPLE, k, call + k, 1.0)  # x, the first stage's sample
            for j in range(k + 1):
                if weights[j] != 0:
                    derivative(update, call + k, k - j, float(weights[j]), float(st.sigmas[j]))
        noise[call + s - 1] = st.noise
        call += s
    return sigmas, update, noise


def churn_levels(sigmas: np.ndarray, s_churn: float, s_tmin: float, s_tmax: float) -> np.ndarray:
    """σ̂_i = (1 + γ_i) σ_i, the level each step of an N-step loop starts from after churn,
    γ_i = min(S_churn / N, sqrt(2) - 1) where S_tmin <= σ_i <= S_tmax, else 0 (Karras et al.
    2022, Alg. 2, lines 4-5); ``sigmas`` holds the N + 1 levels of the loop."""
    sigmas = np.asarray(sigmas, np.float64)
    n = len(sigmas) - 1
    gamma = min(s_churn / n, 2**0.5 - 1) if s_churn > 0 else 0.0
    inside = (s_tmin <= sigmas[:n]) & (sigmas[:n] <= s_tmax)
    return sigmas[:n] * (np.where(inside, gamma, 0.0) + 1)


# -- linear multistep in σ ------------------------------------------------------------------


def adams_bashforth_weights(sigmas: np.ndarray, i: int, order: int) -> np.ndarray:
    """w_{i0}, ..., w_{i,p-1}: the step from σ_i to σ_{i+1} with the derivatives at σ_i,
    σ_{i-1}, ..., σ_{i-p+1} (p = min(i + 1, order)), float64:

        w_{ik} = ∫_{σ_i}^{σ_{i+1}} ℓ_{ik}(σ) dσ,

    ℓ_{ik} the Lagrange basis polynomial of σ_{i-k} over those nodes (variable-step
    Adams-Bashforth, Hairer, Nørsett & Wanner, sec. III.5). Evaluated in u = (σ - σ_i) / h,
    h = σ_{i+1} - σ_i, where the nodes are O(1) numbers whatever the scale of σ:
    w_{ik} = h ∫_0^1 ℓ_{ik}(u) du. On an even grid: 1; 3/2, -1/2; 23/12, -16/12, 5/12; ...
    """
    sigmas = np.asarray(sigmas, np.float64)
    p = min(i + 1, order)
    h = sigmas[i + 1] - sigmas[i]
    nodes = (sigmas[i - np.arange(p)] - sigmas[i]) / h
    weights = np.empty(p)
    for k in range(p):
        others = np.delete(nodes, k)
        basis = np.poly1d(np.poly(others)) / np.prod(nodes[k] - others)
        antiderivative = np.polyint(basis)
        weights[k] = h * (antiderivative(1.0) - antiderivative(0.0))
    return weights


def linear_multistep(sigmas: np.ndarray, weights: Sequence[Sequence[float]]) -> Update:
    """The update of x_{i+1} = x_i + Σ_k w[i][k] d_{i-k}, one call per step at σ_i
    (``sigmas`` holds the N call levels; ``weights[i]`` has at most i + 1 entries)."""
    n = len(weights)
    update = Update(n)
    for i, row in enumerate(weights):
        update.add(SAMPLE, 0, i, 1.0)
        for k, w in enumerate(row):
            derivative(update, i, k, float(w), float(sigmas[i - k]))
    return update


# -- exponential multistep in λ (log-SNR) --------------------------------------------------


class Estimate(NamedTuple):
    """The prediction m an exponential integrator expands, per call j, as a combination of
    that call's operands: m_j = sample[j] x_j + output[j] F_j + x0[j] x̂_0,j (F the model
    output, x̂_0 after any thresholding). Each (N,) float64."""

    sample: np.ndarray
    output: np.ndarray
    x0: np.ndarray


def data_estimate(num_calls: int) -> Estimate:
    """m = x̂_0: the data prediction (DPM-Solver++, UniPC with x̂_0, SA-Solver's eq. 1)."""
    zeros = np.zeros(num_calls)
    return Estimate(zeros, zeros, np.ones(num_calls))


def noise_estimate(
    prediction_type: str,
    alpha: np.ndarray,
    sigma: np.ndarray,
    *,
    from_x0: bool,
    direct_velocity: bool = False,
) -> Estimate:
    """m = ε̂ = (x - α x̂_0) / σ of x = α x_0 + σ ε (Lu et al. 2022a, eq. 3.4's noise
    prediction): the one conversion every exponential integrator of ε̂ uses.

    ``from_x0``: formed from the call's x̂_0 operand, after thresholding (Saharia et al.
    2022), as diffusers does when it thresholds; else from the model output, x̂_0's linear
    form (:func:`~diffsched.core.predictions.x0_from_alpha_sigma`) substituted.
    ``direct_velocity``: a v model's ε̂ = σ x + α v (Salimans & Ho 2022, from v = α ε - σ
    x_0), as diffusers' DPM-Solver, UniPC and SA-Solver form it; on a variance-preserving
    path (α² + σ² = 1) it is the same ε̂, on flow levels (α = 1 - σ) it is not, and a v
    model on flow levels is diffusers' configuration, kept for parity.
    """
    alpha = np.asarray(alpha, np.float64)
    sigma = np.asarray(sigma, np.float64)
    zeros = np.zeros_like(alpha)
    with np.errstate(divide="ignore", invalid="ignore"):  # σ = 0: no ε̂ (the step never uses it)
        if from_x0:
            return Estimate(1.0 / sigma, zeros, -alpha / sigma)
        if direct_velocity and prediction_type == "angular_velocity":
            return Estimate(sigma + zeros, alpha + zeros, zeros)
        eps = predictions.noise_from_alpha_sigma(prediction_type, alpha, sigma)
    return Estimate(
        np.asarray(eps.sample_coef, np.float64) + zeros, eps.prediction_coef + zeros, zeros
    )


def exponential_multistep(
    keep: Sequence[float],
    weights: Sequence[Mapping[int, float] | Sequence[float]],
    estimate: Estimate,
    *,
    origin: Sequence[int] | None = None,
) -> Update:
    """The update of the exponential integrators in λ = log(α/σ) (Lu et al. 2022a, eq. 3.4;
    2022b, eq. 9; Zhang & Chen 2023; Zhao et al. 2023; Xue et al. 2023):

        x_{i+1} = keep_i x_{o_i} + Σ_k c_{ik} m_{i-k},                                  (E)

    the exact solution's linear part (σ_t/σ_s for x̂_0, α_t/α_s for ε̂, e^{-τ² h} σ_t/σ_s
    for an SDE) times the step's starting sample x_{o_i} (o_i = i, the last call's sample;
    a singlestep group's first sample otherwise), plus the integral of the prediction's
    interpolating polynomial, c_{ik} the weight of m at call i - k (``weights[i]``: a
    list indexed by k, or a {k: c} mapping), m formed by ``estimate``. Fresh noise (SDE
    variants) is the tableau's noise column, not part of (E)."""
    n = len(weights)
    update = Update(n)
    for i, row in enumerate(weights):
        update.add(SAMPLE, 0 if origin is None else int(i - origin[i]), i, float(keep[i]))
        for k, c in row.items() if isinstance(row, Mapping) else enumerate(row):
            if c == 0:
                continue
            j = i - k
            for operand, factor in (
                (SAMPLE, estimate.sample[j]), (OUTPUT, estimate.output[j]), (X0, estimate.x0[j])
            ):  # fmt: skip
                if factor != 0:
                    update.add(operand, k, i, float(c) * float(factor))
    return update


def half_log_snr(sigma: np.ndarray) -> np.ndarray:
    """λ = -log σ, the half log signal-to-noise ratio of x = x_0 + σ ε (+∞ at σ = 0)."""
    with np.errstate(divide="ignore"):
        return -np.log(np.asarray(sigma, np.float64))


# UniPC's free function of the step, B(h) (Zhao et al. 2023, sec. 3.2 and app. C): ĥ or e^ĥ - 1
B_OF_H = {"bh1": lambda hh: hh, "bh2": math.expm1}


class UniPCRhos(NamedTuple):
    """The weights of one UniPC step of order p (Zhao et al. 2023, Alg. 2-3)."""

    b_h: float  # B(h)
    rho_p: np.ndarray  # (p - 1,) the predictor's (UniP) weights of D_1..D_{p-1}
    rho_c: np.ndarray  # (p,) the corrector's (UniC), the last one for D_p = m_t - m_0


def unipc_rhos(r: np.ndarray, hh: float, variant: str, h_phis: Sequence[float]) -> UniPCRhos:
    """ρ^p and ρ^c of a UniPC step of order p = len(r) + 1 (Zhao et al. 2023, Thm. 3.1).

    ``r``: r_1..r_{p-1}, the earlier calls' λ offsets over h; ``hh``: ĥ (-h with x̂_0, h
    with ε̂); ``variant``: B(h), ``bh1`` or ``bh2``; ``h_phis``: ĥ φ_{i+1}(ĥ) for i = 1..p
    (the caller's evaluation of φ). ρ solves Σ_k ρ_k r_k^{i-1} = g_i,
    g_i = ĥ φ_{i+1}(ĥ) i! / B(h), over r_1..r_{p-1} (ρ^p; 1/2 at p = 2, as the authors'
    code) and over r_1..r_{p-1}, 1 (ρ^c; 1/2 at p = 1).
    """
    p = len(r) + 1
    if variant not in B_OF_H:
        raise ValueError(f"UniPC's B(h) must be one of {tuple(B_OF_H)}, got: {variant!r}")
    b_h = B_OF_H[variant](hh)
    g = np.array([h_phis[i - 1] * math.factorial(i) / b_h for i in range(1, p + 1)])
    nodes = np.append(np.asarray(r, dtype=np.float64), 1.0)
    system = np.stack([nodes**i for i in range(p)])  # row i: r_k^i
    if p == 1:
        return UniPCRhos(b_h, np.zeros(0), np.array([0.5]))
    rho_p = np.array([0.5]) if p == 2 else _solve(system[:-1, :-1], g[:-1])
    return UniPCRhos(b_h, rho_p, _solve(system, g))


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a⁻¹ b, or NaN where a is singular (two equal nodes r_k: a level visited twice), so
    that the engine refuses the step with its cause, as for every other non-finite weight."""
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.full(b.shape, np.nan)


# -- embedded Runge-Kutta pairs (adaptive step size) -----------------------------------------


@dataclass(frozen=True)
class EmbeddedPair:
    """An explicit Runge-Kutta pair with an embedded error estimate (Hairer, Nørsett &
    Wanner, "Solving Ordinary Differential Equations I", sec. II.4): the Butcher tableau
    (a, b, c) of order ``order`` and the weights ``b_hat`` of a lower-order solution; the
    difference of the two, h Σ_j (b_j - b̂_j) k_j, estimates the local error.

    Both pairs here are FSAL ("first same as last"): the last stage sits at c = 1 with the
    row a[-1] = b, so its derivative is the first stage of the next step.
    """

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_hat: tuple[float, ...]
    c: tuple[float, ...]
    order: int  # of the propagated solution (b)
    embedded_order: int  # of the estimate (b̂)

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def fsal(self) -> bool:
        return self.c[-1] == 1.0 and tuple(self.a[-1][: self.stages - 1]) == self.b[:-1]


# Bogacki & Shampine 1989, "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 2(4),
# eq. (3): third order, an FSAL second-order estimate; four stages, three calls per step
BOSH3 = EmbeddedPair(
    name="bosh3",
    a=((0.0, 0.0, 0.0, 0.0), (1 / 2, 0.0, 0.0, 0.0), (0.0, 3 / 4, 0.0, 0.0),
       (2 / 9, 1 / 3, 4 / 9, 0.0)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_hat=(7 / 24, 1 / 4, 1 / 3, 1 / 8),
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    order=3,
    embedded_order=2,
)  # fmt: skip

# Dormand & Prince 1980, "A family of embedded Runge-Kutta formulae", J. Comput. Appl.
# Math. 6(1), Table 2 (RK5(4)7M): fifth order, an FSAL fourth-order estimate; seven
# stages, six calls per step
DOPRI5 = EmbeddedPair(
    name="dopri5",
    a=(
        (0.0,) * 7,
        (1 / 5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        (3 / 40, 9 / 40, 0.0, 0.0, 0.0, 0.0, 0.0),
        (44 / 45, -56 / 15, 32 / 9, 0.0, 0.0, 0.0, 0.0),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0.0, 0.0, 0.0),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0.0, 0.0),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    b_hat=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    order=5,
    embedded_order=4,
)

EMBEDDED_PAIRS = {pair.name: pair for pair in (BOSH3, DOPRI5)}
