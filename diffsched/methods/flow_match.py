"""Flow matching: Euler, Heun and multistep consistency sampling of rectified-flow models
(Liu, Gong & Liu 2022, "Flow Straight and Fast"; Lipman et al. 2023; Esser et al. 2024,
"Scaling Rectified Flow Transformers", the sampler of Stable Diffusion 3 and FLUX).

A rectified-flow sample at level σ ∈ [0, 1] is the straight line between data and noise,
and the model predicts its velocity along that line (our prediction type ``flow``,
diffusers' ``flow_prediction``):

    x_σ = (1 - σ) x_0 + σ ε                                                        (1)
    v = dx_σ/dσ = ε - x_0,     x̂_0 = x_σ - σ v̂                                     (2)

Sampling integrates dx/dσ = v̂(x, σ) from σ_0 (1, or near it: pure noise) down to 0 over a
grid σ_0 > σ_1 > ... > σ_{N-1} > σ_N = 0 (the rectified-flow ODE of Liu et al. 2022, run
from noise to data):

    x_{i+1} = x_i + (σ_{i+1} - σ_i) v̂_i                                      (3, Euler)
    x_{i+1} = (1 - σ_{i+1}) x̂_0,i + σ_{i+1} z                        (4, stochastic / LCM)

(4) re-noises the estimate of x_0 to the next level with fresh noise z, as multistep
consistency sampling does (Luo et al. 2023, "Latent Consistency Models", Alg. 1). Heun's
method (Karras et al. 2022, Alg. 1 and 2, taken over to σ ∈ [0, 1]) adds churn
σ̂_i = (1 + γ_i) σ_i, x̂_i = x_i + sqrt(σ̂_i² - σ_i²) S_noise z, then

    d_i = σ_i v̂(x_i, σ_i) / σ̂_i,   x'_{i+1} = x̂_i + (σ_{i+1} - σ̂_i) d_i                  (5)
    x_{i+1} = x̂_i + (σ_{i+1} - σ̂_i) (d_i + v̂(x'_{i+1}, σ_{i+1})) / 2                       (6)

with the last step, to σ = 0, the Euler step (5) alone (it lands on x̂_0). The model is
called on x_σ itself (no input scaling) at the timestep t = σ T.

The grid (diffusers' ``set_timesteps``; T = ``num_train_steps``;
:func:`diffsched.schedules.flow.flow_grid` with each class's options):

    training levels   σ_k = k / T, k = T, ..., 1, statically shifted (9) unless dynamic  (7)
    N levels          linspace(σ_max, σ_min, N) between the first and last of (7)        (8)
    static shift      σ' = s σ / (1 + (s - 1) σ)             (Esser et al. 2024, eq. 23)  (9)
    dynamic shift     σ' = e^μ / (e^μ + 1/σ - 1)  or  μ / (μ + 1/σ - 1)  (exponential /    (10)
                      linear; FLUX), with μ = m n + b linear in the image's token count n
                      (the FLUX pipeline's ``calculate_shift``)
    terminal stretch  1 - σ'' = (1 - σ') (1 - σ_term) / (1 - σ'_{N-1})   (LTX-Video)     (11)
    re-gridding       Karras (ρ = 7) / exponential / beta levels between the first and     (12)
                      last level of (11) (:mod:`diffsched.schedules.sigmas`)
    timesteps         t_i = σ_i T                                                       (13)
    inversion         σ ↦ 1 - σ and a final level of 1 (Mochi's ``invert_sigmas``)      (14)

With a static shift s the low end is shifted twice, as in diffusers: σ_min in (8) is the
last *shifted* training level s/T / (1 + (s - 1)/T), and (9) is applied to (8) again.
diffusers stores the levels in float32: they are rounded the same way here, so that the
timesteps, and every coefficient formed from the levels, are diffusers' own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families, predictions
from ..core.engine import OUTPUT, SAMPLE, X0, Tableau
from ..core.options import option
from ..core.scheduler import (
    MAX_TRAIN_STEPS,
    BaseScheduler,
    BrownianNoise,
    Churn,
    SigmaGrid,
    document,
)
from ..schedules import comfy, flow, shifts
from ._img2img import check_strength
from ._karras import interleave

FLOW_PREDICTION_TYPES = (predictions.FLOW,)
# the least static shift diffusers' float32 arithmetic takes: below it, 1 + (s - 1) σ at
# σ = 1 rounds to 0 (s - 1 to -1), and the top level s / (1 + (s - 1)) is 0/0 or inf
MIN_SHIFT = float(np.finfo(np.float32).eps)


def first_flow_call(num_steps: int, strength: float) -> int:
    """The first step run at image-to-image ``strength`` s, as the flow pipelines (SD3, FLUX
    img2img) cut the schedule: t_start = int(max(N - min(N s, N), 0)), i.e. floor(N (1 - s)).

    (The variance-preserving pipelines keep floor(N s) steps instead; the two differ when
    N s is not an integer.) Any s in (0, 1] keeps at least one step.
    """
    strength = check_strength(strength)
    return int(max(num_steps - min(num_steps * strength, num_steps), 0))


@dataclass(frozen=True, kw_only=True)
class _FlowMatchBase(BaseScheduler):
    """Options and the grid shared by the flow-matching methods."""

    PREDICTION_TYPES = FLOW_PREDICTION_TYPES
    # the model is called at t = σ T, not at training steps of a beta schedule
    TRAINING_TIMESTEPS = False

    num_train_steps: int = option(
        1000, "T: the timestep of a level σ is σ T, and the training levels are k / T",
        "num_train_timesteps", low=1, high=MAX_TRAIN_STEPS,
    )  # fmt: skip
    shift: float = option(
        1.0, "the static shift s of the levels, σ' = s σ / (1 + (s - 1) σ) (Esser et al. 2024, "
        "eq. 23; SD3 uses 3); not used with use_dynamic_shifting", "shift",
        low=MIN_SHIFT,
    )  # fmt: skip
    prediction_type: str = option(
        "flow", "what the model predicts: flow, the velocity v = ε - x_0 of "
        "x_σ = (1 - σ) x_0 + σ ε (diffusers' flow_prediction; its flow-matching schedulers "
        "take nothing else)", None, choices=FLOW_PREDICTION_TYPES,
    )  # fmt: skip

    # -- the grid --------------------------------------------------------------------------

    def flow_grid_options(self) -> flow.GridOptions:
        """This class's options of :func:`~diffsched.schedules.flow.flow_grid`: the static
        shift, and the defaults of the options only some classes have (a class with one of
        them states its own)."""
        return flow.GridOptions(
            num_train_steps=self.num_train_steps, shift=self.shift,
            time_shift_type="exponential", shift_terminal=None, sigma_schedule=None,
            invert_sigmas=False,
        )  # fmt: skip

    def _mu(self, mu: Any, image_seq_len: Any) -> float | None:
        """μ of the dynamic shift: None here (a class without one; as diffusers, μ only
        acts with dynamic shifting)."""
        if mu is not None and image_seq_len is not None:
            raise ValueError("pass at most one of mu= and image_seq_len=")
        return None

    def _grid(
        self,
        num_steps: int,
        sigmas: Any = None,
        timesteps: Any = None,
        mu: Any = None,
        image_seq_len: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps of the N calls, their N levels and the final one), float32 values."""
        return flow.flow_grid(
            num_steps, self.flow_grid_options(), mu=self._mu(mu, image_seq_len),
            sigmas=sigmas, timesteps=timesteps,
        )  # fmt: skip

    # -- the contract ----------------------------------------------------------------------

    def custom_steps(self, init_options: dict) -> int | None:
        """Custom ``sigmas=`` are diffusers' flow-matching ones: N levels, one per model
        call, without the final 0 (unlike the N + 1 levels ``sigmas=`` means for ``Euler``),
        as ``timesteps=``; given both, they must agree."""
        counts = {
            name: len(np.asarray(init_options[name]).reshape(-1))
            for name in ("sigmas", "timesteps")
            if init_options.get(name) is not None
        }
        if len(set(counts.values())) > 1:
            raise ValueError(
                f"sigmas= and timesteps= must have the same length (one per model call), "
                f"got {counts['sigmas']} and {counts['timesteps']}"
            )
        return next(iter(counts.values()), None)

    def _bad_call(self, program_tableau: Tableau, n: int) -> str:
        t = program_tableau.timesteps[n]
        return (
            f"{type(self).__name__}: model call {n} (timestep {t}) has a non-finite "
            "coefficient; check mu, the shifts and any custom sigmas / timesteps"
        )

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        """(σ at the first model call, σ of the final sample) of an N-step loop: flow levels
        of (1), not ᾱ's; the final sample approximates the flow ODE solution between them
        (:func:`diffsched.exact.reference.solve_flow_ode`)."""
        if self.flow_grid_options().invert_sigmas:
            raise ValueError(
                "invert_sigmas=True runs a model whose time is reversed (t = (1 - σ) T, Mochi); "
                "its levels are not those of the exact flow models (t = σ T)"
            )
        sig = self.tableau(num_steps, **init_options).start
        return float(sig[1]), 0.0

    def _start(self, sig: np.ndarray) -> tuple[float, float]:
        """add_noise's start: x = (1 - σ) x_0 + σ ε at the first call (diffusers' scale_noise)."""
        return (1.0 - float(sig[0]), float(sig[0]))


