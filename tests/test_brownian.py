"""Brownian-tree noise (``noise_type="brownian"``; :mod:`diffsched.core.brownian`).

The law of the path (mean, variance, independence of disjoint intervals, additivity), its
consistency across step counts, equality across NumPy, PyTorch and JAX, jitted against
eager, and that ``noise=`` still replaces the draw. Observed figures (100 000 paths, seed
1234): the variance of a raw increment within 1.1 % of |Δτ| (0.992-1.011 over five
intervals from 3e-5 to 1 wide), |mean| <= 0.003 sqrt|Δτ|, the largest correlation of
disjoint increments 0.007; additivity to 4.4e-16; NumPy, PyTorch and jitted JAX equal to
1e-12 (float64).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import diffsched as ds
from diffsched.core import brownian, engine
from diffsched.core.scheduler import BrownianNoise, _brownian_noise
from diffsched.methods import CLASSES

jax.config.update("jax_enable_x64", True)

PATHS = 100_000
SEED = np.asarray(1234, dtype=np.int32)
LIKE = np.zeros(PATHS)
E = len(engine.COEF_COLUMNS)


def w(t: float) -> np.ndarray:
    return brownian.value_host(brownian.tree_seed(SEED), t, LIKE, np.float64)


@pytest.mark.parametrize(
    "t0, t1", [(0.0, 1.0), (0.3, 0.7), (0.9, 0.2), (0.0501, 0.05), (0.123456, 0.123456 + 3e-5)]
)
def test_raw_increments_have_mean_zero_and_variance_the_gap(t0, t1):
    d = w(t1) - w(t0)
    gap = abs(t1 - t0)
    tol = 5 * math.sqrt(2 / PATHS)  # five standard errors of a sample variance: 2.2 %
    assert abs(d.var() / gap - 1) < tol, d.var() / gap
    assert abs(d.mean()) < 5 * math.sqrt(gap / PATHS), d.mean()
    z = brownian.increment(brownian.tree_seed(SEED), t0, t1, LIKE)
    np.testing.assert_allclose(z, (w(t1) - w(t0)) / math.sqrt(gap), rtol=1e-12, atol=1e-12)


def test_values_are_brownian_marginals_and_start_at_zero():
    for t in (0.25, 0.6180339, 1.0):
        assert abs(w(t).var() / t - 1) < 5 * math.sqrt(2 / PATHS)
    assert np.all(w(0.0) == 0)


def test_disjoint_intervals_are_independent():
    points = [0.95, 0.6, 0.4, 0.39, 0.1, 0.0]
    z = [
        brownian.increment(brownian.tree_seed(SEED), a, b, LIKE)
        for a, b in itertools.pairwise(points)
    ]
    corr = np.corrcoef(np.stack(z))
    off = corr[~np.eye(len(z), dtype=bool)]
    assert np.abs(off).max() < 5 / math.sqrt(PATHS), np.abs(off).max()  # 0.016
    for zi in z:
        assert abs(zi.std() - 1) < 0.012


def test_increments_add_up():
    a, b, c = 0.83, 0.4172, 0.0137
    whole = w(c) - w(a)
    parts = (w(b) - w(a)) + (w(c) - w(b))
    assert np.abs(whole - parts).max() < 1e-14


def test_one_seed_gives_one_path_and_seeds_differ():
    other = brownian.value_host(brownian.tree_seed(np.asarray(7, np.int32)), 0.5, LIKE, np.float64)
    again = w(0.5)
    assert np.array_equal(again, w(0.5))
    assert abs(np.corrcoef(other, again)[0, 1]) < 5 / math.sqrt(PATHS)


def _noises(sched, num_steps, shape=(4000,)):
    """The Brownian draw of every call of a loop, and the call's tree levels."""
    state, ts = sched.init(num_steps, np.zeros(shape), 3)
    x = np.zeros(shape)
    out, levels = [], []
    for _ in ts:
        z = _brownian_noise(state, x)
        levels.append(tuple(engine.extra_row(state)[1:3]))
        out.append(z)
        state, _ = sched.step(state, x, np.zeros(shape), noise=z if z is not None else None)
    return out, levels


