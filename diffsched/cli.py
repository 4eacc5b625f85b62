"""The diffsched command: sample from an exact model and see the true error.

* ``diffsched sample``: run one scheduler on an embedded exact model (the optimal
  denoiser of scikit-learn's digits, or a Gaussian mixture), write the samples as a PNG,
  and print the model calls, the wall time and the error against the exact
  probability-flow ODE solution from the same noise. An inverse scheduler (data to noise)
  inverts data samples, regenerates them with its forward method and reports the
  reconstruction error. ``comfy-SAMPLER`` names ComfyUI's KSampler sampler
  (:func:`diffsched.from_comfy`; ``-o scheduler=NAME``, ``-o model=NAME``), in ``bench``'s
  specs too.
* ``diffsched bench``: that error for several schedulers and step counts, as a markdown
  table and a log-log plot; ``--against diffusers`` runs the same configs through diffusers.
  ``bench --stochastic`` measures the stochastic samplers (and any deterministic one) by the
  distance between their samples' moments and the exact data moments, beside the
  Monte-Carlo floor of exact data samples.
* ``diffsched tune``: the grid of N steps closest to the exact solution, measured on
  held-out noise.
* ``diffsched list``: the schedulers and their options, with defaults, and the commands
  each one works in (with the reason where it does not); then ComfyUI's samplers.

Every scheduler is run on an exact model of its own kind: the variance-preserving
denoiser at the training steps of its betas; EDM's preconditioned network F at
c_noise = ln(σ)/4 (:class:`EDMExactModel`); iPNDM's v-prediction model at continuous time
t in (0, 1] (:class:`CosineExactModel`); or the rectified-flow form (t = σ T).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import methods
from .core import ops
from .core.ops import to_numpy64
from .core.scheduler import Scheduler
from .exact import models, reference
from .exact.threads import small_matrices
from .interop.config import from_config
from .methods._comfy import ComfySampler
from .sampling import sample
from .tuning import relative_error

# the command line's names: each class's CLI_NAME (diffsched.methods.CLI_NAMES)
SCHEDULERS: dict[str, type[Scheduler]] = dict(methods.CLI_NAMES)
CLI_NAMES = {name: cls.__name__ for name, cls in SCHEDULERS.items()}
BACKENDS = ("numpy", "torch", "jax")
DEFAULT_BENCH = (
    "ddim",
    "pndm",
    "pndm:reduce_warmup=true",
    "euler",
    "euler:use_karras_sigmas=true",
    "heun",
    "dpm2",
    "lms",
    "dpm++2m",
    "dpm++2m:use_karras_sigmas=true",
    "deis",
    "unipc",
    "dpm++2s",
)


class UsageError(Exception):
    """A command-line mistake: printed without a traceback, exit status 2."""


# -- building schedulers from the command line --------------------------------------------


def parse_value(text: str) -> Any:
    """``true``/``false``, a number, a JSON list, or else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"expected an option as key=value, got: {pair!r}")
        options[key.strip()] = parse_value(value.strip())
    return options


def build_scheduler(
    name: str | None,
    options: dict[str, Any],
    config: str | None = None,
    flag: str = "-o",
    name_flag: str | None = None,
) -> Scheduler:
    """A scheduler by name (or from a diffusers config file), with options overriding.
    ``comfy-SAMPLER`` is ComfyUI's KSampler sampler by name (:func:`build_comfy`).

    A bad name, option or config is a :class:`UsageError` that names ``flag`` (the option
    flag, or the ``--schedulers`` spec) or ``--config``; the library's own message is kept
    (with its hint where an option is diffusers' name for one of ours). ``name_flag``: where
    the name was given, for a ComfyUI name's errors (default ``--scheduler NAME``)."""
    if config is not None:
        if name is not None:
            raise UsageError(f"give a scheduler name or --config, not both (got {name!r} and "
                             f"--config {config})")  # fmt: skip
        if not Path(config).exists():
            raise UsageError(f"--config: no such file or folder: {config!r}")
        if is_tuned_file(config):  # written by 'diffsched tune --tune coefficients|both'
            from .tuning_coefficients import load_tuned

            if options:
                raise UsageError(f"--config {config} is a tuned table: it takes no -o options")
            try:
                return load_tuned(config)
            except (ValueError, TypeError) as err:
                raise UsageError(f"--config {config}: {err}") from None
        try:
            return _one_prediction(from_config(config, **options), f"--config {config}")
        except (ValueError, TypeError, OSError) as err:
            raise UsageError(f"--config {config}: {err}") from None
    name = (name or "ddim").strip().lower()
    if name.startswith(COMFY_PREFIX):
        return build_comfy(name[len(COMFY_PREFIX) :], options, flag,
                           name_flag or f"--scheduler {name}")  # fmt: skip
    if name not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    try:
        scheduler = SCHEDULERS[name](**options)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{flag}: {err}; see `diffsched list` for the options") from None
    return _one_prediction(scheduler, flag)


def _one_prediction(scheduler: Scheduler, where: str) -> Scheduler:
    """``scheduler``, or a :class:`UsageError` where its model output is not the sample's
    shape (a learned variance's extra channels): the command line's models give one
    prediction per sample."""
    shape = (1, 1, 4)
    wide = tuple(scheduler.prediction_shape(shape))
    if wide == shape:
        return scheduler
    if getattr(scheduler, "learns_variance", False):
        raise UsageError(
            f"{where}: {type(scheduler).__name__} with variance_type="
            f"{scheduler.variance_type!r} takes variance channels from the model, which the "
            "command line's models do not give; leave variance_type at its default here"
        )
    raise UsageError(
        f"{where}: {type(scheduler).__name__} takes a model output of another shape than "
        f"the sample's ({wide} for {shape}), which the command line's models do not give"
    )