@dataclass(frozen=True, kw_only=True)
class _ShiftedGrid(SigmaGrid):
    """The σ-grid options of FlowMatchEulerDiscreteScheduler and FlowMatchLCMScheduler, and
    their one table: Euler's step (3) or x̂_0 re-noised (4)."""

    use_dynamic_shifting: bool = option(
        False, "shift each image's levels by μ (eq. 10; FLUX) instead of by the static shift; "
        "init then needs mu= or image_seq_len=", "use_dynamic_shifting",
    )  # fmt: skip
    base_shift: float = option(0.5, "μ at base_image_seq_len tokens (image_seq_len=)",
                               "base_shift")  # fmt: skip
    max_shift: float = option(1.15, "μ at max_image_seq_len tokens (image_seq_len=)",
                              "max_shift")  # fmt: skip
    base_image_seq_len: int = option(256, "the token count of base_shift", "base_image_seq_len",
                                     low=1)  # fmt: skip
    max_image_seq_len: int = option(4096, "the token count of max_shift", "max_image_seq_len",
                                    low=1)  # fmt: skip
    invert_sigmas: bool = option(
        False, "σ ↦ 1 - σ with a final level of 1, timesteps (1 - σ) T (eq. 14; Mochi, whose "
        "model runs time backwards)", "invert_sigmas",
    )  # fmt: skip
    shift_terminal: float | None = option(
        None, "stretch the shifted levels so that the last model call's is this (eq. 11; "
        "LTX-Video uses 0.1); None or 0: no stretch", "shift_terminal", nullable=True,
        low=0.0, high=1.0, high_open=True,
    )  # fmt: skip
    time_shift_type: str = option(
        "exponential", "the dynamic shift: exponential e^μ / (e^μ + 1/σ - 1) or linear "
        "μ / (μ + 1/σ - 1) (eq. 10)", "time_shift_type", choices=shifts.TIME_SHIFT_TYPES,
    )  # fmt: skip

    def flow_grid_options(self) -> flow.GridOptions:
        return flow.GridOptions(
            num_train_steps=self.num_train_steps, shift=self.shift,  # type: ignore[attr-defined]
            time_shift_type=self.time_shift_type, shift_terminal=self.shift_terminal,
            sigma_schedule=self.sigma_kind, invert_sigmas=self.invert_sigmas,
        )  # fmt: skip

    def _mu(self, mu: Any, image_seq_len: Any) -> float | None:
        """μ of the dynamic shift (eq. 10; None without it): given, or from the image's
        token count."""
        if mu is not None and image_seq_len is not None:
            raise ValueError("pass at most one of mu= and image_seq_len=")
        if not self.use_dynamic_shifting:
            return None  # as diffusers: μ only acts with dynamic shifting
        if image_seq_len is not None:
            if isinstance(image_seq_len, bool) or not isinstance(image_seq_len, int | np.integer):
                raise TypeError(f"image_seq_len must be an integer, got: {image_seq_len!r}")
            if image_seq_len < 1:
                raise ValueError(f"image_seq_len must be at least 1, got: {image_seq_len}")
            if self.base_image_seq_len == self.max_image_seq_len:
                raise ValueError(
                    "image_seq_len= needs base_image_seq_len and max_image_seq_len to differ, "
                    f"both are {self.max_image_seq_len}"
                )
            mu = shifts.mu_from_image_seq_len(
                int(image_seq_len), self.base_image_seq_len, self.max_image_seq_len,
                self.base_shift, self.max_shift,
            )  # fmt: skip
        if mu is None:
            raise ValueError(
                f"{type(self).__name__} with use_dynamic_shifting=True needs the shift of the "
                "image: pass mu= (diffusers' set_timesteps(mu=...)) or image_seq_len= (the "
                "number of latent tokens, from which mu is computed as the FLUX pipeline does)"
            )
        mu = shifts.checked_mu(mu, dynamic=True, who=type(self).__name__)
        if self.time_shift_type == "linear" and mu <= 0:
            raise ValueError(f"the linear time shift needs mu > 0, got: {mu}")
        return mu

    def _check(self) -> None:
        kind = self.sigma_kind  # at most one re-gridding, as diffusers checks in __init__
        if kind is not None and (kind.startswith("ays-") or kind in comfy.VE_LISTS):
            raise ValueError(
                f"{type(self).__name__}: sigma_schedule={self.sigma_schedule!r} lists "
                "variance-exploding σ's; flow levels take karras, exponential, beta or "
                f"{comfy.TABLE_SCHEDULES + comfy.FLOW_LISTS}"
            )

    def tableau(
        self,
        num_steps: int,
        sigmas: Any = None,
        timesteps: Any = None,
        mu: Any = None,
        image_seq_len: Any = None,
        strength: float = 1.0,
    ) -> Tableau:
        """Euler's step (3), or x̂_0 re-noised to the next level (4) where the class is
        stochastic (FlowMatchEuler's ``stochastic_sampling``, FlowMatchLCM)."""
        stochastic = not self.deterministic  # type: ignore[attr-defined]
        ts, sig = self._grid(num_steps, sigmas, timesteps, mu, image_seq_len)
        cut = first_flow_call(len(ts), strength)
        ts, sig = ts[cut:], sig[cut:]
        s, s_next = sig[:-1], sig[1:]
        x0 = predictions.x0_from_alpha_sigma(self.prediction_type, 1.0 - s, s)  # (2)
        if stochastic:  # (4): x' = (1 - σ') x̂_0 + σ' z
            update = {(X0, 0): 1.0 - s_next}
            noise = s_next
        else:  # (3): x' = x + (σ' - σ) v̂ (σ may be 0 under invert_sigmas: v̂ itself is used)
            update = {(SAMPLE, 0): np.ones_like(s), (OUTPUT, 0): s_next - s}
            noise = None
        return Tableau(
            timesteps=ts,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update=update,
            noise=noise,
            start=self._start(sig),
        )


