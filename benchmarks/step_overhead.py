"""Per-model-call cost of every diffsched method, as ratios measured in one run.

* Eager PyTorch, CPU, float32, one thread: the median time of one ``step`` against
  diffusers' per-call cost on the same tensors (``scale_model_input`` plus ``step``, the
  two calls a pipeline makes per model call), and against the floor, one
  ``torch.add(a, b, alpha=0.5, out=c)`` over the same shape. Stochastic steps are timed
  with the noise given on both sides (ours ``noise=``, diffusers' ``randn_tensor``
  replaced by a precomputed tensor); the draw is timed apart, against ``torch.randn``.
* JAX: the time per call of a jitted ``fori_loop`` of steps against the same loop of the
  floor (``x + 0.5 * e``), and the target 1.25 · (P/3), P the full-array reads and writes
  the method's update needs at least. The optimized HLO of the loop body is searched for
  full-array ``copy`` instructions.

Both libraries run the same configuration (``to_config``), a 50-step loop, with a fixed
prediction tensor so that only the scheduler is timed. Usage::

    python benchmarks/step_overhead.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import time
from contextlib import nullcontext
from functools import partial
from unittest import mock

import numpy as np

import diffsched as ds

SHAPES = [(1, 4, 8, 8), (1, 4, 64, 64), (2, 4, 128, 128), (1, 16, 128, 128)]
NUM_STEPS = 50


def methods() -> dict[str, tuple[ds.Scheduler, int]]:
    """name -> (config, P: full-array reads + writes its update needs at least, per call).

    P counts the sample, the model output and the result (3), plus one read per stored
    history array read and one write per array stored, averaged over a long loop; a
    processed x̂_0 (clipping) costs one more pass. Noise counts one read (given).
    """
    out = {
        "DDIM": (ds.DDIM(), 4),  # clipped x̂_0: x, m -> x̂_0, clip, -> out
        "DDIM-noclip": (ds.DDIM(clip_denoised_sample=False), 3),
        "PNDM": (ds.PNDM(), 5),  # 4th-order multistep: x, m, 3 history reads... see README
        "LCM": (ds.LCM(), 4),  # + noise
        "Euler": (ds.Euler(), 3),
        "EulerAncestral": (ds.EulerAncestral(), 4),
    }
    for name in P_OTHERS:
        cls = getattr(ds, name, None)
        if cls is not None:
            out[name] = (cls(), P_OTHERS[name])
    out["DPM++2M-Karras-SD"] = (
        ds.DPMSolverMultistep(
            beta_schedule="quadratic", beta_start=0.00085, beta_end=0.012, use_karras_sigmas=True
        ),
        5,
    )
    return out


P_OTHERS = {
    "Heun": 4,  # stage 1: x, m -> out, d (4); stage 2: x, m, d -> out (4)
    "DPM2": 4,
    "DPM2Ancestral": 4.5,
    "LMS": 7,  # order 4: x, m, 3 derivatives, out, store one
    "IPNDM": 7,
    "DDPM": 5,  # clipped x̂_0 + noise
    "EDMEuler": 3,
    "DPMSolverMultistep": 5,  # 2M: x, m, x̂_0 of the last call; out; store x̂_0
    "DPMSolverSinglestep": 5,
    "DEIS": 5,
    "UniPC": 6,  # predictor + corrector share the stored x̂_0's; order 2: two reads
    "SASolver": 7,
    "TCD": 4,
    "EDMDPMSolverMultistep": 5,
    "DDIMInverse": 3,
    "DPMSolverMultistepInverse": 5,
    "FlowMatchEuler": 3,
    "FlowMatchHeun": 4,
    "FlowMatchLCM": 4,
}
FLOW_SHAPE = (1, 4096, 64)  # FLUX's packed latents at 1024²


def _median_call(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _their_loop(ours, theirs_sched, sample, prediction, noise):
    """Times of diffusers' scale_model_input + step per call (noise draw replaced)."""
    from diffsched.interop import peer

    config = ours.to_config()
    extra = dict(config.get("_diffsched") or {})
    step_kwargs = {peer.STEP_KWARGS.get(k, k): v for k, v in extra.items()}
    module = importlib.import_module(peer.MODULES[config["_class_name"]])
    theirs_sched.set_timesteps(NUM_STEPS)
    times = []
    patch = (
        mock.patch.object(module, "randn_tensor", lambda *a, **k: noise)
        if hasattr(module, "randn_tensor")
        else nullcontext()
    )
    lcm = config["_class_name"] == "LCMScheduler"
    with patch:
        for t in theirs_sched.timesteps:
            t0 = time.perf_counter()
            scale = getattr(theirs_sched, "scale_model_input", None)  # flow: none
            inp = sample if scale is None else scale(sample, t)
            theirs_sched.step(prediction, int(t) if lcm else t, inp, **step_kwargs)
            times.append(time.perf_counter() - t0)
    return times