def is_tuned_file(path: str) -> bool:
    """Whether ``path`` is a tuned table written by ``diffsched tune --save``."""
    from .core.files import read_text

    if not Path(path).is_file():
        return False
    try:
        data = json.loads(read_text(path, "tuned table"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == "diffsched-tuned"


def parse_spec(spec: str) -> tuple[str, Scheduler, dict[str, Any]]:
    """``name[:key=value,key=value]``, e.g. ``pndm:reduce_warmup=true``: (label, scheduler,
    the options given). Commas inside brackets belong to a list value. ``comfy-SAMPLER``
    is ComfyUI's KSampler sampler by name (:func:`build_comfy`), e.g.
    ``comfy-dpmpp_2m_sde:scheduler=karras``. Errors name ``--schedulers SPEC``."""
    name, _, rest = spec.partition(":")
    pairs = [p for p in re.split(r",(?![^\[]*\])", rest) if p.strip()]
    options = parse_options(pairs)
    flag = f"--schedulers {spec}"
    return spec, build_scheduler(name, options, flag=flag, name_flag=flag), options


# ComfyUI's KSampler samplers on the command line: comfy-SAMPLER (diffsched.comfy.SAMPLERS)
COMFY_PREFIX = "comfy-"


def comfy_defaults() -> dict[str, str]:
    """The defaults of a ``comfy-`` name's options ``scheduler`` and ``model``: those of
    :func:`diffsched.from_comfy`."""
    import inspect

    from .comfy import DEFAULT_SCHEDULER, from_comfy

    params = inspect.signature(from_comfy).parameters
    return {"scheduler": DEFAULT_SCHEDULER, "model": params["model"].default}


def build_comfy(
    sampler_name: str, options: dict[str, Any], flag: str = "-o", name_flag: str | None = None
) -> Scheduler:
    """ComfyUI's KSampler ``sampler_name`` (:func:`diffsched.from_comfy`) with ``options``:
    ``scheduler`` (ComfyUI's schedule) and ``model`` (its model sampling), default normal
    and eps, and any other keyword ``from_comfy`` takes (``shift``, ``eta``, ``s_noise``,
    ...). The one place the commands turn a ``comfy-`` name into a scheduler.

    A bad name or option is a :class:`UsageError` naming where it was given: ``name_flag``
    (default ``--scheduler comfy-SAMPLER``) for the name, ``flag`` for the options (``-o``
    names the option too: ``-o scheduler=NAME``; a ``--schedulers`` spec names itself). The
    adaptive ``dpm_adaptive`` is refused: it has no fixed steps (``bench --adaptive`` runs
    it)."""
    from .comfy import SAMPLERS, SCHEDULERS, from_comfy

    name_flag = name_flag or f"--scheduler {COMFY_PREFIX}{sampler_name}"
    if sampler_name not in SAMPLERS:
        raise UsageError(f"{name_flag}: unknown ComfyUI sampler {sampler_name!r}; known: "
                         f"{', '.join(COMFY_PREFIX + n for n in SAMPLERS)}")  # fmt: skip
    options = {**comfy_defaults(), **options}
    scheduler_name = options.pop("scheduler")
    if scheduler_name not in SCHEDULERS:
        where = f"{flag} scheduler={scheduler_name}" if flag == "-o" else flag
        raise UsageError(f"{where}: unknown ComfyUI scheduler {scheduler_name!r}; known: "
                         f"{', '.join(SCHEDULERS)}")  # fmt: skip
    try:
        scheduler = from_comfy(sampler_name, scheduler_name, **options)
    except (ValueError, TypeError, NotImplementedError) as err:
        raise UsageError(f"{flag}: {err}; see `diffsched list` for the options") from None
    if getattr(scheduler, "ADAPTIVE", False):
        raise UsageError(f"{name_flag}: {adaptive_refusal(scheduler)}")
    return scheduler


def adaptive_refusal(scheduler: Scheduler) -> str:
    """Why the commands do not run an adaptive scheduler (``ADAPTIVE``) themselves."""
    return (f"{type(scheduler).__name__} is adaptive: its model calls are decided "
            "while it runs, so it has no steps to run or measure here; 'diffsched bench "
            "--adaptive' measures it against the exact solution (per rtol), and "
            "ds.sample(model, sched, noise, max_calls) runs it")  # fmt: skip


def adapt_to_model(
    scheduler: Scheduler, model_name: str, options: dict[str, Any]
) -> tuple[Scheduler, str]:
    """The mixtures' data reach about ±3, so clipping x̂_0 to [-1, 1] would distort them:
    for ``gmm`` and ``gmm64``, clipping is turned off unless the options set it. Returns the
    note to show."""
    if (
        data_name(model_name) == "gmm"
        and getattr(scheduler, "clip_denoised_sample", False)
        and "clip_denoised_sample" not in options
    ):
        note = f"note: {model_name} data exceed [-1, 1], so clip_denoised_sample=False"
        return scheduler.replace(clip_denoised_sample=False), note
    return scheduler, ""


# -- one run: our loop, the exact reference, the error --------------------------------------


@dataclasses.dataclass
class Run:
    """A sampling run on an exact model, and its error against the exact solution."""

    samples: np.ndarray  # float64, on the host
    noise: np.ndarray
    model_calls: int
    seconds: float
    exact: np.ndarray | None  # None where no exact solution applies
    note: str = ""
    reference_seconds: float = 0.0  # the exact ODE solution's time

    @property
    def error(self) -> float | None:
        """Relative RMS error ||x - x*|| / ||x*|| over the whole batch."""
        if self.exact is None:
            return None
        return relative_error(self.samples, self.exact)


# the exact models of the commands: name -> (the data set of diffsched.exact.models, options)
EXACT_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "digits": ("digits", {}),  # scikit-learn's 8x8 digits, as an empirical distribution
    "gmm": ("gmm", {"n_components": 8, "dim": 2, "seed": 0}),  # isotropic, in the plane
    # 8 Gaussians with full covariances in 64 dimensions (standard deviations 0.1-0.6 along
    # random rotations, means about 3 apart): the kind of model issue 20 measured the tuner on
    "gmm64": ("gmm", {"n_components": 8, "dim": 64, "seed": 0, "mean_scale": 0.5,
                      "std_range": (0.1, 0.6), "covariance": "full"}),
}  # fmt: skip
MODEL_NAMES = tuple(EXACT_MODELS)
MODEL_HELP = ("exact model: digits (8x8 digits, empirical), gmm (2-D mixture), gmm64 (64-D "
              "mixture, full covariances)")  # fmt: skip


def data_name(model_name: str) -> str:
    """The data set (``"digits"`` or ``"gmm"``) of one of :data:`EXACT_MODELS`."""
    if model_name not in EXACT_MODELS:
        raise UsageError(f"unknown model {model_name!r}; known: {', '.join(EXACT_MODELS)}")
    return EXACT_MODELS[model_name][0]


def model_kwargs(model_name: str) -> dict[str, Any]:
    """The options of one of :data:`EXACT_MODELS` (a copy)."""
    data_name(model_name)
    return dict(EXACT_MODELS[model_name][1])


def make_noise(model_name: str, num_samples: int, seed: int) -> np.ndarray:
    shape = models.sample_shape(data_name(model_name), num_samples, **model_kwargs(model_name))
    return np.random.default_rng(seed).standard_normal(shape)


def to_backend(x: np.ndarray, backend: str, dtype: str):
    if backend == "numpy":
        return x.astype(dtype)
    if backend == "torch":
        import torch

        return torch.from_numpy(x).to(getattr(torch, dtype))
    if backend == "jax":
        import jax

        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        return jax.numpy.asarray(x, dtype=dtype)
    raise UsageError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")


def is_flow(scheduler: Scheduler) -> bool:
    """Whether the scheduler samples a rectified-flow model (x = (1 - σ) x_0 + σ ε)."""
    from .grids import is_flow as flow_levels

    # a flow-matching class or a solver on flow σ's; a Tuned: its base
    return flow_levels(getattr(scheduler, "base_scheduler", scheduler))


def _flow_sigma(alpha_bar: float) -> float:
    """The flow level σ (x = (1 - σ) x_0 + σ ε) of the variance-preserving level ᾱ."""
    if alpha_bar >= 1.0:
        return 0.0
    return 1.0 / (1.0 + math.sqrt(alpha_bar / (1.0 - alpha_bar)))


def is_edm(scheduler: Scheduler) -> bool:
    """Whether the scheduler calls EDM's preconditioned network (σ-based, c_noise times)."""
    return isinstance(scheduler, methods.EDMEuler | methods.EDMDPMSolverMultistep)


def is_inverse(scheduler: Scheduler) -> bool:
    """Whether the scheduler runs from data to noise (an inversion)."""
    return isinstance(scheduler, methods.DDIMInverse | methods.DPMSolverMultistepInverse)


def _scalar_like(xp, value: Any, like: Any) -> Any:
    """A timestep (a number or a one-element array) as a 0-d array of ``like``'s dtype."""
    import array_api_compat

    if not array_api_compat.is_array_api_obj(value):
        value = np.asarray(value, dtype=np.float64)
    if array_api_compat.is_numpy_array(value) and not array_api_compat.is_numpy_array(like):
        value = xp.asarray(float(value.reshape(())), dtype=like.dtype,
                           device=array_api_compat.device(like))  # fmt: skip
    return xp.reshape(xp.asarray(value, dtype=like.dtype), ())


class EDMExactModel:
    """The exact network F of EDM's preconditioning (Karras et al. 2022, eq. 7, Table 1)
    for an exact denoiser: the model :class:`~diffsched.EDMEuler` and
    :class:`~diffsched.EDMDPMSolverMultistep` call.

    Called on c_in(σ) x with the timestep c_noise = ln(σ)/4, where x = x_0 + σ ε is the
    variance-exploding sample: σ = exp(4 c_noise), x = sample · sqrt(σ² + σ_data²). The
    exact D(x; σ) = E[x_0 | x] is the denoiser's posterior mean at the variance-preserving
    level ᾱ = 1/(1 + σ²), x_t = sqrt(ᾱ) x, and F solves eq. 7, D = c_skip x + c_out F:

        F = (D - c_skip x) / c_out,  c_skip = σ_data²/(σ² + σ_data²),
        c_out = σ σ_data / sqrt(σ² + σ_data²)  (negated for ``angular_velocity``).
    """

    def __init__(self, denoiser: Any, sigma_data: float, prediction_type: str) -> None:
        self.denoiser = denoiser
        self.sigma_data = float(sigma_data)
        self.prediction_type = prediction_type

    def __call__(self, sample: Any, timestep: Any) -> Any:
        import array_api_compat

        xp = array_api_compat.array_namespace(sample)
        sigma = xp.exp(4 * _scalar_like(xp, timestep, sample))
        s2, d2 = sigma * sigma, self.sigma_data**2
        x = sample * xp.sqrt(s2 + d2)  # the variance-exploding sample x_0 + σ ε
        alpha_bar = 1 / (1 + s2)
        denoised = self.denoiser.posterior_mean(x * xp.sqrt(alpha_bar), alpha_bar)
        c_out = sigma * self.sigma_data / xp.sqrt(s2 + d2)
        if self.prediction_type == "angular_velocity":
            c_out = -c_out
        return (denoised - d2 / (s2 + d2) * x) / c_out


class CosineExactModel:
    """The exact v-prediction model at continuous time t in (0, 1] of the cosine schedule
    a = cos(πt/2), b = sin(πt/2) (ᾱ = a²): the model :class:`~diffsched.IPNDM` calls.

    With x̂_0 = E[x_0 | x_t] at ᾱ = a², ε̂ = (x_t - a x̂_0)/b and v = a ε̂ - b x̂_0
    (Salimans & Ho 2022), so v = (a x_t - x̂_0)/b. At t = 1 (pure noise, ᾱ = 0) x̂_0 is
    the data mean and v = -x̂_0: the exact model is defined there.
    """

    def __init__(self, denoiser: Any) -> None:
        self.denoiser = denoiser

    def __call__(self, sample: Any, timestep: Any) -> Any:
        import array_api_compat

        xp = array_api_compat.array_namespace(sample)
        angle = (math.pi / 2) * _scalar_like(xp, timestep, sample)
        a, b = xp.cos(angle), xp.sin(angle)
        alpha_bar = xp.clip(a * a, 0.0, 1.0 - 1e-12) if hasattr(xp, "clip") else a * a
        return (a * sample - self.denoiser.posterior_mean(sample, alpha_bar)) / b


def exact_model(scheduler: Scheduler, model_name: str):
    """The exact model the scheduler's loop calls: the denoiser in its prediction type at
    the training steps of its betas, EDM's network F, iPNDM's continuous-time v model, or
    the rectified-flow form (t = σ T)."""
    kwargs, data = model_kwargs(model_name), data_name(model_name)
    if isinstance(scheduler, ComfySampler):
        return comfy_exact_model(scheduler, model_name)
    if is_flow(scheduler):
        return models.make_flow_model(data, scheduler.num_train_steps, **kwargs)
    if is_edm(scheduler):
        return EDMExactModel(models.make_denoiser(data, **kwargs), scheduler.sigma_data,
                             scheduler.prediction_type)  # fmt: skip
    if isinstance(scheduler, methods.IPNDM):
        return CosineExactModel(models.make_denoiser(data, **kwargs))
    if not scheduler.TRAINING_TIMESTEPS or getattr(scheduler, "use_flow_sigmas", False):
        raise UsageError(
            f"{type(scheduler).__name__} with these options calls the model at timesteps that "
            "are not training steps of its beta schedule; the exact models take those only"
        )
    return models.make_model(data, scheduler.alphas_cumprod, scheduler.prediction_type,
                             **kwargs)  # fmt: skip


# ComfyUI's discrete model samplings and the exact models' names for their outputs
COMFY_PREDICTIONS = {"eps": "noise", "v": "angular_velocity", "x0": "sample"}


def comfy_exact_model(scheduler: ComfySampler, model_name: str):
    """The exact network a ComfyUI sampler calls: on a discrete model sampling (eps, v,
    x0) the denoiser at ᾱ_t = 1/(1 + σ_t²) of its σ table, called on x / sqrt(σ² + 1) at
    the table index ComfyUI gives σ (the nearest in log σ, as ComfyUI calls its network:
    between table entries the σ the sample holds and the index's differ by at most half a
    table step); on a flow model sampling the rectified-flow model at t = σ · multiplier."""
    kwargs, data = model_kwargs(model_name), data_name(model_name)
    ms = scheduler.model_sampling
    if ms.kind in COMFY_PREDICTIONS:
        alphas_cumprod = 1.0 / (1.0 + ms.sigmas.astype(np.float64) ** 2)
        return models.make_model(data, alphas_cumprod, COMFY_PREDICTIONS[ms.kind],
                                 **kwargs)  # fmt: skip
    if ms.kind == "flow" and float(ms.multiplier).is_integer() and ms.multiplier >= 1:
        return models.make_flow_model(data, int(ms.multiplier), **kwargs)
    raise UsageError(
        f"{type(scheduler).__name__} on ComfyUI's {ms.kind!r} model sampling: the exact models "
        "take eps, v, x0 and flow (an integer multiplier) only"
    )


def exact_solution(
    scheduler: Scheduler,
    model,
    noise: np.ndarray,
    num_steps: int,
    end: str = "zero",
    **init_options: Any,
) -> tuple[np.ndarray | None, str]:
    """The probability-flow ODE solution from the scheduler's first to last noise level,
    from ``noise``, the loop's first model input. ``end="lowest"``: where the loop ends at
    σ = 0, the discrete limit instead (the ODE to the lowest trained level, then the jump
    to x̂_0 there; :func:`diffsched.tuning.reference_trajectory`), for the discrete-time
    classes only."""
    if end not in ("zero", "lowest"):
        raise ValueError(f"end must be 'zero' or 'lowest', got {end!r}")
    if not scheduler.deterministic:
        return None, "stochastic sampler: it does not follow the probability-flow ODE"
    if is_flow(scheduler):
        sigma_start, sigma_end = scheduler.noise_levels(num_steps, **init_options)
        from .methods.flow_match import is_flow_match

        if not is_flow_match(getattr(scheduler, "base_scheduler", scheduler)):
            # a solver on flow σ's (ds.tune's base for a flow table) gives its levels as
            # ᾱ = α² / (α² + σ²) with α = 1 - σ: σ = 1 / (1 + sqrt(ᾱ / (1 - ᾱ)))
            sigma_start, sigma_end = (_flow_sigma(a) for a in (sigma_start, sigma_end))
        return reference.solve_flow_ode(model.denoiser, noise, sigma_start, sigma_end), ""
    if isinstance(scheduler, ComfySampler) and scheduler.model_sampling.flow:
        # ComfyUI's flow loop: x = (1 - σ) x_0 + σ ε from σ_0, its result x / (1 - σ_last)
        sig = scheduler.sigmas(num_steps, **init_options)
        flow = reference.solve_flow_ode(model.denoiser, noise, float(sig[0]), float(sig[-1]))
        return flow / (1.0 - float(sig[-1])), ""
    start, last = scheduler.noise_levels(num_steps, **init_options)
    if not 0.0 <= start < 1.0:
        return None, f"the first noise level has ᾱ = {start:g}; the reference needs 0 <= ᾱ < 1"
    if start > last:
        return None, "the loop goes up in noise (an inversion); the reference goes down"
    if is_edm(scheduler):  # the model input c_in x at σ_0 as x_t = sqrt(ᾱ) x (variance preserving)
        d2 = scheduler.sigma_data**2
        noise = noise * math.sqrt(((1 - start) / start + d2) * start)
    lowest = None
    if end == "lowest" and last == 1.0:  # the jump to x̂_0 at the lowest trained level
        trained = getattr(scheduler, "alphas_cumprod", None)
        if trained is None or is_edm(scheduler):
            return None, "end='lowest' needs a discrete-time schedule (trained levels)"
        lowest = float(np.asarray(trained, np.float64)[0])
        if not start <= lowest < 1.0:
            return None, f"the lowest trained level (ᾱ = {lowest:g}) is not below the start"
    # many runs (bench rows, tuned grids) share a start: their exact solution is solved once
    key = (repr(model.denoiser), hashlib.sha1(np.ascontiguousarray(noise).tobytes()).hexdigest(),
           start, last, lowest)  # fmt: skip
    if key not in _EXACT:
        if len(_EXACT) >= 64:
            _EXACT.pop(next(iter(_EXACT)))
        if lowest is None:
            _EXACT[key] = solve_vp(model.denoiser, noise, start, last)
        else:
            x = solve_vp(model.denoiser, noise, start, lowest)
            _EXACT[key] = np.asarray(model.denoiser.posterior_mean(x, lowest), np.float64)
    exact = _EXACT[key].copy()
    if is_edm(scheduler) and last < 1.0:  # EDM's last sample is x = x_t / sqrt(ᾱ)
        exact /= math.sqrt(last)
    return exact, ""


def solve_vp(denoiser: Any, x_start: np.ndarray, start: float, end: float) -> np.ndarray:
    """The probability-flow ODE solution of a variance-preserving sample from ᾱ = ``start``
    to ``end``. From pure noise (ᾱ = 0, where the variance-exploding form of
    :func:`~diffsched.exact.reference.solve_pf_ode` is infinite) the same ODE is solved in
    its rectified-flow form, which starts at σ = 1 from the same sample: x = (1 - s) x̃ at
    the level s = σ/(1 + σ), σ = sqrt((1 - ᾱ)/ᾱ) (x̃ = x_t / sqrt(ᾱ))."""
    if start > 0.0:
        return reference.solve_pf_ode(denoiser, x_start, start, end)
    if end == 1.0:
        return reference.solve_flow_ode(denoiser, x_start, 1.0, 0.0)
    sigma = math.sqrt((1 - end) / end)
    level = sigma / (1 + sigma)
    flow = reference.solve_flow_ode(denoiser, x_start, 1.0, level)
    return flow / (1 - level) * math.sqrt(end)


_EXACT: dict = {}


def run(
    scheduler: Scheduler,
    model_name: str,
    num_steps: int,
    noise: np.ndarray,
    *,
    backend: str = "numpy",
    dtype: str = "float64",
    seed: int = 0,
    compile: bool = False,
    progress: bool = False,
    with_exact: bool = True,
    strength: float | None = None,
    grid: dict | None = None,
    end: str = "zero",
) -> Run:
    """Our loop on an exact model from ``noise``, and the exact ODE solution from the same
    start. ``grid``: a custom grid (``init``'s ``sigmas=`` / ``timesteps=``), which sets
    the number of steps; ``end``: as :func:`exact_solution`'s."""
    model = exact_model(scheduler, model_name)
    init_options = {} if strength is None else {"strength": strength}
    if grid:
        init_options.update(grid)
        num_steps = None
    state, timesteps = scheduler.init(num_steps, noise, seed, **init_options)
    if strength is None:
        start = noise * scheduler.init_noise_scale(num_steps, **init_options)
    else:  # image-to-image: data of the model, noised to the first model call
        start = np.asarray(scheduler.add_noise(state, clean_data(model_name, noise), noise))
    x = to_backend(start, backend, dtype)
    t0 = time.perf_counter()
    # x is the first model input already: no init_noise_scale, no second add_noise
    out = _loop(model, scheduler, x, num_steps, seed, progress, compile, init_options)
    out = to_numpy64(out)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    if with_exact and progress:
        print("solving the exact ODE reference...", file=sys.stderr, flush=True)
    exact, note = (
        exact_solution(scheduler, model, start, num_steps, end, **init_options)
        if with_exact
        else (None, "")
    )
    reference = time.perf_counter() - t0
    return Run(out, noise, int(timesteps.shape[0]), seconds, exact, note, reference)


def _loop(model, scheduler, x, num_steps, seed, progress, compile, init_options):
    """ds.sample from a first model input already formed (noise scaled, or img2img)."""
    scale = scheduler.init_noise_scale(num_steps, **init_options)
    return sample(model, scheduler, x / scale if scale != 1.0 else x, num_steps, seed,
                  progress=progress, compile=compile, **init_options)  # fmt: skip


def clean_data(model_name: str, noise: np.ndarray) -> np.ndarray:
    """Clean samples of the model's data, one per noise sample (the start of img2img)."""
    rng = np.random.default_rng(12345)
    if model_name == "digits":
        data = models.digits_data()
        rows = data[rng.integers(0, data.shape[0], noise.shape[0])]
        return rows.reshape(noise.shape)
    return models.make_denoiser("gmm", **model_kwargs(model_name)).sample(noise.shape[0], rng)


# -- pictures -------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_samples(path: Path, model_name: str, samples: np.ndarray, exact, title: str,
                 exact_label: str = "exact ODE solution") -> None:  # fmt: skip
    """Digits as an image grid; Gaussian-mixture samples as a scatter of the first two
    coordinates, over draws from the mixture, with the exact solutions (``exact_label``)
    marked."""
    plt = _pyplot()
    if model_name == "digits":
        n = samples.shape[0]
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        grid = np.full((rows * 9 + 1, cols * 9 + 1), -1.0)  # white gaps between digits
        for i, img in enumerate(samples.reshape(n, 8, 8)):
            r, c = divmod(i, cols)
            grid[1 + 9 * r : 9 * r + 9, 1 + 9 * c : 9 * c + 9] = img
        fig, ax = plt.subplots(figsize=(cols * 0.6 + 0.4, rows * 0.6 + 0.8))
        ax.imshow(-grid, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_axis_off()
    else:
        fig, ax = plt.subplots(figsize=(5, 5))
        mixture = models.make_denoiser("gmm", **model_kwargs(model_name))
        data = mixture.sample(2000, np.random.default_rng(123))
        ax.scatter(data[:, 0], data[:, 1], s=3, c="0.8", label="data")
        if exact is not None:
            ax.scatter(exact[:, 0], exact[:, 1], s=40, facecolors="none", edgecolors="C3",
                       label=exact_label)  # fmt: skip
        ax.scatter(samples[:, 0], samples[:, 1], s=8, c="C0", label="samples")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def matplotlib_ticker():
    import matplotlib.ticker

    return matplotlib.ticker


def model_panels(count: int, width: float, height: float) -> tuple[Any, Any]:
    """(figure, axes) of ``count`` panels side by side, each ``width`` by ``height`` inches;
    ``axes[0][k]`` is panel k."""
    return _pyplot().subplots(1, count, figsize=(width * count, height), squeeze=False)


def save_with_legend(fig: Any, path: Path, handles: dict, ncol: int, per_row: int,
                     band: float) -> None:  # fmt: skip
    """``fig`` with one shared legend of ``handles`` below its panels (``ncol`` columns, a
    band of ``band`` of the height per ``per_row`` entries), written to ``path``, closed."""
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol,
               fontsize=8, frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, band * math.ceil(len(handles) / per_row), 1, 1))
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def calls_axis(ax: Any, rows: list[dict], marks: tuple[int, ...], ylabel: str,
               title: str) -> None:  # fmt: skip
    """A log-log panel against model calls: ticks at the ``marks`` some row reaches, the
    labels, the title and a major grid."""
    ticks = [c for c in marks if any(r["calls"] is not None and r["calls"] >= c for r in rows)]
    ax.set_xticks(ticks, [str(c) for c in ticks])
    ax.xaxis.set_minor_formatter(matplotlib_ticker().NullFormatter())
    ax.set_xlabel("model calls")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)


