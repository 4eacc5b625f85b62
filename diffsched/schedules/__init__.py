"""Schedules: training betas and ᾱ, noise levels σ, timestep spacings and shifts.

Everything here runs once, in ``init``, on the host, in float64 NumPy.
"""
