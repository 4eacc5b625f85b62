"""Score SDE, variance exploding: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021,
"Score-Based Generative Modeling through Stochastic Differential Equations".

The VE SDE dx = sqrt(d[σ²]/dt) dw has the geometric noise levels σ(t) = σ_min (σ_max /
σ_min)^t; its reverse is sampled by predictor-corrector steps (Alg. 1) with a model s of
the score ∇_x log p_σ(x). On an N-step loop, t_i = 1 - i (1 - ε_s) / (N - 1) (ε_s:
``sampling_eps``) and the model is called at σ(t_i). Each step i runs C Langevin corrector
calls, then one predictor call (Alg. 2 and 4):

    corrector:  ε = 2 (r ‖z‖ / ‖s‖)²,   x ← x + ε s + sqrt(2 ε) z                    (Alg. 4)
    predictor:  x ← x + g_i² s + g_i z,   g_i = sqrt(σ_j² - σ_{j-1}²)                (Alg. 2)

r is the signal-to-noise ratio ``snr``; ‖·‖ is the norm of each batch element (axis 0),
averaged over the batch, as in the paper's code. The predictor's reverse-diffusion step
uses the discrete levels σ_j = exp(log σ_min + j/(N - 1) log(σ_max/σ_min)), j = N-1-i
(σ_{-1} = 0), as diffusers' ``step_pred`` does: close to, but not equal to σ(t_i). The
last predictor returns its mean (no z): that is what the pipeline returns.

The corrector's step size depends on the model output and the noise: the one nonlinear
operation of this method is outside the engine's x̂_0 slot, so :class:`ScoreSdeVe` scales
the prediction by ε and the draw by sqrt(2 ε) before the engine's (linear) step.

**Variance preserving** (:class:`ScoreSdeVp`): the VP SDE dx = -½ β(t) x dt + sqrt(β(t)) dw
with β(t) = β_min + t (β_max - β_min) (eq. 11, the continuous DDPM), whose perturbation
kernel has mean coefficient m(t) = exp(-¼ t² (β_max - β_min) - ½ t β_min) and standard
deviation s(t) = sqrt(1 - m(t)²) (eq. 33); the model predicts ε, the score being -ε / s(t).
Each call is one Euler-Maruyama step of the reverse SDE (eq. 6) from t_i = linspace(1, ε_s,
N)[i] with dt = -1/N (diffusers' step: 1/N, not the grid's spacing):

    x̄ = x - dt' (-½ β x + β ε / s),   x ← x̄ + sqrt(β dt') z,   dt' = 1/N,   β = β(t_i),

the last call returning its mean x̄ (as the VE loop's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import engine, ops, predictions
from ..core.engine import OUTPUT, SAMPLE, Tableau
from ..core.options import option
from ..core.scheduler import BaseScheduler, BrownianNoise, document
from ..schedules import sigmas as sigma_schedules

Array = Any


@document
@dataclass(frozen=True, kw_only=True)
class ScoreSdeVe(BaseScheduler):
    """Predictor-corrector sampling of the variance-exploding score SDE (Song et al. 2021).

    First order; 1 + ``correct_steps`` model calls per step (the correctors, then the
    predictor); stochastic. diffusers: ``ScoreSdeVeScheduler`` (driven as
    ``ScoreSdeVePipeline`` drives it). Not to be confused with ``KarrasVe`` (Karras et al.
    2022's second-order sampler of the same SDE).

    The model is the score s(x, σ): ``timesteps`` are the noise levels σ(t_i) the
    pipeline calls it with, each repeated 1 + ``correct_steps`` times. ``noise=``: the draw
    of this call (one per call: the corrector's z, or the predictor's). The final sample is
    the last predictor's mean. The batch axis is axis 0 (the corrector's norms).
    """

    DIFFUSERS_CLASS = "ScoreSdeVeScheduler"
    NO_PER_ELEMENT = "its corrector's step size depends on norms of the whole sample"
    TRAINING_TIMESTEPS = False  # the model takes σ
    PREDICTION_TYPES = ("score",)
    # set_sigmas at construction only: the pipeline's set_timesteps(N) / set_sigmas(N) decide
    INERT_KEYS = frozenset({"num_train_timesteps"})

    snr: float = option(0.15, "r of the corrector (Alg. 4): its signal-to-noise ratio", "snr",
                        low=0.0)  # fmt: skip
    sigma_min: float = option(0.01, "σ_min, the lowest noise level", "sigma_min", low=0.0,
                              low_open=True)  # fmt: skip
    sigma_max: float = option(1348.0, "σ_max, the highest noise level (and the start)",
                              "sigma_max", low=0.0, low_open=True)  # fmt: skip
    sampling_eps: float = option(
        1e-5, "ε_s: the loop's t runs from 1 down to ε_s", "sampling_eps", low=0.0, high=1.0,
        low_open=True,
    )  # fmt: skip
    correct_steps: int = option(1, "C: Langevin corrector calls before each predictor call",
                                "correct_steps", low=0)  # fmt: skip
    prediction_type: str = option("score", "what the model predicts: the score ∇_x log p",
                                  None, choices=PREDICTION_TYPES)  # fmt: skip

    def _check(self) -> None:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"ScoreSdeVe option sigma_min must be below sigma_max={self.sigma_max}, "
                f"got: {self.sigma_min}"
            )

    @property
    def deterministic(self) -> bool:
        return False

    def _levels(self, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(σ(t_i) the model is called at; g_i of the predictor), in float64 (diffusers'
        float32 grids agree to float32 precision)."""
        ops.check_num_steps(num_steps)
        t = np.linspace(1.0, self.sampling_eps, num_steps)
        model_sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        discrete = np.exp(
            np.linspace(math.log(self.sigma_min), math.log(self.sigma_max), num_steps)
        )
        j = num_steps - 1 - np.arange(num_steps)  # floor(t_i (N - 1))
        below = np.where(j > 0, discrete[np.maximum(j - 1, 0)], 0.0)
        return model_sigma, np.sqrt(discrete[j] ** 2 - below**2)

    def noise_levels(self, num_steps: int) -> tuple[float, float]:
        sigma, _ = self._levels(num_steps)
        return float(sigma_schedules.alpha_bar_of(sigma[0])), 1.0

    def tableau(self, num_steps: int) -> Tableau:
        steps = ops.check_num_steps(num_steps)
        ops.check_calls(
            type(self).__name__,
            steps * (self.correct_steps + 1),
            f"{steps} steps with correct_steps={self.correct_steps}",
        )
        sigma, g = self._levels(num_steps)
        calls = self.correct_steps + 1
        predictor = np.arange(num_steps * calls) % calls == self.correct_steps
        g_call = np.repeat(g, calls)
        # correctors: x + (ε s) + (sqrt(2ε) z), the factors applied in step
        out_output = np.where(predictor, g_call**2, 1.0)
        noise = np.where(predictor, g_call, 1.0)
        noise[-1] = 0.0  # the pipeline returns the last predictor's mean
        zeros = np.zeros(num_steps * calls)
        return Tableau(
            timesteps=np.repeat(sigma, calls),
            x0_sample=zeros,
            x0_output=zeros,
            update={(SAMPLE, 0): np.ones(num_steps * calls), (OUTPUT, 0): out_output},
            noise=noise,
            init_noise_sigma=self.sigma_max,
        )

    @property
    def takes_unconditional(self) -> bool:
        return False  # a Langevin corrector has no x̂_0 / ε̂ split to guide

    def step(
        self,
        state: engine.EngineState,
        sample: Array,
        prediction: Array,
        *,
        noise: Array | None = None,
        unconditional: Array | None = None,
    ) -> tuple[engine.EngineState, Array]:
        """One model call: a corrector's (Alg. 4) or the predictor's (Alg. 2); see the class.

        ``noise`` overrides the call's draw (the sample's shape). ``unconditional=``
        (CFG++) is refused: a Langevin corrector has no x̂_0 / ε̂ split to guide.
        """
        if unconditional is not None:
            raise TypeError(
                f"{type(self).__name__}.step takes no unconditional= (CFG++): a Langevin "
                "corrector has no x̂_0 / ε̂ split to guide; guide the score classically "
                "(ds.Guided(..., cfg_pp=False))"
            )
        ops.check_step_arrays(type(self).__name__, sample=sample, prediction=prediction,
                              noise=noise)  # fmt: skip
        if self.correct_steps == 0:
            return super().step(state, sample, prediction, noise=noise)
        self.check_state(state)
        xp = ops.namespace(sample, prediction)
        if (
            tuple(prediction.shape) != tuple(sample.shape)
            or len(sample.shape) < 1
            or not (ops.is_float(sample) and ops.is_float(prediction))
        ):  # the engine's step raises the clear error (before any cast of a complex input)
            return super().step(state, sample, prediction, noise=noise)
        dtype = state.coefs.dtype
        m = prediction if prediction.dtype == dtype else xp.astype(prediction, dtype)
        if noise is None:
            x = sample if sample.dtype == dtype else xp.astype(sample, dtype)
            z = engine.call_noise(state, x)
        elif tuple(noise.shape) != tuple(sample.shape) or not ops.is_float(noise):
            return super().step(state, sample, prediction, noise=noise)
        else:
            z = noise if noise.dtype == dtype else xp.astype(noise, dtype)
        if math.prod(sample.shape) == 0:  # an empty batch: no norms, nothing to correct
            return super().step(state, sample, m, noise=z)
        batch = sample.shape[0]

        def mean_norm(a: Array) -> Array:
            return xp.mean(xp.sqrt(xp.sum(xp.reshape(a, (batch, -1)) ** 2, axis=1)))

        eps = 2.0 * (self.snr * mean_norm(z) / mean_norm(m)) ** 2  # Alg. 4
        corrector = xp.astype(state.step % (self.correct_steps + 1) < self.correct_steps, dtype)
        m = ops.select(corrector, eps * m, m)
        z = ops.select(corrector, xp.sqrt(2.0 * eps) * z, z)
        return super().step(state, sample, m, noise=z)


