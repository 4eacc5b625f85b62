"""ComfyUI's KSampler by name: ``ds.from_comfy(sampler, scheduler, model=..., **settings)``.

ComfyUI (comfyanonymous/ComfyUI) picks a sampler and a scheduler by name in its KSampler
node. :func:`from_comfy` builds the diffsched scheduler whose loop equals that KSampler's:
the model is called on the held sample (ComfyUI's model input) at the same timesteps, the
loop starts from standard normal noise times ``init_noise_scale`` and its final sample is
KSampler's result; ``init(..., denoise=d)`` is KSampler's partial denoise and
``init(..., sigmas=[...])`` runs an explicit σ list (``SamplerCustom``).

With ``noise_stream="comfy"`` a stochastic sampler draws ComfyUI's own noise for the seed
``init`` is given as its key, from :func:`initial_noise` (ComfyUI's initial noise): the same
image as ComfyUI on the CPU (:mod:`diffsched.methods._comfy_noise`).

:func:`sampler_function` goes the other way: a k-diffusion sampler function of a diffsched
scheduler, for ComfyUI's ``KSAMPLER`` (a custom node's sampler).

Where ComfyUI meets an unknown name it silently falls back to euler / simple; here it is
an error listing :data:`SAMPLERS` or :data:`SCHEDULERS`.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

from .core.scheduler import BaseScheduler
from .methods import CLASSES
from .methods._comfy import ComfySampler
from .methods._comfy_noise import initial_noise
from .methods.comfy_exponential import ComfyUniPC
from .schedules.comfy import KSAMPLER_SCHEDULERS

__all__ = [
    "DEFAULT_SCHEDULER", "SAMPLERS", "SCHEDULERS", "from_comfy", "initial_noise",
    "sampler_function",
]  # fmt: skip

# sampler name -> (class, fixed options), from each class's COMFY_NAMES and COMFY_OPTIONS
_CLASSES: dict[str, tuple[type[ComfySampler], dict[str, Any]]] = {
    name: (cls, dict(cls.COMFY_OPTIONS.get(name, {})))
    for cls in CLASSES
    if issubclass(cls, ComfySampler)
    for name in cls.COMFY_NAMES
}
SAMPLERS: tuple[str, ...] = tuple(_CLASSES)  # the names from_comfy runs
SCHEDULERS: tuple[str, ...] = tuple(KSAMPLER_SCHEDULERS)
DEFAULT_SCHEDULER = "normal"  # from_comfy's, where no scheduler is named


def from_comfy(
    sampler_name: str,
    scheduler_name: str | None = None,
    *,
    model: str = "eps",
    **settings: Any,
) -> ComfySampler:
    """The scheduler running ComfyUI's KSampler with ``sampler_name`` and
    ``scheduler_name`` (default ``DEFAULT_SCHEDULER``, "normal"; also accepted as
    ``scheduler=``, the classes' option name, but not both) on ``model``'s model sampling
    ("eps", "v", "x0", "lcm", "flow", "flux").

    ``settings``: the model sampling's keys (``linear_start``, ``linear_end``,
    ``beta_schedule``, ``zsnr``, ``shift``, ``multiplier``) and the sampler's options
    (``order`` for lms, ``max_order`` and ``deis_mode``, ``ge_gamma``, ``s_churn``, ...).
    """
    if "scheduler" in settings:
        if scheduler_name is not None:
            raise TypeError(
                f"from_comfy got the ComfyUI scheduler twice: scheduler_name="
                f"{scheduler_name!r} and scheduler={settings['scheduler']!r}; pass one"
            )
        scheduler_name = settings.pop("scheduler")
    if scheduler_name is None:
        scheduler_name = DEFAULT_SCHEDULER
    if not isinstance(sampler_name, str) or sampler_name not in SAMPLERS:
        raise ValueError(f"unknown ComfyUI sampler {sampler_name!r}; known: {SAMPLERS}")
    if not isinstance(scheduler_name, str) or scheduler_name not in SCHEDULERS:
        raise ValueError(f"unknown ComfyUI scheduler {scheduler_name!r}; known: {SCHEDULERS}")
    cls, fixed = _CLASSES[sampler_name]
    clash = sorted(set(fixed) & set(settings))
    if clash:
        raise TypeError(f"ComfyUI sampler {sampler_name!r} fixes {clash}; leave them out")
    settings = {**cls.COMFY_DEFAULTS.get(sampler_name, {}), **settings}
    return cls(model=model, scheduler=scheduler_name, **fixed, **settings)


def sampler_function(sched: BaseScheduler, *, flow: bool | None = None):
    """A k-diffusion sampler function running ``sched`` on ComfyUI's denoiser:
    ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None)``, for
    ``comfy.samplers.KSAMPLER(fn)``.

    ``model(x, σ · s_in, **extra_args)`` is k-diffusion's denoiser (x̂_0 of ComfyUI's sample
    x = α_c x_0 + σ ε, α_c = 1, or 1 - σ on flow models); ``x`` the noise-scaled start;
    ``sigmas`` the loop's σ list, as given (the scheduler's own schedule is not used).
    Torch in, torch out (ComfyUI's tensors).

    * A :class:`~diffsched.methods._comfy.ComfySampler` (``from_comfy``'s, every ``Comfy*``
      class) runs as its class defines it on those σ's; ComfyUI's uni_pc quirk is kept
      (the list's last 0 becomes 0.001 in place).
    * Any other class runs on them through its ``init(..., sigmas=)``, the list written in
      the class's own σ (a variance-exploding class on a flow model: σ/(1 - σ); a flow class
      on an ε- or v-model: σ/(1 + σ)). At each call the sample is converted between
      ComfyUI's x and the held one (x = native / α for a variance-exploding model, the
      native sample α' x_0 + σ' ε of the class at the same signal-to-noise ratio; flow:
      native / (α' + σ')), ComfyUI's denoiser is called at that call's level, and its x̂_0
      turned into the class's prediction (x̂_0 = a · held + b · prediction at the call).
      The list goes in with its final level, or without it where the class appends its
      own final 0; a call whose x̂_0 reads no prediction (at σ = 0) calls no model.
      A class whose init takes no ``sigmas=`` is a TypeError; one that does not run the
      list it is given (a shift of its own, float32 rounding aside; churn raising the first
      level) a ValueError at the call.

    Stochastic classes draw from the key ``extra_args["seed"]`` (ComfyUI passes its seed
    there; 0 without one).

    ``flow``: whether ComfyUI's model is a flow (CONST) model; None reads it off the model
    as ComfyUI's samplers do (``model.inner_model.inner_model.model_sampling``), False if
    it has no such attribute.
    """
    if isinstance(sched, ComfySampler):
        return _comfy_sampler_function(sched)
    if not isinstance(sched, BaseScheduler):
        raise TypeError(f"sampler_function takes a diffsched scheduler, got {type(sched).__name__}")
    params = inspect.signature(sched.tableau).parameters
    if "sigmas" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise TypeError(
            f"sampler_function needs a scheduler that runs a given σ list (init(..., sigmas=)); "
            f"{type(sched).__name__}.init takes no sigmas= (its levels come from its own grid "
            f"options: {[n for n in params if n != 'num_steps'] or 'none'}); classes that take "
            f"one: {_TAKE_SIGMAS}"
        )
    space = _space(sched)

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        import torch

        extra_args = {} if extra_args is None else extra_args
        sig = _sigma_list(sigmas)  # a copy, not the caller's
        if len(sig) <= 1:
            return x
        flow_model = _comfy_flow(model) if flow is None else flow
        plan = _plan(sched, space, sig, flow_model)
        state, _ = sched.init(None, x, extra_args.get("seed", 0), sigmas=plan.custom)
        held = x * float(plan.to_held[0])
        s_in = x.new_ones([x.shape[0]])
        for n in range(plan.calls):
            if not plan.needs_model[n]:  # x̂_0 is the sample's own: the prediction unread
                state, held = sched.step(state, held, torch.zeros_like(held))
                continue
            native = held * float(plan.to_comfy[n])
            denoised = model(native, float(plan.levels[n]) * s_in, **extra_args)
            if callback is not None and plan.step[n] >= 0:  # once per step, as k-diffusion
                i = int(plan.step[n])
                callback({"x": native, "i": i, "sigma": sig[i], "sigma_hat": sig[i],
                          "denoised": denoised})  # fmt: skip
            a, b = float(plan.x0_sample[n]), float(plan.x0_output[n])
            state, held = sched.step(state, held, (denoised - a * held) / b)
        return held * float(plan.to_comfy[-1])

    sample.__name__ = f"sample_{type(sched).__name__}"
    return sample


def _sigma_list(sigmas: Any) -> np.ndarray:
    """ComfyUI's σ list (a 1-D torch tensor) as a float64 NumPy copy; anything else is
    refused by name (a NumPy list raised an AttributeError, a 2-D one of one row ran no
    step and returned the noise)."""
    import torch

    if not isinstance(sigmas, torch.Tensor):
        raise TypeError(
            f"sampler_function: sigmas must be ComfyUI's 1-D torch tensor, got "
            f"{type(sigmas).__name__}"
        )
    if sigmas.ndim != 1:
        raise ValueError(
            f"sampler_function: sigmas must be 1-D (ComfyUI's σ list), got shape "
            f"{tuple(sigmas.shape)}"
        )
    return sigmas.detach().cpu().to(torch.float64).numpy().copy()


# the classes whose init takes sigmas= (for sampler_function's error)
_TAKE_SIGMAS = tuple(
    cls.__name__
    for cls in CLASSES
    if not issubclass(cls, ComfySampler) and any(
        name == "sigmas" or p.kind is p.VAR_KEYWORD
        for name, p in inspect.signature(cls.tableau).parameters.items())
)  # fmt: skip


def _comfy_flow(model) -> bool:
    """Whether ComfyUI's denoiser wraps a flow (CONST) model, as its samplers ask."""
    try:
        ms = model.inner_model.inner_model.model_sampling
    except AttributeError:
        return False
    return any(c.__name__ == "CONST" for c in type(ms).__mro__)


