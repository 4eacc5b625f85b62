"""ComfyUI as an oracle: what the recorders (tests/record_comfy_*.py) and the ComfyUI parity
tests (tests/test_comfy_*.py) share.

The oracle (../shared/oracles/comfyui/oracle.py, loaded by path where it is present) runs
ComfyUI's own KSampler on its toy model, pred(x_in, t) = tanh(x_in.reshape(B, D) @ W +
(t / 1000) b), from one fixed initial noise. A recorder writes what a test compares into a
JSON fixture under tests/fixtures/; a test replays each case through ``ds.from_comfy`` from
that fixture always, and checks the fixture against the live oracle where it is present.

Recorders: :func:`load_oracle`, :func:`toy`, :func:`run` (a case through the oracle),
:func:`replayed_expected` (what a test of a noise-replaying sampler compares), :func:`main`.
Tests: :func:`toy_model`, :func:`rel`, :func:`build`, :func:`init_options`, :func:`steps`,
:func:`replay` / :func:`run_replayed` (our loop, ComfyUI's draws replayed),
:func:`check_cases` (σ's, timesteps and final samples against the fixture),
:func:`check_live` (the fixture against the live oracle) and :data:`needs_oracle`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import diffsched as ds
from diffsched.core.engine import COEF_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
ORACLE_PATH = ROOT.parent / "shared" / "oracles" / "comfyui" / "oracle.py"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# the toy model's batch shape, its seed, and the one initial noise of every recorded case
SHAPE = (2, 8)
TOY_SEED = 0
NOISE = np.random.default_rng(16).standard_normal(SHAPE)

# oracle preset -> (ds.from_comfy model, settings)
MODELS = {
    "eps-sd15": ("eps", {}),
    "v-sd15": ("v", {}),
    "flow-sd3": ("flow", {"shift": 3.0}),
    "eps-sd15-zsnr": ("eps", {"zsnr": True}),
    "v-sd15-zsnr": ("v", {"zsnr": True}),
    "flux-dev": ("flux", {}),
    "x0-sd15": ("x0", {}),
    "lcm-sd15": ("lcm", {}),
    "flow-auraflow": ("flow", {"multiplier": 1.0, "shift": 1.73}),
}
NOISE_COLUMN = COEF_COLUMNS.index("out_noise")

# A result this machine computes through torch's float32 kernels, against the one the
# recording machine computed: randn's vector Box-Muller, torchsde's float32 Brownian bridge
# and ComfyUI's float32 tables round differently in their last bits on other CPUs.
# Observed: 5.3e-8 (torchsde's bridge, an AVX-512 machine against the recording), 2.8e-7
# with ATen's scalar kernels (ATEN_CPU_CAPABILITY=default). A wrong seed, stream, schedule
# or recording moves a result by 1e-3 or more.
ACROSS_MACHINES = 1e-5


# ----------------------------------------------------------------------------------------
# Recording: the oracle's runs
# ----------------------------------------------------------------------------------------


def load_oracle():
    """The oracle module, or None where ../shared is absent."""
    if not ORACLE_PATH.exists():
        return None
    if "comfy_oracle" in sys.modules:
        return sys.modules["comfy_oracle"]
    spec = importlib.util.spec_from_file_location("comfy_oracle", ORACLE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfy_oracle"] = module
    spec.loader.exec_module(module)
    return module


def floats(a) -> list:
    """An array as a flat list of Python floats (what the fixtures hold)."""
    return [float(x) for x in np.asarray(a, dtype=np.float64).reshape(-1)]


def toy(oracle, shape=SHAPE, which: str | None = None):
    """The oracle's toy model of a batch shape (``which="uncond"``: its unconditional form)."""
    if which is None:
        return oracle.toy_model(tuple(shape), seed=TOY_SEED)
    return oracle.toy_model(tuple(shape), seed=TOY_SEED, which=which)


def toy_record(oracle, uncond: bool = False) -> dict:
    """The toy model's W, b (and b_uncond) and the initial noise, as a fixture's "toy"."""
    params = toy(oracle).params
    out = {"shape": list(SHAPE), "W": [floats(r) for r in params["W"].numpy()],
           "b": floats(params["b"].numpy())}  # fmt: skip
    if uncond:
        out["b_uncond"] = floats(params["b_uncond"].numpy())
    out["noise"] = [floats(r) for r in NOISE]
    return out


