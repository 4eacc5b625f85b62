"""Restart sampling (Xu et al. 2023, Alg. 1) on the kit: without a restart it is Heun; with
one it is Alg. 1 written out (the same jumps' noise); every backend and compile through the
registry's generic tests."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import diffsched as ds
from diffsched.schedules import sigmas as sigma_schedules

_G = np.random.default_rng(3)
_X = _G.standard_normal((2, 3, 8))
_W = _G.standard_normal((8, 8)) / 8**0.5


def model(x, t):
    return np.tanh(x @ _W + 1e-3 * np.asarray(t, dtype=np.float64))


def test_without_a_restart_it_is_heun():
    ours = ds.sample(model, ds.Restart(scheduler="karras"), _X, 12)  # N < 20: no restart
    heun = ds.sample(model, ds.ComfyHeun(scheduler="karras"), _X, 12)
    np.testing.assert_array_equal(ours, heun)


@pytest.mark.parametrize(("n", "options"), [(20, {}), (8, {"restart_steps": 3,
                         "restart_times": 2, "restart_min": 0.5, "restart_max": 3.0})])  # fmt: skip
def test_alg_1_written_out(n, options):
    """Heun on the main grid; at the level nearest t_min, K times: add noise up to the
    level nearest t_max, Heun down a Karras grid of N_restart steps."""
    sched = ds.Restart(scheduler="karras", **options)
    ms = sched.model_sampling
    sig = sched.sigmas(n)
    per_pass, times = sched.plan(n)
    low = int(np.argmin(np.abs(sig - sched.restart_min)))
    high = int(np.argmin(np.abs(sig - sched.restart_max)))
    inner = sigma_schedules.karras(sig[low], sig[high], per_pass + 1)
    noises = [_G.standard_normal(_X.shape) for _ in range(times)]

    def denoise(x, s):  # ComfyUI's eps model: input x / sqrt(σ² + 1), x̂_0 = x - σ ε
        return x - s * model(x / math.sqrt(s**2 + 1), ms.timestep(np.array([s]))[0])

    def heun(x, s, s_next):
        d = (x - denoise(x, s)) / s
        x_e = x + (s_next - s) * d
        if s_next == 0:
            return x_e
        return x + (s_next - s) * (d + (x_e - denoise(x_e, s_next)) / s_next) / 2

    x = _X * math.sqrt(sig[0] ** 2 + 1)  # ComfyUI's start at σ_max
    for i in range(n):
        x = heun(x, sig[i], sig[i + 1])
        if i + 1 == low:
            for k in range(times):
                x = x + math.sqrt(sig[high] ** 2 - sig[low] ** 2) * noises[k]
                for s, s_next in itertools.pairwise(inner):
                    x = heun(x, s, s_next)
    state, ts = sched.init(n, _X)
    y = _X * sched.init_noise_scale(n)
    noise_at = np.flatnonzero(sched.program(n).held.noise)
    assert len(noise_at) == times
    for k, t in enumerate(ts):
        extra = {"noise": noises[list(noise_at).index(k)]} if k in noise_at else {}
        state, y = sched.step(state, y, model(y, t), **extra)
    assert len(ts) == 2 * (n + times * per_pass) - 1
    np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-12)


def test_options_are_checked():
    with pytest.raises(ValueError, match="restart_steps and restart_times"):
        ds.Restart(restart_steps=3)
    with pytest.raises(ValueError, match="restart_min"):
        ds.Restart(restart_min=3.0, restart_max=2.0)


def test_brownian_noise_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="revisit one interval"):
        ds.Restart(noise_type="brownian")
