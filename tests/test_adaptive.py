"""Adaptive step-size loops (docs/adaptive.md): ComfyDPMAdaptive against ComfyUI's
dpm_adaptive (the recorded fixture tests/record_comfy_adaptive.py always, the live oracle
where ../shared is present), AdaptiveRK, and the contract both follow: the call bound,
the error against the exact ODE solution as rtol falls, jitted (jax.lax.while_loop) equal
to eager, NumPy / PyTorch / JAX equal, clear errors. (A jitted fixed-length fori_loop of
max_calls iterations equal to the while loop, torch.compile, purity, fuzz: the generic
tests, test_engine.py and test_fuzz.py, run every class, these included.)

Observed: dpm_adaptive vs the float64 oracle <= 3e-14 relative, every call's σ equal to
1e-15, the same timesteps (39 cases, 9..273 calls; the 10 with η > 0 with ComfyUI's draws
replayed, and with noise_stream="comfy" drawing them itself); vs its float32 run <= 5.2e-7
(v models 1.4e-5) where that run makes the same calls; backends and jit agree to ~4e-15.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import oracle as summary
import pytest
import record_comfy_adaptive as rec
from test_models import jax_x64

import diffsched as ds
from diffsched.exact import models, reference
from diffsched.methods import kit

FIXTURE = json.loads(rec.OUT.read_text(encoding="utf-8"))
CASES = FIXTURE["cases"]
ORACLE = rec.load_oracle()
W = np.array(FIXTURE["toy"]["W"])
B = np.array(FIXTURE["toy"]["b"])
NOISE = np.array(FIXTURE["toy"]["noise"])
TOL64 = 1e-9  # observed 5e-14
TOL32 = 1e-5  # observed 5.2e-7 (ComfyUI's float32 run, where it makes our float32 calls)
# v models: observed 1.4e-5 here, and up to 9.1e-5 when every model output is moved by a
# random ulp (22 seeds; another CPU's rounding): the table index of a call ComfyUI gives
# the nearest σ, and its timesteps can agree where σ's moved (ComfyUI's own float32 run of
# the PID case: timesteps equal, σ's 2.9e-4 apart, result 1.5e-4 from its float64 run)
TOL32_V = 1e-3
MIXTURE = models.GaussianMixture()
START = np.random.default_rng(3).standard_normal((16, 2))


def toy(x, t):
    """The oracle's toy model: tanh(x_in @ W + (t / 1000) b), per batch row."""
    return np.tanh(x.reshape(x.shape[0], -1) @ W + float(t) / 1000 * B).reshape(x.shape)


def rel(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def build(case: dict) -> ds.ComfyDPMAdaptive:
    model, settings = rec.MODELS[case["model"]]
    return ds.from_comfy("dpm_adaptive", case["scheduler"] or "normal", model=model,
                         **settings, **case["options"])  # fmt: skip


def init_options(case: dict) -> dict:
    if case["sigmas"] is not None:
        return {"sigmas": case["sigmas"]}
    out = {"steps": case["steps"]}
    return out if case["denoise"] == 1.0 else {**out, "denoise": case["denoise"]}


def loop(sched, model, noise, max_calls=1000, key=0, draws=None, **opts):
    """The contract's eager loop: (result, σ of every call, timesteps, final state).
    ``draws``: {call index: noise} passed to ``step`` at those calls (a replay)."""
    state, timesteps = sched.init(max_calls, noise, key, **opts)
    x = noise * sched.init_noise_scale(max_calls, **opts)
    sigmas, ts = [], []
    while not sched.done(state):
        t = sched.next_timestep(state)
        if not ts:
            assert float(t) == float(timesteps[0])
        sigmas.append(float(sched.next_sigma(state)))
        ts.append(float(t))
        kw = {} if draws is None or len(ts) - 1 not in draws else {"noise": draws[len(ts) - 1]}
        state, x = sched.step(state, x, model(x, t), **kw)
    return x, np.array(sigmas), np.array(ts), state


def replayed(case: dict, dtype=np.float64) -> dict | None:
    """ComfyUI's draws of a stochastic case, by the model call each follows (ComfyUI draws
    once per accepted attempt, after its last call), or None (η = 0)."""
    exp = case["expected"]
    if not case["options"].get("eta"):
        return None
    return {
        den - 1: np.array(z, dtype=dtype).reshape(NOISE.shape)
        for den, z in zip(exp["noise_den"], exp["noise"], strict=True)
    }


def counts(sched, state) -> dict:
    return {k: int(v) for k, v in sched.info(state).items()}


# -- ComfyUI's dpm_adaptive --------------------------------------------------------------------


def test_fixture_cases_are_the_recorder_cases():
    keys = ("scheduler", "steps", "model", "options", "denoise", "sigmas", "image")
    assert [{k: c[k] for k in keys} for c in CASES] == rec.cases()
    assert {c["model"] for c in CASES} >= {"eps-sd15", "v-sd15", "flow-sd3"}
    rejected = [c for c in CASES if len(set(c["expected"]["den_sigma"])) <
                len(c["expected"]["den_sigma"])]  # fmt: skip
    assert rejected, "some case must have a rejected attempt (a σ called twice)"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['model']}-{c['scheduler']}")