def plot_bench(path: Path, rows: list[dict]) -> None:
    """Error against model calls, log-log, one panel per model, one line per scheduler;
    diffusers' errors as open circles in the series' colour; one shared legend below."""
    model_names = sorted({r["model"] for r in rows})
    labels = list(dict.fromkeys(r["scheduler"] for r in rows))
    fig, axes = model_panels(len(model_names), 6, 4.6)
    cmap = _pyplot().get_cmap("tab20")
    handles = {}
    for ax, model_name in zip(axes[0], model_names, strict=True):
        for k, label in enumerate(labels):
            color = cmap(k % 20)
            pts = [r for r in rows if r["model"] == model_name and r["scheduler"] == label]
            pts = [r for r in pts if r["error"] is not None and r["error"] > 0]
            if not pts:
                continue
            calls, errors = [r["calls"] for r in pts], [r["error"] for r in pts]
            marker = "os^vD<>ph*"[k % 10]
            (line,) = ax.loglog(calls, errors, "-", marker=marker, ms=4, color=color)
            handles[label] = line
            peer = [r for r in pts if r.get("diffusers_error")]
            if peer:
                ax.loglog([r["calls"] for r in peer], [r["diffusers_error"] for r in peer],
                          "o", ms=9, mfc="none", mec=color, alpha=0.6)  # fmt: skip
        calls_axis(ax, rows, (5, 10, 20, 50, 100), "relative RMS error vs exact ODE solution",
                   model_name)  # fmt: skip
    if any(r.get("diffusers_error") for r in rows):
        (ring,) = axes[0][0].plot([], [], "o", ms=9, mfc="none", mec="0.3")
        handles["diffusers, same config (open circles)"] = ring
    save_with_legend(fig, path, handles, min(4, len(handles)), 4, 0.06)


# -- commands ----------------------------------------------------------------------------


def check_out(path_text: str, flag: str = "--out", suffix: str = ".png") -> Path:
    """The file to write: a ``suffix`` name in an existing folder, or a UsageError (no
    command creates folders)."""
    out = Path(path_text)
    if out.suffix.lower() != suffix:
        raise UsageError(f"{flag} must name a {suffix} file, got: {path_text!r}")
    if not out.parent.is_dir():
        raise UsageError(f"{flag}: the folder {str(out.parent)!r} does not exist; create it first")
    if out.is_dir():
        raise UsageError(f"{flag}: {path_text!r} is a folder, not a {suffix} file")
    try:  # a command may run for minutes before it writes: a folder it cannot write in is
        with tempfile.TemporaryFile(dir=out.parent):  # refused now, not then
            pass
    except OSError as err:
        raise UsageError(f"{flag}: cannot write in {str(out.parent)!r}: {err.strerror}") from None
    return out


def check_backend(backend: str, compile: bool) -> None:
    if compile and backend != "jax":
        raise UsageError(f"--compile needs --backend jax (it runs the loop as one JAX "
                         f"jit-compiled fori_loop), got --backend {backend}")  # fmt: skip
    module = {"torch": "torch", "jax": "jax"}.get(backend)
    if module is not None:
        try:
            __import__(module)
        except ImportError:
            raise UsageError(
                f"--backend {backend} needs {module} installed: pip install "
                + ("torch==2.13.0" if module == "torch" else "jax")
            ) from None


# The most a flag takes: a batch is held whole in memory (10^9 samples asked for 477 GiB),
# and seeds are 32-bit with room for the offsets that derive held-out noise from them.
AT_MOST = {"--num-samples": 100_000, "--calibration": 100_000, "--held-out": 100_000,
           "--seed": 2**31 - 1, "--steps": ops.MAX_STEPS, "--calls": ops.MAX_STEPS}  # fmt: skip


def check_at_least(pairs: Sequence[tuple[str, Any, int]]) -> None:
    """``(flag, value, least)`` triples: a UsageError naming the first flag below its least
    value or above its most (:data:`AT_MOST`; a list value: each entry)."""
    for flag, value, low in pairs:
        for v in value if isinstance(value, list | tuple) else [value]:
            if v < low:
                raise UsageError(f"{flag} must be at least {low}, got: {v}")
            if flag in AT_MOST and v > AT_MOST[flag]:
                raise UsageError(f"{flag} must be at most {AT_MOST[flag]}, got: {v}")


def check_loop(scheduler: Scheduler, num_steps: int | None, init_options: dict,
               flags: str) -> None:  # fmt: skip
    """The scheduler's loop for these steps and init options, built once before anything
    runs: a config that cannot make it (too few steps, a grid it does not take, a strength
    out of range) is a UsageError naming ``flags``."""
    try:
        scheduler.program(num_steps, **init_options)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{flags}: {err}") from None


def scheduler_name(args: argparse.Namespace, default: str | None) -> str | None:
    """The scheduler named by the positional argument or ``--scheduler`` (not two names),
    else ``default`` unless ``--config`` is given."""
    given = [n.lower() for n in (args.scheduler, args.scheduler_flag) if n]
    if len(set(given)) > 1:
        raise UsageError(f"two schedulers named: {args.scheduler!r} and --scheduler "
                         f"{args.scheduler_flag!r}; give one")  # fmt: skip
    name = args.scheduler_flag or args.scheduler
    return name if name or args.config is not None else default


def inverse_refusal(name: str) -> str:
    return (f"{name} is an inverse scheduler (data to noise): it has no error against the "
            f"exact solution from noise; 'diffsched sample {name}' inverts data, regenerates "
            "it and reports the reconstruction error")  # fmt: skip


COMFY_TUNE_REFUSAL = (
    "a ComfyUI sampler runs the σ list of a ComfyUI schedule (-o scheduler=NAME), not a grid "
    "of training steps the tuner can search; tune one of diffsched's own schedulers"
)


def tune_refusal(scheduler: Scheduler, num_steps: int = 6, tune: str = "grid") -> str | None:
    """Why ``tune --tune {tune}`` cannot take this scheduler config (None if it can). A
    scheduler without a custom grid (DDIM, DEIS, LMS, PNDM) takes ``coefficients`` and
    ``both``, which tune one of its bases in its place (:func:`diffsched.tune`)."""
    from .grids import Grid
    from .tuning import FlowGrid, candidate_bases, stand_in

    if isinstance(scheduler, ComfySampler):
        return COMFY_TUNE_REFUSAL
    if is_inverse(scheduler):
        return "an inverse scheduler (data to noise): there is no sampling error to tune"
    if is_flow(scheduler):  # rectified-flow grids: custom sigmas= at a static shift
        if getattr(scheduler, "use_dynamic_shifting", False):
            return ("a dynamic shift needs the resolution's μ, which the exact models do not "
                    "have: use ds.tune(model, scheduler, num_steps, noise, mu=...)")  # fmt: skip
        try:
            FlowGrid.of(scheduler, num_steps)
        except (TypeError, ValueError) as err:
            return str(err)
        return None
    try:
        Grid.of(scheduler, num_steps)
    except TypeError as err:
        try:
            stand_in(scheduler, num_steps, candidate_bases(scheduler))
        except (TypeError, ValueError):
            return str(err)
        if tune == "grid":
            return f"{err} (--tune coefficients or both tune one of its bases in its place)"
    except ValueError as err:
        return str(err)
    return None