def _space(sched: BaseScheduler) -> str:
    """The σ convention of a class's sigmas=, from its own 2-step grid's first call: "ve"
    (native x = x_0 + σ ε), "vp" (x = (x_0 + σ ε)/sqrt(1 + σ²)) or "flow"
    (x = (1 - σ) x_0 + σ ε); (α, σ) of a call are read off its x̂_0 conversion."""
    tab = sched.tableau(2)
    levels = sched.native_levels(tab, 2, {})
    if levels is None:
        raise TypeError(
            f"sampler_function: {type(sched).__name__} with prediction_type="
            f"{getattr(sched, 'prediction_type', None)!r} says nothing of each call's noise "
            "level, which the conversion from ComfyUI's x needs"
        )
    alpha, sigma = (float(np.broadcast_to(v, (tab.num_calls,))[0]) for v in levels)
    if math.isclose(alpha, 1.0, rel_tol=1e-9):
        return "ve"
    if math.isclose(alpha + sigma, 1.0, rel_tol=1e-9):
        return "flow"
    return "vp"


def _plan(sched: BaseScheduler, space: str, sig: np.ndarray, flow_model: bool) -> _Plan:
    """The plan of ComfyUI's σ list ``sig`` on ``sched``: the list in the class's own σ,
    with its final level (N + 1 levels) or, where the class appends its own final 0,
    without it; the form the class counts as its steps is tried first."""
    name = type(sched).__name__
    with np.errstate(divide="ignore"):
        ratio = sig / (1.0 - sig) if flow_model else sig  # σ/α of each level
    if space == "flow":
        own = sig if flow_model else ratio / (1.0 + ratio)
    elif flow_model and np.any(sig >= 1):
        raise ValueError(
            f"sampler_function: {name} runs variance-exploding σ's; the flow model's σ = 1 "
            f"has none (σ/(1 - σ) = ∞): start below 1, got {sig.tolist()}"
        )
    else:
        own = ratio
    forms = [own]
    if own[-1] == 0 and len(own) > 2:  # the class may append the final 0 itself
        forms.insert(0 if sched.custom_steps({"sigmas": own}) == len(own) else 1, own[:-1])
    errors = []
    for custom in forms:
        try:
            return _Plan(sched, space, sig, flow_model, custom, float(own[-1]))
        except ValueError as err:
            errors.append(err)
    mismatch = [e for e in errors if "does not run" in str(e)]
    raise (mismatch or errors)[0]