def test_dpm_adaptive_equals_comfyui(case):
    exp = case["expected"]
    sched = build(case)
    if case["image"]:  # image-to-image: ds.sample with add_noise, then the same loop
        assert replayed(case) is None  # (ds.sample replays no draws)
        got = ds.sample(toy, sched, NOISE, 1000, image=rec.IMAGE, **init_options(case))
        d = rel(got, exp["sample"])
        assert d < TOL64, d
        summary.record("COMFY float64 vs oracle", f"dpm_adaptive img2img {case['model']}", d)
        return
    out, sigmas, ts, state = loop(sched, toy, NOISE, draws=replayed(case), **init_options(case))
    where = (case["scheduler"], case["model"], case["options"])
    # the same model calls: σ and timestep of every call (so the same accepted steps);
    # η > 1 (σ_u capped at σ_t, attempts renoised from σ_end) amplifies rounding: ComfyUI's
    # own σ's move by up to 1.8e-12 where its input moves by 1e-15 (eps, 72 calls), against
    # 1e-15 for η <= 1; we observe 1.2e-14 on those cases, 5e-16 on the others
    assert sigmas.shape == (len(exp["den_sigma"]),), where
    chaotic = case["options"].get("eta", 0) > 1
    assert rel(sigmas, exp["den_sigma"]) < (1e-10 if chaotic else 1e-12), where
    if sched.model_sampling.discrete:
        assert np.array_equal(ts, exp["timesteps"]), where  # the nearest table index
    else:
        assert rel(ts, exp["timesteps"]) < 1e-12, where
    order = sched.order
    firsts = np.array(exp["den_sigma"])[::order]  # each attempt's first call, at s
    info = counts(sched, state)
    assert info["accepted"] == len(np.unique(firsts)), where  # a new s after each accept
    assert info["accepted"] + info["rejected"] == len(firsts) and info["reached"], where
    d = rel(out, exp["sample"])
    assert d < TOL64, (where, d)
    summary.record("COMFY float64 vs oracle", f"dpm_adaptive {case['model']}", d)


def test_float32_equals_comfyuis_float32_run_where_it_takes_the_same_calls():
    """The step-size control feeds rounding back into the levels: ComfyUI's own float32 run
    leaves its float64 path where a table index or an acceptance flips (v models: σ's
    1.8e-3 apart, results 1.6e-4). Where our float32 run makes the calls ComfyUI's float32
    run makes (the same timesteps), the results agree within 1e-5 (observed 5.2e-7, and 9e-7
    with every model output moved by a random ulp; v models: TOL32_V)."""
    same, worst = 0, 0.0
    for case in CASES:
        exp = case["expected"]
        sched = build(case)
        # η > 1: the ancestral split caps σ_u at σ_t, attempts step to σ_end and are
        # renoised, and the controller amplifies rounding: ComfyUI's own float64 result
        # moves by 4e-8 when its input moves by 1e-15 (η = 2, v, 273 calls); the fixture's
        # η = 1.5 cases agree with it in float64 within 1.5e-14, in float32 within 3e-5
        if case["image"] or case["options"].get("eta", 0) > 1:
            continue
        draws = replayed(case, np.float32)
        out, _, ts, _ = loop(sched, toy32, NOISE.astype(np.float32), draws=draws,
                             **init_options(case))  # fmt: skip
        assert out.dtype == np.float32
        if ts.shape == (len(exp["timesteps32"]),) and rel(ts, exp["timesteps32"]) < 1e-6:
            d = rel(out, exp["sample32"])
            tol = TOL32_V if case["model"].startswith("v-") else TOL32
            assert d < tol, (case["model"], case["scheduler"], case["options"], d)
            same, worst = same + 1, max(worst, d)
    summary.record("COMFY float32 oracle vs ours", "dpm_adaptive", worst)
    assert same >= 24  # observed 29 of the 34 cases


