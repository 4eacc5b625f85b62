"""ParaDiGMS' schedulers: Shih, Belkhale, Ermon, Sadigh & Anari 2023, "Parallel Sampling of
Diffusion Models".

ParaDiGMS runs the steps of a sampler in parallel by Picard iteration over a window of the
chain; diffusers' ``DDIMParallelScheduler`` and ``DDPMParallelScheduler`` add a batched
``batch_step_no_noise`` for that iteration. Their ordinary ``step``, the one a sequential
loop calls, is DDIM's (Song et al. 2020, eq. 12 and 16; :mod:`diffsched.methods.ddim`) and
DDPM's (Ho et al. 2020, eq. 7; :mod:`diffsched.methods.ddpm`), with the same config keys:
these classes are those methods under the parallel classes' names, so that a model whose
config names them loads. The parallel (Picard) iteration itself is not a scheduler loop and
is not provided.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.scheduler import document
from .ddim import DDIM
from .ddpm import DDPM


@document
@dataclass(frozen=True, kw_only=True)
class DDIMParallel(DDIM):
    """DDIM under ParaDiGMS' class name (Shih et al. 2023): the same sequential step.

    First order; one model call per step; deterministic for η = 0, stochastic otherwise.
    diffusers: ``DDIMParallelScheduler`` (its ``step``; ``batch_step_no_noise`` is not
    provided). Not to be confused with DDPM (``DDPMParallel``).

    ``init(..., strength=s)``: image-to-image, as ``DDIM``.
    """

    DIFFUSERS_CLASS = "DDIMParallelScheduler"


@document
@dataclass(frozen=True, kw_only=True)
class DDPMParallel(DDPM):
    """DDPM under ParaDiGMS' class name (Shih et al. 2023): the same sequential step.

    First order; one model call per step; stochastic (no noise at timestep 0). diffusers:
    ``DDPMParallelScheduler`` (its ``step``; ``batch_step_no_noise`` is not provided). Not
    to be confused with DDIM (``DDIMParallel``).

    ``init(..., timesteps=[...])`` and ``init(..., strength=s)`` as ``DDPM``.
    """

    DIFFUSERS_CLASS = "DDPMParallelScheduler"
