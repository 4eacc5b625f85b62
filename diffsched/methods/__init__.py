"""The methods: one module per paper or family, each holding only its math."""

from __future__ import annotations

from .ddim import DDIM
from .lcm import LCM
from .pndm import PNDM

ALL = (DDIM, PNDM, LCM)

__all__ = ["ALL", "DDIM", "LCM", "PNDM"]
