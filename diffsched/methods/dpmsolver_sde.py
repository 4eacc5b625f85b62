"""DPM-Solver++ SDE (k-diffusion's ``sample_dpmpp_sde``, as diffusers' ``DPMSolverSDEScheduler``
runs it): a two-stage stochastic step in log σ on a Brownian tree.

Lu et al. 2022b ("DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models"), sec. 5 (the SDE form), in the variance-exploding variable x = x_0 + σ ε with
t = -log σ. One ancestral DPM-Solver++(1) step from σ_s to σ_t with fresh noise splits σ_t
into a deterministic part σ_d and noise σ_u (k-diffusion's ``get_ancestral_step``):

    σ_u = min(σ_t, sqrt(σ_t² (σ_s² - σ_t²) / σ_s²)),   σ_d = sqrt(σ_t² - σ_u²),          (1)
    x_t = (σ_d / σ_s) x_s + (1 - σ_d / σ_s) x̂_0 + σ_u z.                                 (2)

Step i from σ_i to σ_{i+1} (h = t_{i+1} - t_i) takes two model calls, as diffusers does:

* call 2i, at σ_i: x̂_0(x_i, σ_i), then (2) from σ_i to the midpoint σ_m = e^{-(t_i + h/2)}
  = sqrt(σ_i σ_{i+1}), drawing z_1 over (σ_i, σ_m);                                    (3)
* call 2i + 1, at σ_m on that sample: x̂_0(x_m, σ_m), then (2) from x_i (the step's start)
  to σ_{i+1} with x̂_0(x_m, σ_m), drawing z_2 over (σ_i, σ_{i+1}).                       (4)

The last step (to σ = 0) is one call, Euler's, which lands on x̂_0. diffusers draws z_1 and
z_2 as normalised increments (W(σ') - W(σ)) / sqrt|σ' - σ| of one torchsde Brownian tree
over [σ_min, σ_max] (``BrownianTreeNoiseSampler``, seeded by ``noise_sampler_seed``); here
the default ``noise_type="brownian"`` draws them from :mod:`diffsched.core.brownian`'s tree
(the same law, another generator), on the same intervals, so z_2 shares the path of z_1;
``noise=`` replays any draws (diffusers' recorded ones give diffusers' result).

The grid, the σ's and the model input x / sqrt(σ² + 1) are Euler's (``Euler``); the
midpoints' timesteps are interpolated from σ_m as diffusers' ``_second_order_timesteps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families, predictions
from ..core.engine import SAMPLE, X0, Tableau
from ..core.options import describe, option, with_default
from ..core.scheduler import BrownianNoise, document
from ..schedules import sigmas as sigma_schedules
from ._karras import TwoStageBase, interleave


def ancestral_split(s_from: np.ndarray, s_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(σ_u, σ_d) of eq. 1."""
    up = np.minimum(s_to, np.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2))
    return up, np.sqrt(s_to**2 - up**2)


