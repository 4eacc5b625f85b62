"""The methods: one module per paper or family, each holding only its math."""

from __future__ import annotations

from .ddim import DDIM
from .ddim_inverse import DDIMInverse
from .ddpm import DDPM
from .deis import DEIS
from .dpm2 import DPM2, DPM2Ancestral
from .dpmsolver import DPMSolverMultistep, DPMSolverMultistepInverse
from .dpmsolver_singlestep import DPMSolverSinglestep
from .edm import EDMEuler
from .edm_dpmsolver import EDMDPMSolverMultistep
from .euler import Euler, EulerAncestral
from .flow_match import FlowMatchEuler, FlowMatchHeun, FlowMatchLCM
from .heun import Heun
from .ipndm import IPNDM
from .ipndm_variable import VariableIPNDM
from .lcm import LCM
from .lms import LMS
from .pndm import PNDM
from .sasolver import SASolver
from .tcd import TCD
from .unipc import UniPC

ALL = (
    DDIM,
    PNDM,
    LCM,
    DDPM,
    Euler,
    EulerAncestral,
    Heun,
    DPM2,
    DPM2Ancestral,
    LMS,
    EDMEuler,
    IPNDM,
    TCD,
    SASolver,
    DDIMInverse,
    FlowMatchEuler,
    FlowMatchHeun,
    FlowMatchLCM,
    DPMSolverMultistep,
    DPMSolverMultistepInverse,
    DEIS,
    UniPC,
    DPMSolverSinglestep,
    EDMDPMSolverMultistep,
)
# methods diffusers does not have (their config's ``_class_name`` is our class name)
OURS_ONLY = (VariableIPNDM,)

# ComfyUI's deterministic samplers (issue 16), ComfyUI's model convention; not in diffusers
from .comfy_exponential import ComfyDPMPP2M, ComfyResMultistep, ComfyUniPC  # noqa: E402
from .comfy_multistep import (  # noqa: E402
    ComfyDEIS,
    ComfyGradientEstimation,
    ComfyIPNDM,
    ComfyIPNDMV,
    ComfyLMS,
)
from .comfy_rk import ComfyDPM2, ComfyDPMFast, ComfyEuler, ComfyHeun, ComfyHeunPP2  # noqa: E402

COMFY = (
    ComfyEuler,
    ComfyHeun,
    ComfyDPM2,
    ComfyHeunPP2,
    ComfyDPMFast,
    ComfyLMS,
    ComfyIPNDM,
    ComfyIPNDMV,
    ComfyGradientEstimation,
    ComfyDEIS,
    ComfyDPMPP2M,
    ComfyResMultistep,
    ComfyUniPC,
)
OURS_ONLY = (*OURS_ONLY, *COMFY)

__all__ = [
    "ALL",
    "DDIM",
    "DDPM",
    "DEIS",
    "DPM2",
    "IPNDM",
    "LCM",
    "LMS",
    "OURS_ONLY",
    "PNDM",
    "TCD",
    "DDIMInverse",
    "DPM2Ancestral",
    "DPMSolverMultistep",
    "DPMSolverMultistepInverse",
    "DPMSolverSinglestep",
    "EDMDPMSolverMultistep",
    "EDMEuler",
    "Euler",
    "EulerAncestral",
    "FlowMatchEuler",
    "FlowMatchHeun",
    "FlowMatchLCM",
    "Heun",
    "SASolver",
    "UniPC",
    "VariableIPNDM",
    # ComfyUI's samplers
    "COMFY",
    *(cls.__name__ for cls in COMFY),
]
