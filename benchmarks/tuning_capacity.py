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
  (a linear multistep table of both operands, beyond eq. (1));
* ``+ model times``: the same with the time each call passes the model free as well,
  decoupled from the level its sample sits at (S4S, Frankel et al. 2025, learns the two
  together; the time-shift samplers move the model's time alone). Where the history (4)
  reaches every earlier call (5 calls) this is the largest table of the loop's own
  operands: any linear combination of the samples and outputs so far, each call at a time
  of its own (within the model's trained range).

A bound above a quarter of diffusers' best says that no table of that form reaches the
target on that model and budget, whatever the calibration; a bound far below it says the
calibration (which samples it holds, how many) is what decides. ``--heldout`` measures the
second case: the largest form fitted the same way (from the tuner's table on the same
calibration) to ``--calibration`` other samples (draws as in ``tune_coefficients.py``),
scored on the held-out noise. Usage::

    python benchmarks/tuning_capacity.py [--models gmm net digits] [--budgets 5 10]
        [--out capacity.jsonl]
    python benchmarks/tuning_capacity.py --heldout --models gmm --calibration 256 1024 4096
        [--draws 1] [--out heldout.jsonl]
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


def _run(loop, x: np.ndarray, w: np.ndarray, v: np.ndarray,
         times: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The table of ``loop`` (``diffsched.tuning_coefficients._Loop``) from native sample
    ``x``, its x̂_0 weights corrected by ``w`` (eq. (1)), the samples x_{n-j} weighted by
    ``v`` (calls, lags; eq. (4)) and the model called at ``times`` (eq. (3); None: the
    table's); the final sample."""
    shifts = None if times is None else np.asarray(times, np.float64) - loop.times
    return loop.run(x, w, shifts=shifts, v=v)[0]


TIME_UNIT = 10.0  # a model-time parameter of 1 moves the call by 10 trained timesteps


class _Form:
    """θ -> (x̂_0 weights, sample weights, model times) of a table of ``loop`` whose x̂_0
    weights start at ``base_w``; ``samples`` and ``times`` add those to the form."""

    def __init__(self, loop, base_w: np.ndarray, samples: bool, times: bool) -> None:
        self.loop, self.base_w = loop, base_w
        calls, width = base_w.shape
        self.lower = np.tril(np.ones((calls, width), bool), 0)  # lag j <= call n
        self.lags = self.lower.copy()
        self.lags[:, 0] = False  # δ_{n,0} = -Σ_{j>0} δ_{n,j}: the zeroth moment
        self.sizes = (int(self.lags.sum()), int(self.lower.sum()) * samples, calls * times)
        self.size = sum(self.sizes)
        self.t0 = np.asarray(loop.times, np.float64)  # the table's, per call
        self.top = float(loop.model_top)

    def tables(self, theta: np.ndarray):
        a, b, _ = self.sizes
        calls, width = self.base_w.shape
        d = np.zeros((calls, width))
        d[self.lags] = theta[:a]
        d[:, 0] = -d.sum(axis=1)
        v = np.zeros((calls, width))
        if b:
            v[self.lower] = theta[a : a + b]
        times = None
        if self.sizes[2]:  # within the trained range
            times = np.clip(self.t0 + TIME_UNIT * theta[a + b :], 0.0, self.top)
        return self.base_w + d, v, times

    def error(self, theta: np.ndarray, start: np.ndarray, exact: np.ndarray) -> float:
        out = _run(self.loop, start, *self.tables(theta))
        return float(np.linalg.norm(out - exact) / np.linalg.norm(exact))

    def fit(self, start: np.ndarray, exact: np.ndarray, theta: np.ndarray | None = None):
        """θ of the least relative error on ``start`` (native samples) against ``exact``
        by plain nonlinear least squares from ``theta`` (None: the table)."""
        from scipy.optimize import least_squares

        norm = float(np.linalg.norm(exact))

        def residual(th):
            return ((_run(self.loop, start, *self.tables(th)) - exact) / norm).ravel()

        x0 = np.zeros(self.size) if theta is None else theta
        return least_squares(residual, x0, diff_step=1e-6, max_nfev=ITERATIONS).x

    def grow(self, theta: np.ndarray, samples: bool, times: bool) -> tuple[_Form, np.ndarray]:
        """The larger form and ``theta`` in it (the new parameters at zero)."""
        form = _Form(self.loop, self.base_w, samples, times)
        out = np.zeros(form.size)
        a, b, c = self.sizes
        out[:a] = theta[:a]
        out[a : a + b] = theta[a : a + b]
        if c:
            out[a + form.sizes[1] :] = theta[a + b :]
        return form, out


def _bounds(loop, base_w: np.ndarray, start: np.ndarray, exact: np.ndarray,
            heldout=None) -> dict:  # fmt: skip
    """The three least-squares columns, each fit starting from the one before; with
    ``heldout`` (its native start, its exact samples) each scored there instead."""
    row = {}
    form = _Form(loop, base_w, samples=False, times=False)
    theta = form.fit(start, exact)
    for name, samples, times in (("weights, least squares", False, False),
                                 ("+ sample weights", True, False),
                                 ("+ model times", True, True)):  # fmt: skip
        form, theta = form.grow(theta, samples, times)
        if samples or times:
            theta = form.fit(start, exact, theta)
        row[name] = form.error(theta, *(heldout or (start, exact)))
        if heldout:
            row[f"{name} (calibration)"] = form.error(theta, start, exact)
        if times:
            row["time shifts"] = (form.tables(theta)[2] - form.t0).round(1).tolist()
    return row


def _weights(table, loop) -> np.ndarray:
    """The x̂_0 weights of ``table`` as (calls, HISTORY + 1)."""
    w = np.zeros((loop.n, HISTORY + 1))
    tuned_w = table.weight_table()
    w[:, : min(tuned_w.shape[1], HISTORY + 1)] = tuned_w[:, : HISTORY + 1]
    return w


def _loop(model, table, budget, noise):
    from diffsched.tuning_coefficients import _Loop

    loop = _Loop(model, table.base_scheduler, budget, table.grid_options, noise)
    loop.model_top = table.base_scheduler.num_train_steps - 1  # the trained range's top
    return loop


def _setup(model_name: str):
    from diffsched import cli

    _, base, _ = cli.parse_spec(tc.spec(tc.BASE))
    model = tc.model_for(base, model_name, tc.NET_PATH)
    held = tc.noise_for(model_name, tc.HELD_SIZE, tc.HELD_SEED)
    return base, model, held


def _tuner(model, base, budget, g, own):
    from diffsched.tuning import reference_trajectory, search_coefficients

    def tuned_on(noise):
        ref = reference_trajectory(model, base, noise * base.init_noise_scale(None, **own), g)
        return search_coefficients(model, base, budget, noise, bases="auto", reference=ref,
                                   grid=True).scheduler  # fmt: skip

    return tuned_on


def capacity_job(model_name: str, budget: int) -> dict:
    from diffsched.exact.threads import small_matrices
    from diffsched.tuning import Grid

    base, model, held = _setup(model_name)
    cal = tc.noise_for(model_name, CALIBRATION, 100)
    row = {"model": model_name, "budget": budget}
    with small_matrices():
        row["diffusers' best"] = tc.baseline_job(model_name, budget)["diffusers"]["error"]
        g = Grid.of(base, budget)
        own = g.init_options(g.start)
        exact = tc._exact(model, base, held, budget, own)
        tuned_on = _tuner(model, base, budget, g, own)
        t0 = time.perf_counter()
        row["tuned (256)"] = tc._held(model, tuned_on(cal), held, budget, exact)["error"]
        table = tuned_on(held)
        row["tuner on this noise"] = tc._held(model, table, held, budget, exact)["error"]
        loop = _loop(model, table, budget, held)
        start = loop.start(np.asarray(held, np.float64))
        row.update(_bounds(loop, _weights(table, loop), start, exact))
        b = table.base_scheduler
        row["base"] = f"{type(b).__name__} {getattr(b, 'solver_order', '')}".strip()
        row["seconds"] = time.perf_counter() - t0
    return row


def heldout_job(model_name: str, budget: int, calibration: int, draw: int) -> dict:
    """The least-squares forms fitted to ``calibration`` samples of draw ``draw`` (from the
    tuner's table on them), scored on the held-out noise."""
    from diffsched.exact.threads import small_matrices
    from diffsched.tuning import Grid

    base, model, held = _setup(model_name)
    cal = tc.noise_for(model_name, calibration, 100 + draw)
    row = {"model": model_name, "budget": budget, "calibration": calibration, "draw": draw}
    with small_matrices():
        row["diffusers' best"] = tc.baseline_job(model_name, budget)["diffusers"]["error"]
        g = Grid.of(base, budget)
        own = g.init_options(g.start)
        exact_held = tc._exact(model, base, held, budget, own)
        exact_cal = tc._exact(model, base, cal, budget, own)
        t0 = time.perf_counter()
        table = _tuner(model, base, budget, g, own)(cal)
        row["tuned"] = tc._held(model, table, held, budget, exact_held)["error"]
        loop = _loop(model, table, budget, cal)  # (the noise only sets the backend)
        start = loop.start(np.asarray(cal, np.float64))
        held_start = loop.start(np.asarray(held, np.float64))
        row.update(_bounds(loop, _weights(table, loop), start, exact_cal,
                           heldout=(held_start, exact_held)))  # fmt: skip
        row["seconds"] = time.perf_counter() - t0
    return row


COLUMNS = ("diffusers' best", "tuned (256)", "tuner on this noise", "weights, least squares",
           "+ sample weights", "+ model times")  # fmt: skip
FORMS = ("tuned", "weights, least squares", "+ sample weights", "+ model times")


def _capacity_table(rows: list[dict]) -> list[str]:
    head = ["model", "calls", *COLUMNS, "target (1/4)", "bound / diffusers' best"]
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in sorted(rows, key=lambda r: (r["model"], r["budget"])):
        best = r["diffusers' best"]
        bound = min(r[c] for c in COLUMNS[2:] if c in r)
        cells = [r["model"], str(r["budget"]),
                 *(f"{r[c]:.4f}" if c in r else "" for c in COLUMNS),
                 f"{best / 4:.4f}", f"{bound / best:.2f}"]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return out


def _heldout_table(rows: list[dict]) -> list[str]:
    """Held-out errors, mean over the draws (min-max where more than one)."""
    head = ["model", "calls", "calibration", "draws", "diffusers' best", *FORMS,
            "+ model times (calibration)", "+ model times / diffusers' best"]  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    keys = sorted({(r["model"], r["budget"], r["calibration"]) for r in rows})
    for key in keys:
        mine = [r for r in rows if (r["model"], r["budget"], r["calibration"]) == key]

        def cell(name, group=mine):
            v = np.array([r[name] for r in group])
            return f"{v.mean():.4f}" + (f" ({v.min():.4f}-{v.max():.4f})" if len(v) > 1 else "")

        best = mine[0]["diffusers' best"]
        ratio = np.mean([r["+ model times"] for r in mine]) / best
        cells = [key[0], str(key[1]), str(key[2]), str(len(mine)), f"{best:.4f}",
                 *(cell(f) for f in FORMS), cell("+ model times (calibration)"),
                 f"{ratio:.2f}"]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return out


def table(path: str) -> str:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    held = [r for r in rows if "calibration" in r]
    capacity = [r for r in rows if "calibration" not in r]
    parts = []
    if capacity:
        parts += ["In-sample bounds (fitted to the held-out noise itself):", "",
                  *_capacity_table(capacity), ""]  # fmt: skip
    if held:
        parts += ["Fitted to other calibration noise, scored on the held-out noise:", "",
                  *_heldout_table(held), ""]  # fmt: skip
    return "\n".join(parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gmm", "net", "digits"],
                        choices=["gmm", "net", "digits"])  # fmt: skip
    parser.add_argument("--budgets", nargs="+", type=int, default=[5, 10])
    parser.add_argument(
        "--heldout",
        action="store_true",
        help="fit to calibration noise, score on the held-out noise",
    )
    parser.add_argument("--calibration", nargs="+", type=int, default=[256],
                        help="calibration sizes (with --heldout)")  # fmt: skip
    parser.add_argument("--draws", type=int, default=1, help="calibration draws (--heldout)")
    parser.add_argument("--out", default="capacity.jsonl")
    parser.add_argument("--net", default=None, help="the trained network's .npz (made if absent)")
    parser.add_argument("--table", default=None, help="print the table of a results file")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.table))
        return
    if args.draws < 1 or min(args.calibration) < 4:
        parser.error("--draws must be >= 1 and --calibration sizes >= 4")
    tc.NET_PATH = args.net
    jobs = [
        (capacity_job, (name, budget))
        for name in args.models
        for budget in args.budgets
    ]  # fmt: skip
    if args.heldout:
        jobs = [
            (heldout_job, (name, budget, size, draw))
            for name in args.models
            for budget in args.budgets
            for size in args.calibration
            for draw in range(args.draws)
        ]  # fmt: skip
    with open(args.out, "a") as f:
        for job, job_args in jobs:
            row = job(*job_args)
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")
            f.flush()  # a row per job survives a stopped run
    print(table(args.out))


if __name__ == "__main__":
    main()
