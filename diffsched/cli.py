"""The ``diffsched`` command: sample from an exact model and see the true error.

* ``diffsched sample``: run one scheduler on an embedded exact model (the optimal
  denoiser of scikit-learn's digits, or a Gaussian mixture), write the samples as a PNG,
  and print the model calls, the wall time and the error against the exact
  probability-flow ODE solution from the same noise.
* ``diffsched bench``: that error for several schedulers and step counts, as a markdown
  table and a log-log plot; ``--against diffusers`` runs the same configs through diffusers.
* ``diffsched list``: the schedulers and their options, with defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import methods
from .core.ops import to_numpy64
from .core.scheduler import Scheduler
from .exact import models, reference
from .exact.threads import small_matrices
from .interop.config import from_config
from .sampling import sample
from .tuning import relative_error

# the command line's names: each class's CLI_NAME (diffsched.methods.CLI_NAMES)
SCHEDULERS: dict[str, type[Scheduler]] = dict(methods.CLI_NAMES)
CLI_NAMES = {name: cls.__name__ for name, cls in SCHEDULERS.items()}
BACKENDS = ("numpy", "torch", "jax")
DEFAULT_BENCH = (
    "ddim",
    "pndm",
    "pndm:reduce_warmup=true",
    "euler",
    "euler:use_karras_sigmas=true",
    "heun",
    "dpm2",
    "lms",
    "dpm++2m",
    "dpm++2m:use_karras_sigmas=true",
    "deis",
    "unipc",
    "dpm++2s",
)


class UsageError(Exception):
    """A command-line mistake: printed without a traceback, exit status 2."""


# -- building schedulers from the command line --------------------------------------------


def parse_value(text: str) -> Any:
    """``true``/``false``, a number, a JSON list, or else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"expected an option as key=value, got: {pair!r}")
        options[key.strip()] = parse_value(value.strip())
    return options


def build_scheduler(
    name: str | None, options: dict[str, Any], config: str | None = None
) -> Scheduler:
    """A scheduler by name (or from a diffusers config file), with options overriding."""
    if config is not None:
        if name is not None:
            raise UsageError("give a scheduler name or --config, not both")
        return from_config(config, **options)
    name = (name or "ddim").lower()
    if name not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    cls = SCHEDULERS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(
            f"{cls.__name__} has no option(s) {unknown}; see `diffsched list` for its options"
        )
    return cls(**options)


def parse_spec(spec: str) -> tuple[str, Scheduler, dict[str, Any]]:
    """``name[:key=value,key=value]``, e.g. ``pndm:reduce_warmup=true``: (label, scheduler,
    the options given). Commas inside brackets belong to a list value."""
    name, _, rest = spec.partition(":")
    pairs = [p for p in re.split(r",(?![^\[]*\])", rest) if p.strip()]
    options = parse_options(pairs)
    return spec, build_scheduler(name, options), options


def adapt_to_model(
    scheduler: Scheduler, model_name: str, options: dict[str, Any]
) -> tuple[Scheduler, str]:
    """The mixture's data reach about ±3, so clipping x̂_0 to [-1, 1] would distort them:
    for ``gmm``, clipping is turned off unless the options set it. Returns the note to show."""
    if (
        model_name == "gmm"
        and getattr(scheduler, "clip_denoised_sample", False)
        and "clip_denoised_sample" not in options
    ):
        note = "note: gmm data exceed [-1, 1], so clip_denoised_sample=False"
        return scheduler.replace(clip_denoised_sample=False), note
    return scheduler, ""


# -- one run: our loop, the exact reference, the error --------------------------------------


@dataclasses.dataclass
class Run:
    """A sampling run on an exact model, and its error against the exact solution."""

    samples: np.ndarray  # float64, on the host
    noise: np.ndarray
    model_calls: int
    seconds: float
    exact: np.ndarray | None  # None where no exact solution applies
    note: str = ""
    reference_seconds: float = 0.0  # the exact ODE solution's time

    @property
    def error(self) -> float | None:
        """Relative RMS error ||x - x*|| / ||x*|| over the whole batch."""
        if self.exact is None:
            return None
        return relative_error(self.samples, self.exact)


def model_kwargs(model_name: str) -> dict[str, Any]:
    return {} if model_name == "digits" else {"n_components": 8, "dim": 2, "seed": 0}


def make_noise(model_name: str, num_samples: int, seed: int) -> np.ndarray:
    shape = models.sample_shape(model_name, num_samples, **model_kwargs(model_name))
    return np.random.default_rng(seed).standard_normal(shape)


def to_backend(x: np.ndarray, backend: str, dtype: str):
    if backend == "numpy":
        return x.astype(dtype)
    if backend == "torch":
        import torch

        return torch.from_numpy(x).to(getattr(torch, dtype))
    if backend == "jax":
        import jax

        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        return jax.numpy.asarray(x, dtype=dtype)
    raise UsageError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")


