"""The families a method class declares (its ``FAMILY``): the sections of the docs' nav, of
the README's table and of ``diffsched list``, in this order."""

from __future__ import annotations

VARIANCE_PRESERVING = "Variance-preserving"
KARRAS = "σ-based (Karras)"
SOLVERS = "High-order solvers"
FLOW = "Flow matching"
COMFY = "ComfyUI samplers"
MORE = "More diffusers classes"

FAMILIES = (VARIANCE_PRESERVING, KARRAS, SOLVERS, FLOW, COMFY, MORE)