def test_consistent_across_step_counts():
    """DDPM's 5-step levels are among its 10-step ones: the coarse call's raw increment is
    the sum of the fine calls' over the same interval (one path)."""
    sched = ds.DDPM(noise_type="brownian")
    coarse, lc = _noises(sched, 5)
    fine, lf = _noises(sched, 10)
    raw_f = {(a, b): z * math.sqrt(abs(b - a)) for z, (a, b) in zip(fine, lf, strict=True)
             if z is not None}  # fmt: skip
    checked = 0
    for z, (a, b) in zip(coarse, lc, strict=True):
        if z is None:  # the last call draws nothing
            assert a == b
            continue
        inside = [v for (p, q), v in raw_f.items() if p != q and b <= q < p <= a]
        assert len(inside) >= 2
        np.testing.assert_allclose(sum(inside), z * math.sqrt(a - b), rtol=0, atol=1e-12)
        checked += 1
    assert checked == 4


def _loop(sched, xp_array, num_steps=6, **step_kwargs):
    """A loop on a fixed linear model; float64; returns NumPy."""
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 3, 4))
    state, ts = sched.init(num_steps, xp_array(np.zeros_like(x0)), 11)
    x = xp_array(x0)
    for _ in ts:
        state, x = sched.step(state, x, 0.3 * x, **step_kwargs)
    return np.asarray(x.tolist() if hasattr(x, "tolist") else x, dtype=np.float64)


CASES = [
    ds.EulerAncestral(noise_type="brownian"),
    ds.DPMSolverMultistep(algorithm_type="sde-dpmsolver++", noise_type="brownian"),
]


@pytest.mark.parametrize("sched", CASES, ids=lambda s: type(s).__name__)
def test_equal_across_backends_and_jitted_equals_eager(sched):
    """NumPy and PyTorch eagerly (levels read on the host), JAX under ``jax.jit`` (levels
    gathered from the table, eq. 2's branch by ``where``): one path."""
    ref = _loop(sched, np.asarray)
    t = _loop(sched, lambda a: torch.tensor(a, dtype=torch.float64))
    scale = np.abs(ref).max()
    assert np.abs(t - ref).max() / scale < 1e-12
    gauss = _loop(dataclasses.replace(sched, noise_type="gaussian"), np.asarray)
    assert np.abs(gauss - ref).max() / scale > 1e-2  # another noise altogether

    step = jax.jit(sched.step)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 3, 4))
    state, ts = sched.init(6, jnp.zeros(x0.shape), 11)
    x = jnp.asarray(x0)
    for _ in ts:
        state, x = step(state, x, 0.3 * x)
    assert np.abs(np.asarray(x) - ref).max() / scale < 1e-12


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_torch_compile_draws_the_numpy_path():
    """torch.compile(step, fullgraph=True) takes the traced path (eq. 2's branch by
    ``where``) and draws what NumPy draws. It did not: torch 2.13's inductor folded the
    mixer's Python-int factors into a range analysis that saturated the int32 product of a
    node's counter ((k >> d) + 2^d, whose range it knows) instead of wrapping it; the
    results differed by 51 (of 90)."""
    sched = CASES[0]
    ref = _loop(sched, np.asarray)
    torch._dynamo.reset()
    step = torch.compile(sched.step, fullgraph=True)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 3, 4))
    state, ts = sched.init(6, torch.zeros(x0.shape, dtype=torch.float64), 11)
    x = torch.tensor(x0)
    for _ in ts:
        state, x = step(state, x, 0.3 * x)
    assert np.abs(x.numpy() - ref).max() / np.abs(ref).max() < 1e-12  # observed 4e-17


def test_noise_still_overrides():
    rng = np.random.default_rng(1)
    zs = [rng.standard_normal((2, 3, 4)) for _ in range(6)]
    out = []
    for noise_type in ("brownian", "gaussian"):
        sched = ds.EulerAncestral(noise_type=noise_type)
        state, ts = sched.init(6, np.zeros((2, 3, 4)), 11)
        x = np.ones((2, 3, 4))
        for i, _ in enumerate(ts):
            state, x = sched.step(state, x, 0.3 * x, noise=zs[i])
        out.append(x)
    assert np.array_equal(out[0], out[1])


