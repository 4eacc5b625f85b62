"""ComfyUI's model sampling and noise schedules, as float64 NumPy, equal to ComfyUI.

ComfyUI (comfyanonymous/ComfyUI) samples every model in the variance-exploding variable of
k-diffusion (Karras et al. 2022, sec. 2): a sample at level σ is x = x_0 + σ ε for
ε-, v- and x_0-models, or x = (1 - σ) x_0 + σ ε for rectified-flow models. A model's
*model sampling* (``comfy/model_sampling.py``) holds its ascending table of trained σ's and
the maps between σ and the timestep the network takes; a *scheduler* turns that table into
the descending σ list of an N-step loop. This module gives both, written from what they
compute:

Model sampling (:class:`ModelSampling`, :func:`model_sampling`):

* discrete (``eps``, ``v``, ``x0``; Ho et al. 2020): betas β_i of a named schedule over T
  steps (``linear``: evenly spaced in sqrt(β), diffusers' scaled_linear), ᾱ_i = Π (1 - β_j),
  the table σ_i = sqrt((1 - ᾱ_i) / ᾱ_i) (1); with ``zsnr`` sqrt(ᾱ) is shifted and scaled to
  end at 0 (Lin et al. 2023, Alg. 1) and ᾱ_{T-1} set to 4.8973451890853435e-08 so σ stays
  finite. timestep(σ) is the *nearest* table index in log σ (2), not an interpolation;
  its inverse σ(t) interpolates log σ linearly between table entries, t clamped to [0, T-1]
  (3);
* ``lcm`` (Luo et al. 2023): every 20th entry of the discrete table (50 entries, k = 0..49
  the index 20 k + 19); timestep = 20 k + 19 of the nearest entry k;
* ``flow`` (rectified flow, Esser et al. 2024): table σ_i = s u / (1 + (s - 1) u), u = i/T,
  i = 1..T (eq. 23 of the paper, shift s), timestep = σ · multiplier (4), σ(t) = the shift of
  t / multiplier;
* ``flux``: table σ_i = e^μ / (e^μ + 1/u - 1), u = i/T (T = 10000; μ = ``shift``), timestep = σ.

Note (4): ComfyUI's flow timestep is the *shifted* σ times the multiplier, and σ(t) shifts
again, so schedules built on σ(t) (normal, sgm_uniform) shift a shifted level. Reproduced.

Schedulers (:func:`scheduler_sigmas`, ComfyUI's ``calculate_sigmas``; N + 1 levels ending in
0, except where said):

* ``simple``: σ_table[T - 1 - floor(i T / N)], i = 0..N-1;
* ``sgm_uniform``: σ(t) at N points evenly spaced from timestep(σ_max) to timestep(σ_min),
  the last point left out (the SGM/"trailing" spacing);
* ``normal``: the same with both ends (N points); where σ(end) is 0 (abs 1e-5) N + 1
  points and no appended 0;
* ``karras``: Karras et al. 2022, eq. 5, ρ = 7, between the table's σ_min and σ_max;
* ``exponential``: evenly in log σ between σ_max and σ_min;
* ``ddim_uniform``: the table strided by T // N from index 1 upwards (so it can give more
  than N steps and starts below σ_max); when σ_table[1] is 0, N + 1 is used and no 0 added;
* ``beta``: Lee et al. 2024: table indices rint(F⁻¹(1 - i/N) (T - 1)) with F the
  Beta(0.6, 0.6) CDF, repeats dropped (so it can give fewer than N steps);
* ``linear_quadratic`` (Genmo's Mochi): 1 - (a linear ramp for N//2 steps to 0.025, then a
  quadratic to 1), times σ_max;
* ``kl_optimal`` (Zheng et al. 2024 / A1111): σ_i = tan((1 - i/(N-1)) atan σ_max + i/(N-1)
  atan σ_min); one step is σ_max, then 0 (as ComfyUI since its fix of the 0/0 there; the
  oracle's older ComfyUI gives NaN).

:func:`ksampler_sigmas` adds what ComfyUI's ``KSampler`` does around them:
DISCARD_PENULTIMATE (dpm_2, dpm_2_ancestral, uni_pc, uni_pc_bh2 ask for N + 1 steps and drop
the second-to-last level) and partial denoise d < 1 (the last N + 1 levels of the
int(N / d)-step schedule).

ComfyUI computes these in float32 (its tables and ``torch.FloatTensor`` lists); here they
are float64, equal to ComfyUI run in float64 (the parity oracle's ``precision="float64"``)
to about 1e-15, and within about 1e-6 of ComfyUI's float32 numbers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from . import ays

# -- model sampling ------------------------------------------------------------------------

MODELS = ("eps", "v", "x0", "lcm", "flow", "flux")
DISCRETE_MODELS = ("eps", "v", "x0", "lcm")
BETA_SCHEDULES = ("linear", "cosine", "squaredcos_cap_v2", "sqrt_linear", "sqrt")
# ComfyUI's model-sampling settings per model (its ``sampling_settings`` keys, defaults)
SETTINGS = {
    **{
        m: {"linear_start": 0.00085, "linear_end": 0.012, "beta_schedule": "linear",
            "timesteps": 1000, "zsnr": False}
        for m in DISCRETE_MODELS
    },
    "flow": {"shift": 1.0, "multiplier": 1000.0, "timesteps": 1000},
    "flux": {"shift": 1.15, "timesteps": 10000},
}  # fmt: skip
ZSNR_ALPHA_BAR = 4.8973451890853435e-08  # ComfyUI's ᾱ_{T-1} under zsnr (σ_max ≈ 4518.76)
LCM_STEPS = 50  # the distilled table of the LCM model sampling (original_timesteps)
MAX_TIMESTEPS = 100_000  # the most training steps of a model sampling (ComfyUI's: 1000, 10000)
COSINE_S = 8e-3


@dataclass(frozen=True)
class ModelSampling:
    """ComfyUI's model sampling: the ascending σ table and the σ <-> timestep maps.

    Build it with :func:`model_sampling`; ``table`` (ascending σ's) replaces the betas of
    a discrete model (how a diffsched class's own training σ's become a ComfyUI table).
    """

    kind: str = "eps"
    linear_start: float = 0.00085
    linear_end: float = 0.012
    beta_schedule: str = "linear"
    timesteps: int = 1000
    zsnr: bool = False
    shift: float = 1.0
    multiplier: float = 1000.0
    table: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in MODELS:
            raise ValueError(f"ModelSampling kind must be one of {MODELS}, got: {self.kind!r}")

    @property
    def discrete(self) -> bool:
        """Whether timesteps are table indices (eps, v, x0, lcm)."""
        return self.kind in DISCRETE_MODELS

    @property
    def flow(self) -> bool:
        """Whether the sample is x = (1 - σ) x_0 + σ ε (flow, flux: ComfyUI's CONST)."""
        return self.kind in ("flow", "flux")

    @property
    def sigmas(self) -> np.ndarray:
        """The ascending σ table, float64, read-only."""
        return _table(self)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: Any) -> np.ndarray:
        """The network's timestep of each σ, float64: the nearest table index in log σ (2)
        for discrete models (20 k + 19 for lcm), σ · multiplier for flow, σ for flux."""
        sigma = np.asarray(sigma, dtype=np.float64)
        if self.kind == "flow":
            return sigma * self.multiplier
        if self.kind == "flux":
            return sigma.copy()
        log_table = _log_table(self)
        with np.errstate(divide="ignore"):
            dist = np.abs(np.log(sigma)[..., None] - log_table)
        index = np.argmin(dist, axis=-1).astype(np.float64)  # the first of equals, as torch
        if self.kind == "lcm":
            skip = self._skip
            return index * skip + (skip - 1)
        return index

    def sigma(self, t: Any) -> np.ndarray:
        """σ of a (fractional) timestep: log-linear interpolation of the table for discrete
        models (3), the shift of t / multiplier for flow, the flux shift of t for flux."""
        t = np.asarray(t, dtype=np.float64)
        if self.kind == "flow":
            return _flow_shift(self.shift, t / self.multiplier)
        if self.kind == "flux":
            return _flux_shift(self.shift, t)
        if self.kind == "lcm":
            skip = self._skip
            t = (t - (skip - 1)) / skip
        log_table = _log_table(self)
        t = np.clip(t, 0, len(log_table) - 1)
        low = np.floor(t).astype(np.int64)
        high = np.ceil(t).astype(np.int64)
        w = t - low
        return np.exp((1 - w) * log_table[low] + w * log_table[high])

    def percent_to_sigma(self, percent: float) -> float:
        """σ at a fraction ``percent`` of the way through sampling (0: the start)."""
        percent = float(percent)
        if percent <= 0.0:
            return 1.0 if self.flow else 999999999.9
        if percent >= 1.0:
            return 0.0
        if self.kind == "flow":
            return float(_flow_shift(self.shift, 1.0 - percent))
        if self.kind == "flux":
            return float(_flux_shift(self.shift, 1.0 - percent))
        return float(self.sigma((1.0 - percent) * 999.0))

    def max_denoise(self, sigma0: float) -> bool:
        """Whether a loop starting at ``sigma0`` starts from pure noise (ComfyUI's rule:
        σ_0 within 1e-5 relative of σ_max, or above it)."""
        hi, s = self.sigma_max, float(sigma0)
        return math.isclose(hi, s, rel_tol=1e-05) or s > hi

    def noise_scaling(self, sigma0: float, max_denoise: bool | None = None) -> tuple[float, float]:
        """(a, b) of the loop's first sample x = a · noise + b · latent.

        eps/v/x0/lcm: a = sqrt(1 + σ_0²) when ``max_denoise`` (default: :meth:`max_denoise`),
        else σ_0; b = 1. flow/flux: a = σ_0, b = 1 - σ_0."""
        s = float(sigma0)
        if self.flow:
            return s, 1.0 - s
        if max_denoise is None:
            max_denoise = self.max_denoise(s)
        return (math.sqrt(1.0 + s**2.0) if max_denoise else s), 1.0

    def inverse_noise_scaling(self, sigma_last: float) -> float:
        """The factor of the loop's result: 1 / (1 - σ_last) for flow/flux, else 1."""
        return 1.0 / (1.0 - float(sigma_last)) if self.flow else 1.0

    def input_scale(self, sigma: Any) -> np.ndarray:
        """The model input's factor of x (ComfyUI's calculate_input): 1/sqrt(σ² + 1), or 1
        for flow/flux."""
        sigma = np.asarray(sigma, dtype=np.float64)
        if self.flow:
            return np.ones_like(sigma)
        return 1.0 / (sigma**2 + 1.0) ** 0.5

    def denoised_coefficients(self, sigma: Any) -> tuple[np.ndarray, np.ndarray]:
        """(c_x, c_out) with x̂_0 = c_x · x + c_out · output (calculate_denoised), x the
        held sample and output the raw network output.

        eps: (1, -σ); v: (1/(σ²+1), -σ/sqrt(σ²+1)); x0: (0, 1); flow/flux: (1, -σ); lcm: the
        eps estimate mixed by LCM's boundary condition, c_skip = 0.25 / (s² + 0.25), c_out =
        s / sqrt(s² + 0.25), s = 10 · timestep(σ) (Luo et al. 2023, eq. 9, σ_data = 0.5)."""
        sigma = np.asarray(sigma, dtype=np.float64)
        one = np.ones_like(sigma)
        if self.kind in ("eps", "flow", "flux"):
            return one, -sigma
        if self.kind == "v":
            return 1.0 / (sigma**2 + 1.0), -sigma / (sigma**2 + 1.0) ** 0.5
        if self.kind == "x0":
            return np.zeros_like(sigma), one
        s = self.timestep(sigma) * 10.0
        c_skip = 0.25 / (s**2 + 0.25)
        c_out = s / (s**2 + 0.25) ** 0.5
        return c_out + c_skip, -c_out * sigma

    @property
    def _skip(self) -> int:
        return self.timesteps // LCM_STEPS


def model_sampling(model: str = "eps", **settings: Any) -> ModelSampling:
    """ComfyUI's model sampling of ``model`` ("eps", "v", "x0", "lcm", "flow", "flux") with
    its ``sampling_settings`` keys: discrete models ``linear_start``, ``linear_end``,
    ``beta_schedule``, ``timesteps``, ``zsnr``; flow ``shift`` (1.0), ``multiplier``
    (1000), ``timesteps``; flux ``shift`` (μ, 1.15), ``timesteps`` (10000)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got: {model!r}")
    allowed = SETTINGS[model]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise TypeError(
            f"model {model!r} takes the settings {sorted(allowed)}, got unknown: {unknown}"
        )
    values = {**allowed, **settings}
    for name, value in values.items():
        default = allowed[name]
        if isinstance(default, bool):
            if not isinstance(value, bool | np.bool_):
                raise TypeError(f"setting {name} must be True or False, got: {value!r}")
        elif isinstance(default, str):
            if value not in BETA_SCHEDULES:
                raise ValueError(f"setting {name} must be one of {BETA_SCHEDULES}, got: {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"setting {name} must be a positive integer, got: {value!r}")
        elif (
            isinstance(value, bool)
            or not isinstance(value, int | float | np.number)
            or not math.isfinite(value)
            or (name != "shift" and value <= 0)
        ):
            raise ValueError(f"setting {name} must be a finite positive number, got: {value!r}")
    if values["timesteps"] > MAX_TIMESTEPS:  # a table of that many levels, built here
        raise ValueError(
            f"setting timesteps must be at most {MAX_TIMESTEPS}, got: {values['timesteps']}"
        )
    if model == "lcm" and values["timesteps"] < LCM_STEPS:
        raise ValueError(
            f"the lcm model needs timesteps >= {LCM_STEPS}, got: {values['timesteps']}"
        )
    if model == "flow" and values["shift"] <= 0:
        raise ValueError(f"setting shift must be positive, got: {values['shift']!r}")
    return ModelSampling(kind=model, **values)


def from_table(model: str, sigmas: Any) -> ModelSampling:
    """A discrete model sampling (``model`` in eps, v, x0) on an explicit ascending σ table."""
    if model not in ("eps", "v", "x0"):
        raise ValueError(f"an explicit table takes model eps, v or x0, got: {model!r}")
    table = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if table.size < 2 or not np.all(np.isfinite(table)) or np.any(table <= 0):
        raise ValueError("the σ table must hold at least 2 finite positive levels")
    if np.any(np.diff(table) < 0):
        raise ValueError("the σ table must be ascending")
    return ModelSampling(kind=model, timesteps=int(table.size), table=tuple(table.tolist()))


def _betas(ms: ModelSampling) -> np.ndarray:
    """The training betas of ComfyUI's ``make_beta_schedule`` (float64)."""
    n, lo, hi = ms.timesteps, ms.linear_start, ms.linear_end
    if ms.beta_schedule == "linear":  # evenly spaced in sqrt(β) (diffusers' scaled_linear)
        return linspace(lo**0.5, hi**0.5, n) ** 2
    if ms.beta_schedule == "cosine":  # Nichol & Dhariwal 2021, eq. 17, from ᾱ at t/T + s
        t = np.arange(n + 1, dtype=np.float64) / n + COSINE_S
        a = np.cos(t / (1 + COSINE_S) * np.pi / 2) ** 2
        a = a / a[0]
        return np.clip(1 - a[1:] / a[:-1], 0.0, 0.999)
    if ms.beta_schedule == "squaredcos_cap_v2":  # the same from ᾱ(t) at i/T, capped at 0.999

        def abar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)])
    if ms.beta_schedule == "sqrt_linear":
        return linspace(lo, hi, n)
    return linspace(lo, hi, n) ** 0.5  # "sqrt"


