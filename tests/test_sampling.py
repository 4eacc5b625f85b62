"""``ds.sample``: the loop itself, callbacks, progress, the compiled JAX loop, and the
accuracy of deterministic schedulers against the exact probability-flow ODE solution."""

from __future__ import annotations

import functools
import itertools
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import diffsched as ds  # noqa: E402
from diffsched.exact import models, reference  # noqa: E402

GMM_NOISE = np.random.default_rng(0).standard_normal((16, 2))
DIGITS_NOISE = np.random.default_rng(1).standard_normal((3, 1, 8, 8))

# (scheduler, num_steps, init options)
CASES = {
    "DDIM": (ds.DDIM(), 10, {}),
    "DDIM-noclip": (ds.DDIM(clip_denoised_sample=False), 10, {}),
    "DDIM-eta": (ds.DDIM(eta=0.7, clip_denoised_sample=False), 10, {}),
    "PNDM": (ds.PNDM(), 8, {}),
    "PNDM-reduce_warmup": (ds.PNDM(reduce_warmup=True), 8, {}),
    "LCM": (ds.LCM(), 4, {}),
    "LCM-strength": (ds.LCM(), 4, {"strength": 0.5}),
}
STOCHASTIC = ("DDIM-eta", "LCM", "LCM-strength")


def gmm_model(sched):
    return models.make_model("gmm", sched.alphas_cumprod, sched.prediction_type)


def hand_loop(model, sched, x, num_steps, key=0, **init_options):
    """The loop written out: init, then one model call and one step per timestep.
    Returns (final sample, timesteps, every intermediate sample)."""
    state, timesteps = sched.init(num_steps, x, key, **init_options)
    trail = []
    for t in timesteps:
        state, x = sched.step(state, x, model(x, t))
        trail.append(x)
    return x, timesteps, trail


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# -- the eager loop -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_sample_equals_hand_written_loop(name):
    sched, n, opts = CASES[name]
    model = gmm_model(sched)
    noise = GMM_NOISE.copy()
    expected, _, _ = hand_loop(model, sched, GMM_NOISE, n, 3, **opts)
    got = ds.sample(model, sched, noise, n, 3, **opts)
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.float64 and got.shape == GMM_NOISE.shape
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(noise, GMM_NOISE)  # the input is not modified
    assert not np.allclose(got, GMM_NOISE)  # the loop did move the sample


def test_lcm_strength_is_passed_to_init():
    sched = ds.LCM()
    model = gmm_model(sched)
    seen = []
    half = ds.sample(
        model, sched, GMM_NOISE, 4, 0, strength=0.5, callback=lambda i, t, x: seen.append(int(t))
    )
    full = ds.sample(model, sched, GMM_NOISE, 4, 0)
    _, ts_half = sched.init(4, GMM_NOISE, 0, strength=0.5)
    assert seen == [int(t) for t in ts_half]
    assert max(seen) == 499  # the last 25 of the 50 original steps: 25 * 20 - 1
    assert not np.allclose(half, full)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_key_reproducible_and_matters(name):
    sched, n, opts = CASES[name]
    assert not sched.deterministic
    model = gmm_model(sched)
    a = ds.sample(model, sched, GMM_NOISE, n, 5, **opts)
    b = ds.sample(model, sched, GMM_NOISE, n, 5, **opts)
    c = ds.sample(model, sched, GMM_NOISE, n, 6, **opts)
    np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(a - c)) > 1e-3


@pytest.mark.parametrize("name", ["DDIM", "PNDM", "PNDM-reduce_warmup"])
def test_deterministic_key_does_not_matter(name):
    sched, n, _ = CASES[name]
    assert sched.deterministic
    model = gmm_model(sched)
    np.testing.assert_array_equal(
        ds.sample(model, sched, GMM_NOISE, n, 0), ds.sample(model, sched, GMM_NOISE, n, 12345)
    )


@pytest.mark.parametrize("name", ["DDIM-eta", "PNDM", "LCM-strength"])
def test_callback_gets_each_step(name):
    sched, n, opts = CASES[name]
    model = gmm_model(sched)
    calls = []
    out = ds.sample(
        model, sched, GMM_NOISE, n, 2, callback=lambda i, t, x: calls.append((i, t, x)), **opts
    )
    expected, timesteps, trail = hand_loop(model, sched, GMM_NOISE, n, 2, **opts)
    # PNDM makes more model calls than steps: one callback per timestep init returned
    assert len(calls) == len(timesteps) == len(trail)
    if name == "PNDM":
        assert len(calls) == n + 9
    assert [i for i, _, _ in calls] == list(range(len(timesteps)))
    assert [int(t) for _, t, _ in calls] == [int(t) for t in timesteps]
    # x is the sample after that step (checked after the loop: nothing was overwritten)
    for (_, _, x), ref in zip(calls, trail, strict=True):
        np.testing.assert_array_equal(x, ref)
    np.testing.assert_array_equal(calls[-1][2], out)
    np.testing.assert_array_equal(out, expected)


