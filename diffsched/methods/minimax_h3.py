"""MiniMax-H3's sampler: Euler's method on the rectified-flow ODE, in MiniMax-H3's time
convention (diffusers' ``MiniMaxH3Scheduler``).

The sample is the rectified-flow interpolation (Liu, Gong & Liu 2022), written with the
noise level σ = 1 - t (MiniMax-H3's time t runs from 0, noise, to 1, data):

    x_σ = (1 - σ) x_0 + σ ε,      t = 1 - σ                                          (1)

and the model predicts the *data-ward* velocity u = x_0 - ε (the negative of the usual
flow velocity v = ε - x_0), so that

    x̂_0 = x_σ + σ_t û,           σ_t = 1 - t (the call's timestep)                     (2)

The grid is N points linspace(1, 0, N) through the static shift of Esser et al. 2024
(eq. 23), σ' = s σ / (1 + (s - 1) σ), in float32 as diffusers builds it, with repeated
points collapsed; the terminal 0 is a grid point, so N points give N - 1 model calls. Each
call blends the sample with x̂_0 (Euler's step, written as DDIM's on the straight line):

    x_{i+1} = r x_i + (1 - r) x̂_0,i,     r = σ_{i+1} / σ_i                          (3)

(3) equals x_i + (σ_{i+1} - σ_i) (-û) exactly when σ_t = σ_i; diffusers forms σ_t of (2)
from the float32 timestep 1 - σ_i, and so does this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.engine import SAMPLE, X0, Tableau
from ..core.options import option
from ..core.scheduler import BaseScheduler, document
from ..schedules import shifts
from ._img2img import restarted
from .edm_dpmsolver import float32_linspace
from .flow_match import first_flow_call

# u = x_0 - ε: MiniMax-H3's data-ward velocity (ours; diffusers' class has no such key)
DATA_VELOCITY = "data_velocity"


@document
@dataclass(frozen=True, kw_only=True)
class MiniMaxH3(BaseScheduler):
    """Euler's method on the rectified-flow ODE with MiniMax-H3's data-ward velocity.

    First order; one model call per step; deterministic. diffusers: ``MiniMaxH3Scheduler``
    (a pipeline holds two: ``shift=12`` for video latents, 3 for audio). Not to be
    confused with ``FlowMatchEuler``, the same step for a model predicting v = ε - x_0 at
    t = σ T; here t = 1 - σ and the model predicts u = x_0 - ε (eq. 2).

    ``num_steps`` is diffusers' ``num_inference_steps``: the number of grid points, the
    terminal 0 included, so N points give N - 1 model calls (fewer where the shifted
    float32 grid repeats a point). ``init(..., sigmas=[...])``: a grid used as given
    (float32, strictly decreasing, ending at 0; ``num_steps`` None or its length), as
    diffusers' ``set_timesteps(sigmas=...)``. ``init(..., strength=s)``: image-to-image,
    the first int(K - K s) of the K calls skipped, as the flow img2img pipelines cut theirs;
    ``add_noise`` starts at the first call run, x = t x_0 + (1 - t) ε (diffusers'
    ``scale_noise`` at that timestep).
    """

    DIFFUSERS_CLASS = "MiniMaxH3Scheduler"
    PREDICTION_TYPES = (DATA_VELOCITY,)
    TRAINING_TIMESTEPS = False

    shift: float = option(
        12.0, "the static shift s of the grid, σ' = s σ / (1 + (s - 1) σ) (Esser et al. "
        "2024, eq. 23): 12 for MiniMax-H3's video latents, 3 for its audio latents",
        "shift", low=0.0, low_open=True,
    )  # fmt: skip
    prediction_type: str = option(
        DATA_VELOCITY, "what the model predicts: data_velocity, u = x_0 - ε of "
        "x_σ = (1 - σ) x_0 + σ ε (MiniMax-H3's; the negative of prediction_type='flow')",
        None, choices=(DATA_VELOCITY,),
    )  # fmt: skip

    def grid(self, num_steps: int | None, sigmas: Any = None) -> np.ndarray:
        """The levels σ_0 > ... > σ_K = 0 (float32 values): K model calls."""
        if sigmas is not None:
            try:
                sig = np.asarray(sigmas, dtype=np.float64).reshape(-1).astype(np.float32)
            except (TypeError, ValueError):
                raise TypeError(f"sigmas must be a list of numbers, got: {sigmas!r}") from None
            if sig.size < 2 or np.any(np.diff(sig) >= 0) or sig[-1] != 0 or sig[0] > 1:
                raise ValueError(
                    "sigmas must hold at least two strictly decreasing levels in [0, 1] "
                    f"ending at 0.0, got: {np.asarray(sigmas).tolist()}"
                )
            return sig.astype(np.float64)
        if num_steps < 2:
            raise ValueError(
                f"MiniMaxH3 needs num_steps >= 2 grid points (the terminal 0 is one; N points "
                f"give N - 1 model calls), got: {num_steps}"
            )
        base = float32_linspace(1.0, 0.0, num_steps)
        sig = shifts.shift(base, self.shift, dtype=np.float32)
        keep = np.append(True, sig[1:] != sig[:-1])  # torch.unique_consecutive
        return sig[keep].astype(np.float64)

    def custom_steps(self, init_options: dict) -> int | None:
        """Custom ``sigmas=`` (no ``timesteps=``): its length is the number of grid points,
        which is ``num_steps`` here (diffusers' ``num_inference_steps``)."""
        if "timesteps" in init_options:
            raise TypeError(
                "MiniMaxH3.init takes no timesteps= (its custom grid is sigmas=, as diffusers' "
                "set_timesteps takes it)"
            )
        custom = init_options.get("sigmas")
        return None if custom is None else len(np.asarray(custom).reshape(-1))

    def noise_levels(
        self, num_steps: int, sigmas: Any = None, strength: float = 1.0
    ) -> tuple[float, float]:
        """(σ at the first model call, σ of the final sample): flow levels of (1)."""
        return float(self.tableau(num_steps, sigmas, strength).start[1]), 0.0

    def tableau(self, num_steps: int | None, sigmas: Any = None, strength: float = 1.0) -> Tableau:
        sig = self.grid(num_steps, sigmas)
        s, s_next = sig[:-1], sig[1:]
        ts = (np.float32(1.0) - s.astype(np.float32)).astype(np.float64)  # t = 1 - σ, float32
        sigma_t = 1.0 - ts  # (2): σ as diffusers recovers it from the timestep
        ratio = s_next / s  # (3)
        tab = Tableau(
            timesteps=ts,
            x0_sample=np.ones_like(s),
            x0_output=sigma_t,
            update={(SAMPLE, 0): ratio, (X0, 0): 1.0 - ratio},
        )
        cut = first_flow_call(len(ts), strength)  # image-to-image (a one-step method)
        return restarted(tab, cut, (1.0 - float(s[cut]), float(s[cut])))
