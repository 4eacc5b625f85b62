"""The same image as ComfyUI for the same seed: ``noise_stream="comfy"`` against ComfyUI's
own KSampler (../shared/oracles/comfyui) drawing its own noise, nothing replayed; from the
recorded fixture (tests/record_comfy_seed.py) always, the live oracle where it is present.

Per case: ComfyUI's initial noise for the seed (``ds.comfy.initial_noise``, or
``comfy_initial_noise`` where a churn sampler's first step churns), our loop with the seed
as ``init``'s key, the final sample within 1e-9 relative of ComfyUI's float64 run (whose
noise is drawn in float32 as ComfyUI draws it, then upcast), and as many draws as ComfyUI
made.
"""

from __future__ import annotations

import threading

import comfy_parity as cp
import numpy as np
import oracle as summary
import pytest
import record_comfy_seed as rec
import record_comfy_stochastic as stochastic
from comfy_parity import init_options, needs_oracle, rel, steps
from test_comfy_samplers import B, W

import diffsched as ds
from diffsched.methods import _comfy_noise

torch = pytest.importorskip("torch")
pytest.importorskip("torchsde")

FIXTURE = cp.load_fixture(rec.OUT)
CASES = FIXTURE["cases"]
TOL64 = 1e-9  # observed 3.1e-15 (dpmpp_3m_sde); most samplers <= 1e-15
TOL32 = 1e-5  # float32 ComfyUI: observed 1.1e-6 (dpmpp_2m_sde_heun, flow); others <= 3.4e-7
TOYS = {tuple(cp.SHAPE): cp.toy_model(W, B)} | {
    tuple(int(n) for n in k.split(",")): cp.toy_model(
        np.array(v["W"]).reshape(int(np.prod([int(n) for n in k.split(",")][1:])), -1),
        np.array(v["b"]),
    )
    for k, v in FIXTURE["toys"].items()
}


def toy(x, t):
    """The oracle's toy model of x's shape, on torch float64 tensors."""
    return torch.from_numpy(TOYS[tuple(x.shape)](x.numpy(), float(t)))


def build(case: dict, **extra) -> ds.Scheduler:
    return cp.build(case, noise_stream="comfy", **extra)


def run(case: dict, sched=None):
    """Our loop from the seed alone: (final sample, the scheduler)."""
    sched = build(case) if sched is None else sched
    opts, n = init_options(case), steps(case)
    noise = sched.comfy_initial_noise(case["seed"], case["shape"], n, **opts)
    state, timesteps = sched.init(n, noise, case["seed"], **opts)
    x = noise * sched.init_noise_scale(n, **opts)
    for t in timesteps:
        state, x = sched.step(state, x, toy(x, t))
    return x, sched


def our_draws(sched, case: dict) -> int:
    """How many normals our stream draws: one per flagged call, plus the churn of step 0."""
    opts, n = init_options(case), steps(case)
    flags = sched.program(n, **{k: tuple(v) if k == "sigmas" else v for k, v in opts.items()})
    count = int(flags.coefs[:-1, -5].sum())
    return count + sched.comfy_skip(sched.sigmas(n, **opts))


def test_fixture_cases_are_the_recorder_cases():
    assert cp.recorder_cases(CASES) == rec.cases()


def test_the_grid_covers_every_stochastic_sampler():
    assert set(rec.SAMPLERS) >= set(stochastic.SAMPLERS)
    for sampler in rec.SAMPLERS:
        mine = [c for c in CASES if c["sampler"] == sampler]
        assert {"eps-sd15", "flow-sd3"} <= {c["model"] for c in mine}
        assert len({c["steps"] for c in mine}) >= 2
        assert len({c["scheduler"] for c in mine}) >= 2
        assert any(c["expected"]["draws"] for c in mine)
    kinds = {k for c in CASES for k in c["expected"]["kinds"]}
    assert kinds == {"generator", "brownian", "brownian_cpu", "randn_like"}
    assert {c["seed"] for c in CASES} == set(rec.SEEDS)