def _rescale_zero_snr(sigmas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, Alg. 1 on σ: sqrt(ᾱ) shifted to end at 0 and scaled to keep its
    start; then ᾱ_{T-1} = ZSNR_ALPHA_BAR (finite σ_max)."""
    root = (1 / (sigmas * sigmas + 1)) ** 0.5
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    abar = root**2
    abar[-1] = ZSNR_ALPHA_BAR
    return ((1 - abar) / abar) ** 0.5


def _flow_shift(shift: float, u: Any) -> Any:
    """σ' = s u / (1 + (s - 1) u) (Esser et al. 2024, eq. 23); the identity at s = 1."""
    if shift == 1.0:
        return u
    return shift * u / (1 + (shift - 1) * u)


def _flux_shift(mu: float, u: Any) -> Any:
    """σ = e^μ / (e^μ + 1/u - 1): the flux (logit-normal) time shift at μ."""
    e = math.exp(mu)
    with np.errstate(divide="ignore"):
        return e / (e + (1 / np.asarray(u, dtype=np.float64) - 1))


@functools.lru_cache(maxsize=64)
def _table(ms: ModelSampling) -> np.ndarray:
    if ms.table is not None:
        out = np.array(ms.table, dtype=np.float64)
    elif ms.kind == "flow":
        t = np.arange(1, ms.timesteps + 1) / ms.timesteps * ms.multiplier
        out = np.asarray(_flow_shift(ms.shift, t / ms.multiplier), dtype=np.float64)
    elif ms.kind == "flux":
        out = _flux_shift(ms.shift, np.arange(1, ms.timesteps + 1) / ms.timesteps)
    else:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            abar = np.cumprod(1.0 - _betas(ms))  # ᾱ = 0 (β = 1): σ = inf, refused by the
            out = ((1 - abar) / abar) ** 0.5  # (1)  classes with the β's that gave it
            if ms.zsnr:
                out = _rescale_zero_snr(out)
        if ms.kind == "lcm":  # every skip-th level, ending at the last: index skip k + skip - 1
            skip = ms._skip
            out = out[ms.timesteps - 1 - skip * np.arange(LCM_STEPS)[::-1]]
    out = np.array(out, dtype=np.float64)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=64)
