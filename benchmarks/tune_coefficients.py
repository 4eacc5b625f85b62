"""Tuned coefficients against tuned grids, our untuned best and diffusers' best, on the
exact models, on held-out noise.

Per model (gmm, digits), budget of model calls (5, 10), calibration size (64, 256) and
calibration draw (3 seeds), on UniPC (bh2, order 2, Stable Diffusion 1.5's schedule):

* ``diffusers' best``: the least error over ``diffsched.cli.BEST_CANDIDATES`` (every
  deterministic diffusers class with every σ option and trailing spacing), run by our
  classes, which equal diffusers' on these configs to < 1e-6 (the parity tests), so the
  figure is diffusers' own without importing it here;
* ``ours untuned``: the least error over ``cli.OURS_CANDIDATES`` (iPNDM-v, DPM++2M and UniPC
  on our named grids);
* ``tuned grid`` (``ds.tune``'s default), ``tuned coefficients`` (the x̂_0 history weights
  on the scheduler's own grid), ``tuned both`` (grid, then weights), each with the ridge
  chosen on held-out calibration noise (``reg``) and without a ridge (``noreg``);
* at 10 calls, ``final only``: the last call's combination of the last x̂_0's tuned alone
  (on the tuned grid), the discrete end.

The held-out noise (256 samples, seed 7) is never seen by any tuner. Costs are batch model
calls and seconds of one core. Usage::

    python benchmarks/tune_coefficients.py [--models gmm digits] [--budgets 5 10]
        [--calibration 64 256] [--draws 3] [--jobs 16] [--out results.jsonl]
    python benchmarks/tune_coefficients.py --table results.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

HELD_SEED, HELD_SIZE = 7, 256
BASE = "unipc:beta_schedule=quadratic,beta_start=0.00085,beta_end=0.012"


def _exact(model, sched, noise, steps, grid):
    from diffsched.exact.reference import solve_pf_ode

    start = noise * sched.init_noise_scale(None if grid else steps, **grid)
    levels = sched.noise_levels(None if grid else steps, **grid)
    return solve_pf_ode(model.denoiser, start, *levels)


def _held_error(model, sched, noise, steps, exact, grid=None):
    import diffsched as ds

    grid = grid or {}
    out = np.asarray(ds.sample(model, sched, noise, None if grid else steps, **grid))
    return float(np.linalg.norm(out - exact) / np.linalg.norm(exact))


def tune_job(model_name: str, budget: int, calibration: int, draw: int) -> dict:
    """One calibration draw: the reference, the grid search and four fits, all measured."""
    from diffsched import cli
    from diffsched.exact.threads import small_matrices
    from diffsched.tuning import Grid, _CountingModel, _search, reference_trajectory
    from diffsched.tuning_coefficients import RIDGES, fit_coefficients

    _, base, _ = cli.parse_spec(BASE)
    model = cli.exact_model(base, model_name)
    cal = cli.make_noise(model_name, calibration, 100 + draw)
    held = cli.make_noise(model_name, HELD_SIZE, HELD_SEED)
    row = {"model": model_name, "budget": budget, "calibration": calibration, "draw": draw}
    with small_matrices():
        g = Grid.of(base, budget)
        own = g.init_options(g.start)
        exact_top = _exact(model, base, held, budget, own)  # every tuned loop starts there
        exact_default = _exact(model, base, held, budget, {})
        row["untuned base"] = {"error": _held_error(model, base, held, budget, exact_default)}
        counted = _CountingModel(model)
        t0 = time.perf_counter()
        ref = reference_trajectory(counted, base, cal * base.init_noise_scale(None, **own), g)
        row["reference"] = {"calls": counted.calls, "seconds": time.perf_counter() - t0}
        counted.calls, t0 = 0, time.perf_counter()
        found = _search(counted, base, budget, cal, candidates=100, substeps=4,
                        max_evaluations=300, tolerance=2e-3, reference=ref)  # fmt: skip
        row["tuned grid"] = {
            "error": _held_error(model, base, held, budget, exact_top, found.init_options),
            "calls": counted.calls, "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        variants = [("tuned coefficients", own, {}), ("tuned both", found.init_options, {})]
        if budget >= 10:
            variants.append(("final only", found.init_options, {"calls": "final"}))
        for name, grid, extra in variants:
            for reg, ridges in (("reg", RIDGES), ("noreg", (0.0,))):
                counted.calls, t0 = 0, time.perf_counter()
                res = fit_coefficients(counted, base, budget, cal, ref.final, grid, ridges=ridges,
                                       **extra)  # fmt: skip
                row[f"{name} {reg}"] = {
                    "error": _held_error(model, res.scheduler, held, budget, exact_top),
                    "calls": counted.calls, "seconds": time.perf_counter() - t0,
                    "ridge": res.ridge, "calibration error": res.error,
                }  # fmt: skip
    return row


def baseline_job(model_name: str, budget: int) -> dict:
    """diffusers' best (its configs, run by our classes) and our untuned best; the exact
    solution is solved once per pair of end levels."""
    import diffsched as ds
    from diffsched import cli
    from diffsched.exact.reference import solve_pf_ode
    from diffsched.grids import named_grid

    held = cli.make_noise(model_name, HELD_SIZE, HELD_SEED)
    row = {"model": model_name, "budget": budget, "baseline": True}
    best = {"diffusers": (np.inf, ""), "ours untuned": (np.inf, "")}
    exact: dict = {}

    def error(sched, steps, grid):
        grid = grid or {}
        n = None if grid else steps
        model = cli.exact_model(sched, model_name)
        scale = sched.init_noise_scale(n, **grid)
        levels = sched.noise_levels(n, **grid)
        key = (round(scale, 12), *(round(v, 12) for v in levels))
        if key not in exact:
            exact[key] = solve_pf_ode(model.denoiser, held * scale, *levels)
        out = np.asarray(ds.sample(model, sched, held, n, **grid))
        return float(np.linalg.norm(out - exact[key]) / np.linalg.norm(exact[key]))

    for spec in cli.BEST_CANDIDATES:
        _, sched, options = cli.parse_spec(spec)
        sched, _ = cli.adapt_to_model(sched, model_name, options)
        steps = cli._steps_for(sched, budget)
        if steps is None:
            continue
        try:
            err = error(sched, steps, None)
        except Exception:  # a config that cannot run this budget
            continue
        if err < best["diffusers"][0]:
            best["diffusers"] = (err, cli._short(spec))
    for spec, grid_name in cli.OURS_CANDIDATES:
        _, sched, _ = cli.parse_spec(spec)
        try:
            grid = None if grid_name is None else named_grid(grid_name, sched, budget)
            err = error(sched, budget, grid)
        except Exception:
            continue
        if err < best["ours untuned"][0]:
            name = cli._short(spec) + (f" --grid {grid_name}" if grid_name else "")
            best["ours untuned"] = (err, name)
    for kind, (err, spec) in best.items():
        row[kind] = {"error": err, "spec": spec}
    row["exact solves"] = len(exact)
    return row


def run_all(args) -> None:
    jobs = [("baseline", (m, b)) for m in args.models for b in args.budgets]
    jobs += [
        ("tune", (m, b, c, d))
        for m in args.models
        for b in args.budgets
        for c in args.calibration
        for d in range(args.draws)
    ]
    # baselines first, then one draw of every config before the next draw: a run cut short
    # still has every row
    jobs.sort(key=lambda j: (j[0] == "tune", j[1][3] if j[0] == "tune" else 0))
    with open(args.out, "a", encoding="utf-8") as out, ProcessPoolExecutor(args.jobs) as pool:
        futures = {
            pool.submit(tune_job if kind == "tune" else baseline_job, *a): (kind, a)
            for kind, a in jobs
        }
        for fut in as_completed(futures):
            try:
                row = fut.result()
            except Exception as err:  # one failed job must not lose the others
                row = {"job": futures[fut], "error": repr(err)}
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(json.dumps(row)[:300], flush=True)


def table(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "model" in r]
    base = {(r["model"], r["budget"]): r for r in rows if r.get("baseline")}
    tuned = [r for r in rows if not r.get("baseline")]
    kinds = ["untuned base", "tuned grid", "tuned coefficients reg",
             "tuned coefficients noreg", "tuned both reg", "tuned both noreg",
             "final only reg", "final only noreg"]  # fmt: skip
    lines = [
        "| model | calls | cal | diffusers' best | ours untuned | " + " | ".join(kinds)
        + " | best tuned / diffusers | cost (calls, s) |",
        "|---|---:|---:|" + "---:|" * (len(kinds) + 4),
    ]  # fmt: skip
    for key in sorted({(r["model"], r["budget"], r["calibration"]) for r in tuned}):
        group = [r for r in tuned if (r["model"], r["budget"], r["calibration"]) == key]
        b = base.get(key[:2], {})
        cells = [key[0], str(key[1]), str(key[2])]
        theirs = b.get("diffusers", {}).get("error")
        cells.append(f"{theirs:.4f}" if theirs else "-")
        ours = b.get("ours untuned", {}).get("error")
        cells.append(f"{ours:.4f}" if ours else "-")
        best_mean = np.inf
        for kind in kinds:
            errs = [r[kind]["error"] for r in group if kind in r]
            if not errs:
                cells.append("-")
                continue
            mean = statistics.fmean(errs)
            spread = statistics.pstdev(errs) if len(errs) > 1 else 0.0
            cells.append(f"{mean:.4f} ± {spread:.4f}")
            if kind != "untuned base":
                best_mean = min(best_mean, mean)
        cells.append(f"{best_mean / theirs:.2f}" if theirs and np.isfinite(best_mean) else "-")
        calls = statistics.fmean(
            r["reference"]["calls"] + r["tuned grid"]["calls"] + r["tuned both reg"]["calls"]
            for r in group
        )
        secs = statistics.fmean(
            r["reference"]["seconds"] + r["tuned grid"]["seconds"] + r["tuned both reg"]["seconds"]
            for r in group
        )
        cells.append(f"{calls:.0f} ({calls / key[1]:.0f} × N), {secs:.0f} s")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["gmm", "digits"])
    p.add_argument("--budgets", nargs="+", type=int, default=[5, 10])
    p.add_argument("--calibration", nargs="+", type=int, default=[64, 256])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default="tune_coefficients.jsonl")
    p.add_argument("--table", help="print the table of a results file and exit")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table))
        return
    run_all(args)
    print(table(args.out))


if __name__ == "__main__":
    sys.exit(main())
