"""DPM2 and DPM2 ancestral: k-diffusion's ``sample_dpm_2`` and ``sample_dpm_2_ancestral``
(Crowson 2022), samplers "inspired by DPM-Solver-2" (Lu et al. 2022, Alg. 1: a second-order
step whose extra model call sits halfway in log noise level) on the ODE of Karras et al.
2022.

The probability-flow ODE in x = x_0 + σ ε is dx/dσ = d(x, σ) = (x - x̂_0(x, σ)) / σ (Karras
et al. 2022, Alg. 1, line 4). Each step from σ_i to σ_{i+1} is the explicit midpoint rule,
the midpoint taken in log σ:

    σ_mid = exp((log σ_i + log σ_{i+1}) / 2) = sqrt(σ_i σ_{i+1})                   (1)
    x_mid = x_i + (σ_mid - σ_i) d(x_i, σ_i)                                         (2)
    x_{i+1} = x_i + (σ_{i+1} - σ_i) d(x_mid, σ_mid)                                 (3)

Ancestral sampling splits the step to σ_{i+1} into a deterministic step to σ_down and fresh
noise of σ_up (k-diffusion's ``get_ancestral_step``, as Euler ancestral):

    σ_up = sqrt(σ_{i+1}² (σ_i² - σ_{i+1}²) / σ_i²),   σ_down = sqrt(σ_{i+1}² - σ_up²),  (4)

σ_down is computed as the equal, well-conditioned

    σ_down = σ_{i+1}² / σ_i,                                                         (4')

(σ_down² = σ_{i+1}² - σ_up² = σ_{i+1}⁴ / σ_i²; so σ_mid of (1) is σ_{i+1} itself), and the
ancestral step runs (1-3) with σ_down in place of σ_{i+1}, then adds the noise:

    x_{i+1} = x_i + (σ_down - σ_i) d(x_mid, σ_mid) + σ_up z.                        (5)

On the last step, to σ_N = 0, σ_mid = 0: (2) is an Euler step landing on x̂_0 and is the
step's only model call (k-diffusion's Euler step there). An N-step loop makes 2N - 1 model
calls, at σ_0, σ_mid,0, σ_1, σ_mid,1, ..., σ_{N-1}; the midpoints' timesteps are the
fractional training timesteps of their σ (:func:`~diffsched.schedules.sigmas.sigma_to_t`).

diffusers keeps these grids in float32. σ_up is computed in float32 arithmetic as diffusers
computes it (its value, to the ulp of the final square root); σ_down and σ_mid are the exact
values rounded to float32 (a few ulps from diffusers', which forms σ_mid from float32
logarithms). diffusers
forms σ_down as sqrt(σ_{i+1}² - σ_up²) in float32, which cancels where σ_{i+1} << σ_i (the
step down to the grid's lowest σ): there its σ_down is off by up to 1e-2 relative, by an
amount that depends on the CPU's vectorised power function (the tests compare with diffusers'
step on the exact split). With Karras σ's,
diffusers rounds the grid's timesteps (not the midpoints') to integers; so does this module.

The model is called on x / sqrt(σ² + 1), the variance-preserving sample it was trained
on; that is the sample this scheduler holds (``input_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import families, predictions
from ..core.engine import Tableau
from ..core.scheduler import BrownianNoise, document
from ..schedules import sigmas as sigma_schedules
from ._img2img import first_call
from ._karras import TwoStageBase, interleave
from .kit import RKStep, runge_kutta


@dataclass(frozen=True, kw_only=True)
class _DPM2Base(TwoStageBase):
    def _grid(self, num_steps: int, strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, σ's with the final 0 appended), as diffusers' set_timesteps."""
        kind = self.sigma_kind
        ts, sig = sigma_schedules.discrete_grid(
            self.alphas_cumprod, num_steps, spacing=self.timestep_spacing,
            offset=self.timesteps_offset, kind=kind,
        )  # fmt: skip
        if kind == "karras":  # diffusers rounds the timesteps of Karras grids (only)
            ts = np.round(ts)
        sig = sigma_schedules.as_float32(np.append(sig, 0.0))
        cut = first_call(len(ts), strength)
        return ts[cut:], sig[cut:]

    def _timesteps(self, ts: np.ndarray, mid: np.ndarray) -> np.ndarray:
        """Per-call timesteps: the grid's, and the midpoints' fractional ones (float32 where
        diffusers keeps the grid's timesteps in float32: spaced grids)."""
        log_train = np.log(sigma_schedules.from_alphas_cumprod(self.alphas_cumprod))
        out = interleave(ts, sigma_schedules.sigma_to_t(mid, log_train))
        return sigma_schedules.as_float32(out) if self.sigma_kind is None else out

    def _two_stage(
        self, ts: np.ndarray, sig: np.ndarray, mid: np.ndarray, target: np.ndarray
    ) -> dict:
        """The Tableau fields of steps σ_i -> (σ_mid,i) -> target_i, per (1-3)."""
        n = len(ts)
        s = sig[:n]
        sigma = interleave(s, mid)  # the level each call's model sees
        x0 = predictions.x0_from_ve(self.prediction_type, sigma)
        # (2) to the midpoint, (3) from there to the target: a two-stage Runge-Kutta step;
        # on the last step (σ_mid = 0) the first stage alone, which lands on x̂_0
        steps = [
            RKStep(
                np.array([s[i], mid[i]]),
                np.array([[0.0, 0.0], [mid[i] - s[i], 0.0]]),
                np.array([0.0, target[i] - s[i]]),
            )
            for i in range(n - 1)
        ]
        steps.append(RKStep(s[-1:], np.zeros((1, 1)), np.array([mid[-1] - s[-1]])))
        _, update, _ = runge_kutta(steps)
        return {
            "timesteps": self._timesteps(ts, mid),
            "x0_sample": x0.sample_coef,
            "x0_output": x0.prediction_coef,
            "update": update,
            "input_scale": np.append(np.sqrt(sigma**2 + 1), 1.0),
            "start": (1.0, float(s[0])),
            "init_noise_sigma": self._init_noise_sigma(sig),
        }


