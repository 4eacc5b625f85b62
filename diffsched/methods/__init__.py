"""The methods: one module per paper or family, each holding only its math."""

from __future__ import annotations

from .ddim import DDIM
from .euler import Euler, EulerAncestral
from .lcm import LCM
from .pndm import PNDM

ALL = (DDIM, PNDM, LCM, Euler, EulerAncestral)

__all__ = ["ALL", "DDIM", "LCM", "PNDM", "Euler", "EulerAncestral"]
