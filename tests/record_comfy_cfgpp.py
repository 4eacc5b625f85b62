"""Records ComfyUI's CFG++ samplers (euler_cfg_pp, dpmpp_2m_cfg_pp,
gradient_estimation_cfg_pp) from the oracle (../shared/oracles/comfyui) into
tests/fixtures/comfy_cfgpp.json, the numbers tests/test_comfy_cfgpp.py holds diffsched's
``step(..., unconditional=)`` to when the oracle is absent.

    python tests/record_comfy_cfgpp.py     # from the repository root

Each case is a ComfyUI KSampler run with classifier-free guidance (``cfg``) of the oracle's
toy model (conditional: bias b; unconditional: bias b_uncond; the same W as
record_comfy_samplers.py) from its fixed initial noise. Deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from record_comfy_samplers import NOISE, SHAPE, TOY_SEED, _floats
from record_comfy_schedules import load_oracle

OUT = Path(__file__).resolve().parent / "fixtures" / "comfy_cfgpp.json"
# ComfyUI's name -> the diffsched class whose step takes unconditional=
SAMPLERS = {
    "euler_cfg_pp": "ComfyEuler",
    "dpmpp_2m_cfg_pp": "ComfyDPMPP2M",
    "gradient_estimation_cfg_pp": "ComfyGradientEstimation",
}
MODELS = ("eps-sd15", "v-sd15", "flow-sd3")
SCHEDULERS = ("karras", "normal", "simple")


def cases() -> list[dict]:
    out = []
    for i, sampler in enumerate(SAMPLERS):
        for j, model in enumerate(MODELS):
            scheduler = SCHEDULERS[(i + j) % len(SCHEDULERS)]
            for steps, cfg in ((3, 1.5), (8, 0.8)):
                out.append(dict(sampler=sampler, scheduler=scheduler, steps=steps, model=model,
                                cfg=cfg))  # fmt: skip
    return out


def run(oracle, case: dict) -> dict:
    import torch

    return oracle.run(
        case["sampler"], case["scheduler"], case["steps"],
        oracle.toy_model(SHAPE, seed=TOY_SEED), torch.tensor(NOISE), model=case["model"],
        cfg=case["cfg"], uncond_model_fn=oracle.toy_model(SHAPE, seed=TOY_SEED, which="uncond"),
    )  # fmt: skip


def record(oracle) -> dict:
    params = oracle.toy_model(SHAPE, seed=TOY_SEED).params
    rows = []
    for case in cases():
        r = run(oracle, case)
        rows.append(dict(case, expected=dict(sigmas=_floats(r["sigmas"]),
                                             sample=_floats(r["sample"]))))  # fmt: skip
    return {
        "format": "diffsched-comfy-cfgpp/1",
        "toy": {"shape": list(SHAPE), "W": [_floats(r) for r in params["W"].numpy()],
                "b": _floats(params["b"].numpy()), "b_uncond": _floats(params["b_uncond"].numpy()),
                "noise": [_floats(r) for r in np.asarray(NOISE)]},
        "cases": rows,
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
