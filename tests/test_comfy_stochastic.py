"""ComfyUI's stochastic samplers (ds.from_comfy) against ComfyUI's own code, its noise
replayed: the recorded fixture (tests/record_comfy_stochastic.py) always, the oracle
(../shared/oracles/comfyui) live where it is present.

Per case: the same σ list (1e-12), the same timestep at every model call, every noise draw
ComfyUI used passed to ``step(..., noise=z)`` at the call it follows (draws ComfyUI
multiplies by 0 are not ours to make: skipped), and the final sample within 1e-9 relative
of the float64 oracle and 1e-5 of its float32 run (the same draws replayed there).
"""

from __future__ import annotations

import comfy_parity as cp
import numpy as np
import pytest
import record_comfy_samplers as base
import record_comfy_stochastic as rec
from comfy_parity import build, needs_oracle, rel
from test_comfy_samplers import NOISE, W, toy

import diffsched as ds

FIXTURE = cp.load_fixture(rec.OUT)
CASES = FIXTURE["cases"]
TOL64 = 1e-9  # observed 6.2e-13 (dpm_2_ancestral, zero-SNR v: σ_max = 4519); others <= 1.2e-14
TOL32 = 1e-5  # observed 1.8e-6 (ddpm; ComfyUI's float32 tables and model); others <= 7.1e-7
uncond = cp.toy_model(W, np.array(FIXTURE["b_uncond"]))


def guided(case: dict, x, t):
    """ComfyUI's CFG: u + (c - u) · cfg, of x̂_0 in ComfyUI, of the raw outputs here (the
    same for x̂_0 linear in the output), with the toy model's unconditional form."""
    cond = toy(x, t)
    if case["cfg"] == 1.0:
        return cond
    u = uncond(x, t)
    return u + (cond - u) * case["cfg"]


def run(case: dict, noise=NOISE):
    """Our loop on the toy model, ComfyUI's draws replayed: (σ's, timesteps, result)."""
    return cp.run_replayed(case, build(case), noise, lambda x, t: (guided(case, x, t), {}))


def test_fixture_cases_are_the_recorder_cases():
    assert cp.recorder_cases(CASES) == rec.cases()


def test_the_grid_covers_every_sampler_scheduler_and_model():
    cfgpp = {name for name in ds.comfy.SAMPLERS if name.endswith("_cfg_pp")}  # test_comfy_cfgpp
    adaptive = {"dpm_adaptive"}  # tests/test_adaptive.py
    assert set(rec.SAMPLERS) | set(base.SAMPLERS) | cfgpp | adaptive == set(ds.comfy.SAMPLERS)
    for sampler in rec.MAIN:
        mine = [c for c in CASES if c["sampler"] == sampler]
        assert {c["scheduler"] for c in mine} >= set(ds.comfy.SCHEDULERS)
        assert {c["model"] for c in mine} >= {*base.BASE_MODELS, "eps-sd15-zsnr",
                                              "v-sd15-zsnr", "flux-dev"}  # fmt: skip
        assert len({c["steps"] for c in mine}) >= 2
        assert any(c["check32"] for c in mine)
    for sampler, names in rec.OPTIONS.items():  # every option takes two values or more
        for name in {n for options in names for n in options}:
            default = getattr(ds.from_comfy(sampler), name)
            values = {c["options"].get(name, default) for c in CASES if c["sampler"] == sampler}
            assert len(values) >= 2, (sampler, name)


@pytest.mark.parametrize("sampler", rec.SAMPLERS)
def test_sampler_equals_comfyui(sampler):
    cp.check_sampler(CASES, sampler, run, TOL64, TOL32, "COMFY stochastic")


def test_noise_is_what_makes_the_difference():
    """Replaying other draws moves the result (the replay is not vacuous), and ours draws
    its own when none is given (a stochastic loop, deterministic per key)."""
    case = next(c for c in CASES if c["sampler"] == "dpmpp_2m_sde" and c["steps"] == 8)
    flipped_noise = [list(-np.asarray(z)) for z in case["expected"]["noise"]]
    flipped = dict(case, expected=dict(case["expected"], noise=flipped_noise))
    assert rel(run(flipped)[2], case["expected"]["sample"]) > 1e-3
    sched = build(case)
    assert not sched.deterministic
    a = ds.sample(toy, sched, NOISE, case["steps"], key=1)
    b = ds.sample(toy, sched, NOISE, case["steps"], key=1)
    c = ds.sample(toy, sched, NOISE, case["steps"], key=2)
    assert np.array_equal(a, b) and rel(a, c) > 1e-3


