"""CFG++ for every method: ``step(state, sample, guided, unconditional=u)``.

For every registered class: ``unconditional=prediction`` gives the plain step exactly
(bitwise, every call, eager NumPy and PyTorch and jitted JAX); for Euler and DDIM the
result equals the CFG++ paper's algorithm written out here (Chung et al. 2024, Alg. 1 and
its Euler form x_{i+1} = x̂_0(c) + σ_{i+1} ε̂(∅)); the history of a multistep method is
formed from the unconditional output (DPM-Solver++(2M) against ComfyUI's
dpmpp_2m_cfg_pp written out); ``ds.sample`` takes a guided model.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_engine import every

import diffsched as ds
from diffsched.methods import CLASSES

jax.config.update("jax_enable_x64", True)

CASES = every()
OWN_STEP = {"ScoreSdeVe"}  # a Langevin corrector: no x̂_0 / ε̂ split to guide
SHAPE = (2, 3, 4)


def _outputs(i, x):
    """A guided and an unconditional output that depend on the sample."""
    g = np.tanh(0.5 * x) + 0.1 * (i + 1)
    u = 0.7 * np.tanh(0.4 * x) - 0.05 * i
    return g, u


def _wide(sched, g):
    """``g`` as the method's model output (``prediction_shape``): Piflow's n_grid velocity
    blocks along the last axis, each its own function of g."""
    blocks = sched.prediction_shape(g.shape)[-1] // g.shape[-1]
    return np.concatenate([g * (1.0 - 0.1 * k) + 0.02 * k for k in range(blocks)], axis=-1)


def _run(sched, n, xp=np.asarray, mode="plain"):
    x = xp(np.random.default_rng(0).standard_normal(SHAPE))
    state, ts = sched.init(n, xp(np.zeros(SHAPE)), 5)
    for i, _ in enumerate(ts):
        g = xp(_wide(sched, np.tanh(0.5 * np.asarray(x)) + 0.1 * (i + 1)))
        if mode == "plain":
            state, x = sched.step(state, x, g)
        else:
            state, x = sched.step(state, x, g, unconditional=g)
    return np.asarray(x)


def test_every_class_is_covered():
    covered = {type(s).__name__ for s, _ in CASES.values()}
    assert {c.__name__ for c in CLASSES} - OWN_STEP <= covered


@pytest.mark.parametrize("name", sorted(CASES), ids=str)
def test_unconditional_equal_to_prediction_is_the_plain_step(name):
    sched, n = CASES[name]
    if type(sched).__name__ in OWN_STEP or sched.ADAPTIVE:  # adaptive: one output per call
        assert not sched.takes_unconditional
        state, _ = sched.init(n, np.zeros(SHAPE), 0)
        # our message, naming the class (not Python's "unexpected keyword argument")
        with pytest.raises(TypeError, match=rf"{type(sched).__name__}\.step takes no uncond"):
            sched.step(state, np.zeros(SHAPE), np.zeros(SHAPE), unconditional=np.zeros(SHAPE))
        return
    assert sched.takes_unconditional
    plain = _run(sched, n)
    same = _run(sched, n, mode="cfgpp")
    assert np.array_equal(plain, same)
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    assert np.array_equal(_run(sched, n, t), _run(sched, n, t, mode="cfgpp"))


@pytest.mark.parametrize("name", ["DDIM-eta-threshold", "DPMSolverMultistep", "ComfyEuler"])
def test_jitted_unconditional_equal_to_prediction(name):
    sched, n = CASES[name]
    plain = _run(sched, n)
    step = jax.jit(lambda s, x, g: sched.step(s, x, g, unconditional=g))
    x = jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE))
    state, ts = sched.init(n, jnp.zeros(SHAPE), 5)
    for i, _ in enumerate(ts):
        state, x = step(state, x, jnp.tanh(0.5 * x) + 0.1 * (i + 1))
    assert np.abs(np.asarray(x) - plain).max() <= 1e-12 * np.abs(plain).max()


def _cfgpp_run(sched, n):
    x = np.random.default_rng(0).standard_normal(SHAPE)
    state, ts = sched.init(n, np.zeros(SHAPE), 5)
    for i, _ in enumerate(ts):
        g, u = _outputs(i, x)
        state, x = sched.step(state, x, g, unconditional=u)
    return x


def test_ddim_is_the_papers_algorithm():
    """CFG++ DDIM (Chung et al. 2024, Alg. 1): x_{t-1} = sqrt(ᾱ') x̂_0(c) + sqrt(1-ᾱ') ε̂(∅)."""
    sched = ds.DDIM(clip_denoised_sample=False)
    n = 8
    got = _cfgpp_run(sched, n)
    _, ts = sched.init(n, np.zeros(SHAPE), 5)
    abar = sched.alphas_cumprod
    x = np.random.default_rng(0).standard_normal(SHAPE)
    ts = np.asarray(ts)
    for i, t in enumerate(ts):
        a = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < n else 1.0
        g, u = _outputs(i, x)
        x0 = (x - math.sqrt(1 - a) * g) / math.sqrt(a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * u
    assert np.abs(got - x).max() < 1e-12 * np.abs(x).max()
    assert np.abs(got - _run(sched, n)).max() > 1e-2  # not the plain method


def test_euler_is_the_papers_algorithm():
    """CFG++ Euler (k-diffusion form): x_{i+1} = x̂_0(c) + σ_{i+1} ε̂(∅) in x = x_0 + σ ε;
    Euler holds x / sqrt(σ² + 1)."""
    sched = ds.Euler(use_karras_sigmas=True)
    n = 8
    got = _cfgpp_run(sched, n)
    scale = sched.program(n).input_scale  # sqrt(σ² + 1), the final entry 1
    sig = np.sqrt(np.maximum(scale**2 - 1, 0.0))
    sig[-1] = 0.0
    held = np.random.default_rng(0).standard_normal(SHAPE)
    for i in range(n):
        g, u = _outputs(i, held)
        x = held * scale[i]
        x0 = x - sig[i] * g
        x = x0 + sig[i + 1] * u
        held = x / scale[i + 1]
    assert np.abs(got - held).max() < 1e-12 * np.abs(held).max()


def test_multistep_history_is_unconditional():
    """ComfyUI's dpmpp_2m_cfg_pp, written out: D_g + e^{-h}(x - D_u) - expm1(-h)/(2r)
    (D_g - D_u,old), on ComfyUI's DPM-Solver++(2M)."""
    sched = ds.ComfyDPMPP2M(scheduler="karras")
    n = 6
    got = _cfgpp_run(sched, n)
    prog = sched.program(n)
    scale = prog.input_scale  # held = x / sqrt(σ² + 1) (eps model)
    sig = np.sqrt(np.maximum(scale**2 - 1, 0.0))
    sig[-1] = 0.0
    held = np.random.default_rng(0).standard_normal(SHAPE)
    old_u = None
    for i in range(n):
        g, u = _outputs(i, held)
        x = held * scale[i]
        dg, du = x - sig[i] * g, x - sig[i] * u  # the denoised outputs
        if sig[i + 1] == 0:
            x = dg
        else:
            h = math.log(sig[i]) - math.log(sig[i + 1])
            x = dg + math.exp(-h) * (x - du)
            if old_u is not None:
                r = (math.log(sig[i - 1]) - math.log(sig[i])) / h
                x = x - math.expm1(-h) / (2 * r) * (dg - old_u)
        old_u = du
        held = x / scale[i + 1]
    assert np.abs(got - held).max() < 1e-12 * np.abs(held).max()