@document
@dataclass(frozen=True, kw_only=True)
class DPMSolverSDE(BrownianNoise, TwoStageBase):
    """DPM-Solver++ SDE (k-diffusion's ``sample_dpmpp_sde``; "DPM++ SDE"): two model calls
    per step, the second at the log-σ midpoint, noise from a Brownian tree (eqs. 1-4).

    Stochastic; two model calls per step, one on the last (to σ = 0): 2N - 1 calls.
    diffusers: ``DPMSolverSDEScheduler``. Not to be confused with ``DPMSolverMultistep``'s
    ``sde-dpmsolver++`` (a multistep SDE solver, one call per step) or with ComfyUI's
    ``dpmpp_sde`` (its own first stage weighting). ``prediction_type`` is ``"noise"`` or
    ``"angular_velocity"``.

    ``noise=`` at call i replaces its one draw (z_1 at even calls, z_2 at odd ones).
    """

    DIFFUSERS_CLASS = "DPMSolverSDEScheduler"
    FAMILY = families.KARRAS
    CLI_NAME = "dpmpp-sde"
    PREDICTION_TYPES = ("noise", "angular_velocity")  # diffusers raises for "sample"
    ORDER = 2
    CALLS_PER_STEP = 2  # one on the last step, to σ = 0

    noise_type: str = with_default(BrownianNoise, "noise_type", "brownian")
    noise_sampler_seed: int | None = option(
        None, "the seed of the Brownian tree; None: init's key (diffusers draws a random one)",
        "noise_sampler_seed", nullable=True,
    )  # fmt: skip

    @property
    def deterministic(self) -> bool:
        return False

    def _check(self) -> None:
        super()._check()
        seed = self.noise_sampler_seed
        if seed is None:
            return
        if isinstance(seed, bool | np.bool_) or not isinstance(seed, int | np.integer):
            raise TypeError(f"DPMSolverSDE option noise_sampler_seed expects an integer seed "
                            f"or None, got: {describe(seed)}")  # fmt: skip
        if not 0 <= int(seed) < 1 << 32:  # the noise streams take 32 bits
            raise ValueError(f"DPMSolverSDE option noise_sampler_seed must lie in [0, 2**32), "
                             f"got: {describe(seed)}")  # fmt: skip
        object.__setattr__(self, "noise_sampler_seed", int(seed))  # a NumPy integer: int

    def init(self, num_steps: int | None, sample_template: Any, key: Any = 0, **init_options: Any):
        """As every method's ``init``; ``noise_sampler_seed``, when set, is the key."""
        if self.noise_sampler_seed is not None:
            key = self.noise_sampler_seed
        return super().init(num_steps, sample_template, key, **init_options)

    def _levels(self, num_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(grid timesteps, σ_i with the final 0, midpoints σ_m, the midpoints' timesteps)."""
        ts, sig = self._grid(num_steps)
        n = len(ts)
        s, s_next = sig[:n], sig[1 : n + 1]
        # diffusers: the midpoints of the float32 σ's in float64 (their timesteps from the
        # σ's before the float32 cast, as its _second_order_timesteps)
        with np.errstate(divide="ignore"):
            mid = np.exp(-(-np.log(s) + 0.5 * (np.log(s) - np.log(s_next))))  # (3)
        acp = self.alphas_cumprod
        log_train = np.log(sigma_schedules.from_alphas_cumprod(acp))
        _, raw = sigma_schedules.discrete_grid(
            acp, num_steps, spacing=self.timestep_spacing, offset=self.timesteps_offset,
            kind=self.sigma_kind,
        )  # fmt: skip
        raw_mid = np.exp(-(-np.log(raw[:-1]) + 0.5 * (np.log(raw[:-1]) - np.log(raw[1:]))))
        mid_ts = sigma_schedules.sigma_to_t(raw_mid, log_train) if n > 1 else np.zeros(0)
        return ts, sig, mid, mid_ts

    def tableau(self, num_steps: int) -> Tableau:
        ts, sig, mid, mid_ts = self._levels(num_steps)
        n = len(ts)
        s, s_next = sig[:n], sig[1 : n + 1]
        level = interleave(s, mid)  # the σ each call's model sees
        x0 = predictions.x0_from_ve(self.prediction_type, level)
        calls = 2 * n - 1
        keep, lagged, denoised = np.zeros(calls), np.zeros(calls), np.zeros(calls)
        noise = np.zeros(calls)
        for i in range(n - 1):
            up1, down1 = ancestral_split(s[i], mid[i])  # (3)
            keep[2 * i], denoised[2 * i], noise[2 * i] = down1 / s[i], 1 - down1 / s[i], up1
            up2, down2 = ancestral_split(s[i], s_next[i])  # (4): from x_i, one call back
            lagged[2 * i + 1], denoised[2 * i + 1] = down2 / s[i], 1 - down2 / s[i]
            noise[2 * i + 1] = up2
        denoised[-1] = 1.0  # the last step: Euler to σ = 0 lands on x̂_0
        update = {(SAMPLE, 0): keep, (X0, 0): denoised}
        if calls > 1:
            update[(SAMPLE, 1)] = lagged
        return Tableau(
            timesteps=interleave(ts, mid_ts),
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update=update,
            noise=noise,
            input_scale=np.append(np.sqrt(level**2 + 1), 1.0),
            start=(1.0, float(s[0])),
            init_noise_sigma=self._init_noise_sigma(sig),
        )

    def brownian_intervals(
        self, tau: np.ndarray, noise: np.ndarray, num_steps: int, init_options: dict
    ) -> np.ndarray:
        """z_1 over (σ_i, σ_m), z_2 over (σ_i, σ_{i+1}) (eqs. 3-4), in τ = σ / (1 + σ)."""
        _, sig, mid, _ = self._levels(num_steps)
        n = len(mid)
        out = np.zeros((2 * n - 1, 2))
        frac = lambda v: v / (1.0 + v)  # noqa: E731
        for i in range(n - 1):
            out[2 * i] = frac(sig[i]), frac(mid[i])
            out[2 * i + 1] = frac(sig[i]), frac(sig[i + 1])
        out[-1] = frac(sig[n - 1]), frac(sig[n - 1])
        return out