@document
@dataclass(frozen=True, kw_only=True)
class DPM2(_DPM2Base):
    """DPM2: the midpoint method in log σ on the probability-flow ODE (k-diffusion's
    ``sample_dpm_2``).

    Second order; two model calls per step (one on the last step, to σ = 0); deterministic.
    diffusers: ``KDPM2DiscreteScheduler``. Not to be confused with DPM-Solver-2 in λ
    (``DPMSolverMultistep`` / ``DPMSolverSinglestep`` of order 2), an exponential
    integrator in the log signal-to-noise ratio, or with Heun (``Heun``), whose second call
    is at the end of the step. ``prediction_type`` is ``"noise"`` or
    ``"angular_velocity"``.

    ``init(..., strength=s)`` is image-to-image.
    """

    DIFFUSERS_CLASS = "KDPM2DiscreteScheduler"
    FAMILY = families.KARRAS
    CLI_NAME = "dpm2"
    PREDICTION_TYPES = ("noise", "angular_velocity")  # diffusers raises for "sample"
    ORDER = 2
    CALLS_PER_STEP = 2  # one on the last step, to σ = 0

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        ts, sig = self._grid(num_steps, strength=strength)
        n = len(ts)
        s, s_next = sig[:n], sig[1 : n + 1]
        mid = sigma_schedules.as_float32(np.sqrt(s * s_next))  # (1); 0 on the last step
        return Tableau(**self._two_stage(ts, sig, mid, s_next))


@document
@dataclass(frozen=True, kw_only=True)
class DPM2Ancestral(BrownianNoise, _DPM2Base):
    """DPM2 ancestral sampling (k-diffusion's ``sample_dpm_2_ancestral``; "DPM2 a").

    Second order in its deterministic part; two model calls per step (one on the last step,
    to σ = 0); stochastic. diffusers: ``KDPM2AncestralDiscreteScheduler``. Not to be
    confused with DPM2 (``DPM2``), deterministic, or with Euler ancestral
    (``EulerAncestral``), which splits the step the same way but takes it with one call.
    ``prediction_type`` is ``"noise"`` or ``"angular_velocity"``.

    ``init(..., strength=s)`` is image-to-image.
    """

    DIFFUSERS_CLASS = "KDPM2AncestralDiscreteScheduler"
    FAMILY = families.KARRAS
    CLI_NAME = "dpm2-a"
    PREDICTION_TYPES = ("noise", "angular_velocity")  # diffusers raises for "sample"
    ORDER = 2
    CALLS_PER_STEP = 2  # one on the last step, to σ = 0

    @property
    def deterministic(self) -> bool:
        return False

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        ts, sig = self._grid(num_steps, strength=strength)
        n = len(ts)
        s, s_next = sig[:n], sig[1 : n + 1]
        s32, n32 = s.astype(np.float32), s_next.astype(np.float32)
        up = np.sqrt(n32**2 * (s32**2 - n32**2) / s32**2).astype(np.float64)  # (4), float32
        down = sigma_schedules.as_float32(s_next**2 / s)  # (4'), exact
        mid = sigma_schedules.as_float32(np.sqrt(s * down))  # (1) to σ_down
        fields = self._two_stage(ts, sig, mid, down)
        noise = interleave(np.zeros(n), up)  # (5): after the second call
        return Tableau(**fields, noise=noise)