class _Plan:
    """What sampler_function's loop needs for a σ list: the class's custom grid and per
    call ComfyUI's σ, the factors between ComfyUI's x and the held sample, and the x̂_0
    conversion (:func:`_plan`)."""

    def __init__(self, sched: BaseScheduler, space: str, sig: np.ndarray, flow_model: bool,
                 custom: np.ndarray, last: float):  # fmt: skip
        name = type(sched).__name__
        self.custom = custom
        options = {"sigmas": custom}
        steps = sched.custom_steps(options)
        program = sched.program(None, **options)
        levels = sched.native_levels(sched.tableau(steps, **options), steps, options)
        n = program.num_calls
        alpha, sigma = (np.broadcast_to(np.asarray(v, np.float64), (n,)) for v in levels)
        # ComfyUI's (α_c, σ_c) at each call's signal-to-noise ratio, and x = native / k
        with np.errstate(divide="ignore", invalid="ignore"):
            if flow_model:
                self.levels = sigma / (alpha + sigma)
                k = alpha + sigma
            else:
                self.levels = sigma / alpha
                k = alpha
        scale = program.input_scale  # native = scale · held
        # the final sample: at the class's last level, α' from its convention
        a_f = {"ve": 1.0, "vp": 1.0 / math.sqrt(1.0 + last**2), "flow": 1.0 - last}[space]
        a_c = 1.0 - float(sig[-1]) if flow_model else 1.0
        self.calls = n
        self.to_comfy = np.append(scale[:n] / k, scale[-1] * a_c / a_f)  # held -> ComfyUI x
        self.to_held = k / scale[:n]
        self.x0_sample, self.x0_output = program.held.x0_sample, program.held.x0_output
        # a call whose x̂_0 does not read the prediction (b = 0: a call at σ = 0) needs no
        # model call; any other must lie above the list's end
        self.needs_model = self.x0_output != 0
        self.step = self._steps(name, sig)

    def _steps(self, name: str, sig: np.ndarray) -> np.ndarray:
        """(calls,) the step of ComfyUI's list each call starts, -1 for the others; a
        ValueError where the class does not visit the list's levels (rounding to float32
        aside): a call starts step i at σ_i if the next call is at another level."""
        out = np.full(self.calls, -1)
        i = 0
        for n, level in enumerate(self.levels):
            last = n + 1 == self.calls or not math.isclose(self.levels[n + 1], level,
                                                           rel_tol=1e-12)  # fmt: skip
            if i < len(sig) - 1 and last and math.isclose(level, sig[i], rel_tol=1e-6):
                out[n] = i
                i += 1
        low = float(sig[-1]) * (1 + 1e-6)
        if (i != len(sig) - 1 or not math.isclose(self.levels[0], sig[0], rel_tol=1e-6)
                or np.any(self.needs_model & ~(self.levels > low))):  # fmt: skip
            raise ValueError(
                f"sampler_function: {name} does not run the σ list it is given (a shift, a "
                f"churn or a final level of its own?): ComfyUI's {sig.tolist()}, its calls at "
                f"{self.levels.tolist()}"
            )
        return out


