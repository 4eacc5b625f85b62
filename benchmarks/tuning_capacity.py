"""What a tuned table can reach at all: the tuner and its table fitted to the evaluation
noise itself (issue 20's target, a quarter of diffusers' best, against its capacity).

``benchmarks/tune_coefficients.py`` measures tuned tables on held-out noise, which no tuner
saw. Here the same held-out noise (1024 samples, seed 7) is the calibration batch too, so
each figure is an in-sample *lower bound*: no table of that form, fitted to any other
noise, is expected to do better on this noise. Per model and budget of model calls:

* ``diffusers' best``: as in ``tune_coefficients.py`` (the least error over every
  deterministic diffusers configuration, chosen on this noise);
* ``tuned (256)``: ``tune="both"``'s default tuned on 256 other calibration samples
  (draw 0 of ``tune_coefficients.py``), measured on this noise;
* ``tuner on this noise``: ``tune="both"`` given this noise and its reference as the
  calibration batch (grid search, candidate bases, ridge, guards: the whole tuner);
* ``weights, least squares``: on that table's grid and base, the x̂_0 weights (eq. (1) of
  :mod:`diffsched.methods.tuned`, a history of 4, the zeroth moment kept) fitted to this
  noise by plain nonlinear least squares, no ridge, no guard;
* ``+ sample weights``: the same with weights on the earlier native samples x_{n-j} as well
  (a linear multistep table of both operands, beyond eq. (1)).

A bound above a quarter of diffusers' best says that no table of that form reaches the
target on that model and budget, whatever the calibration; a bound far below it says the
calibration (which samples it holds, how many) is what decides. Usage::

    python benchmarks/tuning_capacity.py [--models gmm net digits] [--budgets 5 10]
        [--out capacity.jsonl]
    python benchmarks/tuning_capacity.py --table capacity.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tune_coefficients as tc  # noqa: E402

CALIBRATION = 256  # the calibrated table's batch (draw 0 of tune_coefficients.py)
HISTORY = 4  # x̂_0's (and samples) before this call's that a weight may read
ITERATIONS = 30  # least-squares iterations at most (a Jacobian each: one run per weight)


def _run(loop, x: np.ndarray, w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The table of ``loop`` (``diffsched.tuning_coefficients._Loop``) from native sample
    ``x``, its x̂_0 weights corrected by ``w`` (eq. (1)) and the samples x_{n-j} weighted by
    ``v`` (calls, lags); the final sample."""
    from diffsched.core.engine import OUTPUT, SAMPLE, X0

    xs, ms, ds = [], [], []
    for k in range(loop.n):
        m = loop._model(x, k)
        xs.append(x)
        ms.append(m)
        ds.append(loop.a[k] * x + loop.b[k] * m)
        nxt = 0.0
        for (operand, lag), col in loop.terms.items():
            if col[k] != 0 and k - lag >= 0:
                nxt = nxt + col[k] * {SAMPLE: xs, OUTPUT: ms, X0: ds}[operand][k - lag]
        for lag in range(w.shape[1]):
            if k - lag >= 0:
                nxt = nxt + w[k, lag] * ds[k - lag] + v[k, lag] * xs[k - lag]
        x = nxt
    return x / loop.scale[loop.n]


def _least_squares(loop, noise, exact, base_w, samples: bool) -> float:
    """The least relative error on ``noise`` of the table of ``loop`` with its x̂_0 weights
    (and, with ``samples``, weights on the earlier samples) fitted to ``exact``."""
    from scipy.optimize import least_squares

    calls, width = base_w.shape
    lower = np.tril(np.ones((calls, width), bool), 0)  # lag j <= call n
    lags = lower.copy()
    lags[:, 0] = False  # δ_{n,0} = -Σ_{j>0} δ_{n,j}: the zeroth moment
    size = int(lags.sum()) + (int(lower.sum()) if samples else 0)
    start = loop.start(noise)
    norm = float(np.linalg.norm(exact))

    def tables(theta):
        d = np.zeros((calls, width))
        d[lags] = theta[: lags.sum()]
        d[:, 0] = -d.sum(axis=1)
        v = np.zeros((calls, width))
        if samples:
            v[lower] = theta[lags.sum() :]
        return base_w + d, v

    def residual(theta):
        return ((_run(loop, start, *tables(theta)) - exact) / norm).ravel()

    fit = least_squares(residual, np.zeros(size), diff_step=1e-6, max_nfev=ITERATIONS)
    return float(np.linalg.norm(fit.fun))