def test_sample_takes_a_guided_model():
    sched = ds.DPMSolverMultistep()
    noise = np.random.default_rng(3).standard_normal(SHAPE)

    def cond(x, t):
        return np.tanh(0.5 * x) + 0.001 * t

    def uncond(x, t):
        return 0.7 * np.tanh(0.4 * x)

    guided = ds.Guided(cond, uncond, 0.6)
    out = ds.sample(guided, sched, noise, 6)
    state, ts = sched.init(6, noise, 0)
    x = noise
    for t in ts:
        u = uncond(x, t)
        g = u + 0.6 * (cond(x, t) - u)
        state, x = sched.step(state, x, g, unconditional=u)
    assert np.array_equal(out, x)
    assert np.array_equal(ds.sample(None, sched, noise, 6, guidance=(cond, uncond, 0.6)), x)
    classic = ds.sample(ds.Guided(cond, uncond, 0.6, cfg_pp=False), sched, noise, 6)
    assert np.abs(classic - x).max() > 1e-3
    j = ds.sample(
        ds.Guided(lambda x, t: jnp.tanh(0.5 * x) + 0.001 * t, lambda x, t: 0.7 * jnp.tanh(0.4 * x),
                  0.6), sched, jnp.asarray(noise), 6, compile=True,
    )  # fmt: skip
    assert np.abs(np.asarray(j) - x).max() < 1e-12
    with pytest.raises(ValueError, match="not both"):
        ds.sample(guided, sched, noise, 6, guidance=(cond, uncond, 0.6))


