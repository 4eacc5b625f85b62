"""Schedules: training betas and ᾱ, noise levels σ, timestep spacings and shifts, published
grids (Align Your Steps, GITS) and ComfyUI's model sampling and schedules (``comfy``).

Everything here runs once, in ``init``, on the host, in float64 NumPy.
"""
