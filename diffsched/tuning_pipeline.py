"""Tuning for diffusers pipeline users: the pipeline's own denoiser (its UNet, the prompt
embeddings and classifier-free guidance) is the model the tuner fits, and the result is a
file that :class:`~diffsched.diffusers.DiffusersScheduler` loads into the same pipeline::

    import diffsched.tuning_pipeline as tp

    tuned = tp.tune(pipe, ["a cat", "a house"], 8, path="tuned.json")  # minutes
    pipe.scheduler = tp.load("tuned.json", pipe)
    image = pipe("a cat", num_inference_steps=8).images[0]

The calibration batch is ``calibration`` latents of standard normal noise, the prompts
taken in turn; every tuner call of the model is one batched UNet call on all of them
(twice the batch with guidance). The cost is that of :func:`diffsched.tune`: the reference
(``candidates * substeps`` calls, 400 by default), the candidate bases' starting grids,
the grid search (100 runs at most) and the fit: about 230-270 × N batched UNet calls at
5-10 steps (docs/tuning.md). ``candidates``, ``substeps``, ``max_evaluations``, ``ridges``
and ``iterations`` trade accuracy for cost.

The pipeline must be a text-to-image pipeline whose denoiser is
``unet(x, t, encoder_hidden_states=...)`` and whose ``encode_prompt`` returns the
(conditional, unconditional) embeddings (Stable Diffusion 1.x / 2.x and their kin).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .core.scheduler import BaseScheduler
from .methods.tuned import Tuned
from .tuning_coefficients import as_scheduler, load_tuned, model_differences, save_tuned

__all__ = ["PipelineDenoiser", "load", "pipeline_scheduler", "tune"]


class PipelineDenoiser:
    """``model(sample, t)``: the pipeline's UNet on ``sample`` (a batch of latents) with
    the prompts' embeddings (sample i takes prompt i mod P) and classifier-free guidance,
    ε̂ = ε̂_u + g (ε̂_c - ε̂_u), as the pipeline's own loop computes it."""

    def __init__(self, pipe: Any, prompts: Sequence[str], guidance_scale: float = 7.5,
                 negative_prompt: str | Sequence[str] | None = None) -> None:  # fmt: skip
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValueError("tune needs at least one prompt")
        self.pipe = pipe
        self.unet = pipe.unet
        self.guidance_scale = float(guidance_scale)
        self.guided = self.guidance_scale > 1.0  # as the pipelines decide it
        negative = negative_prompt
        if isinstance(negative, str):
            negative = [negative] * len(prompts)
        cond, uncond = pipe.encode_prompt(
            list(prompts), pipe.device, 1, self.guided, negative_prompt=negative
        )
        self.cond, self.uncond = cond, uncond
        self.calls = 0

    def _rows(self, embeds: Any, batch: int) -> Any:
        import torch

        index = torch.arange(batch, device=embeds.device) % embeds.shape[0]
        return embeds[index]

    def __call__(self, sample: Any, t: Any) -> Any:
        import torch

        self.calls += 1
        batch = sample.shape[0]
        with torch.no_grad():
            if not self.guided:
                return self.unet(sample, t, encoder_hidden_states=self._rows(self.cond, batch),
                                 return_dict=False)[0]  # fmt: skip
            both = torch.cat([sample, sample])
            embeds = torch.cat([self._rows(self.uncond, batch), self._rows(self.cond, batch)])
            out = self.unet(both, t, encoder_hidden_states=embeds, return_dict=False)[0]
            uncond, cond = out.chunk(2)
            return uncond + self.guidance_scale * (cond - uncond)


