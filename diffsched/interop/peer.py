"""diffusers as a peer, for ``diffsched bench --against diffusers`` and the tests.

diffusers is never a runtime dependency: this module is imported only when asked for.
diffusers computes its betas and ᾱ in float32; to compare final samples at float64
precision its scheduler is constructed with every ``torch.float32`` of the scheduler's
module read as ``torch.float64``, so that its own formulas run in double precision.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import torch

MODULES = {
    "DDIMScheduler": "diffusers.schedulers.scheduling_ddim",
    "PNDMScheduler": "diffusers.schedulers.scheduling_pndm",
    "LCMScheduler": "diffusers.schedulers.scheduling_lcm",
    "DDPMScheduler": "diffusers.schedulers.scheduling_ddpm",
    "EulerDiscreteScheduler": "diffusers.schedulers.scheduling_euler_discrete",
    "EulerAncestralDiscreteScheduler": "diffusers.schedulers.scheduling_euler_ancestral_discrete",
    "HeunDiscreteScheduler": "diffusers.schedulers.scheduling_heun_discrete",
    "KDPM2DiscreteScheduler": "diffusers.schedulers.scheduling_k_dpm_2_discrete",
    "KDPM2AncestralDiscreteScheduler": (
        "diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete"
    ),
    "LMSDiscreteScheduler": "diffusers.schedulers.scheduling_lms_discrete",
    "EDMEulerScheduler": "diffusers.schedulers.scheduling_edm_euler",
    "IPNDMScheduler": "diffusers.schedulers.scheduling_ipndm",
    "DPMSolverMultistepScheduler": "diffusers.schedulers.scheduling_dpmsolver_multistep",
    "DPMSolverMultistepInverseScheduler": (
        "diffusers.schedulers.scheduling_dpmsolver_multistep_inverse"
    ),
    "DEISMultistepScheduler": "diffusers.schedulers.scheduling_deis_multistep",
    "UniPCMultistepScheduler": "diffusers.schedulers.scheduling_unipc_multistep",
    "DPMSolverSinglestepScheduler": "diffusers.schedulers.scheduling_dpmsolver_singlestep",
    "EDMDPMSolverMultistepScheduler": ("diffusers.schedulers.scheduling_edm_dpmsolver_multistep"),
    "FlowMatchEulerDiscreteScheduler": "diffusers.schedulers.scheduling_flow_match_euler_discrete",
    "FlowMatchHeunDiscreteScheduler": "diffusers.schedulers.scheduling_flow_match_heun_discrete",
    "FlowMatchLCMScheduler": "diffusers.schedulers.scheduling_flow_match_lcm",
    "TCDScheduler": "diffusers.schedulers.scheduling_tcd",
    "DDIMInverseScheduler": "diffusers.schedulers.scheduling_ddim_inverse",
    "SASolverScheduler": "diffusers.schedulers.scheduling_sasolver",
    # issue 18
    "ScoreSdeVeScheduler": "diffusers.schedulers.scheduling_sde_ve",
    "KarrasVeScheduler": "diffusers.schedulers.deprecated.scheduling_karras_ve",
    "ScoreSdeVpScheduler": "diffusers.schedulers.deprecated.scheduling_sde_vp",
    "DDPMWuerstchenScheduler": "diffusers.schedulers.scheduling_ddpm_wuerstchen",
    "UnCLIPScheduler": "diffusers.schedulers.scheduling_unclip",
    "CMStochasticIterativeScheduler": "diffusers.schedulers.scheduling_consistency_models",
    "ConsistencyDecoderScheduler": "diffusers.schedulers.scheduling_consistency_decoder",
    "SCMScheduler": "diffusers.schedulers.scheduling_scm",
    "DDIMParallelScheduler": "diffusers.schedulers.scheduling_ddim_parallel",
    "DDPMParallelScheduler": "diffusers.schedulers.scheduling_ddpm_parallel",
    "CogVideoXDDIMScheduler": "diffusers.schedulers.scheduling_ddim_cogvideox",
    "CogVideoXDPMScheduler": "diffusers.schedulers.scheduling_dpm_cogvideox",
    "RePaintScheduler": "diffusers.schedulers.scheduling_repaint",
    # diffusers' newer flow schedulers (issue 18)
    "LTXEulerAncestralRFScheduler": "diffusers.schedulers.scheduling_ltx_euler_ancestral_rf",
    "FlowMapEulerDiscreteScheduler": "diffusers.schedulers.scheduling_flow_map_euler_discrete",
    "MiniMaxH3Scheduler": "diffusers.schedulers.scheduling_minimax_h3",
    "HeliosScheduler": "diffusers.schedulers.scheduling_helios",
    "HeliosDMDScheduler": "diffusers.schedulers.scheduling_helios_dmd",
    "PiflowScheduler": "diffusers.schedulers.scheduling_piflow",
    # issue 17
    "DPMSolverSDEScheduler": "diffusers.schedulers.scheduling_dpmsolver_sde",
    "CosineDPMSolverMultistepScheduler": (
        "diffusers.schedulers.scheduling_cosine_dpmsolver_multistep"
    ),
}


class _Float64Torch:
    """``torch``, except that ``float32`` means ``float64``."""

    float32 = torch.float64

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


@contextlib.contextmanager
def _double_tables(module):
    original = module.torch
    module.torch = _Float64Torch()
    try:
        yield
    finally:
        module.torch = original


def diffusers_class(name: str) -> type:
    """diffusers' scheduler class of that name (also those its top level does not export,
    as ``ConsistencyDecoderScheduler``)."""
    return getattr(module_of({"_class_name": name}), name)


def module_of(config: dict):
    """The diffusers module defining the config's ``_class_name``."""
    return importlib.import_module(MODULES[config["_class_name"]])