def run(oracle, case: dict, precision: str = "float64", **extra) -> dict:
    """ComfyUI's KSampler on a case (sampler, scheduler, steps, model, denoise, explicit
    σ's, options) on the toy model from :data:`NOISE`. ``extra``: further keywords of the
    oracle's ``run`` (cfg, uncond_model_fn, noise_replay, seed, shape, sampler_options in
    ComfyUI's form), and ``noise`` / ``model_fn`` to replace the initial noise / toy model."""
    import torch

    sigmas = case["sigmas"]
    given = {"sampler_options": case["options"] or None} | extra
    noise = given.pop("noise") if "noise" in given else torch.tensor(NOISE)
    model_fn = given.pop("model_fn") if "model_fn" in given else toy(oracle)
    return oracle.run(
        case["sampler"], case["scheduler"], case["steps"], model_fn, noise,
        model=case["model"], denoise=case["denoise"], precision=precision,
        sigmas=None if sigmas is None else torch.tensor(sigmas, dtype=torch.float64), **given,
    )  # fmt: skip


def replayed_expected(oracle, case: dict, run: Callable) -> dict:
    """What a noise-replaying test compares, from the oracle's float64 run (``run(oracle,
    case, precision, noise_replay)``): the σ list, the timestep of every conditional call,
    every noise draw (with the number of denoiser calls before it), the result; and where
    ``check32`` the float32 run's result with the float64 run's draws replayed."""
    import torch

    r = run(oracle, case)
    row = dict(
        sigmas=floats(r["sigmas"]),
        timesteps=floats(r["model_timestep"][r["model_which"] == 0]),  # (cond calls)
        sample=floats(r["sample"]),
        noise_den=[int(i) for i in r["noise_den_index"]],
        noise=[floats(z) for z in r["noise_draws"]],
    )
    row["sample32"] = None
    if case["check32"]:
        draws = [torch.tensor(z, dtype=torch.float32) for z in r["noise_draws"]]
        row["sample32"] = floats(run(oracle, case, "float32", draws)["sample"])
    return row


def main(record: Callable, out: Path, summary: Callable | None = None) -> None:
    """A recorder's entry point: ``record(oracle)`` written to ``out`` (or to the path given
    as the first command-line argument: a rerun to compare with ``cmp``)."""
    oracle = load_oracle()
    if oracle is None:
        raise SystemExit(f"the oracle is not at {ORACLE_PATH}")
    data = record(oracle)
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else out
    out.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    said = summary(data) if summary is not None else f"{len(data['cases'])} cases"
    print(f"wrote {out} ({said})")


# ----------------------------------------------------------------------------------------
# Testing: our loops on the recorded cases
# ----------------------------------------------------------------------------------------

ORACLE = load_oracle()
needs_oracle = pytest.mark.skipif(ORACLE is None, reason="the ComfyUI oracle is not present")


def load_fixture(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def toy_model(w, b) -> Callable:
    """The oracle's toy model on NumPy arrays: tanh(x_in @ W + (t / 1000) b), per batch row."""

    def model(x, t):
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (x.shape[0],)).reshape(-1, 1)
        return np.tanh(x.reshape(x.shape[0], -1) @ w + t / 1000 * b).reshape(x.shape)

    return model


def rel(a, b) -> float:
    """||a - b|| / ||b|| in float64, flattened."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def recorder_cases(cases: list[dict]) -> list[dict]:
    """A fixture's cases without what was recorded (to compare with the recorder's list)."""
    return [{k: v for k, v in c.items() if k != "expected"} for c in cases]


def build(case: dict, **extra) -> ds.Scheduler:
    """``ds.from_comfy`` of a case: its sampler, scheduler ("normal" under explicit σ's),
    model preset and options."""
    model, settings = MODELS[case["model"]]
    return ds.from_comfy(case["sampler"], case["scheduler"] or "normal", model=model,
                         **settings, **case["options"], **extra)  # fmt: skip


def init_options(case: dict) -> dict:
    if case["sigmas"] is not None:
        return {"sigmas": case["sigmas"]}
    return {} if case["denoise"] == 1.0 else {"denoise": case["denoise"]}


def steps(case: dict):
    return None if case["sigmas"] is not None else case["steps"]


def replay(case: dict, program, shape) -> dict[int, np.ndarray]:
    """{call index: the draw ComfyUI made after that call}, for our calls that add noise.
    A draw after d denoiser calls follows our call d - 1; draws ComfyUI multiplies by 0 are
    not ours to make (skipped)."""
    exp = case["expected"]
    uses = program.coefs[:-1, NOISE_COLUMN] != 0
    out = {}
    for d, z in zip(exp["noise_den"], exp["noise"], strict=True):
        if uses[d - 1]:
            assert d - 1 not in out, "two draws after one call"
            out[d - 1] = np.reshape(z, shape)
    assert len(out) == int(uses.sum()), "a call of ours adds noise where ComfyUI drew none"
    return out


def run_replayed(case: dict, sched, noise, predict: Callable):
    """Our loop from ``noise``, ComfyUI's draws replayed: (σ's, timesteps, result).
    ``predict(x, t)`` gives the step's (prediction, step keywords)."""
    opts, n = init_options(case), steps(case)
    state, timesteps = sched.init(n, noise, **opts)
    draws = replay(case, sched.program(n, **opts), noise.shape)
    held = noise * sched.init_noise_scale(n, **opts)
    for i, t in enumerate(timesteps):
        prediction, kwargs = predict(held, t)
        if i in draws:
            kwargs = dict(kwargs, noise=draws.pop(i))
        state, held = sched.step(state, held, prediction, **kwargs)
    return sched.sigmas(n, **opts), np.asarray(timesteps), held