@document
@dataclass(frozen=True, kw_only=True)
class FlowMatchEuler(BrownianNoise, _ShiftedGrid, _FlowMatchBase):
    """Euler's method on the rectified-flow ODE (Liu et al. 2022; Esser et al. 2024).

    First order; one model call per step; deterministic (eq. 3) unless
    ``stochastic_sampling``, which re-noises x̂_0 to the next level instead (eq. 4).
    diffusers: ``FlowMatchEulerDiscreteScheduler`` (Stable Diffusion 3, FLUX, LTX-Video).
    Not to be confused with Euler (``Euler``), which integrates the variance-exploding
    probability-flow ODE of a model trained on a beta schedule, or EDM's Euler
    (``EDMEuler``).

    ``init(..., mu=m)`` or ``init(..., image_seq_len=n)`` give the dynamic shift
    (``use_dynamic_shifting``; μ from n as the FLUX pipeline computes it; both are ignored
    without dynamic shifting, as in diffusers). ``init(..., sigmas=[...])`` takes N
    unshifted levels, one per call, without the final 0, as diffusers'
    ``set_timesteps(sigmas=...)`` (they go through eqs. 9-12), and ``timesteps=[...]`` N
    timesteps (used as given; their levels t / T are shifted); ``num_steps`` is then None
    or N. ``init(..., strength=s)`` is image-to-image as the SD3 / FLUX img2img pipelines
    cut the grid (:func:`first_flow_call`); ``add_noise`` is diffusers' ``scale_noise``.
    diffusers' ``step`` also takes ``s_churn``, ``s_tmin``, ``s_tmax`` and ``s_noise`` but
    ignores them, and its ``per_token_timesteps`` is not supported.
    """

    DIFFUSERS_CLASS = "FlowMatchEulerDiscreteScheduler"
    FAMILY = families.FLOW
    CLI_NAME = "flow-euler"

    stochastic_sampling: bool = option(
        False, "replace the Euler step by re-noising x̂_0 to the next level with fresh "
        "noise (eq. 4)", "stochastic_sampling",
    )  # fmt: skip

    @property
    def deterministic(self) -> bool:
        return not self.stochastic_sampling


