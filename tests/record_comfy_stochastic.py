"""Records ComfyUI's stochastic samplers from the oracle (../shared/oracles/comfyui) into
tests/fixtures/comfy_stochastic.json, the numbers tests/test_comfy_stochastic.py holds
diffsched's stochastic ComfyUI samplers (ds.from_comfy) to when the oracle is absent.

    python tests/record_comfy_stochastic.py [OUT]  # from the repository root (OUT: to cmp a rerun)

Each case is a ComfyUI KSampler run on the oracle's toy model (the W, b and initial noise
of tests/fixtures/comfy_samplers.json); the fixture keeps the σ list, the timestep of every
model call, every noise draw ComfyUI made (with the number of denoiser calls before it)
and the final sample of the float64 run, and where ``check32`` the float32 run's sample
with the float64 run's draws replayed. Deterministic: two runs write the same file.
"""

from __future__ import annotations

import comfy_parity as cp
from record_comfy_samplers import BASE_MODELS
from record_comfy_schedules import SCHEDULERS

OUT = cp.FIXTURES / "comfy_stochastic.json"

SAMPLERS = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
            "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
            "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
            "res_multistep_ancestral", "er_sde", "seeds_2", "seeds_3", "sa_solver",
            "sa_solver_pece")  # fmt: skip
# the samplers with their own tests of every scheduler (the _gpu names: the same method)
MAIN = tuple(s for s in SAMPLERS if not s.endswith("_gpu"))
CHECK32 = ("karras", "exponential", "kl_optimal")  # see record_comfy_samplers
# run with classifier-free guidance (cfg 3, the uncond toy model)
CFG = ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "seeds_2", "sa_solver_pece", "er_sde")
# offset_first_sigma_for_snr on flow models
OFFSET = ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "er_sde", "seeds_2",
          "seeds_3", "sa_solver", "sa_solver_pece")  # fmt: skip
# options (ComfyUI's er_sde takes a function: the recorder maps our names to it)
OPTIONS = {
    "euler_ancestral": ({"eta": 0.5}, {"eta": 0.0}, {"s_noise": 0.7}),
    "dpm_2_ancestral": ({"eta": 0.5}, {"eta": 0.0}, {"s_noise": 0.7}),
    "dpmpp_2s_ancestral": ({"eta": 0.5}, {"eta": 0.0}, {"s_noise": 0.7}),
    # η = 2: stages whose ancestral split leaves σ_down = 0 (they land on x̂_0 plus noise)
    "dpmpp_sde": ({"eta": 0.5}, {"r": 0.3}, {"s_noise": 0.7}, {"eta": 0.0}, {"eta": 2.0}),
    "dpmpp_2m_sde": ({"solver_type": "heun"}, {"eta": 0.5}, {"s_noise": 0.0}),
    "dpmpp_2m_sde_heun": ({"solver_type": "midpoint"}, {"eta": 0.3, "s_noise": 0.8}),
    "dpmpp_3m_sde": ({"eta": 0.5}, {"s_noise": 0.7}, {"eta": 0.0}),
    "res_multistep_ancestral": ({"eta": 0.5}, {"s_noise": 0.7}, {"eta": 0.0}),
    "er_sde": ({"max_stage": 1}, {"max_stage": 2}, {"s_noise": 0.5},
               {"noise_scaler": "reverse_time_sde", "eta": 1.0},
               {"noise_scaler": "reverse_time_sde", "eta": 0.5, "max_stage": 2},
               {"noise_scaler": "reverse_time_sde", "eta": 0.0, "s_noise": 0.0}),
    "seeds_2": ({"eta": 0.5}, {"r": 0.3}, {"s_noise": 0.7}, {"eta": 0.0}),
    "seeds_3": ({"eta": 0.5}, {"r_1": 0.25, "r_2": 0.6}, {"s_noise": 0.7}, {"eta": 0.0}),
    "sa_solver": ({"predictor_order": 2, "corrector_order": 2}, {"predictor_order": 1,
                  "corrector_order": 0}, {"predictor_order": 6, "corrector_order": 6},
                  {"simple_order_2": True, "predictor_order": 2, "corrector_order": 2},
                  {"eta": 0.5, "sde_start_percent": 0.0, "sde_end_percent": 1.0},
                  {"use_pece": True, "s_noise": 0.7}, {"eta": 0.0}),
    "sa_solver_pece": ({"predictor_order": 2, "corrector_order": 3},
                       {"simple_order_2": True, "predictor_order": 2, "corrector_order": 2},
                       {"eta": 1.5, "sde_start_percent": 0.1, "sde_end_percent": 0.5}),
}  # fmt: skip
FLOW_SIGMAS = [1.0, 0.8, 0.55, 0.3, 0.1, 0.0]  # σ_0 = 1: ComfyUI's offset on flow models
EPS_SIGMAS = [14.6, 7.0, 3.1, 1.2, 0.45, 0.1, 0.0]


