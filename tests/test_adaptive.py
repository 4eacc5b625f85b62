"""Adaptive step-size loops (docs/adaptive.md): ComfyDPMAdaptive against ComfyUI's
dpm_adaptive (the recorded fixture tests/record_comfy_adaptive.py always, the live oracle
where ../shared is present), AdaptiveRK, and the contract both follow: the call bound,
the error against the exact ODE solution as rtol falls, jitted (jax.lax.while_loop) equal
to eager, NumPy / PyTorch / JAX equal, clear errors. (A jitted fixed-length fori_loop of
max_calls iterations equal to the while loop, torch.compile, purity, fuzz: the generic
tests, test_engine.py and test_fuzz.py, run every class, these included.)

Observed: dpm_adaptive vs the float64 oracle <= 3e-14 relative, every call's σ equal to
1e-15, the same timesteps (29 cases, 9..48 calls); vs its float32 run <= 5.2e-7 (v models
1.4e-5) where that run makes the same calls (22 of 27); backends and jit agree to ~4e-15.
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
TOL32_V = 5e-5  # v models: observed 1.4e-5
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


def loop(sched, model, noise, max_calls=1000, **opts):
    """The contract's eager loop: (result, σ of every call, timesteps, final state)."""
    state, timesteps = sched.init(max_calls, noise, **opts)
    x = noise * sched.init_noise_scale(max_calls, **opts)
    sigmas, ts = [], []
    while not sched.done(state):
        t = sched.next_timestep(state)
        if not ts:
            assert float(t) == float(timesteps[0])
        sigmas.append(float(sched.next_sigma(state)))
        ts.append(float(t))
        state, x = sched.step(state, x, model(x, t))
    return x, np.array(sigmas), np.array(ts), state


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
        got = ds.sample(toy, sched, NOISE, 1000, image=rec.IMAGE, **init_options(case))
        d = rel(got, exp["sample"])
        assert d < TOL64, d
        summary.record("COMFY float64 vs oracle", f"dpm_adaptive img2img {case['model']}", d)
        return
    out, sigmas, ts, state = loop(sched, toy, NOISE, **init_options(case))
    where = (case["scheduler"], case["model"], case["options"])
    # the same model calls: σ and timestep of every call (so the same accepted steps)
    assert sigmas.shape == (len(exp["den_sigma"]),), where
    assert rel(sigmas, exp["den_sigma"]) < 1e-12, where
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
    run makes (the same timesteps), the results agree within 1e-5 (observed 5.2e-7; v
    models 1.4e-5: 48 calls of float32 v conversions, TOL32_V)."""
    same, worst = 0, 0.0
    for case in CASES:
        exp = case["expected"]
        sched = build(case)
        if case["image"]:
            continue
        out, _, ts, _ = loop(sched, toy32, NOISE.astype(np.float32), **init_options(case))
        assert out.dtype == np.float32
        if ts.shape == (len(exp["timesteps32"]),) and rel(ts, exp["timesteps32"]) < 1e-6:
            d = rel(out, exp["sample32"])
            tol = TOL32_V if case["model"].startswith("v-") else TOL32
            assert d < tol, (case["model"], case["scheduler"], case["options"], d)
            same, worst = same + 1, max(worst, d)
    summary.record("COMFY float32 oracle vs ours", "dpm_adaptive", worst)
    assert same >= 18  # observed 22 of the 27 cases


def toy32(x, t):
    """The toy model delivering float32 (its output in the loop's dtype)."""
    return toy(x, t).astype(x.dtype)


@pytest.mark.skipif(ORACLE is None, reason="the ComfyUI oracle is not present")
def test_fixture_is_the_live_oracle():
    for case in CASES[::6]:
        live = rec.run(ORACLE, case)
        assert rel(live["sample"], case["expected"]["sample"]) < 1e-13
        assert np.array_equal(live["den_sigma"], case["expected"]["den_sigma"])


def test_sample_callback_sees_every_call():
    sched = ds.AdaptiveRK(model="flux", rtol=1e-3)
    seen = []
    out = ds.sample(toy, sched, NOISE, 500, callback=lambda i, t, x: seen.append((i, float(t))))
    want, _, ts, state = loop(sched, toy, NOISE, max_calls=500)
    assert np.array_equal(out, want)
    assert [i for i, _ in seen] == list(range(counts(sched, state)["calls"]))
    assert np.array_equal([t for _, t in seen], ts)


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
