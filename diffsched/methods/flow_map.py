"""Flow-map sampling: Gu, Fang et al. 2026, "AnyFlow: Any-Step Video Diffusion Model with
On-Policy Flow Map Distillation" (diffusers' ``FlowMapEulerDiscreteScheduler``).

A flow map u(x_t, t, r) is trained to carry a rectified-flow sample (Liu, Gong & Liu 2022)

    x_σ = (1 - σ) x_0 + σ ε                                                          (1)

from level σ_t to any lower level σ_r in one call, as the average velocity over [r, t]:

    x_r = x_t - (σ_t - σ_r) û(x_t, t, r)                                              (2)

so one distilled model samples at any number of calls. (2) is Euler's step with the
model's *mean* velocity, exact for a perfect flow map; for a model of the instantaneous
velocity (r = t) it is the rectified-flow Euler step. The model's estimate of x_0 is
x̂_0 = x_t - σ_t û.

The grid: σ_i = linspace(1, 0, N + 1)[i], i < N, through the static shift of Esser et al.
2024 (eq. 23), σ' = s σ / (1 + (s - 1) σ), then the terminal 0; in float64, as diffusers
builds it. The call i is at t_i = σ_i T and steps to r_i = t_{i+1} (0 at the last call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import predictions
from ..core.engine import OUTPUT, SAMPLE, Tableau
from ..core.options import option
from ..core.scheduler import MAX_TRAIN_STEPS, BaseScheduler, document
from ..schedules import shifts
from ._img2img import restarted
from .flow_match import first_flow_call


@document
@dataclass(frozen=True, kw_only=True)
class FlowMapEuler(BaseScheduler):
    """Euler steps of a flow-map model between consecutive levels (AnyFlow, Gu et al. 2026).

    First order (exact for an exact flow map); one model call per step; deterministic.
    diffusers: ``FlowMapEulerDiscreteScheduler``. Not to be confused with
    ``FlowMatchEuler``, the same update for a model of the instantaneous velocity, on
    SD3's float32 grid; here the grid is float64 and the model also takes the target time.

    **The model's second time.** A flow-map model is called as û(x, t, r): at call i,
    t = ``timesteps[i]`` and r the next timestep (0 at the last call), which
    :meth:`r_timesteps` lists (diffusers' ``step(..., r_timestep=)``, defaulted to the
    next timestep, as here); :meth:`step_between` is one call from any level to any
    other (any-step sampling off the grid). ``init(..., sigmas=[...])`` (N unshifted
    levels, the terminal 0 appended) or ``init(..., timesteps=[...])`` (N values σ T) give
    a custom grid, as
    diffusers' ``set_timesteps``; the shift applies to both. ``init(..., strength=s)``:
    image-to-image, the first int(N - N s) calls skipped, as the flow img2img pipelines
    cut theirs (``add_noise``: diffusers' ``scale_noise`` at the first call run).
    """

    DIFFUSERS_CLASS = "FlowMapEulerDiscreteScheduler"
    PREDICTION_TYPES = (predictions.FLOW,)
    TRAINING_TIMESTEPS = False

    num_train_steps: int = option(
        1000, "T: a level σ is called at t = σ T", "num_train_timesteps",
        low=1, high=MAX_TRAIN_STEPS,
    )  # fmt: skip
    shift: float = option(
        1.0, "the static shift s of the levels, σ' = s σ / (1 + (s - 1) σ) (Esser et al. "
        "2024, eq. 23; Wan 2.1 uses 5)", "shift", low=0.0, low_open=True,
    )  # fmt: skip
    prediction_type: str = option(
        predictions.FLOW, "what the model predicts: flow, the (mean) velocity of "
        "x_σ = (1 - σ) x_0 + σ ε towards the noise, v = ε - x_0 for r = t", None,
        choices=(predictions.FLOW,),
    )  # fmt: skip

    def grid(self, num_steps: int | None, sigmas: Any = None, timesteps: Any = None) -> np.ndarray:
        """The N levels of the calls and the terminal 0 (float64)."""
        T = self.num_train_steps
        if sigmas is not None and timesteps is not None:
            raise ValueError("pass at most one of sigmas= and timesteps=")
        custom = sigmas if sigmas is not None else timesteps
        if custom is not None:
            name = "sigmas" if sigmas is not None else "timesteps"
            try:
                base = np.asarray(custom, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise TypeError(f"{name} must be a list of numbers, got: {custom!r}") from None
            if base.size < 1 or not np.all(np.isfinite(base)) or np.any(base < 0):
                raise ValueError(f"{name} must be non-negative finite numbers, got: {custom!r}")
            if timesteps is not None:
                base = base / T
        else:
            base = np.linspace(1.0, 0.0, num_steps + 1)[:-1]
        sig = shifts.shift(base, self.shift) if self.shift != 1.0 else base
        return np.append(sig, 0.0)

    def custom_steps(self, init_options: dict) -> int | None:
        """Custom ``sigmas=`` / ``timesteps=`` hold N values, one per call."""
        for name in ("sigmas", "timesteps"):
            if init_options.get(name) is not None:
                return len(np.asarray(init_options[name]).reshape(-1))
        return None

    def r_timesteps(self, num_steps: int | None, **init_options: Any) -> np.ndarray:
        """The target time r of each call (the model's second time input): the next call's
        timestep, 0 at the last."""
        sig = self.grid(num_steps, **init_options)
        return sig[1:] * self.num_train_steps

    @staticmethod
    def step_between(sample: Any, output: Any, sigma_t: float, sigma_r: float) -> Any:
        """(2) from any level σ_t to any σ_r in one call, x_r = x_t - (σ_t - σ_r) û: the
        any-step sampling of a flow map off the loop's grid (diffusers' ``step`` with an
        explicit ``r_timestep``); pure, no loop state (arrays of any backend)."""
        return sample - (sigma_t - sigma_r) * output

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        """(σ at the first model call, σ of the final sample): flow levels of (1)."""
        return float(self.tableau(num_steps, **init_options).start[1]), 0.0

    def tableau(
        self,
        num_steps: int | None,
        sigmas: Any = None,
        timesteps: Any = None,
        strength: float = 1.0,
    ) -> Tableau:
        sig = self.grid(num_steps, sigmas, timesteps)
        s, s_next = sig[:-1], sig[1:]
        tab = Tableau(
            timesteps=s * self.num_train_steps,
            x0_sample=np.ones_like(s),  # x̂_0 = x - σ û
            x0_output=-s,
            update={(SAMPLE, 0): np.ones_like(s), (OUTPUT, 0): s_next - s},  # (2)
        )
        cut = first_flow_call(len(s), strength)  # image-to-image (a one-step method)
        return restarted(tab, cut, (1.0 - float(s[cut]), float(s[cut])))
