"""The methods: one module per paper or family, each holding only its math."""

from __future__ import annotations

from .ddim import DDIM
from .ddim_inverse import DDIMInverse
from .ddpm import DDPM
from .dpm2 import DPM2, DPM2Ancestral
from .edm import EDMEuler
from .euler import Euler, EulerAncestral
from .heun import Heun
from .ipndm import IPNDM
from .lcm import LCM
from .lms import LMS
from .pndm import PNDM
from .sasolver import SASolver
from .tcd import TCD

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
)

__all__ = [
    "ALL",
    "DDIM",
    "DDIMInverse",
    "DDPM",
    "DPM2",
    "IPNDM",
    "LCM",
    "LMS",
    "PNDM",
    "TCD",
    "SASolver",
    "DPM2Ancestral",
    "EDMEuler",
    "Euler",
    "EulerAncestral",
    "Heun",
]
