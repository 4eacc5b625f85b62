"""ComfyUI's KSampler by name: ``ds.from_comfy(sampler, scheduler, model=..., **settings)``.

ComfyUI (comfyanonymous/ComfyUI) picks a sampler and a scheduler by name in its KSampler
node. :func:`from_comfy` builds the diffsched scheduler whose loop equals that KSampler's:
the model is called on the held sample (ComfyUI's model input) at the same timesteps, the
loop starts from standard normal noise times ``init_noise_scale`` and its final sample is
KSampler's result; ``init(..., denoise=d)`` is KSampler's partial denoise and
``init(..., sigmas=[...])`` runs an explicit σ list (``SamplerCustom``).

:func:`sampler_function` goes the other way: a k-diffusion sampler function of a diffsched
scheduler, for ComfyUI's ``KSAMPLER`` (a custom node's sampler).

Where ComfyUI meets an unknown name it silently falls back to euler / simple; here it is
an error listing :data:`SAMPLERS` or :data:`SCHEDULERS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .methods import CLASSES
from .methods._comfy import ComfySampler
from .methods.comfy_exponential import ComfyUniPC
from .schedules.comfy import KSAMPLER_SCHEDULERS

__all__ = ["SAMPLERS", "SCHEDULERS", "STOCHASTIC_SAMPLERS", "from_comfy", "sampler_function"]

# sampler name -> (class, fixed options), from each class's COMFY_NAMES and COMFY_OPTIONS
_CLASSES: dict[str, tuple[type[ComfySampler], dict[str, Any]]] = {
    name: (cls, dict(cls.COMFY_OPTIONS.get(name, {})))
    for cls in CLASSES
    if issubclass(cls, ComfySampler)
    for name in cls.COMFY_NAMES
}
# ComfyUI's stochastic and guidance-aware samplers (issue 17)
STOCHASTIC_SAMPLERS = (
    "euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_2m_cfg_pp", "res_multistep_cfg_pp", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation_cfg_pp",
)  # fmt: skip
SAMPLERS: tuple[str, ...] = tuple(_CLASSES)  # the names from_comfy runs
SCHEDULERS: tuple[str, ...] = tuple(KSAMPLER_SCHEDULERS)


def from_comfy(
    sampler_name: str, scheduler_name: str = "normal", *, model: str = "eps", **settings: Any
) -> ComfySampler:
    """The scheduler running ComfyUI's KSampler with ``sampler_name`` and
    ``scheduler_name`` on ``model``'s model sampling ("eps", "v", "x0", "lcm", "flow",
    "flux").

    ``settings``: the model sampling's keys (``linear_start``, ``linear_end``,
    ``beta_schedule``, ``zsnr``, ``shift``, ``multiplier``) and the sampler's options
    (``order`` for lms, ``max_order`` and ``deis_mode``, ``ge_gamma``, ``s_churn``, ...).
    """
    if not isinstance(sampler_name, str) or sampler_name not in SAMPLERS:
        if sampler_name in STOCHASTIC_SAMPLERS:
            raise NotImplementedError(
                f"ComfyUI sampler {sampler_name!r} is one of the stochastic or guidance-aware "
                f"samplers of issue 17, not implemented yet; from_comfy runs: {SAMPLERS}"
            )
        raise ValueError(f"unknown ComfyUI sampler {sampler_name!r}; known: {SAMPLERS}")
    if not isinstance(scheduler_name, str) or scheduler_name not in SCHEDULERS:
        raise ValueError(f"unknown ComfyUI scheduler {scheduler_name!r}; known: {SCHEDULERS}")
    cls, fixed = _CLASSES[sampler_name]
    clash = sorted(set(fixed) & set(settings))
    if clash:
        raise TypeError(f"ComfyUI sampler {sampler_name!r} fixes {clash}; leave them out")
    settings = {**cls.COMFY_DEFAULTS.get(sampler_name, {}), **settings}
    return cls(model=model, scheduler=scheduler_name, **fixed, **settings)


def sampler_function(sched: ComfySampler):
    """A k-diffusion sampler function running ``sched`` on ComfyUI's denoiser:
    ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None)``, for
    ``comfy.samplers.KSAMPLER(fn)``.

    ``model(x, σ · s_in, **extra_args)`` is k-diffusion's denoiser (x̂_0 of the native
    sample x); ``x`` the noise-scaled start; ``sigmas`` the loop's σ list, as given (the
    scheduler's own schedule is not used). The method runs as the scheduler's class
    defines it, on those σ's; ComfyUI's uni_pc quirk is kept (the list's last 0 becomes
    0.001 in place). Torch in, torch out (ComfyUI's tensors).

    Any :class:`~diffsched.methods._comfy.ComfySampler` (``from_comfy``'s, every
    ``Comfy*`` class) is accepted; another diffsched class is a TypeError (its loop holds
    its own sample and timesteps, not ComfyUI's σ's).
    """
    if not isinstance(sched, ComfySampler):
        raise TypeError(
            "sampler_function takes a ComfyUI sampler (ds.from_comfy(...) or a Comfy* class), "
            f"got {type(sched).__name__}"
        )
    # the denoiser returns x̂_0: run the class as an x_0 model on the same method
    runner = sched.replace(model="x0", shift=None, multiplier=None)

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        import torch

        extra_args = {} if extra_args is None else extra_args
        sig = sigmas.detach().cpu().to(torch.float64).numpy()
        if isinstance(sched, ComfyUniPC) and sig[-1] == 0:
            sigmas[-1] = 0.001  # ComfyUI's in-place quirk (then its flow result / 0.999)
        if len(sig) <= 1:
            return x
        calls = runner.calls(sig)
        first = np.ones(len(calls.sigmas), bool) if calls.first is None else calls.first
        state, _ = runner.init(None, x, sigmas=sig)
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