def test_deterministic_settings_draw_nothing():
    for sampler, options in (("euler_ancestral", {"eta": 0.0}), ("dpmpp_sde", {"s_noise": 0.0}),
                             ("er_sde", {"s_noise": 0.0})):  # fmt: skip
        sched = ds.from_comfy(sampler, "karras", **options)
        assert sched.deterministic
        state, _ = sched.init(4, NOISE)
        with pytest.raises(ValueError, match="draws no noise"):
            sched.step(state, NOISE, NOISE, noise=NOISE)


def test_names_options_and_errors():
    assert ds.from_comfy("dpmpp_2m_sde_heun").solver_type == "heun"
    assert ds.from_comfy("dpmpp_2m_sde_heun_gpu", solver_type="midpoint").solver_type == "midpoint"
    assert ds.from_comfy("dpmpp_2m_sde").solver_type == "midpoint"
    assert isinstance(ds.from_comfy("dpmpp_sde_gpu"), ds.ComfyDPMPPSDE)
    with pytest.raises(ValueError, match="solver_type"):
        ds.from_comfy("dpmpp_2m_sde", solver_type="rk4")
    with pytest.raises(ValueError, match="eta"):
        ds.from_comfy("euler_ancestral", eta=-1.0)
    with pytest.raises(ValueError, match="max_stage"):
        ds.from_comfy("er_sde", max_stage=4)
    for sched in (ds.from_comfy("er_sde", "beta", model="flow", shift=3.0, max_stage=2),
                  ds.from_comfy("dpmpp_2m_sde_heun", "karras", eta=0.5)):  # fmt: skip
        assert ds.from_config(sched.to_config()) == sched


@needs_oracle
def test_fixture_is_the_live_oracle():
    cp.check_live(CASES[::9] + [c for c in CASES if c["cfg"] != 1.0][:2], rec.run)


def test_a_reused_draw_is_the_draw():
    """A ("noise", lag) tableau term adds the draw of an earlier call again: the engine
    writes it in the operands it keeps, and the result equals adding that draw by hand."""
    from diffsched.core import engine

    rng = np.random.default_rng(3)
    x, m1, m2 = (rng.standard_normal(4) for _ in range(3))
    z0, z1 = rng.standard_normal(4), rng.standard_normal(4)
    update = engine.Update(2)
    update.add(engine.SAMPLE, 0, 0, 0.7)
    update.add(engine.X0, 0, 0, 0.2)
    update.add(engine.SAMPLE, 1, 1, 0.5)
    update.add(engine.X0, 0, 1, 0.3)
    update.add(engine.NOISE, 1, 1, 0.9)
    tab = engine.Tableau(timesteps=np.array([1.0, 0.5]), x0_sample=np.array([1.0, 1.0]),
                         x0_output=np.array([-0.8, -0.4]), update=update,
                         noise=np.array([0.6, 0.25]))  # fmt: skip
    program = engine.compile(tab, processes_x0=False, describe_bad=str)
    state, _ = engine.init(program, x, 0)
    state, x1 = engine.step("t", state, x, m1, z0, process=None, stochastic=True)
    state, x2 = engine.step("t", state, x1, m2, z1, process=None, stochastic=True)
    d0, d1 = x - 0.8 * m1, x1 - 0.4 * m2
    assert np.allclose(x1, 0.7 * x + 0.2 * d0 + 0.6 * z0, rtol=1e-14)
    assert np.allclose(x2, 0.5 * x + 0.3 * d1 + 0.9 * z0 + 0.25 * z1, rtol=1e-13)
    bad = engine.Tableau(timesteps=tab.timesteps, x0_sample=tab.x0_sample,
                         x0_output=tab.x0_output, update=update,
                         noise=np.array([0.0, 0.25]))  # fmt: skip
    with pytest.raises(ValueError, match="reuses the noise of call 0, which draws none"):
        engine.compile(bad, processes_x0=False, describe_bad=str)