def is_flow(scheduler: Scheduler) -> bool:
    """Whether the scheduler samples a rectified-flow model (x = (1 - σ) x_0 + σ ε)."""
    from .methods.flow_match import _FlowMatchBase

    return isinstance(scheduler, _FlowMatchBase)


def exact_model(scheduler: Scheduler, model_name: str):
    """The exact model the scheduler's loop calls: the denoiser in its prediction type at
    the training steps of its betas, or its rectified-flow form (t = σ T)."""
    if is_flow(scheduler):
        return models.make_flow_model(
            model_name, scheduler.num_train_steps, **model_kwargs(model_name)
        )
    if not scheduler.TRAINING_TIMESTEPS or getattr(scheduler, "use_flow_sigmas", False):
        raise UsageError(
            f"{type(scheduler).__name__} with these options calls the model at timesteps that "
            "are not training steps of its beta schedule; the exact models take those only"
        )
    return models.make_model(
        model_name, scheduler.alphas_cumprod, scheduler.prediction_type,
        **model_kwargs(model_name),
    )  # fmt: skip


def exact_solution(
    scheduler: Scheduler, model, noise: np.ndarray, num_steps: int, **init_options: Any
) -> tuple[np.ndarray | None, str]:
    """The probability-flow ODE solution from the scheduler's first to last noise level."""
    if not scheduler.deterministic:
        return None, "stochastic sampler: it does not follow the probability-flow ODE"
    if is_flow(scheduler):
        sigma_start, sigma_end = scheduler.noise_levels(num_steps, **init_options)
        return reference.solve_flow_ode(model.denoiser, noise, sigma_start, sigma_end), ""
    start, end = scheduler.noise_levels(num_steps, **init_options)
    if not 0.0 < start < 1.0:
        return None, f"the first noise level has ᾱ = {start:g}; the reference needs 0 < ᾱ < 1"
    # many runs (bench rows, tuned grids) share a start: their exact solution is solved once
    key = (repr(model.denoiser), hashlib.sha1(np.ascontiguousarray(noise).tobytes()).hexdigest(),
           start, end)  # fmt: skip
    if key not in _EXACT:
        if len(_EXACT) >= 64:
            _EXACT.pop(next(iter(_EXACT)))
        _EXACT[key] = reference.solve_pf_ode(model.denoiser, noise, start, end)
    return _EXACT[key].copy(), ""


_EXACT: dict = {}


def run(
    scheduler: Scheduler,
    model_name: str,
    num_steps: int,
    noise: np.ndarray,
    *,
    backend: str = "numpy",
    dtype: str = "float64",
    seed: int = 0,
    compile: bool = False,
    progress: bool = False,
    with_exact: bool = True,
    strength: float | None = None,
    grid: dict | None = None,
) -> Run:
    """Our loop on an exact model from ``noise``, and the exact ODE solution from the same
    start. ``grid``: a custom grid (``init``'s ``sigmas=`` / ``timesteps=``), which sets
    the number of steps."""
    model = exact_model(scheduler, model_name)
    init_options = {} if strength is None else {"strength": strength}
    if grid:
        init_options.update(grid)
        num_steps = None
    state, timesteps = scheduler.init(num_steps, noise, seed, **init_options)
    if strength is None:
        start = noise * scheduler.init_noise_scale(num_steps, **init_options)
    else:  # image-to-image: data of the model, noised to the first model call
        start = np.asarray(scheduler.add_noise(state, clean_data(model_name, noise), noise))
    x = to_backend(start, backend, dtype)
    t0 = time.perf_counter()
    # x is the first model input already: no init_noise_scale, no second add_noise
    out = _loop(model, scheduler, x, num_steps, seed, progress, compile, init_options)
    out = to_numpy64(out)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    if with_exact and progress:
        print("solving the exact ODE reference...", file=sys.stderr, flush=True)
    exact, note = (
        exact_solution(scheduler, model, start, num_steps, **init_options)
        if with_exact
        else (None, "")
    )
    reference = time.perf_counter() - t0
    return Run(out, noise, int(timesteps.shape[0]), seconds, exact, note, reference)


def _loop(model, scheduler, x, num_steps, seed, progress, compile, init_options):
    """ds.sample from a first model input already formed (noise scaled, or img2img)."""
    scale = scheduler.init_noise_scale(num_steps, **init_options)
    return sample(model, scheduler, x / scale if scale != 1.0 else x, num_steps, seed,
                  progress=progress, compile=compile, **init_options)  # fmt: skip