def test_progress_bar(capsys):
    sched = ds.PNDM()
    model = gmm_model(sched)
    plain = ds.sample(model, sched, GMM_NOISE, 8)
    capsys.readouterr()
    shown = ds.sample(model, sched, GMM_NOISE, 8, progress=True)
    err = capsys.readouterr().err
    np.testing.assert_array_equal(shown, plain)
    assert "PNDM" in err and "/17" in err  # tqdm's bar, labelled, over the 17 model calls


def test_progress_without_tqdm_warns(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import now raises ImportError
    sched = ds.DDIM()
    model = gmm_model(sched)
    with pytest.warns(UserWarning, match="tqdm"):
        out = ds.sample(model, sched, GMM_NOISE, 5, progress=True)
    np.testing.assert_array_equal(out, ds.sample(model, sched, GMM_NOISE, 5))


# -- JAX: the compiled loop -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["DDIM", "DDIM-eta", "PNDM", "PNDM-reduce_warmup", "LCM"])
@pytest.mark.parametrize("data", ["gmm", "digits"])
def test_compiled_jax_loop_equals_eager(name, data):
    sched, n, opts = CASES[name]
    if data == "gmm":
        model, noise = gmm_model(sched), GMM_NOISE
    else:
        model = models.make_model("digits", sched.alphas_cumprod, sched.prediction_type)
        noise = DIGITS_NOISE
    x = jnp.asarray(noise)
    assert x.dtype == jnp.float64
    eager = ds.sample(model, sched, x, n, 4, **opts)
    compiled = ds.sample(model, sched, x, n, 4, compile=True, **opts)
    assert isinstance(compiled, jax.Array)
    assert compiled.dtype == jnp.float64 and compiled.shape == noise.shape
    assert rel(compiled, eager) <= 1e-12
    # and the eager JAX loop is the hand-written loop (NumPy) to rounding
    if sched.deterministic:
        expected, _, _ = hand_loop(model, sched, noise, n, 4, **opts)
        assert rel(eager, expected) <= 1e-12


def test_compile_needs_jax_arrays():
    sched = ds.DDIM()
    with pytest.raises(ValueError, match="JAX"):
        ds.sample(gmm_model(sched), sched, GMM_NOISE, 5, compile=True)


@pytest.mark.parametrize("kwargs", [{"callback": lambda i, t, x: None}, {"progress": True}])
def test_compile_refuses_per_step_python(kwargs):
    sched = ds.DDIM()
    with pytest.raises(ValueError, match="compile=True"):
        ds.sample(gmm_model(sched), sched, jnp.asarray(GMM_NOISE), 5, compile=True, **kwargs)


# -- deterministic, and the noise levels the loop runs between ------------------------------


def test_deterministic_flags():
    assert ds.DDIM().deterministic is True
    assert ds.DDIM(eta=0.5).deterministic is False
    assert ds.PNDM().deterministic is True
    assert ds.PNDM(reduce_warmup=True).deterministic is True
    assert ds.LCM().deterministic is False


def test_noise_levels():
    ddim = ds.DDIM()
    acp = ddim.alphas_cumprod
    assert ddim.noise_levels(10) == (acp[900], 1.0)
    assert ds.DDIM(alpha_clip_strategy="alpha_zero").noise_levels(10) == (acp[900], acp[0])

    pndm = ds.PNDM()
    assert pndm.alpha_clip_strategy == "alpha_zero"
    assert pndm.noise_levels(10) == (acp[900], acp[0])
    assert ds.PNDM(reduce_warmup=True).noise_levels(10) == (acp[900], acp[0])
    assert ds.PNDM(alpha_clip_strategy="one").noise_levels(10) == (acp[900], 1.0)

    lcm = ds.LCM()
    start, end = lcm.noise_levels(4)
    assert end == 1.0
    assert start == lcm.alphas_cumprod[999]
    assert lcm.noise_levels(4, strength=0.5) == (lcm.alphas_cumprod[499], 1.0)


# -- accuracy against the exact probability-flow ODE solution -------------------------------

STEPS = (25, 50, 100, 200)


@functools.cache
def _gmm_errors(label: str) -> dict[int, float]:
    sched = {"DDIM": ds.DDIM(clip_denoised_sample=False), "PNDM": ds.PNDM()}[label]
    model = gmm_model(sched)
    errors = {}
    for n in STEPS:
        x = ds.sample(model, sched, GMM_NOISE, n)
        exact = reference.solve_pf_ode(model.denoiser, GMM_NOISE, *sched.noise_levels(n))
        errors[n] = rel(x, exact)
    return errors


def _orders(errors):
    return [float(np.log2(errors[a] / errors[b])) for a, b in itertools.pairwise(STEPS)]


def test_ddim_converges_at_first_order():
    errors = _gmm_errors("DDIM")
    assert all(0 < e < 0.05 for e in errors.values()), errors
    orders = _orders(errors)
    assert all(0.8 <= p <= 1.25 for p in orders), orders


def test_pndm_beats_ddim_and_converges_faster():
    pndm, ddim = _gmm_errors("PNDM"), _gmm_errors("DDIM")
    for n in (50, 100, 200):
        assert pndm[n] < ddim[n], (n, pndm[n], ddim[n])
    orders = _orders(pndm)
    assert orders[0] > 1.5 and orders[1] > 1.5, orders
