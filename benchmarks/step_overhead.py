"""Per-step cost of diffsched's DDIM and PNDM, as ratios measured in one run.

* Eager PyTorch, CPU, float32, one thread: the median time of one ``step`` against
  diffusers' ``step`` on the same tensors, and against the floor, one
  ``torch.add(a, b, alpha=0.5, out=c)`` over the same shape.
* JAX: the time per step of a jitted ``fori_loop`` of steps against the same loop of the
  floor (``x + 0.5 * e``).

Both libraries run their default configuration (the same one: diffsched's defaults map
onto diffusers' defaults for these two, see ``to_config``), for a 50-step loop, with a
fixed prediction tensor so that only the scheduler is timed. Usage::

    python benchmarks/step_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np

import diffsched as ds

SHAPES = [(1, 4, 64, 64), (2, 4, 128, 128), (1, 16, 128, 128)]
NUM_STEPS = 50


def _median_call(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_rows(repeats: int) -> list[dict]:
    import torch
    from diffusers import DDIMScheduler, PNDMScheduler

    torch.set_num_threads(1)
    rows = []
    for shape in SHAPES:
        gen = torch.Generator().manual_seed(0)
        sample = torch.randn(shape, generator=gen)
        prediction = torch.randn(shape, generator=gen)
        out = torch.empty(shape)
        floor = _median_call(
            partial(torch.add, sample, prediction, alpha=0.5, out=out), repeats * NUM_STEPS
        )
        for ours, theirs_cls in ((ds.DDIM(), DDIMScheduler), (ds.PNDM(), PNDMScheduler)):
            theirs = theirs_cls.from_config(ours.to_config())
            t_ours, t_theirs = [], []
            for _ in range(repeats):
                state, timesteps = ours.init(NUM_STEPS, sample)
                for _t in timesteps:
                    t0 = time.perf_counter()
                    state, _ = ours.step(state, sample, prediction)
                    t_ours.append(time.perf_counter() - t0)
                theirs.set_timesteps(NUM_STEPS)
                for t in theirs.timesteps:
                    t0 = time.perf_counter()
                    theirs.step(prediction, t, sample)
                    t_theirs.append(time.perf_counter() - t0)
            mine, ref = statistics.median(t_ours), statistics.median(t_theirs)
            rows.append(
                {
                    "scheduler": type(ours).__name__,
                    "shape": "x".join(map(str, shape)),
                    "ours_us": mine * 1e6,
                    "diffusers_us": ref * 1e6,
                    "floor_us": floor * 1e6,
                    "vs_diffusers": mine / ref,
                    "vs_floor": mine / floor,
                }
            )
    return rows


def jax_rows(repeats: int) -> list[dict]:
    import jax
    import jax.numpy as jnp

    rows = []
    for shape in SHAPES:
        key = np.random.default_rng(0)
        sample = jnp.asarray(key.standard_normal(shape), dtype=jnp.float32)
        prediction = jnp.asarray(key.standard_normal(shape), dtype=jnp.float32)

        @jax.jit
        def floor_loop(x, e):
            return jax.lax.fori_loop(0, NUM_STEPS, lambda i, x: x + 0.5 * e, x)

        floor = _best_of(floor_loop, (sample, prediction), repeats)
        for sched in (ds.DDIM(), ds.PNDM()):
            state, timesteps = sched.init(NUM_STEPS, sample)
            calls = timesteps.shape[0]

            @jax.jit
            def loop(state, x, e, sched=sched, calls=calls):
                def body(i, carry):
                    return sched.step(carry[0], carry[1], e)

                return jax.lax.fori_loop(0, calls, body, (state, x))[1]

            mine = _best_of(loop, (state, sample, prediction), repeats)
            rows.append(
                {
                    "scheduler": type(sched).__name__,
                    "shape": "x".join(map(str, shape)),
                    "ours_us": mine / calls * 1e6,
                    "floor_us": floor / NUM_STEPS * 1e6,
                    "vs_floor": (mine / calls) / (floor / NUM_STEPS),
                }
            )
    return rows


def _best_of(jitted, args: tuple, repeats: int) -> float:
    """Best over rounds of the median wall time of ``jitted(*args)``, compiled first."""

    def call():
        return jitted(*args).block_until_ready()

    call()
    return min(_median_call(call, 3) for _ in range(max(repeats // 3, 1)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 10

    print("## Eager PyTorch, CPU float32, 1 thread: median time of one step (50-step loop)\n")
    print(
        "| scheduler | shape | ours (µs) | diffusers (µs) | floor (µs) | ours/diffusers "
        "| ours/floor |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in torch_rows(repeats):
        print(
            f"| {r['scheduler']} | {r['shape']} | {r['ours_us']:.1f} | {r['diffusers_us']:.1f} "
            f"| {r['floor_us']:.1f} | {r['vs_diffusers']:.2f} | {r['vs_floor']:.1f} |"
        )
    print("\n## Jitted JAX loop (fori_loop), CPU float32: time per step\n")
    print("| scheduler | shape | ours (µs) | floor (µs) | ours/floor |")
    print("|---|---|---:|---:|---:|")
    for r in jax_rows(repeats):
        print(
            f"| {r['scheduler']} | {r['shape']} | {r['ours_us']:.1f} | {r['floor_us']:.1f} "
            f"| {r['vs_floor']:.2f} |"
        )
    print("\nTargets: ours/diffusers <= 0.5 at every shape; jitted ours/floor <= 2.")


if __name__ == "__main__":
    main()