def _log_table(ms: ModelSampling) -> np.ndarray:
    with np.errstate(divide="ignore"):
        out = np.log(_table(ms))
    out.setflags(write=False)
    return out


# -- the KSampler schedulers -----------------------------------------------------------------

KSAMPLER_SCHEDULERS = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform",
                       "beta", "normal", "linear_quadratic", "kl_optimal")  # fmt: skip
DISCARD_PENULTIMATE_SAMPLERS = ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2")


def linspace(start: float, end: float, n: int) -> np.ndarray:
    """n points from start to end as torch.linspace gives them, float64: each from its
    nearer end, start + i·step over the first half and end - (n - 1 - i)·step over the
    second, step = (end - start)/(n - 1), each rounded once (torch's vector kernels fuse the
    multiply-add; rounding the product first differs in the last bit at 15% of a table)."""
    start, end = float(start), float(end)
    if n == 1:
        return np.array([start])
    step = (end - start) / (n - 1)
    if not (math.isfinite(start) and math.isfinite(end) and math.isfinite(step)):
        i = np.arange(n, dtype=np.float64)
        return np.where(i < n // 2, start + step * i, end - step * (n - 1 - i))
    first, last, exact = Fraction(start), Fraction(end), Fraction(step)
    half = n // 2
    return np.array(
        [float(first + exact * i) if i < half else float(last - exact * (n - 1 - i))
         for i in range(n)]
    )  # fmt: skip


def _with_zero(levels: Any) -> np.ndarray:
    return np.append(np.asarray(levels, dtype=np.float64), 0.0)


def simple(ms: ModelSampling, steps: int) -> np.ndarray:
    """σ_table[T - 1 - floor(i T / N)], i = 0..N-1, then 0."""
    table = ms.sigmas
    stride = len(table) / steps
    return _with_zero([table[-(1 + int(i * stride))] for i in range(steps)])


def ddim_uniform(ms: ModelSampling, steps: int) -> np.ndarray:
    """The table from index 1 upwards, every T // N-th level, descending; a 0 appended unless
    σ_table[1] is 0 (then one more step is asked for)."""
    table = ms.sigmas
    head: list[float] = [0.0]
    if math.isclose(float(table[1]), 0, abs_tol=0.00001):
        steps += 1
        head = []
    stride = max(len(table) // steps, 1)
    return np.asarray((head + [float(s) for s in table[1::stride]])[::-1], dtype=np.float64)


def normal(ms: ModelSampling, steps: int, sgm: bool = False) -> np.ndarray:
    """σ(t) at timesteps evenly spaced from timestep(σ_max) to timestep(σ_min) (sgm: N + 1
    points, the last dropped; else N, or N + 1 without a final 0 where σ(end) is 0)."""
    start = float(ms.timestep(ms.sigma_max))
    end = float(ms.timestep(ms.sigma_min))
    zero = True
    if sgm:
        ts = linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            zero = False
        ts = linspace(start, end, steps)
    sig = ms.sigma(ts)
    return _with_zero(sig) if zero else np.asarray(sig, dtype=np.float64)


def sgm_uniform(ms: ModelSampling, steps: int) -> np.ndarray:
    """:func:`normal` with the SGM spacing (N + 1 points, the last dropped)."""
    return normal(ms, steps, sgm=True)


def beta(ms: ModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Lee et al. 2024: the table at indices rint(F⁻¹(1 - i/N) (T - 1)), F the Beta(α, β)
    CDF, i = 0..N-1, a repeated index dropped, then 0."""
    from scipy.stats import beta as beta_distribution

    last = len(ms.sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    index = np.rint(beta_distribution.ppf(quantiles, alpha, beta) * last)
    levels, previous = [], -1.0
    for t in index:
        if t != previous:
            levels.append(ms.sigmas[int(t)])
        previous = t
    return _with_zero(levels)


def linear_quadratic(
    ms: ModelSampling, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> np.ndarray:
    """Genmo's Mochi schedule: 1 - (i · thr / L for i < L, then a quadratic in i reaching 1
    at i = N with matching slope), times σ_max (L = N // 2)."""
    if steps == 1:
        levels = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        ramp = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        excess = linear_steps - threshold_noise * steps
        quad_steps = steps - linear_steps
        qa = excess / (linear_steps * quad_steps**2)
        qb = threshold_noise / linear_steps - 2 * excess / (quad_steps**2)
        qc = qa * (linear_steps**2)
        quad = [qa * (i**2) + qb * i + qc for i in range(linear_steps, steps)]
        levels = [1.0 - x for x in ramp + quad + [1.0]]
    return np.asarray(levels, dtype=np.float64) * ms.sigma_max


def kl_optimal(steps: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """σ_i = tan((1 - i/(N-1)) atan σ_max + i/(N-1) atan σ_min), then 0; one step is
    σ_max, then 0 (i/(N-1) read as 0: ComfyUI's fix of its NaN there)."""
    if steps == 1:
        return _with_zero([sigma_max])
    w = np.arange(steps, dtype=np.float64) / (steps - 1)
    return _with_zero(np.tan(w * math.atan(sigma_min) + (1 - w) * math.atan(sigma_max)))


def karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: N levels evenly spaced in σ^(1/ρ), then 0."""
    ramp = linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _with_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(steps: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """N levels evenly spaced in log σ from σ_max to σ_min, then 0."""
    return _with_zero(np.exp(linspace(math.log(sigma_max), math.log(sigma_min), steps)))


_TABLE_SCHEDULERS = {
    "simple": simple, "sgm_uniform": sgm_uniform, "ddim_uniform": ddim_uniform, "beta": beta,
    "normal": normal, "linear_quadratic": linear_quadratic,
}  # fmt: skip
_RANGE_SCHEDULERS = {"karras": karras, "exponential": exponential, "kl_optimal": kl_optimal}


def _check_steps(steps: Any, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"{name} must be a positive integer, got: {steps!r}")
    return int(steps)


def scheduler_sigmas(name: str, ms: ModelSampling, steps: int) -> np.ndarray:
    """ComfyUI's ``calculate_sigmas``: the descending σ's of scheduler ``name`` (one of
    :data:`KSAMPLER_SCHEDULERS`) for ``steps`` steps on model sampling ``ms``."""
    if name not in KSAMPLER_SCHEDULERS:
        raise ValueError(f"scheduler must be one of {KSAMPLER_SCHEDULERS}, got: {name!r}")
    if not isinstance(ms, ModelSampling):
        raise TypeError(f"ms must be a ModelSampling (see model_sampling()), got: {ms!r}")
    steps = _check_steps(steps)
    if name in _RANGE_SCHEDULERS:
        return _RANGE_SCHEDULERS[name](steps, ms.sigma_min, ms.sigma_max)
    return _TABLE_SCHEDULERS[name](ms, steps)


def ksampler_sigmas(
    scheduler: str,
    steps: int,
    ms: ModelSampling,
    *,
    discard_penultimate: bool = False,
    denoise: float = 1.0,
) -> np.ndarray:
    """The σ's ComfyUI's ``KSampler`` samples with: with ``discard_penultimate`` (the
    samplers of :data:`DISCARD_PENULTIMATE_SAMPLERS`) N + 1 steps are asked for and the
    second-to-last level dropped; with ``denoise`` d in (0, 0.9999] the last N + 1 levels of
    the int(N / d)-step list (partial denoise); d <= 0 gives an empty list."""
    steps = _check_steps(steps)
    if isinstance(denoise, bool) or not isinstance(denoise, int | float | np.floating):
        raise TypeError(f"denoise must be a number, got: {denoise!r}")
    if not math.isfinite(denoise):
        raise ValueError(f"denoise must be finite, got: {denoise!r}")

    def levels(n: int) -> np.ndarray:
        if discard_penultimate:
            out = scheduler_sigmas(scheduler, ms, n + 1)
            return np.concatenate([out[:-2], out[-1:]])
        return scheduler_sigmas(scheduler, ms, n)

    if denoise > 0.9999:
        return levels(steps)
    if denoise <= 0.0:
        return np.zeros(0)
    return levels(int(steps / denoise))[-(steps + 1) :]


# -- the custom-sampling schedule nodes ------------------------------------------------------

# Optimal Stepsize for diffusion sampling (Pei et al. 2025, "Optimal Stepsize for Diffusion
# Sampling", github.com/bebebe666/OptimalSteps): the searched flow levels, last level σ_min
OPTIMAL_STEPS_LEVELS = {
    "FLUX": (0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808,
             0.001),
    "Wan": (1.0, 0.997, 0.995, 0.993, 0.991, 0.989, 0.987, 0.985, 0.98, 0.975, 0.973, 0.968,
            0.96, 0.946, 0.927, 0.902, 0.864, 0.776, 0.539, 0.208, 0.001),
    "Chroma": (0.992, 0.99, 0.988, 0.985, 0.982, 0.978, 0.973, 0.968, 0.961, 0.953, 0.943,
               0.931, 0.917, 0.9, 0.881, 0.858, 0.832, 0.802, 0.769, 0.731, 0.69, 0.646, 0.599,
               0.55, 0.501, 0.451, 0.402, 0.355, 0.311, 0.27, 0.232, 0.199, 0.169, 0.143, 0.12,
               0.101, 0.084, 0.07, 0.058, 0.048, 0.001),
}  # fmt: skip
AYS_MODEL_TYPES = ("SD1", "SDXL", "SVD")
SVD_SIGMA_MIN = 0.002  # the last level of ComfyUI's SVD list (EDM's σ_min)
GITS_COEFFS = tuple(round(0.80 + 0.05 * i, 2) for i in range(15))
# the custom-sampling nodes' default σ range (SD1.5's float32 table ends)
NODE_SIGMA_MAX, NODE_SIGMA_MIN = 14.614642, 0.0291675
NODES = ("ays", "gits", "optimal_steps", "ltxv", "karras", "exponential", "polyexponential",
         "laplace", "vp", "sd_turbo", "beta_sampling", "basic")  # fmt: skip


def _partial(levels: Any, steps: int, denoise: float) -> np.ndarray:
    """The tail of an interpolated published list for ``denoise`` (round(N d) steps), the last
    level set to 0: the AYS, GITS and Optimal Steps nodes."""
    if denoise < 1.0:
        if denoise <= 0.0:
            return np.zeros(0)
        total = round(steps * denoise)
    else:
        total = steps
    levels = np.array(levels, dtype=np.float64)
    if steps + 1 != len(levels):
        levels = ays.loglinear(levels, steps + 1)
    out = np.array(levels[-(total + 1) :], dtype=np.float64)
    out[-1] = 0.0
    return out


@functools.lru_cache(maxsize=4)
def ays_levels(model_type: str) -> np.ndarray:
    """ComfyUI's 11-level Align Your Steps list (Sabour et al. 2024): SD1/SDXL the SD1.5
    table's σ at the published timesteps (:data:`diffsched.schedules.ays.TIMESTEPS`) and at
    t = 0, rounded to 10 decimals; SVD the published σ's with σ_min = 0.002 last."""
    if model_type not in AYS_MODEL_TYPES:
        raise ValueError(f"model_type must be one of {AYS_MODEL_TYPES}, got: {model_type!r}")
    if model_type == "SVD":
        out = np.array((*ays.SIGMAS["svd"][:-1], SVD_SIGMA_MIN))
    else:
        table = model_sampling("eps").sigmas
        index = (*ays.TIMESTEPS["sd15" if model_type == "SD1" else "sdxl"], 0)
        out = np.array([round(float(table[t]), 10) for t in index])
    out.setflags(write=False)
    return out


def align_your_steps(steps: int, model_type: str = "SD1", denoise: float = 1.0) -> np.ndarray:
    """ComfyUI's AlignYourStepsScheduler: :func:`ays_levels`, log-linearly interpolated to
    N + 1 levels (unless N = 10), the last set to 0; denoise < 1 keeps the last round(N d)
    steps."""
    return _partial(ays_levels(model_type), _check_steps(steps), denoise)


def gits(steps: int, coeff: float = 1.20, denoise: float = 1.0) -> np.ndarray:
    """ComfyUI's GITSScheduler (:mod:`diffsched.schedules.gits`): the published schedule of
    N <= 20 steps, or the 20-step one log-linearly interpolated to N + 1 levels; the last
    set to 0."""
    from . import gits as gits_data

    steps = _check_steps(steps)
    if steps < 2:
        raise ValueError(f"GITS needs at least 2 steps, got: {steps}")
    key = round(float(coeff), 2)
    if key not in gits_data.SCHEDULES:
        raise ValueError(f"GITS coeff must be one of {GITS_COEFFS}, got: {coeff!r}")
    index = gits_data.SCHEDULES[key][min(steps, 20) - 2]
    return _partial([gits_data.LEVELS[i] for i in index], steps, denoise)


def optimal_steps(steps: int, model_type: str = "FLUX", denoise: float = 1.0) -> np.ndarray:
    """ComfyUI's OptimalStepsScheduler (Pei et al. 2025): the searched levels of FLUX (10
    steps), Wan (20) or Chroma (40), log-linearly interpolated to N + 1, the last set to 0."""
    if model_type not in OPTIMAL_STEPS_LEVELS:
        raise ValueError(
            f"model_type must be one of {tuple(OPTIMAL_STEPS_LEVELS)}, got: {model_type!r}"
        )
    return _partial(OPTIMAL_STEPS_LEVELS[model_type], _check_steps(steps), denoise)


def ltxv(
    steps: int,
    max_shift: float = 2.05,
    base_shift: float = 0.95,
    stretch: bool = True,
    terminal: float = 0.1,
    tokens: int = 4096,
) -> np.ndarray:
    """ComfyUI's LTXVScheduler (LTX-Video, HaCohen et al. 2024): u evenly from 1 to 0 (N + 1),
    σ = e^μ / (e^μ + 1/u - 1) with μ linear in the token count (``base_shift`` at 1024,
    ``max_shift`` at 4096), then (``stretch``) 1 - σ scaled so the last nonzero level is
    ``terminal``."""
    steps = _check_steps(steps)
    u = linspace(1.0, 0.0, steps + 1)
    slope = (max_shift - base_shift) / (4096 - 1024)
    mu = tokens * slope + (base_shift - slope * 1024)
    e = math.exp(mu)
    with np.errstate(divide="ignore"):
        sig = np.where(u != 0, e / (e + (1 / u - 1)), 0.0)
    if stretch:
        if steps < 2:
            raise ValueError("the ltxv schedule with stretch=True needs at least 2 steps "
                             "(ComfyUI returns NaN for 1)")  # fmt: skip
        live = sig != 0
        gap = 1.0 - sig[live]
        scale = gap[-1] / (1.0 - terminal)
        sig[live] = 1.0 - gap / scale
    return sig


def polyexponential(
    steps: int, sigma_max: float = NODE_SIGMA_MAX, sigma_min: float = NODE_SIGMA_MIN,
    rho: float = 1.0,
) -> np.ndarray:  # fmt: skip
    """k-diffusion's polyexponential: log σ = log σ_min + r^ρ (log σ_max - log σ_min), r
    evenly from 1 to 0 (N levels), then 0."""
    ramp = linspace(1, 0, _check_steps(steps)) ** rho
    lo = math.log(sigma_min)
    return _with_zero(np.exp(ramp * (math.log(sigma_max) - lo) + lo))


def laplace(
    steps: int, sigma_max: float = NODE_SIGMA_MAX, sigma_min: float = NODE_SIGMA_MIN,
    mu: float = 0.0, beta: float = 0.5,
) -> np.ndarray:  # fmt: skip
    """Tiankai et al. 2024 ("Improved Noise Schedule for Diffusion Training"): log σ =
    μ - β sgn(1/2 - x) log(1 - 2|1/2 - x| + 1e-5), x evenly in [0, 1] (N levels), σ clamped
    to [σ_min, σ_max]; no final 0."""
    x = linspace(0, 1, _check_steps(steps))
    lam = mu - beta * np.sign(0.5 - x) * np.log(1 - 2 * np.abs(0.5 - x) + 1e-5)
    return np.clip(np.exp(lam), sigma_min, sigma_max)


def vp(steps: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 0.001) -> np.ndarray:
    """The continuous VP SDE's σ (Song et al. 2021; Karras et al. 2022, Table 1):
    σ(t) = sqrt(exp(β_d t²/2 + β_min t) - 1), t evenly from 1 to ε_s (N levels), then 0."""
    t = linspace(1, eps_s, _check_steps(steps))
    return _with_zero(np.sqrt(np.expm1(beta_d * t**2 / 2 + beta_min * t)))


def sd_turbo(ms: ModelSampling, steps: int, denoise: float = 1.0) -> np.ndarray:
    """ComfyUI's SDTurboScheduler: σ(t) at t = 999, 899, ..., 99, starting 10 - int(10 d)
    entries in, N of them, then 0."""
    start = 10 - int(10 * denoise)
    ts = (np.arange(1, 11) * 100 - 1)[::-1][start : start + _check_steps(steps)]
    return _with_zero(ms.sigma(ts.astype(np.float64)))


def basic(ms: ModelSampling, steps: int, scheduler: str = "normal", denoise: float = 1.0):
    """ComfyUI's BasicScheduler: the last N + 1 levels of the int(N / d)-step schedule."""
    steps = _check_steps(steps)
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return np.zeros(0)
        total = int(steps / denoise)
    return scheduler_sigmas(scheduler, ms, total)[-(steps + 1) :]


def node_sigmas(kind: str, steps: int, *, ms: ModelSampling | None = None, **params: Any):
    """The σ's of ComfyUI's schedule node ``kind`` (one of :data:`NODES`) for ``steps``:
    ``ays`` (model_type, denoise), ``gits`` (coeff, denoise), ``optimal_steps`` (model_type,
    denoise), ``ltxv`` (max_shift, base_shift, stretch, terminal, tokens), ``karras``
    (sigma_max, sigma_min, rho), ``exponential`` (sigma_max, sigma_min), ``polyexponential``
    (sigma_max, sigma_min, rho), ``laplace`` (sigma_max, sigma_min, mu, beta), ``vp`` (beta_d,
    beta_min, eps_s); ``sd_turbo`` (denoise), ``beta_sampling`` (alpha, beta) and ``basic``
    (scheduler, denoise) on the model sampling ``ms`` (default SD1.5's eps)."""
    import inspect

    table = {
        "ays": align_your_steps, "gits": gits, "optimal_steps": optimal_steps, "ltxv": ltxv,
        "karras": _node_karras, "exponential": _node_exponential,
        "polyexponential": polyexponential, "laplace": laplace, "vp": vp,
        "sd_turbo": sd_turbo, "beta_sampling": beta, "basic": basic,
    }  # fmt: skip
    if kind not in table:
        raise ValueError(f"node must be one of {NODES}, got: {kind!r}")
    fn = table[kind]
    names = [n for n in inspect.signature(fn).parameters if n not in ("ms", "steps")]
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise TypeError(f"node {kind!r} takes {names}, got unknown: {unknown}")
    if "ms" in inspect.signature(fn).parameters:
        return fn(model_sampling("eps") if ms is None else ms, steps, **params)
    if ms is not None:
        raise TypeError(f"node {kind!r} takes no model sampling (ms=)")
    return fn(steps, **params)


def _node_karras(
    steps: int, sigma_max: float = NODE_SIGMA_MAX, sigma_min: float = NODE_SIGMA_MIN,
    rho: float = 7.0,
) -> np.ndarray:  # fmt: skip
    return karras(_check_steps(steps), sigma_min, sigma_max, rho)


def _node_exponential(
    steps: int, sigma_max: float = NODE_SIGMA_MAX, sigma_min: float = NODE_SIGMA_MIN
) -> np.ndarray:
    return exponential(_check_steps(steps), sigma_min, sigma_max)


# -- ComfyUI's schedules as sigma_schedule= values of the σ-based classes ------------------

# computed on the class's own table (its training σ's, or its flow levels) by ComfyUI's code;
# karras, exponential (ComfyUI's too) and beta (diffusers' Beta(0.6, 0.6) in σ) are
# diffsched's older values (schedules/sigmas.py)
TABLE_SCHEDULES = (
    "simple",
    "sgm_uniform",
    "normal",
    "ddim_uniform",
    "beta_sampling",
    "linear_quadratic",
    "kl_optimal",
    "polyexponential",
    "laplace",
    "sd_turbo",
)
VE_LISTS = (
    "align_your_steps-sd1",
    "align_your_steps-sdxl",
    "align_your_steps-svd",
    "gits",
    "vp",
)  # variance-exploding σ's of their own (not the class's)
FLOW_LISTS = ("optimal_steps-flux", "optimal_steps-wan", "optimal_steps-chroma", "ltxv")
SIGMA_SCHEDULES = (*TABLE_SCHEDULES, *VE_LISTS, *FLOW_LISTS)  # fmt: skip


def flow_sampling(
    num_train_steps: int, shift: float | None = None, mu: float | None = None,
    time_shift_type: str = "exponential",
) -> ModelSampling:  # fmt: skip
    """The model sampling of a flow class's levels: ComfyUI's flow table at a static
    ``shift``, or its flux table at a dynamic ``mu`` (exponential time shift only)."""
    if mu is None:
        return model_sampling("flow", shift=float(shift or 1.0), timesteps=int(num_train_steps))
    if time_shift_type != "exponential":
        raise ValueError(
            "ComfyUI's schedules on a dynamically shifted flow grid need "
            f"time_shift_type='exponential' (its flux table), got: {time_shift_type!r}"
        )
    return model_sampling("flux", shift=float(mu), timesteps=int(num_train_steps))


def grid_sigmas(kind: str, ms: ModelSampling, num_steps: int) -> np.ndarray:
    """The N descending call levels of ``sigma_schedule=kind`` (one of
    :data:`SIGMA_SCHEDULES`) on the model sampling ``ms`` of a class: ComfyUI's list for N
    steps without its final 0 (the class appends its own final level). Table schedules run
    on ``ms``'s table and its ends; the lists are ComfyUI's nodes at their defaults (AYS,
    GITS at coeff 1.20, VP at β_d = 19.9, β_min = 0.1; Optimal Steps, LTXV for flow
    classes); laplace's N levels (it has no 0) are all call levels."""
    num_steps = _check_steps(num_steps, "num_steps")
    if kind in VE_LISTS and ms.flow:
        raise ValueError(
            f"sigma_schedule={kind!r} lists variance-exploding σ's; a flow grid takes "
            f"{TABLE_SCHEDULES + FLOW_LISTS}"
        )
    if kind in FLOW_LISTS and not ms.flow:
        raise ValueError(
            f"sigma_schedule={kind!r} lists flow levels; a variance-exploding grid takes "
            f"{TABLE_SCHEDULES + VE_LISTS}"
        )
    lo, hi = ms.sigma_min, ms.sigma_max
    if kind in ("simple", "sgm_uniform", "normal", "ddim_uniform", "linear_quadratic"):
        out = _TABLE_SCHEDULERS[kind](ms, num_steps)
    elif kind == "beta_sampling":
        out = beta(ms, num_steps)
    elif kind == "kl_optimal":
        out = kl_optimal(num_steps, lo, hi)
    elif kind == "polyexponential":
        out = polyexponential(num_steps, hi, lo)
    elif kind == "laplace":
        out = np.append(laplace(num_steps, hi, lo), 0.0)
    elif kind == "sd_turbo":
        out = sd_turbo(ms, num_steps)
    elif kind.startswith("align_your_steps-"):
        out = align_your_steps(num_steps, kind.removeprefix("align_your_steps-").upper())
    elif kind == "gits":
        out = gits(num_steps)
    elif kind == "vp":
        out = vp(num_steps)
    elif kind.startswith("optimal_steps-"):
        name = {"flux": "FLUX", "wan": "Wan", "chroma": "Chroma"}[kind.split("-")[1]]
        out = optimal_steps(num_steps, name)
    elif kind == "ltxv":
        out = ltxv(num_steps)
    else:
        raise ValueError(f"sigma_schedule must be one of {SIGMA_SCHEDULES}, got: {kind!r}")
    if len(out) != num_steps + 1:
        raise ValueError(
            f"sigma_schedule={kind!r} gives {len(out) - 1} steps for num_steps={num_steps} "
            "(ComfyUI's schedule changes the count here); take another step count, or pass "
            "its levels as a custom grid (init(None, x, sigmas=...))"
        )
    return np.asarray(out[:-1], dtype=np.float64)
