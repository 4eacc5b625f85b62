"""Noise levels σ: the training σ's, the σ grids of an N-step loop, and σ <-> timestep.

In the variance-exploding view a sample at level σ is x = x_0 + σ ε; a variance-preserving
model's x_t = sqrt(ᾱ) x_0 + sqrt(1-ᾱ) ε is that x divided by sqrt(σ² + 1), with
σ = sqrt((1 - ᾱ) / ᾱ) (Karras et al. 2022, sec. 2; Song et al. 2021, eq. 30).

Grids (descending, N points; a final level is appended by the method):

* from timesteps: σ of each (fractional) timestep, interpolated linearly in t over the
  training σ's, or evenly in log σ (``interpolation_type="log_linear"``);
* Karras et al. 2022, eq. 5: σ_i = (σ_max^(1/ρ) + i/(N-1) (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ;
* exponential: evenly spaced in log σ between σ_max and σ_min;
* beta (Lee et al. 2024, "Beta Sampling is All You Need"): σ_min + (σ_max - σ_min) times
  the quantiles of a Beta(0.6, 0.6) distribution at 1 - i/(N-1);
* Align Your Steps (Sabour et al. 2024): the published 10-step σ's of SD1.5, SDXL or SVD,
  log-linearly interpolated to N, within [σ_min, σ_max];
* ComfyUI's schedules (:data:`diffsched.schedules.comfy.SIGMA_SCHEDULES`: simple, normal,
  sgm_uniform, ddim_uniform, beta_sampling, kl_optimal, ..., GITS, Optimal Steps), computed
  by ComfyUI's rules on the model's own training σ table (or flow levels).

Where diffusers stores a grid in float32 the method rounds it the same way (``as_float32``),
so that the grid, and so the timesteps the model sees, are diffusers' own.
"""

from __future__ import annotations

import math

import numpy as np

from . import comfy
from . import spacing as spacing_module

AYS_SCHEDULES = ("ays-sd15", "ays-sdxl", "ays-svd")  # Align Your Steps (schedules/ays.py)
COMFY_SCHEDULES = comfy.SIGMA_SCHEDULES  # ComfyUI's, on the model's table (schedules/comfy.py)
SIGMA_SCHEDULES = ("karras", "exponential", "beta", *AYS_SCHEDULES, *COMFY_SCHEDULES)


def from_alphas_cumprod(alphas_cumprod: np.ndarray) -> np.ndarray:
    """σ_t = sqrt((1 - ᾱ_t) / ᾱ_t), float64, ascending in t (inf where ᾱ_t = 0: zero
    terminal SNR)."""
    acp = np.asarray(alphas_cumprod, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - acp) / acp)


def alpha_bar_of(sigma: np.ndarray | float) -> np.ndarray | float:
    """ᾱ = 1 / (1 + σ²): the variance-preserving level of σ (1 at σ = 0)."""
    return 1.0 / (1.0 + np.asarray(sigma, dtype=np.float64) ** 2)


def as_float32(values: np.ndarray) -> np.ndarray:
    """Values rounded to float32, returned as float64 (how diffusers stores its grids)."""
    return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64)


