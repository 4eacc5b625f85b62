"""Per-model-call cost of diffsched's ComfyUI samplers against ComfyUI's own sampler code,
as ratios measured in one run.

* Eager PyTorch, CPU, float32, one thread; ComfyUI's ``karras`` schedule, 20 steps, the
  ``eps`` model sampling of SD1.5's table (every name of ``ds.comfy.SAMPLERS``) and the
  flow model sampling (SD3's, shift 3) for a few; shapes (1, 4, 64, 64) and
  (1, 16, 128, 128).
* ComfyUI: the time of its whole sampler function (``K.sample_*``, or what
  ``comfy.samplers.sampler_object(name)`` builds: uni_pc, uni_pc_bh2, ddim, the CFG++
  names) divided by its denoiser calls. The denoiser is a minimal k-diffusion one built
  from ComfyUI's model sampling object as its model wrapper uses it
  (``calculate_input``, ``timestep``, the network, ``calculate_denoised``), the network
  returning a precomputed tensor. The CFG++ names get a second (unconditional) output,
  the CFG mix of the two x̂_0's and the sampler's post-CFG hook, as ComfyUI's
  ``sampling_function`` calls them.
* Ours: the time of the ``step`` loop divided by its model calls (the same count,
  checked and printed), with the same network output (CFG++: the same two outputs mixed
  in the loop, ``step(..., unconditional=u)``). ``init`` is timed apart, right before
  each loop (its own column, once per loop; ``+init`` adds it per call): the first
  ``init`` of a configuration, which compiles its program, is the warm-up's.
* Noise is given on both sides: ours ``step(..., noise=z)``, ComfyUI a ``noise_sampler``
  returning z (heunpp2, which draws ``torch.randn_like`` every step, gets a ``torch``
  whose ``randn_like`` returns z; dpm_fast, res_multistep and dpm_adaptive draw and
  multiply by 0). Each side's own draw is timed apart: the loop that draws minus the loop
  given z, per model call; ComfyUI's default noise sampler (its seeded generator, or
  torchsde's Brownian tree) against ours (the default stream and
  ``noise_stream="comfy"``), each loop with a fresh seed.
* The floor: one ``torch.add(a, b, alpha=0.5, out=c)`` over the same shape.
* Every case checks that both loops give the same sample (float32).

``dpm_adaptive`` (its loop runs until ``sched.done``: ``next_timestep``, ``step``) is
timed apart: its rows come last and stay out of the summary lines.

ComfyUI's code (GPL-3.0) is not part of diffsched: it is loaded at run time from the
oracle in ``../shared/oracles/comfyui`` (or ``/work/shared/...``, or ``--oracle PATH``),
which executes the verbatim upstream files; the oracle's recording hooks are taken off
again in this process, so that the upstream modules run on plain ``torch`` and their own
noise samplers. Usage::

    python benchmarks/comfy_overhead.py [--quick] [--only NAME ...] [--no-draws]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import statistics
import sys
import time
import types
import warnings
from functools import partial
from pathlib import Path

import numpy as np

import diffsched as ds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_overhead import _median_call  # the benchmarks' one timer

SHAPES = [(1, 4, 64, 64), (1, 16, 128, 128)]
NUM_STEPS = 20
SCHEDULER = "karras"
CFG = 1.5  # the CFG++ names' guidance scale (both sides mix the two outputs)
# oracle preset -> (ds.from_comfy model, its settings)
MODELS = {"eps-sd15": ("eps", {}), "flow-sd3": ("flow", {"shift": 3.0})}
FLOW_SAMPLERS = (
    "euler",
    "euler_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "uni_pc",
)
ADAPTIVE = "dpm_adaptive"
# deterministic samplers whose ComfyUI code draws noise anyway (and multiplies it by 0)
DRAW_TIMES_ZERO = ("heunpp2", "dpm_fast", "res_multistep", "res_multistep_cfg_pp")
# the Brownian-tree names whose draws are another name's (the same tree, the same draws):
# timed once, on the name they map to
SAME_DRAWS = {
    "dpmpp_sde_gpu": "dpmpp_sde",
    "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
    "dpmpp_2m_sde_heun": "dpmpp_2m_sde",
    "dpmpp_2m_sde_heun_gpu": "dpmpp_2m_sde",
    "dpmpp_3m_sde_gpu": "dpmpp_3m_sde",
}
ROOT = Path(__file__).resolve().parents[1]
ORACLE_PATHS = [
    ROOT.parent / "shared" / "oracles" / "comfyui" / "oracle.py",
    Path("/work/shared/oracles/comfyui/oracle.py"),
]


# ----------------------------------------------------------------------------------------
# ComfyUI's side
# ----------------------------------------------------------------------------------------


def load_comfy(path: Path | None):
    """ComfyUI's loaded modules (K, S, ms, ...) and the oracle, its hooks taken off; None
    where the oracle is absent."""
    import torch

    candidates = [path] if path is not None else ORACLE_PATHS
    found = next((p for p in candidates if p.exists()), None)
    if found is None:
        return None
    spec = importlib.util.spec_from_file_location("comfy_oracle", found)
    oracle = importlib.util.module_from_spec(spec)
    sys.modules["comfy_oracle"] = oracle
    spec.loader.exec_module(oracle)
    mods = oracle.modules()
    # the oracle routes torch through a recording shim and wraps k-diffusion's noise
    # samplers (for its float64 mode and its records): ComfyUI itself runs on neither
    for name in ("K", "S", "ms"):
        mods[name].torch = torch
    original = getattr(oracle, "_ORIG", {})
    for name in ("default_noise_sampler", "BrownianTreeNoiseSampler"):
        if name in original:
            setattr(mods["K"], name, original[name])
    return oracle, mods


class Denoiser:
    """k-diffusion's denoiser D(x, σ) as ComfyUI's model wrapper forms it (model input,
    timestep, the network, x̂_0 from its output), around a network that returns fixed
    tensors. With ``uncond`` (the CFG++ names): the unconditional output too, the CFG mix
    of the two x̂_0's and the sampler's post-CFG hooks, as ComfyUI's sampling_function."""

    def __init__(self, model_sampling, patcher, output, uncond=None, cfg: float = 1.0):
        self.ms = model_sampling
        self.output, self.uncond, self.cfg = output, uncond, cfg
        # what the samplers read: model.inner_model.inner_model.model_sampling and
        # model.inner_model.model_patcher
        self.inner_model = types.SimpleNamespace(
            inner_model=types.SimpleNamespace(model_sampling=model_sampling),
            model_patcher=patcher,
        )
        self.calls = 0

    def network(self, x_in, t, which: int = 0):
        return self.output if which == 0 else self.uncond

    def __call__(self, x, sigma, model_options=None, seed=None, **_):
        self.calls += 1
        ms = self.ms
        x_in = ms.calculate_input(sigma, x)
        t = ms.timestep(sigma).float()
        denoised = ms.calculate_denoised(sigma, self.network(x_in, t).float(), x)
        hooks = (model_options or {}).get("sampler_post_cfg_function")
        if self.uncond is None or not hooks:
            return denoised
        uncond = ms.calculate_denoised(sigma, self.network(x_in, t, 1).float(), x)
        mixed = uncond + (denoised - uncond) * self.cfg
        for hook in hooks:
            mixed = hook(
                {
                    "denoised": mixed,
                    "cond_denoised": denoised,
                    "uncond_denoised": uncond,
                    "sigma": sigma,
                    "input": x,
                    "model_options": model_options,
                    "cond_scale": self.cfg,
                }
            )
        return mixed


