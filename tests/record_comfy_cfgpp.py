"""Records ComfyUI's CFG++ samplers (the seven ``*_cfg_pp`` names) from the oracle
(../shared/oracles/comfyui) into tests/fixtures/comfy_cfgpp.json, the numbers
tests/test_comfy_cfgpp.py holds ``ds.from_comfy("<name>_cfg_pp")`` to when the oracle is
absent.

    python tests/record_comfy_cfgpp.py [OUT]  # from the repository root (OUT: to cmp a rerun)

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

import comfy_parity as cp
from record_comfy_schedules import SCHEDULERS

OUT = cp.FIXTURES / "comfy_cfgpp.json"
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
    return cp.run(oracle, case, precision, cfg=case["cfg"], noise_replay=noise_replay,
                  uncond_model_fn=cp.toy(oracle, which=case["uncond"]))  # fmt: skip


def expected(oracle, case: dict) -> dict:
    """What a test compares, from the oracle's float64 (and float32) runs."""
    return cp.replayed_expected(oracle, case, run)


def record(oracle) -> dict:
    return {
        "format": "diffsched-comfy-cfgpp/2",
        "toy": cp.toy_record(oracle, uncond=True),
        "cases": [dict(case, expected=expected(oracle, case)) for case in cases()],
    }


if __name__ == "__main__":
    cp.main(record, OUT)