def check_cases(cases: list[dict], run: Callable, tol64: float, tol32: float) -> list:
    """Per case, ``run(case)`` = (σ's, timesteps, result) against the fixture: the same σ
    list and timesteps (1e-12: the nearest table index, equal), the result within ``tol64``
    of the float64 oracle and ``tol32`` of its float32 run. [(case, d64, d32 or None)]."""
    out = []
    for case in cases:
        exp = case["expected"]
        sig, ts, result = run(case)
        where = {k: v for k, v in case.items() if k not in ("sampler", "expected")}
        assert rel(sig, exp["sigmas"]) < 1e-12, where
        assert ts.shape == (len(exp["timesteps"]),), where
        assert rel(ts, exp["timesteps"]) < 1e-12, where
        d = rel(result, exp["sample"])
        assert d < tol64, (where, d)
        d32 = None
        if exp["sample32"] is not None:
            d32 = rel(result, exp["sample32"])
            assert d32 < tol32, (where, d32)
        out.append((case, d, d32))
    return out


def worst(checked: list) -> tuple[float, float]:
    """The largest float64 and float32 differences of :func:`check_cases`' rows (0 if none)."""
    return (max((d for _, d, _ in checked), default=0.0),
            max((d32 for _, _, d32 in checked if d32 is not None), default=0.0))  # fmt: skip


def check_sampler(
    cases: list[dict], sampler: str, run: Callable, tol64: float, tol32: float, label: str
) -> list:
    """:func:`check_cases` of one sampler's cases, its largest differences recorded for the
    summary as "<label> float64 vs oracle" and "<label> float32 oracle vs ours"."""
    import oracle as summary

    checked = check_cases([c for c in cases if c["sampler"] == sampler], run, tol64, tol32)
    worst64, worst32 = worst(checked)
    summary.record(f"{label} float64 vs oracle", sampler, worst64)
    summary.record(f"{label} float32 oracle vs ours", sampler, worst32)
    return checked


def check_live(
    cases: list[dict], run: Callable, timesteps: bool = True, tol: float = 1e-13
) -> None:
    """The fixture is the live oracle: ``run(ORACLE, case)`` gives the recorded result
    (``tol``) and, with ``timesteps``, the recorded timesteps of the conditional calls
    (1e-13). Where the fixture holds the oracle's draws (``noise``, ``churn_noise``) they are
    replayed: ComfyUI's own torch draws round by the CPU (:data:`ACROSS_MACHINES`)."""
    import torch

    for case in cases:
        exp = case["expected"]
        draws = exp.get("noise") or exp.get("churn_noise")
        extra = {}
        if draws:
            shape = tuple(case.get("shape") or SHAPE)
            extra["noise_replay"] = [torch.tensor(z, dtype=torch.float32).reshape(shape)
                                     for z in draws]  # fmt: skip
        live = run(ORACLE, case, **extra)
        d = rel(live["sample"], exp["sample"])
        assert d < tol, (case["sampler"], case["scheduler"], case["model"], d)
        if timesteps:
            cond = live["model_which"] == 0
            ts = np.asarray(live["model_timestep"][cond], np.float64)  # (σ-based: to rounding)
            assert np.allclose(ts, case["expected"]["timesteps"], rtol=1e-13, atol=0)
