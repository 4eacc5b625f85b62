"""The cost of per-element schedules, as ratios measured in one run.

* Eager PyTorch, CPU, float32, one thread: the median time of one ``step`` of a per-element
  loop (every element at its own row: offsets 0, 1, 2, ...) against one ``step`` of the
  uniform loop of the same scheduler on the same tensors. Shapes: an image latent
  1x4x64x64 with one schedule per batch row (offsets (B, 1, 1, 1), B = 1 and 4), and a
  video latent 1x16x21x60x104 (Wan / SkyReels-V2 at 480p) scaled to 1x16x21x30x52 to fit
  the machine, one schedule per frame (offsets (1, 1, 21, 1, 1)). Stochastic steps are
  timed with the noise given (``noise=``) on both sides.
* JAX: the time per call of a jitted ``fori_loop`` over the loop with offsets against the
  same loop without (the per-frame video shape).

Target (issue 19): per-element / uniform <= 1.5.

    python benchmarks/per_element.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import diffsched as ds

METHODS = {
    "DDIM": ds.DDIM(),
    "Euler": ds.Euler(),
    "EulerAncestral": ds.EulerAncestral(),
    "DPMSolverMultistep": ds.DPMSolverMultistep(),
    "UniPC": ds.UniPC(),
    "FlowMatchEuler": ds.FlowMatchEuler(),
}
STEPS = 20


def _time_torch(sched, x, offsets, repeats: int) -> float:
    import torch

    options = {} if offsets is None else {"offsets": offsets}
    pred = torch.tanh(x)
    noise = torch.randn_like(x)
    kwargs = {} if sched.deterministic else {"noise": noise}
    times = []
    for _ in range(repeats):
        state, ts = sched.init(STEPS, x, 0, **options)
        y = x.clone()
        for _ in range(len(ts)):
            t0 = time.perf_counter()
            state, y = sched.step(state, y, pred, **kwargs)
            times.append(time.perf_counter() - t0)
            y = x  # keep values bounded; the step reads y, it never writes it
    return statistics.median(times)


def eager(quick: bool) -> list[tuple]:
    import torch

    torch.set_num_threads(1)
    cases = [
        ((1, 4, 64, 64), (1, 1, 1, 1), "image, B = 1"),
        ((4, 4, 64, 64), (4, 1, 1, 1), "per image, B = 4"),
        ((1, 16, 21, 30, 52), (1, 1, 21, 1, 1), "per frame (video)"),
    ]
    if quick:
        cases = cases[:1] + cases[2:]
    rows = []
    g = torch.Generator().manual_seed(0)
    for shape, eshape, label in cases:
        x = torch.randn(shape, generator=g)
        offsets = np.arange(int(np.prod(eshape))).reshape(eshape) % 5
        for name, sched in METHODS.items():
            repeats = 2 if quick else 5
            uniform = _time_torch(sched, x, None, repeats)
            per = _time_torch(sched, x, offsets, repeats)
            rows.append((name, "x".join(map(str, shape)), label, uniform * 1e6, per * 1e6))
            print(f"  {name:20s} {label:18s} {per / uniform:.2f}", flush=True)
    return rows


def jitted(quick: bool) -> list[tuple]:
    import jax
    import jax.numpy as jnp

    shape, eshape = (1, 16, 21, 30, 52), (1, 1, 21, 1, 1)
    x = jax.random.normal(jax.random.key(0), shape, dtype=jnp.float32)
    offsets = np.arange(21).reshape(eshape) % 5
    rows = []
    for name, sched in METHODS.items():
        timings = []
        for options in ({}, {"offsets": offsets}):
            state, ts = sched.init(STEPS, x, 0, **options)
            calls = ts.shape[0]

            loop = _jitted_loop(sched, calls)
            loop(state, x).block_until_ready()
            best = min(_timed(loop, state, x) for _ in range(2 if quick else 5))
            timings.append(best / calls)
        rows.append(
            (name, "x".join(map(str, shape)), "jitted, per frame", *[t * 1e6 for t in timings])
        )
        print(f"  {name:20s} jitted {timings[1] / timings[0]:.2f}", flush=True)
    return rows


def _jitted_loop(sched, calls: int):
    import jax
    import jax.numpy as jnp

    def body(i, carry):
        state, y = carry
        return sched.step(state, y, jnp.tanh(y) * 0.5)

    return jax.jit(lambda state, y: jax.lax.fori_loop(0, calls, body, (state, y))[1])


def _timed(loop, state, x) -> float:
    t0 = time.perf_counter()
    loop(state, x).block_until_ready()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-jax", action="store_true")
    args = parser.parse_args()
    rows = eager(args.quick)
    if not args.no_jax:
        rows += jitted(args.quick)
    print("\n| method | shape | offsets | uniform (µs/call) | per-element (µs/call) | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for name, shape, label, uniform, per in rows:
        print(f"| {name} | {shape} | {label} | {uniform:.0f} | {per:.0f} | {per / uniform:.2f} |")


if __name__ == "__main__":
    main()
