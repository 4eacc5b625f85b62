"""iPNDM: the improved pseudo numerical method of Zhang & Chen 2023, "Fast Sampling of
Diffusion Models with Exponential Integrator" (DEIS), on the grid of diffusers'
``IPNDMScheduler`` (the "crash" schedule of Harmonai's Dance Diffusion).

The sample is variance preserving, x_i = a_i x_0 + b_i ε with a_i = sqrt(ᾱ_i) and
b_i = sqrt(1 - ᾱ_i), a_i² + b_i² = 1, and the model predicts the angular velocity
v = a ε - b x_0 (Salimans & Ho 2022, sec. 4), so that its noise estimate is

    ε_i = b_i x_i + a_i v_i.                                                    (1)

Each step is PNDM's transfer (Liu et al. 2022, eq. 11: the deterministic DDIM step) with
ε replaced by the linear multistep combination of the last p estimates (their eq. 12;
Adams-Bashforth weights w = 1; 3/2, -1/2; 23/12, -16/12, 5/12; 55/24, -59/24, 37/24, -9/24):

    ε̂_i = Σ_{k<p} w^{(p)}_k ε_{i-k},   p = min(i + 1, 4),                           (2)
    x̂_0 = (x_i - b_i ε̂_i) / max(a_i, 1e-8),                                       (3)
    x_{i+1} = a_{i+1} x̂_0 + b_{i+1} ε̂_i.                                          (4)

Unlike PNDM there is no Runge-Kutta warm-up: the order rises from one to four as the
history fills (iPNDM's lower-order start).

The grid of an N-step loop (diffusers' ``set_timesteps``), with s_i = 1 - i/N:

    b_i = sin²(π s_i / 2),   a_i = sqrt(1 - b_i²),   t_i = (2/π) atan2(b_i, a_i),    (5)

the model being called at t_i in (0, 1], the time of the cosine schedule
a = cos(π t/2), b = sin(π t/2) of v-diffusion models; b_N = 0 is the final sample's level.
diffusers evaluates (5) in float32 (torch's default dtype), where b_i ≈ 1 in the first
steps leaves few significant bits of 1 - b_i², and so of a_i (about 1% of a_1 at
N = 1000, through the last bit of the platform's float32 sin); here (5) is evaluated in
float64.

At the first call b_0 = 1 and a_0 = 0: ε_0 = x_0 exactly, and the clamp of (3) makes
x̂_0 = 0, so the model's first output is not used and x_1 = b_1 x_0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families
from ..core.engine import OUTPUT, SAMPLE, Tableau, Update
from ..core.options import option
from ..core.scheduler import Scheduler, document, tuple_of_floats
from ._img2img import first_call, restarted
from .pndm import ADAMS_BASHFORTH

ALPHA_FLOOR = 1e-8  # the clamp of eq. 3


def _fixed(value: Any) -> Any:
    """A field of :class:`Scheduler` that ``IPNDMScheduler`` has no option for: held at
    ``value``, neither an argument nor a config key."""
    return dataclasses.field(default=value, init=False, repr=False, compare=False)


def crash_grid(num_steps: int) -> np.ndarray:
    """b_0, ..., b_N of eq. 5, float64: diffusers' default grid."""
    s = np.linspace(1.0, 0.0, num_steps + 1)
    return np.sin(s * (math.pi / 2)) ** 2


