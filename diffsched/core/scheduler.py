"""The scheduler contract shared by every method.

A scheduler is an immutable, hashable configuration (a frozen dataclass of options declared
with :func:`~diffsched.core.options.option`). Its two pure functions follow the
``Bumblebee.Scheduler`` behaviour:

* ``init(num_steps, sample_template, key=0, **init_options) -> (state, timesteps)``: the
  method's :class:`~diffsched.core.engine.Tableau` is built and compiled on the host, in
  float64, then moved once to the backend, dtype and device of ``sample_template``;
* ``step(state, sample, prediction, *, noise=None) -> (state, prev_sample)``: the engine's
  one step, the same for every method.

A method class holds only its math: its options, its docstring and ``tableau``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..schedules import betas as beta_schedules
from ..schedules import comfy as comfy_schedules
from . import adaptive, brownian, engine, families, ops, per_element, predictions
from .options import STEP_TIME, check, describe, option, options_doc, specs

Array = Any
MAX_TRAIN_STEPS = 100_000
# σ_data, the data's standard deviation (EDM and consistency models: 0.5 or 1): above it the
# start σ_data · ε and σ_data² overflow float64 (the fuzzer's SCM at 7e307)
MAX_SIGMA_DATA = 1e6


def tuple_of_floats(value: Any) -> tuple[float, ...]:
    """A list (or array) of real numbers as a tuple of floats; anything else a TypeError."""
    if isinstance(value, str | bytes | dict | bool) or np.ndim(value) != 1:
        raise TypeError(f"expected a list of numbers, got: {value!r}")
    if any(isinstance(v, bool | str) for v in np.asarray(value, dtype=object).reshape(-1)):
        raise TypeError(f"expected a list of numbers, got: {value!r}")
    try:
        out = tuple(float(b) for b in np.asarray(value, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError) as err:
        raise TypeError(f"expected a list of numbers, got: {value!r}") from err
    return out


@dataclass(frozen=True, kw_only=True)
class BaseScheduler:
    """The contract every method shares, without a training noise schedule (EDM's σ-only
    methods derive from it directly; :class:`Scheduler` adds the betas)."""

    DIFFUSERS_CLASS: ClassVar[str | None]  # None: a method diffusers does not have
    # the one declaration everything else derives from (diffsched.methods.CLASSES, the CLI,
    # the docs' nav and tables, the generic tests): a public class of a module of
    # diffsched.methods is registered by being there; these say where it is listed
    FAMILY: ClassVar[str] = families.MORE  # its section (diffsched.core.families)
    CLI_NAME: ClassVar[str | None] = None  # its name on the command line; None: not there

    # None, or why init(..., offsets=) cannot run this method per element
    NO_PER_ELEMENT: ClassVar[str | None] = None
    # an adaptive loop (docs/adaptive.md): init(max_calls, ...) bounds the model calls; the
    # state says the next timestep (next_timestep) and whether the loop is over (done)
    ADAPTIVE: ClassVar[bool] = False
    # the custom-grid keywords of init the tuner (diffsched.grids.Grid) tries, in this order
    TUNED_LEVELS: ClassVar[tuple[str, ...]] = ("sigmas", "timesteps")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "CLI_NAME" not in cls.__dict__:  # declared by each class, never inherited
            cls.CLI_NAME = None

    PREDICTION_TYPES: ClassVar[tuple[str, ...]] = predictions.PREDICTION_TYPES
    # keys of the diffusers class that never change its result here (accepted, dropped)
    INERT_KEYS: ClassVar[frozenset[str]] = frozenset()
    # per-method facts, uniform across methods so one test can check them all
    ORDER: ClassVar[int] = 1
    CALLS_PER_STEP: ClassVar[int] = 1
    # whether the model is called at (fractional) training steps of its beta schedule, as
    # the exact models of diffsched.exact expect
    TRAINING_TIMESTEPS: ClassVar[bool] = True

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name, (default, spec) in specs(self).items():
            value = getattr(self, name)
            if name == "trained_betas" and value is not None:
                try:
                    value = tuple_of_floats(value)
                except TypeError as err:
                    raise TypeError(f"{owner} option trained_betas: {err}") from None
            elif name == "prediction_type":
                allowed = self.PREDICTION_TYPES
                if not isinstance(value, str) or value not in allowed:
                    ours = {v: k for k, v in predictions.DIFFUSERS_PREDICTION_TYPES.items()}
                    hint = ""
                    if isinstance(value, str) and ours.get(value, value) != value:
                        hint = (
                            f" ({value!r} is diffusers' name for prediction_type={ours[value]!r})"
                        )
                    raise ValueError(
                        f"{owner} option prediction_type must be one of {allowed}, "
                        f"got: {value!r}{hint}"
                    )
            else:
                value = check(owner, name, value, default, spec)
            object.__setattr__(self, name, value)
        self._check_schedule()
        if isinstance(self, SigmaGrid):
            _ = self.sigma_kind  # at most one σ grid, said at construction
        self._check()

    def _check_schedule(self) -> None:
        """Validates the training schedule (:class:`Scheduler`'s betas), with a clear error."""

    def _check(self) -> None:
        """Checks between options (a method's own); called after every option is valid."""

    # -- what a loop is ------------------------------------------------------------------

    @property
    def deterministic(self) -> bool:
        """Whether ``step`` never draws noise (decided by the config alone)."""
        return True

    def tableau(self, num_steps: int, **init_options: Any) -> engine.Tableau:
        """The method's model calls for an N-step loop: its math, in its native space."""
        raise NotImplementedError

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        """(ᾱ at the first model call, ᾱ of the final sample) of an N-step loop.

        The final sample of a deterministic scheduler approximates the probability-flow ODE
        solution from the first level to the last; see :mod:`diffsched.exact.reference`.
        """
        raise NotImplementedError

    def _process(self, x0: Array, owned: bool) -> Array:
        return x0

    def prediction_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the model output ``step`` takes for a sample of ``sample_shape``:
        the sample's own for every method but those whose model gives several predictions
        at once (``Piflow``)."""
        return tuple(sample_shape)

    @property
    def processes_x0(self) -> bool:
        """Whether x̂_0 is clipped or thresholded (then it is a nonlinear operand)."""
        return False

    def _bad_call(self, program_tableau: engine.Tableau, n: int) -> str:
        t = program_tableau.timesteps[n]
        head = f"{type(self).__name__}: model call {n} (timestep {t}) has no finite update"
        if getattr(self, "rescale_betas_zero_snr", False):
            rising = self._zero_snr_rising(np.asarray(program_tableau.timesteps))
            if rising:
                return f"{head}: {rising}"
        if getattr(self, "rescale_betas_zero_snr", False) and self.prediction_type == "noise":
            return (
                f"{head}; prediction_type='noise' cannot give x_0 at zero signal-to-noise "
                "ratio (rescale_betas_zero_snr): use prediction_type='angular_velocity'"
            )
        clipped = getattr(self, "lambda_min_clipped", -np.inf)
        if clipped > -np.inf:
            return (
                f"{head}: lambda_min_clipped={clipped!r} clips the grid to the training steps "
                "whose λ = log(α/σ) lies above it, which leaves too few noise levels; use a "
                "smaller lambda_min_clipped (-inf: no clipping)"
            )
        ts = np.asarray(program_tableau.timesteps)
        if len(np.unique(ts)) < len(ts) and type(self).CALLS_PER_STEP == 1:
            return (
                f"{head}: the grid visits a noise level twice (timesteps "
                f"{describe(ts.tolist(), 120)}); "
                f"use fewer steps than num_steps={len(ts)} for "
                f"num_train_steps={getattr(self, 'num_train_steps', '?')}, or another spacing"
            )
        changed = [f"{name}={describe(getattr(self, name))}" for name, (default, _) in
                   specs(self).items() if getattr(self, name) != default]  # fmt: skip
        return (
            f"{head}: prediction_type={self.prediction_type!r} cannot give x_0 at that "
            f"noise level with these options ({', '.join(changed) or 'the defaults'})"
        )

    def _zero_snr_rising(self, timesteps: np.ndarray) -> str | None:
        """Why a loop over diffusers' clamped zero-SNR levels fails, where it does: the
        σ-grid classes clamp ᾱ of the last training step to 2^-24 (a finite σ_max, as
        diffusers), which leaves that σ below the next step's, so a loop through both
        (``timesteps`` holds both) rises there (an ancestral split of a rising step has no
        real noise). None elsewhere."""
        from ..schedules import discrete

        grid_options = getattr(self, "grid_options", None)
        acp = getattr(self, "alphas_cumprod", None)
        if grid_options is None or acp is None or len(acp) < 2:
            return None
        options = grid_options()
        clamp = discrete.ZERO_SNR_ALPHA_BAR
        if not getattr(options, "zero_terminal_snr", False) or not acp[-2] < clamp:
            return None
        if not {len(acp) - 1, len(acp) - 2} <= set(np.round(timesteps).astype(int).tolist()):
            return None
        top, below = math.sqrt((1 - clamp) / clamp), math.sqrt((1 - acp[-2]) / acp[-2])
        return (
            f"diffusers' zero-SNR clamp of the last training step's ᾱ to 2^-24 puts its σ "
            f"({top:.4g}) below the next step's ({below:.4g}), so a loop through both "
            f"timesteps {len(acp) - 1} and {len(acp) - 2} rises there; take fewer steps or "
            "another spacing (diffusers' own loop gives NaN there)"
        )

    def program(self, num_steps: int, **init_options: Any) -> engine.Program:
        """The compiled tableau of an N-step loop (cached per config and options).

        With a custom grid (``sigmas=`` of N + 1 levels or ``timesteps=`` of N points),
        ``num_steps`` may be None; otherwise it must agree with the grid.
        """
        check_custom_grids(type(self).__name__, init_options)  # before any class reads it
        count = self.custom_steps(init_options)
        if num_steps is None and count is not None:
            num_steps = count
        num_steps = ops.check_num_steps(num_steps)
        if count is not None and count != num_steps:
            raise ValueError(
                f"num_steps={num_steps} disagrees with the custom grid, which gives {count} "
                "steps (pass num_steps=None)"
            )
        try:
            return cached_program(self, num_steps, tuple(sorted(init_options.items())))
        except TypeError as err:
            if "unhashable" not in str(err):
                raise
            return self._compile(num_steps, init_options)

    def custom_steps(self, init_options: dict) -> int | None:
        """The N a custom grid of ``init_options`` gives (None without one): ``sigmas=``
        holds N + 1 levels (the final one included), ``timesteps=`` N points. Methods whose
        grids count otherwise (diffusers' flow classes: one level per call) override it."""
        count = None
        if init_options.get("sigmas") is not None:
            count = len(np.asarray(init_options["sigmas"]).reshape(-1)) - 1
        if init_options.get("timesteps") is not None:
            count = len(np.asarray(init_options["timesteps"]).reshape(-1))
        return count

    def _compile(self, num_steps: int, init_options: dict) -> engine.Program:
        ops.check_num_steps(num_steps)  # (the custom grids were checked by program)
        try:
            # a table's arithmetic may meet 0/0, x/0 or overflow (a level visited twice, an
            # option out of range): its non-finite numbers are refused below, each with its
            # cause, so NumPy's warnings would only come first (or, under -W error, instead)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                return self._compile_checked(num_steps, init_options)
        except (OverflowError, ZeroDivisionError, FloatingPointError, IndexError,
                RecursionError) as err:  # fmt: skip
            raise ValueError(self._out_of_range(init_options, err)) from None
        except ValueError as err:
            if "math domain error" not in str(err):
                raise
            raise ValueError(self._out_of_range(init_options, err)) from None

    def _out_of_range(self, init_options: dict, err: Exception) -> str:
        """The message for an arithmetic failure while building a loop: the options and init
        options that led there (one of them is out of the range the math allows)."""
        changed = [f"{name}={describe(getattr(self, name), 60)}"
                   for name, (default, _) in specs(self).items()
                   if getattr(self, name) != default]  # fmt: skip
        given = [f"{k}={describe(v, 60)}" for k, v in sorted(init_options.items())]
        return (
            f"{type(self).__name__}: these options give numbers out of range "
            f"({type(err).__name__}: {describe(str(err), 80)}): options "
            f"{', '.join(changed) or 'the defaults'}; init options {', '.join(given) or 'none'}; "
            "bring the largest of them into the range the schedule can represent"
        )

    def _compile_checked(self, num_steps: int, init_options: dict) -> engine.Program:
        import inspect

        params = inspect.signature(self.tableau).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            accepted = [n for n in params if n != "num_steps"]
            unknown = sorted(set(init_options) - set(accepted))
            if unknown:
                raise TypeError(
                    f"{type(self).__name__}.init got unexpected keyword argument(s) {unknown}; "
                    f"its init options: {accepted or 'none'}"
                )
        tab = self.tableau(num_steps, **init_options)
        program = engine.compile(
            tab, processes_x0=self.processes_x0, describe_bad=lambda n: self._bad_call(tab, n)
        )
        return self._with_step_columns(program, tab, num_steps, init_options)

    # -- CFG++ and Brownian noise: per-call numbers beyond the engine's columns ----------

    def native_levels(
        self, tableau: engine.Tableau, num_steps: int, init_options: dict
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(α, σ) of each call's native sample x = α x_0 + σ ε (N,), read off the tableau's
        x̂_0 conversion (:func:`diffsched.core.predictions.native_levels`); for x_0 models,
        off the same config's ε-model tableau. None where the prediction type says nothing
        of the level (then ``unconditional=`` and ``noise_type="brownian"`` are refused)."""
        kind = getattr(self, "prediction_type", None)
        n = tableau.num_calls
        a = np.broadcast_to(np.asarray(tableau.x0_sample, np.float64), (n,))
        b = np.broadcast_to(np.asarray(tableau.x0_output, np.float64), (n,))
        if kind == "sample" and "noise" in self.PREDICTION_TYPES:
            twin = dataclasses.replace(self, prediction_type="noise")  # type: ignore[type-var]
            return twin.native_levels(twin.tableau(num_steps, **init_options), num_steps,
                                      init_options)  # fmt: skip
        if not isinstance(kind, str):
            return None
        return predictions.native_levels(kind, a, b)

    def _with_step_columns(
        self, program: engine.Program, tableau: engine.Tableau, num_steps: int, init_options: dict
    ) -> engine.Program:
        """``program`` with eight per-call columns (:func:`engine.with_columns`; the first
        extra ones): the CFG++ weight of the guided-minus-unconditional output
        (:func:`engine.guided_step`), the two tree levels τ, τ' of the call's Brownian draw,
        and those levels as leaf coordinates with the draw's scale
        (:func:`diffsched.core.brownian.leaf_columns`)."""
        n = program.num_calls
        levels = self.native_levels(tableau, num_steps, init_options)
        held = program.held
        weight, tau = np.zeros(n), np.zeros(n)
        if levels is not None and held is not None:
            alpha, sigma = (np.broadcast_to(np.asarray(v, np.float64), (n,)) for v in levels)
            c = program.coefs[:n]
            out_x, out_m = c[:, engine.COEF_COLUMNS.index("out_sample")], c[
                :, engine.COEF_COLUMNS.index("out_output")]  # fmt: skip
            with np.errstate(all="ignore"):
                # the held update A x + B F = P x̂_0 + Q ε̂ with ε̂ = (x - α x̂_0)/σ: CFG++
                # keeps P x̂_0(guided) and takes Q ε̂(unconditional), which is the plain
                # update on the guided output plus α (A b - B a) (guided - unconditional)
                alpha_held = alpha / held.scale[:-1]
                weight = out_m + alpha_held * (out_x * held.x0_output - out_m * held.x0_sample)
            weight = np.where(np.isfinite(weight), weight, out_m)  # α = 0 or undefined
            tau = brownian.flow_time(alpha, sigma)
        elif getattr(self, "noise_type", "gaussian") == "brownian":
            raise ValueError(
                f"{type(self).__name__} option noise_type='brownian' needs the noise level of "
                f"each call, which prediction_type={getattr(self, 'prediction_type', None)!r} "
                "does not give; use noise_type='gaussian'"
            )
        noise = program.coefs[:n, engine.COEF_COLUMNS.index("out_noise")]
        intervals = self.brownian_intervals(tau, noise, num_steps, init_options)
        columns = np.concatenate(
            [weight[:, None], intervals, brownian.leaf_columns(intervals)], axis=1
        )
        return engine.with_columns(program, columns)

    def brownian_intervals(
        self, tau: np.ndarray, noise: np.ndarray, num_steps: int, init_options: dict
    ) -> np.ndarray:
        """(N, 2) the tree levels each call's Brownian draw spans (``noise_type="brownian"``),
        from each call's τ = σ/(α + σ) and noise coefficient: by default from the call's
        level to the next different one (:func:`diffsched.core.brownian.call_intervals`);
        a method whose draws span other intervals (an SDE solver drawing twice over one
        step) says so here."""
        return brownian.call_intervals(tau, noise)

    @property
    def takes_unconditional(self) -> bool:
        """Whether ``step`` takes ``unconditional=`` (CFG++): where the prediction type
        gives each call's noise level."""
        kind = getattr(self, "prediction_type", None)
        return kind in ("noise", "angular_velocity", "trigflow", predictions.FLOW, "data_velocity",
                        "negative_noise", "score") or (
            kind == "sample" and "noise" in self.PREDICTION_TYPES)  # fmt: skip

    # -- the contract --------------------------------------------------------------------

    def init(
        self, num_steps: int | None, sample_template: Array, key: Any = 0, **init_options: Any
    ) -> tuple[engine.EngineState, Array]:
        """The loop state and the timesteps of every model call (``len(timesteps)`` calls).

        ``init_options`` are the method's (``strength=`` for image-to-image, custom
        ``sigmas=`` / ``timesteps=`` where the method takes them). ``sample_template`` is
        any array of the loop's shape, dtype and device (its values are not read), or a
        ``jax.ShapeDtypeStruct``.
        """
        sample_template = ops.template(sample_template)
        if init_options.get("offsets") is not None or np.ndim(init_options.get("strength")) > 0:
            if getattr(self, "noise_type", "gaussian") == "brownian":
                raise ValueError(
                    f"{type(self).__name__}: noise_type='brownian' is not supported with "
                    "per-element schedules (init(..., offsets=) or an array strength=); "
                    "use noise_type='gaussian'"
                )
            return self._init_per_element(num_steps, sample_template, key, init_options)
        init_options.pop("offsets", None)
        program = self.program(num_steps, **init_options)
        made = (self.fingerprint, _digest(repr(sorted(init_options.items()))))
        try:
            return engine.init(program, sample_template, key, made)
        except engine.Float32RangeError as err:
            said = self._schedule_said()
            raise engine.Float32RangeError(f"{type(self).__name__}: {err}{said}") from None

    def _schedule_said(self) -> str:
        """The options that set this config's noise schedule (those changed from their
        defaults, else all), for a message."""
        options = specs(self)
        names = [n for n in options if n in _SCHEDULE_OPTIONS]
        changed = [n for n in names if getattr(self, n) != options[n][0]] or names
        said = ", ".join(f"{n}={describe(getattr(self, n), 60)}" for n in changed)
        # and the other options set (a noise scale, η, churn can overflow a coefficient)
        others = [f"{n}={describe(getattr(self, n), 60)}" for n, (default, _) in options.items()
                  if n not in _SCHEDULE_OPTIONS and getattr(self, n) != default]  # fmt: skip
        parts = [f"the noise schedule: {said}"] if said else []
        if others:
            parts.append(f"other options set: {', '.join(others)}")
        return f" ({'; '.join(parts)})" if parts else ""

    @functools.cached_property
    def fingerprint(self) -> int:
        """A 32-bit digest of the class and every option: equal configs (in any process)
        have equal fingerprints. A state carries its maker's (``state.fingerprint[0]``);
        ``step`` refuses a state another config made. Computed once per instance."""
        cls = type(self)
        items = tuple((name, getattr(self, name)) for name in specs(self))
        value = _digest(repr((cls.__module__, cls.__qualname__, items)))
        if len(_MAKERS) > 4096:
            _MAKERS.clear()
        changed = ", ".join(f"{name}={describe(v, 60)}" for name, v in items
                            if v != specs(self)[name][0])  # fmt: skip
        text = f"{cls.__name__}({changed})"
        _MAKERS[value] = text if len(text) <= 300 else text[:280] + "...)"
        return value

    def _init_per_element(
        self, num_steps: int | None, sample_template: Array, key: Any, init_options: dict
    ) -> tuple[per_element.ElementState, Array]:
        """``init`` with ``offsets=`` or an array ``strength=`` (see
        :mod:`diffsched.core.per_element`)."""
        if self.NO_PER_ELEMENT is not None:
            raise ValueError(
                f"{type(self).__name__} has no per-element schedules (offsets=, an array "
                f"strength=): {self.NO_PER_ELEMENT}"
            )
        options = dict(init_options)
        shape = tuple(sample_template.shape)
        offsets = options.pop("offsets", None)
        strength = options.pop("strength", None)
        shapes = []
        if offsets is not None:
            offsets = per_element._integers(offsets, "offsets")
            shapes.append(per_element.element_shape(offsets, shape, "offsets"))
        if strength is not None and np.ndim(strength) > 0:
            shapes.append(per_element.element_shape(strength, shape, "strength"))
        eshape = np.broadcast_shapes(*shapes)
        o = np.broadcast_to(0 if offsets is None else offsets.reshape(
            (1,) * (len(shape) - offsets.ndim) + offsets.shape), eshape)  # fmt: skip
        if strength is None:
            programs, which = [self.program(num_steps, **options)], np.zeros(eshape, np.int64)
        else:
            values = np.asarray(strength, dtype=np.float64)
            values = np.broadcast_to(values.reshape((1,) * (len(shape) - values.ndim)
                                                    + values.shape), eshape)  # fmt: skip
            distinct = np.unique(values)
            programs = [self.program(num_steps, strength=float(v), **options) for v in distinct]
            which = np.searchsorted(distinct, values)
        plan = per_element.plan(programs, which, np.asarray(o, np.int64), self.processes_x0)
        try:
            return per_element.init(plan, sample_template, key, self.fingerprint)
        except engine.Float32RangeError as err:
            said = self._schedule_said()
            raise engine.Float32RangeError(f"{type(self).__name__}: {err}{said}") from None

    def step(
        self,
        state: engine.EngineState,
        sample: Array,
        prediction: Array,
        *,
        noise: Array | None = None,
        unconditional: Array | None = None,
    ) -> tuple[engine.EngineState, Array]:
        """One model call's update: (next state, the sample for the next model call).

        ``noise`` overrides the draw of a stochastic step (same shape as the sample).

        The state must come from ``init`` of an equal config (``state.fingerprint`` holds
        its maker's :attr:`fingerprint`) and the sample must have the template's shape;
        otherwise a ValueError names both. For the arrays ``init`` made this costs a
        dictionary lookup (any backend or device); traced (``jax.jit``,
        ``torch.compile``), where the state's values are abstract, or for a copied state
        on an accelerator, where reading them would sync, the check is skipped, as the
        past-the-end check is.

        ``unconditional`` (CFG++, Chung et al. 2024): ``prediction`` is the guided output
        and ``unconditional`` the unconditional one; x̂_0 is taken from the guided output,
        the renoising direction ε̂ and the history later calls read from the unconditional
        (:func:`diffsched.core.engine.guided_step`); ``unconditional=prediction`` is the
        plain step exactly.
        """
        ops.check_step_arrays(type(self).__name__, sample=sample, prediction=prediction,
                              noise=noise, unconditional=unconditional)  # fmt: skip
        if isinstance(state, adaptive.AdaptiveState):
            raise ValueError(adaptive.foreign(type(self).__name__, state, _maker))
        brownian_on = getattr(self, "noise_type", "gaussian") == "brownian"
        if isinstance(state, per_element.ElementState):
            if unconditional is not None or (brownian_on and noise is None):
                what = "unconditional=" if unconditional is not None else "noise_type='brownian'"
                raise ValueError(
                    f"{type(self).__name__}: {what} is not supported with per-element "
                    "schedules (init(..., offsets=) or an array strength=)"
                )
            return per_element.step(
                type(self).__name__, state, sample, prediction, noise,
                process=self._process if self.processes_x0 else None,
                stochastic=not self.deterministic,
                fingerprint=self.fingerprint, describe_maker=_maker,
            )  # fmt: skip
        if noise is None and brownian_on and not self.deterministic:
            noise = _brownian_noise(state, sample)
        if unconditional is not None:
            if not self.takes_unconditional:
                raise TypeError(
                    f"{type(self).__name__}.step takes no unconditional=: its prediction_type "
                    f"{getattr(self, 'prediction_type', None)!r} does not split into x̂_0 "
                    "and a noise direction"
                )
            self.check_state(state)  # (before its row is read: another config's is refused)
            return engine.guided_step(
                type(self).__name__, state, sample, prediction, unconditional, noise,
                weight=engine.extra_row(state)[0],
                process=self._process if self.processes_x0 else None,
                stochastic=not self.deterministic,
            )  # fmt: skip
        return engine.step(
            type(self).__name__, state, sample, prediction, noise,
            process=self._process if self.processes_x0 else None,
            stochastic=not self.deterministic,
            fingerprint=self.fingerprint, describe_maker=_maker,
        )  # fmt: skip

    def check_state(self, state: Any, call: str = "step") -> None:
        """Refuses a state another config's ``init`` made (for methods whose ``step`` reads
        the state before the engine's own check: RePaint, ScoreSdeVe)."""
        if isinstance(state, adaptive.AdaptiveState):
            raise ValueError(adaptive.foreign(type(self).__name__, state, _maker))
        made = engine.origin(state) if isinstance(state, engine.EngineState) else None
        if made is not None and made[0] != self.fingerprint:
            raise ValueError(
                engine._foreign(type(self).__name__, call, made[0], self.fingerprint, _maker)
            )

    def init_noise_scale(self, num_steps: int | None, **init_options: Any) -> float:
        """The factor turning standard normal noise into the first model input (1.0 for
        nearly every config; diffusers' ``init_noise_sigma`` over its first input scale)."""
        init_options = {k: v for k, v in init_options.items() if k != "offsets"}
        if np.ndim(init_options.get("strength")) > 0:
            raise ValueError(
                "init_noise_scale takes one strength; with per-element strengths the loop "
                "starts from add_noise(state, image, noise)"
            )
        return self.program(num_steps, **init_options).init_noise_scale

    def add_noise(self, state: engine.EngineState, clean: Array, noise: Array) -> Array:
        """A clean sample noised to the loop's first model input (image-to-image); pure."""
        if isinstance(state, per_element.ElementState):
            name = type(self).__name__
            per_element.check_maker(name, "add_noise", state, self.fingerprint, _maker)
            return per_element.add_noise(state, clean, noise)
        return engine.add_noise(
            state, clean, noise, name=type(self).__name__, fingerprint=self.fingerprint,
            describe_maker=_maker,
        )  # fmt: skip

    # -- diffusers configs ---------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """A diffusers scheduler config (``scheduler_config.json`` contents).

        Options diffusers passes at step time rather than in its config travel under the
        private key ``"_diffsched"``; options diffusers does not have (``sigma_schedule``),
        where they differ from the default, under ``"_diffsched_options"``. diffusers
        ignores both; ``from_config`` reads them back.
        """
        from .options import to_diffusers

        config: dict[str, Any] = {"_class_name": self.config_class_name()}
        extra, ours = {}, {}
        for name, (default, spec) in specs(self).items():
            value = getattr(self, name)
            if spec.diffusers_key == STEP_TIME:
                extra[name] = value
            elif spec.diffusers_key is not None:
                config[spec.diffusers_key] = to_diffusers(name, value, spec)
            elif value != default:
                ours[name] = value
        if extra:
            config["_diffsched"] = extra
        if ours:
            config["_diffsched_options"] = ours
        return config

    @classmethod
    def config_class_name(cls) -> str:
        """The ``_class_name`` of this class's config: diffusers' class, or ours where
        diffusers has none."""
        return cls.DIFFUSERS_CLASS or cls.__name__

    def replace(self, **changes: Any):
        """A copy with some options changed (the config itself is immutable)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(cls, source: Any, **overrides: Any):
        """This class from any diffusers scheduler config (a dict, a
        ``scheduler_config.json``, a model folder, or another scheduler's ``to_config()``):
        the keys this class has are read, the others (another class's) are dropped, as
        diffusers' ``SomeScheduler.from_config(pipe.scheduler.config)`` swaps schedulers."""
        from .config import build

        return build(cls, source, overrides, strict=False)

    def save_config(self, folder: Any) -> Any:
        """Writes ``folder/scheduler_config.json`` (the folder is created), as diffusers'
        ``save_config``; returns the file's path."""
        import json
        from pathlib import Path

        from .files import write_atomic

        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        out = path / "scheduler_config.json"
        write_atomic(out, json.dumps(self.to_config(), indent=2) + "\n")
        return out


@dataclass(frozen=True, kw_only=True)
class Scheduler(BaseScheduler):
    """Fields every scheduler has: the training noise schedule and what the model predicts."""

    num_train_steps: int = option(
        1000, "number of diffusion steps the model was trained with (T)",
        "num_train_timesteps", low=1, high=MAX_TRAIN_STEPS,
    )  # fmt: skip
    beta_schedule: str = option(
        "linear",
        "the training betas: linear (Ho et al. 2020), quadratic (evenly spaced in sqrt(β); "
        "diffusers' scaled_linear) or squared_cosine (Nichol & Dhariwal 2021, eq. 17)",
        "beta_schedule",
        choices=beta_schedules.BETA_SCHEDULES,
        diffusers_values=beta_schedules.DIFFUSERS_BETA_SCHEDULES,
    )
    beta_start: float = option(0.0001, "β at t = 0", "beta_start", low=0.0, high=1.0,
                               low_open=True, high_open=True)  # fmt: skip
    beta_end: float = option(0.02, "β at t = T - 1", "beta_end", low=0.0, high=1.0,
                             low_open=True, high_open=True)  # fmt: skip
    trained_betas: tuple[float, ...] | None = option(
        None, "explicit betas (length num_train_steps); override the schedule",
        "trained_betas", nullable=True,
        to_diffusers=lambda v: None if v is None else list(v),
        from_diffusers=lambda v: None if v is None else tuple_of_floats(v),
    )  # fmt: skip
    prediction_type: str = option(
        "noise",
        "what the model predicts: noise (ε), angular_velocity (v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x_0; "
        "Salimans & Ho 2022) or sample (x_0)",
        "prediction_type",
        choices=predictions.PREDICTION_TYPES,
        diffusers_values=predictions.DIFFUSERS_PREDICTION_TYPES,
    )

    def _check_schedule(self) -> None:
        owner = type(self).__name__
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_steps:
            raise ValueError(
                f"{owner} option trained_betas must have num_train_steps={self.num_train_steps} "
                f"entries, got: {len(self.trained_betas)}"
            )
        try:
            _ = self.alphas_cumprod  # validates the schedule now, with a clear error
        except ValueError as err:
            if self.trained_betas is None:
                raise
            raise ValueError(f"{owner} option trained_betas: {err}") from None

    # -- the training schedule -----------------------------------------------------------

    @property
    def betas(self) -> np.ndarray:
        """The training betas, float64 (after any zero-terminal-SNR rescaling)."""
        return _betas(
            self.beta_schedule, self.num_train_steps, self.beta_start, self.beta_end,
            self.trained_betas, getattr(self, "rescale_betas_zero_snr", False),
        ).copy()  # fmt: skip

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ_t for t = 0..T-1, float64: the noise levels the model was trained at."""
        return _alphas_cumprod(
            self.beta_schedule, self.num_train_steps, self.beta_start, self.beta_end,
            self.trained_betas, getattr(self, "rescale_betas_zero_snr", False),
        ).copy()  # fmt: skip


class _ProgramCache:
    """The compiled programs of recent (config, N, init options), least recently used
    dropped first, bounded in bytes (a 200,000-step program holds ~100 MB) and in entries.
    Thread-safe; a program is built outside the lock (two threads may build one twice)."""

    def __init__(self, max_bytes: int = 64 << 20, max_entries: int = 256) -> None:
        import collections
        import threading

        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(p.nbytes for p in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __call__(self, sched: BaseScheduler, num_steps: int, options: tuple) -> engine.Program:
        key = (sched, num_steps, options)
        with self._lock:
            program = self._entries.get(key)
            if program is not None:
                self._entries.move_to_end(key)
        if program is None:
            program = sched._compile(num_steps, dict(options))
        with self._lock:
            self._entries[key] = program
            self._entries.move_to_end(key)
            self._shrink()
        return program

    def _shrink(self) -> None:
        # programs grow (the eager rows are built on first use): measured again here
        total = sum(p.nbytes for p in self._entries.values())
        while self._entries and (total > self.max_bytes or len(self._entries) > self.max_entries):
            _, dropped = self._entries.popitem(last=False)
            total -= dropped.nbytes


cached_program = _ProgramCache()
# the options that set a config's noise schedule (diffusers' and ComfyUI's names), which an
# error about the schedule's levels names
# the options that set a noise schedule's levels (the betas, or the σ range of the classes
# with continuous levels: EDM's, the consistency models' σ_data scale), named by the
# float32 range error
_SCHEDULE_OPTIONS = frozenset({"beta_start", "beta_end", "beta_schedule", "trained_betas",
                               "rescale_betas_zero_snr", "linear_start", "linear_end",
                               "zsnr", "snr_shift_scale", "sigma_min", "sigma_max",
                               "sigma_data", "rho", "shift", "flow_shift", "beta_min",
                               "beta_max"})  # fmt: skip
_MAKERS: dict[int, str] = {}  # fingerprint -> the config, for the foreign-state error


def _maker(fingerprint: int) -> str:
    return _MAKERS.get(fingerprint, f"a config with fingerprint {fingerprint}")


def _digest(text: str) -> int:
    """A 32-bit signed digest of ``text`` (the same in every process)."""
    import hashlib

    raw = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=4).digest()
    return int.from_bytes(raw, "little", signed=True)


def check_custom_grids(owner: str, init_options: dict) -> None:
    """A custom ``sigmas=`` / ``timesteps=`` is one flat list of numbers (as diffusers)."""
    for name in ("sigmas", "timesteps"):
        value = init_options.get(name)
        if value is None:
            continue
        ndim = getattr(value, "ndim", None)
        if ndim is None:
            try:
                ndim = np.ndim(np.asarray(value, dtype=object))
            except (TypeError, ValueError):
                ndim = -1
        if ndim != 1 or isinstance(value, str | bytes | dict):
            raise ValueError(
                f"{owner}.init option {name}= must be a flat list of numbers (one per "
                f"level), got: {describe(value, 120)}"
            )


@functools.lru_cache(maxsize=32)
def _betas(schedule, num_train_steps, beta_start, beta_end, trained_betas, zero_snr) -> np.ndarray:
    b = beta_schedules.betas(schedule, num_train_steps, beta_start, beta_end, trained_betas)
    beta_schedules.check_betas(b)
    if zero_snr:
        b = beta_schedules.rescale_to_zero_terminal_snr(b)
    b.setflags(write=False)
    return b


@functools.lru_cache(maxsize=32)
def _alphas_cumprod(*args) -> np.ndarray:
    out = beta_schedules.alphas_cumprod(_betas(*args))
    out.setflags(write=False)
    return out


# -- option groups shared by several methods (fields; behaviour in free functions) ---------


@dataclass(frozen=True, kw_only=True)
class ZeroTerminalSNR:
    """Zero terminal signal-to-noise ratio (Lin et al. 2023)."""

    rescale_betas_zero_snr: bool = option(
        False, "rescale the betas so that ᾱ_{T-1} = 0 (Lin et al. 2023, Alg. 1); use it with "
        "trailing spacing and angular-velocity models", "rescale_betas_zero_snr",
    )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class FinalAlpha:
    """ᾱ of the step past t = 0 (DDIM-type methods)."""

    alpha_clip_strategy: str = option(
        "one",
        "ᾱ for the step past t = 0: one (lands on clean data) or alpha_zero (lands on ᾱ_0; "
        "diffusers' set_alpha_to_one=False)",
        "set_alpha_to_one",
        choices=beta_schedules.ALPHA_CLIP_STRATEGIES,
        to_diffusers=lambda v: v == "one",
        from_diffusers=lambda v: _alpha_strategy(v),
    )

    @property
    def final_alpha_cumprod(self) -> float:
        return beta_schedules.final_alpha_cumprod(
            self.alphas_cumprod,  # type: ignore[attr-defined]
            self.alpha_clip_strategy,
        )


def _alpha_strategy(value: Any) -> str:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got: {value!r}")
    return "one" if value else "alpha_zero"


@dataclass(frozen=True, kw_only=True)
class Spacing:
    """Which training timesteps an N-step loop visits."""

    timestep_spacing: str = option(
        "leading",
        "leading (0, r, 2r, ... + offset; r = T // N), linspace (N points evenly over "
        "[0, T-1]) or trailing (T, T - T/N, ..., minus one; Lin et al. 2023, Table 2)",
        "timestep_spacing",
        choices=("leading", "linspace", "trailing"),
    )
    timesteps_offset: int = option(
        0, "added to every timestep of the leading spacing (Stable Diffusion uses 1)",
        "steps_offset", low=0,
    )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Clipping:
    """Clipping of the predicted x_0 before it is used."""

    clip_denoised_sample: bool = option(
        True, "clip x̂_0 to [-clip_sample_range, clip_sample_range]", "clip_sample"
    )
    clip_sample_range: float = option(1.0, "the clipping bound", "clip_sample_range",
                                      low=0.0, low_open=True)  # fmt: skip

    @property
    def processes_x0(self) -> bool:
        return bool(getattr(self, "thresholding", False) or self.clip_denoised_sample)

    def _process(self, x0: Array, owned: bool) -> Array:
        if getattr(self, "thresholding", False):
            return predictions.dynamic_threshold(
                x0,
                self.dynamic_thresholding_ratio,  # type: ignore[attr-defined]
                self.sample_max_value,  # type: ignore[attr-defined]
            )
        if self.clip_denoised_sample:
            return ops.clip(x0, self.clip_sample_range, owned)
        return x0


@dataclass(frozen=True, kw_only=True)
class X0Processing(Clipping):
    """Clipping or dynamic thresholding of the predicted x_0."""

    thresholding: bool = option(
        False, "dynamic thresholding of x̂_0 (Saharia et al. 2022, sec. 2.3); takes precedence "
        "over clipping", "thresholding",
    )  # fmt: skip
    dynamic_thresholding_ratio: float = option(
        0.995, "the quantile of |x̂_0| used as the threshold", "dynamic_thresholding_ratio",
        low=0.0, high=1.0,
    )  # fmt: skip
    sample_max_value: float = option(
        1.0, "the largest threshold allowed: the threshold is the quantile clamped to "
        "[1, sample_max_value], and is sample_max_value itself where that is below 1 (as "
        "diffusers' clamp gives)", "sample_max_value", low=0.0, low_open=True,
    )  # fmt: skip


def given_timesteps(values: Any, num_train_steps: int, name: str = "timesteps") -> np.ndarray:
    """Custom training timesteps (``init(..., timesteps=[...])`` of DDPM, the consistency
    models): integers, strictly decreasing, in [0, T); int64, or a clear error."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size < 1 or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
        raise ValueError(f"{name} must be a non-empty list of integers, got: {values!r}")
    if np.any(np.diff(arr) >= 0):
        raise ValueError(f"{name} must be strictly decreasing, got: {arr.tolist()}")
    if arr[0] >= num_train_steps or arr[-1] < 0:  # (before the cast: no overflow)
        raise ValueError(
            f"{name} must lie in [0, {num_train_steps - 1}] (num_train_steps="
            f"{num_train_steps}), got: {arr.tolist()}"
        )
    return arr.astype(np.int64)


def spaced_timesteps(sched: Any, num_steps: int) -> np.ndarray:
    """The N training timesteps of an N-step loop of ``sched`` (a :class:`Spacing`)."""
    from ..schedules import spacing

    ops.check_num_steps(num_steps)
    if num_steps > sched.num_train_steps:
        raise ValueError(
            f"num_steps must be at most num_train_steps={sched.num_train_steps}, got: {num_steps}"
        )
    ts = spacing.spaced_timesteps(
        sched.timestep_spacing, sched.num_train_steps, num_steps, sched.timesteps_offset
    )
    if ts.max() >= sched.num_train_steps:
        raise ValueError(
            f"timesteps_offset={sched.timesteps_offset} with {num_steps} steps gives "
            f"timestep {int(ts.max())}, past the last training timestep {sched.num_train_steps - 1}"
        )
    return ts


def document(cls: type) -> type:
    """Class decorator for a method: appends the generated Options section to the
    docstring, and makes an unknown keyword that is diffusers' spelling of one of ours an
    error that names ours (``DDIM(clip_sample=False)``)."""
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n\n" + options_doc(cls) + "\n"
    init = cls.__init__
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    ours_for = {
        spec.diffusers_key: name
        for name, (_, spec) in specs(cls).items()
        if spec.diffusers_key not in (None, STEP_TIME) and spec.diffusers_key != name
    }

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - known)
        if unknown:
            hints = [
                f"{k!r} is diffusers' name for {ours_for[k]}" for k in unknown if k in ours_for
            ]
            raise TypeError(
                f"{cls.__name__} has no option(s) {unknown}"
                + (f" ({'; '.join(hints)})" if hints else "")
                + f"; its options: {sorted(known)}"
            )
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


def step_time(default: Any, doc: str, **spec: Any) -> Any:
    """An option diffusers passes to ``step`` rather than keeping in its config."""
    return option(default, doc, STEP_TIME, **spec)


# the values of SigmaGrid.sigma_schedule; edm and logsnr are other names of karras and
# exponential (EDM's time-uniform grid at ρ = 7; evenly spaced log-SNR = -2 log σ); then
# ComfyUI's schedules (schedules/comfy.py). It has no diffusers key (it travels under
# "_diffsched_options"): diffusers' EDM classes have a "sigma_schedule" key of their own,
# which a scheduler swap must not carry over.
SIGMA_SCHEDULE_ALIASES = {"edm": "karras", "logsnr": "exponential"}
NAMED_SIGMA_SCHEDULES = ("karras", "edm", "exponential", "logsnr", "beta", "ays-sd15",
                         "ays-sdxl", "ays-svd", *comfy_schedules.SIGMA_SCHEDULES)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Churn:
    """Karras et al. 2022, Alg. 2: noise added back before a step (Euler, EDM Euler and
    flow-matching Heun take these at step time in diffusers)."""

    s_churn: float = step_time(0.0, "S_churn of Alg. 2: how much noise is added back", low=0.0)
    s_tmin: float = step_time(0.0, "churn only where σ >= S_tmin", low=0.0)
    s_tmax: float = step_time(float("inf"), "churn only where σ <= S_tmax", low=0.0)
    s_noise: float = step_time(1.0, "S_noise of Alg. 2: the scale of the added noise", low=0.0)


NOISE_TYPES = ("gaussian", "brownian")


@dataclass(frozen=True, kw_only=True)
class BrownianNoise:
    """Which noise a stochastic method's calls draw (every stochastic class takes it)."""

    noise_type: str = option(
        "gaussian", "gaussian (an independent standard normal per call, keyed by (seed, "
        "call)) or brownian (the normalised increment (W(τ') - W(τ)) / sqrt|τ' - τ| of one "
        "Brownian path over the call's noise levels, τ = σ/(α + σ): a virtual Brownian tree "
        "keyed by the seed, so one seed gives consistent noise at any step count; "
        "diffsched.core.brownian)", None, choices=NOISE_TYPES,
    )  # fmt: skip


def _brownian_noise(state: engine.EngineState, sample: Array) -> Array | None:
    """This call's Brownian draw (eq. 4 of :mod:`diffsched.core.brownian`), from the levels
    the state's table holds; None on the eager path where the call draws no noise."""
    row = engine.extra_row(state)[3:8]  # after the CFG++ weight and the levels τ, τ'
    if isinstance(row[4], float) and row[4] == 0.0:
        return None
    return brownian.call_increment(brownian.tree_seed(state.key), row, sample, state.coefs.dtype)


@dataclass(frozen=True, kw_only=True)
class SigmaGrid:
    """Which σ grid an N-step loop of a σ-based method visits (besides the spacing)."""

    use_karras_sigmas: bool = option(
        False, "Karras et al. 2022 (eq. 5, ρ = 7) σ's between the loop's first and last level",
        "use_karras_sigmas",
    )  # fmt: skip
    use_exponential_sigmas: bool = option(
        False, "σ's evenly spaced in log σ between the loop's first and last level",
        "use_exponential_sigmas",
    )  # fmt: skip
    use_beta_sigmas: bool = option(
        False, "σ's at the quantiles of Beta(0.6, 0.6) (Lee et al. 2024); needs scipy",
        "use_beta_sigmas",
    )  # fmt: skip

    sigma_schedule: str | None = option(
        None, "a named σ grid (ours; diffusers' classes take the three booleans). Between "
        "the loop's first and last level: karras or edm (Karras et al. 2022, eq. 5, ρ = 7), "
        "exponential or logsnr (even in log-SNR), beta (Lee et al. 2024, in σ), ays-sd15 / "
        "ays-sdxl / ays-svd (Align Your Steps, log-linearly interpolated to N). ComfyUI's "
        "schedules, equal to ComfyUI's on the class's own table (its training σ's "
        "sqrt((1 - ᾱ)/ᾱ), or its flow levels; the method's own final level): its KSampler "
        "schedulers simple, sgm_uniform, normal, ddim_uniform, beta_sampling (ComfyUI's "
        "beta: Beta(0.6, 0.6) quantiles as table indices), linear_quadratic, kl_optimal "
        "(with karras and exponential, ComfyUI's when the loop's ends are the table's, as "
        "with linspace spacing); its nodes at their defaults: polyexponential, laplace, "
        "sd_turbo; variance-exploding lists align_your_steps-sd1 / -sdxl / -svd (ComfyUI's "
        "AYS), gits (coeff 1.20), vp; flow lists optimal_steps-flux / -wan / -chroma, ltxv "
        "(flow classes). A ComfyUI schedule that gives another step count than N "
        "(ddim_uniform, beta_sampling, sd_turbo past 10) is an error",
        None, nullable=True, choices=NAMED_SIGMA_SCHEDULES,
    )  # fmt: skip

    @property
    def sigma_kind(self) -> str | None:
        """ "karras", "exponential", "beta", "ays-sd15", "ays-sdxl", "ays-svd", one of
        ComfyUI's (:data:`diffsched.schedules.comfy.SIGMA_SCHEDULES`) or None (the spacing's
        own σ's)."""
        chosen = [
            kind
            for kind, on in (
                ("karras", self.use_karras_sigmas),
                ("exponential", self.use_exponential_sigmas),
                ("beta", self.use_beta_sigmas),
            )
            if on
        ]
        if self.sigma_schedule is not None:
            chosen.append(SIGMA_SCHEDULE_ALIASES.get(self.sigma_schedule, self.sigma_schedule))
        if len(chosen) > 1:
            raise ValueError(
                f"{type(self).__name__}: at most one of use_karras_sigmas, "
                f"use_exponential_sigmas, use_beta_sigmas, sigma_schedule may be set, got: "
                f"{self.sigma_option()}"
            )
        return chosen[0] if chosen else None

    def check_flow_grid(self, allow: tuple[str, ...] = ()) -> None:
        """Refuses a σ grid on top of ``use_flow_sigmas`` (diffusers would give
        variance-exploding σ's a flow α), except the kinds in ``allow`` (UniPC's karras,
        which it turns into flow levels)."""
        kind = self.sigma_kind
        if getattr(self, "use_flow_sigmas", False) and kind is not None and kind not in allow:
            only = f" (it takes {', '.join(allow)} only)" if allow else ""
            raise ValueError(
                f"{type(self).__name__}: use_flow_sigmas cannot be combined with "
                f"{self.sigma_option()}{only}: diffusers would give variance-exploding σ's a "
                "flow α"
            )

    def sigma_option(self) -> str:
        """The option(s) that chose the σ grid, as the user wrote them (for messages)."""
        names = [f"use_{k}_sigmas=True" for k in ("karras", "exponential", "beta")
                 if getattr(self, f"use_{k}_sigmas")]  # fmt: skip
        if self.sigma_schedule is not None:
            names.append(f"sigma_schedule={self.sigma_schedule!r}")
        return ", ".join(names)


LEARNED_VARIANCES = ("learned", "learned_range")


class VarianceChannels:
    """A model that learns its variance (Nichol & Dhariwal 2021, sec. 3.1; DeepFloyd IF,
    unCLIP's decoder): with ``variance_type`` ``"learned"`` or ``"learned_range"`` its output
    holds the prediction's C channels, then C variance channels, along axis 1 (the channel
    axis of diffusers' UNets), so ``step`` takes a prediction of shape (B, 2C, ...).

    A method whose noise reads the variance says how in :meth:`learned_noise` (DDPM's
    posterior draw); the others (the ODE and SDE solvers) drop it, as diffusers' do.
    """

    USES_LEARNED_VARIANCE: ClassVar[bool] = False  # whether learned_noise reads it

    @property
    def learns_variance(self) -> bool:
        return getattr(self, "variance_type", None) in LEARNED_VARIANCES

    @property
    def NO_PER_ELEMENT(self) -> str | None:
        if self.learns_variance:
            return "a learned variance is read from the model output in step"
        return None

    def prediction_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The model output's shape for a sample of ``sample_shape``: the sample's, with
        twice its channels (axis 1) where the variance is learned."""
        shape = tuple(sample_shape)
        if not self.learns_variance:
            return shape
        if len(shape) < 2:
            raise ValueError(
                f"{type(self).__name__} with variance_type={self.variance_type!r} needs a "
                f"sample with a channel axis (axis 1, after the batch), got shape {shape}"
            )
        return (shape[0], 2 * shape[1], *shape[2:])

    def split_variance(self, sample: Array, output: Array, name: str = "prediction"):
        """(the prediction's channels, the variance's) of a model output of
        :meth:`prediction_shape`; a clear error for any other shape."""
        ops.check_step_arrays(type(self).__name__, sample=sample, **{name: output})
        want = self.prediction_shape(tuple(sample.shape))
        if tuple(output.shape) != want:
            raise ValueError(
                f"{type(self).__name__} with variance_type={self.variance_type!r}: {name} "
                f"must have shape {want} (the sample's {tuple(sample.shape)} with its C "
                f"prediction channels, then C variance channels, along axis 1), got "
                f"{tuple(output.shape)}"
            )
        c = sample.shape[1]
        return output[:, :c], output[:, c:]

    def learned_noise(
        self, state: engine.EngineState, sample: Array, variance: Array, noise: Array | None
    ) -> Array | None:
        """The noise the engine's step adds (its coefficient in the table) given the
        model's variance channels: ``noise`` unchanged for a method that drops them."""
        return noise

    def call_draw(self, state: engine.EngineState, sample: Array) -> Array | None:
        """The standard normal draw the engine's step would make at this call (Gaussian or
        Brownian, as ``noise_type`` says; ``sample`` in the state's dtype), for a method
        that scales it first; None where a Brownian call draws nothing."""
        if getattr(self, "noise_type", "gaussian") == "brownian":
            return _brownian_noise(state, sample)
        return engine.call_noise(state, sample)

    def step(
        self,
        state: engine.EngineState,
        sample: Array,
        prediction: Array,
        *,
        noise: Array | None = None,
        unconditional: Array | None = None,
    ) -> tuple[engine.EngineState, Array]:
        """One model call (see :meth:`BaseScheduler.step`); with a learned variance,
        ``prediction`` (and ``unconditional``) carry the variance channels (see the class)."""
        ops.check_step_arrays(type(self).__name__, sample=sample, prediction=prediction,
                              noise=noise, unconditional=unconditional)  # fmt: skip
        if not self.learns_variance:
            return super().step(state, sample, prediction, noise=noise,  # type: ignore[misc]
                                unconditional=unconditional)  # fmt: skip
        if isinstance(state, per_element.ElementState):
            raise ValueError(f"{type(self).__name__}: {self.NO_PER_ELEMENT}")
        self.check_state(state)  # type: ignore[attr-defined]
        prediction, variance = self.split_variance(sample, prediction)
        if unconditional is not None:  # the conditional output's variance is the call's
            unconditional, _ = self.split_variance(sample, unconditional, "unconditional")
        noise = self.learned_noise(state, sample, variance, noise)
        return super().step(state, sample, prediction, noise=noise,  # type: ignore[misc]
                            unconditional=unconditional)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class SolverOptions:
    """Options the variance-preserving multistep solvers share (DPM-Solver, DEIS, UniPC,
    SA-Solver): declared once here; each class takes the ones its diffusers class has with
    ``with_default(SolverOptions, name, default)``."""

    use_flow_sigmas: bool = option(
        False, "rectified-flow levels x = (1 - σ) x_0 + σ ε: σ = (1 - 1/T) k/N, k = N..1, "
        "shifted by flow_shift; t = σ T", "use_flow_sigmas",
    )  # fmt: skip
    flow_shift: float = option(
        1.0, "the static shift s of flow levels, σ' = s σ / (1 + (s - 1) σ) (Esser et al. "
        "2024, eq. 23)", "flow_shift", low=0.0, low_open=True,
    )  # fmt: skip
    use_dynamic_shifting: bool = option(
        False, "take the flow shift from init(..., mu=μ) as s = e^μ instead of flow_shift",
        "use_dynamic_shifting",
    )  # fmt: skip
    time_shift_type: str = option(
        "exponential", "the dynamic shift: exponential (s = e^μ)", "time_shift_type",
        choices=("exponential",),
    )  # fmt: skip
    lambda_min_clipped: float = option(
        -float("inf"), "skip the training steps whose λ = log(α/σ) lies below this (for the "
        "cosine schedule, whose λ plunges near t = T; Lu et al. 2022b, app. D)",
        "lambda_min_clipped",
    )  # fmt: skip
    variance_type: str | None = option(
        None, "None, or learned / learned_range: the model output carries C variance "
        "channels after the prediction's (axis 1), which the solver drops, as diffusers'",
        "variance_type", nullable=True, choices=LEARNED_VARIANCES,
    )  # fmt: skip
    final_sigmas_type: str = option(
        "zero", "the level of the final sample: zero (the last step lands on x̂_0), or "
        "sigma_min (the lowest training σ)", "final_sigmas_type", choices=("zero", "sigma_min"),
    )  # fmt: skip