def _stochastic(cls):
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in dict(eta=1.0, s_churn=1.0, stochastic_sampling=True, tau=1.0).items()
          if k in names}  # fmt: skip
    if "algorithm_type" in names and cls is not ds.SASolver:
        kw["algorithm_type"] = "sde-dpmsolver++"
    return cls(noise_type="brownian", **kw)


# Restart's K jumps revisit one interval: it refuses noise_type="brownian" (test_restart);
# an adaptive class has no program (its levels are decided as it runs: test_adaptive)
BROWNIAN_CLASSES = [cls for cls in CLASSES
                    if issubclass(cls, BrownianNoise) and cls.__name__ != "Restart"
                    and not cls.ADAPTIVE]  # fmt: skip
# DPM-Solver++ SDE draws over (σ_i, σ_m) and (σ_i, σ_{i+1}) by design (k-diffusion's
# dpmpp_sde: the second draw shares the path of the first)
OVERLAPPING = {"DPMSolverSDE"}


@pytest.mark.parametrize("cls", BROWNIAN_CLASSES, ids=lambda c: c.__name__)
def test_every_stochastic_class_draws_over_disjoint_levels(cls):
    sched = _stochastic(cls)
    assert not sched.deterministic
    program = sched.program(8)
    n = program.num_calls
    levels = program.coefs[:n, E + 1 : E + 3]
    draws = program.coefs[:n, engine.COEF_COLUMNS.index("out_noise")] != 0
    assert draws.any()
    lo, hi = levels[draws].min(axis=1), levels[draws].max(axis=1)
    assert np.all((lo >= 0) & (hi <= 1)) and np.all(hi > lo)  # every draw a real increment
    order = np.argsort(lo)
    disjoint = bool(np.all(lo[order][1:] >= hi[order][:-1]))
    assert disjoint != (cls.__name__ in OVERLAPPING)
    # the loop runs, finite, and differs from the Gaussian draws
    x = _loop(sched, np.asarray, num_steps=4)
    assert np.isfinite(x).all()


def test_every_stochastic_class_takes_the_option():
    """A class that can draw noise and runs the engine's step declares noise_type."""
    own_step = {"RePaint", "ScoreSdeVe"}  # their steps draw their own several normals
    for cls in CLASSES:
        if cls.__name__ in own_step or issubclass(cls, BrownianNoise):
            continue
        names = {f.name for f in dataclasses.fields(cls)}
        assert not ({"eta", "s_churn", "stochastic_sampling", "tau"} & names), cls.__name__
        assert cls().deterministic, cls.__name__


def test_refused_where_it_cannot_apply():
    sched = ds.DDPM(noise_type="brownian")
    with pytest.raises(ValueError, match="noise_type='brownian' is not supported with per-elem"):
        sched.init(4, np.zeros((2, 3)), 0, offsets=np.array([0, 1]).reshape(2, 1))
    # a per-element state of the Gaussian config, stepped by the Brownian one
    state, _ = sched.replace(noise_type="gaussian").init(
        4, np.zeros((2, 3)), 0, offsets=np.array([0, 1]).reshape(2, 1)
    )
    with pytest.raises(ValueError, match="noise_type='brownian' is not supported with per-elem"):
        sched.step(state, np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="noise_type"):
        ds.DDPM(noise_type="pink")


def test_float32_loops_draw_the_float64_noise():
    """The leaf coordinates of each call's levels are computed in float64 in init, so a
    float32 loop evaluates the path where a float64 one does (a level rounded to float32
    would move a draw by about sqrt(3e-8 / Δτ) ~ 5e-4): the draws agree to float32
    rounding (observed 7.2e-6)."""
    sched = ds.DPMSolverSDE(use_karras_sigmas=True)
    out = {}
    for dtype in (np.float32, np.float64):
        state, ts = sched.init(7, np.zeros(1000, dtype), 4)
        draws = []
        for _ in ts:
            z = _brownian_noise(state, np.zeros(1000, dtype))
            if z is not None:
                draws.append(np.asarray(z, np.float64))
            state, _ = sched.step(state, np.zeros(1000, dtype), np.zeros(1000, dtype),
                                  noise=z)  # fmt: skip
        out[dtype] = np.stack(draws)
    assert np.abs(out[np.float32] - out[np.float64]).max() < 5e-5
