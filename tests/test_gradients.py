"""Loops are differentiable: PyTorch autograd and ``jax.grad`` through every class (and
through the diffusers adapter).

Guidance by the gradient of a loss on the final sample, distillation and inversion need
d(final sample)/d(noise) through the scheduler. Every class with a fixed program (all but
the adaptive samplers, whose accepted steps depend on the sample) is run for a few calls
on a toy model in float64; the directional derivative of ``sum(y**2)`` from the backend's
reverse mode must equal a central finite difference. Stochastic steps use a fixed draw
(given noise on PyTorch, a fixed key on JAX), so the loop is a smooth function of its
input. The bound is 1e-6 of the derivative's scale |g|·|d| (so that a derivative that is
itself near zero is not judged relative to its own rounding) plus 1e-8 |loss| (the
central difference's rounding, ~2e-10 |loss| at h = 1e-6); the largest difference seen
is 0.017 of it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_differential import NAMES
from test_models import jax_x64

import diffsched as ds

CLASSES = [c for c in ds.methods.CLASSES if not c.ADAPTIVE]
SHAPE = (2, 2, 3)
_W = np.random.default_rng(0).standard_normal((3, 3)) / 3
_X = np.random.default_rng(1).standard_normal(SHAPE)
_D = np.random.default_rng(2).standard_normal(SHAPE)
H = 1e-6


def _loss(sched, x, xp, tile, key):
    """sum(y**2) of a 4-call loop from x (the template held out of the derivative)."""
    state, timesteps = sched.init(4, x.detach() if xp is torch else x, key)
    w = xp.asarray(_W) if xp is not torch else torch.from_numpy(_W)
    y = x
    for _ in range(len(timesteps)):
        m = tile(xp.tanh(y @ w))
        kwargs = {}
        if xp is torch and not sched.deterministic:
            kwargs["noise"] = torch.full_like(y, 0.3)
        state, y = sched.step(state, y, m, **kwargs)
    return (y**2).sum()


def _tiler(sched, xp):
    k = sched.prediction_shape(SHAPE)[-1] // SHAPE[-1]  # Piflow: k velocities per channel
    if k == 1:
        return lambda m: m
    if xp is torch:
        return lambda m: m.repeat(1, 1, k)
    return lambda m: xp.tile(m, (1, 1, k))


def _check(directional, fd, scale, loss):
    """|reverse mode - central difference| within 1e-6 of the derivative's scale plus
    1e-8 |loss|: the difference's rounding is ~eps |loss| / H = 2e-10 |loss|, which
    dominates where the derivative is small against the loss."""
    bound = 1e-6 * scale + 1e-8 * abs(loss)
    assert np.isfinite(directional) and abs(directional - fd) <= bound, (directional, fd, bound)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_torch_autograd_matches_finite_differences(cls):
    sched = cls()
    tile = _tiler(sched, torch)
    x = torch.tensor(_X, requires_grad=True)
    loss = _loss(sched, x, torch, tile, 0)
    loss.backward()
    g = x.grad
    d = torch.from_numpy(_D)
    with torch.no_grad():
        plus = _loss(sched, torch.tensor(_X) + H * d, torch, tile, 0)
        minus = _loss(sched, torch.tensor(_X) - H * d, torch, tile, 0)
    fd = float((plus - minus) / (2 * H))
    _check(float((g * d).sum()), fd, float((g.abs() * d.abs()).sum()), float(loss.detach()))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_jax_grad_matches_finite_differences(cls):
    import jax
    import jax.numpy as jnp

    sched = cls()
    tile = _tiler(sched, jnp)
    with jax_x64():
        key = jax.random.key(0)

        def loss(x):
            return _loss(sched, x, jnp, tile, key)

        x = jnp.asarray(_X)
        d = jnp.asarray(_D)
        g = jax.grad(loss)(x)
        fd = float((loss(x + H * d) - loss(x - H * d)) / (2 * H))
        scale = float((jnp.abs(g) * jnp.abs(d)).sum())
        _check(float((g * d).sum()), fd, scale, float(loss(x)))


@pytest.mark.parametrize("name", NAMES)
def test_adapter_step_is_differentiable(name):
    """Through the diffusers adapter as a pipeline drives it (``init_noise_sigma``,
    ``scale_model_input``, ``step`` with a generator), as diffusers' own step is."""
    from diffsched.diffusers import to_diffusers

    adapter = to_diffusers(getattr(ds, name)())
    w = torch.from_numpy(_W)

    def loss(x):
        adapter.set_timesteps(4)
        y = x * adapter.init_noise_sigma
        generator = torch.Generator().manual_seed(0)
        for t in adapter.timesteps:
            m = torch.tanh(adapter.scale_model_input(y, t) @ w)
            y = adapter.step(m, t, y, generator=generator).prev_sample
        return (y**2).sum()

    x = torch.tensor(_X, requires_grad=True)
    value = loss(x)
    value.backward()
    d = torch.from_numpy(_D)
    with torch.no_grad():
        fd = float((loss(x + H * d) - loss(x - H * d)) / (2 * H))
    scale = float((x.grad.abs() * d.abs()).sum())
    _check(float((x.grad * d).sum()), fd, scale, float(value.detach()))
