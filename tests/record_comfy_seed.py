"""Records ComfyUI's KSampler results for a seed from the oracle (../shared/oracles/comfyui)
into tests/fixtures/comfy_seed.json, the numbers tests/test_comfy_seed.py holds diffsched's
``noise_stream="comfy"`` to when the oracle is absent.

    python tests/record_comfy_seed.py [OUT]  # from the repository root (OUT: to cmp a rerun)

Each case is a ComfyUI KSampler run on the oracle's toy model with ComfyUI drawing every
normal itself from the case's seed (its initial noise, its samplers' seeded generator, its
global generator's churn draws, its Brownian tree): nothing replayed. The fixture keeps the
final sample of the float64 run (noise drawn in float32 as ComfyUI draws it, then upcast),
how many draws ComfyUI made and of which kinds, for a few cases the float32 run's sample
(ComfyUI as it runs on a CPU) and its float32 σ list, and the toy model of any shape besides the
(2, 8) of tests/fixtures/comfy_samplers.json. Deterministic: two runs write the same file.
"""

from __future__ import annotations

import comfy_parity as cp
from comfy_parity import SHAPE, floats
from record_comfy_stochastic import FLOW_SIGMAS, _options
from record_comfy_stochastic import SAMPLERS as STOCHASTIC

OUT = cp.FIXTURES / "comfy_seed.json"

# the churn samplers (global generator); ComfyUI's ddim reseeds that generator with seed + 1
# for its (unused) inpaint noise: not covered (see docs/comfyui.md)
CHURN = ("euler", "heun", "dpm_2", "heunpp2")
SAMPLERS = STOCHASTIC + CHURN
SEEDS = (0, 1, 42, 123_456_789, (1 << 63) + 5, (1 << 64) - 1)  # ComfyUI's seeds: < 2**64
OTHER_SHAPE = (1, 3, 7)  # 21 values: torch's vectorised normals and their tail
# a few option values per sampler: draws ComfyUI multiplies by 0 (η = 0, s_noise = 0 mid
# run), more draws per step, the SDE interval of SA-Solver
OPTIONS = {
    "euler_ancestral": ({"eta": 0.5, "s_noise": 0.7},),
    "dpm_2_ancestral": ({"eta": 0.5},),
    "dpmpp_2s_ancestral": ({"eta": 0.5},),
    "dpmpp_sde": ({"eta": 0.5, "r": 0.3},),
    "dpmpp_2m_sde": ({"eta": 0.5, "s_noise": 0.8},),
    "dpmpp_3m_sde": ({"eta": 0.7},),
    "res_multistep_ancestral": ({"eta": 0.5},),
    "er_sde": ({"max_stage": 2, "s_noise": 0.5},),
    "seeds_3": ({"eta": 0.5, "r_1": 0.25, "r_2": 0.6},),
    "sa_solver": ({"eta": 0.5, "sde_start_percent": 0.0, "sde_end_percent": 1.0},),
}
# float32 ComfyUI (what it runs on a CPU), from the seed: (sampler, scheduler, steps, model,
# options, whether our loop takes ComfyUI's float32 σ list: a Brownian path is queried at
# the float32 σ's, and ComfyUI's float32 karras / exponential lists are not the float64 ones
# rounded)
CHECK32 = (
    ("euler_ancestral", "karras", 8, "eps-sd15", {}, False),
    ("seeds_3", "exponential", 6, "v-sd15", {}, False),
    ("er_sde", "simple", 5, "flow-sd3", {}, False),
    ("heun", "karras", 6, "eps-sd15", {"s_churn": 1.0}, False),
    ("dpmpp_2m_sde", "karras", 8, "eps-sd15", {}, True),
    ("dpmpp_3m_sde_gpu", "exponential", 6, "v-sd15", {}, True),
    ("dpmpp_2m_sde_heun", "simple", 5, "flow-sd3", {}, True),
)
CHURN_OPTIONS = (
    {"s_churn": 1.0},  # every step churns, the first one too
    {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 5.0, "s_noise": 1.1},  # not the first step
)