def cases() -> list[dict]:
    """Every sampler x every scheduler once (model eps / v / flow and 3 / 8 steps rotating),
    zero-SNR and flux models, every option, partial denoise, explicit σ's (on flow from
    σ = 1), one step; float32 runs on the continuous schedules."""
    out = []

    def add(sampler, scheduler, steps, model, options=None, denoise=1.0, sigmas=None,
            check32=False, cfg=1.0):  # fmt: skip
        out.append(dict(sampler=sampler, scheduler=scheduler, steps=steps, model=model,
                        options=options or {}, denoise=denoise, sigmas=sigmas,
                        check32=check32, cfg=cfg))  # fmt: skip

    for i, sampler in enumerate(MAIN):
        for j, scheduler in enumerate(SCHEDULERS):
            model = BASE_MODELS[(i + j) % 3]
            if (sampler, scheduler, model) == ("dpmpp_sde", "kl_optimal", "flow-sd3"):
                # ComfyUI's own NaN: kl_optimal starts at 1 - 1e-16 (no offset), whose
                # float32 query time (1.0) lies past its Brownian tree's end
                model = "v-sd15"
            # float32 on flow models: from σ = 1 (karras) the samplers that offset it take
            # ComfyUI's float32 λ of percent_to_sigma(1e-4) (1 - σ off by 1e-4 relative: up
            # to 1e-5 apart); kl_optimal's first σ, 1 - 1e-16, is 1.0 in float32 (5e-6)
            flow32 = model == "flow-sd3" and (sampler in OFFSET or scheduler == "kl_optimal")
            check32 = scheduler in CHECK32 and not flow32
            add(sampler, scheduler, (3, 8)[(i + j) % 2], model, check32=check32)
        for k, model in enumerate(("eps-sd15-zsnr", "v-sd15-zsnr", "flux-dev")):
            add(sampler, ("karras", "simple", "beta")[(i + k) % 3], 6, model)
        add(sampler, ("normal", "karras", "simple")[i % 3], 6, BASE_MODELS[i % 3], denoise=0.6)
        add(sampler, None, len(FLOW_SIGMAS) - 1, "flow-sd3", sigmas=FLOW_SIGMAS)
        add(sampler, None, len(EPS_SIGMAS) - 1, "eps-sd15", sigmas=EPS_SIGMAS)
        add(sampler, "karras", 1, "eps-sd15")
    for sampler in ("euler_ancestral", "lcm", "dpmpp_2m_sde"):
        for model in ("x0-sd15", "lcm-sd15", "flow-auraflow"):
            add(sampler, "sgm_uniform", 5, model)
    for sampler in SAMPLERS:
        if sampler.endswith("_gpu"):
            add(sampler, "karras", 5, "eps-sd15")
            add(sampler, "simple", 4, "flow-sd3")
    for sampler, values in OPTIONS.items():
        for k, value in enumerate(values):
            add(sampler, SCHEDULERS[k], 7, BASE_MODELS[k % 3], value, check32=k == 0)
            # ComfyUI's dpm_2_ancestral RF at η = 0 takes sqrt(σ² - σ² (1 + ulp)): NaN
            nan = sampler == "dpm_2_ancestral" and value.get("eta") == 0.0
            add(sampler, "karras", 4, "eps-sd15" if nan else "flow-sd3", value)
    for k, sampler in enumerate(CFG):  # guidance: a conditional and an unconditional call
        add(sampler, SCHEDULERS[2 * k % 9], 6, BASE_MODELS[k % 3], cfg=3.0, check32=k < 2)
    return out


def _options(oracle, case: dict):
    """ComfyUI's sampler options of a case: er_sde's noise_scaler and sa_solver's tau_func
    as ComfyUI's nodes (SamplerER_SDE, SamplerSASolver) build them from ours."""
    options = dict(case["options"])
    if case["sampler"] == "er_sde" and options.pop("noise_scaler", None) == "reverse_time_sde":
        eta = options.pop("eta")
        options["noise_scaler"] = lambda x: x ** (eta + 1)
    tau = {k: options.pop(k) for k in ("eta", "sde_start_percent", "sde_end_percent")
           if case["sampler"].startswith("sa_solver") and k in options}  # fmt: skip
    if tau:
        made = []

        def tau_func(sigma):  # built at its first call: inside the run's precision mode
            if not made:
                ms, _ = oracle.make_model_sampling(case["model"])
                made.append(oracle.modules()["K"].sa_solver.get_tau_interval_func(
                    ms.percent_to_sigma(tau.get("sde_start_percent", 0.2)),
                    ms.percent_to_sigma(tau.get("sde_end_percent", 0.8)),
                    eta=tau.get("eta", 1.0)))  # fmt: skip
            return made[0](sigma)

        options["tau_func"] = tau_func
    return options or None


def run(oracle, case: dict, precision: str = "float64", noise_replay=None) -> dict:
    return cp.run(oracle, case, precision, sampler_options=_options(oracle, case),
                  noise_replay=noise_replay, cfg=case["cfg"],
                  uncond_model_fn=cp.toy(oracle, which="uncond"))  # fmt: skip


def expected(oracle, case: dict) -> dict:
    """What a test compares, from the oracle's float64 (and float32) runs."""
    return cp.replayed_expected(oracle, case, run)


def record(oracle) -> dict:
    return {
        "format": "diffsched-comfy-stochastic/1",
        "b_uncond": cp.floats(cp.toy(oracle).params["b_uncond"].numpy()),
        "cases": [dict(case, expected=expected(oracle, case)) for case in cases()],
    }


if __name__ == "__main__":
    cp.main(record, OUT)
