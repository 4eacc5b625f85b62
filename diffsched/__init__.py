"""diffsched: functional diffusion-model schedulers for NumPy, PyTorch and JAX.

A scheduler is an immutable configuration; ``init`` returns a loop state and the
timesteps to call the model at, and ``step`` is a pure function from (state, sample,
prediction) to (state, next sample)::

    import diffsched as ds

    sched = ds.DDIM()
    state, timesteps = sched.init(num_steps, sample_template, key)
    sample = noise * sched.init_noise_scale(num_steps)
    for t in timesteps:
        state, sample = sched.step(state, sample, model(sample, t))

Rooms: ``core`` (the contract, the option declarations, the step engine), ``schedules``
(betas, σ grids, spacings), ``methods`` (one module per paper), ``interop`` (diffusers
configs), ``exact`` (exact models and the ODE reference), ``sampling`` and ``cli``.
"""

from . import comfy
from .comfy import from_comfy
from .core.engine import EngineState, Tableau
from .core.per_element import element_key
from .core.scheduler import Scheduler
from .grids import load_grid, named_grid, save_grid
from .interop.config import from_config
from .methods import *  # noqa: F403
from .methods import ALL as _ALL
from .methods import CLASSES as _CLASSES
from .sampling import Guided, diffusion_forcing, sample
from .tuning import tune
from .tuning_coefficients import load_tuned, save_tuned

SCHEDULERS = {cls.DIFFUSERS_CLASS: cls for cls in _ALL}

__all__ = [
    "SCHEDULERS",
    "EngineState",
    "Guided",
    "Scheduler",
    "Tableau",
    "comfy",
    "from_comfy",
    "diffusion_forcing",
    "element_key",
    "from_config",
    "load_grid",
    "named_grid",
    "load_tuned",
    "sample",
    "save_grid",
    "save_tuned",
    "tune",
    *(cls.__name__ for cls in _CLASSES),
]
__version__ = "0.2.0"


def __getattr__(name: str):
    # the diffusers adapter, on first use (its module imports neither diffusers nor torch)
    if name in ("DiffusersScheduler", "to_diffusers"):
        from . import diffusers as _adapter

        return getattr(_adapter, name)
    raise AttributeError(f"module 'diffsched' has no attribute {name!r}")
