"""Records ComfyUI's deterministic samplers from the oracle (../shared/oracles/comfyui) into
tests/fixtures/comfy_samplers.json, the numbers tests/test_comfy_samplers.py holds
diffsched's ComfyUI samplers (ds.from_comfy) to when the oracle is absent.

    python tests/record_comfy_samplers.py [OUT]  # from the repository root (OUT: to cmp a rerun)

Each case is a ComfyUI KSampler run on the oracle's toy model, pred(x_in, t) =
tanh(x_in.reshape(B, D) @ W + (t / 1000) b) (W, b written once), from one fixed initial
noise; the fixture keeps what a test compares: the σ list, the timestep of every model
call, the churn noise ComfyUI drew, the final sample (float64 run, and float32 run where
``check32``). Deterministic: two runs write the same file.
"""

from __future__ import annotations

import comfy_parity as cp
from comfy_parity import floats, run
from record_comfy_schedules import SCHEDULERS

OUT = cp.FIXTURES / "comfy_samplers.json"
BASE_MODELS = ("eps-sd15", "v-sd15", "flow-sd3")
SAMPLERS = ("euler", "ddim", "heun", "heunpp2", "dpm_2", "lms", "dpm_fast", "dpmpp_2m",
            "ipndm", "ipndm_v", "deis", "res_multistep", "gradient_estimation", "uni_pc",
            "uni_pc_bh2")  # fmt: skip
CHURN = {"s_churn": 1.0}
# float32 runs on continuous schedules: where a level sits halfway between two table entries
# in log σ (normal at 3 steps: t = 499.5), ComfyUI's float32 nearest index can flip
CHECK32 = ("karras", "exponential", "kl_optimal")  # γ = min(1/N, sqrt(2) - 1) on every step


def cases() -> list[dict]:
    """Every sampler x every scheduler once (model eps / v / flow and 3 / 8 steps rotating),
    then zero-SNR and flux models, options, partial denoise, explicit σ's and churn."""
    out = []

    def add(sampler, scheduler, steps, model, options=None, denoise=1.0, sigmas=None,
            check32=False):  # fmt: skip
        out.append(dict(sampler=sampler, scheduler=scheduler, steps=steps, model=model,
                        options=options or {}, denoise=denoise, sigmas=sigmas,
                        check32=check32))  # fmt: skip

    for i, sampler in enumerate(SAMPLERS):
        for j, scheduler in enumerate(SCHEDULERS):
            add(sampler, scheduler, (3, 8)[(i + j) % 2], BASE_MODELS[(i + j) % 3],
                check32=scheduler in CHECK32)  # fmt: skip
        for k, model in enumerate(("eps-sd15-zsnr", "v-sd15-zsnr", "flux-dev")):
            add(sampler, ("karras", "simple", "beta")[(i + k) % 3], 6, model)
    for sampler in ("euler", "dpmpp_2m", "uni_pc"):
        for model in ("x0-sd15", "lcm-sd15", "flow-auraflow"):
            add(sampler, "sgm_uniform", 5, model)
    for sampler in SAMPLERS:  # one step (ComfyUI's uni_pc: order 0, its output unused)
        add(sampler, "karras", 1, "flow-sd3" if sampler.startswith("uni_pc") else "eps-sd15")
    options = {
        "lms": ({"order": 2}, {"order": 3}),
        "ipndm": ({"max_order": 2}, {"max_order": 3}),
        "ipndm_v": ({"max_order": 2}, {"max_order": 3}),
        "deis": ({"max_order": 2}, {"max_order": 4}, {"deis_mode": "rhoab"}),
        "gradient_estimation": ({"ge_gamma": 1.5}, {"ge_gamma": 2.5}),
    }
    for sampler, values in options.items():
        for k, value in enumerate(values):
            steps = 4 if value.get("deis_mode") == "rhoab" else 9  # ComfyUI's ρAB: <= 4
            add(sampler, SCHEDULERS[k], steps, BASE_MODELS[k % 3], value)
            add(sampler, "karras", 3, "flow-sd3", value)
    for k, sampler in enumerate(SAMPLERS):  # partial denoise, explicit σ's
        add(sampler, ("normal", "karras", "simple")[k % 3], 6, BASE_MODELS[k % 3], denoise=0.6)
        sigmas = [14.6, 7.0, 3.1, 1.2, 0.45, 0.1, 0.0] if k % 2 else [0.98, 0.8, 0.5, 0.2, 0.0]
        add(sampler, None, len(sigmas) - 1, "eps-sd15" if k % 2 else "flow-sd3", sigmas=sigmas)
    for k, sampler in enumerate(("euler", "ddim", "heun", "dpm_2", "heunpp2")):  # churn
        for j, model in enumerate(BASE_MODELS):
            add(sampler, SCHEDULERS[(3 * k + j) % 9], (4, 7)[(k + j) % 2], model, dict(CHURN))
        add(sampler, "karras", 6, "eps-sd15", {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 5.0,
                                               "s_noise": 1.1})  # fmt: skip
    return out


def expected(oracle, case: dict) -> dict:
    """What a test compares, from the oracle's float64 (and float32) runs."""
    r = run(oracle, case)
    churn = r["noise_kind"] == "randn_like"
    row = dict(
        sigmas=floats(r["sigmas"]),
        timesteps=floats(r["model_timestep"]),
        sample=floats(r["sample"]),
        churn_den=[int(i) for i in r["noise_den_index"][churn]],
        churn_noise=[floats(z) for z in r["noise_draws"][churn]],
    )
    row["sample32"] = floats(run(oracle, case, "float32")["sample"]) if case["check32"] else None
    return row


def record(oracle) -> dict:
    return {
        "format": "diffsched-comfy-samplers/1",
        "toy": cp.toy_record(oracle),
        "cases": [dict(case, expected=expected(oracle, case)) for case in cases()],
    }


if __name__ == "__main__":
    cp.main(record, OUT)