def _comfy_sampler_function(sched: ComfySampler):
    """sampler_function of a ComfyUI sampler class (its own σ handling)."""
    # the denoiser returns x̂_0: run the class as an x_0 model on the same method
    runner = sched.replace(model="x0", shift=None, multiplier=None)

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):

        extra_args = {} if extra_args is None else extra_args
        # a copy: a float64 list's .to(float64).numpy() shares the caller's memory, which
        # the quirk below writes into (the class applies that quirk itself, from the 0)
        sig = _sigma_list(sigmas)
        if isinstance(sched, ComfyUniPC) and len(sig) and sig[-1] == 0:
            sigmas[-1] = 0.001  # ComfyUI's in-place quirk (then its flow result / 0.999)
        if len(sig) <= 1:
            return x
        calls = runner.calls(sig)
        first = np.ones(len(calls.sigmas), bool) if calls.first is None else calls.first
        state, _ = runner.init(None, x, extra_args.get("seed", 0), sigmas=sig)
        scale = runner.program(None, sigmas=tuple(sig)).input_scale  # native = scale · held
        held = x / float(scale[0])
        s_in = x.new_ones([x.shape[0]])
        step = -1
        for i, level in enumerate(calls.sigmas):
            native = held * float(scale[i])
            denoised = model(native, float(level) * s_in, **extra_args)
            step += bool(first[i])
            if callback is not None and first[i]:  # once per step, as k-diffusion's samplers
                callback({"x": native, "i": step, "sigma": sig[step], "sigma_hat": level,
                          "denoised": denoised})  # fmt: skip
            state, held = runner.step(state, held, denoised)
        return held * float(scale[-1])

    sample.__name__ = f"sample_{type(sched).__name__}"
    return sample
