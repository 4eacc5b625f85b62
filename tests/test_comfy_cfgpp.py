"""ComfyUI's CFG++ samplers (``ds.from_comfy("<name>_cfg_pp")``) against ComfyUI's own code,
its noise replayed: the recorded fixture (tests/record_comfy_cfgpp.py) always, the oracle
(../shared/oracles/comfyui) live where it is present.

Each case steps the scheduler with the guided output u + cfg (c - u) and
``unconditional=u`` (ComfyUI mixes the denoised outputs, which for these models is mixing
the raw ones); a case recorded with u = c steps without ``unconditional=``. Per case: the
same σ list (1e-12) and timesteps, every draw ComfyUI used passed as ``noise=`` at the call
it follows (draws it multiplies by 0 are not made here), and the final sample within 1e-9
relative of the float64 oracle, 1e-5 of its float32 run (its draws replayed there).
Observed (97 cases, 25 in float32): float64 <= 2.3e-15; float32 <= 7.1e-7.
"""

from __future__ import annotations

import comfy_parity as cp
import numpy as np
import pytest
import record_comfy_cfgpp as rec
from comfy_parity import build, needs_oracle, rel

import diffsched as ds

FIXTURE = cp.load_fixture(rec.OUT)
CASES = FIXTURE["cases"]
W = np.array(FIXTURE["toy"]["W"])
B = np.array(FIXTURE["toy"]["b"])
B_UNCOND = np.array(FIXTURE["toy"]["b_uncond"])
NOISE = np.array(FIXTURE["toy"]["noise"])
TOL64 = 1e-9  # observed 2.3e-15
TOL32 = 1e-5  # observed 6.7e-7 (ComfyUI's float32 tables and model)
toy = cp.toy_model(W, B)
uncond = cp.toy_model(W, B_UNCOND)


def run(case: dict, sched=None):
    """Our CFG++ loop on the toy model, ComfyUI's draws replayed: (σ's, timesteps, result)."""

    def predict(x, t):
        c = toy(x, t)
        if case["uncond"] == "cond":  # u = c: the step without unconditional=
            return c, {}
        u = uncond(x, t)
        return u + (c - u) * case["cfg"], {"unconditional": u}

    return cp.run_replayed(case, build(case) if sched is None else sched, NOISE, predict)


def test_fixture_cases_are_the_recorder_cases():
    assert cp.recorder_cases(CASES) == rec.cases()


def test_the_grid_covers_every_name_model_and_scheduler():
    assert set(rec.SAMPLERS) == {n for n in ds.comfy.SAMPLERS if n.endswith("_cfg_pp")}
    assert {c["scheduler"] for c in CASES} >= set(ds.comfy.SCHEDULERS)
    for sampler in rec.SAMPLERS:
        mine = [c for c in CASES if c["sampler"] == sampler]
        assert {c["model"] for c in mine} >= {*rec.MODELS, "eps-sd15-zsnr", "flux-dev"}
        assert len({c["scheduler"] for c in mine}) >= 2 and len({c["steps"] for c in mine}) >= 2
        assert any(c["check32"] for c in mine) and all(c["cfg"] != 1 for c in mine
                                                       if c["uncond"] == "uncond")  # fmt: skip
    for sampler in rec.ANCESTRAL:  # noise replayed
        assert any(c["expected"]["noise"] for c in CASES if c["sampler"] == sampler)


@pytest.mark.parametrize("sampler", list(rec.SAMPLERS))
def test_cfgpp_sampler_equals_comfyui(sampler):
    cp.check_sampler(CASES, sampler, run, TOL64, TOL32, "COMFY cfg_pp")


def test_names_map_to_the_classes_with_cfg_pp():
    for sampler, cls in rec.SAMPLERS.items():
        sched = ds.from_comfy(sampler, "karras", eta=0.5) if sampler in rec.ANCESTRAL else (
            ds.from_comfy(sampler, "karras"))  # fmt: skip
        assert type(sched).__name__ == cls and sched.cfg_pp is True
        assert ds.from_config(sched.to_config()) == sched
        assert type(ds.from_comfy(sampler.replace("_cfg_pp", ""))).__name__ == cls
        with pytest.raises(TypeError, match="fixes"):
            ds.from_comfy(sampler, cfg_pp=False)