def clean_data(model_name: str, noise: np.ndarray) -> np.ndarray:
    """Clean samples of the model's data, one per noise sample (the start of img2img)."""
    rng = np.random.default_rng(12345)
    if model_name == "digits":
        data = models.digits_data()
        rows = data[rng.integers(0, data.shape[0], noise.shape[0])]
        return rows.reshape(noise.shape)
    return models.make_denoiser("gmm", **model_kwargs("gmm")).sample(noise.shape[0], rng)


# -- pictures -------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_samples(path: Path, model_name: str, samples: np.ndarray, exact, title: str) -> None:
    """Digits as an image grid; Gaussian-mixture samples as a scatter of the first two
    coordinates, over draws from the mixture, with the exact solutions marked."""
    plt = _pyplot()
    if model_name == "digits":
        n = samples.shape[0]
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        grid = np.full((rows * 9 + 1, cols * 9 + 1), -1.0)  # white gaps between digits
        for i, img in enumerate(samples.reshape(n, 8, 8)):
            r, c = divmod(i, cols)
            grid[1 + 9 * r : 9 * r + 9, 1 + 9 * c : 9 * c + 9] = img
        fig, ax = plt.subplots(figsize=(cols * 0.6 + 0.4, rows * 0.6 + 0.8))
        ax.imshow(-grid, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_axis_off()
    else:
        fig, ax = plt.subplots(figsize=(5, 5))
        mixture = models.make_denoiser("gmm", **model_kwargs("gmm"))
        data = mixture.sample(2000, np.random.default_rng(123))
        ax.scatter(data[:, 0], data[:, 1], s=3, c="0.8", label="data")
        if exact is not None:
            ax.scatter(exact[:, 0], exact[:, 1], s=40, facecolors="none", edgecolors="C3",
                       label="exact ODE solution")  # fmt: skip
        ax.scatter(samples[:, 0], samples[:, 1], s=8, c="C0", label="samples")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def matplotlib_ticker():
    import matplotlib.ticker

    return matplotlib.ticker


def plot_bench(path: Path, rows: list[dict]) -> None:
    """Error against model calls, log-log, one panel per model, one line per scheduler;
    diffusers' errors as open circles in the series' colour; one shared legend below."""
    plt = _pyplot()
    model_names = sorted({r["model"] for r in rows})
    labels = list(dict.fromkeys(r["scheduler"] for r in rows))
    fig, axes = plt.subplots(1, len(model_names), figsize=(6 * len(model_names), 4.6),
                             squeeze=False)  # fmt: skip
    cmap = plt.get_cmap("tab20")
    handles = {}
    for ax, model_name in zip(axes[0], model_names, strict=True):
        for k, label in enumerate(labels):
            color = cmap(k % 20)
            pts = [r for r in rows if r["model"] == model_name and r["scheduler"] == label]
            pts = [r for r in pts if r["error"] is not None and r["error"] > 0]
            if not pts:
                continue
            calls, errors = [r["calls"] for r in pts], [r["error"] for r in pts]
            marker = "os^vD<>ph*"[k % 10]
            (line,) = ax.loglog(calls, errors, "-", marker=marker, ms=4, color=color)
            handles[label] = line
            peer = [r for r in pts if r.get("diffusers_error")]
            if peer:
                ax.loglog([r["calls"] for r in peer], [r["diffusers_error"] for r in peer],
                          "o", ms=9, mfc="none", mec=color, alpha=0.6)  # fmt: skip
        ticks = [c for c in (5, 10, 20, 50, 100) if any(r["calls"] >= c for r in rows)]
        ax.set_xticks(ticks, [str(c) for c in ticks])
        ax.xaxis.set_minor_formatter(matplotlib_ticker().NullFormatter())
        ax.set_xlabel("model calls")
        ax.set_ylabel("relative RMS error vs exact ODE solution")
        ax.set_title(model_name)
        ax.grid(True, which="major", alpha=0.3)
    if any(r.get("diffusers_error") for r in rows):
        (ring,) = axes[0][0].plot([], [], "o", ms=9, mfc="none", mec="0.3")
        handles["diffusers, same config (open circles)"] = ring
    fig.legend(list(handles.values()), list(handles), loc="lower center",
               ncol=min(4, len(handles)), fontsize=8, frameon=False)  # fmt: skip
    rows_of_legend = math.ceil(len(handles) / 4)
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- commands ----------------------------------------------------------------------------


def check_out(path_text: str, flag: str = "--out") -> Path:
    """The PNG path to write: a .png name in an existing folder, or a UsageError."""
    out = Path(path_text)
    if out.suffix.lower() != ".png":
        raise UsageError(f"{flag} must name a .png file, got: {path_text!r}")
    if not out.parent.is_dir():
        raise UsageError(f"{flag}: the folder {str(out.parent)!r} does not exist; create it first")
    return out


def check_backend(backend: str, compile: bool) -> None:
    if compile and backend != "jax":
        raise UsageError(f"--compile needs --backend jax (it runs the loop as one JAX "
                         f"jit-compiled fori_loop), got --backend {backend}")  # fmt: skip
    module = {"torch": "torch", "jax": "jax"}.get(backend)
    if module is not None:
        try:
            __import__(module)
        except ImportError:
            raise UsageError(
                f"--backend {backend} needs {module} installed: pip install "
                + ("torch==2.13.0" if module == "torch" else "jax")
            ) from None


def cmd_sample(args: argparse.Namespace) -> int:
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1, got: {args.num_samples}")
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got: {args.steps}")
    out = check_out(args.out)
    check_backend(args.backend, args.compile)
    options = parse_options(args.option)
    scheduler = build_scheduler(args.scheduler, options, args.config)
    if args.config is None:  # a model's config is taken as it is
        scheduler, note = adapt_to_model(scheduler, args.model, options)
        if note:
            print(note)
    noise = make_noise(args.model, args.num_samples, args.seed)
    grid = resolve_grid(args.grid, scheduler, args.steps)
    steps = args.steps if grid is None else grid_steps(grid)
    result = run(
        scheduler, args.model, steps, noise, backend=args.backend, dtype=args.dtype,
        seed=args.seed, compile=args.compile,
        progress=not (args.no_progress or args.compile), strength=args.strength, grid=grid,
    )  # fmt: skip
    title = (f"{type(scheduler).__name__}, {steps} steps ({result.model_calls} model "
             f"calls), {args.model}")  # fmt: skip
    print(f"{title}, {args.num_samples} samples, {args.backend} {args.dtype}")
    print(f"model calls: {result.model_calls}")
    print(f"time: sampling {result.seconds:.3f} s (the scheduler and the model), exact ODE "
          f"reference {result.reference_seconds:.3f} s")  # fmt: skip
    if result.error is None:
        print(f"error vs exact solution: n/a ({result.note})")
    else:
        print(f"relative RMS error vs exact ODE solution: {result.error:.3e}")
        title += f", error {result.error:.2e}"
    t0 = time.perf_counter()
    plot_samples(out, args.model, result.samples, result.exact, title)
    print(f"wrote {out} ({time.perf_counter() - t0:.3f} s)")
    return 0


def resolve_grid(text: str | None, scheduler: Scheduler, num_steps: int) -> dict | None:
    """``--grid``: a named grid (edm, logsnr, ays-sd15, ...) of ``num_steps`` steps, or a
    JSON file saved by ``diffsched tune --save`` (which sets the steps)."""
    if text is None:
        return None
    from .grids import NAMED_GRIDS, load_grid, named_grid

    if text in NAMED_GRIDS:
        return named_grid(text, scheduler, num_steps)
    if not Path(text).is_file():
        raise UsageError(
            f"--grid must be one of {', '.join(NAMED_GRIDS)} or a JSON file from "
            f"'diffsched tune --save', got: {text!r} (no such file)"
        )
    return load_grid(text)


def grid_steps(grid: dict) -> int:
    """The number of steps of a custom grid."""
    return len(grid["timesteps"]) if "timesteps" in grid else len(grid["sigmas"]) - 1


def same_image_fraction(samples: np.ndarray, exact: np.ndarray) -> float:
    """digits: the fraction of samples whose nearest training image is the exact
    solution's (the errors there are flips between training images)."""
    data = models.digits_data().reshape(-1, 64)

    def nearest(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1)
        d = (x**2).sum(1)[:, None] - 2 * x @ data.T + (data**2).sum(1)[None, :]
        return np.argmin(d, axis=1)

    return float(np.mean(nearest(samples) == nearest(exact)))


def cmd_tune(args: argparse.Namespace) -> int:
    from .tuning import search

    for flag, value, low in (("--steps", args.steps, 1), ("--calibration", args.calibration, 1),
                             ("--held-out", args.held_out, 1),
                             ("--max-evaluations", args.max_evaluations, 0)):  # fmt: skip
        if value < low:
            raise UsageError(f"{flag} must be at least {low}, got: {value}")
    if args.save is not None and not args.save.endswith(".json"):
        raise UsageError(f"--save must name a .json file, got: {args.save!r}")
    name = args.scheduler_flag or args.scheduler or "dpm++2m"
    options = parse_options(args.option)
    scheduler = build_scheduler(name, options, args.config)
    if args.config is None:
        scheduler, note = adapt_to_model(scheduler, args.model, options)
        if note:
            print(note)
    model = exact_model(scheduler, args.model)
    calibration = make_noise(args.model, args.calibration, args.seed)
    held_out = make_noise(args.model, args.held_out, args.seed + HELD_OUT_SEED)
    print(f"tuning {type(scheduler).__name__}, {args.steps} steps, on {args.model}: "
          f"calibration {args.calibration} samples (seed {args.seed}), held out "
          f"{args.held_out} (seed {args.seed + HELD_OUT_SEED})", flush=True)  # fmt: skip
    result = search(model, scheduler, args.steps, calibration,
                    max_evaluations=args.max_evaluations)  # fmt: skip
    ((kind, values),) = result.init_options.items()
    shown = values if kind == "timesteps" else [float(f"{v:.6g}") for v in values]
    print(f"tuned grid: {kind}={shown}")
    before = run(scheduler, args.model, args.steps, held_out, grid=result.start_options)
    after = run(scheduler, args.model, args.steps, held_out, grid=result.init_options)
    print("| relative RMS error vs exact ODE solution | own grid | tuned grid |")
    print("|---|---:|---:|")
    print(f"| calibration noise | {result.start_error:.3e} | {result.error:.3e} |")
    print(f"| held-out noise | {before.error:.3e} | {after.error:.3e} |")
    if args.model == "digits":
        print(f"| held out: same training image as the exact solution | "
              f"{same_image_fraction(before.samples, before.exact):.0%} | "
              f"{same_image_fraction(after.samples, after.exact):.0%} |")  # fmt: skip
    print(f"model calls per sample: {after.model_calls}; tuner: {result.model_calls} model "
          f"calls on the calibration batch, {result.seconds:.1f} s")  # fmt: skip
    if args.save is not None:
        from .grids import save_grid

        out = Path(args.save)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_grid(out, result.init_options)
        print(f"wrote {out} (use: diffsched sample {name} --grid {out}, or "
              f"sched.init(None, x, **ds.load_grid('{out}')))")  # fmt: skip
    return 0


HELD_OUT_SEED = 1000  # held-out noise: seed + this, never the calibration seed


class _NoBar:
    def update(self, *args: Any) -> None: ...
    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _bar(total: int, desc: str):
    """A progress bar on stderr for the slow commands (reference solves, bench rows); none
    when stderr is not a terminal or tqdm is missing."""
    if not sys.stderr.isatty():
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)