def comfy_sampler(mods, name: str):
    """(function, keyword options, how noise is given) of ComfyUI's sampler ``name``:
    "noise_sampler" (the keyword), "randn_like" (heunpp2: the module's torch) or None."""
    S, K = mods["S"], mods["K"]
    sampler = S.sampler_object(name)
    fn, options = sampler.sampler_function, dict(sampler.extra_options)
    if name == "heunpp2":
        return fn, options, "randn_like"
    if name == "dpm_fast":  # its KSampler wrapper passes no noise_sampler: call K directly

        def dpm_fast(
            model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None
        ):
            end = sigmas[-1] if sigmas[-1] > 0 else sigmas[-2]  # as the wrapper picks it
            return K.sample_dpm_fast(
                model,
                x,
                end,
                sigmas[0],
                len(sigmas) - 1,
                extra_args=extra_args,
                callback=callback,
                disable=disable,
                noise_sampler=noise_sampler,
            )

        return dpm_fast, options, "noise_sampler"
    params = inspect.signature(fn).parameters
    takes = "noise_sampler" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return fn, options, "noise_sampler" if takes else None


def torch_returning(z):
    """A stand-in for the torch module whose randn_like returns ``z`` (attribute access as
    fast as the module's own)."""
    import torch

    fake = types.ModuleType("torch")
    fake.__dict__.update(vars(torch))
    fake.randn_like = lambda x, *args, **kwargs: z
    return fake