def sigma_to_t(sigmas: np.ndarray, log_train_sigmas: np.ndarray) -> np.ndarray:
    """The fractional timestep of each σ: piecewise linear in log σ over the training
    levels, clamped to [0, T-1] (the inverse of the linear interpolation used by k-diffusion
    and diffusers)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    n = log_train_sigmas.shape[0]
    if n == 1:  # one training level: every σ is at its timestep, 0
        return np.zeros_like(log_sigma)
    # index of the last training level at or below each log σ, as diffusers' rule: the
    # levels ascend in t except, under zero terminal SNR, the clamped last one (σ_{T-1} =
    # 4096 below σ_{T-2}), so search the suffix minima (non-decreasing; equal to the levels
    # where they ascend): the last i with min(levels[i:]) <= log σ is the last level <= it
    floor = np.minimum.accumulate(log_train_sigmas[::-1])[::-1]
    low = np.searchsorted(floor, log_sigma, side="right") - 1
    low = np.clip(low, 0, n - 2)
    lo, hi = log_train_sigmas[low], log_train_sigmas[low + 1]
    span = lo - hi
    with np.errstate(divide="ignore", invalid="ignore"):  # two equal levels: the lower index
        w = np.where(span != 0, (lo - log_sigma) / span, 0.0)
    w = np.clip(w, 0.0, 1.0)
    return (1 - w) * low + w * (low + 1)


def karras(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: n levels from σ_max down to σ_min, evenly in σ^(1/ρ)."""
    ramp = np.linspace(0, 1, n)
    with np.errstate(over="ignore"):
        lo, hi = np.float64(sigma_min) ** (1 / rho), np.float64(sigma_max) ** (1 / rho)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(
            f"rho={rho!r} is too small for sigma_max={sigma_max!r}: σ^(1/ρ) overflows float64"
        )
    return _exact_top((hi + ramp * (lo - hi)) ** rho, sigma_max)


def _exact_top(levels: np.ndarray, sigma_max: float) -> np.ndarray:
    """``levels`` starting at σ_max exactly: the formulas' round trips (exp(log σ),
    (σ^(1/ρ))^ρ, σ_min + (σ_max - σ_min)) land an ulp off, and an ulp below the top training
    level maps to timestep 998.99999..., which the solvers' integer timesteps truncate to
    998. (At σ_min an ulp either way maps to 0 or 1e-15 of a timestep: left as computed.)"""
    levels = np.asarray(levels, dtype=np.float64).copy()
    if levels.size:
        levels[0] = sigma_max
    return levels


def exponential(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """n levels from σ_max down to σ_min, evenly in log σ."""
    levels = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))
    return _exact_top(levels, sigma_max)


def beta(sigma_min: float, sigma_max: float, n: int, a: float = 0.6, b: float = 0.6) -> np.ndarray:
    """Lee et al. 2024: σ_min + (σ_max - σ_min) · F⁻¹(1 - i/(n-1)), F the Beta(a, b) CDF."""
    try:
        from scipy.stats import beta as beta_distribution
    except ImportError as err:  # pragma: no cover - scipy ships with the cli and test extras
        raise ImportError("beta sigmas need scipy: pip install scipy") from err
    quantiles = beta_distribution.ppf(1 - np.linspace(0, 1, n), a, b)
    return _exact_top(sigma_min + quantiles * (sigma_max - sigma_min), sigma_max)


def convert(
    kind: str,
    sigmas: np.ndarray,
    n: int,
    sigma_min: float | None,
    sigma_max: float | None,
    model: comfy.ModelSampling | None = None,
) -> np.ndarray:
    """``sigmas`` (descending) re-gridded by ``kind`` over [σ_min, σ_max] (defaults: their
    last and first entries); ComfyUI's kinds on the table of ``model`` instead
    (:func:`diffsched.schedules.comfy.grid_sigmas`)."""
    if kind in COMFY_SCHEDULES:
        if model is None:
            raise ValueError(f"sigma schedule {kind!r} needs the model's σ table")
        return comfy.grid_sigmas(kind, model, n)
    lo = float(sigmas[-1]) if sigma_min is None else float(sigma_min)
    hi = float(sigmas[0]) if sigma_max is None else float(sigma_max)
    if kind == "karras":
        return karras(lo, hi, n)
    if kind == "exponential":
        return exponential(lo, hi, n)
    if kind == "beta":
        return beta(lo, hi, n)
    if kind in AYS_SCHEDULES:  # published σ's, interpolated to n, within [σ_min, σ_max]
        from . import ays

        return np.clip(ays.sigmas(kind.removeprefix("ays-"), n)[:-1], lo, hi)
    raise ValueError(f"sigma schedule must be one of {SIGMA_SCHEDULES}, got: {kind!r}")


