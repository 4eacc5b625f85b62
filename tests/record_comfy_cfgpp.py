"""Records ComfyUI's CFG++ samplers (the seven ``*_cfg_pp`` names) from the oracle
(../shared/oracles/comfyui) into tests/fixtures/comfy_cfgpp.json, the numbers
tests/test_comfy_cfgpp.py holds ``ds.from_comfy("<name>_cfg_pp")`` to when the oracle is
absent.

    python tests/record_comfy_cfgpp.py     # from the repository root

Each case is a ComfyUI KSampler run with classifier-free guidance (``cfg``) of the oracle's
toy model (conditional: bias b; unconditional: bias b_uncond; the same W as
record_comfy_samplers.py) from its fixed initial noise; ``uncond="cond"`` runs the
conditional model as the unconditional one too (what a CFG++ scheduler stepped without
``unconditional=`` is). The fixture keeps the σ list, the timestep of every conditional
call, every noise draw (with the number of denoiser calls before it), the float64 result
and, where ``check32``, the float32 run's result with the float64 run's draws replayed.
Deterministic: two runs write the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from record_comfy_samplers import NOISE, SHAPE, TOY_SEED, _floats
from record_comfy_schedules import SCHEDULERS, load_oracle

OUT = Path(__file__).resolve().parent / "fixtures" / "comfy_cfgpp.json"
# ComfyUI's CFG++ names -> the diffsched class ds.from_comfy gives (with cfg_pp=True)
SAMPLERS = {
    "euler_cfg_pp": "ComfyEuler",
    "euler_ancestral_cfg_pp": "ComfyEulerAncestral",
    "dpmpp_2s_ancestral_cfg_pp": "ComfyDPMPP2SAncestral",
    "dpmpp_2m_cfg_pp": "ComfyDPMPP2M",
    "res_multistep_cfg_pp": "ComfyResMultistep",
    "res_multistep_ancestral_cfg_pp": "ComfyResMultistepAncestral",
    "gradient_estimation_cfg_pp": "ComfyGradientEstimation",
}
ANCESTRAL = ("euler_ancestral_cfg_pp", "dpmpp_2s_ancestral_cfg_pp",
             "res_multistep_ancestral_cfg_pp")  # fmt: skip
MODELS = ("eps-sd15", "v-sd15", "flow-sd3")
# see record_comfy_samplers; on eps, v and flow models only (zero-SNR's float32 table at
# σ_max = 4519: 4.8e-6 apart), and kl_optimal not on flow: its first σ, 1 - 1e-16, is 1.0
# in float32 (moves res_multistep_ancestral_cfg_pp's first ancestral step: 5.8e-5)
CHECK32 = ("karras", "exponential", "kl_optimal")
OPTIONS = {
    **{name: ({"eta": 0.5}, {"eta": 0.0}, {"s_noise": 0.7}) for name in ANCESTRAL},
    "gradient_estimation_cfg_pp": ({"ge_gamma": 1.5},),
}
FLOW_SIGMAS = [1.0, 0.8, 0.55, 0.3, 0.1, 0.0]  # σ_0 = 1 on a flow model: α_0 = 0


def cases() -> list[dict]:
    """Every name x (eps, v, flow) at 3 and 8 steps (every scheduler over the names),
    zero-SNR and flux models, every option, explicit σ's from σ = 1 on flow, partial
    denoise, and u = c at cfg 1; float32 runs on the continuous schedules."""
    out = []

    def add(sampler, scheduler, steps, model, cfg, options=None, sigmas=None, denoise=1.0,
            uncond="uncond"):  # fmt: skip
        out.append(dict(sampler=sampler, scheduler=scheduler, steps=steps, model=model, cfg=cfg,
                        options=options or {}, sigmas=sigmas, denoise=denoise, uncond=uncond,
                        check32=scheduler in CHECK32 and model in MODELS[:2] + (
                            () if scheduler == "kl_optimal" else MODELS[2:])))  # fmt: skip

    for i, sampler in enumerate(SAMPLERS):
        for j, model in enumerate(MODELS):
            add(sampler, SCHEDULERS[(3 * i + j) % 9], 3, model, 1.5)
            add(sampler, SCHEDULERS[(3 * i + j + 4) % 9], 8, model, 0.8)
        add(sampler, "karras", 6, "eps-sd15-zsnr", 2.0)
        add(sampler, "simple", 5, "flux-dev", 2.0)
        add(sampler, None, len(FLOW_SIGMAS) - 1, "flow-sd3", 1.7, sigmas=FLOW_SIGMAS)
        add(sampler, ("normal", "karras")[i % 2], 6, MODELS[i % 3], 1.3, denoise=0.6)
        add(sampler, "exponential", 5, MODELS[(i + 1) % 3], 1.0, uncond="cond")
    for sampler, values in OPTIONS.items():
        for k, options in enumerate(values):
            add(sampler, SCHEDULERS[(2 * k + 2) % 9], 7, MODELS[k % 3], 2.2, options)
            add(sampler, None, len(FLOW_SIGMAS) - 1, "flow-sd3", 2.2, options, FLOW_SIGMAS)
    return out


def run(oracle, case: dict, precision: str = "float64", noise_replay=None) -> dict:
    import torch

    sigmas = case["sigmas"]
    return oracle.run(
        case["sampler"], case["scheduler"], case["steps"],
        oracle.toy_model(SHAPE, seed=TOY_SEED), torch.tensor(NOISE), model=case["model"],
        cfg=case["cfg"], denoise=case["denoise"], precision=precision,
        sigmas=None if sigmas is None else torch.tensor(sigmas, dtype=torch.float64),
        uncond_model_fn=oracle.toy_model(SHAPE, seed=TOY_SEED, which=case["uncond"]),
        sampler_options=case["options"] or None, noise_replay=noise_replay,
    )  # fmt: skip


def expected(oracle, case: dict) -> dict:
    """What a test compares, from the oracle's float64 (and float32) runs."""
    import torch

    r = run(oracle, case)
    row = dict(
        sigmas=_floats(r["sigmas"]),
        timesteps=_floats(r["model_timestep"][r["model_which"] == 0]),
        sample=_floats(r["sample"]),
        noise_den=[int(i) for i in r["noise_den_index"]],
        noise=[_floats(z) for z in r["noise_draws"]],
    )
    row["sample32"] = None
    if case["check32"]:
        replay = [torch.tensor(z, dtype=torch.float32) for z in r["noise_draws"]]
        row["sample32"] = _floats(run(oracle, case, "float32", replay)["sample"])
    return row


def record(oracle) -> dict:
    params = oracle.toy_model(SHAPE, seed=TOY_SEED).params
    return {
        "format": "diffsched-comfy-cfgpp/2",
        "toy": {"shape": list(SHAPE), "W": [_floats(r) for r in params["W"].numpy()],
                "b": _floats(params["b"].numpy()), "b_uncond": _floats(params["b_uncond"].numpy()),
                "noise": [_floats(r) for r in np.asarray(NOISE)]},
        "cases": [dict(case, expected=expected(oracle, case)) for case in cases()],
    }  # fmt: skip


def main() -> None:
    oracle = load_oracle()
    if oracle is None:
        raise SystemExit("the oracle (../shared/oracles/comfyui) is not there")
    data = record(oracle)
    OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(data['cases'])} cases)")


if __name__ == "__main__":
    main()