def toy32(x, t):
    """The toy model delivering float32 (its output in the loop's dtype)."""
    return toy(x, t).astype(x.dtype)


@pytest.mark.skipif(ORACLE is None, reason="the ComfyUI oracle is not present")
def test_fixture_is_the_live_oracle():
    """The recorded numbers are the oracle's today, to rounding: another CPU's vector math
    rounds differently, and the step-size control amplifies it (the η = 1.5 v case, 108
    calls, moves by ~1e-14 where its input moves by 1e-16). A stochastic case replays the
    recorded draws: ComfyUI's own float32 draws round by the CPU (``ACROSS_MACHINES``), and
    the controller can turn that into another accepted step."""
    import torch

    for case in CASES[::6]:
        draws = replayed(case, np.float32)
        replay = None if draws is None else [torch.tensor(z) for _, z in sorted(draws.items())]
        live = rec.run(ORACLE, case, replay=replay)
        assert rel(live["sample"], case["expected"]["sample"]) < 1e-11
        assert np.allclose(live["den_sigma"], case["expected"]["den_sigma"], rtol=1e-11, atol=0)


def test_sample_callback_sees_every_call():
    sched = ds.AdaptiveRK(model="flux", rtol=1e-3)
    seen = []
    out = ds.sample(toy, sched, NOISE, 500, callback=lambda i, t, x: seen.append((i, float(t))))
    want, _, ts, state = loop(sched, toy, NOISE, max_calls=500)
    assert np.array_equal(out, want)
    assert [i for i, _ in seen] == list(range(counts(sched, state)["calls"]))
    assert np.array_equal([t for _, t in seen], ts)


STOCHASTIC = [c for c in CASES if c["options"].get("eta")]