def scheduler(config: dict, *, float64: bool = True):
    """A diffusers scheduler from a config dict holding ``_class_name``."""
    module = module_of(config)
    cls = getattr(module, config["_class_name"])
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    if not float64:
        return cls(**kwargs)
    with _double_tables(module):
        return cls(**kwargs)


def _double_grids(d) -> None:
    """The scheduler's float32 grids as float64 tensors holding the same values, so that
    its step arithmetic runs in double precision on diffusers' own grid."""
    for name, value in vars(d).items():
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32 and name != "timesteps":
            setattr(d, name, value.to(torch.float64))


# our step-time option -> diffusers' step keyword, where the names differ
STEP_KWARGS = {"rederive_noise": "use_clipped_model_output"}


def run(
    config: dict,
    model,
    noise: torch.Tensor,
    num_steps: int | None,
    *,
    noises=None,
    float64: bool = True,
    **set_timesteps_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, final sample) of diffusers' loop for ``config``, driven as its pipelines
    drive it: ``noise * init_noise_sigma``, then per timestep ``scale_model_input``, the
    model, ``step``. With ``float64`` tables the model is called at the timesteps stock
    diffusers passes it: rounded to float32 where stock's ``timesteps`` are float32.
    ``noises[i]`` replaces the noise diffusers draws at call i (its ``randn_tensor``);
    options diffusers passes to ``step`` come from ``"_diffsched"``.
    """
    import inspect
    from unittest import mock

    extra = dict(config.get("_diffsched") or {})
    step_kwargs = {STEP_KWARGS.get(k, k): v for k, v in extra.items()}
    d = scheduler(config, float64=float64)
    name = config["_class_name"]
    # image-to-image where set_timesteps has no strength: the img2img pipelines' cut
    # (get_timesteps), then set_begin_index
    strength = None
    if "strength" not in inspect.signature(d.set_timesteps).parameters:
        strength = set_timesteps_kwargs.pop("strength", None)
    with _double_tables(module_of(config)) if float64 else contextlib.nullcontext():
        if num_steps is None:
            d.set_timesteps(**set_timesteps_kwargs)
        else:
            d.set_timesteps(num_steps, **set_timesteps_kwargs)
    if float64:
        _double_grids(d)
    timesteps = d.timesteps
    # the model sees the timesteps stock diffusers gives it: where its float32 tables make
    # them float32 (Euler-type classes: fractional timesteps), the float64 tables' values
    # rounded to float32, as its pipelines pass them (the step's arithmetic stays float64)
    model_time = stock_timestep(config, num_steps, set_timesteps_kwargs) if float64 else None
    if strength is not None:
        steps = d.num_inference_steps
        if name.startswith("FlowMatch"):  # SD3 / FLUX img2img: floor(N (1 - s)) skipped
            t_start = int(max(steps - min(steps * strength, steps), 0))
        else:  # the Stable Diffusion img2img pipelines: floor(N s) kept
            t_start = max(steps - min(int(steps * strength), steps), 0)
        timesteps = timesteps[t_start * d.order :]
        if hasattr(d, "set_begin_index"):
            d.set_begin_index(t_start * d.order)
    current = [0]

    def draw(shape, *args, **kwargs):
        if noises is None:  # a deterministic config (SA-Solver's τ = 0 still draws): zeros
            return torch.zeros(shape, dtype=kwargs.get("dtype") or noise.dtype)
        return noises[current[0]]

    # the flow-matching schedulers have neither (their start and model input are the noise)
    x = noise * getattr(d, "init_noise_sigma", 1.0)
    scale_input = getattr(d, "scale_model_input", lambda x, t: x)
    double = _double_tables(module_of(config)) if float64 else contextlib.nullcontext()
    # create=True: deterministic schedulers (Heun, KDPM2) do not import randn_tensor
    with double, mock.patch.object(module_of(config), "randn_tensor", draw, create=True):
        for i, t in enumerate(timesteps):
            current[0] = i
            inp = scale_input(x, t)
            step_t = int(t) if name == "LCMScheduler" else t
            out = model(inp, t if model_time is None else model_time(t))
            x = d.step(out, step_t, x, **step_kwargs).prev_sample
    return timesteps, x


def stock_timestep(config: dict, num_steps: int | None, set_timesteps_kwargs: dict):
    """The rounding of a timestep to the dtype of stock diffusers' ``timesteps`` (its
    float32 tables) for ``config``'s loop, or None where stock's are not float32."""
    kwargs = {k: v for k, v in set_timesteps_kwargs.items() if k != "strength"}
    try:
        stock = scheduler(config, float64=False)
        if num_steps is None:
            stock.set_timesteps(**kwargs)
        else:
            stock.set_timesteps(num_steps, **kwargs)
    except Exception:  # stock's float32 tables refuse what float64 ones take: as they are
        return None
    stock_timesteps = getattr(stock, "timesteps", None)
    if not isinstance(stock_timesteps, torch.Tensor) or stock_timesteps.dtype != torch.float32:
        return None

    def rounded(t):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t.to(torch.float32).to(t.dtype)
        return t

    return rounded


def sample(config: dict, model, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
    """diffusers' deterministic loop (DDIM with eta = 0, PNDM) for our config, float64 tables."""
    extra = config.get("_diffsched") or {}
    if extra.get("eta", 0.0) != 0.0:
        raise ValueError("only deterministic loops: eta must be 0")
    step_options = {}
    if config["_class_name"] == "DDIMScheduler":
        step_options["use_clipped_model_output"] = bool(extra.get("rederive_noise", False))
    elif config["_class_name"] != "PNDMScheduler":
        raise ValueError(f"expected a DDIM or PNDM config, got {config['_class_name']}")
    peer = scheduler(config)
    peer.set_timesteps(num_steps)
    x = noise
    for t in peer.timesteps:
        x = peer.step(model(x, t), t, x, **step_options).prev_sample
    return x