def commands_of(name: str) -> dict[str, str | None]:
    """For `diffsched list`: each command and why it does not take the scheduler ``name``
    (None where it does), with the scheduler's default options."""
    scheduler = SCHEDULERS[name]()
    return {
        "sample": None,
        "bench": inverse_refusal(name) if is_inverse(scheduler) else None,
        "tune": tune_refusal(scheduler),
    }


def forward_of(scheduler: Scheduler) -> Scheduler:
    """The forward method of an inverse scheduler, from the same config."""
    cls = methods.DDIM if isinstance(scheduler, methods.DDIMInverse) else methods.DPMSolverMultistep
    return cls.from_config(scheduler.to_config())


@dataclasses.dataclass
class RoundTrip:
    """Data inverted to noise by an inverse scheduler and regenerated by its forward
    method, from the same config and steps."""

    data: np.ndarray
    latent: np.ndarray
    reconstruction: np.ndarray
    model_calls: int  # both loops
    seconds: float
    forward: Scheduler

    @property
    def error(self) -> float:
        """Relative RMS reconstruction error ||x_rec - x_data|| / ||x_data||."""
        return relative_error(self.reconstruction, self.data)


def round_trip(scheduler: Scheduler, model_name: str, num_steps: int, noise: np.ndarray, *,
               backend: str = "numpy", dtype: str = "float64", seed: int = 0,
               progress: bool = False, compile: bool = False) -> RoundTrip:  # fmt: skip
    """Invert data of the model (one sample per row of ``noise``) with the inverse
    scheduler, then regenerate it with the forward method; the exact model throughout."""
    data = clean_data(model_name, noise)
    forward = forward_of(scheduler)
    calls = sum(int(s.program(num_steps).timesteps.shape[0]) for s in (scheduler, forward))
    t0 = time.perf_counter()
    x = to_backend(data, backend, dtype)
    latent = _loop(exact_model(scheduler, model_name), scheduler, x, num_steps, seed, progress,
                   compile, {})  # fmt: skip
    rec = _loop(exact_model(forward, model_name), forward, latent, num_steps, seed, progress,
                compile, {})  # fmt: skip
    rec = to_numpy64(rec)
    return RoundTrip(data, to_numpy64(latent), rec, calls, time.perf_counter() - t0, forward)


def cmd_sample(args: argparse.Namespace) -> int:
    check_at_least([("--num-samples", args.num_samples, 1), ("--steps", args.steps, 1),
                    ("--seed", args.seed, 0)])  # fmt: skip
    out = check_out(args.out)
    check_backend(args.backend, args.compile)
    options = parse_options(args.option)
    name = scheduler_name(args, "ddim")
    scheduler = build_scheduler(name, options, args.config)
    if args.config is None:  # a model's config is taken as it is
        scheduler, note = adapt_to_model(scheduler, args.model, options)
        if note:
            print(note)
    if isinstance(scheduler, ComfySampler):
        check_comfy_sample(name, args)
    grid = resolve_grid(args.grid, scheduler, args.steps)
    steps = args.steps if grid is None else grid_steps(grid)
    init_options = dict(grid or {})
    if args.strength is not None:
        init_options["strength"] = args.strength
    flags = "--steps" + " --strength" * (args.strength is not None) + " --grid" * bool(grid)
    check_loop(scheduler, None if grid else steps, init_options, flags)
    if is_inverse(scheduler):
        if grid or args.strength is not None:
            raise UsageError("an inverse scheduler takes no --grid or --strength")
        return sample_round_trip(args, scheduler, out)
    exact_model(scheduler, args.model)  # a UsageError where no exact model fits
    seed = args.seed
    tuned_file = args.config is not None and is_tuned_file(args.config)
    if tuned_file or (args.grid is not None and grid is not None and Path(args.grid).is_file()):
        # a tuned grid was fitted on the noise of its calibration seed: measure it elsewhere
        seed = args.seed + HELD_OUT_SEED
        print(f"noise: seed {seed} (--seed + {HELD_OUT_SEED}: held out from the calibration "
              f"noise of 'diffsched tune --seed {args.seed}')")  # fmt: skip
    noise = make_noise(args.model, args.num_samples, seed)
    result = run(
        scheduler, args.model, steps, noise, backend=args.backend, dtype=args.dtype,
        seed=args.seed, compile=args.compile,
        progress=not (args.no_progress or args.compile), strength=args.strength, grid=grid,
    )  # fmt: skip
    title = (f"{scheduler_label(scheduler, name)}, {steps} steps ({result.model_calls} model "
             f"calls), {args.model}")  # fmt: skip
    print(f"{title}, {args.num_samples} samples, {args.backend} {args.dtype}")
    print(f"model calls: {result.model_calls}")
    print(f"time: sampling {result.seconds:.3f} s (the scheduler and the model), exact ODE "
          f"reference {result.reference_seconds:.3f} s")  # fmt: skip
    if result.error is None:
        print(f"error vs exact solution: n/a ({result.note})")
    else:
        print(f"relative RMS error vs exact ODE solution: {result.error:.3e}")
        title += f", error {result.error:.2e}"
    t0 = time.perf_counter()
    plot_samples(out, args.model, result.samples, result.exact, title)
    print(f"wrote {out} ({time.perf_counter() - t0:.3f} s)")
    return 0


def check_comfy_sample(name: str, args: argparse.Namespace) -> None:
    """``sample`` with ComfyUI's sampler ``name``: the flags it cannot take are refused."""
    from .comfy import SCHEDULERS

    if args.grid is not None:
        raise UsageError(f"--grid is for diffsched's own schedulers; {name} runs the σ list of "
                         f"a ComfyUI schedule: -o scheduler=NAME, one of "
                         f"{', '.join(SCHEDULERS)}")  # fmt: skip
    if args.strength is not None:
        raise UsageError(f"--strength is diffusers' image-to-image; {name} (ComfyUI's KSampler) "
                         "takes a partial denoise instead, which sample does not run: use "
                         "ds.sample(model, sched, noise, steps, image=x0, denoise=d)")  # fmt: skip


def scheduler_label(scheduler: Scheduler, name: str | None) -> str:
    """The scheduler's class for the output, with a ComfyUI sampler's name, schedule and
    model sampling."""
    label = type(scheduler).__name__
    if isinstance(scheduler, ComfySampler) and name is not None:
        label += (f" ({name.strip().lower()}, scheduler={scheduler.scheduler}, "
                  f"model={scheduler.model})")  # fmt: skip
    return label


def sample_round_trip(args: argparse.Namespace, scheduler: Scheduler, out: Path) -> int:
    """`sample` for an inverse scheduler: invert data, regenerate it, report the error."""
    noise = make_noise(args.model, args.num_samples, args.seed)  # its shape; data rows by seed
    trip = round_trip(scheduler, args.model, args.steps, noise, backend=args.backend,
                      dtype=args.dtype, seed=args.seed, compile=args.compile,
                      progress=not (args.no_progress or args.compile))  # fmt: skip
    name, forward = type(scheduler).__name__, type(trip.forward).__name__
    title = (f"{name} then {forward}, {args.steps} steps each ({trip.model_calls} model "
             f"calls), {args.model}")  # fmt: skip
    print(f"{title}, {args.num_samples} samples, {args.backend} {args.dtype}")
    print(f"round trip: data inverted to noise by {name}, regenerated by {forward} (same "
          "config and steps)")  # fmt: skip
    print(f"model calls: {trip.model_calls}")
    print(f"time: {trip.seconds:.3f} s (both loops)")
    print(f"latent: RMS {np.sqrt(np.mean(trip.latent**2)):.3f} (standard normal noise: 1)")
    print(f"relative RMS reconstruction error: {trip.error:.3e}")
    plot_samples(out, args.model, trip.reconstruction, trip.data,
                 f"{title}, reconstruction error {trip.error:.2e}", "data inverted")  # fmt: skip
    print(f"wrote {out}")
    return 0


def resolve_grid(text: str | None, scheduler: Scheduler, num_steps: int) -> dict | None:
    """``--grid``: a named grid (edm, logsnr, ays-sd15, ...) of ``num_steps`` steps, or a
    JSON file saved by ``diffsched tune --save`` (which sets the steps)."""
    if text is None:
        return None
    from .grids import NAMED_GRIDS, load_grid, named_grid

    try:
        if text in NAMED_GRIDS:
            return named_grid(text, scheduler, num_steps)
        if Path(text).is_file():
            return load_grid(text)
    except (ValueError, TypeError) as err:
        raise UsageError(f"--grid {text}: {err}") from None
    raise UsageError(
        f"--grid must be one of {', '.join(NAMED_GRIDS)} or a JSON file from "
        f"'diffsched tune --save', got: {text!r} (no such file)"
    )


def grid_steps(grid: dict) -> int:
    """The number of steps of a custom grid."""
    return len(grid["timesteps"]) if "timesteps" in grid else len(grid["sigmas"]) - 1


def same_image_fraction(samples: np.ndarray, exact: np.ndarray) -> float:
    """digits: the fraction of samples whose nearest training image is the exact
    solution's (the errors there are flips between training images)."""
    data = models.digits_data().reshape(-1, 64)

    def nearest(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1)
        d = (x**2).sum(1)[:, None] - 2 * x @ data.T + (data**2).sum(1)[None, :]
        return np.argmin(d, axis=1)

    return float(np.mean(nearest(samples) == nearest(exact)))


def cmd_tune(args: argparse.Namespace) -> int:
    from .tuning import search

    grid_only = args.tune == "grid" or (args.tune is None and args.pipeline is None)
    for flag, what in (("times", "model times"), ("sample_weights", "sample weights")):
        if getattr(args, flag) and grid_only:
            raise UsageError(f"--{flag.replace('_', '-')} tunes a table's {what}: it needs "
                             "--tune coefficients or --tune both")  # fmt: skip
    if args.pipeline is not None:
        return _tune_pipeline(args)
    if args.prompt or args.guidance_scale is not None:
        raise UsageError("--prompt and --guidance-scale are for --pipeline")
    args.tune = args.tune or "grid"
    args.model = args.model or "digits"
    args.held_out = 256 if args.held_out is None else args.held_out
    args.calibration = 256 if args.calibration is None else args.calibration
    check_at_least([("--steps", args.steps, 1), ("--calibration", args.calibration, 1),
                    ("--held-out", args.held_out, 1), ("--seed", args.seed, 0),
                    ("--max-evaluations", args.max_evaluations, 0)])  # fmt: skip
    if args.tune != "grid" and args.calibration < 4:
        raise UsageError(f"--tune {args.tune} needs --calibration 4 or more (each sample's "
                         f"fit is judged on the others), got {args.calibration}")  # fmt: skip
    out = None if args.save is None else check_out(args.save, "--save", ".json")
    name = scheduler_name(args, "dpm++2m")
    options = parse_options(args.option)
    scheduler = build_scheduler(name, options, args.config)
    if args.config is None:
        scheduler, note = adapt_to_model(scheduler, args.model, options)
        if note:
            print(note)
    check_loop(scheduler, args.steps, {}, "--steps")
    refusal = tune_refusal(scheduler, args.steps, args.tune)
    if refusal is not None:
        raise UsageError(f"{'--config ' + args.config if name is None else name}: {refusal}; "
                         f"tunable: {', '.join(_tunable())}")  # fmt: skip
    if args.end == "lowest" and is_flow(scheduler):  # (EDM is refused above: not tunable)
        raise UsageError(f"--end lowest is for discrete-time models (the jump to x̂_0 at the "
                         f"lowest trained level); {type(scheduler).__name__} has continuous "
                         f"levels")  # fmt: skip
    model = exact_model(scheduler, args.model)
    calibration = make_noise(args.model, args.calibration, args.seed)
    held_out = make_noise(args.model, args.held_out, args.seed + HELD_OUT_SEED)
    what = "" if args.tune == "grid" else f" ({args.tune})"
    print(f"tuning {type(scheduler).__name__}, {args.steps} steps{what}, on "
          f"{args.model}: calibration {args.calibration} samples (seed {args.seed}), held out "
          f"{args.held_out} (seed {args.seed + HELD_OUT_SEED})", flush=True)  # fmt: skip
    if args.tune != "grid":
        return _tune_table(args, scheduler, model, calibration, held_out, out, name)
    result = search(model, scheduler, args.steps, calibration,
                    max_evaluations=args.max_evaluations, end=args.end)  # fmt: skip
    ((kind, values),) = result.init_options.items()
    shown = values if kind == "timesteps" else [float(f"{v:.6g}") for v in values]
    print(f"tuned grid: {kind}={shown}")
    before = run(scheduler, args.model, args.steps, held_out, grid=result.start_options,
                 end=args.end)  # fmt: skip
    after = run(scheduler, args.model, args.steps, held_out, grid=result.init_options,
                end=args.end)  # fmt: skip
    print(f"| relative RMS error vs {_end_label(args.end)} | own grid | tuned grid |")
    print("|---|---:|---:|")
    print(f"| calibration noise | {result.start_error:.3e} | {result.error:.3e} |")
    print(f"| held-out noise | {before.error:.3e} | {after.error:.3e} |")
    if args.model == "digits":
        print(f"| held out: same training image as the exact solution | "
              f"{same_image_fraction(before.samples, before.exact):.0%} | "
              f"{same_image_fraction(after.samples, after.exact):.0%} |")  # fmt: skip
    print(f"model calls per sample: {after.model_calls}; tuner: {result.model_calls} model "
          f"calls on the calibration batch, {result.seconds:.1f} s")  # fmt: skip
    _print_confirmation(result.confirmation)
    if out is not None:
        from .grids import save_grid

        save_grid(out, result.init_options)
        how = f"--config {args.config}" if name is None else name
        print(f"wrote {out} (use: diffsched sample {how} --model {args.model} --grid {out} "
              f"--seed {args.seed}, which measures it on held-out noise, or "
              f"sched.init(None, x, **ds.load_grid('{out}')))")  # fmt: skip
    return 0