# ----------------------------------------------------------------------------------------
# One case: a sampler, a model sampling, a shape
# ----------------------------------------------------------------------------------------


class Case:
    """Both loops of one sampler on one model sampling and shape, ready to time."""

    def __init__(self, comfy, name: str, preset: str, shape, tensors):
        import torch

        oracle, mods = comfy
        self.name, self.preset, self.shape = name, preset, shape
        self.mods = mods
        noise, cond, uncond, z = tensors
        self.z = z
        self.cfgpp = name.endswith("_cfg_pp")
        ms, patcher = oracle.make_model_sampling(preset)
        self.ms = ms
        sig = oracle.compute_sigmas(name, SCHEDULER, NUM_STEPS, model=preset, precision="float32")
        self.sigmas = torch.tensor(sig, dtype=torch.float32)
        self.denoiser = Denoiser(ms, patcher, cond, uncond if self.cfgpp else None, CFG)
        self.fn, self.options, self.noise_via = comfy_sampler(mods, name)
        sampler = mods["S"].sampler_object(name)
        max_denoise = sampler.max_denoise(self.denoiser.inner_model, self.sigmas)
        self.x_comfy = ms.noise_scaling(self.sigmas[0], noise, torch.zeros(shape), max_denoise)
        model, settings = MODELS[preset]
        self.sched = ds.from_comfy(name, SCHEDULER, model=model, **settings)
        self.stochastic = not self.sched.deterministic
        self.noise = noise
        self.cond, self.uncond = cond, uncond
        self.seed = 10_000  # a fresh seed for every loop that draws
        self.adaptive = name == ADAPTIVE

    # -- ComfyUI --------------------------------------------------------------------------

    def comfy_loop(self, given: bool = True) -> tuple[float, object]:
        """(seconds of ComfyUI's sampler function, its result after inverse_noise_scaling);
        ``given``: the noise is z, else ComfyUI draws its own."""
        K = self.mods["K"]
        options = dict(self.options)
        fake = None
        if given and self.noise_via == "noise_sampler":
            z = self.z
            options["noise_sampler"] = lambda sigma, sigma_next: z
        elif given and self.noise_via == "randn_like":
            fake = torch_returning(self.z)
        sigmas = self.sigmas.clone()  # uni_pc writes its last entry
        self.seed += 1
        extra_args = {"seed": self.seed, "model_options": {}}
        real = K.torch
        if fake is not None:
            K.torch = fake
        try:
            t0 = time.perf_counter()
            out = self.fn(
                self.denoiser,
                self.x_comfy,
                sigmas,
                extra_args=extra_args,
                callback=None,
                disable=True,
                **options,
            )
            seconds = time.perf_counter() - t0
        finally:
            K.torch = real
        # KSAMPLER.sample's end, on the list the sampler ran (uni_pc sets its last σ)
        return seconds, self.ms.inverse_noise_scaling(sigmas[-1], out)

    def comfy_counts(self) -> tuple[int, int]:
        """(denoiser calls, noise draws) of one ComfyUI loop."""
        draws = [0]
        z = self.z

        def counting(sigma, sigma_next):
            draws[0] += 1
            return z

        K = self.mods["K"]
        options = dict(self.options)
        if self.noise_via == "noise_sampler":
            options["noise_sampler"] = counting
        real = K.torch
        if self.noise_via == "randn_like":
            fake = torch_returning(z)
            fake.randn_like = lambda x, *a, **k: counting(None, None)
            K.torch = fake
        self.denoiser.calls = 0
        try:
            self.fn(
                self.denoiser,
                self.x_comfy,
                self.sigmas.clone(),
                extra_args={"seed": 0, "model_options": {}},
                callback=None,
                disable=True,
                **options,
            )
        finally:
            K.torch = real
        return self.denoiser.calls, draws[0]

    # -- ours -----------------------------------------------------------------------------

    def ours_loop(self, given: bool = True, sched=None) -> tuple[float, float, int, object]:
        """(seconds of init, seconds of the step loop, model calls, result); ``given``: the
        noise is z (stochastic configurations), else the scheduler draws its own."""
        sched = self.sched if sched is None else sched
        cond, uncond, cfg = self.cond, self.uncond, CFG
        kwargs = {"noise": self.z} if given and self.stochastic else {}
        self.seed += 1
        if self.adaptive:
            return self._adaptive_loop(sched, kwargs)
        t0 = time.perf_counter()
        state, timesteps = sched.init(NUM_STEPS, self.noise, self.seed)
        t1 = time.perf_counter()
        # the start, outside the timed loop (as ComfyUI's noise_scaling is)
        x = self.noise * sched.init_noise_scale(NUM_STEPS)
        t2 = time.perf_counter()
        if self.cfgpp:
            for t in timesteps:
                c, u = network(x, t, cond), network(x, t, uncond)
                state, x = sched.step(state, x, u + (c - u) * cfg, unconditional=u, **kwargs)
        else:
            for t in timesteps:
                state, x = sched.step(state, x, network(x, t, cond), **kwargs)
        t3 = time.perf_counter()
        return t1 - t0, t3 - t2, len(timesteps), x

    def _adaptive_loop(self, sched, kwargs):
        cond = self.cond
        t0 = time.perf_counter()
        state, _ = sched.init(1000, self.noise, self.seed, steps=NUM_STEPS)
        t1 = time.perf_counter()
        x = self.noise * sched.init_noise_scale(1000, steps=NUM_STEPS)
        t2 = time.perf_counter()
        while not sched.done(state):
            state, x = sched.step(state, x, network(x, sched.next_timestep(state), cond), **kwargs)
        t3 = time.perf_counter()
        return t1 - t0, t3 - t2, int(sched.info(state)["calls"]), x

    def ours_draws(self) -> int:
        """How many of our model calls add noise."""
        if not self.stochastic or self.adaptive:
            return 0
        from diffsched.core import engine

        coefs = np.asarray(self.sched.program(NUM_STEPS).coefs)
        return int(np.count_nonzero(coefs[:-1, engine.COEF_COLUMNS.index("out_noise")]))