def torch_rows(repeats: int, only) -> list[dict]:
    import torch
    from diffusers.utils import logging

    from diffsched.interop import peer

    logging.set_verbosity_error()
    torch.set_num_threads(1)
    rows = []
    for shape in [*SHAPES, FLOW_SHAPE]:
        gen = torch.Generator().manual_seed(0)
        sample = torch.randn(shape, generator=gen)
        prediction = torch.randn(shape, generator=gen) * 0.5
        noise = torch.randn(shape, generator=gen)
        out = torch.empty(shape)
        floor = _median_call(
            partial(torch.add, sample, prediction, alpha=0.5, out=out), repeats * NUM_STEPS
        )
        randn = _median_call(partial(torch.randn, shape), repeats * NUM_STEPS)
        for name, (ours, _) in methods().items():
            if (only and name not in only) or (shape == FLOW_SHAPE) != name.startswith("Flow"):
                continue
            theirs = peer.scheduler(ours.to_config(), float64=False)
            t_ours, t_theirs, t_draw = [], [], []
            kwargs = {} if ours.deterministic else {"noise": noise}
            for _ in range(repeats):
                state, timesteps = ours.init(NUM_STEPS, sample)
                draw_state = state
                for _t in timesteps:
                    t0 = time.perf_counter()
                    state, _ = ours.step(state, sample, prediction, **kwargs)
                    t_ours.append(time.perf_counter() - t0)
                if not ours.deterministic:
                    for _t in timesteps:
                        t0 = time.perf_counter()
                        draw_state, _ = ours.step(draw_state, sample, prediction)
                        t_draw.append(time.perf_counter() - t0)
                t_theirs += _their_loop(ours, theirs, sample, prediction, noise)
            mine, ref = statistics.median(t_ours), statistics.median(t_theirs)
            row = {
                "scheduler": name,
                "shape": "x".join(map(str, shape)),
                "ours_us": mine * 1e6,
                "diffusers_us": ref * 1e6,
                "floor_us": floor * 1e6,
                "vs_diffusers": mine / ref,
                "vs_floor": mine / floor,
                "draw_vs_randn": None,
            }
            if t_draw:
                row["draw_vs_randn"] = (statistics.median(t_draw) - mine) / randn
            rows.append(row)
    return rows