def spaced_float_timesteps(
    spacing: str, num_train_steps: int, num_steps: int, offset: int = 0
) -> np.ndarray:
    """The (float32-valued) timesteps of the σ-based methods, descending.

    Like :func:`diffsched.schedules.spacing.spaced_timesteps`, but ``linspace`` keeps its
    fractional points (the σ's are interpolated between training levels there).
    """
    if spacing == "linspace":
        ts = np.linspace(0, num_train_steps - 1, num_steps, dtype=np.float32)[::-1]
    elif spacing == "leading":
        ratio = num_train_steps // num_steps
        spacing_module.check_leading_ratio(ratio, num_train_steps, num_steps, num_steps)
        ts = (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.float32) + offset
    elif spacing == "trailing":
        ratio = num_train_steps / num_steps
        ts = np.arange(num_train_steps, 0, -ratio).round().astype(np.float32) - 1
    else:
        raise ValueError(
            f"timestep_spacing must be one of ('leading', 'linspace', 'trailing'), got: {spacing!r}"
        )
    ts = np.asarray(ts, dtype=np.float32).astype(np.float64)
    return spacing_module.check_training_range(ts, spacing, num_train_steps, num_steps, offset)


def comfy_table(kind: str, train: np.ndarray) -> comfy.ModelSampling:
    """ComfyUI's model sampling on the training σ table, which ComfyUI's schedules read by
    timestep; a table of one level, or one that falls (diffusers' zero-SNR clamp), is
    refused naming the cause."""
    if len(train) < 2:  # ComfyUI's schedules interpolate the table between its ends
        raise ValueError(
            f"sigma_schedule {kind!r} reads the model's σ table by timestep and needs 2 "
            f"training levels or more (num_train_steps >= 2), got {len(train)}"
        )
    if np.any(np.diff(train) < 0):
        top = int(np.argmax(train))
        raise ValueError(
            f"sigma_schedule {kind!r} reads the model's σ table by timestep, and this table "
            f"falls after timestep {top} (σ {train[top]:.6g}, then {train[-1]:.6g} at the "
            "last: diffusers' clamp of zero terminal SNR, rescale_betas_zero_snr=True, to "
            "ᾱ = 2^-24); use a sigma_schedule that spans [σ_min, σ_max] (karras, "
            "exponential, beta, ...) or none"
        )
    return comfy.from_table("eps", train)


def discrete_grid(
    alphas_cumprod: np.ndarray,
    num_steps: int,
    *,
    spacing: str,
    offset: int = 0,
    kind: str | None = None,
    interpolation: str = "linear",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps, σ's) of an N-step loop of a model trained at ``alphas_cumprod``.

    The timesteps come from the spacing; their σ's are interpolated over the training σ's
    (linearly in t, or evenly in log σ with ``interpolation="log_linear"``, which gives
    N + 1 levels as diffusers' Euler does). With ``kind`` (karras, exponential, beta, ...)
    the σ's are re-gridded (ComfyUI's kinds on the training σ table) and the timesteps
    follow from them (:func:`sigma_to_t`). No final
    level is appended. Both are float64.
    """
    train = from_alphas_cumprod(alphas_cumprod)
    log_train = np.log(train)
    ts = spaced_float_timesteps(spacing, len(train), num_steps, offset)
    if interpolation == "linear":
        sig = np.interp(ts, np.arange(len(train)), train)
    elif interpolation == "log_linear":
        sig = np.exp(
            np.linspace(np.log(train[-1]), np.log(train[0]), num_steps + 1, dtype=np.float32)
        ).astype(np.float64)
        sig = as_float32(sig)
    else:
        raise ValueError(
            f"interpolation_type must be 'linear' or 'log_linear', got: {interpolation!r}"
        )
    if kind is not None:
        model = comfy_table(kind, train) if kind in COMFY_SCHEDULES else None
        sig = convert(kind, sig, num_steps, sigma_min, sigma_max, model)
        ts = sigma_to_t(sig, log_train)
    return ts, sig
