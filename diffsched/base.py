"""The scheduler contract shared by every method.

A scheduler is an immutable, hashable configuration (a frozen dataclass). Its two pure
functions follow the ``Bumblebee.Scheduler`` behaviour:

* ``init(num_steps, sample_template, key=0) -> (state, timesteps)``: every per-step
  coefficient is computed here, on the host, in float64, then moved once to the backend,
  dtype and device of ``sample_template`` as a table inside ``state``;
* ``step(state, sample, prediction) -> (state, prev_sample)``: gathers this step's row of
  the table and does a few fused array operations. No Python branching on array values,
  no host syncs, fixed shapes: a whole loop compiles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from . import _ops, predictions, schedules

Array = Any


class Option(NamedTuple):
    """How one of our options maps onto a key of diffusers' scheduler config."""

    name: str
    diffusers_key: str
    to_diffusers: Callable[[Any], Any] = lambda v: v
    from_diffusers: Callable[[Any], Any] = lambda v: v


def _value_map(mapping: dict[str, str], what: str) -> tuple[Callable, Callable]:
    inverse = {v: k for k, v in mapping.items()}

    def back(value):
        if value not in inverse:
            raise ValueError(f"unsupported {what} {value!r}; supported: {sorted(inverse)}")
        return inverse[value]

    return mapping.__getitem__, back


def _trained_betas_back(value):
    return None if value is None else tuple(float(b) for b in value)


# Options every scheduler shares, with diffusers' key for each.
NOISE_SCHEDULE_OPTIONS = (
    Option("num_train_steps", "num_train_timesteps", int, int),
    Option(
        "beta_schedule",
        "beta_schedule",
        *_value_map(schedules.DIFFUSERS_BETA_SCHEDULES, "beta_schedule"),
    ),
    Option("beta_start", "beta_start", float, float),
    Option("beta_end", "beta_end", float, float),
    Option(
        "trained_betas",
        "trained_betas",
        lambda v: None if v is None else list(v),
        _trained_betas_back,
    ),
    Option(
        "prediction_type",
        "prediction_type",
        *_value_map(predictions.DIFFUSERS_PREDICTION_TYPES, "prediction_type"),
    ),
    Option(
        "alpha_clip_strategy",
        "set_alpha_to_one",
        lambda v: v == "one",
        lambda v: "one" if v else "alpha_zero",
    ),
)
SPACING_OPTIONS = (
    Option("timesteps_offset", "steps_offset", int, int),
    Option("timestep_spacing", "timestep_spacing"),
)
DENOISED_SAMPLE_OPTIONS = (
    Option("clip_denoised_sample", "clip_sample", bool, bool),
    Option("clip_sample_range", "clip_sample_range", float, float),
    Option("thresholding", "thresholding", bool, bool),
    Option("dynamic_thresholding_ratio", "dynamic_thresholding_ratio", float, float),
    Option("sample_max_value", "sample_max_value", float, float),
    Option("rescale_betas_zero_snr", "rescale_betas_zero_snr", bool, bool),
)


@dataclass(frozen=True, kw_only=True)
class SpacingOptions:
    """Which training timesteps an N-step loop visits (DDIM, PNDM).

    Attributes:
        timesteps_offset: added to every timestep of the ``leading`` spacing (diffusers'
            ``steps_offset``; Stable Diffusion uses 1).
        timestep_spacing: ``"leading"``, ``"linspace"`` or ``"trailing"``; see
            :func:`diffsched.schedules.spaced_timesteps`.
    """

    timesteps_offset: int = 0
    timestep_spacing: str = "leading"

    def _check_spacing_options(self) -> None:
        check_int("timesteps_offset", self.timesteps_offset, 0)
        check_choice("timestep_spacing", self.timestep_spacing, schedules.TIMESTEP_SPACINGS)

    def timesteps(self, num_steps: int) -> np.ndarray:
        """The N training timesteps of an N-step loop, descending."""
        check_int("num_steps", num_steps, 1)
        num_train_steps = self.num_train_steps  # type: ignore[attr-defined]
        if num_steps > num_train_steps:
            raise ValueError(
                f"num_steps must be at most num_train_steps={num_train_steps}, got: {num_steps}"
            )
        ts = schedules.spaced_timesteps(
            self.timestep_spacing, num_train_steps, num_steps, self.timesteps_offset
        )
        if ts.max() >= num_train_steps:
            raise ValueError(
                f"timesteps_offset={self.timesteps_offset} with {num_steps} steps gives "
                f"timestep {int(ts.max())}, past the last training timestep {num_train_steps - 1}"
            )
        return ts


