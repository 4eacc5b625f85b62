"""Training noise schedules (betas and ᾱ), shared by every scheduler.

Everything here runs once, in ``init``, on the host, in float64 NumPy. A scheduler turns
these tables into per-step coefficients; ``step`` never calls into this module.

Notation (Ho et al. 2020, eq. 4): ``betas[t]`` is the variance added at training step ``t``;
``alphas_cumprod[t] = prod_{s<=t} (1 - betas[s])`` is ᾱ_t, so that
``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

BETA_SCHEDULES = ("linear", "quadratic", "squared_cosine")
ALPHA_CLIP_STRATEGIES = ("one", "alpha_zero")

# Our beta schedule names and the names diffusers uses for the same schedules.
DIFFUSERS_BETA_SCHEDULES = {
    "linear": "linear",
    "quadratic": "scaled_linear",
    "squared_cosine": "squaredcos_cap_v2",
}

# Schedules that only some diffusers classes accept (DDPMScheduler: GeoDiff's sigmoid and
# the Laplace schedule; HeunDiscreteScheduler: the exponential ᾱ): a method opts in by
# declaring its beta_schedule with these choices.
EXTENDED_BETA_SCHEDULES = (*BETA_SCHEDULES, "sigmoid", "laplace")
DIFFUSERS_EXTENDED_BETA_SCHEDULES = {
    **DIFFUSERS_BETA_SCHEDULES,
    "sigmoid": "sigmoid",
    "laplace": "laplace",
}
EXPONENTIAL_BETA_SCHEDULES = (*BETA_SCHEDULES, "exponential")
DIFFUSERS_EXPONENTIAL_BETA_SCHEDULES = {**DIFFUSERS_BETA_SCHEDULES, "exponential": "exp"}


def betas(
    schedule: str,
    num_train_steps: int,
    beta_start: float,
    beta_end: float,
    trained_betas: Sequence[float] | None = None,
) -> np.ndarray:
    """The training betas, float64, of length ``num_train_steps``.

    * ``linear``: evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020, sec. 4).
    * ``quadratic``: evenly spaced in sqrt(beta), then squared (Rombach et al. 2022; diffusers'
      ``scaled_linear``).
    * ``squared_cosine``: ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008, discretised as
      beta_t = 1 - ᾱ(t+1)/ᾱ(t), capped at 0.999 (Nichol & Dhariwal 2021, eq. 17).
    * ``sigmoid``: beta_t = beta_start + (beta_end - beta_start) · s(-6 + 12 t/(T-1)), s the
      logistic function (Xu et al. 2022, "GeoDiff"; of diffusers' classes only DDPM has it).
    * ``laplace``: ᾱ(u) = sqrt(sigmoid(λ(u))), λ(u) = -(1/2) sgn(1/2 - u) log(1 - 2|1/2 - u|
      + 10⁻⁶), the log-SNR of the Laplace schedule (Hang et al. 2024, "Improved Noise Schedule
      for Diffusion Training", μ = 0, b = 1/2), discretised as ``squared_cosine`` is. The
      square root is diffusers' (the paper's ᾱ is sigmoid(λ)), kept for parity; of
      diffusers' classes only DDPM has it.
    * ``exponential``: ᾱ(u) = e^{-12 u}, discretised as ``squared_cosine`` is (diffusers'
      ``exp``; of its classes only Heun has it).
    * ``trained_betas`` given: used as they are, and ``schedule`` is ignored.
    """
    if trained_betas is not None:
        out = np.asarray(trained_betas, dtype=np.float64)
        if out.shape != (num_train_steps,):
            raise ValueError(
                f"trained_betas must have length num_train_steps={num_train_steps}, "
                f"got shape {out.shape}"
            )
        return out
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, num_train_steps, dtype=np.float64)
    if schedule == "quadratic":
        return np.linspace(beta_start**0.5, beta_end**0.5, num_train_steps, dtype=np.float64) ** 2
    if schedule == "squared_cosine":
        return _squared_cosine_betas(num_train_steps)
    if schedule == "sigmoid":
        return _sigmoid_betas(num_train_steps, beta_start, beta_end)
    if schedule == "laplace":
        return _alpha_bar_betas(_laplace_alpha_bar, num_train_steps)
    if schedule == "exponential":
        return _alpha_bar_betas(lambda u: np.exp(-12.0 * u), num_train_steps)
    raise ValueError(f"beta_schedule must be one of {EXTENDED_BETA_SCHEDULES}, got: {schedule!r}")


def _squared_cosine_betas(num_train_steps: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(u: np.ndarray) -> np.ndarray:
        return np.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    t = np.arange(num_train_steps, dtype=np.float64)
    ratios = alpha_bar((t + 1) / num_train_steps) / alpha_bar(t / num_train_steps)
    return np.minimum(1.0 - ratios, max_beta)


def _alpha_bar_betas(alpha_bar, num_train_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """β_t = 1 - ᾱ((t + 1)/T) / ᾱ(t/T), capped at ``max_beta`` (Nichol & Dhariwal 2021,
    eq. 17's discretisation)."""
    t = np.arange(num_train_steps, dtype=np.float64)
    ratios = alpha_bar((t + 1) / num_train_steps) / alpha_bar(t / num_train_steps)
    return np.minimum(1.0 - ratios, max_beta)


def _laplace_alpha_bar(u: np.ndarray) -> np.ndarray:
    # Hang et al. 2024's Laplace log-SNR (μ = 0, b = 1/2) with diffusers' 1e-6 guard; the
    # square root is diffusers' (the paper's ᾱ is sigmoid(λ)), kept for parity
    lam = -0.5 * np.copysign(1.0, 0.5 - u) * np.log(1.0 - 2.0 * np.abs(0.5 - u) + 1e-6)
    return np.sqrt(np.exp(lam) / (1.0 + np.exp(lam)))


def _sigmoid_betas(num_train_steps: int, beta_start: float, beta_end: float) -> np.ndarray:
    # u runs evenly over [-6, 6] (a single step sits at -6); s(u) = 1 / (1 + e^-u)
    u = np.linspace(-6.0, 6.0, num_train_steps, dtype=np.float64)
    return beta_start + (beta_end - beta_start) / (1.0 + np.exp(-u))


def rescale_to_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shift and scale sqrt(ᾱ) so that ᾱ at the last step is exactly 0, keeping ᾱ_0.

    Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1.
    """
    sqrt_ab = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    alpha_bar = sqrt_ab**2
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """ᾱ_t = prod_{s<=t} (1 - beta_s) (Ho et al. 2020, eq. 4)."""
    return np.cumprod(1.0 - betas)


def final_alpha_cumprod(alphas_cumprod: np.ndarray, strategy: str) -> float:
    """ᾱ used for the step that goes past t = 0.

    ``one``: 1.0, so the last step lands on clean data; ``alpha_zero``: ᾱ_0, so it lands on
    the least noisy training level (diffusers' ``set_alpha_to_one=False``).
    """
    if strategy == "one":
        return 1.0
    if strategy == "alpha_zero":
        return float(alphas_cumprod[0])
    raise ValueError(
        f"alpha_clip_strategy must be one of {ALPHA_CLIP_STRATEGIES}, got: {strategy!r}"
    )


def alpha_bar_at(alphas_cumprod: np.ndarray, timesteps: np.ndarray, final: float) -> np.ndarray:
    """ᾱ at each timestep, with ``final`` wherever the timestep is negative (past t = 0)."""
    timesteps = np.asarray(timesteps, dtype=np.int64)
    out = np.full(timesteps.shape, final, dtype=np.float64)
    valid = timesteps >= 0
    out[valid] = alphas_cumprod[timesteps[valid]]
    return out


def check_betas(betas: np.ndarray) -> None:
    """Betas must lie in (0, 1), so that ᾱ is finite, positive and strictly decreasing, and
    must not drive ᾱ below 1e-12 (σ above 1e6; Stable Diffusion's schedule ends at ᾱ = 4.7e-3,
    the squared cosine one at 2.4e-9): no model is trained at such levels, and σ-based
    methods' float32 grids (σ⁴ in DPM-2 ancestral) overflow beyond them."""
    bad = ~(np.isfinite(betas) & (betas > 0) & (betas < 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"betas must lie in (0, 1) (exclusive) so that ᾱ decreases; beta[{i}] is {betas[i]!r}"
        )
    # first the end (a ᾱ that underflows to 0 also stops decreasing: the cause is the
    # length or the size of the betas, not a beta too small to lower it)
    last = float(np.exp(np.sum(np.log1p(-betas))))
    if last < 1e-12:
        raise ValueError(
            f"the betas drive ᾱ down to {last:.3g} at the last training step (σ = "
            f"{1 / np.sqrt(max(last, 1e-300)):.3g}); expected ᾱ >= 1e-12: lower beta_start / "
            f"beta_end or the number of training steps ({len(betas)})"
        )
    acp = np.cumprod(1.0 - betas)
    if not (acp[0] < 1.0 and np.all(np.diff(acp) < 0)):
        i = 0 if acp[0] >= 1.0 else int(np.argmax(np.diff(acp) >= 0)) + 1
        raise ValueError(
            f"the betas must make ᾱ strictly decreasing from below 1 in float64; beta[{i}] is "
            f"{float(betas[i])!r}, too small to lower ᾱ (raise beta_start)"
        )