def calibration_noise(pipe: Any, num_samples: int, seed: int = 0, height: int | None = None,
                      width: int | None = None) -> Any:  # fmt: skip
    """Standard normal latents of the pipeline's shape (its default image size unless
    ``height`` / ``width`` are given), float32 on the pipeline's device, seed ``seed``."""
    import torch

    scale = getattr(pipe, "vae_scale_factor", 8)
    size = pipe.unet.config.sample_size
    h = (height // scale) if height else size
    w = (width // scale) if width else size
    shape = (num_samples, pipe.unet.config.in_channels, h, w)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return noise.to(device=pipe.device, dtype=pipe.unet.dtype)


def tune(
    pipe: Any,
    prompts: Sequence[str],
    num_steps: int,
    *,
    scheduler: BaseScheduler | None = None,
    calibration: int = 16,
    guidance_scale: float = 7.5,
    negative_prompt: str | Sequence[str] | None = None,
    seed: int = 0,
    tune: str = "both",
    path: str | os.PathLike | None = None,
    **options: Any,
) -> Tuned:
    """The :class:`~diffsched.Tuned` table of ``scheduler`` (default: UniPC on the
    pipeline's training schedule) for ``num_steps`` steps of this pipeline on these prompts
    and this guidance scale, tuned on ``calibration`` latents of seed ``seed``; written to
    ``path`` when given (with what it was tuned on and what it cost), for :func:`load`.

    ``tune`` is ``"both"`` (grid and coefficients), ``"coefficients"`` or ``"grid"``;
    ``options`` go to :func:`diffsched.tuning.search_coefficients` (or
    :func:`~diffsched.tuning.search` for ``"grid"``).
    """
    from .methods.unipc import UniPC
    from .tuning import check_grid_options, search, search_coefficients
    from .tuning_coefficients import _tuned

    if tune not in ("grid", "coefficients", "both"):
        raise ValueError(f"tune must be 'grid', 'coefficients' or 'both', got {tune!r}")
    if tune == "grid":
        check_grid_options(options)
    _check_arguments(prompts, calibration, guidance_scale, seed)
    theirs = pipeline_scheduler(pipe)
    if scheduler is None:
        scheduler = UniPC.from_config(dict(pipe.scheduler.config))
    differ = model_differences(scheduler, theirs)
    if differ:  # the table would be tuned for, and saved as, another model's schedule
        raise ValueError(
            f"scheduler must describe the pipeline's model ({type(theirs).__name__}'s "
            f"schedule); differing: {', '.join(differ)}"
        )
    model = PipelineDenoiser(pipe, prompts, guidance_scale, negative_prompt)
    noise = calibration_noise(pipe, calibration, seed)
    t0 = time.perf_counter()
    if tune == "grid":
        result = search(model, scheduler, num_steps, noise, **options)  # (checked above)
        tuned = _tuned(scheduler, num_steps, result.init_options, None)
    else:
        result = search_coefficients(model, scheduler, num_steps, noise, grid=tune == "both",
                                     **options)  # fmt: skip
        tuned = result.scheduler
    start_error, error = result.start_error, result.error
    seconds = time.perf_counter() - t0
    if path is not None:
        save_tuned(
            path, tuned, pipeline=type(pipe).__name__, prompts=list(prompts),
            guidance_scale=guidance_scale, negative_prompt=negative_prompt,
            calibration=calibration, seed=seed, tune=tune, end=options.get("end", "zero"),
            model_calls=model.calls,
            seconds=seconds, calibration_error_before=start_error, calibration_error=error,
            negated_check=result.confirmation,
        )  # fmt: skip
    return tuned


def _check_arguments(prompts: Any, calibration: Any, guidance_scale: Any, seed: Any) -> None:
    """Refuses, before any UNet call, what :func:`tune` cannot take."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a string or a list of strings, got {prompts!r}")
    for name, value, low in (("calibration", calibration, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if (
        isinstance(guidance_scale, bool)
        or not isinstance(guidance_scale, int | float | np.floating)
        or not math.isfinite(guidance_scale)
    ):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")


def load(path: str | os.PathLike, pipe: Any = None, num_steps: int | None = None):
    """The :class:`~diffsched.diffusers.DiffusersScheduler` of a file written by
    :func:`tune`, for ``pipe.scheduler``. Given ``pipe``, a file tuned for another model
    than its scheduler's (training schedule, prediction type, number of training steps,
    flow levels and shift: :func:`~diffsched.tuning_coefficients.model_differences`) is
    refused (ValueError), as :func:`~diffsched.load_tuned` refuses it given ``base=``."""
    from .diffusers import DiffusersScheduler

    base = None if pipe is None else pipeline_scheduler(pipe)
    return DiffusersScheduler(load_tuned(path, base=base, num_steps=num_steps))


def pipeline_scheduler(pipe: Any) -> BaseScheduler:
    """Our scheduler of ``pipe.scheduler`` (a diffusers scheduler, or ours in diffusers'
    interface): the model its config describes, for the checks above."""
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None:
        raise TypeError(
            f"expected a diffusers pipeline with a scheduler, got {type(pipe).__name__}"
        )
    try:
        return as_scheduler(scheduler)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"the pipeline's scheduler ({type(scheduler).__name__}) names no model diffsched can "
            f"compare a tuned table with: {err}"
        ) from None