def test_guidance_changes_the_result_and_cfg_pp_is_not_plain_cfg():
    """The replay is not vacuous: without the unconditional output (plain CFG on the
    guided output) the result moves, as it does with another scale."""
    case = next(c for c in CASES if c["sampler"] == "res_multistep_ancestral_cfg_pp"
                and c["model"] == "eps-sd15" and c["steps"] == 8)  # fmt: skip
    assert rel(run(case)[2], case["expected"]["sample"]) < TOL64
    other = dict(case, cfg=case["cfg"] + 0.5)
    assert rel(run(other)[2], case["expected"]["sample"]) > 1e-4


@pytest.mark.parametrize("sampler", list(rec.SAMPLERS))
def test_without_unconditional_is_unconditional_prediction(sampler):
    """A cfg_pp scheduler stepped without ``unconditional=`` takes u = the prediction,
    exactly; for every name but dpmpp_2s_ancestral_cfg_pp (and euler_ancestral_cfg_pp on
    flow models) that is the plain sampler."""
    for model in ("eps", "flow"):
        sched = ds.from_comfy(sampler, "karras", model=model, shift=3.0 if model == "flow"
                              else None)  # fmt: skip
        plain = sched.replace(cfg_pp=False)
        state, timesteps = sched.init(6, NOISE, key=3)
        twin, _ = sched.init(6, NOISE, key=3)
        ref, _ = plain.init(6, NOISE, key=3)
        x = y = z = NOISE * sched.init_noise_scale(6)
        for t in timesteps:
            state, x = sched.step(state, x, toy(x, t))
            twin, y = sched.step(twin, y, toy(y, t), unconditional=toy(y, t))
            ref, z = plain.step(ref, z, toy(z, t))
        assert np.array_equal(x, y)
        differs = sampler == "dpmpp_2s_ancestral_cfg_pp" or (
            sampler == "euler_ancestral_cfg_pp" and model == "flow")  # fmt: skip
        if differs:
            assert rel(x, z) > 1e-3
        else:
            np.testing.assert_allclose(x, z, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("sampler", list(rec.SAMPLERS))
def test_ds_sample_with_guided_runs_comfyuis_cfgpp(sampler):
    """``ds.sample(ds.Guided(cond, uncond, cfg), sched, ...)`` passes both outputs: the
    deterministic names give ComfyUI's result, the ancestral ones the hand loop's with
    the same key."""
    case = next(c for c in CASES if c["sampler"] == sampler and c["steps"] == 8)
    sched = build(case)
    out = ds.sample(ds.Guided(toy, uncond, case["cfg"]), sched, NOISE, case["steps"], key=5)
    if sched.deterministic:
        assert rel(out, case["expected"]["sample"]) < TOL64
        return
    state, timesteps = sched.init(case["steps"], NOISE, key=5)
    held = NOISE * sched.init_noise_scale(case["steps"])
    for t in timesteps:
        u = uncond(held, t)
        state, held = sched.step(state, held, u + case["cfg"] * (toy(held, t) - u),
                                 unconditional=u)  # fmt: skip
    assert np.array_equal(out, held)
    assert rel(out, case["expected"]["sample"]) > 1e-3  # its own noise, not ComfyUI's


@needs_oracle
def test_fixture_is_the_live_oracle():
    cp.check_live(CASES[::7], rec.run)


def test_compiled_jax_loop_equals_eager():
    """The CFG++ weights of the per-class forms are table columns: a jitted JAX loop reads
    them from the traced step index and equals the eager NumPy one."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    jax.config.update("jax_enable_x64", True)

    def jtoy(b):
        def model(x, t):
            t = jnp.reshape(jnp.asarray(t, jnp.float64), (-1, 1))
            return jnp.tanh(x.reshape(x.shape[0], -1) @ W + t / 1000 * b).reshape(x.shape)

        return model

    for sampler in ("dpmpp_2s_ancestral_cfg_pp",):  # two calls a step, each its own weight
        sched = ds.from_comfy(sampler, "karras", model="flow", shift=3.0, eta=0.5)
        eager = ds.sample(ds.Guided(toy, uncond, 1.8), sched, NOISE, 5, key=2)
        jitted = ds.sample(ds.Guided(jtoy(B), jtoy(B_UNCOND), 1.8), sched, jnp.asarray(NOISE),
                           5, key=2, compile=True)  # fmt: skip
        assert rel(jitted, eager) < 1e-13
