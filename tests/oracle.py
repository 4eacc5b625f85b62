"""diffusers as an oracle: its schedulers, built with float64 tables, driven like ours.

diffusers computes its betas and ᾱ in float32. To compare final samples at 1e-6 in float64
we construct its scheduler with every ``torch.float32`` in the scheduler's module read as
``torch.float64`` (its own formulas, run at double precision). The float32 tables
themselves are compared with ours separately, at float32 precision.
"""

from __future__ import annotations

import contextlib
import importlib

import torch

MODULES = {
    "DDIMScheduler": "diffusers.schedulers.scheduling_ddim",
    "PNDMScheduler": "diffusers.schedulers.scheduling_pndm",
    "LCMScheduler": "diffusers.schedulers.scheduling_lcm",
}


class _Float64Torch:
    """``torch``, except that ``float32`` means ``float64``."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@contextlib.contextmanager
def _double_tables(module):
    original = module.torch
    module.torch = _Float64Torch()
    try:
        yield
    finally:
        module.torch = original


def scheduler(config: dict, *, float64: bool = True):
    """A diffusers scheduler from a config dict holding ``_class_name``."""
    name = config["_class_name"]
    module = importlib.import_module(MODULES[name])
    cls = getattr(module, name)
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    if not float64:
        return cls(**kwargs)
    with _double_tables(module):
        return cls(**kwargs)


def module_of(config: dict):
    return importlib.import_module(MODULES[config["_class_name"]])