def _print_confirmation(check: dict | None) -> None:
    """The tuner's confirmation on the negated calibration noise, where it needed one."""
    if check is None:
        return
    kept = {"tuned": "kept", "grid alone": "refuted; its grid kept with the base's weights",
            None: "refuted: the untuned one returned"}[check["kept"]]  # fmt: skip
    print(f"the gain was weak on the calibration batch ({check['significance']:.1f} standard "
          f"errors); on the negated batch the tuned result does {check['tuned']:.3e} against "
          f"the untuned {check['base']:.3e} ({check['tuned significance']:+.1f} standard "
          f"errors: {kept})")  # fmt: skip


def _end_label(end: str) -> str:
    """What ``diffsched tune --end`` measures against, for its tables' header."""
    return "exact ODE solution" if end == "zero" else "discrete limit (ODE to ᾱ_0, jump to x̂_0)"


def _tune_table(args: argparse.Namespace, scheduler: Scheduler, model: Any,
                calibration: np.ndarray, held_out: np.ndarray, out: Path | None,
                name: str | None) -> int:  # fmt: skip
    """``tune --tune coefficients|both``: the tuned table (:class:`~diffsched.Tuned`),
    measured on held-out noise against the scheduler as it is, and saved for
    ``ds.load_tuned`` / ``diffsched sample --config``."""
    from .tuning import search_coefficients

    result = search_coefficients(model, scheduler, args.steps, calibration,
                                 grid=args.tune == "both", bases="auto",
                                 max_evaluations=args.max_evaluations, end=args.end,
                                 times=args.times, samples=args.sample_weights)  # fmt: skip
    tuned = result.scheduler
    base = tuned.base_scheduler
    order = getattr(base, "solver_order", None)
    grid = tuned.grid_options
    shown = "its own" if not grid else next(iter(grid.values()))
    if grid and "sigmas" in grid:
        shown = [float(f"{v:.6g}") for v in shown]
    print(
        f"tuned table: base {type(base).__name__}"
        + (f" (solver_order={order})" if order is not None else "")
        + f", grid {shown}, "
        + ("x̂_0 weights tuned" if tuned.weights is not None else "base weights kept")
        + (", sample weights tuned" if tuned.sample_weights is not None else "")
        + (
            f", model times {[float(f'{t:.6g}') for t in tuned.model_timesteps]}"
            if tuned.model_timesteps is not None
            else ""
        )
    )
    before = run(scheduler, args.model, args.steps, held_out, end=args.end)
    after = run(tuned, args.model, args.steps, held_out, end=args.end)
    print(f"| relative RMS error vs {_end_label(args.end)} | {type(scheduler).__name__} | tuned |")
    print("|---|---:|---:|")
    print(f"| held-out noise | {before.error:.3e} | {after.error:.3e} |")
    print(f"model calls per sample: {after.model_calls}; tuner: {result.model_calls} model "
          f"calls on the calibration batch ({result.model_calls / args.steps:.0f} × N), "
          f"{result.seconds:.1f} s")  # fmt: skip
    _print_confirmation(result.confirmation)
    if out is not None:
        from .tuning_coefficients import save_tuned

        save_tuned(out, tuned, model=args.model, calibration=args.calibration, seed=args.seed,
                   tune=args.tune, end=args.end, model_calls=result.model_calls)  # fmt: skip
        print(f"wrote {out} (use: diffsched sample --config {out} --model {args.model} "
              f"--steps {args.steps} --seed {args.seed}, which measures it on held-out noise, "
              f"or ds.load_tuned('{out}'))")  # fmt: skip
    return 0


def _tune_pipeline(args: argparse.Namespace) -> int:
    """``tune --pipeline DIR --prompt P ...``: the pipeline's own denoiser (UNet, prompts,
    guidance) tuned by :func:`diffsched.tuning_pipeline.tune`, written to ``--save`` for
    :func:`diffsched.tuning_pipeline.load`."""
    if not args.prompt:
        raise UsageError("--pipeline needs at least one --prompt")
    if args.save is None:
        raise UsageError("--pipeline needs --save (the tuned table's file)")
    if args.config is not None:
        raise UsageError("--pipeline brings its scheduler's config: give no --config")
    for flag, value in (("--model", args.model), ("--held-out", args.held_out)):
        if value is not None:  # the pipeline's UNet is the model; no exact solution to hold out
            raise UsageError(f"{flag} is for the exact models; --pipeline tunes its own UNet")
    args.tune = args.tune or "both"
    args.calibration = 16 if args.calibration is None else args.calibration
    guidance = 7.5 if args.guidance_scale is None else args.guidance_scale
    check_at_least([("--steps", args.steps, 1), ("--calibration", args.calibration, 1),
                    ("--seed", args.seed, 0),
                    ("--max-evaluations", args.max_evaluations, 0)])  # fmt: skip
    if args.tune != "grid" and args.calibration < 4:
        raise UsageError(f"--tune {args.tune} needs --calibration 4 or more, got "
                         f"{args.calibration}")  # fmt: skip
    out = check_out(args.save, "--save", ".json")
    name = scheduler_name(args, None)
    options = parse_options(args.option)
    cls = None  # the class named, built on the pipeline's config (None: its own, UniPC)
    if name is not None or options:
        cls = type(build_scheduler(name or "unipc", {}))
        if issubclass(cls, ComfySampler):
            raise UsageError(f"{name}: {COMFY_TUNE_REFUSAL}; tunable: {', '.join(_tunable())}")
    if not Path(args.pipeline).is_dir():
        raise UsageError(f"--pipeline: no such folder: {args.pipeline!r} (a pipeline saved by "
                         "save_pretrained)")  # fmt: skip
    try:
        import diffusers
    except ImportError as err:
        raise UsageError("--pipeline needs diffusers installed") from err
    from . import tuning_pipeline

    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(args.pipeline)
    except (OSError, ValueError, TypeError) as err:
        raise UsageError(f"--pipeline {args.pipeline}: {err}") from None
    pipe.set_progress_bar_config(disable=True)
    scheduler = None
    if cls is not None:
        try:
            scheduler = cls.from_config(dict(pipe.scheduler.config), **options)
        except (TypeError, ValueError) as err:
            raise UsageError(f"{name or 'unipc'} on the pipeline's config: {err}") from None
        refusal = tune_refusal(scheduler, args.steps, args.tune)
        if refusal is not None:
            raise UsageError(f"{name or 'unipc'}: {refusal}; tunable: {', '.join(_tunable())}")
    print(f"tuning {type(scheduler).__name__ if scheduler else 'UniPC'} for "
          f"{type(pipe).__name__}, {args.steps} steps ({args.tune}), on {args.calibration} "
          f"latents (seed {args.seed}), {len(args.prompt)} prompt(s), guidance {guidance}",
          flush=True)  # fmt: skip
    extra = {"times": True} if args.times else {}
    if args.sample_weights:
        extra["samples"] = True
    try:
        tuned = tuning_pipeline.tune(pipe, args.prompt, args.steps, scheduler=scheduler,
                                     calibration=args.calibration, guidance_scale=guidance,
                                     seed=args.seed, tune=args.tune, path=out,
                                     max_evaluations=args.max_evaluations,
                                     end=args.end, **extra)  # fmt: skip
    except ValueError as err:
        raise UsageError(str(err)) from None
    import json

    about = json.loads(out.read_text(encoding="utf-8"))["about"]
    what = "ODE solution" if args.end == "zero" else "discrete limit"
    print(f"| relative RMS error vs the reference {what} | base | tuned |")
    print("|---|---:|---:|")
    print(f"| calibration latents | {about['calibration_error_before']:.3e} | "
          f"{about['calibration_error']:.3e} |")  # fmt: skip
    print(f"tuner: {about['model_calls']} batched UNet calls "
          f"({about['model_calls'] / args.steps:.0f} × N), {about['seconds']:.1f} s; base "
          f"{type(tuned.base_scheduler).__name__}")  # fmt: skip
    _print_confirmation(about.get("negated_check"))
    print(f"wrote {out} (use: pipe.scheduler = diffsched.tuning_pipeline.load('{out}', pipe); "
          f"pipe(..., num_inference_steps={args.steps}))")  # fmt: skip
    return 0


HELD_OUT_SEED = 1000  # held-out noise: seed + this, never the calibration seed


class _NoBar:
    def update(self, *args: Any) -> None: ...
    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _bar(total: int, desc: str):
    """A progress bar on stderr for the slow commands (reference solves, bench rows); none
    when stderr is not a terminal or tqdm is missing."""
    if not sys.stderr.isatty():
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)


def bench_cells(specs: Sequence[str], values: Sequence[int], model_names: Sequence[str],
                num_samples: int, seed: int,
                desc: str) -> Iterator[tuple[str, np.ndarray, str, Scheduler, int]]:  # fmt: skip
    """Each cell of a bench grid, (model, its noise of ``seed``, scheduler label, the
    scheduler adapted to the model, value of ``values``), models outermost, with a progress
    bar ``desc`` over the cells."""
    bar = _bar(len(model_names) * len(specs) * len(values), desc)
    for model_name in model_names:
        noise = make_noise(model_name, num_samples, seed)
        for spec in specs:
            label, scheduler, options = parse_spec(spec)
            scheduler, _ = adapt_to_model(scheduler, model_name, options)
            for value in values:
                bar.set_postfix_str(f"{model_name} {label} {value}", refresh=False)
                bar.update()
                yield model_name, noise, label, scheduler, value
    bar.close()


def bench_rows(
    specs: Sequence[str],
    steps: Sequence[int],
    model_names: Sequence[str],
    num_samples: int,
    seed: int,
    against: str | None = None,
) -> list[dict]:
    """One row per (model, scheduler, steps): model calls and errors (ours, diffusers')."""
    rows = []
    cells = bench_cells(specs, steps, model_names, num_samples, seed, "bench rows")
    for model_name, noise, label, scheduler, n in cells:
        result = run(scheduler, model_name, n, noise, seed=seed)
        row = {"model": model_name, "scheduler": label, "steps": n,
               "calls": result.model_calls, "error": result.error,
               "note": result.note}  # fmt: skip
        if against == "diffusers" and result.exact is not None:
            row["diffusers_error"] = diffusers_error(scheduler, model_name, n, result)
        rows.append(row)
    return rows


def diffusers_error(scheduler: Scheduler, model_name: str, num_steps: int, ours: Run) -> float:
    """The same config, noise and model run through diffusers (float64 tables): its error."""
    import torch

    from .interop import peer as _diffusers

    model = exact_model(scheduler, model_name)
    _, out = _diffusers.run(scheduler.to_config(), model, torch.from_numpy(ours.noise), num_steps)
    out = out.double().numpy()
    return relative_error(out, ours.exact)


# bench --adaptive: the adaptive samplers on the exact models' flow form (ComfyUI's flow
# model sampling: t = 1000 σ, as the flow schedulers call make_flow_model's models), from the
# noise at σ = 1, over σ in [ADAPTIVE_SIGMA_MIN, 1]; label -> scheduler of rtol
ADAPTIVE_SIGMA_MIN = 1e-3
ADAPTIVE_RTOLS = (1e-1, 1e-2, 1e-3)
ADAPTIVE_MAX_CALLS = 10_000
ADAPTIVE_BENCH: dict[str, Any] = {
    "adaptive-rk": lambda r: methods.AdaptiveRK(model="flow", rtol=r, atol=r / 10),
    "adaptive-rk:solver=dopri5": lambda r: methods.AdaptiveRK(model="flow", solver="dopri5",
                                                              rtol=r, atol=r / 10),
    "dpm_adaptive (ends at σ=1e-3)": lambda r: methods.ComfyDPMAdaptive(model="flow", rtol=r,
                                                                        atol=r / 10),
}  # fmt: skip


