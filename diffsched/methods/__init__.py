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

from .cogvideox import CogVideoXDDIM, CogVideoXDPM  # isort: skip  (issue 18's block)
from .consistency import SCM, CMStochasticIterative  # isort: skip
from .karras_ve import KarrasVe  # isort: skip
from .parallel import DDIMParallel, DDPMParallel  # isort: skip
from .repaint import RePaint  # isort: skip
from .score_sde import ScoreSdeVe  # isort: skip
from .unclip import UnCLIP  # isort: skip
from .wuerstchen import DDPMWuerstchen  # isort: skip

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
# more of diffusers' classes (issue 18)
ALL += (
    ScoreSdeVe,
    KarrasVe,
    DDPMWuerstchen,
    UnCLIP,
    CMStochasticIterative,
    SCM,
    DDIMParallel,
    DDPMParallel,
    CogVideoXDDIM,
    CogVideoXDPM,
    RePaint,
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
    "FlowMatchEuler",
    "FlowMatchHeun",
    "FlowMatchLCM",
    "Heun",
    "SASolver",
    "UniPC",
    "VariableIPNDM",
]
__all__ += ["SCM", "CMStochasticIterative", "DDPMWuerstchen", "KarrasVe", "ScoreSdeVe", "UnCLIP"]
__all__ += ["CogVideoXDDIM", "CogVideoXDPM", "DDIMParallel", "DDPMParallel", "RePaint"]
