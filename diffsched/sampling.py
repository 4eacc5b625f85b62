"""The sampling loop of the seed's system: ``init``, then one model call and one ``step``
per timestep."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .core import ops as _ops
from .core.scheduler import Array, Scheduler

Model = Callable[[Array, Array], Array]
Callback = Callable[[int, Array, Array], None]


@dataclass(frozen=True)
class Guided:
    """A classifier-free-guided model (Ho & Salimans 2022): ``cond(x, t)`` and
    ``uncond(x, t)`` mixed as u + scale (c - u).

    ``ds.sample(ds.Guided(cond, uncond, scale), ...)`` calls both per step and, with
    ``cfg_pp=True`` (the default), passes the unconditional output to the step (CFG++,
    Chung et al. 2024: x̂_0 from the guided output, the renoising direction from the
    unconditional one; ``Scheduler.step(..., unconditional=)``). CFG++ is meant for small
    scales (the paper's λ in [0, 1], about scale / 12.5 of classic CFG); ``cfg_pp=False``
    is classic CFG. Called as ``model(x, t)`` it returns the guided output.

    With a scheduler whose model learns its variance (``variance_type="learned_range"``:
    the prediction's C channels, then C variance channels along axis 1), ``ds.sample``
    guides the prediction channels only and keeps the conditional variance, as DeepFloyd
    IF's pipeline does (``outputs(x, t, channels=C)``).
    """

    cond: Model
    uncond: Model
    scale: float
    cfg_pp: bool = True

    def __post_init__(self) -> None:
        for what, model in (("cond", self.cond), ("uncond", self.uncond)):
            if not callable(model):
                raise TypeError(f"Guided: {what} must be a model(x, t), got {model!r}")
        scale = self.scale  # a number, or an array broadcasting against the outputs
        if isinstance(scale, bool) or not (
            isinstance(scale, numbers.Real) or hasattr(scale, "shape")
        ):
            raise TypeError(f"Guided: scale must be a number or an array, got {scale!r}")
        if isinstance(scale, numbers.Real) and not math.isfinite(scale):
            raise ValueError(f"Guided: scale must be finite, got {scale}")
        if not isinstance(self.cfg_pp, bool):
            raise TypeError(f"Guided: cfg_pp must be True or False, got {self.cfg_pp!r}")

    def outputs(self, x: Array, t: Array, channels: int | None = None) -> tuple[Array, Array]:
        """(the guided output, the unconditional one) at (x, t); with ``channels`` = C, the
        first C channels (axis 1) guided and the rest the conditional output's."""
        u = self.uncond(x, t)
        c = self.cond(x, t)
        if channels is None:
            return u + self.scale * (c - u), u
        xp = _ops.namespace(u, c)
        guided = u[:, :channels] + self.scale * (c[:, :channels] - u[:, :channels])
        return xp.concat([guided, c[:, channels:]], axis=1), u

    def __call__(self, x: Array, t: Array) -> Array:
        return self.outputs(x, t)[0]


def _call(model: Model, scheduler: Scheduler, state, x: Array, t: Array):
    """One model call and one step; a :class:`Guided` model with ``cfg_pp`` passes its
    unconditional output; a learned variance is taken from the conditional output."""
    if isinstance(model, Guided):
        channels = x.shape[1] if getattr(scheduler, "learns_variance", False) else None
        guided, uncond = model.outputs(x, t, channels)
        if model.cfg_pp:
            return scheduler.step(state, x, guided, unconditional=uncond)
        return scheduler.step(state, x, guided)
    return scheduler.step(state, x, model(x, t))


def sample(
    model: Model,
    scheduler: Scheduler,
    noise: Array,
    num_steps: int,
    key: Any = 0,
    *,
    progress: bool = False,
    callback: Callback | None = None,
    compile: bool = False,
    image: Array | None = None,
    guidance: tuple[Model, Model, float] | None = None,
    **init_options: Any,
) -> Array:
    """Run a scheduler's loop from ``noise`` and return the final sample.

    Args:
        model: ``model(sample, timestep) -> prediction``, in the scheduler's
            ``prediction_type``. Called on the sample exactly as the scheduler holds it.
            A :class:`Guided` model runs CFG++ (its conditional and unconditional outputs
            both go to the step); None with ``guidance``.
        scheduler: any diffsched scheduler.
        noise: standard normal noise; the loop starts from it times
            ``scheduler.init_noise_scale`` (diffusers' start), or, with ``image``, from the
            image noised to the first model call (``scheduler.add_noise``). It sets the
            backend, dtype and device.
        num_steps: the number of steps N (PNDM's warm-up adds model calls: the timesteps
            ``init`` returns are the calls). For an adaptive scheduler (``ADAPTIVE``), the
            bound on model calls ``max_calls`` (the loop runs until ``done``; see
            docs/adaptive.md).
        key: integer seed or JAX PRNG key for stochastic schedulers.
        progress: show a tqdm progress bar (needs ``tqdm``; eager loops only).
        callback: ``callback(i, timestep, sample)`` after each step (eager loops only).
        compile: JAX arrays only: run the whole loop as one ``jax.jit``-compiled
            ``jax.lax.fori_loop`` (adaptive schedulers: ``jax.lax.while_loop`` until
            ``done``, at most ``max_calls`` calls), the state as the carry. A ``noise``
            sharded over a device mesh (a ``NamedSharding``) runs on all its devices and
            the result is sharded like it (see the README, "Multi-device sampling").
        image: a clean sample for image-to-image (with ``strength=`` < 1 in
            ``init_options``): the loop starts from ``add_noise(state, image, noise)``.
        guidance: ``(cond, uncond, scale)``: the same as ``model=Guided(cond, uncond,
            scale)`` (CFG++).
        **init_options: passed to ``init`` (``strength``, custom ``sigmas`` / ``timesteps``,
            ``offsets`` for per-element schedules: then ``model`` is called with
            per-element timesteps of ``offsets``' shape, see :func:`diffusion_forcing`).
    """
    if guidance is not None:
        if model is not None:
            raise ValueError("pass either a model or guidance=(cond, uncond, scale), not both")
        if not isinstance(guidance, tuple | list) or len(guidance) != 3:
            raise TypeError(f"guidance must be (cond, uncond, scale), got: {guidance!r}")
        model = Guided(*guidance)
    from .core.scheduler import BaseScheduler

    if not isinstance(scheduler, BaseScheduler):
        what = scheduler.__name__ if isinstance(scheduler, type) else type(scheduler).__name__
        hint = " (a class: construct it, e.g. ds.DDIM())" if isinstance(scheduler, type) else ""
        hint = hint or (
            " (a diffusers scheduler: ds.from_config(its .config) gives ours)"
            if hasattr(scheduler, "set_timesteps")
            else ""
        )
        raise TypeError(f"sample: scheduler must be a diffsched scheduler, got {what}{hint}")
    if not callable(model):
        raise TypeError(f"sample: model must be callable, got {type(model).__name__}")
    if getattr(scheduler, "ADAPTIVE", False):
        return _adaptive_loop(model, scheduler, noise, num_steps, key, progress=progress,
                              callback=callback, compile=compile, image=image,
                              init_options=init_options)  # fmt: skip
    state, timesteps = scheduler.init(num_steps, noise, key, **init_options)
    noise = _first_input(scheduler, state, noise, image, num_steps, init_options)
    if compile:
        _check_compiled(noise, callback, progress)
        return _compiled_loop(model, scheduler, state, timesteps, noise)
    steps = timesteps
    if progress:
        steps = _progress_bar(timesteps, type(scheduler).__name__)
    x = noise
    for i, t in enumerate(steps):
        state, x = _call(model, scheduler, state, x, t)
        if callback is not None:
            callback(i, t, x)
    return x


def _first_input(scheduler: Scheduler, state, noise, image, num_steps, init_options: dict):
    """The first model input: the clean ``image`` noised to the first call
    (image-to-image), else the noise at the scale diffusers forms it (Euler-type, EDM)."""
    if image is not None:
        return scheduler.add_noise(state, image, noise)
    scale = scheduler.init_noise_scale(num_steps, **init_options)
    return noise * scale if scale != 1.0 else noise


def _check_compiled(noise, callback, progress) -> None:
    """``compile=True`` compiles the loop with jax.jit: JAX arrays, no Python per step."""
    if not _ops.is_jax(_ops.namespace(noise)):
        raise ValueError(
            f"compile=True compiles the loop with jax.jit and needs JAX arrays, "
            f"got {type(noise).__name__}"
        )
    if callback is not None or progress:
        raise ValueError("callback and progress run Python per step: not with compile=True")


def _compiled_loop(model: Model, scheduler: Scheduler, state, timesteps, noise):
    import jax

    def body(i, carry):
        state, x = carry
        return _call(model, scheduler, state, x, timesteps[i])

    def loop(state, x):
        return jax.lax.fori_loop(0, timesteps.shape[0], body, (state, x))[1]

    # A batch sharded over several devices comes back sharded as it came in. XLA's sharding
    # propagation gives that by itself for a model that works sample by sample; this makes
    # it certain for any model.
    sharding = None
    if not isinstance(noise, jax.core.Tracer):
        sharding = noise.sharding
    if sharding is not None and len(sharding.device_set) > 1:
        return jax.jit(loop, out_shardings=sharding)(state, noise)
    return jax.jit(loop)(state, noise)


def _adaptive_loop(
    model, scheduler, noise, max_calls, key, *, progress, callback, compile, image, init_options
):
    """An adaptive scheduler's loop: model calls until ``scheduler.done(state)`` (at most
    ``max_calls``): a Python while loop, or ``jax.lax.while_loop`` with ``compile``."""
    name = type(scheduler).__name__
    if isinstance(model, Guided) and model.cfg_pp:
        raise ValueError(
            f"sample: {name} is adaptive and takes no CFG++ (unconditional=); use "
            "Guided(cond, uncond, scale, cfg_pp=False) for classic guidance"
        )
    state, _ = scheduler.init(max_calls, noise, key, **init_options)
    x = _first_input(scheduler, state, noise, image, max_calls, init_options)
    if compile:
        _check_compiled(noise, callback, progress)
        import jax

        def cond(carry):
            return ~scheduler.done(carry[0])

        def body(carry):
            state, x = carry
            return scheduler.step(state, x, model(x, scheduler.next_timestep(state)))

        return jax.jit(lambda state, x: jax.lax.while_loop(cond, body, (state, x))[1])(state, x)
    bar = None
    if progress:
        bar = _progress_bar(range(max_calls), name)
        bar = bar if hasattr(bar, "update") else None
    i = 0
    while not bool(scheduler.done(state)):
        t = scheduler.next_timestep(state)
        state, x = scheduler.step(state, x, model(x, t))
        if callback is not None:
            callback(i, t, x)
        if bar is not None:
            bar.update(1)
        i += 1
    if bar is not None:
        bar.close()
    return x


def _progress_bar(timesteps, name: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn("progress=True needs tqdm (pip install tqdm); no bar shown", stacklevel=3)
        return timesteps
    return tqdm(timesteps, desc=name, total=len(timesteps), leave=False)


DONE = -(1 << 30)
"""An offset that makes an element done from the start (see :func:`diffusion_forcing`)."""


def diffusion_forcing(
    num_frames: int,
    *,
    block: int = 1,
    ar_step: int = 0,
    num_pre_ready: int = 0,
    ndim: int = 5,
    axis: int = 2,
) -> np.ndarray:
    """The per-frame offsets of diffusion forcing (Chen et al. 2024), as SkyReels-V2's
    pipelines schedule it: frames in causal blocks of ``block`` frames; block b starts
    ``b * ar_step`` model calls after block 0 (``ar_step=0``: synchronous, every frame at
    the same level; ``ar_step > 0``: the staggered "denoising wave"); the first
    ``num_pre_ready`` frames (a prefix video) are done from the start.

    Returns an integer array of shape ``(1, ..., num_frames, ..., 1)`` (``ndim`` axes, the
    frames on ``axis``; the default fits a ``(B, C, F, H, W)`` video latent), for
    ``init(..., offsets=...)`` and ``ds.sample(..., offsets=...)``.
    """
    for name, value, low in (("num_frames", num_frames, 1), ("block", block, 1),
                             ("ar_step", ar_step, 0), ("num_pre_ready", num_pre_ready, 0),
                             ("ndim", ndim, 1)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if num_frames > 1 << 20 or num_pre_ready > num_frames:
        raise ValueError(
            f"num_frames must be at most 2**20 and num_pre_ready at most num_frames, got "
            f"num_frames={num_frames}, num_pre_ready={num_pre_ready}"
        )
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must be in [-{ndim}, {ndim}), got {axis}")
    frames = np.arange(num_frames)
    # blocks count from the first frame to generate: a pre-ready prefix is not delayed
    start_block = (np.maximum(frames - num_pre_ready, 0)) // block
    offsets = np.where(frames < num_pre_ready, DONE, start_block * ar_step).astype(np.int64)
    shape = [1] * ndim
    shape[axis] = num_frames
    return offsets.reshape(shape)
