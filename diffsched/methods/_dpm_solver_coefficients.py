"""The exponential-integrator weights of DPM-Solver, DPM-Solver++ and their kin.

Lu, Zhou, Bao, Chen, Li & Zhu 2022a, "DPM-Solver: A Fast ODE Solver for Diffusion
Probabilistic Model Sampling in Around 10 Steps", and 2022b, "DPM-Solver++: Fast Solver for
Guided Sampling of Diffusion Probabilistic Models". Shared by the multistep, singlestep,
inverse and EDM solvers and by DEIS (Zhang & Chen 2023), which all step a sample
x_t = α_t x_0 + σ_t ε in the half-log-SNR λ_t = log(α_t / σ_t), h = λ_t - λ_s > 0 from s
to t (λ grows towards the data).

**The exact solutions.** With the noise prediction ε̂(x_λ, λ) (Lu et al. 2022a, Prop. 3.1,
eq. 3.4) and with the data prediction x̂_0(x_λ, λ) (Lu et al. 2022b, sec. 3.2):

    x_t = (α_t/α_s) x_s - α_t ∫_{λ_s}^{λ_t} e^{-λ} ε̂(λ) dλ                          (1)
    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x̂_0(λ) dλ                          (2)

Expanding the prediction in a Taylor series at λ_s, m(λ) = Σ_n m^{(n)} (λ - λ_s)^n / n!,
the integrals are (Lu et al. 2022a, eq. 3.6; φ_k as below)

    α_t ∫ e^{-λ} (λ - λ_s)^n / n! dλ = σ_t h^{n+1} φ_{n+1}(h),                        (3)
    σ_t ∫ e^{λ} (λ - λ_s)^n / n! dλ = α_t h^{n+1} φ_{n+1}(-h),                         (4)
    φ_k(z) = ∫_0^1 e^{(1-δ) z} δ^{k-1}/(k-1)! dδ = Σ_{j>=0} z^j / (j + k)!,            (5)

so φ_1(z) = (e^z - 1)/z, φ_2(z) = (e^z - 1 - z)/z², φ_3(z) = (e^z - 1 - z - z²/2)/z³ and
φ_k(z) = 1/k! + z φ_{k+1}(z).

**The stochastic variants** (diffusers' ``sde-dpmsolver`` / ``sde-dpmsolver++``; Lu et al.
2022b, app. on the reverse SDE; Gonzalez et al. 2023 give the same exponential
integrators): the reverse SDE, integrated exactly in its linear part with the same
expansion, gives

    x_t = (α_t/α_s) x_s - 2 α_t ∫ e^{-λ} ε̂ dλ + σ_t sqrt(e^{2h} - 1) z,               (6)
    x_t = (σ_t/σ_s) e^{-h} x_s + 2 α_t ∫ e^{-2(λ_t - λ)} x̂_0 dλ
          + σ_t sqrt(1 - e^{-2h}) z,                                                   (7)

where (7)'s integrals are 2 α_t h^{n+1} φ_{n+1}(-2h): n = 0 is α_t (1 - e^{-2h}).

**Derivatives from earlier calls (multistep).** With m_0 = m(λ_s), m_1 = m(λ_s - h_0),
m_2 = m(λ_s - h_0 - h_1) (the two calls before, h_0 = λ_s - λ_{s-1},
h_1 = λ_{s-1} - λ_{s-2}), Lu's reference code and diffusers form, with r_k = h_k / h,

    D_0 = m_0,   D_1 = (m_0 - m_1) / r_0                              (second order)  (8)
    D1_0 = (m_0 - m_1) / r_0,   D1_1 = (m_1 - m_2) / r_1,                             (9)
    D_1 = D1_0 + r_0 / (r_0 + r_1) (D1_0 - D1_1),   D_2 = (D1_0 - D1_1) / (r_0 + r_1) (third order)

For a quadratic m these are exact: D_1 = h m'(λ_s), D_2 = h² m''(λ_s) / 2. The update is
x_t = c_x x_s + c_0 D_0 + c_1 D_1 + c_2 D_2 (+ c_z z), with the weights of
:class:`Coefficients`:

* c_0 = n = 0 of (3)/(4) (negated for (1));
* c_1: ``taylor`` (diffusers' ``heun``), n = 1 of (3)/(4) divided by h, i.e.
  σ_t h φ_2(h) or α_t h φ_2(-h); ``midpoint`` (Lu et al. 2022b, Alg. 2, DPM-Solver++(2M)),
  c_0 / 2;
* c_2: ``taylor``, n = 2 of (3)/(4) times 2 / h² (DEIS's exact quadratic); ``reference``:
  half of that, σ_t h φ_3(h) or α_t h φ_3(-h), as Lu's reference code and diffusers weigh
  D_2 (their third-order multistep step is then exact to O(h³ m'') only: a step's error
  is O(h³), not O(h⁴));
* for (7), diffusers' ``sde-dpmsolver++`` weighs D_2 by α_t ((1 - e^{-2h} - 2h)/(2h)² - 1/2)
  = -α_t (φ_2(-2h) + 1/2) ≈ -α_t, where the reference-code convention above gives
  α_t (1/2 - φ_2(-2h)) = 2 α_t h φ_3(-2h) ≈ α_t h/3 (a sign slip in diffusers; kept with
  ``sde_third="diffusers"`` for parity; ``reference`` is the corrected weight, ``taylor``
  twice it; the classes' option ``sde_third_order``, measured in
  :mod:`diffsched.methods.dpmsolver`).

Every weight is formed from expm1 and the series of φ near 0, so that h = 0 (a repeated
level: the step is the identity) and small h lose no digits, and the weights are finite
at h = ∞ (a final σ_t = 0) where a limit exists: the data form there gives x_t = D_0 + ...
with c_1 = α_t (taylor), c_2 = α_t / 2 (reference); the D's of (8)-(9) grow like h there,
so only first order is meaningful, and every class steps to σ_t = 0 at first order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

SECOND_ORDER = ("midpoint", "taylor")
THIRD_ORDER = ("reference", "taylor")


class Coefficients(NamedTuple):
    """x_t = x · sample + d0 · D_0 + d1 · D_1 + d2 · D_2 + noise · z (floats)."""

    x: float
    d0: float
    d1: float
    d2: float
    noise: float = 0.0


def phi(k: int, z: float) -> float:
    """φ_k(z) = Σ_{j>=0} z^j / (j + k)! (eq. 5), for k >= 1 and z in [-∞, ∞).

    The series where |z| < 1/2 (the closed forms lose digits there); φ_k(-∞) = 0.
    """
    if z == -math.inf:
        return 0.0
    if abs(z) < 0.5:
        term = 1.0 / math.factorial(k)
        total = term
        for j in range(1, 30):
            term *= z / (j + k)
            total += term
        return total
    value = math.expm1(z)  # e^z - 1, then φ_{i+1} = (φ_i - 1/i!) / z
    for i in range(1, k):
        value = value / z - 1.0 / math.factorial(i)
    return value / z


def _h_phi(k: int, h: float, scale: float = 1.0) -> float:
    """h φ_k(-scale h) for h in [0, ∞]: its limit 1/(scale (k-1)!) at h = ∞ (eq. 4 and 7)."""
    if h == math.inf:
        return 1.0 / (scale * math.factorial(k - 1))
    return h * phi(k, -scale * h)


def step_size(alpha_s: float, sigma_s: float, alpha_t: float, sigma_t: float) -> float:
    """h = λ_t - λ_s, λ = log α - log σ (+∞ when σ_t = 0)."""
    lam_s = math.log(alpha_s) - math.log(sigma_s)
    lam_t = math.inf if sigma_t == 0 else math.log(alpha_t) - math.log(sigma_t)
    return lam_t - lam_s


def noise_prediction(
    alpha_s: float,
    sigma_s: float,
    alpha_t: float,
    sigma_t: float,
    *,
    second: str = "midpoint",
    third: str = "reference",
    stochastic: bool = False,
) -> Coefficients:
    """The weights of DPM-Solver (the ε form, eq. 1; eq. 6 when ``stochastic``).

    σ_t (e^h - 1) is written (α_t σ_s / α_s)(1 - e^{-h}) (e^h = α_t σ_s / (σ_t α_s)), exact
    to the last digit for small h and finite at σ_t = 0 (x_t = x̂_0 of the first order).
    """
    _check(second, third)
    h = step_size(alpha_s, sigma_s, alpha_t, sigma_t)
    top = alpha_t * sigma_s / alpha_s  # σ_t e^h
    c0 = top * -math.expm1(-h)  # σ_t (e^h - 1) = σ_t h φ_1(h): n = 0 of (3)
    if h == math.inf:
        c1 = c2 = math.nan  # no finite limit: first order only into σ_t = 0
    else:
        c1 = 0.5 * c0 if second == "midpoint" else sigma_t * h * phi(2, h)
        c2 = sigma_t * h * phi(3, h) * (2.0 if third == "taylor" else 1.0)
    double = 2.0 if stochastic else 1.0  # (6): the ε integral counts twice
    noise = top * math.sqrt(-math.expm1(-2 * h)) if stochastic else 0.0  # σ_t sqrt(e^{2h} - 1)
    return Coefficients(alpha_t / alpha_s, -double * c0, -double * c1, -double * c2, noise)


def data_prediction(
    alpha_s: float,
    sigma_s: float,
    alpha_t: float,
    sigma_t: float,
    *,
    second: str = "midpoint",
    third: str = "reference",
    stochastic: bool = False,
    sde_third: str = "diffusers",
) -> Coefficients:
    """The weights of DPM-Solver++ (the x̂_0 form, eq. 2; eq. 7 when ``stochastic``).

    ``sde_third``: the D_2 weight of (7), ``diffusers`` (its sign slip, for parity) or
    ``reference`` (the convention of the deterministic ``reference`` weight).
    """
    _check(second, third)
    h = step_size(alpha_s, sigma_s, alpha_t, sigma_t)
    if not stochastic:
        c0 = alpha_t * _h_phi(1, h)  # α_t (1 - e^{-h}): n = 0 of (4)
        c1 = 0.5 * c0 if second == "midpoint" else alpha_t * _h_phi(2, h)
        c2 = alpha_t * _h_phi(3, h) * (2.0 if third == "taylor" else 1.0)
        return Coefficients(sigma_t / sigma_s, c0, c1, c2)
    c0 = 2 * alpha_t * _h_phi(1, h, 2.0)  # α_t (1 - e^{-2h})
    c1 = 0.5 * c0 if second == "midpoint" else 2 * alpha_t * _h_phi(2, h, 2.0)
    if sde_third == "diffusers":
        c2 = -alpha_t * (phi(2, -2 * h) + 0.5)
    elif sde_third in ("reference", "taylor"):
        full = third == "taylor" or sde_third == "taylor"
        c2 = 2 * alpha_t * _h_phi(3, h, 2.0) * (2.0 if full else 1.0)
    else:
        raise ValueError(
            f"sde_third must be 'diffusers', 'reference' or 'taylor', got: {sde_third!r}"
        )
    decay = math.exp(-h)
    noise = sigma_t * math.sqrt(-math.expm1(-2 * h))  # σ_t sqrt(1 - e^{-2h})
    return Coefficients(sigma_t / sigma_s * decay, c0, c1, c2, noise)


def multistep_differences(h: float, h0: float = math.nan, h1: float = math.nan) -> np.ndarray:
    """(3, 3) array W: D_j = Σ_k W[j, k] m_k of eq. 8-9 (m_k the model output k calls back).

    Second order needs ``h0``, third order ``h0`` and ``h1``; rows of the orders not given
    are zero. Written with h / h_k (not 1 / r_k), so that h = 0 gives zero rows, not NaN.
    """
    w = np.zeros((3, 3))
    w[0, 0] = 1.0
    if math.isnan(h0):
        return w
    a = h / h0  # 1 / r_0
    d10 = np.array([a, -a, 0.0])  # D1_0 = (m_0 - m_1) / r_0
    if math.isnan(h1):
        w[1] = d10
        return w
    b = h / h1  # 1 / r_1
    d11 = np.array([0.0, b, -b])  # D1_1 = (m_1 - m_2) / r_1
    w[1] = d10 + h0 / (h0 + h1) * (d10 - d11)  # r_0 / (r_0 + r_1) = h_0 / (h_0 + h_1)
    w[2] = h / (h0 + h1) * (d10 - d11)  # 1 / (r_0 + r_1) = h / (h_0 + h_1)
    return w


def model_weights(c: Coefficients, w: np.ndarray, order: int) -> np.ndarray:
    """The weights of m_0, m_1, m_2 in a step of ``order`` (1-3) with weights ``c``."""
    d = np.array([c.d0, c.d1, c.d2])[:order]
    return d @ w[:order]


def _check(second: str, third: str) -> None:
    if second not in SECOND_ORDER:
        raise ValueError(f"second must be one of {SECOND_ORDER}, got: {second!r}")
    if third not in THIRD_ORDER:
        raise ValueError(f"third must be one of {THIRD_ORDER}, got: {third!r}")