def network(x, t, output):
    """The trivial network: a precomputed output, no compute."""
    return output


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def cases(only) -> list[tuple[str, str]]:
    names = [n for n in ds.comfy.SAMPLERS if not only or n in only]
    out = [(n, "eps-sd15") for n in names if n != ADAPTIVE]
    out += [(n, "flow-sd3") for n in names if n in FLOW_SAMPLERS]
    return out


def run(comfy, repeats: int, draw_repeats: int, only) -> tuple[list, list, list, dict]:
    """(rows, draw rows, adaptive rows, floors) over the shapes."""
    import torch

    torch.set_num_threads(1)
    rows, draw_rows, adaptive_rows, floors = [], [], [], {}
    for shape in SHAPES:
        gen = torch.Generator().manual_seed(0)
        tensors = tuple(torch.randn(shape, generator=gen) for _ in range(4))
        noise, cond, uncond, z = tensors
        tensors = (noise, cond * 0.5, uncond * 0.5, z)
        out = torch.empty(shape)
        floor = _median_call(partial(torch.add, noise, cond, alpha=0.5, out=out), 20 * repeats)
        randn = _median_call(partial(torch.randn, shape), 5 * repeats)
        floors["x".join(map(str, shape))] = (floor, randn)
        todo = cases(only)
        if not only or ADAPTIVE in only:
            todo.append((ADAPTIVE, "eps-sd15"))
        for name, preset in todo:
            case = Case(comfy, name, preset, shape, tensors)
            row = measure(case, repeats, floor)
            if name == ADAPTIVE:
                adaptive_rows.append(row)
            else:
                rows.append(row)
            # the draws on eps models only (a flow model's are the same draws)
            draws_here = case.stochastic or name in DRAW_TIMES_ZERO
            if draw_repeats and draws_here and name not in SAME_DRAWS and preset == "eps-sd15":
                brownian = getattr(case.sched, "COMFY_STREAM", None) == "brownian"
                n = max(draw_repeats // 3, 1) if brownian else draw_repeats
                draw_rows.append(measure_draws(case, n, row))
    return rows, draw_rows, adaptive_rows, floors


def measure(case: Case, repeats: int, floor: float) -> dict:
    """Medians of both loops' times per model call, interleaved, after one warm-up each."""
    calls_comfy, draws_comfy = case.comfy_counts()
    _, theirs = case.comfy_loop()
    _, _, calls, ours = case.ours_loop()
    t_comfy, t_init, t_ours = [], [], []
    for _ in range(repeats):
        t_comfy.append(case.comfy_loop()[0])
        init, loop, _, _ = case.ours_loop()
        t_init.append(init)
        t_ours.append(loop)
    comfy_us = statistics.median(t_comfy) / calls_comfy * 1e6
    ours_us = statistics.median(t_ours) / calls * 1e6
    init_us = statistics.median(t_init) * 1e6
    return {
        "sampler": case.name,
        "model": case.preset.split("-")[0],
        "shape": "x".join(map(str, case.shape)),
        "calls": (calls_comfy, calls),
        "draws": (draws_comfy, case.ours_draws()),
        "comfy_us": comfy_us,
        "ours_us": ours_us,
        "init_us": init_us,
        "ratio": ours_us / comfy_us,
        "ratio_init": (ours_us + init_us / calls) / comfy_us,
        "vs_floor": ours_us * 1e-6 / floor,
        "diff": _rel(ours, theirs),
        "t_comfy": t_comfy,
        "t_ours": t_ours,
    }


def measure_draws(case: Case, repeats: int, row: dict) -> dict:
    """Each side's own draws, per model call: the median over rounds of (the loop that
    draws - the loop given z), the two run back to back."""
    comfy_stream = None
    if case.stochastic and "noise_stream" in type(case.sched).__dataclass_fields__:
        comfy_stream = case.sched.replace(noise_stream="comfy")
    d_comfy, d_ours, d_stream = [], [], []
    with warnings.catch_warnings():  # torchsde's notes on float32 end points
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(repeats):
            d_comfy.append(case.comfy_loop(given=False)[0] - case.comfy_loop()[0])
            if case.stochastic:
                base = case.ours_loop()[1]
                d_ours.append(case.ours_loop(given=False)[1] - base)
            if comfy_stream is not None:
                d_stream.append(case.ours_loop(given=False, sched=comfy_stream)[1] - base)
    calls_comfy, calls = row["calls"]

    def per_call(diffs, n):
        return statistics.median(diffs) / n * 1e6 if diffs else None

    same = [k for k, v in SAME_DRAWS.items() if v == case.name]
    return {
        "sampler": " + ".join([case.name, *same]),
        "model": row["model"],
        "shape": row["shape"],
        "draws": row["draws"],
        "comfy_us": per_call(d_comfy, calls_comfy),
        "ours_us": per_call(d_ours, calls),
        "stream_us": per_call(d_stream, calls),
    }


# ----------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------


def _fmt(v, none: str = "n/a") -> str:
    return none if v is None else f"{v:.1f}"


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _table(header: list[str], lines: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|" + "---:|" * (len(header) - 3))
    for line in lines:
        print("| " + " | ".join(line) + " |")


def _where(r: dict) -> str:
    return f"{r['sampler']} ({r['model']}, {r['shape']})"


def report(rows, draw_rows, adaptive_rows, floors) -> None:
    print(
        f"## Per model call: eager PyTorch, CPU float32, 1 thread ({SCHEDULER}, {NUM_STEPS} steps)"
    )
    print()
    header = [
        "sampler",
        "model",
        "shape",
        "calls (ComfyUI/ours)",
        "ComfyUI (µs/call)",
        "ours (µs/call)",
        "ours/ComfyUI",
        "ours/floor",
        "ours init (µs)",
        "ours+init/ComfyUI",
        "result Δ",
    ]
    lines = [
        [
            r["sampler"],
            r["model"],
            r["shape"],
            f"{r['calls'][0]}/{r['calls'][1]}",
            f"{r['comfy_us']:.1f}",
            f"{r['ours_us']:.1f}",
            f"{r['ratio']:.2f}",
            f"{r['vs_floor']:.1f}",
            f"{r['init_us']:.0f}",
            f"{r['ratio_init']:.2f}",
            f"{r['diff']:.1e}",
        ]
        for r in rows + adaptive_rows
    ]
    _table(header, lines)
    print()
    for shape, (floor, randn) in floors.items():
        print(f"- {shape}: floor {floor * 1e6:.1f} µs, one torch.randn {randn * 1e6:.1f} µs")
    for r in rows + adaptive_rows:
        if r["calls"][0] != r["calls"][1]:
            print(
                f"- WARNING: {_where(r)}: ComfyUI made {r['calls'][0]} denoiser calls, "
                f"ours {r['calls'][1]} model calls"
            )
        if r["draws"][1] and not r["draws"][0]:
            print(f"- WARNING: {_where(r)}: ComfyUI never called the noise sampler given")
        if not r["diff"] < 1e-4:
            print(f"- WARNING: {_where(r)}: the two loops' samples differ by {r['diff']:.1e}")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        mine = [r for r in rows if r["shape"] == shape]
        worst = max(mine, key=lambda r: r["ratio"])
        print(
            f"- {shape}: geometric mean ours/ComfyUI {geomean(r['ratio'] for r in mine):.2f} "
            f"(init included {geomean(r['ratio_init'] for r in mine):.2f}) over {len(mine)} "
            f"cases; worst {worst['sampler']} ({worst['model']}) {worst['ratio']:.2f}"
        )
    if rows:
        worst = max(rows, key=lambda r: r["ratio"])
        slower = [_where(r) for r in rows + adaptive_rows if r["ratio"] > 1]
        print(
            f"- all: geometric mean ours/ComfyUI {geomean(r['ratio'] for r in rows):.2f} "
            f"(init included {geomean(r['ratio_init'] for r in rows):.2f}) over {len(rows)} "
            f"cases (dpm_adaptive apart); worst {_where(worst)} {worst['ratio']:.2f}; "
            f"slower than ComfyUI: {', '.join(slower) or 'none'}"
        )
    if draw_rows:
        print()
        print("## Noise draws: each side's own draws, extra µs per model call")
        print()
        header = [
            "sampler",
            "model",
            "shape",
            "draws (ComfyUI/ours)",
            "ComfyUI",
            "ours (default)",
            'ours (noise_stream="comfy")',
        ]
        lines = []
        for r in draw_rows:
            none = "none" if r["draws"][1] == 0 else "n/a"
            lines.append(
                [
                    r["sampler"],
                    r["model"],
                    r["shape"],
                    f"{r['draws'][0]}/{r['draws'][1]}",
                    _fmt(r["comfy_us"]),
                    _fmt(r["ours_us"], none),
                    _fmt(r["stream_us"], none),
                ]
            )
        _table(header, lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--only", nargs="*", default=None, help="ComfyUI sampler names to run")
    parser.add_argument("--no-draws", action="store_true", help="skip the noise-draw table")
    parser.add_argument("--oracle", type=Path, default=None, help="path of the oracle.py")
    args = parser.parse_args(argv)
    comfy = load_comfy(args.oracle)
    if comfy is None:
        where = [str(args.oracle)] if args.oracle else [str(p) for p in ORACLE_PATHS]
        print(f"skipped: ComfyUI's code (the oracle) is not at {' or '.join(where)}")
        return
    unknown = sorted(set(args.only or ()) - set(ds.comfy.SAMPLERS))
    if unknown:
        parser.error(f"unknown sampler(s) {unknown}; known: {', '.join(ds.comfy.SAMPLERS)}")
    repeats = 3 if args.quick else 15
    draw_repeats = 0 if args.no_draws else repeats  # Brownian trees: a third
    warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)  # dpm_fast
    t0 = time.perf_counter()
    report(*run(comfy, repeats, draw_repeats, args.only))
    print(f"\n(timed in {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
