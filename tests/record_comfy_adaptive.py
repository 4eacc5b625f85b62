"""Records ComfyUI's ``dpm_adaptive`` from the oracle (../shared/oracles/comfyui) into
tests/fixtures/comfy_adaptive.json, the numbers tests/test_adaptive.py holds
ds.ComfyDPMAdaptive to when the oracle is absent.

    python tests/record_comfy_adaptive.py     # from the repository root

Each case is a ComfyUI KSampler run of dpm_adaptive on the oracle's toy model (the same
model, W, b and initial noise as tests/record_comfy_samplers.py) with some of its options
(order, rtol, atol, h_init, PID coefficients, accept_safety; η and s_noise of the
stochastic variant, ComfyUI's SamplerDPMAdaptative node, with KSampler seed SEED): the
fixture keeps σ and the timestep of every model call (den_sigma: it fixes the accepted
steps and the rejected attempts) and the final sample of the float64 run, every noise
draw with the number of model calls before it (η > 0), and the timesteps and final sample
of the float32 run (its draws those of the float64 run). Deterministic: two runs write the
same file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from comfy_parity import NOISE, SHAPE, load_oracle, toy
from comfy_parity import floats as _floats

OUT = Path(__file__).resolve().parent / "fixtures" / "comfy_adaptive.json"
IMAGE = 0.8 * np.tanh(np.random.default_rng(17).standard_normal(SHAPE))  # a clean latent

# oracle preset -> (ds.from_comfy model, settings)
MODELS = {
    "eps-sd15": ("eps", {}),
    "v-sd15": ("v", {}),
    "flow-sd3": ("flow", {"shift": 3.0}),
    "flux-dev": ("flux", {}),
    "x0-sd15": ("x0", {}),
}
SEED = 5  # KSampler's seed: the stochastic cases' torch.Generator stream
OPTIONS = (
    {},
    {"order": 2},
    {"rtol": 0.01, "atol": 0.001},
    {"rtol": 0.2, "atol": 0.05, "order": 2},
    {"pcoeff": 0.3, "icoeff": 0.9, "dcoeff": 0.1},
    {"h_init": 0.5, "accept_safety": 0.9},
    {"rtol": 0.001, "atol": 0.0001, "order": 3},
)
# the stochastic variant (η > 0): η below and above 1 (σ_u capped at σ_t), s_noise, order 2
STOCHASTIC = (
    {"eta": 0.5},
    {"eta": 1.0, "order": 2, "s_noise": 0.8},
    {"eta": 1.5, "h_init": 0.5},
)


def cases() -> list[dict]:
    """Every option set on eps, v and flow models (schedulers rotating), then flux and x0
    models, partial denoise and an explicit σ list."""
    out = []

    def add(scheduler, steps, model, options, denoise=1.0, sigmas=None, image=False):
        out.append(dict(scheduler=scheduler, steps=steps, model=model, options=options,
                        denoise=denoise, sigmas=sigmas, image=image))  # fmt: skip

    schedulers = ("karras", "normal", "simple", "exponential", "sgm_uniform")
    for i, options in enumerate(OPTIONS):
        for j, model in enumerate(("eps-sd15", "v-sd15", "flow-sd3")):
            add(schedulers[(i + j) % len(schedulers)], (10, 20)[(i + j) % 2], model, options)
    add("karras", 10, "flux-dev", {})
    add("simple", 10, "x0-sd15", {"order": 2})
    add("karras", 10, "eps-sd15", {}, denoise=0.6)
    add("simple", 8, "flow-sd3", {"order": 2}, denoise=0.5)
    add("karras", 10, "v-sd15", {}, denoise=0.5, image=True)  # image-to-image
    add("simple", 10, "flow-sd3", {}, denoise=0.7, image=True)
    add(None, 4, "eps-sd15", {}, sigmas=[14.6, 7.0, 1.2, 0.1, 0.0])
    add(None, 3, "flow-sd3", {"rtol": 0.01}, sigmas=[0.9, 0.5, 0.2, 0.05])  # ends above 0
    for i, options in enumerate(STOCHASTIC):
        for j, model in enumerate(("eps-sd15", "v-sd15", "flow-sd3")):
            add(schedulers[(i + 2 * j) % len(schedulers)], (10, 20)[(i + j) % 2], model, options)
    add("karras", 10, "eps-sd15", {"eta": 1.0}, denoise=0.6)
    return out


def run(oracle, case: dict, precision: str = "float64", replay=None) -> dict:
    import torch

    sigmas = case["sigmas"]
    return oracle.run(
        "dpm_adaptive", case["scheduler"] or "normal", case["steps"], toy(oracle),
        torch.tensor(NOISE), model=case["model"], denoise=case["denoise"],
        sigmas=None if sigmas is None else torch.tensor(sigmas, dtype=torch.float64),
        sampler_options=case["options"] or None,
        latent_image=torch.tensor(IMAGE) if case["image"] else None, precision=precision,
        seed=SEED, noise_replay=replay,
    )  # fmt: skip


def record(oracle) -> dict:
    import torch

    params = toy(oracle).params
    rows = []
    for case in cases():
        r = run(oracle, case)
        expected = dict(sigmas=_floats(r["sigmas"]), den_sigma=_floats(r["den_sigma"]),
                        timesteps=_floats(r["model_timestep"]),
                        sample=_floats(r["sample"]))  # fmt: skip
        draws = None
        if case["options"].get("eta", 0.0) > 0:  # (η = 0: ComfyUI draws, times 0)
            expected.update(noise_den=[int(i) for i in r["noise_den_index"]],
                            noise=[_floats(z) for z in r["noise_draws"]])  # fmt: skip
            # the float32 run with the float64 run's draws (the same numbers: ComfyUI's
            # seeded generator draws float32 in both)
            draws = [torch.tensor(z, dtype=torch.float32) for z in r["noise_draws"]]
        r32 = run(oracle, case, "float32", draws)  # ComfyUI's float32 run (its float32 tables)
        expected.update(timesteps32=_floats(r32["model_timestep"]),
                        sample32=_floats(r32["sample"]))  # fmt: skip
        rows.append(dict(case, expected=expected))
    return {
        "format": "diffsched-comfy-adaptive/1",
        "toy": {"shape": list(SHAPE), "W": [_floats(r) for r in params["W"].numpy()],
                "b": _floats(params["b"].numpy()), "noise": [_floats(r) for r in NOISE]},
        "cases": rows,
    }  # fmt: skip


def main() -> None:
    oracle = load_oracle()
    if oracle is None:
        raise SystemExit("the oracle (../shared/oracles/comfyui) is not there")
    data = record(oracle)
    OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    calls = [len(c["expected"]["den_sigma"]) for c in data["cases"]]
    print(f"wrote {OUT} ({len(calls)} cases, {min(calls)}..{max(calls)} calls)")


if __name__ == "__main__":
    main()