def bench_rows(
    specs: Sequence[str],
    steps: Sequence[int],
    model_names: Sequence[str],
    num_samples: int,
    seed: int,
    against: str | None = None,
) -> list[dict]:
    """One row per (model, scheduler, steps): model calls and errors (ours, diffusers')."""
    rows = []
    bar = _bar(len(model_names) * len(specs) * len(steps), "bench rows")
    for model_name in model_names:
        noise = make_noise(model_name, num_samples, seed)
        for spec in specs:
            label, scheduler, options = parse_spec(spec)
            scheduler, _ = adapt_to_model(scheduler, model_name, options)
            for n in steps:
                bar.set_postfix_str(f"{model_name} {label} {n}", refresh=False)
                bar.update()
                result = run(scheduler, model_name, n, noise, seed=seed)
                row = {"model": model_name, "scheduler": label, "steps": n,
                       "calls": result.model_calls, "error": result.error,
                       "note": result.note}  # fmt: skip
                if against == "diffusers" and result.exact is not None:
                    row["diffusers_error"] = diffusers_error(scheduler, model_name, n, result)
                rows.append(row)
    return rows


def diffusers_error(scheduler: Scheduler, model_name: str, num_steps: int, ours: Run) -> float:
    """The same config, noise and model run through diffusers (float64 tables): its error."""
    import torch

    from .interop import peer as _diffusers

    model = exact_model(scheduler, model_name)
    _, out = _diffusers.run(scheduler.to_config(), model, torch.from_numpy(ours.noise), num_steps)
    out = out.double().numpy()
    return relative_error(out, ours.exact)