def jax_rows(repeats: int, only) -> list[dict]:
    import jax
    import jax.numpy as jnp

    rows = []
    for shape in [*SHAPES[1:], FLOW_SHAPE]:
        key = np.random.default_rng(0)
        sample = jnp.asarray(key.standard_normal(shape), dtype=jnp.float32)
        prediction = jnp.asarray(key.standard_normal(shape) * 0.5, dtype=jnp.float32)
        noise = jnp.asarray(key.standard_normal(shape), dtype=jnp.float32)

        @jax.jit
        def floor_loop(x, e):
            return jax.lax.fori_loop(0, NUM_STEPS, lambda i, x: x + 0.5 * e, x)

        floor = _best_of(floor_loop, (sample, prediction), repeats) / NUM_STEPS
        for name, (sched, p) in methods().items():
            if (only and name not in only) or (shape == FLOW_SHAPE) != name.startswith("Flow"):
                continue
            state, timesteps = sched.init(NUM_STEPS, sample)
            calls = timesteps.shape[0]
            kwargs = {} if sched.deterministic else {"noise": noise}

            def loop(state, x, e, sched=sched, calls=calls, kwargs=kwargs):
                def body(i, carry):
                    return sched.step(carry[0], carry[1], e, **kwargs)

                return jax.lax.fori_loop(0, calls, body, (state, x))[1]

            jitted = jax.jit(loop)
            mine = _best_of(jitted, (state, sample, prediction), repeats) / calls
            hlo = jitted.lower(state, sample, prediction).compile().as_text()
            rows.append(
                {
                    "scheduler": name,
                    "shape": "x".join(map(str, shape)),
                    "ours_us": mine * 1e6,
                    "floor_us": floor * 1e6,
                    "vs_floor": mine / floor,
                    "target": 1.25 * p / 3,
                    "copies": _full_copies(hlo, shape),
                }
            )
    return rows


def _full_copies(hlo: str, shape) -> int:
    """Number of ``copy`` instructions in the while loop's body (and the computations it
    calls) that produce a sample-shaped or larger array."""
    computations = {}
    for block in re.split(r"\n(?=(?:ENTRY )?%[\w.-]+ )", hlo):
        head = re.match(r"(?:ENTRY )?%([\w.-]+) ", block)
        if head:
            computations[head.group(1)] = block
    bodies = re.findall(r"while\([^)]*\).*?body=%([\w.-]+)", hlo)
    seen, todo = set(), list(bodies)
    while todo:
        name = todo.pop()
        if name in seen or name not in computations:
            continue
        seen.add(name)
        todo += re.findall(r"(?:calls|to_apply|body|condition)=%([\w.-]+)", computations[name])
    dims = ",".join(map(str, shape))
    pattern = re.compile(r"=\s*f32\[(?:\d+,)?" + re.escape(dims) + r"\][^=]*\bcopy\(")
    return sum(len(pattern.findall(computations[name])) for name in seen)


def _best_of(jitted, args: tuple, repeats: int) -> float:
    """Best over rounds of the median wall time of ``jitted(*args)``, compiled first."""

    def call():
        return jitted(*args).block_until_ready()

    call()
    return min(_median_call(call, 3) for _ in range(max(repeats // 3, 1)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--only", nargs="*", default=None, help="method names to run")
    parser.add_argument("--no-jax", action="store_true", help="skip the JAX table")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 10

    print("## Eager PyTorch, CPU float32, 1 thread: median time of one model call\n")
    print(
        "| method | shape | ours (µs) | diffusers (µs) | floor (µs) | ours/diffusers "
        "| ours/floor | draw/randn |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in torch_rows(repeats, args.only):
        draw = "" if r["draw_vs_randn"] is None else f"{r['draw_vs_randn']:.2f}"
        print(
            f"| {r['scheduler']} | {r['shape']} | {r['ours_us']:.1f} | {r['diffusers_us']:.1f} "
            f"| {r['floor_us']:.1f} | {r['vs_diffusers']:.2f} | {r['vs_floor']:.1f} | {draw} |"
        )
    if args.no_jax:
        return
    print("\n## Jitted JAX loop (fori_loop), CPU float32: time per model call\n")
    print("| method | shape | ours (µs) | floor (µs) | ours/floor | target | full copies |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in jax_rows(repeats, args.only):
        print(
            f"| {r['scheduler']} | {r['shape']} | {r['ours_us']:.1f} | {r['floor_us']:.1f} "
            f"| {r['vs_floor']:.2f} | {r['target']:.2f} | {r['copies']} |"
        )


if __name__ == "__main__":
    main()
