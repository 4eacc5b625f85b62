"""diffsched: functional diffusion-model schedulers for NumPy, PyTorch and JAX.

A scheduler is an immutable configuration; ``init`` returns a loop state and the
timesteps to call the model at, and ``step`` is a pure function from (state, sample,
prediction) to (state, previous sample)::

    import diffsched as ds

    sched = ds.DDIM()
    state, timesteps = sched.init(num_steps, sample_template, key)
    for t in timesteps:
        state, sample = sched.step(state, sample, model(sample, t))
"""

from .base import Scheduler
from .config import SCHEDULERS, from_config
from .ddim import DDIM, DDIMState
from .lcm import LCM, LCMState
from .pndm import PNDM, PNDMState
from .sampling import sample

__all__ = [
    "DDIM",
    "LCM",
    "PNDM",
    "SCHEDULERS",
    "DDIMState",
    "LCMState",
    "PNDMState",
    "Scheduler",
    "from_config",
    "sample",
]
__version__ = "0.1.0"