def cases() -> list[dict]:
    """Every sampler on the eps model (karras at 4 steps, normal at 7) and the flow model
    (simple at 5: the RF forms and ComfyUI's offset of σ = 1), rotating seeds; options;
    explicit σ's from σ = 1, partial denoise, the v model and another shape on a few."""
    out = []

    def add(sampler, scheduler, steps, model, options=None, seed=0, denoise=1.0, sigmas=None,
            shape=SHAPE, check32=False, sigmas32=False):  # fmt: skip
        out.append(dict(sampler=sampler, scheduler=scheduler, steps=steps, model=model,
                        options=options or {}, seed=seed, denoise=denoise, sigmas=sigmas,
                        shape=list(shape), check32=check32, sigmas32=sigmas32))  # fmt: skip

    for i, sampler in enumerate(SAMPLERS):
        churns = CHURN_OPTIONS if sampler in CHURN else ({},)
        for k, options in enumerate(churns):
            add(sampler, "karras", 4, "eps-sd15", options, SEEDS[(i + k) % 6])
            add(sampler, "normal", 7, "eps-sd15", options, SEEDS[(i + k + 1) % 6])
            add(sampler, "simple", 5, "flow-sd3", options, SEEDS[(i + k + 2) % 6])
        for options in OPTIONS.get(sampler, ()):
            add(sampler, "exponential", 6, "v-sd15", options, SEEDS[i % 6])
            add(sampler, "beta", 5, "flow-sd3", options, SEEDS[(i + 3) % 6])
    for k, sampler in enumerate(("dpmpp_sde", "dpmpp_2m_sde", "seeds_2", "er_sde", "euler")):
        options = dict(CHURN_OPTIONS[0]) if sampler == "euler" else {}
        add(
            sampler,
            None,
            len(FLOW_SIGMAS) - 1,
            "flow-sd3",
            options,
            SEEDS[k % 6],
            sigmas=FLOW_SIGMAS,
        )
        add(sampler, "karras", 6, "eps-sd15", options, SEEDS[(k + 1) % 6], denoise=0.6)
        add(sampler, "sgm_uniform", 5, "eps-sd15", options, SEEDS[(k + 2) % 6], shape=OTHER_SHAPE)
    for sampler in ("dpmpp_2s_ancestral", "euler_ancestral"):  # η > 1: σ_down = 0 above the end
        add(sampler, "karras", 6, "eps-sd15", {"eta": 1.5}, SEEDS[2])
    for k, (sampler, scheduler, steps, model, options, sigmas32) in enumerate(CHECK32):
        add(sampler, scheduler, steps, model, options, SEEDS[(k + 4) % 6], check32=True,
            sigmas32=sigmas32)  # fmt: skip
    return out


def toy_params(oracle, shape) -> dict:
    params = cp.toy(oracle, shape).params
    return {"W": floats(params["W"].numpy()), "b": floats(params["b"].numpy())}


def run(oracle, case: dict, precision: str = "float64") -> dict:
    """ComfyUI drawing every normal itself from the case's seed (SA-Solver's interval
    options as ComfyUI's SamplerSASolver node builds its tau_func)."""
    shape = tuple(case["shape"])
    options = _options(oracle, case)
    return cp.run(oracle, case, precision, noise=None, model_fn=cp.toy(oracle, shape),
                  seed=case["seed"], shape=shape, sampler_options=options)  # fmt: skip


def expected(oracle, case: dict) -> dict:
    r = run(oracle, case)
    kinds = [str(k) for k in r["noise_kind"]]
    out = dict(sample=floats(r["sample"]), draws=len(kinds), kinds=sorted(set(kinds)),
               sample32=None, sigmas32=None)  # fmt: skip
    if case["check32"]:
        out["sample32"] = floats(run(oracle, case, "float32")["sample"])
    if case["sigmas32"]:
        out["sigmas32"] = floats(oracle.compute_sigmas(
            case["sampler"], case["scheduler"], case["steps"], model=case["model"],
            precision="float32"))  # fmt: skip
    return out


def record(oracle) -> dict:
    return {
        "format": "diffsched-comfy-seed/1",
        "toys": {",".join(map(str, OTHER_SHAPE)): toy_params(oracle, OTHER_SHAPE)},
        "cases": [dict(case, expected=expected(oracle, case)) for case in cases()],
    }


if __name__ == "__main__":
    cp.main(record, OUT)
