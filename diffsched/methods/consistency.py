"""Consistency models: multistep sampling of Song, Dhariwal, Chen & Sutskever 2023,
"Consistency Models", and of Lu & Song 2024, "Simplifying, Stabilizing and Scaling
Continuous-Time Consistency Models" (sCM; Sana-Sprint).

A consistency function f maps a noisy sample at any level straight to a clean one; its
multistep sampler (Song et al. 2023, Alg. 1) alternates f and re-noising to the next level.

**CM** (variance exploding, x = x_0 + σ ε, Karras et al. 2022's σ grid, eq. 5): the model F
is called on the preconditioned input x / sqrt(σ² + σ_d²) (held here) at
c_noise = 250 log σ, and

    f(x, σ) = c_skip(σ) x + c_out(σ) F,                                       (eq. 12 / app. C)
    c_skip = σ_d² / ((σ - σ_min)² + σ_d²),   c_out = (σ - σ_min) σ_d / sqrt(σ² + σ_d²),
    x_{i+1} = f(x_i, σ_i) + S_noise sqrt(σ̂² - σ_min²) z,   σ̂ = clamp(σ_{i+1}, σ_min, σ_max),

with f optionally clipped to [-1, 1]. The levels: the N-step loop takes the indices
k_j = j (T // N) of the T-level training grid and σ_j = Karras(k_j / (T - 1)) (eq. 5 with
ρ), j = 0..N-1, decreasing from σ_max, and the last step lands at σ_min (no noise).

**sCM** (TrigFlow: x_s = cos(s) x_0 + sin(s) z σ_d, s ∈ [0, π/2]): the model predicts F with
x̂_0 = cos(s) x - sin(s) F (Lu & Song 2024, eq. 4), and

    x_{i+1} = cos(s_{i+1}) x̂_0 + sin(s_{i+1}) σ_d z,

on s_i evenly spaced from ``max_timesteps`` to 0 (or [max, intermediate, 0] for two steps).

**The consistency decoder** (OpenAI's decoder of Stable Diffusion latents, diffusers'
``ConsistencyDecoderVAE``): the consistency function of eq. 12 on a variance-preserving
sample x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε (the squared-cosine ᾱ of T = 1024 training
steps, Nichol & Dhariwal 2021, eq. 17), read in the variance-exploding variable x_t /
sqrt(ᾱ_t) of level σ_t = sqrt(1/ᾱ_t - 1):

    f(x_t, t) = c_skip x_t + c_out F(c_in x_t, t),
    c_skip = σ_d² / (sqrt(ᾱ_t) (σ_t² + σ_d²)),   c_out = σ_t σ_d / sqrt(σ_t² + σ_d²),
    c_in = 1 / (sqrt(ᾱ_t) sqrt(σ_t² + σ_d²)),
    x_{i+1} = sqrt(ᾱ_{t_{i+1}}) f(x_i, t_i) + sqrt(1 - ᾱ_{t_{i+1}}) z,

on the decoder's timesteps 1008, 512 (its two steps, diffusers' only loop), the last step
returning f. Alg. 1 holds for any decreasing timesteps: an N-step loop here keeps 1008 first
and spaces the rest as the two-step one, t_i = floor(1024 (N - i) / N), i = 1..N-1
(one step: f at 1008 alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..core import ops
from ..core.engine import X0, Tableau
from ..core.options import option
from ..core.scheduler import (
    MAX_SIGMA_DATA,
    MAX_TRAIN_STEPS,
    BaseScheduler,
    BrownianNoise,
    Clipping,
    check_custom_grids,
    document,
    given_timesteps,
)
from ..schedules import betas as beta_schedules
from ..schedules import sigmas as sigma_schedules
from ._img2img import first_call


def c_noise(sigma: Any) -> np.ndarray:
    """CM's timestep of a level, c_noise(σ) = 1000 · log(σ) / 4 (Song et al. 2023, app. C;
    1e-44 keeps σ = 0 finite, as diffusers' ``sigma_to_t``)."""
    return 1000 * 0.25 * np.log(np.asarray(sigma, dtype=np.float64) + 1e-44)


Array = Any


