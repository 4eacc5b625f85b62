"""Error per model call of the adaptive samplers beside fixed grids, on the exact models.

Every sampler runs ComfyUI's rectified-flow model sampling (``model="flow"``: the exact
flow model of ``diffsched.exact`` called at t = 1000 σ) from the same noise at σ = 1, on
the σ list [1, σ_min, 0]'s range (fixed grids: ComfyUI's ``simple`` schedule of N steps,
which ends at 0). The error is the relative RMS distance to the exact probability-flow ODE
solution (SciPy's DOP853 at rtol 1e-10) at the loop's end: σ = 0 for the fixed grids and
AdaptiveRK (its final step to 0), σ_min for ComfyUI's dpm_adaptive (which stops there).

    python benchmarks/adaptive.py                 # about a minute on 2 cores
    python benchmarks/adaptive.py --model digits --num-samples 16
"""

from __future__ import annotations

import argparse

import numpy as np

import diffsched as ds
from diffsched.cli import MODEL_NAMES, data_name, make_noise, model_kwargs
from diffsched.exact import models, reference
from diffsched.tuning import relative_error

SIGMA_MIN = 1e-3  # the adaptive loops' last nonzero level (ComfyUI's dpm_adaptive stops here)
FIXED = ("euler", "heun", "dpmpp_2m", "dpm_fast")
FIXED_STEPS = (5, 10, 20, 40)
RTOLS = (1e-1, 1e-2, 1e-3, 1e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gmm", choices=MODEL_NAMES)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    noise = make_noise(args.model, args.num_samples, args.seed)
    model = models.make_flow_model(data_name(args.model), 1000, **model_kwargs(args.model))
    exact = {
        end: reference.solve_flow_ode(model.denoiser, noise, 1.0, end) for end in (0.0, SIGMA_MIN)
    }
    rows = []
    for name in FIXED:
        for n in FIXED_STEPS:
            sched = ds.from_comfy(name, "simple", model="flow")
            state, timesteps = sched.init(n, noise)
            out = ds.sample(model, sched, noise, n)
            rows.append((f"{name} (simple)", f"N = {n}", len(timesteps), out, exact[0.0]))
    sigmas = [1.0, SIGMA_MIN, 0.0]
    for label, make in (
        ("AdaptiveRK bosh3", lambda r: ds.AdaptiveRK(model="flow", rtol=r, atol=r / 10)),
        ("AdaptiveRK dopri5",
         lambda r: ds.AdaptiveRK(model="flow", solver="dopri5", rtol=r, atol=r / 10)),
        ("dpm_adaptive (to σ_min)",
         lambda r: ds.from_comfy("dpm_adaptive", model="flow", rtol=r, atol=r / 10)),
    ):  # fmt: skip
        for rtol in RTOLS:
            sched = make(rtol)
            state, _ = sched.init(10_000, noise, sigmas=sigmas)
            x = noise * sched.init_noise_scale(10_000, sigmas=sigmas)
            while not sched.done(state):
                state, x = sched.step(state, x, model(x, sched.next_timestep(state)))
            calls = int(sched.info(state)["calls"])
            end = 0.0 if isinstance(sched, ds.AdaptiveRK) else SIGMA_MIN
            rows.append((label, f"rtol = {rtol:g}", calls, x, exact[end]))
    print(f"model {args.model}, {args.num_samples} samples, seed {args.seed}")
    print("| sampler | setting | model calls | rel. RMS error |")
    print("|---|---|---:|---:|")
    for label, setting, calls, out, want in rows:
        print(f"| {label} | {setting} | {calls} | {relative_error(np.asarray(out), want):.2e} |")


if __name__ == "__main__":
    main()
