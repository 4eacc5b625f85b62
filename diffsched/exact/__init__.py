"""Exact models (denoisers known in closed form) and the exact probability-flow ODE reference."""