def capacity_job(model_name: str, budget: int) -> dict:
    from diffsched import cli
    from diffsched.exact.threads import small_matrices
    from diffsched.tuning import Grid, reference_trajectory, search_coefficients
    from diffsched.tuning_coefficients import _Loop

    _, base, _ = cli.parse_spec(tc.spec(tc.BASE))
    model = tc.model_for(base, model_name, tc.NET_PATH)
    held = tc.noise_for(model_name, tc.HELD_SIZE, tc.HELD_SEED)
    cal = tc.noise_for(model_name, CALIBRATION, 100)
    row = {"model": model_name, "budget": budget}
    with small_matrices():
        row["diffusers' best"] = tc.baseline_job(model_name, budget)["diffusers"]["error"]
        g = Grid.of(base, budget)
        own = g.init_options(g.start)
        exact = tc._exact(model, base, held, budget, own)

        def tuned_on(noise):
            ref = reference_trajectory(model, base, noise * base.init_noise_scale(None, **own), g)
            return search_coefficients(model, base, budget, noise, bases="auto", reference=ref,
                                       grid=True).scheduler  # fmt: skip

        t0 = time.perf_counter()
        row["tuned (256)"] = tc._held(model, tuned_on(cal), held, budget, exact)["error"]
        table = tuned_on(held)
        row["tuner on this noise"] = tc._held(model, table, held, budget, exact)["error"]
        loop = _Loop(model, table.base_scheduler, budget, table.grid_options, held)
        w = np.zeros((loop.n, HISTORY + 1))
        tuned_w = table.weight_table()
        w[:, : min(tuned_w.shape[1], HISTORY + 1)] = tuned_w[:, : HISTORY + 1]
        noise = np.asarray(held, np.float64)
        row["weights, least squares"] = _least_squares(loop, noise, exact, w, samples=False)
        row["+ sample weights"] = _least_squares(loop, noise, exact, w, samples=True)
        b = table.base_scheduler
        row["base"] = f"{type(b).__name__} {getattr(b, 'solver_order', '')}".strip()
        row["seconds"] = time.perf_counter() - t0
    return row


COLUMNS = ("diffusers' best", "tuned (256)", "tuner on this noise", "weights, least squares",
           "+ sample weights")  # fmt: skip


def table(path: str) -> str:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    head = ["model", "calls", *COLUMNS, "target (1/4)", "bound / diffusers' best"]
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in sorted(rows, key=lambda r: (r["model"], r["budget"])):
        best = r["diffusers' best"]
        bound = min(r[c] for c in COLUMNS[2:])
        cells = [r["model"], str(r["budget"]), *(f"{r[c]:.4f}" for c in COLUMNS),
                 f"{best / 4:.4f}", f"{bound / best:.2f}"]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gmm", "net", "digits"],
                        choices=["gmm", "net", "digits"])  # fmt: skip
    parser.add_argument("--budgets", nargs="+", type=int, default=[5, 10])
    parser.add_argument("--out", default="capacity.jsonl")
    parser.add_argument("--net", default=None, help="the trained network's .npz (made if absent)")
    parser.add_argument("--table", default=None, help="print the table of a results file")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.table))
        return
    tc.NET_PATH = args.net
    with open(args.out, "a") as f:
        for name in args.models:
            for budget in args.budgets:
                row = capacity_job(name, budget)
                print(json.dumps(row), flush=True)
                f.write(json.dumps(row) + "\n")
                f.flush()  # a row per job survives a stopped run
    print(table(args.out))


if __name__ == "__main__":
    main()