@document
@dataclass(frozen=True, kw_only=True)
class FlowMatchHeun(BrownianNoise, Churn, _FlowMatchBase):
    """Heun's method on the rectified-flow ODE (Karras et al. 2022, Alg. 1 and 2, in σ ∈ [0, 1]).

    Second order; two model calls per step (one on the last step, to σ = 0); deterministic
    unless ``s_churn`` > 0 (Alg. 2's churn, which diffusers applies to the flow sample as
    if it were variance exploding). diffusers: ``FlowMatchHeunDiscreteScheduler``.
    Not to be confused with Heun (``Heun``), which integrates the variance-exploding
    probability-flow ODE of a model trained on a beta schedule.

    Only the static shift (diffusers' class has no dynamic shift, custom grid or
    re-gridding). ``init(..., strength=s)`` is image-to-image as the flow img2img pipelines
    cut the grid (the first of a step's two calls); ``add_noise`` is diffusers'
    ``scale_noise``.
    """

    DIFFUSERS_CLASS = "FlowMatchHeunDiscreteScheduler"
    FAMILY = families.FLOW
    CLI_NAME = "flow-heun"
    ORDER = 2
    CALLS_PER_STEP = 2  # one on the last step, to σ = 0

    @property
    def deterministic(self) -> bool:
        return self.s_churn == 0

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        ts, sig = self._grid(num_steps)
        cut = first_flow_call(len(ts), strength)
        ts, sig = ts[cut:], sig[cut:]
        n = len(ts)
        s, s_next = sig[:-1], sig[1:]
        # Alg. 2, lines 4-6; γ counts every level of the full interleaved grid (2N - 1)
        gamma = np.where(
            (self.s_tmin <= s) & (s <= self.s_tmax),
            min(self.s_churn / (2 * num_steps - 1), math.sqrt(2) - 1),
            0.0,
        )
        hat = s * (gamma + 1)
        churn = np.sqrt(hat**2 - s**2) * self.s_noise  # x̂ = x + churn · z
        dt = s_next - hat
        slope = s / hat  # d_i = (σ_i / σ̂_i) v̂_i: diffusers' x̂_0 uses σ_i, its slope σ̂_i
        calls = 2 * n - 1
        predictor, corrector = slice(0, None, 2), slice(1, None, 2)
        update = {term: np.zeros(calls) for term in ((SAMPLE, 0), (OUTPUT, 0), (OUTPUT, 1))}
        noise = np.zeros(calls)
        # (5): x' = x + churn z + dt d_i (the last step, to 0, ends here: x' = x̂ - σ v̂)
        update[(SAMPLE, 0)][predictor] = 1.0
        update[(OUTPUT, 0)][predictor] = dt * slope
        noise[predictor] = churn
        # (6): x_{i+1} = x̂ + dt (d_i + v̂') / 2 = x' - dt d_i / 2 + dt v̂' / 2, with x' the
        # sample of this call and d_i from the predictor's output, one call back
        update[(SAMPLE, 0)][corrector] = 1.0
        update[(OUTPUT, 1)][corrector] = -0.5 * (dt * slope)[:-1]
        update[(OUTPUT, 0)][corrector] = 0.5 * dt[:-1]
        sigma = interleave(s, s_next)  # the level each call's model sees
        x0 = predictions.x0_from_alpha_sigma(self.prediction_type, 1.0 - sigma, sigma)  # (2)
        return Tableau(
            timesteps=interleave(ts, ts[1:]),
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update={term: col for term, col in update.items() if n > 1 or term[1] == 0},
            noise=None if self.deterministic else noise,
            start=self._start(sig),
        )