@pytest.mark.parametrize("case", STOCHASTIC, ids=lambda c: f"{c['model']}-{c['options']}")
def test_the_comfy_stream_draws_comfyuis_noise(case):
    """noise_stream="comfy": ComfyUI's seeded generator stream, one draw per accepted step,
    the same result as ComfyUI with no replay (its seed, its initial noise)."""
    torch = pytest.importorskip("torch")
    sched = build(case).replace(noise_stream="comfy")
    drawn = []

    def model(x, t):
        return torch.from_numpy(toy(x.numpy(), t))

    out, sigmas, _, state = loop(sched, model, torch.tensor(NOISE), key=rec.SEED,
                                 **init_options(case))  # fmt: skip
    exp = case["expected"]
    accepted = counts(sched, state)["accepted"]
    # the stream moves on at the accepted calls only: its state after the loop is the
    # seeded generator's after as many draws
    gen = torch.Generator().manual_seed(rec.SEED)
    for _ in range(accepted):
        drawn.append(torch.randn(NOISE.shape, generator=gen, dtype=torch.float32))
    assert torch.equal(state.key, gen.get_state())
    # ComfyUI's stream: the recorded draws, to the last bits of float32's vector Box-Muller,
    # which depend on the CPU (comfy_parity.ACROSS_MACHINES)
    recorded = [np.array(z) for z in exp["noise"]]
    ours = [z.double().numpy().reshape(-1) for z in drawn]
    k = min(len(ours), len(recorded))
    assert k >= 1
    for z, want in zip(ours[:k], recorded[:k], strict=True):
        assert np.allclose(z, want, rtol=1e-5, atol=1e-6)
    if all(map(np.array_equal, ours[:k], recorded[:k])):
        # this CPU draws the recording's bits: the recording is the reference
        assert accepted == len(recorded)
        assert rel(sigmas, exp["den_sigma"]) < 1e-12
        assert rel(out.numpy(), exp["sample"]) < TOL64
    if ORACLE is not None:  # ComfyUI drawing on this machine: the same to float64 rounding
        live = rec.run(ORACLE, case)
        assert accepted == len(live["noise_draws"])
        assert rel(sigmas, live["den_sigma"]) < 1e-12
        assert rel(out.numpy(), live["sample"]) < TOL64


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_stochastic_draws_follow_the_key_and_compile():
    """η > 0 on the default stream: a pure function of init's key (the same key, the same
    result; another key, another), NumPy, PyTorch (eager and torch.compile) and the jitted
    JAX while loop equal; the draws are those passed as noise= reproduce."""
    jnp = pytest.importorskip("jax.numpy")
    torch = pytest.importorskip("torch")
    sched = ds.ComfyDPMAdaptive(model="flux", eta=1.0, rtol=0.01)
    assert not sched.deterministic and sched.replace(eta=0.0).deterministic
    a = ds.sample(traced_flux_model, sched, START, 300, key=7, steps=10)
    assert np.array_equal(a, ds.sample(traced_flux_model, sched, START, 300, key=7, steps=10))
    b = ds.sample(traced_flux_model, sched, START, 300, key=8, steps=10)
    plain = ds.sample(traced_flux_model, sched.replace(eta=0.0), START, 300, steps=10)
    assert np.abs(a - b).max() > 1e-2 and np.abs(a - plain).max() > 1e-2
    got_torch = ds.sample(traced_flux_model, sched, torch.tensor(START), 300, key=7, steps=10)
    assert np.abs(got_torch.numpy() - a).max() < 1e-12
    with jax_x64():
        jitted = ds.sample(traced_flux_model, sched, jnp.asarray(START), 300, key=7, steps=10,
                           compile=True)  # fmt: skip
    assert np.abs(np.asarray(jitted) - a).max() < 1e-12
    # torch.compile(step, fullgraph=True): NumPy's draws (the Brownian tree's traced path
    # under compile: test_brownian.test_torch_compile_draws_the_numpy_path)
    for noisy in (sched,):
        want = ds.sample(traced_flux_model, noisy, START, 12, key=7, steps=10)
        torch._dynamo.reset()
        step = torch.compile(noisy.step, fullgraph=True)
        state, _ = noisy.init(12, torch.tensor(START), 7, steps=10)
        x = torch.tensor(START) * noisy.init_noise_scale(12, steps=10)
        for _ in range(12):
            x_t = noisy.next_timestep(state)
            state, x = step(state, x, traced_flux_model(x, x_t))
        assert np.abs(x.numpy() - want).max() < 1e-11, noisy.noise_type  # observed 6e-13
    # the draws are those step would take with noise= (draw k at the k-th accepted step)
    state, _ = sched.init(300, START, 7, steps=10)
    x = START * sched.init_noise_scale(300, steps=10)
    while not sched.done(state):
        k = int(sched.info(state)["accepted"])
        z = np.asarray(ds.core.ops.normal(state.key, np.int32(k), START.shape, np.float64, x))
        state, x = sched.step(state, x, traced_flux_model(x, sched.next_timestep(state)), noise=z)
    assert np.array_equal(x, a)


def test_brownian_draws_are_increments_of_one_path():
    """noise_type="brownian": each accepted attempt from σ_s to σ_t draws
    (W(τ_t) - W(τ_s)) / sqrt(τ_s - τ_t) of the seed's path (τ = σ / (1 + σ) on a
    variance-exploding model, σ on a flow model): the loop equals one that passes those
    increments, computed on the host, as noise= (over its first 15 calls: the controller
    amplifies rounding, the draws' 4e-16 to 4e-6 by the end of this 60-call loop); the path does
    not depend on the tolerance (two tolerances' results are closer than with independent
    draws)."""
    from diffsched.core import brownian

    for model, tau in (("flux", lambda s: s), ("eps", lambda s: s / (1 + s))):
        fn, start = (traced_flux_model, START) if model == "flux" else (toy, NOISE)
        sched = ds.ComfyDPMAdaptive(model=model, eta=1.0, rtol=0.01, noise_type="brownian")
        auto = ds.sample(fn, sched, start, 15, key=7, steps=10)
        state, _ = sched.init(15, start, 7, steps=10)
        x = start * sched.init_noise_scale(15, steps=10)
        seed = brownian.tree_seed(state.key)
        while not sched.done(state):
            s_lo, s_hi = (float(np.exp(-state.clock[i])) for i in (1, 0))  # σ_t, σ_s
            z = brownian.increment(seed, tau(s_hi), tau(s_lo), start)
            state, x = sched.step(state, x, fn(x, sched.next_timestep(state)), noise=z)
        assert sched.info(state)["accepted"] >= 3
        # observed 1e-13 (flux), 6e-13 (eps); independent draws: 0.7-0.9
        assert np.abs(x - auto).max() < 1e-9 * np.abs(auto).max(), model
    a, b = (ds.sample(traced_flux_model, ds.ComfyDPMAdaptive(model="flux", eta=1.0, rtol=r,
                                                            noise_type=t), START, 300, key=7,
                      steps=10) for r in (0.01, 0.002) for t in ("brownian",))  # fmt: skip
    c, d = (ds.sample(traced_flux_model, ds.ComfyDPMAdaptive(model="flux", eta=1.0, rtol=r),
                      START, 300, key=7, steps=10) for r in (0.01, 0.002))  # fmt: skip
    assert np.abs(a - b).max() < 0.6 * np.abs(c - d).max()  # observed 0.22 against 0.53


