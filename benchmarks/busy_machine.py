"""The main job, the tuner and a test file on an idle and on a busy machine.

Each job runs in a fresh process, once with diffsched's one-BLAS-thread limit
(``diffsched.exact.threads``, the default) and once without it (the libraries' default pools,
one thread per core), first on an idle machine, then while ``--burners`` processes (default:
one per core) spin on every core. Prints each wall time and the busy / idle ratio.

    python benchmarks/busy_machine.py            # sample, tune, tests/test_models.py
    python benchmarks/busy_machine.py --jobs sample --repeat 3

Run it on an otherwise idle machine: the "idle" rows assume nothing else holds a core.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time

# a job is the argv of ``python -c PRELUDE`` + the job's code; PRELUDE switches the limit off
OFF = "import diffsched.exact.threads as t; t._limit_loaded_pools = lambda: None\n"
JOBS = {
    "sample": "from diffsched import cli; cli.main(['sample', '--out', {png!r}])",
    "tune": (
        "from diffsched import cli; "
        "cli.main(['tune', '--model', 'digits', '--scheduler', 'dpm++2m', '--steps', '6'])"
    ),
    "tests": (
        "import sys, pytest; "
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_models.py']))"
    ),
}


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def _wall(code: str, limited: bool) -> float:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)  # the libraries' defaults, as a user has them
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", ("" if limited else OFF) + code],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"job failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median)")
    args = parser.parse_args()
    png = os.path.join(tempfile.mkdtemp(), "samples.png")
    rows = []
    for name in args.jobs:
        code = JOBS[name].format(png=png)
        cells = {}
        for busy in (False, True):
            stop = multiprocessing.Event()
            burners = [multiprocessing.Process(target=_spin, args=(stop,))
                       for _ in range(args.burners if busy else 0)]  # fmt: skip
            for p in burners:
                p.start()
            try:
                for limited in (True, False):
                    runs = [_wall(code, limited) for _ in range(args.repeat)]
                    cells[(busy, limited)] = statistics.median(runs)
                    print(f"  {name:7s} {'busy' if busy else 'idle'} "
                          f"{'one thread' if limited else 'default pools'}: "
                          f"{cells[(busy, limited)]:.1f} s", file=sys.stderr)  # fmt: skip
            finally:
                stop.set()
                for p in burners:
                    p.join()
        rows.append((name, cells))
    print(f"\n{args.burners} burner process(es); wall seconds (median of {args.repeat})\n")
    print("| job | pools | idle | busy | busy / idle |")
    print("|---|---|---:|---:|---:|")
    for name, cells in rows:
        for limited in (True, False):
            idle, busy = cells[(False, limited)], cells[(True, limited)]
            label = "one BLAS thread (default)" if limited else "libraries' default"
            print(f"| {name} | {label} | {idle:.1f} | {busy:.1f} | {busy / idle:.1f}x |")


if __name__ == "__main__":
    main()
