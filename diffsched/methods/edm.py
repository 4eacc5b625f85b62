"""EDM Euler: Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models".

The network F is wrapped into a denoiser by EDM's preconditioning (eq. 7; Table 1, "Ours"):

    D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ))                          (eq. 7)
    c_skip = σ_data² / (σ² + σ_data²),   c_out = σ σ_data / sqrt(σ² + σ_data²),
    c_in = 1 / sqrt(σ² + σ_data²),       c_noise = ¼ ln σ                            (Table 1)

(diffusers' ``v_prediction`` negates c_out). Euler's method integrates the probability-flow
ODE dx/dσ = (x - D(x; σ)) / σ (eq. 1 and 3 with σ(t) = t) over a σ grid, optionally with
churn (Alg. 2, lines 4-6: γ_i = min(S_churn / N, sqrt(2) - 1) on S_tmin <= σ_i <= S_tmax,
σ̂_i = (γ_i + 1) σ_i, x̂_i = x_i + sqrt(σ̂_i² - σ_i²) S_noise z; σ̂ = σ, x̂ = x without):

    x_{i+1} = x̂_i + (σ_{i+1} - σ̂_i) (x̂_i - D(x̂_i; σ̂_i)) / σ̂_i              (Alg. 2, l. 7-8)

where, as in diffusers, the model has seen c_in(σ_i) x_i and the preconditioning is taken at
σ̂_i. The grid, N levels and a final one (0, or the grid's last level):

    karras:       σ_i = (σ_max^(1/ρ) + i/(N-1) (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ        (eq. 5)
    exponential:  σ_{N-1-i} = exp(ln σ_min + i/(N-1) (ln σ_max - ln σ_min))

(a single exponential step sits at σ_min, as in diffusers). The model is called on
c_in(σ_i) x_i: that is the sample this scheduler holds (``input_scale`` = 1 / c_in), and its
timestep is c_noise(σ_i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families, predictions
from ..core.engine import SAMPLE, X0, Tableau
from ..core.options import option
from ..core.scheduler import (
    MAX_SIGMA_DATA,
    MAX_TRAIN_STEPS,
    BaseScheduler,
    BrownianNoise,
    Churn,
    document,
)
from ..schedules import sigmas as sigma_schedules
from ._img2img import first_call

SIGMA_SCHEDULES = ("karras", "exponential")


class EDMDenoiser:
    """EDM's preconditioned denoiser (eq. 7, Table 1) for a class with :class:`EDMEuler`'s
    options σ_min, σ_max, σ_data and prediction_type: their check, c_skip and c_out, and the
    native sample x = x_0 + σ ε of a call at timestep c_noise = ¼ ln σ."""

    def _check(self) -> None:
        if self.sigma_min >= self.sigma_max:  # type: ignore[attr-defined]
            raise ValueError(
                f"{type(self).__name__} option sigma_min must be below "
                f"sigma_max={self.sigma_max}, got: {self.sigma_min}"  # type: ignore[attr-defined]
            )

    def preconditioning(self, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c_skip, c_out) of eq. 7 at each σ: D = c_skip x + c_out F, c_out negated for
        angular_velocity (diffusers' v_prediction)."""
        data = self.sigma_data  # type: ignore[attr-defined]
        c_skip = data**2 / (sigma**2 + data**2)
        c_out = sigma * data / np.sqrt(sigma**2 + data**2)
        if self.prediction_type == "angular_velocity":  # type: ignore[attr-defined]
            c_out = -c_out
        return c_skip, c_out

    def native_levels(
        self, tableau: Tableau, num_steps: int, init_options: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """(1, σ) of each call: the native sample is x = x_0 + σ ε, σ = e^{4 c_noise}."""
        sig = np.exp(4.0 * np.asarray(tableau.timesteps, np.float64))
        return np.ones_like(sig), sig

    @property
    def takes_unconditional(self) -> bool:
        return True


@document
@dataclass(frozen=True, kw_only=True)
class EDMEuler(BrownianNoise, Churn, EDMDenoiser, BaseScheduler):
    """Euler's method on EDM's preconditioned denoiser (Karras et al. 2022, Alg. 1 and 2).

    First order; one model call per step; deterministic unless ``s_churn`` > 0 (Alg. 2).
    diffusers: ``EDMEulerScheduler``. Not to be confused with Euler (``Euler``), which samples
    a variance-preserving model trained at discrete timesteps (σ from the betas, input
    x / sqrt(σ² + 1), a training index as timestep); here the model is EDM's F, with
    σ_data preconditioning, a σ grid of its own and c_noise timesteps. It has no betas.

    ``init(..., sigmas=[...])``: a custom grid of N + 1 levels, the last one final (the
    final_sigmas_type is then not used). diffusers' ``set_timesteps(sigmas=...)`` takes N
    positions on the karras ramp instead (0 at σ_max, 1 at σ_min; the exponential schedule
    uses only their count). ``init(..., strength=s)``: image-to-image.
    """

    DIFFUSERS_CLASS = "EDMEulerScheduler"
    FAMILY = families.KARRAS
    CLI_NAME = "edm-euler"
    TRAINING_TIMESTEPS = False  # c_noise(σ) = log(σ) / 4
    PREDICTION_TYPES = ("noise", "angular_velocity")

    sigma_min: float = option(0.002, "σ_min, the lowest level of the grid (Table 1: 0.002)",
                              "sigma_min", low=0.0, low_open=True)  # fmt: skip
    sigma_max: float = option(80.0, "σ_max, the highest level of the grid (Table 1: 80)",
                              "sigma_max", low=0.0, low_open=True)  # fmt: skip
    sigma_data: float = option(0.5, "σ_data, the standard deviation of the data (Table 1: 0.5)",
                               "sigma_data", low=0.0, low_open=True,
                               high=MAX_SIGMA_DATA)  # fmt: skip
    sigma_schedule: str = option(
        "karras", "the σ grid: karras (eq. 5) or exponential (evenly spaced in log σ)",
        "sigma_schedule", choices=SIGMA_SCHEDULES,
    )  # fmt: skip
    num_train_steps: int = option(
        1000, "diffusers' num_train_timesteps: the length of its training grid; no effect on "
        "a loop", "num_train_timesteps", low=1, high=MAX_TRAIN_STEPS,
    )  # fmt: skip
    prediction_type: str = option(
        "noise",
        "what F predicts: noise (diffusers' epsilon: D = c_skip x + c_out F) or "
        "angular_velocity (diffusers' v_prediction: c_out negated)",
        "prediction_type",
        choices=PREDICTION_TYPES,
        diffusers_values=predictions.DIFFUSERS_PREDICTION_TYPES,
    )
    rho: float = option(7.0, "ρ of the karras grid (eq. 5)", "rho", low=0.0, low_open=True)
    final_sigmas_type: str = option(
        "zero", "the level of the final sample: zero, or the grid's last level (sigma_min)",
        "final_sigmas_type", choices=("zero", "sigma_min"),
    )  # fmt: skip

    @property
    def deterministic(self) -> bool:
        return self.s_churn == 0

    def _grid(
        self, num_steps: int, sigmas: Any = None, strength: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(c_noise timesteps, σ's with the final level appended, the first call run)."""
        if sigmas is not None:
            sig = sigma_schedules.as_float32(_custom_levels(sigmas))
        else:
            if self.sigma_schedule == "karras":  # eq. 5
                sig = sigma_schedules.karras(self.sigma_min, self.sigma_max, num_steps, self.rho)
            else:  # evenly in log σ, built from σ_min upwards
                logs = np.linspace(math.log(self.sigma_min), math.log(self.sigma_max), num_steps)
                sig = np.exp(logs)[::-1]
            sig = sigma_schedules.as_float32(sig)
            final = sig[-1] if self.final_sigmas_type == "sigma_min" else 0.0
            sig = np.append(sig, final)
        ts = sigma_schedules.as_float32(0.25 * np.log(sig[:-1]))  # c_noise (Table 1)
        return ts, sig, first_call(len(ts), strength)

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        _, sig, cut = self._grid(num_steps, **init_options)
        return (
            float(sigma_schedules.alpha_bar_of(sig[cut])),
            float(sigma_schedules.alpha_bar_of(sig[-1])),
        )

    def tableau(self, num_steps: int, sigmas: Any = None, strength: float = 1.0) -> Tableau:
        ts, sig, cut = self._grid(num_steps, sigmas, strength)
        # Alg. 2, lines 4-6: γ counts every level of the full grid (diffusers' len(sigmas) - 1)
        s, s_next = sig[cut:-1], sig[cut + 1 :]
        gamma = np.where(
            (self.s_tmin <= s) & (s <= self.s_tmax),
            min(self.s_churn / (len(sig) - 1), math.sqrt(2) - 1),
            0.0,
        )
        hat = s * (gamma + 1)
        churn = np.sqrt(hat**2 - s**2) * self.s_noise  # x̂ = x + churn · z
        c_skip, c_out = self.preconditioning(hat)  # eq. 7 / Table 1 at σ̂
        ratio = (s_next - hat) / hat  # x_{i+1} = x̂ + (σ_{i+1} - σ̂)(x̂ - D)/σ̂
        # D is formed from x̂ = x + churn z: its z part moves into the noise column
        noise = churn * (1 + ratio) - ratio * c_skip * churn
        return Tableau(
            timesteps=ts[cut:],
            x0_sample=c_skip,
            x0_output=c_out,
            update={(SAMPLE, 0): 1 + ratio, (X0, 0): -ratio},
            noise=None if self.deterministic else noise,
            input_scale=np.append(np.sqrt(s**2 + self.sigma_data**2), 1.0),  # 1 / c_in
            start=(1.0, float(s[0])),
            init_noise_sigma=math.sqrt(self.sigma_max**2 + 1),  # diffusers' value
        )


def _custom_levels(values: Any) -> np.ndarray:
    """N + 1 levels: the N of the model calls positive and non-increasing, the final >= 0."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size < 2 or not np.all(np.isfinite(arr)):
        raise ValueError(
            "sigmas must list at least two finite levels (N model calls and the final one), "
            f"got: {values!r}"
        )
    if np.any(arr[:-1] <= 0) or arr[-1] < 0 or np.any(np.diff(arr) > 0):
        raise ValueError(
            "sigmas must be non-increasing and positive (the final one may be 0), "
            f"got: {arr.tolist()}"
        )
    return arr
