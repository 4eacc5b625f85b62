"""diffsched schedulers inside diffusers pipelines.

:class:`DiffusersScheduler` gives any diffsched scheduler the interface through which
diffusers' pipelines drive their scheduler, so that::

    pipe.scheduler = ds.DiffusersScheduler(ds.Euler(beta_schedule="quadratic", ...))

runs the pipeline with our scheduler, and gives what the pipeline gives with diffusers' own
scheduler of the same config (``scheduler.to_config()``), the noise of stochastic steps
included: it is drawn as diffusers draws it, with the ``generator`` the pipeline passes to
``step`` (diffusers' ``randn_tensor``; torch's global generator where it passes none), one
draw per model call where diffusers' class draws: where noise is added, and, for the
classes that draw at every call, also where it is not (the last call of DDIM with eta > 0,
of the ancestral and SDE solvers), so the generator ends where diffusers leaves it.

Samples. Our held sample is the model input; diffusers keeps its sample in a *native* space
and scales it before each model call (``scale_model_input``). The pipeline holds the native
sample, so the adapter converts at each call ``i`` with the program's ``input_scale``:
held = native / input_scale[i] before our ``step``, native = held · input_scale[i + 1]
after it (the final sample is native: its scale is 1). The step arithmetic is ours, in the
sample's precision, on the sample's device.

Where a loop starts. diffusers' schedulers find their place in the schedule in three ways,
and the adapter does as the diffusers class of the wrapped scheduler does:

* DDIM and DDPM are stateless: every call is placed by its timestep;
* PNDM counts its calls from the top of the schedule (diffusers' class has no
  ``set_begin_index``; here it is ignored), and a loop started elsewhere is an error;
* every other class starts at ``set_begin_index``'s call if a pipeline set one (the
  image-to-image pipelines do), else at the first timestep it is given (its second
  occurrence where the timestep is listed twice, as for Heun), then counts calls. A call
  started in mid-schedule has no memory of earlier calls: exact for one-step methods and
  the two-stage ones (started on a first stage), and diffusers' own behaviour for LMS
  (which keeps the full schedule's coefficients); the other multistep methods restart
  their warm-up in diffusers, and the adapter runs them from there as the method's own
  image-to-image loop (``init(..., strength=s)`` whose first call is that call). PNDM
  starts at ``set_begin_index``'s call too (its diffusers class counts calls from
  wherever the pipeline starts it, which is the same loop).

``add_noise`` is, as in diffusers, sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε at the given timesteps
for the classes whose diffusers ``add_noise`` reads ᾱ at them (DDIM, DDPM, PNDM, LCM, TCD,
SA-Solver), and for the others α x_0 + σ ε at the level of the call the loop starts at
(the begin index, else the current call, else the call of each timestep, as diffusers).

Saving. A pipeline's ``save_pretrained`` saves only components of diffusers' own base
classes, and records each one's class in ``model_index.json``. Once diffusers is importable,
an adapter's class is therefore a subclass of both :class:`DiffusersScheduler` and diffusers'
``SchedulerMixin`` that bears the name of the wrapped scheduler's diffusers class (module
``diffusers``): the pipeline records that class (``["diffusers", "DDIMScheduler"]``) and
calls :meth:`DiffusersScheduler.save_pretrained`, which writes ``scheduler_config.json``
(``to_config()``: diffusers' class name and keys; our options diffusers lacks under
``_diffsched_options``). The folder then loads with diffusers alone (its own class, from
the same config), and ``DiffusersScheduler.from_config(folder)`` or
``diffsched.from_config(folder)`` load our scheduler back, options included. A scheduler
diffusers has no class for (``VariableIPNDM``) is recorded as this module's
``PipelineScheduler`` (the adapter, as a ``SchedulerMixin``), which diffusers' loader
imports and builds with :meth:`DiffusersScheduler.from_pretrained`: that folder needs
diffsched to load.

Pipelines with a protocol of their own (issue 18). Some pipelines drive their scheduler
through methods other than ``step`` or choose their loop by ``isinstance`` of diffusers'
class; the adapter of those classes has that protocol too (``_PROTOCOLS``), each method a
model call of our table: ScoreSdeVePipeline (``set_sigmas``, ``step_correct``,
``step_pred``), KarrasVePipeline (``schedule``, ``add_noise_to_input``, ``step``,
``step_correct``), RePaintPipeline (``step(..., original_image, mask, generator)``,
``undo_step``, ``scheduler.eta = ...``), CogVideoXPipeline's DPM branch (``step`` with the
previous x̂_0 and timestep, which our state holds), Stable Cascade (DDPMWuerstchen's
``timesteps`` with the final 0), Sana-Sprint (SCM's ``set_timesteps`` keywords) and AnyFlow
(FlowMapEuler's ``sigmas`` and ``step(..., r_timestep=)``: the call's own target runs our
table; any other (t, r), on the grid or off it, is the flow map's one-call step between
them, as diffusers' any-step sampling), the consistency decoder
(``ConsistencyDecoderVAE``: ``step(model_output, t, sample, generator)``) and the VP score
SDE (``step_pred(score, x, t, generator)``, as the deprecated class that no pipeline
drives). The adapters of CogVideoXDPM and DDPMWuerstchen
are subclasses of diffusers' class
(whose ``__init__`` never runs and whose methods ours override), since their pipelines test
``isinstance``. Noise is drawn where, and as often as, diffusers draws it.

``sigmas`` (read by the flow and editing pipelines, ``scheduler.sigmas[...]``) is diffusers'
list of noise levels, float32: the level of each model call, read off our table's x̂_0
conversion (``_call_levels``: σ/α of x = α x_0 + σ ε for the σ-based classes, σ for the
flow-matching ones), then diffusers' final entries (:data:`_SIGMAS_TAIL`); for the EDM
classes, MiniMax-H3 and pi-Flow, the levels of their grid (:data:`_SIGMAS_OF_GRID`). The two-stage
classes that call the model at an interpolated midpoint (DPM2, DPM-Solver-SDE) list each
step's level twice instead (:data:`_SIGMAS_INTERLEAVED`). Classes whose diffusers
counterpart has no ``sigmas`` (DDIM, DDPM, PNDM, LCM, TCD, ...) raise an AttributeError, as
do the classes whose table gives no levels yet (:data:`_SIGMAS_NOT_PROVIDED`).

diffusers and torch are imported only when the adapter is used.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from .core import engine
from .core.config import _read as _read_config
from .core.options import STEP_TIME, specs
from .core.scheduler import BaseScheduler, Churn
from .interop.config import from_config as _from_config

# how the diffusers class finds the call a step is for (see the module docstring)
_PLACED_BY_TIMESTEP = frozenset(
    {
        "DDIMScheduler",
        "DDPMScheduler",
        "DDIMInverseScheduler",
        "DDIMParallelScheduler",  # ParaDiGMS' classes: DDIM's and DDPM's step (issue 18)
        "DDPMParallelScheduler",
        "UnCLIPScheduler",
    }
)
_COUNTED_FROM_TOP = frozenset({"PNDMScheduler"})
# multistep classes whose diffusers step, started mid-schedule, keeps the full schedule's
# coefficients and drops the terms of the calls it has not seen (as the engine does)
_STARTS_WITHOUT_WARMUP = frozenset({"LMSDiscreteScheduler"})
# classes whose diffusers add_noise uses ᾱ at the given timesteps (not the loop's level)
_NOISED_AT_TIMESTEPS = frozenset(
    {
        "DDIMScheduler",
        "DDPMScheduler",
        "DDIMParallelScheduler",
        "DDPMParallelScheduler",
        "PNDMScheduler",
        "LCMScheduler",
        "TCDScheduler",
        "SASolverScheduler",
    }
)
# stochastic classes whose diffusers step draws noise at every call, also where its weight
# is zero (SA-Solver's τ(t) = 0 outside [200, 800]; the last call, to σ = 0 or ᾱ = 1, of
# DDIM with eta > 0, the ancestral and SDE solvers and the flow LCM): drawn and unused, as
# diffusers, so that the generator is where diffusers leaves it; the others draw where the
# weight is not zero
_DRAWS_AT_EVERY_CALL = frozenset(
    {
        "SASolverScheduler",
        "DDIMScheduler",
        "DDIMParallelScheduler",
        "EulerAncestralDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "EDMDPMSolverMultistepScheduler",
        "FlowMatchEulerDiscreteScheduler",
        "FlowMatchLCMScheduler",
        "DDPMWuerstchenScheduler",  # also on the step to t = 0 (issue 18)
        "SCMScheduler",  # also on the last call (its noise weight sin 0 = 0)
        "CogVideoXDPMScheduler",  # also on the last call, to ᾱ = 1 (once; twice with history)
    }
)
# ... and of those, the ones that draw where the config adds no noise at all: SA-Solver
# with τ = 0 still draws at every call (the generator's state after the loop is diffusers')
_DRAWS_EVEN_DETERMINISTIC = frozenset({"SASolverScheduler"})
# the variance-preserving solvers on a training schedule: before set_timesteps their
# add_noise noises to the level of each (integer) timestep, whether or not their loop over
# every training step runs (diffusers' lists its σ's reversed there: see the docs)
_VP_SOLVERS = frozenset(
    {
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "DPMSolverMultistepInverseScheduler",
        "DEISMultistepScheduler",
        "UniPCMultistepScheduler",
    }
)
# the classes whose diffusers __init__ calls set_timesteps(num_train_timesteps)
_INIT_SETS_TIMESTEPS = frozenset(
    {
        "DPMSolverSDEScheduler", "FlowMapEulerDiscreteScheduler", "HeunDiscreteScheduler",
        "IPNDMScheduler", "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler",
        "LMSDiscreteScheduler",
    }
)  # fmt: skip

# the classes whose diffusers scheduler has a public index_for_timestep
_INDEXED_BY_TIMESTEP = frozenset(
    {
        "CMStochasticIterativeScheduler", "CosineDPMSolverMultistepScheduler",
        "DEISMultistepScheduler", "DPMSolverMultistepScheduler", "DPMSolverSDEScheduler",
        "DPMSolverSinglestepScheduler", "EDMDPMSolverMultistepScheduler", "EDMEulerScheduler",
        "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler",
        "FlowMapEulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler",
        "FlowMatchHeunDiscreteScheduler", "FlowMatchLCMScheduler", "HeliosScheduler",
        "HeunDiscreteScheduler", "IPNDMScheduler", "KDPM2AncestralDiscreteScheduler",
        "KDPM2DiscreteScheduler", "LCMScheduler", "LMSDiscreteScheduler",
        "LTXEulerAncestralRFScheduler", "MiniMaxH3Scheduler", "SASolverScheduler",
        "SCMScheduler", "TCDScheduler", "UniPCMultistepScheduler",
    }
)  # fmt: skip

# the classes whose diffusers version has get_velocity at integer timesteps (Euler's reads
# ᾱ at the index of the timestep in its loop instead, a slip not reproduced: it has none here)
_VELOCITY_AT_TIMESTEPS = frozenset(
    {
        "DDIMScheduler",
        "DDPMScheduler",
        "DDIMParallelScheduler",
        "DDPMParallelScheduler",
        "LCMScheduler",
        "TCDScheduler",
        "CogVideoXDDIMScheduler",
        "CogVideoXDPMScheduler",
    }
)
# classes whose diffusers __init__ sets init_noise_sigma = sigma_max, which their pipelines
# read before set_timesteps (ConsistencyModelPipeline, ScoreSdeVePipeline); issue 18
_SIGMA_MAX_BEFORE_SET_TIMESTEPS = frozenset(
    {"CMStochasticIterativeScheduler", "ScoreSdeVeScheduler"}
)
# classes whose diffusers init_noise_sigma is a (float32, 0-d) tensor, read off its sigmas
# (`init_noise_sigma.cpu()` works there); the others' is a Python float
_TENSOR_INIT_NOISE_SIGMA = frozenset(
    {
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "LMSDiscreteScheduler",
        "DPMSolverSDEScheduler",
        "EDMEulerScheduler",
        "EDMDPMSolverMultistepScheduler",
        "CosineDPMSolverMultistepScheduler",
        "ConsistencyDecoderScheduler",
    }
)
# classes whose diffusers num_inference_steps is the length of the grid set (one call a
# step; less than asked where duplicate timesteps were dropped, or LCM's strength cut)
_STEPS_ARE_TIMESTEPS = frozenset(
    {
        "DEISMultistepScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverMultistepInverseScheduler",
        "LCMScheduler",
        "SASolverScheduler",
        "TCDScheduler",
        "UniPCMultistepScheduler",
    }
)
# classes whose set_timesteps takes strength= (their own image-to-image schedule)
_STRENGTH_IN_SET_TIMESTEPS = frozenset({"LCMScheduler", "TCDScheduler"})
# diffusers classes without ``sigmas`` (hasattr after set_timesteps, diffusers 0.42.1)
_NO_SIGMAS = frozenset(
    {
        "DDIMScheduler",
        "DDIMInverseScheduler",
        "DDPMScheduler",
        "LCMScheduler",
        "DDIMParallelScheduler",
        "DDPMParallelScheduler",
        "PNDMScheduler",
        "TCDScheduler",
        "IPNDMScheduler",
        "CogVideoXDDIMScheduler",
        "CogVideoXDPMScheduler",
        "KarrasVeScheduler",
        "RePaintScheduler",
        "UnCLIPScheduler",
        "DDPMWuerstchenScheduler",
        "SCMScheduler",
        "ConsistencyDecoderScheduler",
        "ScoreSdeVpScheduler",  # (its attribute is None: never set)
    }
)
# classes whose diffusers __init__ sigmas are those of the loop over every training step
# (the others' are the training σ table, or absent: not provided before set_timesteps)
_SIGMAS_OF_TRAINING_LOOP = frozenset(
    {
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "HeunDiscreteScheduler",
        "LMSDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "DPMSolverSDEScheduler",
        "DPMSolverMultistepInverseScheduler",
        "EDMEulerScheduler",  # (its T + 1 levels)
    }
)
# classes with diffusers ``sigmas`` that the adapter does not derive (yet): why
_SIGMAS_NOT_PROVIDED = {
    "HeliosScheduler": "its staged (pyramid) loop is not derived",
    "HeliosDMDScheduler": "its staged (pyramid) loop is not derived",
    "PipelineScheduler": "diffusers has no class for it",
}
# classes whose table gives no level by the x̂_0 conversion (the EDM-preconditioned
# output, MiniMax-H3's and pi-Flow's): their sigmas are their grid's levels, the final
# one included
_SIGMAS_OF_GRID = {
    # Euler's log-linear grid carries one level more than its calls use (the last step
    # lands on σ_min), then the final one: its grid, not its calls' levels and a tail
    "EulerDiscreteScheduler": lambda loop, n, options: loop._grid(n, **options)[1],
    # the solvers' own grids are diffusers' sigmas, final entry included (a re-gridded
    # loop repeats its last level in DEIS and SA-Solver; UniPC's sigma_min final is its
    # grid's end; the inverse ends at the noisiest timestep lambda_min_clipped leaves)
    "DPMSolverMultistepInverseScheduler": lambda loop, n, options: loop._grid(n).sigmas,
    "DEISMultistepScheduler": lambda loop, n, options: loop._grid(n, **options).sigmas,
    "SASolverScheduler": lambda loop, n, options: loop.grid(n).sigmas,
    "UniPCMultistepScheduler": lambda loop, n, options: loop._grid(n, **options).sigmas,
    "EDMEulerScheduler": lambda loop, n, options: loop._grid(n, **options)[1],
    "EDMDPMSolverMultistepScheduler": lambda loop, n, options: loop._grid(n)[1],
    "CosineDPMSolverMultistepScheduler": lambda loop, n, options: loop._grid(n)[1],
    "CMStochasticIterativeScheduler": lambda loop, n, options: loop._grid(n, **options)[1],
    "MiniMaxH3Scheduler": lambda loop, n, options: loop.grid(n, **options),
    # pi-Flow's last call ends a hair above 0 (its final time); diffusers lists 0
    "PiflowScheduler": lambda loop, n, options: np.append(loop._sigma(loop.raw_times(n))[:-1], 0),
}
# the two-stage classes whose diffusers sigmas list each step's level twice (their second
# call is at an interpolated level, which diffusers keeps apart)
_SIGMAS_INTERLEAVED = frozenset(
    {"KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverSDEScheduler"}
)
# diffusers' entries after the per-call levels: "zero" (σ = 0) or "min" (the training σ at
# t = 0, diffusers' final_sigmas_type="sigma_min"); one "zero" unless listed
_SIGMAS_TAIL = {
    "KDPM2DiscreteScheduler": ("zero",) * 3,
    "KDPM2AncestralDiscreteScheduler": ("zero",) * 3,
}
# the classes whose diffusers set_timesteps refuses num_inference_steps with a custom grid
_ONE_OF_STEPS_OR_GRID = frozenset({
    "CMStochasticIterativeScheduler", "DDPMScheduler", "DDPMParallelScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "LCMScheduler", "TCDScheduler",
})  # fmt: skip
# our step-time option -> diffusers' step keyword, where the names differ
_STEP_KWARG = {"rederive_noise": "use_clipped_model_output"}
# diffusers step keywords some class takes; accepted by every adapter (used where the
# wrapped scheduler has the option, ignored elsewhere, as pipelines expect)
# classes whose diffusers step(..., return_dict=False) is the 1-tuple (prev_sample,) (the
# others give (prev_sample, pred_original_sample), LCM's denoised)
_ONE_OUTPUT = frozenset(
    {
        "ConsistencyDecoderScheduler",
        "CMStochasticIterativeScheduler",
        "CosineDPMSolverMultistepScheduler",
        "DEISMultistepScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverMultistepInverseScheduler",
        "DPMSolverSinglestepScheduler",
        "EDMDPMSolverMultistepScheduler",
        "FlowMapEulerDiscreteScheduler",
        "FlowMatchEulerDiscreteScheduler",
        "FlowMatchHeunDiscreteScheduler",
        "FlowMatchLCMScheduler",
        "HeliosScheduler",
        "HeliosDMDScheduler",
        "IPNDMScheduler",
        "LTXEulerAncestralRFScheduler",
        "MiniMaxH3Scheduler",
        "PNDMScheduler",
        "SASolverScheduler",
        "UniPCMultistepScheduler",
    }
)
_KNOWN_STEP_KWARGS = frozenset(
    {"eta", "use_clipped_model_output", "s_churn", "s_tmin", "s_tmax", "s_noise", "order"}
    # UnCLIP's pipelines pass the loop's next timestep, which our table steps to (issue 18)
    | {"prev_timestep"}
)
_NOISE = engine.COEF_COLUMNS.index("out_noise")


class FrozenConfig(dict):
    """A read-only dict whose keys are also attributes (diffusers' ``FrozenDict``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the scheduler config has no key {name!r}") from None

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "the scheduler config is read-only: assign a new one (scheduler._internal_dict = "
            "...) or use register_to_config"
        )

    __setattr__ = __delattr__ = __setitem__ = __delitem__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> DiffusersScheduler:
        """:meth:`DiffusersScheduler.from_pretrained` (diffusers' loader may call it here)."""
        return DiffusersScheduler.from_pretrained(*args, **kwargs)

    def __reduce__(self):
        return (FrozenConfig, (dict(self),))