def test_bad_unconditional():
    sched = ds.DDIM()
    state, _ = sched.init(4, np.zeros(SHAPE), 0)
    with pytest.raises(ValueError, match="unconditional must have the prediction's shape"):
        sched.step(state, np.zeros(SHAPE), np.zeros(SHAPE), unconditional=np.zeros((2, 3)))
    with pytest.raises(TypeError, match="floating-point unconditional"):
        sched.step(state, np.zeros(SHAPE), np.zeros(SHAPE), unconditional=np.zeros(SHAPE, int))
    state, _ = sched.init(4, np.zeros(SHAPE), 0, offsets=np.array([0, 1]).reshape(2, 1, 1))
    with pytest.raises(ValueError, match="unconditional= is not supported with per-element"):
        sched.step(state, np.zeros(SHAPE), np.zeros(SHAPE), unconditional=np.zeros(SHAPE))


def test_repaint_with_a_known_region():
    sched = ds.RePaint(eta=0.5)
    rng = np.random.default_rng(4)
    image, mask = rng.standard_normal(SHAPE), (rng.random(SHAPE) < 0.5).astype(float)
    start = rng.standard_normal(SHAPE)
    out = []
    for mode in ("plain", "same", "cfgpp"):
        x = start
        state, ts = sched.init(5, np.zeros(SHAPE), 2)
        for i, _ in enumerate(ts):
            g, u = _outputs(i, x)
            extra = {"same": {"unconditional": g}, "cfgpp": {"unconditional": u}}.get(mode, {})
            state, x = sched.step(state, x, g, original_image=image, mask=mask, **extra)
        out.append(x)
    assert np.array_equal(out[0], out[1])
    assert np.abs(out[2] - out[0]).max() > 1e-3


def test_guided_checks_its_parts():
    """A guidance scale that is NaN, a string or a bool, or a part that is no model, is
    refused when the Guided model is made (a NaN scale ran to a NaN image)."""
    toy = lambda x, t: 0.1 * x  # noqa: E731
    for scale, error in ((float("nan"), ValueError), ("7", TypeError), (True, TypeError)):
        with pytest.raises(error, match="scale"):
            ds.Guided(toy, toy, scale)
    with pytest.raises(TypeError, match="uncond must be a model"):
        ds.Guided(toy, 3, 2.0)
    with pytest.raises(ValueError, match="scale must be finite"):
        ds.sample(None, ds.DDIM(), np.zeros((1, 2)), 3, guidance=(toy, toy, float("inf")))
    assert ds.Guided(toy, toy, np.float32(2.0)).scale == 2.0  # NumPy scalars are numbers


def test_a_guided_step_refuses_another_configs_state():
    # as the plain step does (found by review: with unconditional= another config's state
    # was stepped as its own, Euler's step given to DPM-Solver++)
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    state, _ = ds.Euler().init(4, x)
    with pytest.raises(ValueError, match="another configuration's init made"):
        ds.DPMSolverMultistep().step(state, x, 0.1 * x, unconditional=0.1 * x)
    own, _ = ds.DPMSolverMultistep().init(4, x)
    _, out = ds.DPMSolverMultistep().step(own, x, 0.1 * x, unconditional=0.1 * x)
    assert out.shape == x.shape