MAX_BETA = 100.0  # the largest β(t) of the VP SDE (see ScoreSdeVp's options)


@document
@dataclass(frozen=True, kw_only=True)
class ScoreSdeVp(BrownianNoise, BaseScheduler):
    """Euler-Maruyama sampling of the variance-preserving score SDE (Song et al. 2021).

    First order; one model call per step; stochastic. diffusers: ``ScoreSdeVpScheduler``
    (deprecated, no pipeline; its ``step_pred`` returns the sample and its mean). Not to be
    confused with ``DDPM`` (the same SDE's ancestral discretisation on a trained table).

    The model predicts ε at the continuous time t (``timesteps``: t_i from 1 down to
    ``sampling_eps``); the loop starts from standard normal noise (the VP prior) and its
    final sample is the last step's mean.
    """

    DIFFUSERS_CLASS = "ScoreSdeVpScheduler"
    TRAINING_TIMESTEPS = False  # continuous t in [ε_s, 1]
    PREDICTION_TYPES = ("noise",)
    # diffusers' class reads num_train_timesteps only in __len__
    INERT_KEYS = frozenset({"num_train_timesteps"})

    # β ≤ 100: the reverse drift grows the sample by up to exp(¼ (β_min + β_max)) over the
    # loop before the score pulls it back (e^50 here; 20 is the paper's β_max), which
    # float32 holds
    beta_min: float = option(0.1, "β_min: β(0) of the linear β(t) (eq. 11)", "beta_min",
                             low=0.0, high=MAX_BETA)  # fmt: skip
    beta_max: float = option(20.0, "β_max: β(1) of the linear β(t) (eq. 11)", "beta_max",
                             low=0.0, high=MAX_BETA)  # fmt: skip
    sampling_eps: float = option(
        1e-3, "ε_s: the loop's t runs from 1 down to ε_s", "sampling_eps", low=0.0, high=1.0,
        low_open=True,
    )  # fmt: skip
    prediction_type: str = option("noise", "what the model predicts: noise (ε; the score is "
                                  "-ε / s(t))", None, choices=PREDICTION_TYPES)  # fmt: skip

    def _check(self) -> None:
        if self.beta_min == 0 and self.beta_max == 0:
            raise ValueError(
                "ScoreSdeVp options beta_min and beta_max: at least one must be positive (β(t) "
                "= 0 has no noise to remove), got beta_min=0.0, beta_max=0.0"
            )

    @property
    def deterministic(self) -> bool:
        return False

    def times(self, num_steps: int) -> np.ndarray:
        """t_i = linspace(1, ε_s, N), float64."""
        ops.check_num_steps(num_steps)
        return np.linspace(1.0, self.sampling_eps, num_steps)

    def mean_coefficient(self, t: np.ndarray) -> np.ndarray:
        """m(t) = exp(-¼ t² (β_max - β_min) - ½ t β_min) of x(t) = m x_0 + s ε (eq. 33)."""
        return np.exp(-0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min)

    def noise_levels(self, num_steps: int) -> tuple[float, float]:
        t = self.times(num_steps)
        return float(self.mean_coefficient(t[0]) ** 2), 1.0

    def tableau(self, num_steps: int) -> Tableau:
        t = self.times(num_steps)
        m = self.mean_coefficient(t)
        s = np.sqrt(-np.expm1(2.0 * np.log(m)))  # s(t) = sqrt(1 - m²)
        beta = self.beta_min + t * (self.beta_max - self.beta_min)
        dt = 1.0 / num_steps  # diffusers' |dt| (see the module)
        noise = np.sqrt(beta * dt)
        noise[-1] = 0.0  # the last step returns its mean
        x0 = predictions.x0_coefficients("noise", m**2)
        return Tableau(
            timesteps=t,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update={(SAMPLE, 0): 1.0 + 0.5 * beta * dt, (OUTPUT, 0): -beta * dt / s},
            noise=noise,
            start=(float(m[0]), float(s[0])),
            init_noise_sigma=1.0,
        )