class SchedulerOutput(NamedTuple):
    """What ``step`` returns: the next native sample and the call's x̂_0 (None where the
    method forms none; for LCM the boundary-conditioned estimate, as diffusers returns)."""

    prev_sample: Any
    pred_original_sample: Any = None

    # diffusers' BaseOutput is also a mapping of its fields that are not None
    # (``out["prev_sample"]``, ``out.values()``, ``out.to_tuple()``)
    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        """The names of the fields that are not None (as diffusers' ``BaseOutput``)."""
        return [name for name in self._fields if getattr(self, name) is not None]

    def values(self) -> list[Any]:
        """The fields that are not None, in order."""
        return [getattr(self, name) for name in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        """(name, value) of the fields that are not None."""
        return [(name, getattr(self, name)) for name in self.keys()]

    def to_tuple(self) -> tuple:
        """The fields that are not None, as a plain tuple."""
        return tuple(self.values())


class DiffusersScheduler:
    """A diffsched scheduler as a diffusers pipeline's ``scheduler``.

    Args:
        scheduler: any diffsched scheduler (or another adapter, whose scheduler is taken).

    ``config`` is the scheduler's ``to_config()`` (diffusers' keys and spellings, with
    ``_class_name``); a pipeline that rewrites it (``scheduler._internal_dict = ...``, as
    Stable Diffusion's pipelines do for outdated ``steps_offset`` / ``clip_sample``) or
    calls ``register_to_config`` rebuilds the wrapped scheduler from the new config.
    DDIM's ``eta`` and the other options diffusers passes to ``step``: a value a pipeline
    passes is used where the wrapped scheduler has the option at its default; a value set
    on the wrapped scheduler wins over the pipeline's.

    Threads: an adapter holds one loop's position (like diffusers' own schedulers), so use
    one adapter per thread; configs are shared freely. ``ds.to_diffusers(sched)`` takes a
    few microseconds: make one per pipeline call.
    """

    def __init__(
        self, scheduler: BaseScheduler | DiffusersScheduler, config: Mapping[str, Any] | None = None
    ) -> None:
        """``config``: the diffusers config ``scheduler`` was made from (another class's, in
        a scheduler swap): its keys the scheduler does not have are kept in ``.config``,
        as diffusers keeps them, so a config passed through another class and back is the
        same (``DPMSolverSDE``'s ``noise_sampler_seed`` through ``Euler``)."""
        if isinstance(scheduler, DiffusersScheduler):
            scheduler = scheduler.wrapped
        if not isinstance(scheduler, BaseScheduler):
            raise TypeError(f"expected a diffsched scheduler, got: {type(scheduler).__name__}")
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config: expected a diffusers config (a mapping), got: "
                            f"{type(config).__name__}")  # fmt: skip
        self._configure(
            scheduler, _hidden_keys(scheduler, config), _defaulted_keys(scheduler, config)
        )

    def _configure(
        self,
        scheduler: BaseScheduler,
        hidden: dict[str, Any] | None = None,
        defaulted: list[str] | None = None,
    ) -> None:
        self.__class__ = _pipeline_class(scheduler.DIFFUSERS_CLASS)  # see "Saving" above
        self.wrapped = scheduler
        self._hidden = dict(hidden or {})  # another class's keys, kept as diffusers keeps them
        config = {**self._hidden, **scheduler.to_config()}
        if defaulted:  # the keys the source config did not set (diffusers' bookkeeping)
            config[_DEFAULTED] = list(defaulted)
        self._config = FrozenConfig(config)
        self._name = scheduler.DIFFUSERS_CLASS
        self._loop = scheduler  # the config of this loop (step-time options may differ)
        self._num_steps: int | None = None
        self._options: dict[str, Any] = {}
        self._program: engine.Program | None = None
        self._tableau: engine.Tableau | None = None
        self._starts: dict[int, tuple[float, float]] = {}
        self._listed: np.ndarray | None = None
        self._state: engine.EngineState | None = None
        self._state_index = 0  # the call index the engine state is at
        self._run: tuple[engine.Program, int] | None = None  # (program run, its first call)
        self._template: tuple | None = None
        self._host_timesteps: np.ndarray | None = None
        self._timesteps = None
        # the classes whose diffusers __init__ runs set_timesteps(T) count T steps before
        # set_timesteps (their timesteps, below, are that loop's)
        init_loop = self._name in _INIT_SETS_TIMESTEPS
        self.num_inference_steps: int | None = scheduler.num_train_steps if init_loop else None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self.__dict__.pop("_sigmas", None)  # a protocol's sigmas belong to the old loop

    def __repr__(self) -> str:
        return f"DiffusersScheduler({self.wrapped!r})"

    # -- the config --------------------------------------------------------------------------

    @property
    def config(self) -> FrozenConfig:
        """The diffusers config of the wrapped scheduler (read-only)."""
        return self._config

    @property
    def _internal_dict(self) -> FrozenConfig:
        return self._config

    @_internal_dict.setter
    def _internal_dict(self, config: Mapping[str, Any]) -> None:
        config, old = dict(config), self._config
        if config.get(_DEFAULTED):  # a key set now is no longer at its default
            changed = {k for k, v in config.items() if k not in old or not _same(v, old[k])}
            config[_DEFAULTED] = [k for k in config[_DEFAULTED] if k not in changed]
        kept = {k: v for k, v in config.items() if k in self._hidden and _same(v, self._hidden[k])}
        own = {k: v for k, v in config.items() if k not in kept}
        scheduler = _from_config(own)
        hidden = {**kept, **_hidden_keys(scheduler, own)}
        self._configure(scheduler, hidden, _defaulted_keys(scheduler, own))

    def register_to_config(self, **changes: Any) -> None:
        """Changes diffusers config keys; the wrapped scheduler is rebuilt from the result."""
        self._internal_dict = {**self._config, **changes}

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> DiffusersScheduler:
        """The adapter of ``diffsched.from_config(config, **overrides)`` (a diffusers config
        dict, a ``scheduler_config.json`` or a model folder; overrides are our option names).
        The config's keys the class does not have stay in ``.config`` (as diffusers').
        Called on an adapter's class (``type(pipe.scheduler).from_config(...)``), that class
        is built, as diffusers' ``from_config`` builds the class it is called on."""
        config = _read_config(config)
        named = cls.__name__ if cls is not DiffusersScheduler else None
        if named is not None and named != "PipelineScheduler":
            if config.get("_class_name") not in (None, named):  # another class's config: its
                config = {k: v for k, v in config.items()  # diffsched options are that class's
                          if not k.startswith("_diffsched")}  # fmt: skip
            config = {**config, "_class_name": named}
        elif not isinstance(config.get("_class_name"), str):
            raise ValueError(
                "DiffusersScheduler.from_config: the config names no class (_class_name; "
                "diffusers' in-memory scheduler.config has none): pass {**scheduler.config, "
                "'_class_name': type(scheduler).__name__}, or call from_config on the class "
                "wanted (type(ds.to_diffusers(ds.DDIM())).from_config(...))"
            )
        scheduler = _from_config(config, **overrides)
        return cls(scheduler, config)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Writes ``scheduler_config.json`` (diffusers' format, our own options under
        ``_diffsched_options``) into ``save_directory``, as a pipeline's ``save_pretrained``
        does for its scheduler (see the module docstring, "Saving")."""
        os.makedirs(save_directory, exist_ok=True)
        saved = {k: v for k, v in self._config.items() if k != _DEFAULTED}  # as diffusers
        with open(os.path.join(save_directory, "scheduler_config.json"), "w") as f:
            json.dump(saved, f, indent=2, sort_keys=True)

    def save_config(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """:meth:`save_pretrained` (diffusers' ``ConfigMixin.save_config``; ``push_to_hub``
        and the hub's keywords are not supported)."""
        if kwargs.get("push_to_hub"):
            raise NotImplementedError(f"{self._name}.save_config: push_to_hub is not supported")
        self.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None,
        **kwargs: Any,
    ) -> DiffusersScheduler:  # fmt: skip
        """The adapter of the ``scheduler_config.json`` in a folder (or its ``subfolder``),
        as diffusers' loader calls it for a scheduler diffusers has no class for; other
        keywords of the loader are ignored."""
        folder = os.path.join(pretrained_model_name_or_path, subfolder or "")
        config = _read_config(folder)
        return DiffusersScheduler(_from_config(config), config)

    def __reduce__(self):
        # the class may bear diffusers' class name (see "Saving"): pickle by the adapter's
        return (_restore, (self.wrapped, self.__dict__.copy()))

    @property
    def order(self) -> int:
        """Model calls per step of the grid (diffusers' ``order``: 2 for Heun, DPM2)."""
        return type(self.wrapped).CALLS_PER_STEP

    def __len__(self) -> int:
        return int(self._config.get("num_train_timesteps", 1000))

    # -- the schedule ------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        timesteps: Any = None,
        sigmas: Any = None,
        mu: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Prepares an N-step loop (or one over custom ``timesteps`` / ``sigmas``), as
        diffusers' ``set_timesteps``; ``mu`` is the dynamic shift of flow-matching methods.
        Custom ``sigmas`` are read as the wrapped method reads them: N + 1 levels for the
        σ-based methods, N for the flow-matching ones (as diffusers' flow-matching classes).

        Also accepted where the wrapped scheduler has the option: ``original_inference_steps``
        (LCM, TCD), ``strength`` (LCM, TCD: their own image-to-image schedule) and
        ``num_train_timesteps``.
        """
        import torch

        loop = self.wrapped
        custom = [n for n, v in (("timesteps", timesteps), ("sigmas", sigmas)) if v is not None]
        if num_inference_steps is not None and custom and self._name in _ONE_OF_STEPS_OR_GRID:
            raise ValueError(
                f"{self._name}.set_timesteps: pass num_inference_steps or {custom[0]}, not "
                "both (as diffusers' class)"
            )
        options: dict[str, Any] = {}
        for name, value in (("timesteps", timesteps), ("sigmas", sigmas), ("mu", mu)):
            if value is not None:
                options[name] = _host(value)
        original = kwargs.pop("original_inference_steps", None)
        if original is not None and original != getattr(loop, "num_original_steps", original):
            loop = loop.replace(num_original_steps=original)
        train = kwargs.pop("num_train_timesteps", None)
        if train is not None and train != getattr(loop, "num_train_steps", train):
            loop = loop.replace(num_train_steps=train)
        if "strength" in kwargs and self._name in _STRENGTH_IN_SET_TIMESTEPS:
            options["strength"] = kwargs.pop("strength")
        if kwargs:
            raise TypeError(
                f"set_timesteps() of {self._name} got unexpected keyword arguments: "
                f"{sorted(kwargs)}"
            )
        if num_inference_steps is None:
            if timesteps is not None:
                num_inference_steps = len(options["timesteps"])
            elif sigmas is not None:
                num_inference_steps = _steps_of_sigmas(loop, options["sigmas"])
        self._loop = loop
        self._num_steps = num_inference_steps
        self._options = options
        self._compile()
        ts = self._host_timesteps
        host = torch.from_numpy(ts.astype(np.int64 if ts.dtype.kind in "iu" else np.float32))
        self.timesteps = host.to(device) if device is not None else host
        self.num_inference_steps = (
            len(ts) if self._name in _STEPS_ARE_TIMESTEPS else num_inference_steps
        )
        self._step_index = None
        self._begin_index = None

    def _compile(self) -> None:
        self._program = self._loop.program(self._num_steps, **self._options)
        self._host_timesteps = np.asarray(self._program.timesteps)
        self._tableau = None
        self._starts = {}
        self._listed = None
        self._churn_masks: dict[int, np.ndarray] = {}
        self._state = None

    def _require_program(self) -> engine.Program:
        if self._program is None and (
            _training_loop(self.wrapped) is not None
            or _training_timesteps(self.wrapped) is not None
        ):  # fmt: skip
            # diffusers' classes start with the loop over every training step (__init__);
            # where ours refuses that loop, set_timesteps says why
            init, steps = _init_loop(self.wrapped), _init_steps(self.wrapped)
            if init is self.wrapped:
                self.set_timesteps(steps)
            else:  # that loop without the config's σ grid or offset, built once
                import torch

                self._loop = init
                _set_loop(self, steps, {}, None)
                ts = self._host_timesteps
                self.timesteps = torch.from_numpy(
                    ts.astype(np.int64 if ts.dtype.kind in "iu" else np.float32)
                )
        if self._program is None:
            raise RuntimeError(f"{self!r}: call set_timesteps before using the scheduler")
        return self._program

    @property
    def timesteps(self) -> Any:
        """The loop's timesteps (a tensor); before ``set_timesteps``, those of the loop over
        every training step, as diffusers' classes set them in ``__init__`` (None where the
        method has no such loop)."""
        if self._timesteps is None and self._program is None:
            import torch

            if self._name in _ARANGE_INIT_TIMESTEPS:
                return torch.arange(self.wrapped.num_train_steps - 1, -1, -1, dtype=torch.int64)
            program = _training_loop(self.wrapped)
            ts = np.asarray(program.timesteps) if program is not None else None
            if ts is None:  # the loop is refused (its step says why), its timesteps are not
                ts = _training_timesteps(self.wrapped)
            if ts is not None:
                return torch.from_numpy(
                    ts.astype(np.int64 if ts.dtype.kind in "iu" else np.float32)
                )
        return self._timesteps

    @timesteps.setter
    def timesteps(self, value: Any) -> None:
        self._timesteps = value

    @property
    def init_noise_sigma(self) -> Any:
        """The standard deviation of the pipeline's first (native) sample: a float32 0-d
        tensor for the classes whose diffusers value is one (Euler, Heun, LMS, ...; the
        float32 rounding is diffusers'), else a float; before ``set_timesteps``, that of
        the loop over every training step (as diffusers' ``__init__`` sets it)."""
        value = self._init_noise_sigma()
        if self._name in _TENSOR_INIT_NOISE_SIGMA:
            import torch

            return torch.tensor(value, dtype=torch.float32)
        return value

    def _init_noise_sigma(self) -> float:
        if self._program is None and self._name in _SIGMA_MAX_BEFORE_SET_TIMESTEPS:
            return float(self.wrapped.sigma_max)
        if self._program is None:
            # diffusers' classes set it in __init__, from the loop over every training step
            program = _training_loop(self.wrapped)
            if program is None:
                value = _fixed_init_noise_sigma(self.wrapped)
                if value is not None:
                    return value
                self._require_program()
        else:
            program = self._program
        return float(program.init_noise_scale * program.input_scale[0])

    @property
    def sigmas(self) -> Any:
        """diffusers' ``sigmas`` after the same ``set_timesteps``: the noise level of each
        model call and the final one(s), a float32 tensor on the loop's device (see the
        module docstring); before ``set_timesteps``, those of the loop over every training
        step (as diffusers' ``__init__``) for the classes whose ``__init__`` sets that loop,
        else a RuntimeError. An AttributeError where diffusers' class has no ``sigmas``.
        Entries agree with diffusers' within float32 rounding of the level, but at the
        smallest levels, where diffusers' float32 ᾱ cumulative product loses digits (ours is
        float64: 8e-5 relative at σ ≈ 0.01, below 1e-6 absolute)."""
        import torch

        if "_sigmas" in self.__dict__:  # set by a protocol (ScoreSdeVe, FlowMapEuler)
            return self.__dict__["_sigmas"]
        name = self._name or "PipelineScheduler"
        if name in _NO_SIGMAS:
            raise AttributeError(f"{name} has no sigmas (diffusers' class has none)")
        if name in _SIGMAS_NOT_PROVIDED:
            raise AttributeError(
                f"{name}: sigmas is not provided by the adapter ({_SIGMAS_NOT_PROVIDED[name]})"
            )
        if self._program is not None:
            loop, steps, options = self._loop, self._resolved_steps(), self._options
        elif name in _SIGMAS_OF_TRAINING_LOOP and _training_loop(self.wrapped) is not None:
            loop, steps, options = _init_loop(self.wrapped), _init_steps(self.wrapped), {}
        else:
            raise RuntimeError(f"{name}: call set_timesteps before reading sigmas")
        values = _diffusers_sigmas(name, loop, steps, options)
        device = getattr(self._timesteps, "device", None)
        out = torch.from_numpy(values.astype(np.float32))
        return out.to(device) if device is not None else out

    @sigmas.setter
    def sigmas(self, value: Any) -> None:
        self.__dict__["_sigmas"] = value

    @property
    def alphas_cumprod(self) -> Any:
        """ᾱ_t of the training steps as a float32 tensor, as diffusers' schedulers expose it
        (DiffEdit with ``num_reg_steps > 0`` and LEDITS++ read it); an AttributeError for
        a method without a training schedule (EDM, flow matching)."""
        import torch

        acp = getattr(self.wrapped, "alphas_cumprod", None)
        if acp is None:
            raise AttributeError(
                f"{type(self.wrapped).__name__} has no training schedule (alphas_cumprod)"
            )
        return torch.as_tensor(np.asarray(acp, dtype=np.float32))

    @property
    def betas(self) -> Any:
        """β_t of the training steps as a float32 tensor (diffusers' ``betas``)."""
        import torch

        betas = getattr(self.wrapped, "betas", None)
        if betas is None:
            raise AttributeError(f"{type(self.wrapped).__name__} has no training betas")
        return torch.as_tensor(np.asarray(betas, dtype=np.float32))

    @property
    def step_index(self) -> int | None:
        """The index of the next model call (None before the first)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The call the loop starts at, as set by :meth:`set_begin_index` (None: not set)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Starts the loop at model call ``begin_index`` (image-to-image pipelines)."""
        self._begin_index = int(begin_index)

    @property
    def index_for_timestep(self) -> Any:
        """``index_for_timestep(timestep, schedule_timesteps=None)``: the index of
        ``timestep`` in ``schedule_timesteps`` (default: the loop's), its second occurrence
        where it occurs twice, as diffusers' classes that have the method (the σ and
        multistep classes) compute it. A timestep that is not listed is refused, as a step
        there is: diffusers' multistep solvers return the last index. The other classes
        have no such attribute, as diffusers'."""
        if self._name not in _INDEXED_BY_TIMESTEP:
            name = "index_for_timestep"
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self._index_for_timestep

    def _index_for_timestep(self, timestep: Any, schedule_timesteps: Any = None) -> int:
        if schedule_timesteps is None:
            self._require_program()
            return self._index_of(timestep)
        if hasattr(schedule_timesteps, "detach"):
            schedule_timesteps = schedule_timesteps.detach().cpu().numpy()
        listed = np.asarray(schedule_timesteps)
        if listed.ndim != 1 or listed.dtype.kind not in "iuf":
            raise ValueError(
                f"{self._name}.index_for_timestep: schedule_timesteps must be a 1-D list of "
                f"numbers, got {listed.ndim}-D of dtype {listed.dtype}"
            )
        value = _scalar(timestep)
        k = _occurrence(listed.astype(np.float64), value)
        if k is None:
            raise ValueError(
                f"{self._name}: timestep {value} is not one of the timesteps given "
                f"{_listed(listed)}"
            )
        return k

    def _index_of(self, timestep: Any) -> int:
        """The call of ``timestep`` in this loop (:func:`_occurrence`)."""
        ts = self._host_timesteps
        value = _scalar(timestep)
        k = _occurrence(ts.astype(np.float32 if ts.dtype.kind == "f" else ts.dtype), value)
        if k is None:
            raise ValueError(
                f"{self._name}: timestep {value} is not one of this loop's timesteps {_listed(ts)}"
            )
        return k

    def _call_index(self, timestep: Any) -> int:
        """The call this model input or step is for (see the module docstring)."""
        self._require_program()
        if self._name in _PLACED_BY_TIMESTEP:
            self._step_index = self._index_of(timestep)
        elif self._step_index is None:
            if self._name in _COUNTED_FROM_TOP and self._begin_index is None:
                if _scalar(timestep) != float(self._host_timesteps[0]):
                    raise NotImplementedError(
                        f"{self._name} starts at the top of its schedule (timestep "
                        f"{self._host_timesteps[0]}), got timestep {_scalar(timestep)}: it has "
                        "no place to start at without set_begin_index (its calls are counted, "
                        "not placed by timestep); call set_begin_index first"
                    )
                self._step_index = 0
            elif self._begin_index is not None:
                self._step_index = self._begin_index
            else:
                self._step_index = self._index_of(timestep)
        return self._step_index

    # -- the loop ----------------------------------------------------------------------------

    def scale_model_input(
        self, sample: Any, timestep: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        """The model input of the call at ``timestep``: the native sample / input_scale
        (the sample itself, before ``set_timesteps`` too, for the methods whose model input
        is always the native sample, as diffusers' DDIM, DDPM, ...). Other arguments are
        ignored, as by diffusers' classes that take them (``generator=`` for SA-Solver)."""
        if self._program is None:
            if _native_input(self.wrapped):
                return sample
            program = _training_loop(self.wrapped)
            if program is not None:  # diffusers' loop before set_timesteps (its __init__)
                ts = np.asarray(program.timesteps)
                found = np.flatnonzero(ts.astype(np.float32) == np.float32(_scalar(timestep)))
                if found.size:
                    return sample / float(program.input_scale[found[0]])
        program = self._require_program()
        if np.all(program.input_scale == 1.0):  # the model input is the native sample
            return sample
        scale = float(program.input_scale[self._call_index(timestep)])
        return sample if scale == 1.0 else sample / scale

    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        eta: float | None = None,
        use_clipped_model_output: bool | None = None,
        generator: Any = None,
        variance_noise: Any = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> SchedulerOutput | tuple:
        """One model call's update of the native ``sample``, as diffusers' ``step``.

        The noise of a stochastic call is ``variance_noise`` if given, else drawn with
        ``generator`` (diffusers' ``randn_tensor``: model output's shape, dtype and device).
        Returns a :class:`SchedulerOutput`, or with ``return_dict=False`` the tuple diffusers'
        class returns: ``(prev_sample, pred_original_sample)``, or ``(prev_sample,)`` for the
        multistep solvers and the flow classes (``_ONE_OUTPUT``).
        """
        unknown = set(kwargs) - _KNOWN_STEP_KWARGS
        if unknown:
            raise TypeError(f"step() of {self._name} got unexpected keyword arguments: {unknown}")
        self._check_tensors(model_output=model_output, sample=sample)
        self._step_time_options(
            {"eta": eta, "use_clipped_model_output": use_clipped_model_output, **kwargs}
        )
        # the classes whose diffusers step reads only t and N have the one step from any t
        if hasattr(self._loop, "step_at") and not self._on_loop(timestep):
            prev, denoised = self._free_step(model_output, timestep, sample, generator,
                                             variance_noise)  # fmt: skip
        else:
            i = self._call_index(timestep)
            prev, denoised = self._advance(
                i, model_output, sample, generator=generator, variance_noise=variance_noise
            )
        if not return_dict:  # the tuple of diffusers' class: (prev_sample,) or with x̂_0
            return (prev,) if self._name in _ONE_OUTPUT else (prev, denoised)
        if self._name == "TCDScheduler":  # diffusers' TCDSchedulerOutput's fields
            return StepOutput(prev_sample=prev, pred_noised_sample=denoised)
        if self._name == "LCMScheduler":  # diffusers' LCMSchedulerOutput's fields
            return StepOutput(prev_sample=prev, denoised=denoised)
        return SchedulerOutput(prev, denoised)

    def _on_loop(self, timestep: Any) -> bool:
        """Whether ``timestep`` is one of the loop's (the loop over every training step
        before ``set_timesteps``)."""
        self._require_program()
        return bool(np.any(self._host_timesteps == _scalar(timestep)))

    def _free_step(self, model_output: Any, timestep: Any, sample: Any, generator: Any,
                   variance_noise: Any) -> tuple[Any, Any]:  # fmt: skip
        """DDIM's step from a timestep that is not one of the loop's, as diffusers' (whose
        step reads only t and N): the method's own one step t -> t - T // N
        (``DDIM.step_at``), run on its own; the loop's position is unchanged."""
        loop = self._loop
        tab = loop.step_at(_scalar(timestep), self._resolved_steps())
        program = engine.compile(
            tab, processes_x0=loop.processes_x0, describe_bad=lambda n: loop._bad_call(tab, n)
        )
        state, _ = engine.init(program, sample, 0, (loop.fingerprint, 0))
        noise = None
        if program.stochastic and program.coefs[0, _NOISE] != 0:
            if variance_noise is not None:
                noise = variance_noise
            else:
                from diffusers.utils.torch_utils import randn_tensor

                noise = randn_tensor(
                    tuple(model_output.shape), generator=generator,
                    device=model_output.device, dtype=model_output.dtype,
                )  # fmt: skip
        _, out = loop.step(state, sample, model_output, noise=noise)
        a, b = float(np.ravel(tab.x0_sample)[0]), float(np.ravel(tab.x0_output)[0])
        x0 = a * sample.to(model_output.dtype) + b * model_output
        if loop.processes_x0:
            x0 = loop._process(x0, True)
        return out, x0.to(sample.dtype)

    def _check_tensors(self, call: str = "step", /, **arrays: Any) -> None:
        for what, arr in arrays.items():
            if not hasattr(arr, "device") or not hasattr(arr, "detach"):
                raise TypeError(
                    f"{call}() of {self._name}: {what} must be a torch.Tensor (a diffusers "
                    f"pipeline's), got {type(arr).__name__}; use the scheduler itself "
                    "(init / step) for NumPy or JAX arrays"
                )

    def _advance(
        self,
        i: int,
        model_output: Any,
        sample: Any,
        *,
        generator: Any = None,
        variance_noise: Any = None,
        draws: int = 1,
        **step_options: Any,
    ) -> tuple[Any, Any]:
        """Runs model call ``i`` on the native ``sample``: (next native sample, the call's
        x̂_0 or None). The noise of a stochastic call is ``variance_noise`` if given, else
        drawn with ``generator`` (``draws`` draws where diffusers draws that many at the
        call, the last one used); ``step_options`` go to the wrapped scheduler's step."""
        program = self._program
        if i >= program.num_calls:
            raise IndexError(
                f"{self._name}: step called after the last of the loop's {program.num_calls} "
                "model calls; call set_timesteps again to start a new loop"
            )
        state = self._engine_state(sample, i)
        program, first = self._run
        k = i - first  # the call of the program run
        model_output, prediction = self._variance_channels(model_output, sample, program, k)
        scale, scale_next = float(program.input_scale[k]), float(program.input_scale[k + 1])
        held = sample if scale == 1.0 else sample / scale
        noise = None
        # Brownian classes draw from the loop's own tree (its key, or noise_sampler_seed)
        brownian = getattr(self._loop, "noise_type", "gaussian") == "brownian"
        if variance_noise is not None and (program.stochastic or self._name == "RePaintScheduler"):
            noise = variance_noise  # (RePaint's noise is outside its table: always taken)
        elif not brownian and (
            (program.stochastic and program.coefs[k, _NOISE] != 0)
            # drawn and unused, as diffusers, also where a loop has no noise at all (one step)
            or (
                self._name in _DRAWS_AT_EVERY_CALL
                and (not self._loop.deterministic or self._name in _DRAWS_EVEN_DETERMINISTIC)
            )
            or self._churn_draws(program)[k]
        ):
            from diffusers.utils.torch_utils import randn_tensor

            for _ in range(draws):
                noise = randn_tensor(
                    tuple(prediction.shape), generator=generator,
                    device=prediction.device, dtype=prediction.dtype,
                )  # fmt: skip
            noise = noise if program.stochastic else None
        state, out = self._loop.step(state, held, model_output, noise=noise, **step_options)
        self._state, self._state_index = state, i + 1
        self._step_index = i + 1
        prev = out if scale_next == 1.0 else out * scale_next
        return prev, self._denoised(i, sample, prediction, prev)

    def _churn_draws(self, program: engine.Program) -> np.ndarray:
        """Per call of ``program``: whether diffusers' step draws churn noise there (γ > 0,
        Karras et al. 2022, Alg. 2) where ours adds none: with ``s_noise=0``, on a last
        step to σ = 0 that the churn does not reach (x̂_0 predictions), and at the second
        call of a FlowMatchHeun step, which draws again and discards it. Read off the
        table of the same loop with s_noise = 1 (and, for x̂_0 predictions, whose last
        step drops the churned sample, ε predictions: only there, as another prediction
        type may visit another grid, e.g. Euler's continuous timesteps with v)."""
        key = id(program)
        if key not in self._churn_masks:
            mask = np.zeros(program.num_calls, dtype=bool)
            loop = self._loop
            if isinstance(loop, Churn) and loop.s_churn > 0:
                changes: dict[str, Any] = {"s_noise": 1.0}
                if getattr(loop, "prediction_type", None) == "sample" and "noise" in getattr(
                    loop, "PREDICTION_TYPES", ()
                ):
                    changes["prediction_type"] = "noise"
                probe = dataclasses.replace(loop, **changes)
                start = 0 if program is self._program else self._run[1]
                options = self._run_options(start)
                noise = np.asarray(probe.program(self._num_steps, **options).coefs[:, _NOISE])
                mask[: len(noise)] = noise[: program.num_calls] != 0
                if self._name == "FlowMatchHeunDiscreteScheduler":  # its second calls
                    mask[1::2] |= mask[0:-1:2][: len(mask[1::2])]
            self._churn_masks[key] = mask
        return self._churn_masks[key]

    def _variance_channels(
        self, model_output: Any, sample: Any, program: engine.Program, k: int
    ) -> tuple[Any, Any]:
        """(the output the wrapped step takes, its prediction channels). With a learned
        variance (``variance_type``) diffusers' classes take the model's 2C channels, or C
        where they read no variance: its solvers (which drop it), DDPM and unCLIP at a call
        that adds no noise; there the variance channels given to ours are zeros, never
        read. Elsewhere a C-channel output is refused (diffusers' DDPM fails there)."""
        loop = self._loop
        if not getattr(loop, "learns_variance", False) or model_output.ndim < 2:
            return model_output, model_output
        c = sample.shape[1]
        if tuple(model_output.shape) == tuple(sample.shape):
            if loop.USES_LEARNED_VARIANCE and program.coefs[k, _NOISE] != 0:
                raise ValueError(
                    f"{self._name} with variance_type={loop.variance_type!r}: this call adds "
                    f"noise with the learned variance, so model_output must have the sample's "
                    f"{c} channels and {c} variance channels (shape "
                    f"{loop.prediction_shape(tuple(sample.shape))}), got "
                    f"{tuple(model_output.shape)}"
                )
            import torch

            return torch.cat([model_output, torch.zeros_like(model_output)], dim=1), model_output
        return model_output, model_output[:, :c]

    # -- PNDM's two phases (diffusers' PNDMScheduler names them) -------------------------

    def _prk_calls(self, what: str) -> int:
        """The number of PNDM's Runge-Kutta warm-up calls (3 steps of 4; none with
        reduce_warmup, diffusers' skip_prk_steps)."""
        if self._name != "PNDMScheduler":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {what!r}")
        self._require_program()
        return 0 if self._loop.reduce_warmup else 12

    @property
    def prk_timesteps(self) -> Any:
        """PNDM: the timesteps of the Runge-Kutta warm-up calls (the first of ``timesteps``)."""
        return self.timesteps[: self._prk_calls("prk_timesteps")]

    @property
    def plms_timesteps(self) -> Any:
        """PNDM: the timesteps of the linear multistep calls (the rest of ``timesteps``)."""
        return self.timesteps[self._prk_calls("plms_timesteps") :]

    def step_prk(self, *args: Any, **kwargs: Any) -> SchedulerOutput | tuple:
        """PNDM: :meth:`step` for a call of the Runge-Kutta warm-up."""
        self._prk_calls("step_prk")
        return self.step(*args, **kwargs)

    def step_plms(self, *args: Any, **kwargs: Any) -> SchedulerOutput | tuple:
        """PNDM: :meth:`step` for a call of the linear multistep phase."""
        self._prk_calls("step_plms")
        return self.step(*args, **kwargs)

    def _step_time_options(self, passed: dict[str, Any]) -> None:
        """Uses the step-time options a pipeline passes where ours are at their default."""
        changes = {}
        for name, (default, spec) in specs(self.wrapped).items():
            if spec.diffusers_key != STEP_TIME:
                continue
            value = passed.get(_STEP_KWARG.get(name, name))
            if value is None or getattr(self.wrapped, name) != default:
                continue
            if value != getattr(self._loop, name):
                changes[name] = value
        if not changes:
            return
        program = self._require_program()
        loop = self._loop.replace(**changes)
        new = loop.program(self._num_steps, **self._options)
        if not np.array_equal(new.timesteps, program.timesteps):
            raise ValueError(f"{self._name}: step options {changes} change the timesteps")
        if self._state is not None and self._state_index > 0 and program.num_slots:
            raise ValueError(f"{self._name}: step options {changes} changed within a loop")
        self._loop = loop
        self._compile()

    def _engine_state(self, sample: Any, i: int) -> engine.EngineState:
        """The engine state at call ``i``, for this sample's shape, dtype and device."""
        import torch

        template = (tuple(sample.shape), sample.dtype, sample.device)
        if self._state is not None and template != self._template and i > 0:
            if template[0] == self._template[0]:  # another dtype or device mid-loop: the
                return self._moved_state(sample, template, i)  # history goes along, cast
            if not self._starts_fresh(i):
                raise ValueError(
                    f"{self._name}.step: the sample's shape changed mid-loop, from "
                    f"{self._template[0]} to {template[0]} at call {i}; the solver's history "
                    "holds the earlier shape: call set_timesteps again for a new loop"
                )
        if self._state is None or template != self._template:
            start = i if i > 0 and not self._starts_fresh(i) else 0
            options = self._run_options(start)
            program = self._loop.program(self._num_steps, **options) if start else self._program
            self._run = (program, start)
            self._state, _ = self._loop.init(self._num_steps, sample, 0, **options)
            self._state_index, self._template = self._run[1], template
        if self._state_index != i:
            step = torch.full_like(self._state.step, i - self._run[1])
            self._state, self._state_index = self._state._replace(step=step), i
        return self._state

    def _moved_state(self, sample: Any, template: tuple, i: int) -> engine.EngineState:
        """The state at call ``i`` for a sample of another dtype or device than the
        state's (a pipeline that casts its latents mid-loop): the same run's tables for the
        new sample, its history cast and moved (diffusers' classes keep theirs as they are
        and promote)."""
        import torch

        fresh, _ = self._loop.init(self._num_steps, sample, 0, **self._run_options(self._run[1]))
        like = fresh.coefs
        history = fresh.history
        if self._state.history:
            history = tuple(h.to(device=like.device, dtype=like.dtype) for h in self._state.history)
        step = torch.full_like(fresh.step, i - self._run[1])
        self._state = fresh._replace(history=history, step=step)
        self._state_index, self._template = i, template
        return self._state

    def _starts_fresh(self, start: int) -> bool:
        """Whether the loop can start at call ``start`` of the whole program: no later call
        reads what an earlier call left (one-step and two-stage methods), or diffusers'
        class drops those terms as the engine does (LMS)."""
        if self._name in _STARTS_WITHOUT_WARMUP:
            return True
        program = self._program
        written: set[int] = set()
        for n in range(start, program.num_calls):
            for slot, coef in program.reads[n]:
                if coef != 0 and int(slot) not in written:
                    return False
            for slot, *coefs in program.writes[n]:
                if any(c != 0 for c in coefs):
                    written.add(int(slot))
        return True

    def _run_options(self, start: int) -> dict:
        """``init``'s options of the run from call ``start`` on (0: the whole loop; else
        the image-to-image loop whose warm-up restarts there, :meth:`_restart_strength`)."""
        if start == 0:
            return dict(self._options)
        return {**self._options, "strength": self._restart_strength(start)}

    def _restart_strength(self, start: int) -> float:
        """The ``strength`` of the method's image-to-image loop whose calls are this loop's
        from call ``start`` on, with the multistep warm-up restarted there (as diffusers
        restarts it at a pipeline's begin index)."""
        from .methods._img2img import strength_of_cut

        n = self._resolved_steps()
        cut, rest = divmod(start, self.order)
        why = None
        if "strength" in self._options or rest:
            why = "not at the start of a step"
        else:
            strength = strength_of_cut(n, cut)
            try:
                timesteps = self._loop.program(n, **self._options, strength=strength).timesteps
            except TypeError:
                why = "the method has no image-to-image loop (init(..., strength=))"
            else:
                if np.array_equal(np.asarray(timesteps), self._host_timesteps[start:]):
                    return strength
                why = "its image-to-image loop runs other calls"
        raise NotImplementedError(
            f"{self._name} cannot start at model call {start} (image-to-image, "
            f"set_begin_index): a later call uses calls before it, and {why}; start at "
            "call 0 (strength=1)"
        )

    def _columns(self) -> engine.Tableau:
        if self._tableau is None:
            self._tableau = self._loop.tableau(self._resolved_steps(), **self._options)
        return self._tableau

    def _resolved_steps(self) -> int:
        if self._num_steps is not None:
            return self._num_steps
        raise ValueError(f"{self._name}: the number of steps is not known")

    def _denoised(self, i: int, native: Any, model_output: Any, prev: Any) -> Any:
        """The call's x̂_0 from the method's conversion (None where it has none); LCM's
        boundary-conditioned estimate (diffusers' ``denoised``); TCD's x_s = sqrt(ᾱ_s) x̂_0
        + sqrt(1 - ᾱ_s) ε̂ (diffusers' ``pred_noised_sample``)."""
        if tuple(model_output.shape) != tuple(native.shape):
            return None  # several predictions per call (Piflow): no one x̂_0
        tab = self._columns()
        n = tab.num_calls
        a = float(np.broadcast_to(tab.x0_sample, (n,))[i])
        b = float(np.broadcast_to(tab.x0_output, (n,))[i])
        if a == 0.0 and b == 0.0:
            return None
        x0 = a * native.to(model_output.dtype) + b * model_output
        if self._loop.processes_x0:
            x0 = self._loop._process(x0, True)
        if self._name == "LCMScheduler":
            # next = sqrt(ᾱ') (c_out x̂_0 + c_skip x) + sqrt(1 - ᾱ') z: the bracket
            on_x0, on_x = tab.column((engine.X0, 0))[i], tab.column((engine.SAMPLE, 0))[i]
            root = math.sqrt(1.0 - float(tab.column_noise()[i]) ** 2)
            x0 = (on_x0 / root) * x0 + (on_x / root) * native
        elif self._name == "TCDScheduler":
            # next = k x_s + sqrt(1 - k²) z, x_s linear in x̂_0, x and the output (eq. 1, 3)
            fresh = 0.0 if tab.noise is None else float(tab.column_noise()[i])
            root = math.sqrt(1.0 - fresh**2)
            on_x0, on_x = tab.column((engine.X0, 0))[i], tab.column((engine.SAMPLE, 0))[i]
            on_m = tab.column((engine.OUTPUT, 0))[i]
            x = native.to(model_output.dtype)
            x0 = (on_x0 / root) * x0 + (on_x / root) * x + (on_m / root) * model_output
        return x0.to(native.dtype)

    # -- noising a clean sample --------------------------------------------------------------

    def add_noise(self, original_samples: Any, noise: Any, timesteps: Any) -> Any:
        """``original_samples`` noised to ``timesteps`` (native), as diffusers' ``add_noise``:
        the first sample of an image-to-image loop, or a training input."""
        before = (  # a VP solver before set_timesteps: the level of each timestep
            self._program is None
            and self._name in _VP_SOLVERS
            and not getattr(self._loop, "use_flow_sigmas", False)
        )
        if self._name in _NOISED_AT_TIMESTEPS or before:
            a, b = self._vp_levels(timesteps)
        else:
            a, b = self._levels(timesteps)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        dtype, device = original_samples.dtype, original_samples.device
        a = a.to(device, dtype).reshape(shape)
        b = b.to(device, dtype).reshape(shape)
        return a * original_samples + b * noise

    @property
    def get_velocity(self) -> Any:
        """``get_velocity(sample, noise, timesteps)``: the v-prediction training target
        sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0 at integer training timesteps (Salimans & Ho 2022,
        sec. 4), as diffusers' classes that have one (DDPM, DDIM, LCM, TCD, the parallel
        DDPM / DDIM and CogVideoX's DDIM / DPM on their SNR-shifted tables) compute it; the
        others have no such attribute, as diffusers'."""
        if self._name not in _VELOCITY_AT_TIMESTEPS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute 'get_velocity'")
        return self._velocity

    def _velocity(self, sample: Any, noise: Any, timesteps: Any) -> Any:
        a, b = self._vp_levels(timesteps)
        shape = (-1,) + (1,) * (sample.ndim - 1)
        a = a.to(sample.device, sample.dtype).reshape(shape)
        b = b.to(sample.device, sample.dtype).reshape(shape)
        return a * noise - b * sample

    def _vp_levels(self, timesteps: Any) -> tuple[Any, Any]:
        """(sqrt(ᾱ_t), sqrt(1 - ᾱ_t)) of the training table at integer ``timesteps``."""
        import torch

        acp = torch.as_tensor(self._loop.alphas_cumprod)
        t = torch.as_tensor(timesteps).reshape(-1).to("cpu", torch.long)
        return acp[t].sqrt(), (1.0 - acp[t]).sqrt()

    def scale_noise(self, sample: Any, timestep: Any, noise: Any = None) -> Any:
        """The flow-matching pipelines' name for :meth:`add_noise` at the loop's level."""
        import torch

        a, b = self._levels(timestep)
        shape = (-1,) + (1,) * (sample.ndim - 1)
        a = a.to(sample.device, sample.dtype).reshape(shape)
        b = b.to(sample.device, sample.dtype).reshape(shape)
        return a * sample + b * (torch.randn_like(sample) if noise is None else noise)

    def _levels(self, timesteps: Any):
        """(α, σ) per batch entry of the loop's calls: the begin call, the current call, or
        the call of each timestep (as diffusers chooses)."""
        import torch

        self._require_program()
        t = torch.as_tensor(timesteps).reshape(-1)
        if self._begin_index is None:
            calls = [self._index_of(v) for v in t.tolist()]
        elif self._step_index is not None:
            calls = [self._step_index] * len(t)
        else:
            calls = [self._begin_index] * len(t)
        pairs = [self._start(k) for k in calls]
        return (
            torch.tensor([p[0] for p in pairs], dtype=torch.float64),
            torch.tensor([p[1] for p in pairs], dtype=torch.float64),
        )

    def _start(self, k: int) -> tuple[float, float]:
        """(α, σ) of the native sample α x_0 + σ ε at call ``k``, as diffusers' ``add_noise``
        noises to it (cached per loop: pipelines call it at every step)."""
        if k not in self._starts:
            start = self._start_found(k)
            if start is None:
                raise NotImplementedError(f"{self._name}: no noise level at model call {k}")
            self._starts[k] = start
        return self._starts[k]

    def _start_found(self, k: int) -> tuple[float, float] | None:
        if self._name in _SIGMAS_INTERLEAVED:
            # diffusers noises to its sigmas list's entry of the call, which at a step's
            # interpolated second call is the step's end level (StableDiffusionInpaint
            # blends at every call's timestep)
            return 1.0, float(self._listed_sigmas()[k])
        start = self._start_from_conversion(k) or self._start_from_strength(k)
        if (
            start is None
            and self._name in _VP_SOLVERS
            and not getattr(self._loop, "use_flow_sigmas", False)
        ):
            # a VP solver whose model conversion gives no level (prediction_type="flow" on
            # VP levels: diffusers' x̂_0 = x - σ m there): the VP pair of diffusers' sigmas
            # entry s = σ/α, α = 1/sqrt(1 + s²), σ = s α, as its add_noise reads it
            s = float(self._listed_sigmas()[k])
            if not math.isfinite(s):
                return 0.0, 1.0
            alpha = 1.0 / math.sqrt(1.0 + s * s)
            return alpha, s * alpha
        return start

    def _listed_sigmas(self) -> np.ndarray:
        """diffusers' ``sigmas`` of this loop (float64), built once per loop."""
        if self._listed is None:
            self._listed = _diffusers_sigmas(self._name, self._loop, self._resolved_steps(),
                                             self._options)  # fmt: skip
        return self._listed

    def _start_from_conversion(self, k: int) -> tuple[float, float] | None:
        """Read off the x̂_0 conversion of a noise (or flow) model at call ``k``:
        x̂_0 = A x + B m gives back x_0 for m = ε when α = 1 / A, σ = -B / A (for
        m = ε - x_0: α = (1 + B) / A); trusted where it gives the method's own start at
        call 0 (not where the model output is preconditioned, as EDM's)."""
        loop = _unchurned(self._loop)
        flow = loop.prediction_type == "flow"
        if not flow and loop.prediction_type != "noise":
            if "noise" not in type(loop).PREDICTION_TYPES:
                return None
            loop = loop.replace(prediction_type="noise")
        tab = loop.tableau(self._resolved_steps(), **self._options)
        a = np.broadcast_to(tab.x0_sample, (tab.num_calls,))
        b = np.broadcast_to(tab.x0_output, (tab.num_calls,))
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = ((1.0 + b) if flow else 1.0) / a
            sigma = -b / a
        if tab.start is None or not np.allclose((alpha[0], sigma[0]), tab.start, rtol=1e-9):
            return None
        if not (np.isfinite(alpha[k]) and np.isfinite(sigma[k])):
            return None
        return float(alpha[k]), float(sigma[k])

    def _start_from_strength(self, k: int) -> tuple[float, float] | None:
        """The start of the method's own image-to-image loop whose calls are this loop's
        from call ``k`` on (``init(..., strength=s)``)."""
        per_step = self.order
        if k % per_step or "strength" in self._options:
            return None
        n, cut = self._resolved_steps(), k // per_step
        for kept in (n - cut, n - cut + 0.5, n - cut - 0.5):
            if not 0 < kept <= n:
                continue
            try:
                tab = self._loop.tableau(n, strength=kept / n, **self._options)
            except (TypeError, ValueError):
                return None
            if tab.start is not None and np.array_equal(tab.timesteps, self._host_timesteps[k:]):
                return float(tab.start[0]), float(tab.start[1])
        return None


# -- pipelines that drive their scheduler through methods of its own (issue 18) -------------


class StepOutput(dict):
    """A step's named outputs, as diffusers' ``BaseOutput``: by attribute
    (``out.prev_sample``), by name (``out["derivative"]``) or by position (``out[0]``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int | slice):
            return tuple(self.values())[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self.values())


def _randn(shape: tuple, generator: Any, **kwargs: Any) -> Any:
    """diffusers' ``randn_tensor`` (the draws its schedulers make, in their order)."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=generator, **kwargs)


def _set_loop(adapter: DiffusersScheduler, num_steps: int, options: dict, device: Any) -> None:
    """Prepares an N-step loop with init ``options`` (a protocol's ``set_timesteps``)."""
    adapter._num_steps = num_steps
    adapter._options = options
    adapter._compile()
    adapter.num_inference_steps = num_steps
    adapter._step_index = None
    adapter._begin_index = None
    adapter._device = device


def _tensor(values: Any, dtype: Any, device: Any) -> Any:
    import torch

    out = torch.as_tensor(np.asarray(values), dtype=dtype)
    return out if device is None else out.to(device)


class _KarrasVeLoop:
    """``KarrasVePipeline``'s protocol (Karras et al. 2022, Alg. 2): per step i,
    ``add_noise_to_input`` (the churn to σ̂_i, drawn with the pipeline's generator as
    diffusers draws it, also where γ_i = 0), ``step`` (the Euler call at σ̂_i: our call 2i)
    and, where σ_{i+1} ≠ 0, ``step_correct`` (the correction: our call 2i + 1, without its
    churn column, which the next ``add_noise_to_input`` adds). ``timesteps`` are the step
    indices N-1 .. 0 and ``schedule`` the levels σ, as diffusers' (the pipeline reads
    ``schedule[t]``); the pipeline starts from σ_max z (``init_noise_sigma``)."""

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        import torch

        _set_loop(self, num_inference_steps, {}, device)
        sigma, hat, churn = self._loop._levels(num_inference_steps)
        self._churn = (hat, churn)
        self.timesteps = _tensor(np.arange(num_inference_steps)[::-1].copy(), torch.int64, device)
        # diffusers' schedule lists σ_i by its timestep i' = N - 1 - i: schedule[t] is σ_{N-1-t}
        self.schedule = _tensor(sigma[::-1].copy(), torch.float32, device)

    @property
    def init_noise_sigma(self) -> float:
        return float(self._loop.sigma_max)

    def add_noise_to_input(self, sample: Any, sigma: Any, generator: Any = None) -> tuple:
        """(x̂_i, σ̂_i): the churn of the coming step (Alg. 2, lines 5-6)."""
        import torch

        self._require_program()
        i = (self._step_index or 0) // 2
        hat, churn = self._churn
        z = _randn(tuple(sample.shape), generator).to(sample.device, sample.dtype)
        return sample + float(churn[i]) * z, torch.tensor(float(hat[i]), dtype=torch.float32)

    def step(
        self,
        model_output: Any,
        sigma_hat: Any,
        sigma_prev: Any,
        sample_hat: Any,
        return_dict: bool = True,
    ) -> Any:
        """The Euler call at σ̂_i (Alg. 2, line 8)."""
        self._check_tensors(model_output=model_output, sample_hat=sample_hat)
        self._require_program()
        i = self._step_index or 0
        prev, x0 = self._advance(i, model_output, sample_hat)
        derivative = (sample_hat - x0) / float(self._churn[0][i // 2])
        out = StepOutput(prev_sample=prev, derivative=derivative, pred_original_sample=x0)
        return out if return_dict else (prev, derivative)

    def step_correct(
        self,
        model_output: Any,
        sigma_hat: Any,
        sigma_prev: Any,
        sample_hat: Any,
        sample_prev: Any,
        derivative: Any,
        return_dict: bool = True,
    ) -> Any:
        """The second-order correction at σ_{i+1} (Alg. 2, lines 9-11); the stored x̂_i and
        its x̂_0 come from the state (``sample_hat`` and ``derivative`` are not read)."""
        import torch

        self._check_tensors("step_correct", model_output=model_output, sample_prev=sample_prev)
        i = self._step_index
        if i is None or i % 2 == 0:
            raise RuntimeError("KarrasVe: step_correct must follow step")
        prev, x0 = self._advance(
            i, model_output, sample_prev, variance_noise=torch.zeros_like(sample_prev)
        )
        out = StepOutput(prev_sample=prev, derivative=derivative, pred_original_sample=x0)
        return out if return_dict else (prev, derivative)


class _ScoreSdeVeLoop:
    """``ScoreSdeVePipeline``'s protocol (Song et al. 2021, Alg. 1): ``set_timesteps`` and
    ``set_sigmas``, then per step C ``step_correct`` calls and one ``step_pred``; each draws
    its z with the pipeline's generator as diffusers does. ``timesteps`` are the times
    t_i = linspace(1, ε_s, N) and ``sigmas`` the levels σ(t_i) the model is called at;
    ``step_pred`` returns ``prev_sample`` and ``prev_sample_mean`` (the pipeline returns the
    last mean, as our loop's final sample)."""

    def set_timesteps(
        self, num_inference_steps: int, sampling_eps: float | None = None, device: Any = None
    ) -> None:
        import torch

        self._loop = self.wrapped  # set_sigmas' and sampling_eps' changes last one loop
        if sampling_eps is not None and sampling_eps != self._loop.sampling_eps:
            self._loop = self._loop.replace(sampling_eps=float(sampling_eps))
        _set_loop(self, num_inference_steps, {}, device)
        eps = self._loop.sampling_eps
        self.timesteps = torch.linspace(1, eps, num_inference_steps, device=device)
        self.set_sigmas(num_inference_steps)

    def set_sigmas(
        self,
        num_inference_steps: int,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        sampling_eps: float | None = None,
    ) -> None:
        """The levels of the loop (σ_min, σ_max, ε_s given here replace the config's)."""
        import torch

        changes = {
            k: float(v)
            for k, v in (
                ("sigma_min", sigma_min),
                ("sigma_max", sigma_max),
                ("sampling_eps", sampling_eps),
            )
            if v is not None and v != getattr(self._loop, k)
        }
        if changes or self._num_steps != num_inference_steps:
            self._loop = self._loop.replace(**changes)
            _set_loop(self, num_inference_steps, {}, getattr(self, "_device", None))
        model_sigma, g = self._loop._levels(num_inference_steps)
        self._diffusion = g
        self.sigmas = torch.tensor(model_sigma, dtype=torch.float32)
        self.discrete_sigmas = torch.exp(
            torch.linspace(
                math.log(self._loop.sigma_min), math.log(self._loop.sigma_max), num_inference_steps
            )
        )

    def step_correct(
        self, model_output: Any, sample: Any, generator: Any = None, return_dict: bool = True
    ) -> Any:
        """A Langevin corrector call (Alg. 4)."""
        self._check_tensors("step_correct", model_output=model_output, sample=sample)
        self._require_program()
        i = self._step_index or 0
        if i % (self._loop.correct_steps + 1) == self._loop.correct_steps:
            raise RuntimeError(
                f"ScoreSdeVe: step_correct called at a predictor call (correct_steps="
                f"{self._loop.correct_steps} correctors, then step_pred)"
            )
        z = _randn(tuple(sample.shape), generator, layout=sample.layout).to(sample.device)
        prev, _ = self._advance(i, model_output, sample, variance_noise=z.to(sample.dtype))
        return StepOutput(prev_sample=prev) if return_dict else (prev,)

    def step_pred(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        generator: Any = None,
        return_dict: bool = True,
    ) -> Any:
        """The reverse-diffusion predictor call (Alg. 2)."""
        import torch

        self._check_tensors("step_pred", model_output=model_output, sample=sample)
        self._require_program()
        i = self._step_index or 0
        calls = self._loop.correct_steps + 1
        if i % calls != calls - 1:
            raise RuntimeError(
                f"ScoreSdeVe: step_pred called at a corrector call ({calls - 1} step_correct "
                "calls come first)"
            )
        z = _randn(
            tuple(sample.shape),
            generator,
            layout=sample.layout,
            device=sample.device,
            dtype=sample.dtype,
        )
        mean, _ = self._advance(i, model_output, sample, variance_noise=torch.zeros_like(sample))
        prev = mean + float(self._diffusion[i // calls]) * z
        out = StepOutput(prev_sample=prev, prev_sample_mean=mean)
        return out if return_dict else (prev, mean)


class _ScoreSdeVpLoop:
    """The VP score SDE's protocol (diffusers' deprecated ``ScoreSdeVpScheduler``, which no
    pipeline drives): ``set_timesteps(N)`` (the times t_i = linspace(1, ε_s, N), float32)
    and per time ``step_pred(score, x, t, generator)``, which draws its z with the generator
    as diffusers does and returns the tuple (sample, mean)."""

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        import torch

        _set_loop(self, num_inference_steps, {}, device)
        eps = self._loop.sampling_eps
        self.timesteps = torch.linspace(1, eps, num_inference_steps, device=device)

    def step_pred(self, score: Any, x: Any, t: Any, generator: Any = None) -> tuple[Any, Any]:
        """One Euler-Maruyama step of the reverse SDE: (the next sample, its mean)."""
        import torch

        self._check_tensors("step_pred", score=score, x=x)
        self._require_program()
        i = self._call_index(t)
        z = _randn(tuple(x.shape), generator, layout=x.layout, device=x.device, dtype=x.dtype)
        mean, _ = self._advance(i, score, x, variance_noise=torch.zeros_like(x))
        loop = self._loop
        beta = loop.beta_min + float(loop.times(self._num_steps)[i]) * (
            loop.beta_max - loop.beta_min
        )  # the diffusion of this step (its table's last one is 0: the loop's mean)
        return mean + math.sqrt(beta / self._num_steps) * z, mean


class _RePaintLoop:
    """``RePaintPipeline``'s protocol (Lugmayr et al. 2022, Alg. 1): ``timesteps`` is the
    whole resampling schedule, down and up; a model call's ``step(..., original_image,
    mask, generator)`` and, where the schedule goes up, ``undo_step`` per level (the forward
    noising x ← sqrt(1 - β_s) x + sqrt(β_s) z over the level's training steps, line 10).
    Our table folds the steps up that follow a call into that call's update (factor A, and
    one normal w); ``step`` runs the call with w = 0, divides A out and adds the call's own
    draw (diffusers': z, in both regions), so that the steps up, drawn one by one with the
    pipeline's generator, complete the table's update: the same draws as diffusers, in its
    order. The pipeline's ``scheduler.eta = ...`` sets η."""

    def set_timesteps(
        self,
        num_inference_steps: int,
        jump_length: int = 10,
        jump_n_sample: int = 10,
        device: Any = None,
    ) -> None:
        import torch

        options = {"jump_length": jump_length, "jump_n_sample": jump_n_sample}
        _set_loop(self, num_inference_steps, options, device)
        visited, n = self._loop.schedule(num_inference_steps, jump_length, jump_n_sample)
        self.num_inference_steps = n
        self.timesteps = _tensor(visited, torch.int64, device)

    @property
    def eta(self) -> float:
        return float(self._loop.eta)

    @eta.setter
    def eta(self, value: float) -> None:
        if float(value) != self._loop.eta:
            self._loop = self._loop.replace(eta=float(value))
            if self._num_steps is not None:
                self._compile()

    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        original_image: Any = None,
        mask: Any = None,
        generator: Any = None,
        return_dict: bool = True,
    ) -> Any:
        """A model call: DDIM in the unknown region, the noised known image in the known one
        (Alg. 1, lines 5-8), the steps up that follow it divided out."""
        import torch

        self._check_tensors(model_output=model_output, sample=sample)
        self._require_program()
        if not np.any(np.asarray(self._host_timesteps, np.float64) == _scalar(timestep)):
            raise ValueError(
                f"{self._name}: timestep {_scalar(timestep)} is not one of this loop's "
                f"timesteps ({len(self._host_timesteps)}, from {self._host_timesteps[0]} to "
                f"{self._host_timesteps[-1]})"
            )
        i = self._step_index or 0
        z = _randn(
            tuple(model_output.shape),
            generator,
            device=model_output.device,
            dtype=model_output.dtype,
        )
        known = {} if mask is None else {"original_image": original_image, "mask": mask}
        out, x0 = self._advance(
            i, model_output, sample, variance_noise=torch.zeros_like(sample), **known
        )
        _, kz, uz, b = (float(v) for v in self._program.coefs[i, -4:])
        up = math.sqrt(max(1.0 - b * b, 0.0))  # A: the product of the steps up's sqrt(1 - β)
        weight = uz / up if mask is None else (mask * (kz - uz) + uz) / up
        prev = out / up + weight * z
        return StepOutput(prev_sample=prev, pred_original_sample=x0) if return_dict else (prev, x0)

    def undo_step(self, sample: Any, timestep: Any, generator: Any = None) -> Any:
        """One level up: the forward process over the level's training steps (Alg. 1,
        line 10), each with its own draw."""
        betas = self._loop.betas
        start = int(timestep)
        for s in range(start, start + self._loop.num_train_steps // self.num_inference_steps):
            z = _randn(tuple(sample.shape), generator, device=sample.device, dtype=sample.dtype)
            sample = math.sqrt(1.0 - betas[s]) * sample + math.sqrt(betas[s]) * z
        return sample


class _CogVideoXDPMLoop:
    """``CogVideoXPipeline``'s protocol for its DPM scheduler (chosen by ``isinstance``):
    ``step(model_output, old_pred_original_sample, timestep, timestep_back, sample, ...)``
    returns ``(prev_sample, pred_original_sample)``. The previous x̂_0 and timestep are in
    our state (the arguments are not read). diffusers draws twice at a call with history and
    uses the second draw; so does the adapter."""

    def step(
        self,
        model_output: Any,
        old_pred_original_sample: Any = None,
        timestep: Any = None,
        timestep_back: Any = None,
        sample: Any = None,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Any = None,
        variance_noise: Any = None,
        return_dict: bool = False,
    ) -> Any:
        self._check_tensors(model_output=model_output, sample=sample)
        i = self._call_index(timestep)
        stride = self._loop.num_train_steps // self.num_inference_steps
        last = int(_scalar(timestep)) - stride < 0
        draws = 1 if old_pred_original_sample is None or last else 2
        prev, x0 = self._advance(
            i, model_output, sample, generator=generator, variance_noise=variance_noise, draws=draws
        )
        return SchedulerOutput(prev, x0) if return_dict else (prev, x0)


class _WuerstchenLoop:
    """Stable Cascade's protocol (chosen by ``isinstance`` of ``DDPMWuerstchenScheduler``):
    ``timesteps`` are the N levels t_i and the final 0 (the pipeline runs all but the last),
    and ``step`` takes the batch's timestep ratios (placed by the first)."""

    def set_timesteps(
        self, num_inference_steps: int | None = None, timesteps: Any = None, device: Any = None
    ) -> None:
        import torch

        if timesteps is not None:
            raise NotImplementedError(
                "DDPMWuerstchen through the adapter: custom timesteps are not supported; "
                "give num_inference_steps"
            )
        _set_loop(self, num_inference_steps, {}, device)
        grid = np.append(np.asarray(self._program.timesteps, np.float64), 0.0)
        # the pipeline calls the model at these: diffusers' float32 linspace, which can be
        # an ulp off our float64 grid rounded (the step is placed by the nearest level)
        self.timesteps = torch.linspace(1.0, 0.0, num_inference_steps + 1, device=device)
        if not np.allclose(self.timesteps.cpu().double().numpy(), grid, rtol=0, atol=1e-6):
            self.timesteps = _tensor(grid, torch.float32, device)

    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        generator: Any = None,
        return_dict: bool = True,
    ) -> Any:
        self._check_tensors(model_output=model_output, sample=sample)
        first = timestep.reshape(-1)[0] if hasattr(timestep, "reshape") else timestep
        i = self._call_index(first)
        prev, x0 = self._advance(i, model_output, sample, generator=generator)
        return SchedulerOutput(prev, x0) if return_dict else (prev,)

    def _index_of(self, timestep: Any) -> int:
        # the levels are diffusers' float32 linspace; ours are float64: the nearest
        ts = np.asarray(self._host_timesteps, np.float64)
        k = int(np.argmin(np.abs(ts - _scalar(timestep))))
        if abs(ts[k] - _scalar(timestep)) > 1e-6:
            raise ValueError(f"{self._name}: timestep {_scalar(timestep)} is not one of {ts}")
        return k


class _SCMLoop:
    """Sana-Sprint's protocol: ``set_timesteps(N, timesteps=, max_timesteps=,
    intermediate_timesteps=)`` as diffusers' (our init options); ``timesteps`` holds the N
    angles and the final 0 (the pipeline runs all but the last)."""

    def set_timesteps(
        self,
        num_inference_steps: int,
        timesteps: Any = None,
        device: Any = None,
        max_timesteps: float | None = 1.57080,
        intermediate_timesteps: float | None = 1.3,
    ) -> None:
        import torch

        if timesteps is not None:
            options = {"timesteps": _host(timesteps), "max_timesteps": max_timesteps}
        else:
            options = {"max_timesteps": max_timesteps}
        if intermediate_timesteps is not None:
            options["intermediate_timesteps"] = intermediate_timesteps
        _set_loop(self, num_inference_steps, options, device)
        self.timesteps = _tensor(
            self._loop._angles(num_inference_steps, **options), torch.float32, device
        )


class _PreviousTimestep:
    """``previous_timestep(t)`` of diffusers' DDPM, LCM and TCD: the loop's timestep after
    t (a tensor; -1 after the last), t - 1 before ``set_timesteps`` (the loop over every
    training step)."""

    def previous_timestep(self, timestep: Any) -> Any:
        import torch

        if self._program is None:
            return timestep - 1
        ts = self.timesteps
        found = np.flatnonzero(self._host_timesteps == _scalar(timestep))
        if not found.size:
            raise ValueError(
                f"{self._name}.previous_timestep: timestep {_scalar(timestep)} is not one of "
                f"this loop's timesteps {_listed(self._host_timesteps)}"
            )
        index = int(found[0])
        return torch.tensor(-1) if index == len(ts) - 1 else ts[index + 1]


class _CMLoop:
    """The consistency-model class's ``sigma_to_t`` (diffusers' tests and users map σ_max to
    the first timestep with it): c_noise of :mod:`diffsched.methods.consistency`."""

    def sigma_to_t(self, sigmas: Any) -> np.ndarray:
        from .methods.consistency import c_noise

        if hasattr(sigmas, "detach"):
            sigmas = sigmas.detach().cpu().numpy()
        return c_noise(sigmas)


class _ConsistencyDecoderLoop:
    """The consistency decoder's protocol (``ConsistencyDecoderVAE.decode``): ``step(
    model_output, timestep, sample, generator)``, the generator its fourth positional
    argument, as diffusers' class has it."""

    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        generator: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        return DiffusersScheduler.step(
            self, model_output, timestep, sample, generator=generator, return_dict=return_dict
        )


class _FlowMapLoop:
    """AnyFlow's protocol: ``sigmas`` (the N levels and the final 0, float64 as diffusers'),
    ``timesteps`` in float64, and ``step(..., r_timestep=)``: the model's target time. The
    call's own (the next timestep, 0 at the last call) runs our table; another target, or
    a timestep off the grid, is one step of the flow map between the two levels
    (``FlowMapEuler.step_between``), as diffusers' any-step sampling."""

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        sigmas: Any = None,
        timesteps: Any = None,
        **kwargs: Any,
    ) -> None:
        import torch

        DiffusersScheduler.set_timesteps(
            self, num_inference_steps, device=device, sigmas=sigmas, timesteps=timesteps, **kwargs
        )
        grid = self._loop.grid(self._num_steps, **self._options)
        self.sigmas = _tensor(grid, torch.float64, device)
        self.timesteps = _tensor(grid[:-1] * self._loop.num_train_steps, torch.float64, device)

    def _index_of(self, timestep: Any) -> int:
        # float64 timesteps, as diffusers' (which places a timestep by the nearest)
        ts = np.asarray(self._host_timesteps, np.float64)
        k = int(np.argmin(np.abs(ts - _scalar(timestep))))
        if abs(ts[k] - _scalar(timestep)) > 1e-3:
            raise ValueError(f"{self._name}: timestep {_scalar(timestep)} is not one of {ts}")
        return k

    def step(
        self,
        model_output: Any,
        timestep: Any,
        sample: Any,
        r_timestep: Any = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        self._require_program()
        on_loop = self._on_grid(timestep)
        if r_timestep is not None or not on_loop:
            targets = self._loop.r_timesteps(self._num_steps, **self._options)
            r = self._time_value(r_timestep) if r_timestep is not None else None
            if not on_loop or not np.isclose(r, targets[self._index_of(timestep)], 1e-6, 1e-6):
                return self._any_step(model_output, timestep, sample, r, return_dict)
        return DiffusersScheduler.step(
            self, model_output, timestep, sample, return_dict=return_dict, **kwargs
        )

    def apply_shift(self, sigmas: Any) -> Any:
        """The config's static shift σ' = s σ / (1 + (s - 1) σ) (Esser et al. 2024, eq. 23)
        of a tensor of levels in [0, 1], in its dtype and on its device, as diffusers'
        ``apply_shift`` (the identity at s = 1)."""
        import torch

        self._check_tensors("apply_shift", sigmas=sigmas)
        if not torch.is_floating_point(sigmas):
            raise TypeError(f"apply_shift() of {self._name}: sigmas must be a floating-point "
                            f"tensor, got dtype {sigmas.dtype}")  # fmt: skip
        s = self._loop.shift
        if s == 1.0:
            return sigmas
        return s * sigmas / (1 + (s - 1) * sigmas)

    def scale_noise(self, sample: Any, timestep: Any, noise: Any) -> Any:
        """x_σ = (1 - σ) sample + σ noise (eq. 1 of :mod:`diffsched.methods.flow_map`) at
        σ = t / T of each timestep, as diffusers' (on the grid or off it, before
        ``set_timesteps`` too)."""
        import torch

        self._check_tensors("scale_noise", sample=sample, noise=noise)
        t = torch.as_tensor(timestep).to(device=sample.device, dtype=sample.dtype)
        sigma = t / self._loop.num_train_steps
        sigma = sigma.reshape(*sigma.shape, *([1] * (noise.ndim - sigma.ndim)))
        return sigma * noise + (1.0 - sigma) * sample

    def _on_grid(self, timestep: Any) -> bool:
        try:
            self._index_of(timestep)
        except ValueError:
            return False
        return True

    def _time_value(self, value: Any) -> float:
        """One time from a number or a tensor of equal entries (one per batch element)."""
        got = np.asarray(_host(value), np.float64).reshape(-1)
        if got.size < 1 or np.any(got != got[0]):
            raise NotImplementedError(
                f"{self._name}: one time for the whole batch, got {got.tolist()} (a time per "
                "element: diffsched's per-element schedules, init(..., offsets=))"
            )
        return float(got[0])

    def _sigma_of(self, time: float) -> float:
        """σ of a time as diffusers reads it: the loop's level where the time is one of its
        timesteps, else time / T (off the grid)."""
        grid = self._loop.grid(self._num_steps, **self._options)
        ts = grid[:-1] * self._loop.num_train_steps
        k = int(np.argmin(np.abs(ts - time)))
        if abs(ts[k] - time) <= 1e-3:
            return float(grid[k])
        return time / self._loop.num_train_steps

    def _any_step(self, model_output: Any, timestep: Any, sample: Any, r: float | None,
                  return_dict: bool) -> Any:  # fmt: skip
        """A flow map's step from t to any r (``FlowMapEuler.step_between``), as diffusers'
        any-step sampling: the levels from the loop's grid where on it, else t / T; the
        loop's position is not used, its counter moves on as diffusers'."""
        self._check_tensors(model_output=model_output, sample=sample)
        if r is None:
            raise ValueError(
                f"{self._name}: timestep {_scalar(timestep)} is not one of the loop's, so its "
                "target cannot be inferred: pass r_timestep for any-step sampling"
            )
        sigma_t = self._sigma_of(self._time_value(timestep))
        sigma_r = self._sigma_of(r)
        prev = self._loop.step_between(sample.double(), model_output.double(), sigma_t, sigma_r)
        prev = prev.to(model_output.dtype)
        x0 = (sample.double() - sigma_t * model_output.double()).to(model_output.dtype)
        if self._step_index is None:  # diffusers' counter starts at t's index (0 off the grid)
            self._step_index = self._index_of(timestep) if self._on_grid(timestep) else 0
        self._step_index += 1
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev, x0)


# diffusers class -> the protocol its pipelines drive it by (methods beside the common ones)
_PROTOCOLS: dict[str, type] = {
    "KarrasVeScheduler": _KarrasVeLoop,
    "ScoreSdeVeScheduler": _ScoreSdeVeLoop,
    "ScoreSdeVpScheduler": _ScoreSdeVpLoop,
    "RePaintScheduler": _RePaintLoop,
    "CogVideoXDPMScheduler": _CogVideoXDPMLoop,
    "DDPMWuerstchenScheduler": _WuerstchenLoop,
    "SCMScheduler": _SCMLoop,
    "FlowMapEulerDiscreteScheduler": _FlowMapLoop,
    "CMStochasticIterativeScheduler": _CMLoop,
    "ConsistencyDecoderScheduler": _ConsistencyDecoderLoop,
    **dict.fromkeys(
        ("DDPMScheduler", "DDPMParallelScheduler", "LCMScheduler", "TCDScheduler"),
        _PreviousTimestep,
    ),
}
# classes whose pipelines choose their loop by isinstance of diffusers' class
_ISINSTANCE_CHECKED = frozenset({"CogVideoXDPMScheduler", "DDPMWuerstchenScheduler"})


@functools.cache
def _pipeline_class(diffusers_class: str | None) -> type:
    """The adapter's class as diffusers' pipelines save it: a subclass of diffusers'
    ``SchedulerMixin`` named as the wrapped scheduler's diffusers class (module
    ``diffusers``), so that ``model_index.json`` records that class; the plain adapter
    where diffusers is not installed. Where a pipeline drives its scheduler through
    methods of its own (KarrasVe, ScoreSdeVe, RePaint, ...), the class also has that
    protocol (:data:`_PROTOCOLS`), and where a pipeline asks ``isinstance`` of diffusers'
    class to choose its loop (CogVideoX's DPM, Stable Cascade's Würstchen), it is also a
    subclass of that class (whose methods ours override; its ``__init__`` never runs)."""
    protocol = _PROTOCOLS.get(diffusers_class)
    try:
        import diffusers
        from diffusers import SchedulerMixin
    except ImportError:
        if protocol is None:
            return DiffusersScheduler
        return type(DiffusersScheduler.__name__, (protocol, DiffusersScheduler), {})
    name = diffusers_class or "PipelineScheduler"
    namespace = {
        "__module__": "diffusers" if diffusers_class else __name__,
        "__qualname__": name,
        "__doc__": DiffusersScheduler.__doc__,
    }
    bases: tuple[type, ...] = (DiffusersScheduler, SchedulerMixin)
    if diffusers_class in _ISINSTANCE_CHECKED:
        bases = (DiffusersScheduler, getattr(diffusers, diffusers_class))
    if protocol is not None:
        bases = (protocol, *bases)
    return type(name, bases, namespace)


def __getattr__(name: str) -> Any:
    """``PipelineScheduler`` and ``SchedulerMixin``: what diffusers' pipeline loader looks up
    in this module for a scheduler saved as ``["diffsched.diffusers", "PipelineScheduler"]``."""
    if name == "PipelineScheduler":
        return _pipeline_class(None)
    if name == "SchedulerMixin":
        from diffusers import SchedulerMixin

        return SchedulerMixin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# diffusers' in-memory list of the config keys its class was not given (they take the
# loading class's own default in a swap: core.config.build reads it), never saved
_DEFAULTED = "_use_default_values"


def _hidden_keys(scheduler: BaseScheduler, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keys of ``config`` that ``scheduler``'s own config lacks (diffusers registers
    them to the config of a class made from another's: its ``hidden_dict``), but for the
    metadata that belongs to the class that wrote it (ours, ``_diffsched...``, and
    ``_use_default_values``)."""
    if not config:
        return {}
    own = scheduler.to_config()
    return {
        k: v
        for k, v in config.items()
        if k not in own and not k.startswith("_diffsched") and k != _DEFAULTED
    }


def _defaulted_keys(scheduler: BaseScheduler, config: Mapping[str, Any] | None) -> list[str]:
    """diffusers' ``_use_default_values`` of ``scheduler`` made from ``config``: its keys
    that ``config`` did not set (absent, listed there as defaulted, or a value this class
    could not take and replaced by its default); none where no config is given."""
    if not config:
        return []
    skipped = set(config.get(_DEFAULTED) or ())
    return sorted(
        k
        for k, v in scheduler.to_config().items()
        if not k.startswith("_") and (k not in config or k in skipped or not _same(config[k], v))
    )


def _same(a: Any, b: Any) -> bool:
    """Whether two config values are equal (values that compare elementwise: by identity)."""
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return a is b


def _restore(wrapped: BaseScheduler, state: dict) -> DiffusersScheduler:
    adapter = DiffusersScheduler(wrapped)
    adapter.__dict__.update(state)
    return adapter


def to_diffusers(scheduler: BaseScheduler) -> DiffusersScheduler:
    """``scheduler`` as a diffusers pipeline's scheduler (:class:`DiffusersScheduler`)."""
    return DiffusersScheduler(scheduler)


# classes whose diffusers __init__ lists the plain training loop (every training σ, then 0:
# no σ grid, spacing or offset), where set_timesteps applies the config's; ours the same
_PLAIN_INIT_LOOP = frozenset(
    {
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        # every training step, t -> t - 1, whatever the offset (DDPM steps before
        # set_timesteps: diffusers' DDPM reads no inference steps there)
        "DDPMScheduler",
        "DDPMParallelScheduler",
    }
)
# classes whose diffusers __init__ lists every training timestep, T - 1 down to 0, whatever
# the config (spacing, offset, LCM's and TCD's original steps): their timesteps before
# set_timesteps, where ours has no such loop to run (LCM and TCD step only after it)
_ARANGE_INIT_TIMESTEPS = frozenset(
    {
        "DDIMScheduler",
        "DDIMParallelScheduler",
        "DDPMScheduler",
        "DDPMParallelScheduler",
        "LCMScheduler",
        "TCDScheduler",
    }
)
_PLAIN_OPTIONS = {  # (the spacing stays: every spacing of T steps is the same, and
    # diffusers' init_noise_sigma reads it)
    "timesteps_offset": 0,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "sigma_schedule": None,
    "interpolation_type": "linear",
    "final_sigmas_type": "zero",
}


def _init_loop(scheduler: BaseScheduler) -> BaseScheduler:
    """The config of diffusers' loop before ``set_timesteps`` (see ``_PLAIN_INIT_LOOP``)."""
    if scheduler.DIFFUSERS_CLASS not in _PLAIN_INIT_LOOP:
        return scheduler
    names = {f.name for f in dataclasses.fields(scheduler)}
    return scheduler.replace(**{k: v for k, v in _PLAIN_OPTIONS.items() if k in names})


def _init_steps(scheduler: BaseScheduler) -> int | None:
    """The number of steps of diffusers' loop before ``set_timesteps``: T, or T + 1 for
    EDM-Euler (its __init__ ramps over T + 1 levels); None without a training schedule."""
    steps = getattr(scheduler, "num_train_steps", None)
    if not isinstance(steps, int):
        return None
    return steps + 1 if scheduler.DIFFUSERS_CLASS == "EDMEulerScheduler" else steps


def _of_training_loop(scheduler: BaseScheduler, what: str) -> Any:
    """``program`` or ``tableau`` of the loop over every training step (diffusers' schedule
    before ``set_timesteps``), built quietly; None where the method has no such loop or
    refuses it."""
    steps = _init_steps(scheduler)
    if steps is None:
        return None
    import warnings

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return getattr(_init_loop(scheduler), what)(steps)
    except (ValueError, TypeError, NotImplementedError, ZeroDivisionError):
        return None


@functools.cache
def _training_loop(scheduler: BaseScheduler) -> engine.Program | None:
    """The loop over every training step (diffusers' schedule before ``set_timesteps``),
    None where the method has no such loop."""
    program = _of_training_loop(scheduler, "program")
    if program is None:
        return None
    return program if np.isfinite(program.init_noise_scale * program.input_scale[0]) else None


def _training_timesteps(scheduler: BaseScheduler) -> np.ndarray | None:
    """The timesteps of the loop over every training step where that loop itself is
    refused (a zero-SNR ε-model's first call has no x̂_0): diffusers' classes still list
    them; a step there gives the refusal. None where the method has no such loop."""
    tab = _of_training_loop(scheduler, "tableau")
    return None if tab is None else np.asarray(tab.timesteps)


@functools.cache
def _fixed_init_noise_sigma(scheduler: BaseScheduler) -> float | None:
    """init_noise_sigma where it does not depend on the number of steps (1 for the VP
    solvers: diffusers' DPM-Solver, DEIS, UniPC, LCM, PNDM set 1.0 in __init__), read off
    2- and 3-step programs (4 and 5 where those cannot be built); None where it depends on
    it or none can be built."""
    for steps in ((2, 3), (4, 5)):  # (F-PNDM's warm-up needs 4)
        try:
            values = {
                float(p.init_noise_scale * p.input_scale[0])
                for p in (scheduler.program(steps[0]), scheduler.program(steps[1]))
            }
        except (ValueError, TypeError, NotImplementedError):
            continue
        return values.pop() if len(values) == 1 else None
    return None


@functools.cache
def _native_input(scheduler: BaseScheduler) -> bool:
    """Whether the model input of every call is the native sample (input_scale 1), read
    off a 2-step program."""
    try:
        return bool(np.all(scheduler.program(2).input_scale == 1.0))
    except (ValueError, TypeError, NotImplementedError):
        return False


def _steps_of_sigmas(scheduler: BaseScheduler, sigmas: Any) -> int:
    """The N of a custom ``sigmas=`` grid, as the class counts it (``custom_steps``): N + 1
    levels (the final one included) for the σ-based methods, N levels (one per model call,
    as diffusers' flow-matching classes and FlowMapEuler take them) for the flow ones."""
    steps = scheduler.custom_steps({"sigmas": sigmas})
    return len(sigmas) - 1 if steps is None else steps


def _unchurned(loop: BaseScheduler) -> BaseScheduler:
    """``loop`` without churn: churn calls the model at σ̂ = (1 + γ) σ (Karras et al. 2022,
    Alg. 2), while diffusers' ``sigmas`` and ``add_noise`` use the grid's σ."""
    return loop.replace(s_churn=0.0) if getattr(loop, "s_churn", 0.0) else loop


def _call_levels(loop: BaseScheduler, steps: int, options: dict) -> np.ndarray:
    """The noise level of each model call, read off the x̂_0 conversion of a noise (or
    flow) model: x̂_0 = A x + B m is x_0 for x = α x_0 + σ ε when α = 1 / A, σ = -B / A
    (m = ε), or α = (1 + B) / A (m = ε - x_0); σ/α for the σ-based methods (Karras et al.
    2022, eq. 1's σ of the VP sample scaled by 1/α), σ for the flow-matching ones and the
    solvers on flow σ's (``use_flow_sigmas``: α = 1 - σ, whatever the model predicts)."""
    flow = loop.prediction_type == "flow"
    if not flow and loop.prediction_type != "noise":
        loop = loop.replace(prediction_type="noise")
    tab = loop.tableau(steps, **options)
    a = np.broadcast_to(np.asarray(tab.x0_sample, np.float64), (tab.num_calls,))
    b = np.broadcast_to(np.asarray(tab.x0_output, np.float64), (tab.num_calls,))
    flow_levels = flow or getattr(loop, "use_flow_sigmas", False)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -b / a if flow_levels else -b  # σ (flow), σ/α = -B (σ-based)


def _diffusers_sigmas(name: str, loop: BaseScheduler, steps: int, options: dict) -> np.ndarray:
    """diffusers' ``sigmas`` of the class ``name`` for an N-step loop (float64)."""
    if name in _SIGMAS_OF_GRID:
        return np.asarray(_SIGMAS_OF_GRID[name](loop, steps, options), np.float64)
    levels = _call_levels(_unchurned(loop), steps, options)
    if name in _SIGMAS_INTERLEAVED:
        # the first call of each step (σ_0 .. σ_{N-1}); diffusers lists σ_1 .. σ_{N-1} twice
        step_levels = levels[:: type(loop).CALLS_PER_STEP]
        levels = np.concatenate([step_levels[:1], np.repeat(step_levels[1:], 2)])
    kinds = _SIGMAS_TAIL.get(name, ("zero",))
    if getattr(loop, "final_sigmas_type", "zero") == "sigma_min":
        kinds = ("min",)  # diffusers' final_sigmas_type="sigma_min": the training σ at t = 0
    if getattr(loop, "invert_sigmas", False):
        return np.append(levels, 1.0)  # the flow classes' inverted loop ends at σ = 1
    tail = []
    for kind in kinds:
        if kind == "zero":
            tail.append(0.0)
        else:  # "min"
            a = float(np.asarray(loop.alphas_cumprod, np.float64)[0])
            tail.append(math.sqrt((1.0 - a) / a))
    return np.concatenate([levels, tail])


def _listed(values: np.ndarray, limit: int = 12) -> str:
    """Values for a message: all of a short list, else its ends and how many (a loop over
    every training step would fill a screen)."""
    flat = np.asarray(values).reshape(-1).tolist()
    if len(flat) <= limit:
        return str(flat)
    head, tail = flat[: limit // 2], flat[-(limit // 2) :]
    return f"[{', '.join(map(str, head))}, ..., {', '.join(map(str, tail))}] ({len(flat)} in all)"


def _host(value: Any) -> Any:
    """A custom grid as a tuple of Python numbers (hashable: its program is cached)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, str) or np.ndim(value) != 1:
        return value  # the method's own check reports it
    return tuple(np.asarray(value).tolist())


def _occurrence(listed: np.ndarray, value: float) -> int | None:
    """diffusers' index of a timestep in a list: its only occurrence, else its second (so
    that a loop started at a repeated timestep of Heun starts on a first stage); None if
    it is not listed."""
    found = np.flatnonzero(listed == value)
    if found.size == 0:
        return None
    return int(found[1] if found.size > 1 else found[0])


def _scalar(timestep: Any) -> float:
    """One timestep (a number, or a tensor or array holding one) as a finite float; a
    string, a bool or NaN is refused (NaN matched no timestep and slipped through the
    nearest-timestep lookups of the flow-map, Würstchen and RePaint protocols)."""
    if hasattr(timestep, "reshape"):
        flat = timestep.reshape(-1)
        if flat.shape[0] != 1:
            raise ValueError(f"expected one timestep, got {tuple(timestep.shape)} of them")
        timestep = flat[0].item()
    if isinstance(timestep, bool) or not isinstance(timestep, numbers.Real):
        raise TypeError(f"a timestep must be a number or a tensor, got {timestep!r}")
    value = float(timestep)
    if not math.isfinite(value):
        raise ValueError(f"a timestep must be finite, got {value}")
    return value