def test_stochastic_samples_have_the_datas_moments():
    """η > 0 samples the data distribution: on the exact mixture (ComfyUI's eps model,
    8192 samples, Karras levels from σ_max to σ_min) the batch's mean and covariance are
    within twice the Monte-Carlo floor's 95th percentile of the data's (batches of exact
    samples), Gaussian and Brownian draws alike; a wrong noise scale (s_noise = 0.8) is not
    (observed over four seeds: mean / covariance errors <= 0.021 / 0.023, against a p95
    floor of 0.019 / 0.023; s_noise = 0.8: covariance 0.12)."""
    from diffsched import cli

    mean, cov = cli.data_moments("gmm")
    p95 = np.array(cli.moment_floor("gmm", 8192, 0, batches=64)["p95"])
    noise = cli.make_noise("gmm", 8192, 10)

    def errors(**options):
        sched = ds.ComfyDPMAdaptive(model="eps", scheduler="karras", **options)
        out = ds.sample(cli.comfy_exact_model(sched, "gmm"), sched, noise, 1000, key=0, steps=10)
        return np.array(cli.moment_distance(out, mean, cov))

    for options in ({"eta": 0.5}, {"eta": 1.0}, {"eta": 1.0, "noise_type": "brownian"}):
        assert np.all(errors(**options) < 2 * p95), options
    assert errors(eta=1.0, s_noise=0.8)[1] > 2 * p95[1]


def test_from_comfy_names_it():
    sched = ds.from_comfy("dpm_adaptive", "karras", model="v", order=2, rtol=0.01)
    assert type(sched) is ds.ComfyDPMAdaptive and sched.ADAPTIVE
    assert (sched.order, sched.rtol, sched.model) == (2, 0.01, "v")
    assert "dpm_adaptive" in ds.comfy.SAMPLERS


# -- the contract --------------------------------------------------------------------------------

SCHEDS = {
    "dpm3": ds.ComfyDPMAdaptive(model="flow", shift=3.0),
    "dpm2": ds.ComfyDPMAdaptive(model="eps", order=2),
    "bosh3": ds.AdaptiveRK(model="eps"),
    "dopri5": ds.AdaptiveRK(model="v", solver="dopri5", rtol=1e-3, atol=1e-4),
}


@pytest.mark.parametrize("name", SCHEDS)
def test_call_count_never_exceeds_max_calls(name):
    sched = SCHEDS[name]
    full, _, _, state = loop(sched, toy, NOISE, steps=10)
    needed = counts(sched, state)["calls"]
    assert counts(sched, state)["reached"] and needed > 3
    for bound in (1, 2, 3, needed - 1, needed, needed + 5):
        out, sigmas, _, state = loop(sched, toy, NOISE, max_calls=bound, steps=10)
        info = counts(sched, state)
        assert len(sigmas) == info["calls"] == min(bound, needed), (bound, info)
        assert info["done"] and info["reached"] == (bound >= needed), (bound, info)
        assert np.all(np.isfinite(out))
        if bound >= needed:
            assert np.array_equal(out, full)
        # after done, step returns its arguments
        again, y = sched.step(state, out, toy(out, 0.0))
        assert y is out or np.array_equal(y, out)
        assert all(np.array_equal(a, b) for a, b in zip(again, state, strict=True))


def test_cut_loop_returns_the_last_accepted_solution():
    sched = ds.ComfyDPMAdaptive(model="flow", shift=3.0)
    _, _, _, state = loop(sched, toy, NOISE, max_calls=1000, steps=10)
    assert counts(sched, state)["rejected"] == 0
    # 7 calls: two accepted attempts of 3 calls, then one call into the third
    out, _, _, state = loop(sched, toy, NOISE, max_calls=7, steps=10)
    assert counts(sched, state)["accepted"] == 2
    out6, *_ = loop(sched, toy, NOISE, max_calls=6, steps=10)
    assert np.array_equal(out, out6)  # the seventh call's attempt is not finished