@pytest.mark.parametrize("sampler", rec.SAMPLERS)
def test_same_seed_same_image(sampler):
    """Against the recording within ``ACROSS_MACHINES`` (the draws are this machine's torch
    float32 kernels, the recording another's); against ComfyUI drawing on this machine, where
    the oracle is present, within ``TOL64``."""
    worst = 0.0
    for case in (c for c in CASES if c["sampler"] == sampler and not c["check32"]):
        out, sched = run(case)
        where = (case["scheduler"], case["model"], case["steps"], case["options"], case["seed"])
        assert our_draws(sched, case) == case["expected"]["draws"], where
        d = rel(out, case["expected"]["sample"])
        assert d < cp.ACROSS_MACHINES, (where, d)
        if cp.ORACLE is not None:
            d = rel(out, rec.run(cp.ORACLE, case)["sample"])
            assert d < TOL64, (where, d)
        worst = max(worst, d)
    label = "vs oracle" if cp.ORACLE is not None else "vs recording (another machine's draws)"
    summary.record(f"COMFY same seed (noise_stream='comfy') {label}", sampler, worst)


def test_same_seed_as_float32_comfyui():
    """ComfyUI as it runs on a CPU (float32 tables, model and arithmetic) from the same
    seed: within float32 rounding. The Brownian samplers run on ComfyUI's float32 σ list
    (``sigmas=``), since their path is queried at those exact levels."""
    worst = {}
    for case in (c for c in CASES if c["check32"]):
        exp = case["expected"]
        if case["sigmas32"]:
            case = dict(case, sigmas=exp["sigmas32"])
        out = run(case)[0]
        d = rel(out, exp["sample32"])
        assert d < TOL32, (case["sampler"], d)
        worst[case["sampler"]] = d
    assert {"generator", "brownian", "brownian_cpu", "randn_like"} == {
        k for c in CASES if c["check32"] for k in c["expected"]["kinds"]}  # fmt: skip
    for sampler, d in worst.items():
        summary.record("COMFY same seed vs float32 ComfyUI", sampler, d)


def test_another_seed_is_another_image():
    """The comparison is not vacuous: the next seed's noise moves the result far."""
    for sampler in ("dpmpp_2m_sde", "euler_ancestral", "euler"):
        case = next(c for c in CASES if c["sampler"] == sampler and c["model"] == "eps-sd15")
        sched = build(case)
        noise = sched.comfy_initial_noise(case["seed"], case["shape"], case["steps"])
        state, timesteps = sched.init(case["steps"], noise, case["seed"] ^ 1)  # other draws
        x = noise * sched.init_noise_scale(case["steps"])
        for t in timesteps:
            state, x = sched.step(state, x, toy(x, t))
        assert rel(x, case["expected"]["sample"]) > 1e-3, sampler


