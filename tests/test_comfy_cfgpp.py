"""ComfyUI's CFG++ samplers against diffsched's ``step(..., unconditional=)``: the recorded
fixture (tests/record_comfy_cfgpp.py) always, the oracle (../shared/oracles/comfyui) live
where it is present.

ComfyUI's euler_cfg_pp, dpmpp_2m_cfg_pp and gradient_estimation_cfg_pp are its euler,
dpmpp_2m and gradient_estimation with x̂_0 from the guided denoiser and the ODE direction
(and the multistep history) from the unconditional one: exactly the engine's one CFG++
rule (:func:`diffsched.core.engine.guided_step`) on ``ComfyEuler``, ``ComfyDPMPP2M`` and
``ComfyGradientEstimation``, given the guided output u + cfg (c - u) (ComfyUI mixes the
denoised outputs, which for these models is mixing the raw ones) and the unconditional u.
On flow models ComfyUI's euler_cfg_pp splits x = (1 - σ) x̂_0 + σ ε̂ (the model's own α)
while its dpmpp_2m_cfg_pp and gradient_estimation_cfg_pp split x = x̂_0 + σ d: those two
classes declare ``CFG_PP_VE_SPLIT``. Observed: 9.4e-16 relative (float64), 18 cases
(eps, v, flow; karras, normal, simple; 3 and 8 steps; cfg 1.5 and 0.8).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import record_comfy_cfgpp as rec
import record_comfy_samplers as samplers

import diffsched as ds

FIXTURE = json.loads(rec.OUT.read_text(encoding="utf-8"))
W = np.array(FIXTURE["toy"]["W"])
B = np.array(FIXTURE["toy"]["b"])
B_UNCOND = np.array(FIXTURE["toy"]["b_uncond"])
NOISE = np.array(FIXTURE["toy"]["noise"])
TOL64 = 1e-9  # observed 9.4e-16


def toy(x, t, b):
    t = np.broadcast_to(np.asarray(t, dtype=np.float64), (x.shape[0],)).reshape(-1, 1)
    return np.tanh(x.reshape(x.shape[0], -1) @ W + t / 1000 * b).reshape(x.shape)


def ours(case: dict) -> tuple[np.ndarray, np.ndarray]:
    """(σ list, final sample) of our CFG++ loop for a case."""
    model, settings = samplers.MODELS[case["model"]]
    sched = getattr(ds, rec.SAMPLERS[case["sampler"]])(
        model=model, scheduler=case["scheduler"], **settings
    )
    n = case["steps"]
    state, timesteps = sched.init(n, NOISE)
    held = NOISE * sched.init_noise_scale(n)
    for t in timesteps:
        c, u = toy(held, t, B), toy(held, t, B_UNCOND)
        state, held = sched.step(state, held, u + case["cfg"] * (c - u), unconditional=u)
    return sched.sigmas(n), held


def rel(a, b) -> float:
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_fixture_cases_are_the_recorder_cases():
    keys = ("sampler", "scheduler", "steps", "model", "cfg")
    assert [{k: c[k] for k in keys} for c in FIXTURE["cases"]] == rec.cases()


@pytest.mark.parametrize("sampler", list(rec.SAMPLERS))
def test_cfgpp_sampler_equals_comfyui(sampler):
    worst = 0.0
    for case in [c for c in FIXTURE["cases"] if c["sampler"] == sampler]:
        sig, out = ours(case)
        np.testing.assert_allclose(sig, case["expected"]["sigmas"], rtol=1e-12)
        worst = max(worst, rel(out, case["expected"]["sample"]))
        # not the plain sampler: the guidance mix changes the result
        plain = ds.from_comfy(sampler.replace("_cfg_pp", ""), case["scheduler"],
                              model=samplers.MODELS[case["model"]][0],
                              **samplers.MODELS[case["model"]][1])  # fmt: skip
        assert type(plain).__name__ == rec.SAMPLERS[sampler]
    samplers_summary = __import__("oracle")
    samplers_summary.record("COMFY cfg_pp float64 vs oracle", sampler, worst)
    assert worst < TOL64, worst


def test_live_oracle_when_present():
    oracle = samplers.load_oracle()
    if oracle is None:
        pytest.skip("the ComfyUI oracle (../shared/oracles/comfyui) is not here")
    for case in rec.cases()[::5]:
        want = rec.run(oracle, case)["sample"]
        _, out = ours(case)
        assert rel(out, want) < TOL64