@document
@dataclass(frozen=True, kw_only=True)
class IPNDM(Scheduler):
    """Improved pseudo numerical method for diffusion models (Zhang & Chen 2023, iPNDM).

    Fourth order (first to third during the warm-up); one model call per step;
    deterministic. diffusers: ``IPNDMScheduler``. Not to be confused with PNDM (Liu et al.
    2022; ``PNDM``), whose warm-up is three pseudo Runge-Kutta steps and which runs on the
    training timesteps of a discrete ᾱ schedule. The model predicts the angular velocity v
    at continuous time t in (0, 1] (eq. 5): diffusers' class has no beta schedule and no
    ``prediction_type``, and ``num_train_steps`` changes nothing here.

    ``noise_grid`` (diffusers' ``trained_betas``) replaces eq. 5: an N-step loop then needs
    exactly N + 1 levels.
    """

    DIFFUSERS_CLASS = "IPNDMScheduler"
    FAMILY = families.KARRAS
    CLI_NAME = "ipndm"
    TRAINING_TIMESTEPS = False  # t in (0, 1], from its own noise grid
    PREDICTION_TYPES = ("angular_velocity",)
    ORDER = 4

    # IPNDMScheduler's __init__ takes only num_train_timesteps and trained_betas
    beta_schedule: str = _fixed("linear")
    beta_start: float = _fixed(0.0001)
    beta_end: float = _fixed(0.02)
    trained_betas: None = _fixed(None)
    prediction_type: str = _fixed("angular_velocity")
    noise_grid: tuple[float, ...] | None = option(
        None,
        "explicit b_0, ..., b_N = sqrt(1 - ᾱ) of the loop's levels, in [0, 1] and decreasing "
        "(a = sqrt(1 - b²)); replaces the crash schedule (eq. 5)",
        "trained_betas",
        nullable=True,
        to_diffusers=lambda v: None if v is None else list(v),
        from_diffusers=lambda v: None if v is None else tuple_of_floats(v),
    )

    def _check(self) -> None:
        grid = self.noise_grid
        if grid is None:
            return
        try:
            grid = tuple_of_floats(grid)
        except TypeError as err:
            raise TypeError(f"IPNDM option noise_grid: {err}") from None
        arr = np.asarray(grid)
        if len(arr) < 2 or not np.all((arr >= 0) & (arr <= 1)) or np.any(np.diff(arr) >= 0):
            raise ValueError(
                "IPNDM option noise_grid must hold at least 2 decreasing values in [0, 1], "
                f"got: {list(grid) if len(grid) < 6 else '(...)'}"
            )
        object.__setattr__(self, "noise_grid", grid)

    def grid(self, num_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, timesteps) of an N-step loop: a and b at the N + 1 levels (eq. 5)."""
        if self.noise_grid is None:
            b = crash_grid(num_steps)
        elif len(self.noise_grid) != num_steps + 1:
            raise ValueError(
                f"IPNDM with a noise_grid of {len(self.noise_grid)} levels runs "
                f"{len(self.noise_grid) - 1} steps, got num_steps={num_steps}"
            )
        else:
            b = np.asarray(self.noise_grid, dtype=np.float64)
        a = np.sqrt(1 - b**2)  # eq. 5
        ts = np.arctan2(b[:-1], a[:-1]) * (2 / math.pi)
        return a, b, ts

    def noise_levels(self, num_steps: int, strength: float = 1.0) -> tuple[float, float]:
        a, _, _ = self.grid(num_steps)
        return float(a[first_call(num_steps, strength)] ** 2), float(a[-1] ** 2)

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        a, b, ts = self.grid(num_steps)
        n = len(ts)
        cut = first_call(n, strength)  # image-to-image: the warm-up restarts here
        a_safe = np.maximum(a[:-1], ALPHA_FLOOR)
        # eq. 3-4: x_{i+1} = (a_{i+1} / a_safe) x_i + c_i ε̂_i
        c = b[1:] - a[1:] * b[:-1] / a_safe
        update = Update(n)
        for i in range(cut, n):
            weights = ADAMS_BASHFORTH[min(i - cut + 1, 4)]
            for k, w in enumerate(weights):  # eq. 1-2: ε_{i-k} = b x_{i-k} + a v_{i-k}
                j = i - k
                update.add(SAMPLE, k, i, c[i] * w * b[j])
                update.add(OUTPUT, k, i, c[i] * w * a[j])
            # this call's sample, both terms at once: exact where a_i = 0 (b_i = 1, w = 1)
            update[(SAMPLE, 0)][i] = (
                a[i + 1] * (1 - weights[0] * b[i] ** 2) / a_safe[i] + b[i + 1] * weights[0] * b[i]
            )
        tab = Tableau(
            timesteps=ts,
            x0_sample=a[:-1],  # x̂_0 = a x - b v
            x0_output=-b[:-1],
            update=update,
        )
        return restarted(tab, cut, (float(a[cut]), float(b[cut])))