def flux_model(x, t):
    """The exact flow model of the Gaussian mixture (flux: the timestep is σ)."""
    return (x - models.flow_posterior_mean(MIXTURE, x, float(t))) / float(t)


@pytest.mark.parametrize("name", ["dpm", "bosh3", "dopri5"])
def test_error_falls_as_rtol_falls(name):
    errors, calls = [], []
    for rtol in (1e-1, 1e-2, 1e-3, 1e-4):
        if name == "dpm":
            sched = ds.ComfyDPMAdaptive(model="flux", scheduler="simple", rtol=rtol,
                                        atol=rtol / 10)  # fmt: skip
        else:
            sched = ds.AdaptiveRK(model="flux", scheduler="simple", solver=name, rtol=rtol,
                                  atol=rtol / 10, final_denoise=False)  # fmt: skip
        first, low, _ = sched.span(10)
        out, _, _, state = loop(sched, flux_model, START, steps=10)
        exact = reference.solve_flow_ode(MIXTURE, START * first, first, low)
        errors.append(float(np.abs(out - exact).max()))
        calls.append(counts(sched, state)["calls"])
    # observed: dpm 8.0e-3 1.2e-3 1.9e-4 1.8e-5 (15..84 calls); bosh3 2.9e-2 4.0e-3 2.7e-4
    # 3.1e-5 (10..52); dopri5 8.5e-3 6.9e-3 6.4e-4 8.1e-5 (19..37)
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < errors[0] / 50, errors
    assert all(b >= a for a, b in itertools.pairwise(calls)), calls


def test_final_denoise_is_the_step_to_zero():
    sched = ds.AdaptiveRK(model="flux", scheduler="simple", rtol=1e-4, atol=1e-5)
    out, *_ = loop(sched, flux_model, START, steps=10)
    first, low, last = sched.span(10)
    assert last == 0.0
    at_low = reference.solve_flow_ode(MIXTURE, START * first, first, low)
    denoised = models.flow_posterior_mean(MIXTURE, at_low, low)
    assert np.abs(out - denoised).max() < 1e-3  # observed ~1e-5
    plain, _, _, _ = loop(sched.replace(final_denoise=False), flux_model, START, steps=10)
    assert np.abs(plain - at_low).max() < 1e-3
    assert np.abs(plain - out).max() > 1e-2


def traced_flux_model(x, t):
    return (x - models.flow_posterior_mean(MIXTURE, x, t)) / t


@pytest.mark.parametrize("name", ["dpm3", "dopri5"])  # bosh3, dpm2: the same code paths
def test_jit_while_loop_equals_eager_and_backends_agree(name):
    """NumPy eager, PyTorch eager and the jitted JAX while loop (eager JAX runs the same
    code, op by op: slow to dispatch, left to the generic backend tests)."""
    jnp = pytest.importorskip("jax.numpy")
    torch = pytest.importorskip("torch")
    sched = SCHEDS[name].replace(model="flux", shift=None)
    eager = ds.sample(traced_flux_model, sched, START, 300, steps=10)
    got_torch = ds.sample(traced_flux_model, sched, torch.tensor(START), 300, steps=10)
    assert np.abs(got_torch.numpy() - eager).max() < 1e-12
    with jax_x64():
        jitted = ds.sample(traced_flux_model, sched, jnp.asarray(START), 300, steps=10,
                           compile=True)  # fmt: skip
    assert np.abs(np.asarray(jitted) - eager).max() < 1e-12  # observed ~4e-15


def test_float32_runs_close_to_float64():
    sched = ds.AdaptiveRK(model="flux")
    want = ds.sample(flux_model, sched, START, 300, steps=10)
    got = ds.sample(flux_model, sched, START.astype(np.float32), 300, steps=10)
    assert got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-3