@document
@dataclass(frozen=True, kw_only=True)
class CMStochasticIterative(BrownianNoise, BaseScheduler):
    """Multistep consistency sampling (Song et al. 2023, Alg. 1).

    One model call per step; stochastic (deterministic for one step). diffusers:
    ``CMStochasticIterativeScheduler`` (``ConsistencyModelPipeline``). Not to be confused
    with ``LCM`` (latent consistency models on a variance-preserving schedule).

    The held sample is the model input x / sqrt(σ² + σ_d²) (diffusers' ``scale_model_input``);
    the final sample is the native one. ``init(..., timesteps=[...])``: custom training-grid
    indices, strictly decreasing, below ``num_train_steps`` (diffusers' ``set_timesteps(
    timesteps=...)``); ``init(..., strength=s)``: image-to-image.
    """

    DIFFUSERS_CLASS = "CMStochasticIterativeScheduler"
    TRAINING_TIMESTEPS = False  # c_noise = 250 log σ
    PREDICTION_TYPES = ("consistency",)

    num_train_steps: int = option(
        40, "T, the number of levels of the training grid (the loop picks N of them)",
        "num_train_timesteps", low=2, high=MAX_TRAIN_STEPS,
    )  # fmt: skip
    sigma_min: float = option(0.002, "σ_min, the lowest level (Karras et al. 2022, Table 1)",
                              "sigma_min", low=0.0, low_open=True)  # fmt: skip
    sigma_max: float = option(80.0, "σ_max, the highest level (and the start)", "sigma_max",
                              low=0.0, low_open=True)  # fmt: skip
    sigma_data: float = option(0.5, "σ_d, the standard deviation of the data", "sigma_data",
                               low=0.0, low_open=True, high=MAX_SIGMA_DATA)  # fmt: skip
    s_noise: float = option(1.0, "S_noise, the scale of the re-noising", "s_noise", low=0.0)
    rho: float = option(7.0, "ρ of the Karras grid (eq. 5)", "rho", low=0.0, low_open=True)
    clip_denoised_sample: bool = option(True, "clip f(x, σ) to [-1, 1]", "clip_denoised")
    # with Clipping's processing of x̂_0 at a fixed range (diffusers' class has no option)
    clip_sample_range: ClassVar[float] = 1.0
    processes_x0 = Clipping.processes_x0
    _process = Clipping._process
    prediction_type: str = option("consistency", "what the model predicts: F of f = c_skip x "
                                  "+ c_out F", None, choices=PREDICTION_TYPES)  # fmt: skip

    def _check(self) -> None:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"CMStochasticIterative option sigma_min must be below sigma_max="
                f"{self.sigma_max}, got: {self.sigma_min}"
            )

    @property
    def deterministic(self) -> bool:
        return False

    def _indices(self, num_steps: int | None, timesteps: Any = None) -> np.ndarray:
        if timesteps is None:
            ops.check_num_steps(num_steps)
            if num_steps > self.num_train_steps:
                raise ValueError(
                    f"num_steps must be at most num_train_steps={self.num_train_steps}, "
                    f"got: {num_steps}"
                )
            return np.arange(num_steps)[::-1] * (self.num_train_steps // num_steps)
        return given_timesteps(timesteps, self.num_train_steps)

    def _grid(self, num_steps: int | None, timesteps: Any = None, strength: float = 1.0):
        """(c_noise timesteps, σ's float32 with σ_min appended, the first call run)."""
        k = self._indices(num_steps, timesteps)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        ramp = k[::-1] / (self.num_train_steps - 1)  # diffusers reads the indices ascending
        sig = (hi + ramp * (lo - hi)) ** self.rho  # eq. 5
        ts = c_noise(sig)
        sig = sigma_schedules.as_float32(np.append(sig, self.sigma_min))
        return ts, sig, first_call(len(ts), strength)

    def noise_levels(self, num_steps: int | None, **init_options: Any) -> tuple[float, float]:
        _, sig, cut = self._grid(num_steps, **init_options)
        return float(sigma_schedules.alpha_bar_of(sig[cut])), 1.0

    def native_levels(
        self, tableau: Tableau, num_steps: int, init_options: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """(1, σ) of each call: the native sample is variance-exploding, x = x_0 + σ ε."""
        _, sig, cut = self._grid(num_steps, **init_options)
        levels = sig[:-1][cut:]
        return np.ones_like(levels), levels

    @property
    def takes_unconditional(self) -> bool:
        return True

    def tableau(
        self, num_steps: int | None, timesteps: Any = None, strength: float = 1.0
    ) -> Tableau:
        ts, sig, cut = self._grid(num_steps, timesteps, strength)
        s, s_next = sig[:-1], sig[1:]
        d, lo = self.sigma_data, self.sigma_min
        c_skip = d**2 / ((s - lo) ** 2 + d**2)
        c_out = (s - lo) * d / np.sqrt(s**2 + d**2)
        hat = np.clip(s_next, lo, self.sigma_max)
        noise = self.s_noise * np.sqrt(hat**2 - lo**2) if len(ts) > 1 else np.zeros(len(ts))
        scale = np.append(np.sqrt(s**2 + d**2), 1.0)  # native x = scale · held
        return Tableau(
            timesteps=ts[cut:],
            x0_sample=c_skip[cut:],
            x0_output=c_out[cut:],
            update={(X0, 0): np.ones(len(ts) - cut)},
            noise=noise[cut:],
            input_scale=scale[cut:],
            start=(1.0, float(s[cut])),
            init_noise_sigma=self.sigma_max,
        )


@document
@dataclass(frozen=True, kw_only=True)
class SCM(BrownianNoise, BaseScheduler):
    """Multistep sampling of continuous-time consistency models in TrigFlow (Lu & Song 2024).

    One model call per step; stochastic. diffusers: ``SCMScheduler`` (Sana-Sprint). Not to
    be confused with ``CMStochasticIterative`` (variance-exploding consistency models).

    ``timesteps`` are the N angles s_i the model is called at (float32, as diffusers'; the
    Sana-Sprint pipeline feeds its transformer sin s / (sin s + cos s)). The loop starts
    from σ_d z (``init_noise_scale`` = σ_d, as the pipeline's start); the final sample is
    x̂_0 of the last call. ``init(..., max_timesteps=1.5708, intermediate_timesteps=None,
    timesteps=None)`` as diffusers' ``set_timesteps``: the first angle, a middle one for a
    two-step loop (Sana-Sprint's pipeline passes 1.3), or N + 1 custom angles ending at 0.
    """

    DIFFUSERS_CLASS = "SCMScheduler"
    TRAINING_TIMESTEPS = False  # TrigFlow angles
    PREDICTION_TYPES = ("trigflow",)
    INERT_KEYS = frozenset({"num_train_timesteps"})  # only bounds num_steps in diffusers

    sigma_data: float = option(0.5, "σ_d, the standard deviation of the data (and the start)",
                               "sigma_data", low=0.0, low_open=True,
                               high=MAX_SIGMA_DATA)  # fmt: skip
    prediction_type: str = option(
        "trigflow", "what the model predicts: F with x̂_0 = cos(s) x - sin(s) F (TrigFlow)",
        "prediction_type", choices=PREDICTION_TYPES,
    )  # fmt: skip

    @property
    def deterministic(self) -> bool:
        return False

    def program(self, num_steps: int | None, **init_options: Any):
        check_custom_grids(type(self).__name__, init_options)  # a flat list, not flattened
        custom = init_options.get("timesteps")
        if custom is not None:  # N + 1 angles: the base class counts N
            init_options = {**init_options, "timesteps": tuple(np.asarray(custom, float).ravel())}
            if num_steps is None:
                num_steps = len(init_options["timesteps"]) - 1
            return self._program_custom(num_steps, init_options)
        return super().program(num_steps, **init_options)

    def _program_custom(self, num_steps: int, init_options: dict):
        from ..core.scheduler import cached_program

        ops.check_num_steps(num_steps)
        return cached_program(self, num_steps, tuple(sorted(init_options.items())))

    def _angles(
        self,
        num_steps: int,
        max_timesteps: float | None = 1.5708,
        intermediate_timesteps: float | None = None,
        timesteps: Any = None,
    ) -> np.ndarray:
        """The N + 1 angles (float32), the last one 0."""
        if timesteps is not None:
            if max_timesteps is not None and max_timesteps != 1.5708:
                raise ValueError("pass at most one of timesteps= and max_timesteps=")
            grid = np.asarray(timesteps, dtype=np.float64)
            if len(grid) != num_steps + 1 or not np.all(np.isfinite(grid)):
                raise ValueError(
                    f"timesteps must be num_steps + 1 = {num_steps + 1} finite angles, got: "
                    f"{list(timesteps)!r}"
                )
            # TrigFlow's angles run from π/2 (noise) down to 0 (data); diffusers' first is
            # 1.5708, a hair above π/2
            if grid.min() < 0 or grid.max() > 1.5708 or np.any(np.diff(grid) >= 0):
                raise ValueError(
                    f"timesteps must be angles in [0, 1.5708] (TrigFlow's [0, π/2]), strictly "
                    f"decreasing, got: {list(timesteps)!r}"
                )
        elif max_timesteps is None:
            raise ValueError("give max_timesteps= or timesteps=")
        elif intermediate_timesteps is not None:
            if num_steps != 2:
                raise ValueError(
                    f"intermediate_timesteps is for a two-step loop, got num_steps={num_steps}"
                )
            grid = np.array([max_timesteps, intermediate_timesteps, 0.0])
        else:
            grid = np.linspace(max_timesteps, 0.0, num_steps + 1)
        return sigma_schedules.as_float32(grid)

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        s = self._angles(num_steps, **init_options)
        return float(np.cos(s[0]) ** 2), float(np.cos(s[-1]) ** 2)

    def tableau(
        self,
        num_steps: int,
        max_timesteps: float | None = 1.5708,
        intermediate_timesteps: float | None = None,
        timesteps: Any = None,
    ) -> Tableau:
        s = self._angles(num_steps, max_timesteps, intermediate_timesteps, timesteps)
        now, nxt = s[:-1], s[1:]
        return Tableau(
            timesteps=now,
            x0_sample=np.cos(now),
            x0_output=-np.sin(now),
            update={(X0, 0): np.cos(nxt)},
            noise=np.sin(nxt) * self.sigma_data,
            start=(float(np.cos(now[0])), float(np.sin(now[0]) * self.sigma_data)),
            init_noise_sigma=self.sigma_data,
        )


@document
@dataclass(frozen=True, kw_only=True)
class ConsistencyDecoder(BrownianNoise, BaseScheduler):
    """The consistency decoder's two-step sampler (Song et al. 2023, Alg. 1, on a
    variance-preserving sample; see the module).

    One model call per step; stochastic (the first step re-noises). diffusers:
    ``ConsistencyDecoderScheduler`` (inside ``ConsistencyDecoderVAE``; give the VAE
    ``DiffusersScheduler(ConsistencyDecoder())`` as its ``decoder_scheduler``). Not to be
    confused with ``CMStochasticIterative`` (variance-exploding consistency models).

    The held sample is the model input c_in x_t (diffusers' ``scale_model_input``); the final
    sample is f of the last call. The loop starts from sqrt(1 - ᾱ_t0) z, as the decoder's.
    Two steps are diffusers' loop (timesteps 1008 and 512; its class takes no other);
    N steps: 1008, then floor(1024 (N - i) / N) (see the module), 1 <= N <= 63; or
    ``init(None, x, timesteps=[...])``: custom training timesteps, strictly decreasing,
    below ``num_train_steps``.
    """

    DIFFUSERS_CLASS = "ConsistencyDecoderScheduler"
    PREDICTION_TYPES = ("consistency",)
    FIRST_TIMESTEP: ClassVar[int] = 1008  # the decoder's first (and its grid's 1024)
    MAX_STEPS: ClassVar[int] = 63  # 1024 (N - 1) / N reaches 1008 at N = 64

    num_train_steps: int = option(
        1024, "T, the number of training steps of the squared-cosine schedule",
        "num_train_timesteps", low=2, high=MAX_TRAIN_STEPS,
    )  # fmt: skip
    sigma_data: float = option(0.5, "σ_d, the standard deviation of the data", "sigma_data",
                               low=0.0, low_open=True, high=MAX_SIGMA_DATA)  # fmt: skip
    prediction_type: str = option("consistency", "what the model predicts: F of f = c_skip x "
                                  "+ c_out F", None, choices=PREDICTION_TYPES)  # fmt: skip

    @property
    def deterministic(self) -> bool:
        return False

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ_t for t = 0..T-1 (squared-cosine betas capped at 0.999), float64."""
        betas = beta_schedules.betas("squared_cosine", self.num_train_steps, 0.0, 0.0, None)
        return beta_schedules.alphas_cumprod(betas)

    def _timesteps(self, num_steps: int | None, timesteps: Any = None) -> np.ndarray:
        if timesteps is None:
            ops.check_num_steps(num_steps)
            if num_steps > self.MAX_STEPS:
                raise ValueError(
                    f"ConsistencyDecoder takes at most {self.MAX_STEPS} steps (its grid 1008, "
                    f"1024 (N - i) / N would repeat 1008), got num_steps={num_steps}; give "
                    "init(None, x, timesteps=[...]) for a finer grid"
                )
            i = np.arange(1, num_steps)
            rest = np.floor(1024 * (num_steps - i) / num_steps)
            grid = np.append(float(self.FIRST_TIMESTEP), rest)
            return given_timesteps(grid, self.num_train_steps, "the decoder's timesteps")
        if num_steps is not None:
            raise ValueError("pass num_steps=None with custom timesteps=")
        return given_timesteps(timesteps, self.num_train_steps)

    def program(self, num_steps: int | None, **init_options: Any):
        check_custom_grids(type(self).__name__, init_options)  # a flat list, not flattened
        if init_options.get("timesteps") is not None:  # a custom grid sets N
            ts = self._timesteps(num_steps, init_options["timesteps"])
            init_options = {**init_options, "timesteps": tuple(int(t) for t in ts)}
            return super().program(len(ts), **init_options)
        return super().program(num_steps, **init_options)

    def _levels(self, num_steps: int, timesteps: Any = None, strength: float = 1.0):
        """(timesteps, ᾱ there, ᾱ of the next call: 1 after the last)."""
        if timesteps is not None:
            ts = self._timesteps(None, timesteps)
            if len(ts) != num_steps:
                raise ValueError(f"num_steps={num_steps} but {len(ts)} timesteps")
        else:
            ts = self._timesteps(num_steps)
        ts = ts[first_call(len(ts), strength) :]
        acp = self.alphas_cumprod
        return ts, acp[ts], beta_schedules.alpha_bar_at(acp, np.append(ts[1:], -1), 1.0)

    def noise_levels(self, num_steps: int | None, **init_options: Any) -> tuple[float, float]:
        _, a_t, _ = self._levels(num_steps, **init_options)
        return float(a_t[0]), 1.0

    def native_levels(
        self, tableau: Tableau, num_steps: int, init_options: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """(sqrt(ᾱ_t), sqrt(1 - ᾱ_t)) of each call: the native sample is variance-preserving."""
        _, a_t, _ = self._levels(num_steps, **init_options)
        return np.sqrt(a_t), np.sqrt(1.0 - a_t)

    @property
    def takes_unconditional(self) -> bool:
        return True

    def tableau(
        self, num_steps: int | None, timesteps: Any = None, strength: float = 1.0
    ) -> Tableau:
        ts, a_t, a_next = self._levels(num_steps, timesteps, strength)
        d = self.sigma_data
        root = np.sqrt(a_t)
        sigma2 = 1.0 / a_t - 1.0  # σ_t² of x_t / sqrt(ᾱ_t)
        c_skip = d**2 / (root * (sigma2 + d**2))
        c_out = np.sqrt(sigma2) * d / np.sqrt(sigma2 + d**2)
        c_in = 1.0 / (root * np.sqrt(sigma2 + d**2))
        return Tableau(
            timesteps=ts,
            x0_sample=c_skip,
            x0_output=c_out,
            update={(X0, 0): np.sqrt(a_next)},
            noise=np.sqrt(1.0 - a_next),
            input_scale=np.append(1.0 / c_in, 1.0),  # native x_t = held / c_in
            start=(float(root[0]), float(np.sqrt(1.0 - a_t[0]))),
            init_noise_sigma=float(np.sqrt(1.0 - a_t[0])),
        )
