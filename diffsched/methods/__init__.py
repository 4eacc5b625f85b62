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
from .flow_map import FlowMapEuler
from .flow_match import FlowMatchEuler, FlowMatchHeun, FlowMatchLCM
from .helios import Helios, HeliosDMD
from .heun import Heun
from .ipndm import IPNDM
from .ipndm_variable import VariableIPNDM
from .lcm import LCM
from .lms import LMS
from .ltx_ancestral import LTXEulerAncestralRF
from .minimax_h3 import MiniMaxH3
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
# diffusers' newer flow schedulers (issue 18)
ALL += (
    LTXEulerAncestralRF,
    FlowMapEuler,
    MiniMaxH3,
    Helios,
    HeliosDMD,
)
# methods diffusers does not have (their config's ``_class_name`` is our class name)
OURS_ONLY = (VariableIPNDM,)

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
    "FlowMapEuler",
    "FlowMatchEuler",
    "FlowMatchHeun",
    "FlowMatchLCM",
    "Helios",
    "HeliosDMD",
    "Heun",
    "LTXEulerAncestralRF",
    "MiniMaxH3",
    "SASolver",
    "UniPC",
    "VariableIPNDM",
]