def test_bench_adaptive_rows(capsys, tmp_path):
    """`diffsched bench --adaptive RTOL...`: rows of the adaptive samplers beside the fixed
    grids, their error falling as rtol falls."""
    from diffsched import cli

    out = tmp_path / "bench.png"
    argv = ["bench", "--schedulers", "flow-euler", "--steps", "4", "--model", "gmm",
            "--num-samples", "4", "--adaptive", "0.1", "0.001", "--out", str(out)]  # fmt: skip
    code = cli.main(argv)
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "| gmm | flow-euler | 4 |" in text
    rows = cli.adaptive_rows([0.1, 0.001], ["gmm"], 4, 0)
    for label in cli.ADAPTIVE_BENCH:
        mine = [r for r in rows if r["scheduler"] == label]
        assert [r["steps"] for r in mine] == ["rtol=0.1", "rtol=0.001"]
        assert f"| gmm | {label} | rtol=0.001 | {mine[1]['calls']} |" in text
        assert mine[1]["error"] < mine[0]["error"] / 5 and mine[1]["calls"] > mine[0]["calls"]


# -- the kit's embedded pairs --------------------------------------------------------------------


@pytest.mark.parametrize("pair", kit.EMBEDDED_PAIRS.values(), ids=lambda p: p.name)
def test_embedded_pairs_meet_their_order_conditions(pair):
    a, b, bh, c = (np.array(v) for v in (pair.a, pair.b, pair.b_hat, pair.c))
    assert pair.fsal
    assert np.allclose(a.sum(axis=1), c, atol=1e-15)  # row sums
    # Butcher's conditions up to each solution's order (Hairer I, sec. II.2, Table 2.1)
    conditions = {
        1: lambda w: w.sum() - 1,
        2: lambda w: w @ c - 1 / 2,
        3: lambda w: max(abs(w @ c**2 - 1 / 3), abs(w @ a @ c - 1 / 6)),
        4: lambda w: max(
            abs(w @ c**3 - 1 / 4),
            abs(w @ (c * (a @ c)) - 1 / 8),
            abs(w @ a @ c**2 - 1 / 12),
            abs(w @ a @ a @ c - 1 / 24),
        ),
    }
    for k, check in conditions.items():
        if k <= pair.order:
            assert abs(check(b)) < 1e-14, (pair.name, "b", k)
        if k <= pair.embedded_order:
            assert abs(check(bh)) < 1e-14, (pair.name, "b_hat", k)
    if pair.embedded_order + 1 in conditions:  # the estimate is of lower order
        assert abs(conditions[pair.embedded_order + 1](bh)) > 1e-6