def test_initial_noise_is_comfyui_prepare_noise():
    """torch.manual_seed(seed) then torch.randn(shape, float32), bit for bit, without
    touching the global generator; the seeded generator's first draw is the same tensor."""
    before = torch.get_rng_state()
    for seed in (0, 7, (1 << 64) - 1):
        mine = ds.comfy.initial_noise(seed, (2, 4, 5))
        assert mine.dtype == torch.float32
        assert torch.equal(torch.get_rng_state(), before)
        gen = torch.manual_seed(seed)
        want = torch.randn((2, 4, 5), dtype=torch.float32, generator=gen)
        torch.set_rng_state(before)
        assert torch.equal(mine, want)
    for bad, err in ((-1, ValueError), (1 << 64, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="seed"):
            ds.comfy.initial_noise(bad, (2, 3))


@pytest.mark.parametrize("sampler", ["seeds_2", "dpmpp_sde", "heun"])
def test_step_is_pure(sampler):
    """A state holds its stream: stepping one state twice gives the same draw and state,
    the state given is not changed, and threads sharing the config agree."""
    case = next(c for c in CASES if c["sampler"] == sampler and c["model"] == "eps-sd15")
    sched = build(case)
    noise = sched.comfy_initial_noise(case["seed"], case["shape"], case["steps"])
    state, timesteps = sched.init(case["steps"], noise, case["seed"])
    assert state.key.dtype == torch.uint8
    x = noise * sched.init_noise_scale(case["steps"])
    for t in timesteps:
        key = state.key.clone()
        a_state, a = sched.step(state, x, toy(x, t))
        b_state, b = sched.step(state, x, toy(x, t))
        assert torch.equal(state.key, key)
        assert torch.equal(a, b) and torch.equal(a_state.key, b_state.key)
        state, x = a_state, a
    results = [None] * 4

    def work(k):
        results[k] = run(case, sched)[0]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(torch.equal(r, x) for r in results)


def test_ds_sample_and_noise_override():
    """ds.sample takes the seed as its key; noise= replaces a call's draw and the stream
    still moves on (the next draws are ComfyUI's)."""
    case = next(c for c in CASES if c["sampler"] == "euler_ancestral" and c["steps"] == 7)
    sched = build(case)
    noise = sched.comfy_initial_noise(case["seed"], case["shape"], case["steps"])
    out = ds.sample(toy, sched, noise, case["steps"], key=case["seed"])
    assert rel(out, case["expected"]["sample"]) < cp.ACROSS_MACHINES
    state, timesteps = sched.init(case["steps"], noise, case["seed"])
    x = noise
    plain_state, _ = sched.step(state, x, toy(x, timesteps[0]))
    forced_state, forced = sched.step(state, x, toy(x, timesteps[0]), noise=torch.zeros_like(x))
    assert torch.equal(plain_state.key, forced_state.key)
    own = sched.replace(noise_stream="diffsched")
    _, want = own.step(own.init(case["steps"], noise, 0)[0], x, toy(x, timesteps[0]),
                       noise=torch.zeros_like(x))  # fmt: skip
    assert torch.equal(forced, want)


def test_errors():
    sched = ds.from_comfy("dpmpp_2m_sde", "karras", noise_stream="comfy")
    x = ds.comfy.initial_noise(0, (2, 8)).double()
    with pytest.raises(TypeError, match=r"noise_stream='comfy'.*ndarray"):
        sched.init(4, x.numpy(), 0)
    with pytest.raises(ValueError, match=r"noise_stream='comfy'.*noise_type"):
        ds.from_comfy("euler_ancestral", noise_stream="comfy", noise_type="brownian")
    with pytest.raises(ValueError, match="noise_stream must be one of"):
        ds.from_comfy("euler_ancestral", noise_stream="torch")
    with pytest.raises(ValueError, match="seed"):
        sched.init(4, x, -3)
    with pytest.raises(ValueError, match="per-element"):
        sched.init(4, x, 0, offsets=np.zeros((2, 1), np.int64))
    plain = sched.replace(noise_stream="diffsched")
    with pytest.raises(ValueError, match=r"another configuration|the state its own init"):
        sched.step(plain.init(4, x, 0)[0], x, x)
    state, _ = sched.init(4, x, 0)
    with pytest.raises(TypeError, match="ndarray"):
        sched.step(state, x.numpy(), x.numpy())
    compiling = torch.compiler.is_compiling
    try:  # what step sees while torch.compile traces it
        torch.compiler.is_compiling = lambda: True
        with pytest.raises(RuntimeError, match="eager PyTorch"):
            sched.step(state, x, x)
    finally:
        torch.compiler.is_compiling = compiling


def test_the_default_stream_is_unchanged():
    """noise_stream="diffsched" (the default) adds no columns and keeps the class's noise;
    the option travels through to_config / from_config."""
    plain = ds.from_comfy("seeds_2", "karras")
    comfy = plain.replace(noise_stream="comfy")
    assert plain.noise_stream == "diffsched"
    assert comfy.program(5).coefs.shape[1] == plain.program(5).coefs.shape[1] + 5
    assert np.array_equal(comfy.program(5).coefs[:, :-5], plain.program(5).coefs, equal_nan=True)
    assert ds.from_config(comfy.to_config()) == comfy


def test_the_tree_cache_is_bounded_and_rebuilt_trees_agree():
    args = (0.03, 14.6, 14.6, 3.1, (2, 8))
    first = _comfy_noise.brownian_draw(11, *args)
    for seed in range(20, 20 + 2 * _comfy_noise.TREE_CACHE_SIZE):
        _comfy_noise.brownian_draw(seed, 0.03, 14.6, 3.1, 1.2, (2, 8))
    assert len(_comfy_noise._TREES) <= _comfy_noise.TREE_CACHE_SIZE
    assert torch.equal(_comfy_noise.brownian_draw(11, *args), first)  # rebuilt
    step = _comfy_noise.brownian_draw(11, 0.03, 14.6, 3.1, 1.2, (2, 8))
    whole = _comfy_noise.brownian_draw(11, 0.03, 14.6, 14.6, 1.2, (2, 8))
    # one path: the increments over [1.2, 3.1] and [3.1, 14.6] add to the one over both
    w = lambda z, a, b: z.double() * abs(b - a) ** 0.5  # noqa: E731
    assert torch.allclose(w(first, 14.6, 3.1) + w(step, 3.1, 1.2), w(whole, 14.6, 1.2),
                          atol=1e-5)  # fmt: skip


@needs_oracle
def test_fixture_is_the_live_oracle():
    """(No draws are recorded here: ComfyUI's own draws, whose last bits depend on the CPU.)"""
    cp.check_live(CASES[::23], rec.run, timesteps=False, tol=cp.ACROSS_MACHINES)
