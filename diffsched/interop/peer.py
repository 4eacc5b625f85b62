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