# -- clear errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: ds.ComfyDPMAdaptive(order=4), "order"),
        (lambda: ds.ComfyDPMAdaptive(rtol=-1.0), "rtol"),
        (lambda: ds.ComfyDPMAdaptive(rtol=0.0, atol=0.0), "rtol and atol"),
        (lambda: ds.ComfyDPMAdaptive(h_init=0.0), "h_init"),
        (lambda: ds.ComfyDPMAdaptive(accept_safety=float("nan")), "accept_safety"),
        (lambda: ds.AdaptiveRK(solver="rk4"), "solver"),
        (lambda: ds.AdaptiveRK(safety=1.5), "safety"),
        (lambda: ds.AdaptiveRK(rtol=float("inf")), "rtol"),
        (lambda: ds.AdaptiveRK(atol=0.0, rtol=0.0), "rtol and atol"),
    ],
)
def test_bad_options_are_clear_errors(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_calls_are_clear_errors():
    torch = pytest.importorskip("torch")
    sched = ds.AdaptiveRK()
    with pytest.raises(ValueError, match="max_calls"):
        sched.init(0, NOISE)
    with pytest.raises(ValueError, match=r"max_calls.*\[1, 10000\]"):
        sched.init(10_001, NOISE)
    with pytest.raises(TypeError, match="max_calls"):
        sched.init(2.5, NOISE)
    with pytest.raises(ValueError, match="no per-element schedules"):
        sched.init(10, NOISE, offsets=np.zeros(2, int))
    with pytest.raises(TypeError, match=r"unexpected keyword.*timesteps"):
        sched.init(10, NOISE, timesteps=[999, 500])
    with pytest.raises(TypeError, match="num_steps"):
        sched.init(10, NOISE, steps=1.5)
    state, _ = sched.init(10, NOISE)
    with pytest.raises(ValueError, match="shape"):
        sched.step(state, NOISE[:1], NOISE[:1])
    with pytest.raises(TypeError, match="noise="):
        sched.step(state, NOISE, NOISE, noise=NOISE)
    with pytest.raises(ValueError, match="another configuration"):
        sched.replace(rtol=0.5).step(state, NOISE, NOISE)
    with pytest.raises(TypeError, match="adaptive"):
        sched.program(10)
    with pytest.raises(TypeError, match="adaptive"):
        fn = ds.comfy.sampler_function(ds.ComfyDPMAdaptive())
        fn(None, torch.tensor(NOISE), torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="CFG\\+\\+"):
        ds.sample(ds.Guided(toy, toy, 2.0), sched, NOISE, 10)
    with pytest.raises(TypeError, match="unconditional"):
        sched.step(state, NOISE, NOISE, unconditional=NOISE)
    noisy = ds.ComfyDPMAdaptive(eta=0.5)
    state, _ = noisy.init(10, NOISE)
    with pytest.raises(ValueError, match=r"noise must be .*shape \(2, 8\)"):
        noisy.step(state, NOISE, NOISE, noise=NOISE[:1])
    with pytest.raises(TypeError, match="floating-point noise"):
        noisy.step(state, NOISE, NOISE, noise=np.zeros((2, 8), int))
    with pytest.raises(TypeError, match="noise="):
        ds.ComfyDPMAdaptive(eta=0.0).step(state, NOISE, NOISE, noise=NOISE)
    comfy = noisy.replace(noise_stream="comfy")
    with pytest.raises(TypeError, match="eager PyTorch on the CPU"):
        comfy.init(10, NOISE)
    with pytest.raises(ValueError, match=r"\[0, 2\*\*64\)"):
        comfy.init(10, torch.tensor(NOISE), -1)
    with pytest.raises(ValueError, match="eta"):
        ds.ComfyDPMAdaptive(eta=-0.1)
    with pytest.raises(ValueError, match="noise_type='gaussian'"):
        ds.ComfyDPMAdaptive(eta=0.5, noise_stream="comfy", noise_type="brownian")


@pytest.mark.parametrize("model", ["eps", "v", "flow"])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_host_path_equals_the_branch_free_step(model, lib, monkeypatch):
    """Eager NumPy / PyTorch on the CPU read the stage on the host and make only the arrays
    a call selects; the branch-free step (what jax.jit and torch.compile run) makes every
    stage's and selects: the same expressions, so the same bits, calls and draws."""
    import torch

    from diffsched.core import ops

    start = torch.from_numpy(NOISE.copy()) if lib == "torch" else NOISE.copy()
    net = torch.tanh if lib == "torch" else np.tanh
    rejected = 0
    for order, eta in ((2, 0.0), (3, 0.0), (2, 1.0), (3, 1.0)):
        sched = ds.from_comfy("dpm_adaptive", "karras", model=model, order=order, eta=eta,
                              rtol=0.01, atol=0.001, h_init=2.0)  # fmt: skip
        host, host_sigmas, _, state = loop(sched, lambda x, t: net(x), start, max_calls=400)
        rejected += counts(sched, state)["rejected"]
        with monkeypatch.context() as patched:
            patched.setattr(ops, "concrete_int", lambda x: None)
            free, free_sigmas, _, _ = loop(sched, lambda x, t: net(x), start, max_calls=400)
        assert np.array_equal(np.asarray(host), np.asarray(free)), (order, eta)
        assert np.array_equal(host_sigmas, free_sigmas), (order, eta)
    assert rejected > 0  # both branches of the controller ran


@pytest.mark.parametrize("solver", ["bosh3", "dopri5"])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_adaptive_rk_host_path_equals_the_branch_free_step(solver, lib, monkeypatch):
    """AdaptiveRK's eager host path (the stage read on the host, only the selected arrays
    made) against its branch-free step: the same bits, calls and accepted attempts."""
    import torch

    from diffsched.core import ops

    start = torch.from_numpy(NOISE.copy()) if lib == "torch" else NOISE.copy()
    rejected = 0
    for model in ("flux", "flow"):
        sched = ds.AdaptiveRK(model=model, solver=solver, rtol=1e-3, atol=1e-4, h_init=2.0)
        host, host_sigmas, _, state = loop(sched, toy, start, max_calls=600)
        rejected += counts(sched, state)["rejected"]
        with monkeypatch.context() as patched:
            patched.setattr(ops, "concrete_int", lambda x: None)
            free, free_sigmas, _, _ = loop(sched, toy, start, max_calls=600)
        assert np.array_equal(np.asarray(host), np.asarray(free)), model
        assert np.array_equal(host_sigmas, free_sigmas), model
    assert rejected > 0  # both branches of the controller ran