def adaptive_rows(rtols: Sequence[float], model_names: Sequence[str], num_samples: int,
                  seed: int) -> list[dict]:  # fmt: skip
    """One row per (model, adaptive sampler, rtol): the model calls it spent and its error
    against the exact flow ODE solution at its end (σ = 0: AdaptiveRK's final step; σ_min
    for dpm_adaptive, which stops there), the same start noise as the fixed grids' rows."""
    rows = []
    sigmas = [1.0, ADAPTIVE_SIGMA_MIN, 0.0]
    for model_name in model_names:
        noise = make_noise(model_name, num_samples, seed)
        model = models.make_flow_model(data_name(model_name), 1000, **model_kwargs(model_name))
        exact = {end: reference.solve_flow_ode(model.denoiser, noise, 1.0, end)
                 for end in (0.0, ADAPTIVE_SIGMA_MIN)}  # fmt: skip
        for label, make in ADAPTIVE_BENCH.items():
            for rtol in rtols:
                sched = make(rtol)
                state, _ = sched.init(ADAPTIVE_MAX_CALLS, noise, sigmas=sigmas)
                x = noise
                while not sched.done(state):
                    state, x = sched.step(state, x, model(x, sched.next_timestep(state)))
                end = 0.0 if isinstance(sched, methods.AdaptiveRK) else ADAPTIVE_SIGMA_MIN
                rows.append({"model": model_name, "scheduler": label, "steps": f"rtol={rtol:g}",
                             "calls": int(sched.info(state)["calls"]),
                             "error": relative_error(x, exact[end]), "note": ""})  # fmt: skip
    return rows


# Errors below this are exact solutions up to the reference's resolution (DOP853 at rtol
# 1e-10) and the final rounding: their ratio (7e-11 against 1e-21, say) means nothing.
EXACT_FLOOR = 1e-9


def format_table(rows: list[dict]) -> str:
    with_peer = any("diffusers_error" in r for r in rows)
    head = "| model | scheduler | steps | model calls | rel. RMS error |"
    rule = "|---|---|---:|---:|---:|"
    if with_peer:
        head += " diffusers | ours/diffusers - 1 |"
        rule += "---:|---:|"
    lines = [head, rule]
    for r in rows:
        err = "n/a" if r["error"] is None else f"{r['error']:.3e}"
        line = f"| {r['model']} | {r['scheduler']} | {r['steps']} | {r['calls']} | {err} |"
        if with_peer:
            peer = r.get("diffusers_error")
            if peer is None or r["error"] is None:
                line += " n/a | n/a |"
            elif max(peer, r["error"]) < EXACT_FLOOR:  # both exact: a ratio of roundings
                floor = f"{EXACT_FLOOR:.0e}".replace("e-0", "e-")
                line += f" {peer:.3e} | both < {floor} |"
            else:
                line += f" {peer:.3e} | {r['error'] / peer - 1:+.1e} |"
        lines.append(line)
    return "\n".join(lines)


DEFAULT_STEPS = (5, 10, 20, 50)


def cmd_bench(args: argparse.Namespace) -> int:
    check_at_least([("--calibration", args.calibration, 1), ("--seed", args.seed, 0)])
    out = check_out(args.out)
    if args.stochastic:
        return cmd_bench_stochastic(args, out)
    if args.calls is not None:
        raise UsageError("--calls is for --stochastic (the ODE bench takes --steps)")
    args.schedulers = args.schedulers or list(DEFAULT_BENCH)
    budgets = args.steps or list(BEST_BUDGETS)  # --best: model-call budgets
    args.steps = args.steps or list(DEFAULT_STEPS)
    args.model = args.model or ["digits", "gmm"]
    args.num_samples = 32 if args.num_samples is None else args.num_samples
    check_at_least([("--num-samples", args.num_samples, 1), ("--steps", args.steps, 1)])
    for rtol in args.adaptive or ():
        if not (math.isfinite(rtol) and rtol > 0):  # (the samplers' own error: a traceback)
            raise UsageError(f"--adaptive takes positive tolerances (rtol), got {rtol:g}")
    if args.against is not None:
        try:
            import diffusers  # noqa: F401
        except ImportError as err:
            raise UsageError("--against diffusers needs diffusers installed") from err
    if args.tune is not None and not args.best:
        raise UsageError("--tune is for --best (the tune command tunes one scheduler)")
    if args.best:
        args.tune = args.tune or "both"
        if args.tune == "both" and args.calibration < 4:
            raise UsageError(f"--best --tune both needs --calibration 4 or more (a quarter is "
                             f"held out), got {args.calibration}")  # fmt: skip
        rows = best_rows(args.model, args.num_samples, args.seed,
                         calibration=args.calibration,
                         with_diffusers=args.against == "diffusers",
                         tune=args.tune, budgets=budgets)  # fmt: skip
        print(format_best(rows))
        tuned = [r["tuned"] for r in rows if r.get("tuned")]
        if tuned:
            calls = sum(t["tuner_calls"] for t in tuned) / len(tuned)
            secs = sum(t["tuner_seconds"] for t in tuned) / len(tuned)
            what = "grid" if args.tune == "grid" else "table (grid and coefficients)"
            print(f"tuner: {calls:.0f} model calls on the calibration batch of "
                  f"{args.calibration}, "
                  f"{secs:.1f} s, per tuned {what} on average")  # fmt: skip
        return 0
    for spec in args.schedulers:  # every spec and step count checked before anything runs
        _, scheduler, _ = parse_spec(spec)
        if is_inverse(scheduler):
            raise UsageError(f"--schedulers {spec}: {inverse_refusal(spec.partition(':')[0])}")
        for n in args.steps:
            check_loop(scheduler, n, {}, f"--schedulers {spec} --steps {n}")
        exact_model(scheduler, args.model[0])
    rows = bench_rows(args.schedulers, args.steps, args.model, args.num_samples, args.seed,
                      args.against)  # fmt: skip
    if args.adaptive is not None:  # the adaptive samplers beside the fixed grids
        rows += adaptive_rows(args.adaptive or ADAPTIVE_RTOLS, args.model, args.num_samples,
                              args.seed)  # fmt: skip
    table = format_table(rows)
    print(table)
    notes = sorted({f"{r['scheduler']}: {r['note']}" for r in rows if r["note"]})
    for note in notes:
        print(f"n/a: {note}")
    if any(r["error"] is None and "stochastic" in r["note"] for r in rows):
        print("(bench --stochastic measures stochastic samplers by their samples' moments)")
    if not any(r["error"] for r in rows):
        print(f"no plot: every row is n/a ({out} not written)")
        return 0
    plot_bench(out, rows)
    print(f"wrote {out}")
    return 0


# The deterministic candidates of `bench --best`: every deterministic method and σ grid
# diffusers has, on Stable Diffusion 1.5's training schedule, so that "model calls" is the
# budget. Each runs here and through diffusers (driven as its pipelines drive it).
BEST_SD = "beta_schedule=quadratic,beta_start=0.00085,beta_end=0.012"
SIGMA_OPTIONS = ("", ",use_karras_sigmas=true", ",use_exponential_sigmas=true",
                 ",use_beta_sigmas=true")  # fmt: skip
BEST_CANDIDATES = tuple(
    f"{name}:{BEST_SD}{extra}"
    for name, extras in {
        "ddim": ("", ",timestep_spacing=trailing"),
        "pndm": (",reduce_warmup=true",),
        "euler": (*SIGMA_OPTIONS, ",timestep_spacing=trailing"),
        "heun": SIGMA_OPTIONS,
        "dpm2": SIGMA_OPTIONS,
        "lms": SIGMA_OPTIONS,
        "dpm++2m": (*SIGMA_OPTIONS, ",timestep_spacing=trailing", ",solver_order=3",
                    ",use_lu_lambdas=true", ",use_karras_sigmas=true,solver_order=3"),
        "deis": ("", ",timestep_spacing=trailing", ",use_karras_sigmas=true"),
        "unipc": (*SIGMA_OPTIONS, ",timestep_spacing=trailing", ",solver_order=3",
                  ",use_karras_sigmas=true,solver_order=3"),
        "dpm++2s": ("", ",use_karras_sigmas=true"),
        "sa-solver": (",tau=0.0", ",tau=0.0,use_karras_sigmas=true"),
    }.items()
    for extra in extras
)  # fmt: skip
# Ours only: variable-step iPNDM on our grids, and named grids for the multistep solvers.
OURS_CANDIDATES = tuple(
    (f"{name}:{BEST_SD}{extra}", grid)
    for name, extras, grids in (
        ("ipndm-v", (*SIGMA_OPTIONS[:3], ",solver_order=3,use_karras_sigmas=true"), (None,)),
        ("ipndm-v", ("",), ("edm", "logsnr", "ays-sd15")),
        ("dpm++2m", ("",), ("edm", "logsnr", "ays-sd15")),
        ("unipc", ("", ",solver_order=3"), ("edm", "logsnr", "ays-sd15")),
    )
    for extra in extras
    for grid in grids
)  # fmt: skip
# The methods tuned by `bench --best`
TUNED = (f"ipndm-v:{BEST_SD}", f"unipc:{BEST_SD}", f"unipc:{BEST_SD},solver_order=3",
         f"dpm++2m:{BEST_SD}")  # fmt: skip
# The table tuned by `bench --best --tune both` (the other bases compete: candidate_bases)
TUNED_BOTH = (f"unipc:{BEST_SD}",)
BEST_BUDGETS = (5, 6, 8, 10, 15, 20)


# -- bench --stochastic: sample moments against the exact data moments ----------------------
#
# A stochastic sampler does not follow the probability-flow ODE, so no per-sample reference
# exists; what it should get right is the distribution. The exact models' data moments are
# known in closed form (the mixture's, or the empirical data's), so each row samples a batch
# and measures
#
#     mean error = |m̂ - m| / sqrt(tr Σ),    covariance error = ||Σ̂ - Σ||_F / ||Σ||_F,
#
# m̂, Σ̂ the batch's sample mean and (unbiased) covariance, m, Σ the data's. Both are zero
# only in the limit of infinite batches: the Monte-Carlo floor is the same two distances for
# batches of exact data samples of the same size (their average and 95th percentile over
# FLOOR_BATCHES batches), so a row at or below the floor's 95th percentile is as close as
# exact sampling would be at this batch size, and a row above it is a bias the batch
# resolves. The loop starts from the scheduler's own noise (N(0, init_noise_scale²), not the
# exact marginal at its first level): that mismatch, small where ᾱ at the first level is
# small, is part of what a row measures. Deterministic methods are measured the same way.

# SD1.5's training schedule for every row, as ComfyUI's default model sampling has it
DEFAULT_STOCHASTIC = (
    f"ddpm:{BEST_SD}",
    f"ddim:{BEST_SD},eta=1.0",
    f"euler-a:{BEST_SD}",
    f"dpm2-a:{BEST_SD}",
    f"dpmpp-sde:{BEST_SD}",
    f"dpm++2m:{BEST_SD},algorithm_type=sde-dpmsolver++",
    f"sa-solver:{BEST_SD}",
    "comfy-dpmpp_2m_sde:scheduler=karras",
    "comfy-dpmpp_3m_sde:scheduler=karras",
    "comfy-er_sde",
    "comfy-res_multistep_ancestral",
    "comfy-seeds_2",
    f"ddim:{BEST_SD}",
    f"dpm++2m:{BEST_SD}",
)  # fmt: skip
DEFAULT_CALLS = (5, 10, 20, 50, 200)
STOCHASTIC_SAMPLES = 8192  # samples per row: a floor of about 1% (it falls as 1/sqrt(n))
FLOOR_BATCHES = 256
FLOOR_SEED = 2000  # the exact data batches of the floor: seed + this


def data_moments(model_name: str) -> tuple[np.ndarray, np.ndarray]:
    """The exact data's mean (d,) and covariance (d, d) of the named model."""
    return models.make_denoiser(data_name(model_name), **model_kwargs(model_name)).moments()