def format_table(rows: list[dict]) -> str:
    with_peer = any("diffusers_error" in r for r in rows)
    head = "| model | scheduler | steps | model calls | rel. RMS error |"
    rule = "|---|---|---:|---:|---:|"
    if with_peer:
        head += " diffusers | ours/diffusers - 1 |"
        rule += "---:|---:|"
    lines = [head, rule]
    for r in rows:
        err = "n/a" if r["error"] is None else f"{r['error']:.3e}"
        line = f"| {r['model']} | {r['scheduler']} | {r['steps']} | {r['calls']} | {err} |"
        if with_peer:
            peer = r.get("diffusers_error")
            if peer is None or r["error"] is None:
                line += " n/a | n/a |"
            else:
                line += f" {peer:.3e} | {r['error'] / peer - 1:+.1e} |"
        lines.append(line)
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    check_out(args.out)
    if args.against is not None:
        try:
            import diffusers  # noqa: F401
        except ImportError as err:
            raise UsageError("--against diffusers needs diffusers installed") from err
    if args.best:
        rows = best_rows(args.model, args.num_samples, args.seed,
                         calibration=args.calibration,
                         with_diffusers=args.against == "diffusers")  # fmt: skip
        print(format_best(rows))
        tuned = [r["tuned"] for r in rows if r.get("tuned")]
        if tuned:
            calls = sum(t["tuner_calls"] for t in tuned) / len(tuned)
            secs = sum(t["tuner_seconds"] for t in tuned) / len(tuned)
            print(f"tuner: {calls:.0f} model calls on the calibration batch of "
                  f"{args.calibration}, "
                  f"{secs:.1f} s, per tuned grid on average")  # fmt: skip
        return 0
    rows = bench_rows(args.schedulers, args.steps, args.model, args.num_samples, args.seed,
                      args.against)  # fmt: skip
    table = format_table(rows)
    print(table)
    notes = sorted({f"{r['scheduler']}: {r['note']}" for r in rows if r["note"]})
    for note in notes:
        print(f"n/a: {note}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_bench(out, rows)
    print(f"wrote {out}")
    return 0


# The deterministic candidates of `bench --best`: every deterministic method and σ grid
# diffusers has, on Stable Diffusion 1.5's training schedule, so that "model calls" is the
# budget. Each runs here and through diffusers (driven as its pipelines drive it).
BEST_SD = "beta_schedule=quadratic,beta_start=0.00085,beta_end=0.012"
SIGMA_OPTIONS = ("", ",use_karras_sigmas=true", ",use_exponential_sigmas=true",
                 ",use_beta_sigmas=true")  # fmt: skip
BEST_CANDIDATES = tuple(
    f"{name}:{BEST_SD}{extra}"
    for name, extras in {
        "ddim": ("", ",timestep_spacing=trailing"),
        "pndm": (",reduce_warmup=true",),
        "euler": (*SIGMA_OPTIONS, ",timestep_spacing=trailing"),
        "heun": SIGMA_OPTIONS,
        "dpm2": SIGMA_OPTIONS,
        "lms": SIGMA_OPTIONS,
        "dpm++2m": (*SIGMA_OPTIONS, ",timestep_spacing=trailing", ",solver_order=3",
                    ",use_lu_lambdas=true", ",use_karras_sigmas=true,solver_order=3"),
        "deis": ("", ",timestep_spacing=trailing", ",use_karras_sigmas=true"),
        "unipc": (*SIGMA_OPTIONS, ",timestep_spacing=trailing", ",solver_order=3",
                  ",use_karras_sigmas=true,solver_order=3"),
        "dpm++2s": ("", ",use_karras_sigmas=true"),
        "sa-solver": (",tau=0.0", ",tau=0.0,use_karras_sigmas=true"),
    }.items()
    for extra in extras
)  # fmt: skip
# Ours only: variable-step iPNDM on our grids, and named grids for the multistep solvers.
OURS_CANDIDATES = tuple(
    (f"{name}:{BEST_SD}{extra}", grid)
    for name, extras, grids in (
        ("ipndm-v", (*SIGMA_OPTIONS[:3], ",solver_order=3,use_karras_sigmas=true"), (None,)),
        ("ipndm-v", ("",), ("edm", "logsnr", "ays-sd15")),
        ("dpm++2m", ("",), ("edm", "logsnr", "ays-sd15")),
        ("unipc", ("", ",solver_order=3"), ("edm", "logsnr", "ays-sd15")),
    )
    for extra in extras
    for grid in grids
)  # fmt: skip
# The methods tuned by `bench --best`
TUNED = (f"ipndm-v:{BEST_SD}", f"unipc:{BEST_SD}", f"unipc:{BEST_SD},solver_order=3",
         f"dpm++2m:{BEST_SD}")  # fmt: skip
BEST_BUDGETS = (5, 6, 8, 10, 15, 20)


def _steps_for(scheduler: Scheduler, budget: int) -> int | None:
    """The most steps whose model calls fit the budget."""
    return max((n for n in range(1, budget + 1) if _calls(scheduler, n) <= budget), default=None)


def best_rows(
    model_names: Sequence[str],
    num_samples: int,
    seed: int,
    budgets: Sequence[int] = BEST_BUDGETS,
    calibration: int = 256,
    with_diffusers: bool = True,
) -> list[dict]:
    """Per model and model-call budget: our best tuned method (grid searched by
    :func:`diffsched.tuning.search` on calibration noise), our best untuned method and
    grid, and diffusers' best configuration, all measured on held-out noise against the
    exact ODE solution."""
    from .grids import named_grid
    from .tuning import search

    out = []
    total = len(model_names) * len(budgets) * (len(BEST_CANDIDATES) + len(OURS_CANDIDATES)
                                               + len(TUNED))  # fmt: skip
    bar = _bar(total, "bench --best")
    for model_name in model_names:
        cal = make_noise(model_name, calibration, seed)
        held = make_noise(model_name, num_samples, seed + HELD_OUT_SEED)
        for budget in budgets:
            found: dict[str, list] = {"diffusers": [], "untuned": [], "tuned": []}

            def measure(*args: Any, found=found, model_name=model_name, held=held, **kw: Any):
                _measure(found, model_name, held, *args, **kw)

            for spec in BEST_CANDIDATES:
                bar.update()
                _, sched, options = parse_spec(spec)
                sched, _ = adapt_to_model(sched, model_name, options)
                steps = _steps_for(sched, budget)
                if steps is not None:
                    measure("untuned", spec, sched, steps, peer=with_diffusers)
            for spec, grid_name in OURS_CANDIDATES:
                bar.update()
                _, sched, _ = parse_spec(spec)
                try:
                    grid = None if grid_name is None else named_grid(grid_name, sched, budget)
                except ValueError:
                    continue
                measure("untuned", f"{spec}" + (f" --grid {grid_name}" if grid_name else ""),
                        sched, budget, grid)  # fmt: skip
            for spec in TUNED:
                bar.update()
                _, sched, _ = parse_spec(spec)
                model = exact_model(sched, model_name)
                t0 = time.perf_counter()
                result = search(model, sched, budget, cal)
                measure("tuned", spec, sched, budget, result.init_options)
                found["tuned"][-1] |= {"tuner_calls": result.model_calls,
                                       "tuner_seconds": time.perf_counter() - t0}  # fmt: skip
            row = {"model": model_name, "budget": budget}
            for kind, rows in found.items():
                if rows:
                    row[kind] = min(rows, key=lambda r: r["error"])
            out.append(row)
    bar.close()
    return out


def _measure(found: dict, model_name: str, held: np.ndarray, kind: str, spec: str,
             sched: Scheduler, steps: int, grid: dict | None = None,
             peer: bool = False) -> None:  # fmt: skip
    """One candidate of ``bench --best`` on the held-out noise: ours (and diffusers')."""
    result = run(sched, model_name, steps, held, grid=grid)
    if result.error is None:
        return
    row = {"spec": spec, "grid": grid, "steps": steps, "calls": result.model_calls,
           "error": result.error}  # fmt: skip
    if model_name == "digits":
        row["same"] = same_image_fraction(result.samples, result.exact)
    found[kind].append(row)
    if peer:
        import torch

        from .interop import peer as _diffusers

        model = exact_model(sched, model_name)
        _, theirs = _diffusers.run(sched.to_config(), model, torch.from_numpy(held), steps)
        theirs = theirs.double().numpy()
        err = relative_error(theirs, result.exact)
        peer_row = {**row, "error": err}
        if model_name == "digits":
            peer_row["same"] = same_image_fraction(theirs, result.exact)
        found["diffusers"].append(peer_row)


def _calls(scheduler: Scheduler, num_steps: int) -> int:
    try:
        return scheduler.program(num_steps).num_calls
    except ValueError:
        return 10**9


def _short(spec: str) -> str:
    return spec.replace(f":{BEST_SD},", ": ").replace(f":{BEST_SD}", "").replace(",", ", ")


def format_best(rows: list[dict]) -> str:
    """The ``bench --best`` table: errors on held-out noise (and, for digits, the fraction
    of samples that end on the exact solution's training image)."""
    lines = [
        "| model | budget | ours tuned | error | ours untuned | error | diffusers' best | error "
        "| tuned / diffusers |",
        "|---|---:|---|---:|---|---:|---|---:|---:|",
    ]
    for r in rows:
        cells = []
        for kind in ("tuned", "untuned", "diffusers"):
            best = r.get(kind)
            if best is None:
                cells += ["n/a", "n/a"]
                continue
            err = f"{best['error']:.2e}"
            if "same" in best:
                err += f" ({best['same']:.0%})"
            cells += [f"{_short(best['spec'])} ({best['steps']} steps)", err]
        ratio = "n/a"
        if r.get("tuned") and r.get("diffusers"):
            ratio = f"{r['tuned']['error'] / r['diffusers']['error']:.2g}"
        lines.append(f"| {r['model']} | {r['budget']} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    del args
    from .core.options import STEP_TIME, specs

    for name, cls in SCHEDULERS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name}: {cls.__name__} — {doc} (diffusers: {cls.DIFFUSERS_CLASS or 'none'})")
        for field, (default, spec) in specs(cls).items():
            key = spec.diffusers_key
            where = "passed to diffusers' step" if key == STEP_TIME else key or "ours only"
            allowed = ""
            if field == "prediction_type":
                allowed = f"; one of {cls.PREDICTION_TYPES}"
            elif spec.choices:
                allowed = f"; one of {spec.choices}"
            print(f"    {field} = {default!r}  [{where}]{allowed}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="diffsched", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="sample from an exact model and measure the error",
                       formatter_class=fmt)  # fmt: skip
    p.add_argument("scheduler", nargs="?",
                   help=f"one of {', '.join(SCHEDULERS)} (default: ddim)")  # fmt: skip
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="a scheduler option, e.g. -o eta=0.5 (repeatable; see the list "
                        "command)")  # fmt: skip
    p.add_argument("--config", help="a diffusers scheduler_config.json (or model folder)")
    p.add_argument("--steps", type=int, default=20, help="number of steps")
    p.add_argument("--strength", type=float, default=None,
                   help="image-to-image: start this fraction of the way down the schedule "
                        "(LCM, DDIM, the Euler family, ...); the loop starts from exact data "
                        "noised to the first call")  # fmt: skip
    p.add_argument("--grid", default=None,
                   help="a custom grid: one of edm, logsnr, ays-sd15, ays-sdxl, ays-svd (of "
                        "--steps steps), or a JSON file from 'diffsched tune --save'")  # fmt: skip
    p.add_argument("--model", choices=models.MODEL_NAMES, default="digits", help="exact model")
    p.add_argument("--num-samples", type=int, default=64, help="samples in the batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the start noise and key")
    p.add_argument("--backend", choices=BACKENDS, default="numpy", help="array library")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="sample dtype")  # fmt: skip
    p.add_argument("--compile", action="store_true",
                   help="run the whole loop as one jax.jit-compiled fori_loop "
                        "(needs --backend jax; no progress bar)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default="diffsched_samples.png",
                   help="PNG file to write (its folder must exist)")  # fmt: skip
    p.set_defaults(func=cmd_sample)

    b = sub.add_parser("bench", help="error against exact solutions over schedulers and steps",
                       formatter_class=fmt)  # fmt: skip
    b.add_argument("--schedulers", nargs="+", default=list(DEFAULT_BENCH),
                   help="name[:key=value,...] specs")  # fmt: skip
    b.add_argument("--steps", nargs="+", type=int, default=[5, 10, 20, 50], help="step counts")
    b.add_argument("--model", nargs="+", choices=models.MODEL_NAMES, default=["digits", "gmm"],
                   help="exact models")  # fmt: skip
    b.add_argument("--num-samples", type=int, default=32, help="samples per model")
    b.add_argument("--seed", type=int, default=0, help="seed of the start noise")
    b.add_argument("--against", choices=("diffusers",), help="also run diffusers' schedulers")
    b.add_argument("--out", default="diffsched_bench.png",
                   help="PNG plot to write (its folder must exist)")  # fmt: skip
    b.add_argument("--best", action="store_true",
                   help="per budget of 5, 6, 8, 10, 15 and 20 model calls, our most accurate "
                        "method with a tuned grid and untuned, beside diffusers' best with "
                        "--against diffusers (SD1.5's betas; held-out noise)")  # fmt: skip
    b.add_argument("--calibration", type=int, default=256,
                   help="--best: calibration samples of the tuner (seed --seed; the errors "
                        f"are measured on other noise, seed --seed + {HELD_OUT_SEED})")  # fmt: skip
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("tune", formatter_class=fmt,
                       help="search the grid of N steps closest to the exact ODE solution, "
                            "and measure it on held-out noise")  # fmt: skip
    t.add_argument("scheduler", nargs="?", help="as --scheduler")
    t.add_argument("--scheduler", dest="scheduler_flag", default=None,
                   help=f"one of {', '.join(SCHEDULERS)} (default: dpm++2m)")  # fmt: skip
    t.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a scheduler option (repeatable)",
    )
    t.add_argument("--config", help="a diffusers scheduler_config.json (or model folder)")
    t.add_argument("--steps", type=int, default=6, help="number of steps")
    t.add_argument("--model", choices=models.MODEL_NAMES, default="digits", help="exact model")
    t.add_argument("--calibration", type=int, default=64, help="calibration samples")
    t.add_argument("--held-out", type=int, default=64, help="held-out samples (other noise)")
    t.add_argument(
        "--seed",
        type=int,
        default=0,
        help=f"seed of the calibration noise (held out: seed + {HELD_OUT_SEED})",
    )
    t.add_argument("--max-evaluations", type=int, default=300,
                   help="end-to-end runs of the refinement, at most")  # fmt: skip
    t.add_argument("--save", default=None, help="write the grid to this JSON file")
    t.set_defaults(func=cmd_tune)

    sub.add_parser("list", help="schedulers, their options, defaults, diffusers keys and "
                   "allowed values").set_defaults(func=cmd_list)  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with small_matrices():  # the exact models' small products (see exact.threads)
            return args.func(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"diffsched {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