class X0Row(NamedTuple):
    """One step's coefficients for schedulers that form the predicted x_0 (DDIM, LCM)."""

    x0_sample: Array
    x0_prediction: Array
    prev_x0: Array
    prev_sample: Array
    prev_prediction: Array
    sigma: Array


def x0_table(
    x0: predictions.Linear,
    prev_x0: np.ndarray,
    prev_sample: np.ndarray,
    prev_prediction: np.ndarray,
    sigma: np.ndarray,
    processes_x0: bool,
) -> np.ndarray:
    """The (num_steps, 6) table of :class:`X0Row`, folding x̂_0 in when it stays linear."""
    if not processes_x0:
        prev_sample = prev_sample + prev_x0 * x0.sample_coef
        prev_prediction = prev_prediction + prev_x0 * x0.prediction_coef
        prev_x0 = np.zeros_like(prev_x0)
    columns = (x0.sample_coef, x0.prediction_coef, prev_x0, prev_sample, prev_prediction, sigma)
    return np.stack(
        [np.broadcast_to(np.asarray(c, np.float64), prev_x0.shape) for c in columns], axis=1
    )


@dataclass(frozen=True, kw_only=True)
class DenoisedSampleOptions:
    """What to do with the predicted x_0 before it is used, and zero terminal SNR.

    Attributes:
        clip_denoised_sample: clip the predicted x_0 to [-clip_sample_range,
            clip_sample_range] (diffusers' ``clip_sample``).
        clip_sample_range: the clipping bound.
        thresholding: dynamic thresholding of x_0 instead of clipping (Saharia et al. 2022,
            sec. 2.3); takes precedence over ``clip_denoised_sample``.
        dynamic_thresholding_ratio: the quantile of |x_0| used as the threshold.
        sample_max_value: the largest threshold allowed.
        rescale_betas_zero_snr: rescale the betas so that ᾱ_{T-1} = 0 (Lin et al. 2023);
            use it with ``timestep_spacing="trailing"`` and angular-velocity models.
    """

    clip_denoised_sample: bool = True
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    rescale_betas_zero_snr: bool = False

    def _check_denoised_sample_options(self) -> None:
        check_range("clip_sample_range", self.clip_sample_range, 0.0, float("inf"), lo_open=True)
        check_range("dynamic_thresholding_ratio", self.dynamic_thresholding_ratio, 0.0, 1.0)
        check_range("sample_max_value", self.sample_max_value, 1.0, float("inf"))

    @property
    def _processes_x0(self) -> bool:
        return bool(self.thresholding or self.clip_denoised_sample)

    def _x0_step(
        self,
        state: Any,
        sample: Array,
        prediction: Array,
        noise: Array | None,
        *,
        stochastic: bool,
        sample_term: bool,
        prediction_term: bool,
    ) -> tuple[Any, Array]:
        """The whole step of a scheduler whose state is (step, table, key) and whose table
        rows are :class:`X0Row`: returns (next state, x_prev in the sample's dtype)."""
        _, s, p, noise, row = self._begin_step(state, sample, prediction, noise)  # type: ignore[attr-defined]
        noise = self._draw_noise(state, s, noise) if stochastic else None  # type: ignore[attr-defined]
        prev = self._x0_update(X0Row(*row), s, p, noise, sample_term=sample_term,
                               prediction_term=prediction_term)  # fmt: skip
        return state._replace(step=state.step + 1), self._finish(sample, prev)  # type: ignore[attr-defined]

    def _x0_update(
        self,
        row: X0Row,
        sample: Array,
        prediction: Array,
        noise: Array | None,
        *,
        sample_term: bool,
        prediction_term: bool,
    ) -> Array:
        """x_prev = prev_x0 · x̂_0 + prev_sample · x_t + prev_prediction · pred + sigma · z.

        x̂_0 = x0_sample · x_t + x0_prediction · pred is clipped or thresholded first. When
        it is not, it is linear in (x_t, pred) and the table has folded it into the other
        two coefficients already, so it is not formed at all. ``sample_term`` and
        ``prediction_term`` say (from the config alone) whether those coefficients can be
        nonzero; ``noise`` is None for a deterministic step.
        """
        terms = []
        if self._processes_x0:
            if self.prediction_type == "sample":
                x0 = prediction
            else:
                x0 = _ops.lincomb((row.x0_sample, sample), (row.x0_prediction, prediction))
            # processing always yields a fresh array, which the final sum may reuse
            x0 = self._process_x0(x0, owned=x0 is not prediction)
            terms.append((row.prev_x0, x0))
        if sample_term or not self._processes_x0:
            terms.append((row.prev_sample, sample))
        if prediction_term or not self._processes_x0:
            terms.append((row.prev_prediction, prediction))
        if noise is not None:
            terms.append((row.sigma, noise))
        return _ops.lincomb(*terms, owned=terms[0][1] if self._processes_x0 else None)

    def _process_x0(self, x0: Array, owned: bool) -> Array:
        """Dynamic thresholding, or clipping, of the predicted x_0 (at most one of them)."""
        if self.thresholding:
            return predictions.dynamic_threshold(
                x0, self.dynamic_thresholding_ratio, self.sample_max_value
            )
        if self.clip_denoised_sample:
            return _ops.clip(x0, self.clip_sample_range, owned)
        return x0


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got: {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected at least {minimum}, got: {value}")
    return int(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got: {value!r}")


def check_range(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        ok = (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise ValueError(f"{name} must be a number in {bracket}{lo}, {hi}], got: {value!r}")


@dataclass(frozen=True, kw_only=True)
class Scheduler:
    """Fields every scheduler has: the training noise schedule and what the model predicts.

    Attributes:
        num_train_steps: number of diffusion steps the model was trained with (T).
        beta_schedule: ``"linear"``, ``"quadratic"`` (diffusers' ``scaled_linear``) or
            ``"squared_cosine"`` (diffusers' ``squaredcos_cap_v2``); see
            :func:`diffsched.schedules.betas`.
        beta_start: beta at t = 0 (linear and quadratic schedules).
        beta_end: beta at t = T - 1 (linear and quadratic schedules).
        trained_betas: explicit betas (length ``num_train_steps``); overrides the schedule.
        prediction_type: what the model predicts: ``"noise"`` (ε), ``"angular_velocity"``
            (v, diffusers' ``v_prediction``) or ``"sample"`` (x_0).
        alpha_clip_strategy: ᾱ for the step past t = 0: ``"one"`` (lands on clean data)
            or ``"alpha_zero"`` (lands on ᾱ_0; diffusers' ``set_alpha_to_one=False``).
    """

    DIFFUSERS_CLASS: ClassVar[str]
    OPTIONS: ClassVar[tuple[Option, ...]]
    PREDICTION_TYPES: ClassVar[tuple[str, ...]] = predictions.PREDICTION_TYPES

    num_train_steps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "noise"
    alpha_clip_strategy: str = "one"

    def __post_init__(self) -> None:
        self._check_option_types()
        check_int("num_train_steps", self.num_train_steps, 1)
        check_choice("beta_schedule", self.beta_schedule, schedules.BETA_SCHEDULES)
        check_choice("prediction_type", self.prediction_type, self.PREDICTION_TYPES)
        check_choice(
            "alpha_clip_strategy", self.alpha_clip_strategy, schedules.ALPHA_CLIP_STRATEGIES
        )
        if self.trained_betas is not None:
            betas = tuple(float(b) for b in np.asarray(self.trained_betas).reshape(-1))
            object.__setattr__(self, "trained_betas", betas)
            if len(betas) != self.num_train_steps:
                raise ValueError(
                    f"trained_betas must have num_train_steps={self.num_train_steps} entries, "
                    f"got: {len(betas)}"
                )

    def _check_option_types(self) -> None:
        """Each option has the type of its default: no truthy strings for booleans."""
        for field in dataclasses.fields(self):
            value, default = getattr(self, field.name), field.default
            if isinstance(default, bool):
                ok = isinstance(value, bool | np.bool_)
            elif isinstance(default, float):
                ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
            else:
                continue  # int and str options have checks of their own
            if not ok:
                raise TypeError(
                    f"{type(self).__name__} option {field.name} expects a "
                    f"{type(default).__name__}, got: {value!r}"
                )

    # -- the training schedule -----------------------------------------------------------

    @property
    def betas(self) -> np.ndarray:
        """The training betas, float64 (after any zero-terminal-SNR rescaling)."""
        b = schedules.betas(
            self.beta_schedule,
            self.num_train_steps,
            self.beta_start,
            self.beta_end,
            self.trained_betas,
        )
        if getattr(self, "rescale_betas_zero_snr", False):
            b = schedules.rescale_to_zero_terminal_snr(b)
        return b

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ_t for t = 0..T-1, float64: the noise levels the model was trained at."""
        return schedules.alphas_cumprod(self.betas)

    @property
    def final_alpha_cumprod(self) -> float:
        return schedules.final_alpha_cumprod(self.alphas_cumprod, self.alpha_clip_strategy)

    # -- what a loop starts from and ends at ----------------------------------------------

    deterministic: ClassVar[bool] = True  # whether step draws noise (DDIM: eta > 0)

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        """(ᾱ at the first model call, ᾱ of the final sample) of an N-step loop.

        The final sample of a deterministic scheduler approximates the probability-flow ODE
        solution from the first level to the last; see :mod:`diffsched.reference`.
        """
        raise NotImplementedError

    # -- diffusers configs ---------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """A diffusers scheduler config (``scheduler_config.json`` contents) for this scheduler.

        Options diffusers passes at step time rather than in its config (DDIM's ``eta`` and
        ``rederive_noise``) travel under the private key ``"_diffsched"``, which diffusers
        ignores and :func:`diffsched.from_config` reads back.
        """
        config: dict[str, Any] = {"_class_name": self.DIFFUSERS_CLASS}
        for option in self.OPTIONS:
            config[option.diffusers_key] = option.to_diffusers(getattr(self, option.name))
        extra = self._step_time_options()
        if extra:
            config["_diffsched"] = extra
        return config

    def _step_time_options(self) -> dict[str, Any]:
        return {}

    def replace(self, **changes: Any):
        """A copy with some options changed (the config itself is immutable)."""
        return dataclasses.replace(self, **changes)

    # -- shared pieces of init and step --------------------------------------------------

    def _init_arrays(
        self, sample_template: Array, timesteps: np.ndarray, table: np.ndarray
    ) -> tuple[Any, Array, Array, Array]:
        """(xp, step counter, table, timesteps) on the backend and device of the template."""
        bad = ~np.isfinite(table).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{type(self).__name__}: step {i} (timestep {int(timesteps[i])}) has no finite "
                f"update: ᾱ there is {self.alphas_cumprod[int(timesteps[i])]:.3g}, and "
                f"prediction_type={self.prediction_type!r} cannot give x_0 from it; with "
                "rescale_betas_zero_snr use prediction_type='angular_velocity'"
            )
        xp = _ops.namespace(sample_template)
        dtype = _ops.compute_dtype(xp, sample_template.dtype)
        step = xp.asarray(0, dtype=xp.int32, device=_ops.device(sample_template))
        table = _ops.asarray(xp, table, dtype, sample_template)
        timesteps = _ops.asarray(xp, timesteps, _ops.index_dtype(xp), sample_template)
        return xp, step, table, timesteps

    def _begin_step(self, state: Any, sample: Array, prediction: Array, noise: Array | None):
        """Checks the inputs and returns (xp, sample, prediction, noise, coefficients).

        The arrays come back in the state's compute dtype; coefficients are this step's
        row of the table, as 0-d arrays.
        """
        xp = _ops.namespace(sample, prediction)
        if _ops.namespace(state.table) is not xp:
            raise TypeError(
                f"the state holds {type(state.table).__name__} arrays but step was given "
                f"{type(sample).__name__} arrays; init and step must use one array library"
            )
        if sample.shape != prediction.shape:
            raise ValueError(
                f"sample and prediction must have the same shape, got {tuple(sample.shape)} "
                f"and {tuple(prediction.shape)}"
            )
        table = state.table
        num_steps = table.shape[0]
        index = _ops.concrete_int(state.step)
        if index is not None and not 0 <= index < num_steps:
            raise IndexError(
                f"{type(self).__name__}.step called after the last of its {num_steps} steps "
                f"(step index {index}); call init again to start a new loop"
            )
        dtype = table.dtype
        s = sample if sample.dtype == dtype else xp.astype(sample, dtype)
        p = prediction if prediction.dtype == dtype else xp.astype(prediction, dtype)
        if noise is not None:
            if noise.shape != sample.shape:
                raise ValueError(
                    f"noise must have the sample's shape {tuple(sample.shape)}, "
                    f"got {tuple(noise.shape)}"
                )
            noise = noise if noise.dtype == dtype else xp.astype(noise, dtype)
        return xp, s, p, noise, _ops.coefficients(table, state.step, index)

    def _draw_noise(self, state: Any, like: Array, noise: Array | None) -> Array:
        if noise is not None:
            return noise
        return _ops.normal(state.key, state.step, tuple(like.shape), like.dtype, like)

    @staticmethod
    def _finish(sample: Array, out: Array) -> Array:
        """Casts the result back to the caller's dtype (a no-op unless it was half precision)."""
        if out.dtype == sample.dtype:
            return out
        return _ops.namespace(out).astype(out, sample.dtype)