def moment_distance(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[float, float]:
    """(|m̂ - m| / sqrt(tr Σ), ||Σ̂ - Σ||_F / ||Σ||_F) of a batch (B, ...) against the data's
    mean m and covariance Σ; Σ̂ is the unbiased sample covariance (B >= 2)."""
    x = np.asarray(samples, dtype=np.float64).reshape(samples.shape[0], -1)
    if x.shape[0] < 2:
        raise ValueError(f"samples must hold at least 2 samples, got {x.shape[0]}")
    m_hat = x.mean(axis=0)
    centred = x - m_hat
    cov_hat = centred.T @ centred / (x.shape[0] - 1)
    mean_err = float(np.linalg.norm(m_hat - mean) / math.sqrt(np.trace(cov)))
    return mean_err, float(np.linalg.norm(cov_hat - cov) / np.linalg.norm(cov))


def moment_floor(model_name: str, num_samples: int, seed: int,
                 batches: int = FLOOR_BATCHES) -> dict[str, tuple[float, float]]:  # fmt: skip
    """The Monte-Carlo floor: the (mean, covariance) distances of ``batches`` batches of
    ``num_samples`` exact data samples, their average ("average") and 95th percentile
    ("p95")."""
    denoiser = models.make_denoiser(data_name(model_name), **model_kwargs(model_name))
    mean, cov = denoiser.moments()
    rng = np.random.default_rng(seed + FLOOR_SEED)
    found = np.array([moment_distance(denoiser.sample(num_samples, rng), mean, cov)
                      for _ in range(batches)])  # fmt: skip
    return {"average": tuple(found.mean(axis=0)), "p95": tuple(np.percentile(found, 95, axis=0))}


def steps_within(scheduler: Scheduler, budget: int) -> int | None:
    """The most steps whose model calls fit ``budget`` (None: not even one step does)."""
    for n in range(budget, 0, -1):
        if _calls(scheduler, n) <= budget:
            return n
    return None


def stochastic_rows(
    specs: Sequence[str],
    budgets: Sequence[int],
    model_names: Sequence[str],
    num_samples: int,
    seed: int,
) -> tuple[list[dict], dict[str, dict]]:
    """One row per (model, scheduler, model-call budget): the steps that fit, their calls,
    and the moment distances of the batch sampled from noise of ``seed`` (the stochastic
    draws keyed by ``seed``); and per model the Monte-Carlo floor."""
    rows = []
    moments = {model_name: data_moments(model_name) for model_name in model_names}
    floors = {model_name: moment_floor(model_name, num_samples, seed)
              for model_name in model_names}  # fmt: skip
    cells = bench_cells(specs, budgets, model_names, num_samples, seed, "bench --stochastic rows")
    for model_name, noise, label, scheduler, budget in cells:
        row = {"model": model_name, "scheduler": label, "budget": budget,
               "steps": steps_within(scheduler, budget), "calls": None,
               "mean_error": None, "cov_error": None, "note": ""}  # fmt: skip
        if row["steps"] is None:
            row["note"] = f"no step fits in {budget} model calls"
        else:
            result = run(scheduler, model_name, row["steps"], noise, seed=seed,
                         with_exact=False)  # fmt: skip
            row["calls"] = result.model_calls
            row["mean_error"], row["cov_error"] = moment_distance(result.samples,
                                                                  *moments[model_name])  # fmt: skip
        rows.append(row)
    return rows, floors


def format_moments(rows: list[dict], floors: dict[str, dict], num_samples: int) -> str:
    """The ``bench --stochastic`` table: per model the floor's two rows, then one row per
    scheduler and budget; "within floor" says whether both distances are at or below the
    floor's 95th percentile."""
    lines = ["| model | scheduler | budget | steps | model calls | mean error | cov. error "
             "| within floor |", "|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for model_name, floor in floors.items():
        for key, what in (("average", "average"), ("p95", "95th percentile")):
            m, c = floor[key]
            lines.append(f"| {model_name} | floor: exact data, {what} of {FLOOR_BATCHES} "
                         f"batches | - | - | - | {m:.2e} | {c:.2e} | - |")  # fmt: skip
        for r in rows:
            if r["model"] != model_name:
                continue
            if r["steps"] is None:
                cells = "n/a | n/a | n/a | n/a | n/a"
            else:
                p95 = floor["p95"]
                within = r["mean_error"] <= p95[0] and r["cov_error"] <= p95[1]
                cells = (f"{r['steps']} | {r['calls']} | {r['mean_error']:.2e} | "
                         f"{r['cov_error']:.2e} | {'yes' if within else 'no'}")  # fmt: skip
            lines.append(f"| {model_name} | {_short(r['scheduler'])} | {r['budget']} | {cells} |")
    lines.append("")
    lines.append(f"{num_samples} samples per row. mean error = |m̂ - m| / sqrt(tr Σ), cov. "
                 "error = ||Σ̂ - Σ||_F / ||Σ||_F against the exact data moments; the floor is "
                 f"the same for {num_samples} exact data samples (what a perfect sampler "
                 "gets); SD1.5's betas where the spec says none.")  # fmt: skip
    return "\n".join(lines)


def plot_moments(path: Path, rows: list[dict], floors: dict[str, dict]) -> None:
    """Covariance error against model calls, log-log, one panel per model, one line per
    scheduler; the floor's average (dashed) and 95th percentile (dotted) in grey."""
    model_names = list(floors)
    labels = list(dict.fromkeys(r["scheduler"] for r in rows))
    fig, axes = model_panels(len(model_names), 8, 7)
    cmap = _pyplot().get_cmap("tab20")
    handles = {}
    for ax, model_name in zip(axes[0], model_names, strict=True):
        for k, label in enumerate(labels):
            pts = [r for r in rows if r["model"] == model_name and r["scheduler"] == label
                   and r["cov_error"] is not None]  # fmt: skip
            if not pts:
                continue
            (line,) = ax.loglog([r["calls"] for r in pts], [r["cov_error"] for r in pts], "-",
                                marker="os^vD<>ph*"[k % 10], ms=4,
                                color=cmap(k % 20))  # fmt: skip
            handles[_short(label)] = line
        floor = floors[model_name]
        avg = ax.axhline(floor["average"][1], color="0.4", ls="--", lw=1)
        p95 = ax.axhline(floor["p95"][1], color="0.4", ls=":", lw=1)
        handles["floor (exact data): average"] = avg
        handles["floor: 95th percentile"] = p95
        calls_axis(ax, rows, (5, 10, 20, 50, 100, 200, 500),
                   "covariance error ||Σ̂ - Σ||_F / ||Σ||_F",
                   f"{model_name}: sample covariance against the exact data's")  # fmt: skip
    columns = 2 * len(model_names)
    save_with_legend(fig, path, handles, columns, columns, 0.032)


def cmd_bench_stochastic(args: argparse.Namespace, out: Path) -> int:
    """``bench --stochastic``: every spec checked, then the rows, the table, the plot."""
    for flag, value in (("--against", args.against), ("--best", args.best or None),
                        ("--steps", args.steps), ("--tune", args.tune)):  # fmt: skip
        if value is not None:
            hint = " (give model-call budgets with --calls)" if flag == "--steps" else ""
            raise UsageError(f"{flag} is not for --stochastic{hint}")
    specs = args.schedulers or list(DEFAULT_STOCHASTIC)
    budgets = args.calls or list(DEFAULT_CALLS)
    model_names = args.model or ["gmm"]
    num_samples = STOCHASTIC_SAMPLES if args.num_samples is None else args.num_samples
    check_at_least([("--num-samples", num_samples, 2), ("--calls", budgets, 1)])
    for spec in specs:
        _, scheduler, _ = parse_spec(spec)
        if is_inverse(scheduler):
            raise UsageError(f"--schedulers {spec}: {inverse_refusal(spec.partition(':')[0])}")
        if steps_within(scheduler, max(budgets)) is None:
            raise UsageError(f"--schedulers {spec}: no step count fits in {max(budgets)} model "
                             "calls")  # fmt: skip
        for model_name in model_names:
            exact_model(scheduler, model_name)
    rows, floors = stochastic_rows(specs, budgets, model_names, num_samples, args.seed)
    print(format_moments(rows, floors, num_samples))
    plot_moments(out, rows, floors)
    print(f"wrote {out}")
    return 0


_steps_for = steps_within  # bench --best's name (benchmarks/tune_coefficients.py uses it)


def best_rows(
    model_names: Sequence[str],
    num_samples: int,
    seed: int,
    budgets: Sequence[int] = BEST_BUDGETS,
    calibration: int = 256,
    with_diffusers: bool = True,
    tune: str = "both",
) -> list[dict]:
    """Per model and model-call budget: our best tuned method, our best untuned method and
    grid, and diffusers' best configuration, all measured on held-out noise against the
    exact ODE solution. ``tune``: ``"both"`` (the default) tunes UniPC's table, grid and
    coefficients, the other bases competing (:func:`diffsched.tuning.search_coefficients`);
    ``"grid"`` the grids of the methods in ``TUNED`` (:func:`diffsched.tuning.search`)."""
    from .grids import named_grid
    from .tuning import search, search_coefficients

    if tune not in ("grid", "both"):
        raise ValueError(f"tune must be 'grid' or 'both', got {tune!r}")
    tuned_specs = TUNED if tune == "grid" else TUNED_BOTH
    out = []
    total = len(model_names) * len(budgets) * (len(BEST_CANDIDATES) + len(OURS_CANDIDATES)
                                               + len(tuned_specs))  # fmt: skip
    bar = _bar(total, "bench --best")
    for model_name in model_names:
        cal = make_noise(model_name, calibration, seed)
        held = make_noise(model_name, num_samples, seed + HELD_OUT_SEED)
        for budget in budgets:
            found: dict[str, list] = {"diffusers": [], "untuned": [], "tuned": []}

            def measure(*args: Any, found=found, model_name=model_name, held=held, **kw: Any):
                _measure(found, model_name, held, *args, **kw)

            for spec in BEST_CANDIDATES:
                bar.update()
                _, sched, options = parse_spec(spec)
                sched, _ = adapt_to_model(sched, model_name, options)
                steps = _steps_for(sched, budget)
                if steps is not None:
                    measure("untuned", spec, sched, steps, peer=with_diffusers)
            for spec, grid_name in OURS_CANDIDATES:
                bar.update()
                _, sched, _ = parse_spec(spec)
                try:
                    grid = None if grid_name is None else named_grid(grid_name, sched, budget)
                except ValueError:
                    continue
                measure("untuned", f"{spec}" + (f" --grid {grid_name}" if grid_name else ""),
                        sched, budget, grid)  # fmt: skip
            for spec in tuned_specs:
                bar.update()
                _, sched, _ = parse_spec(spec)
                model = exact_model(sched, model_name)
                t0 = time.perf_counter()
                if tune == "grid":
                    result = search(model, sched, budget, cal)
                    measure("tuned", spec, sched, budget, result.init_options)
                else:
                    result = search_coefficients(model, sched, budget, cal)
                    table = result.scheduler
                    base = table.base_scheduler
                    label = (
                        f"tuned {type(base).__name__} {getattr(base, 'solver_order', '')}".strip()
                        + (" + weights" if table.weights is not None else "")
                        + (" + samples" if table.sample_weights is not None else "")
                        + (" + times" if table.model_timesteps is not None else "")
                    )
                    measure("tuned", label, table, budget)
                found["tuned"][-1] |= {"tuner_calls": result.model_calls,
                                       "tuner_seconds": time.perf_counter() - t0}  # fmt: skip
            row = {"model": model_name, "budget": budget}
            for kind, rows in found.items():
                if rows:
                    row[kind] = min(rows, key=lambda r: r["error"])
            out.append(row)
    bar.close()
    return out


def _measure(found: dict, model_name: str, held: np.ndarray, kind: str, spec: str,
             sched: Scheduler, steps: int, grid: dict | None = None,
             peer: bool = False) -> None:  # fmt: skip
    """One candidate of ``bench --best`` on the held-out noise: ours (and diffusers')."""
    result = run(sched, model_name, steps, held, grid=grid)
    if result.error is None:
        return
    row = {"spec": spec, "grid": grid, "steps": steps, "calls": result.model_calls,
           "error": result.error}  # fmt: skip
    if model_name == "digits":
        row["same"] = same_image_fraction(result.samples, result.exact)
    found[kind].append(row)
    if peer:
        import torch

        from .interop import peer as _diffusers

        model = exact_model(sched, model_name)
        _, theirs = _diffusers.run(sched.to_config(), model, torch.from_numpy(held), steps)
        theirs = theirs.double().numpy()
        err = relative_error(theirs, result.exact)
        peer_row = {**row, "error": err}
        if model_name == "digits":
            peer_row["same"] = same_image_fraction(theirs, result.exact)
        found["diffusers"].append(peer_row)


def _calls(scheduler: Scheduler, num_steps: int) -> int:
    try:
        return scheduler.program(num_steps).num_calls
    except ValueError:
        return 10**9


def _short(spec: str) -> str:
    return spec.replace(f":{BEST_SD},", ": ").replace(f":{BEST_SD}", "").replace(",", ", ")


def format_best(rows: list[dict]) -> str:
    """The ``bench --best`` table: errors on held-out noise (and, for digits, the fraction
    of samples that end on the exact solution's training image)."""
    lines = [
        "| model | budget | ours tuned | error | ours untuned | error | diffusers' best | error "
        "| tuned / diffusers |",
        "|---|---:|---|---:|---|---:|---|---:|---:|",
    ]
    for r in rows:
        cells = []
        for kind in ("tuned", "untuned", "diffusers"):
            best = r.get(kind)
            if best is None:
                cells += ["n/a", "n/a"]
                continue
            err = f"{best['error']:.2e}"
            if "same" in best:
                err += f" ({best['same']:.0%})"
            cells += [f"{_short(best['spec'])} ({best['steps']} steps)", err]
        ratio = "n/a"
        if r.get("tuned") and r.get("diffusers"):
            ratio = f"{r['tuned']['error'] / r['diffusers']['error']:.2g}"
        lines.append(f"| {r['model']} | {r['budget']} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    del args
    from .core.options import STEP_TIME, specs

    for name, cls in SCHEDULERS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name}: {cls.__name__} — {doc} (diffusers: {cls.DIFFUSERS_CLASS or 'none'})")
        refusals = commands_of(name)
        print(f"    commands: {', '.join(c for c, why in refusals.items() if why is None)}")
        for command, why in refusals.items():
            if why is not None:
                print(f"    not in {command}: {why}")
        for field, (default, spec) in specs(cls).items():
            key = spec.diffusers_key
            where = "passed to diffusers' step" if key == STEP_TIME else key or "ours only"
            allowed = ""
            if field == "prediction_type":
                allowed = f"; one of {cls.PREDICTION_TYPES}"
            elif spec.choices:
                allowed = f"; one of {spec.choices}"
            print(f"    {field} = {default!r}  [{where}]{allowed}")
    for line in comfy_listing():
        print(line)
    return 0


def comfy_listing() -> list[str]:
    """For `diffsched list`: ComfyUI's samplers as ``comfy-NAME: Class`` (the class
    :func:`diffsched.from_comfy` builds for the name), after a line on their options with
    the schedules and model samplings."""
    from .comfy import SAMPLERS, SCHEDULERS, from_comfy
    from .methods._comfy import MODELS

    defaults = comfy_defaults()
    exact = [m for m in MODELS if m in COMFY_PREDICTIONS or m == "flow"]
    lines = [
        f"{COMFY_PREFIX}SAMPLER: ComfyUI's KSampler sampler by name (ds.from_comfy), in sample "
        "and bench, not tune; options -o scheduler=NAME, -o model=NAME and the class's own "
        "(-o shift=3.0, -o eta=0.5, ...; docs/comfyui.md)",
        f"    scheduler = {defaults['scheduler']!r}; one of {', '.join(SCHEDULERS)}; model = "
        f"{defaults['model']!r}; one of {', '.join(exact)} (the exact models'; ComfyUI's "
        f"{', '.join(m for m in MODELS if m not in exact)} have none here)",
    ]  # fmt: skip
    for name in SAMPLERS:
        scheduler = from_comfy(name)
        line = f"{COMFY_PREFIX}{name}: {type(scheduler).__name__}"
        if getattr(scheduler, "ADAPTIVE", False):
            line += " (adaptive: diffsched bench --adaptive)"
        elif not scheduler.deterministic:
            line += " (stochastic)"
        lines.append(line)
    return lines


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default once: not where there is none or the help states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def _tunable() -> list[str]:
    return [name for name in SCHEDULERS if commands_of(name)["tune"] is None]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(prog="diffsched", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"diffsched {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="sample from an exact model and measure the error",
                       formatter_class=fmt)  # fmt: skip
    p.add_argument("scheduler", nargs="?", help="as --scheduler")
    p.add_argument("--scheduler", dest="scheduler_flag", default=None, metavar="NAME",
                   help=f"one of {', '.join(SCHEDULERS)} (default: ddim; an inverse "
                        "scheduler inverts data and regenerates it), or comfy-SAMPLER: "
                        "ComfyUI's KSampler sampler by name (see the list command), e.g. "
                        "comfy-dpmpp_2m -o scheduler=karras (ComfyUI's schedule, default "
                        "normal) -o model=eps|v|x0|flow (its model sampling, default "
                        "eps)")  # fmt: skip
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="a scheduler option, e.g. -o eta=0.5 (repeatable; see the list "
                        "command)")  # fmt: skip
    p.add_argument("--config", help="a diffusers scheduler_config.json (or model folder)")
    p.add_argument("--steps", type=int, default=20, help="number of steps")
    p.add_argument("--strength", type=float, default=None,
                   help="image-to-image: start this fraction of the way down the schedule "
                        "(LCM, DDIM, the Euler family, ...); the loop starts from exact data "
                        "noised to the first call")  # fmt: skip
    p.add_argument("--grid", default=None,
                   help="a custom grid: one of edm, logsnr, ays-sd15, ays-sdxl, ays-svd (of "
                        "--steps steps), or a JSON file from 'diffsched tune --save' (then "
                        f"measured on held-out noise, seed --seed + {HELD_OUT_SEED})")  # fmt: skip
    p.add_argument("--model", choices=MODEL_NAMES, default="digits", help=MODEL_HELP)
    p.add_argument("--num-samples", type=int, default=64, help="samples in the batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the start noise and key")
    p.add_argument("--backend", choices=BACKENDS, default="numpy", help="array library")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="sample dtype")  # fmt: skip
    p.add_argument("--compile", action="store_true",
                   help="run the whole loop as one jax.jit-compiled fori_loop "
                        "(needs --backend jax; no progress bar)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default="diffsched_samples.png",
                   help="PNG file to write (its folder must exist)")  # fmt: skip
    p.set_defaults(func=cmd_sample)

    b = sub.add_parser("bench", help="error against exact solutions over schedulers and steps",
                       formatter_class=fmt)  # fmt: skip
    b.add_argument("--schedulers", nargs="+", default=None,
                   help="name[:key=value,...] specs (not the inverse schedulers; comfy-SAMPLER "
                        "is ComfyUI's sampler, e.g. comfy-dpmpp_2m_sde:scheduler=karras; "
                        f"default: {' '.join(DEFAULT_BENCH)}; with --stochastic: "
                        f"{' '.join(_short(s) for s in DEFAULT_STOCHASTIC)}, on SD1.5's "
                        "betas)")  # fmt: skip
    b.add_argument(
        "--steps",
        nargs="+",
        type=int,
        default=None,
        help=f"step counts (default: {' '.join(map(str, DEFAULT_STEPS))})",
    )
    b.add_argument(
        "--model",
        nargs="+",
        choices=MODEL_NAMES,
        default=None,
        help=f"{MODEL_HELP} (default: digits gmm; with --stochastic: gmm)",
    )
    b.add_argument("--num-samples", type=int, default=None,
                   help="samples per model (default: 32; with --stochastic: "
                        f"{STOCHASTIC_SAMPLES})")  # fmt: skip
    b.add_argument("--stochastic", action="store_true",
                   help="measure samplers (stochastic ones by default) by the distance of their "
                        "samples' mean and covariance to the exact data's, at model-call "
                        "budgets (--calls), beside the Monte-Carlo floor of exact data "
                        "samples")  # fmt: skip
    b.add_argument("--calls", nargs="+", type=int, default=None,
                   help="--stochastic: model-call budgets; each scheduler runs the most steps "
                        f"that fit (default: {' '.join(map(str, DEFAULT_CALLS))})")  # fmt: skip
    b.add_argument("--seed", type=int, default=0, help="seed of the start noise")
    b.add_argument("--against", choices=("diffusers",), help="also run diffusers' schedulers")
    b.add_argument("--out", default="diffsched_bench.png",
                   help="PNG plot to write (its folder must exist; none when every row is "
                        "n/a)")  # fmt: skip
    b.add_argument("--best", action="store_true",
                   help="per budget of 5, 6, 8, 10, 15 and 20 model calls (or --steps), our "
                        "tuned table "
                        "(--tune) and our most accurate untuned method, beside diffusers' best "
                        "with --against diffusers (SD1.5's betas; held-out noise)")  # fmt: skip
    b.add_argument("--tune", choices=("both", "grid"), default=None,
                   help="--best: what is tuned: 'both' UniPC's grid and coefficients (the "
                        "other bases competing), 'grid' the grids of iPNDM-v, UniPC 2 and 3 "
                        "and DPM++2M (default: both)")  # fmt: skip
    b.add_argument("--calibration", type=int, default=256,
                   help="--best: calibration samples of the tuner (seed --seed; the errors "
                        f"are measured on other noise, seed --seed + {HELD_OUT_SEED})")  # fmt: skip
    b.add_argument("--adaptive", nargs="*", type=float, default=None, metavar="RTOL",
                   help="also the adaptive samplers (AdaptiveRK bosh3 and dopri5, ComfyUI's "
                        "dpm_adaptive) on the models' flow form from σ = 1, one row per rtol "
                        "(atol = rtol/10; default: "
                        f"{' '.join(f'{r:g}' for r in ADAPTIVE_RTOLS)})")  # fmt: skip
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("tune", formatter_class=fmt,
                       help="search the grid of N steps (and the table's coefficients) "
                            "closest to the exact ODE solution, and measure it on held-out "
                            "noise")  # fmt: skip
    t.add_argument("scheduler", nargs="?", help="as --scheduler")
    t.add_argument("--scheduler", dest="scheduler_flag", default=None, metavar="NAME",
                   help=f"one of {', '.join(_tunable())} (default: dpm++2m; the list "
                        "command says why the others cannot be tuned)")  # fmt: skip
    t.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="a scheduler option (repeatable)")  # fmt: skip
    t.add_argument("--config", help="a diffusers scheduler_config.json (or model folder)")
    t.add_argument("--steps", type=int, default=6, help="number of steps")
    t.add_argument("--model", choices=MODEL_NAMES, default=None,
                   help=MODEL_HELP + "; default digits (not with --pipeline: its UNet is the "
                   "model)")  # fmt: skip
    t.add_argument("--calibration", type=int, default=None,
                   help="calibration samples (default 256: on the exact models the tuned "
                        "tables carried over to other noise clearly better than with 64; 16 "
                        "latents with --pipeline)")  # fmt: skip
    t.add_argument("--held-out", type=int, default=None,
                   help="held-out samples (default 256; not with --pipeline)")  # fmt: skip
    t.add_argument("--seed", type=int, default=0,
                   help="seed of the calibration noise (held out: seed + "
                        f"{HELD_OUT_SEED})")  # fmt: skip
    t.add_argument("--max-evaluations", type=int, default=300,
                   help="end-to-end runs of the refinement, at most")  # fmt: skip
    t.add_argument("--end", choices=("zero", "lowest"), default="zero",
                   help="what the tuner fits and the held-out error measures: the ODE's "
                        "solution at σ = 0, or the discrete limit (the ODE to the lowest "
                        "trained level, then the jump to x̂_0 there), where a loop that "
                        "calls the model at trained levels only converges")  # fmt: skip
    t.add_argument("--tune", choices=("grid", "coefficients", "both"), default=None,
                   help="what is tuned: the grid (the file is init's sigmas= / timesteps=, "
                        "for --grid), the x̂_0 weights of the table on its own grid, or both "
                        "(a Tuned table, for --config and ds.load_tuned); default grid, both "
                        "with --pipeline")  # fmt: skip
    t.add_argument("--times", action="store_true",
                   help="with --tune coefficients or both: tune the time each model "
                        "call passes the model too (Tuned's model_timesteps, "
                        "docs/tuning.md)")  # fmt: skip
    t.add_argument("--sample-weights", action="store_true",
                   help="with --tune coefficients or both: tune the weights of the earlier "
                        "samples too (Tuned's sample_weights, docs/tuning.md)")  # fmt: skip
    t.add_argument("--pipeline", default=None, metavar="DIR",
                   help="tune for a diffusers text-to-image pipeline saved in DIR "
                        "(save_pretrained; Stable Diffusion-like): its UNet with --prompt and "
                        "--guidance-scale is the model; writes --save for "
                        "diffsched.tuning_pipeline.load")  # fmt: skip
    t.add_argument("--prompt", action="append", default=[],
                   help="--pipeline: a prompt of the calibration batch (repeatable; latent i "
                        "takes prompt i mod P)")  # fmt: skip
    t.add_argument("--guidance-scale", type=float, default=None,
                   help="--pipeline: classifier-free guidance scale (default 7.5)")  # fmt: skip
    t.add_argument("--save", default=None,
                   help="write the grid (--tune grid) or the tuned table to this JSON file "
                        "(its folder must exist)")  # fmt: skip
    t.set_defaults(func=cmd_tune)

    listing = sub.add_parser("list", help="schedulers, their options, defaults, diffusers "
                             "keys, allowed values and the commands each works in")  # fmt: skip
    listing.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; a usage mistake is printed without a traceback (exit status 2).
    Any other exception is a bug and propagates with its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with small_matrices():  # the exact models' small products (see exact.threads)
            return args.func(args)
    except UsageError as err:
        print(f"diffsched {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