@document
@dataclass(frozen=True, kw_only=True)
class FlowMatchLCM(BrownianNoise, _ShiftedGrid, _FlowMatchBase):
    """Multistep consistency sampling of a flow model (Luo et al. 2023, Alg. 1, in flow form).

    First order; one model call per step; stochastic: each step re-noises the estimate
    x̂_0 = x - σ v̂ to the next level with fresh noise (eq. 4). diffusers:
    ``FlowMatchLCMScheduler``. Not to be confused with LCM (``LCM``), the consistency
    sampler of a variance-preserving model with its c_skip / c_out boundary condition; its
    step equals ``FlowMatchEuler(stochastic_sampling=True)``'s on the same grid.

    ``init`` takes ``mu=``, ``image_seq_len=``, ``sigmas=``, ``timesteps=`` and
    ``strength=`` as :class:`FlowMatchEuler` does. diffusers' scale-wise generation
    (``scale_factors``, upscaling x̂_0 between steps; ``upscale_mode``) is not supported.
    """

    DIFFUSERS_CLASS = "FlowMatchLCMScheduler"
    FAMILY = families.FLOW
    CLI_NAME = "flow-lcm"
    # only acts together with scale_factors, which must be None here
    INERT_KEYS = frozenset({"upscale_mode"})

    scale_factors: tuple[float, ...] | None = option(
        None, "diffusers' scale-wise generation (x̂_0 upscaled by these factors between "
        "steps): not supported, must be None", "scale_factors", nullable=True,
    )  # fmt: skip

    def _check(self) -> None:
        super()._check()
        if self.scale_factors is not None:
            raise ValueError(
                "FlowMatchLCM option scale_factors (diffusers' scale-wise generation, which "
                f"upscales x̂_0 between steps) is not supported; it must be None, got: "
                f"{self.scale_factors!r}"
            )

    @property
    def deterministic(self) -> bool:
        return False  # the step of FlowMatchEuler(stochastic_sampling=True): eq. 4


def is_flow_match(scheduler: object) -> bool:
    """Whether ``scheduler`` is one of the rectified-flow classes of this module (its grid
    lists every level, the final one included, as a call's)."""
    return isinstance(scheduler, _FlowMatchBase)
