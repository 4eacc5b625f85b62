"""The ``diffsched`` command: ``sample``, ``bench`` and ``list``, in process and as a console
script; its printed errors are checked against our own runs of the loop and the reference."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import diffsched as ds
from diffsched import cli
from diffsched.exact import models, reference

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ERROR_LINE = re.compile(r"^relative RMS error vs exact ODE solution: (\S+)$", re.MULTILINE)
SPECS = ["ddim", "pndm", "pndm:reduce_warmup=true"]


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of ``diffsched argv`` run in process."""
    capsys.readouterr()
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def printed_error(out: str) -> str:
    found = ERROR_LINE.findall(out)
    assert len(found) == 1, out
    return found[0]


def check_png(path: Path, min_side: int = 100) -> np.ndarray:
    """A real PNG of sensible size with something drawn in it; returns the pixels."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert min_side <= height <= 2000 and min_side <= width <= 2000, pixels.shape
    assert np.ptp(pixels[..., :3]) > 0.5  # not a blank image
    return pixels


def exact_error(sched, model_name: str, num_steps: int, num_samples: int, seed: int = 0):
    """Our own run of the config: ds.sample and the reference ODE solution, relative error."""
    kwargs = cli.model_kwargs(model_name)
    model = models.make_model(model_name, sched.alphas_cumprod, sched.prediction_type, **kwargs)
    noise = cli.make_noise(model_name, num_samples, seed)
    x = ds.sample(model, sched, noise, num_steps, seed)
    exact = reference.solve_pf_ode(model.denoiser, noise, *sched.noise_levels(num_steps))
    return float(np.linalg.norm(x - exact) / np.linalg.norm(exact))


# -- sample ---------------------------------------------------------------------------------


def test_sample_defaults(capsys, tmp_path):
    png = tmp_path / "sub" / "x.png"
    status, _, err = run_cli(capsys, "sample", "--out", png, "--no-progress")
    assert status == 2 and "does not exist; create it first" in err  # never created silently
    png.parent.mkdir()
    status, out, err = run_cli(capsys, "sample", "--out", png, "--no-progress", "--num-samples", 4)
    assert status == 0, err
    assert "DDIM, 20 steps (20 model calls), digits, 4 samples, numpy float64" in out
    assert "model calls: 20" in out.splitlines()
    assert re.search(
        r"^time: sampling \d+\.\d{3} s \(the scheduler and the model\), exact ODE reference "
        r"\d+\.\d{3} s$",
        out,
        re.MULTILINE,
    )
    assert f"wrote {png}" in out
    check_png(png)

    noise = cli.make_noise("digits", 4, 0)
    np.testing.assert_array_equal(noise, np.random.default_rng(0).standard_normal((4, 1, 8, 8)))
    expected = exact_error(ds.DDIM(), "digits", 20, 4)
    assert 0 < expected < 1
    assert printed_error(out) == f"{expected:.3e}"
    assert cli.run(ds.DDIM(), "digits", 20, noise).error == pytest.approx(expected, rel=1e-12)


def test_sample_pndm_gmm(capsys, tmp_path):
    png = tmp_path / "p.png"
    status, out, err = run_cli(
        capsys, "sample", "pndm", "--model", "gmm", "--num-samples", 8, "--steps", 10, "--out", png
    )
    assert status == 0, err
    assert "PNDM, 10 steps (19 model calls), gmm" in out
    assert "model calls: 19" in out.splitlines()  # N + 9: the Runge-Kutta warm-up
    assert printed_error(out) == f"{exact_error(ds.PNDM(), 'gmm', 10, 8):.3e}"
    assert "PNDM" in err  # the progress bar (no --no-progress)
    check_png(png)


def test_sample_gmm_turns_clipping_off(capsys, tmp_path):
    args = ("--model", "gmm", "--num-samples", 8, "--steps", 10, "--no-progress")
    status, out, _ = run_cli(capsys, "sample", "ddim", *args, "--out", tmp_path / "a.png")
    assert status == 0
    assert "clip_denoised_sample=False" in out
    noclip = exact_error(ds.DDIM(clip_denoised_sample=False), "gmm", 10, 8)
    clip = exact_error(ds.DDIM(), "gmm", 10, 8)
    assert f"{noclip:.3e}" != f"{clip:.3e}"
    assert printed_error(out) == f"{noclip:.3e}"
    # an explicit option wins
    status, out, _ = run_cli(
        capsys,
        "sample",
        "ddim",
        *args,
        "-o",
        "clip_denoised_sample=true",
        "--out",
        tmp_path / "b.png",
    )
    assert status == 0
    assert printed_error(out) == f"{clip:.3e}"


@pytest.mark.parametrize(
    ("argv", "title"),
    [
        (["lcm", "--steps", 4], "LCM, 4 steps (4 model calls)"),
        (["ddim", "-o", "eta=0.5", "--steps", 5], "DDIM, 5 steps (5 model calls)"),
    ],
)
def test_sample_stochastic_has_no_error(capsys, tmp_path, argv, title):
    png = tmp_path / "s.png"
    status, out, err = run_cli(
        capsys, "sample", *argv, "--num-samples", 4, "--no-progress", "--out", png
    )
    assert status == 0, err
    assert title in out
    assert "error vs exact solution: n/a (stochastic sampler" in out
    assert not ERROR_LINE.search(out)
    check_png(png)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_sample_backends_match_numpy(capsys, tmp_path, backend):
    common = [
        "sample",
        "pndm",
        "--model",
        "gmm",
        "--num-samples",
        8,
        "--steps",
        10,
        "--no-progress",
    ]
    _, numpy_out, _ = run_cli(capsys, *common, "--out", tmp_path / "n.png")
    extra = ["--compile"] if backend == "jax" else []
    status, out, err = run_cli(
        capsys, *common, "--backend", backend, *extra, "--out", tmp_path / "b.png"
    )
    assert status == 0, err
    assert f"8 samples, {backend} float64" in out
    assert printed_error(out) == printed_error(numpy_out)

    sched, noise = ds.PNDM(), cli.make_noise("gmm", 8, 0)
    ours = cli.run(sched, "gmm", 10, noise)
    other = cli.run(sched, "gmm", 10, noise, backend=backend, compile=backend == "jax")
    assert other.samples.dtype == np.float64
    assert other.model_calls == ours.model_calls == 19
    assert abs(other.error / ours.error - 1) < 1e-10
    np.testing.assert_allclose(other.samples, ours.samples, rtol=1e-10, atol=1e-12)


def test_sample_compile_needs_jax(capsys, tmp_path):
    status, _, err = run_cli(
        capsys,
        "sample",
        "--model",
        "gmm",
        "--compile",
        "--num-samples",
        4,
        "--out",
        tmp_path / "c.png",
    )
    assert status == 2
    assert "JAX" in err


def test_sample_from_config(capsys, tmp_path):
    config = {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.42.1",
        "num_train_timesteps": 1000,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "v_prediction",
    }
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(config))
    args = ["--model", "gmm", "--num-samples", 8, "--steps", 10, "--no-progress"]
    status, out, err = run_cli(
        capsys, "sample", "--config", path, *args, "--out", tmp_path / "c.png"
    )
    assert status == 0, err
    assert "DDIM, 10 steps (10 model calls), gmm" in out
    sched = ds.DDIM(
        beta_schedule="quadratic",
        beta_start=0.00085,
        beta_end=0.012,
        clip_denoised_sample=False,
        alpha_clip_strategy="alpha_zero",
        timesteps_offset=1,
        prediction_type="angular_velocity",
    )
    expected = exact_error(sched, "gmm", 10, 8)
    default = exact_error(ds.DDIM(clip_denoised_sample=False), "gmm", 10, 8)
    assert f"{expected:.3e}" != f"{default:.3e}"  # the config made a difference
    assert printed_error(out) == f"{expected:.3e}"

    # the folder form, and -o overriding the file
    status, out, err = run_cli(
        capsys, "sample", "--config", tmp_path, "-o", "eta=0.5", *args, "--out", tmp_path / "d.png"
    )
    assert status == 0, err
    assert "error vs exact solution: n/a" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "nosuch"], "unknown scheduler 'nosuch'"),
        (["sample", "-o", "nope=1"], "no option(s) ['nope']"),
        (["sample", "pndm", "-o", "eta=0.5"], "no option(s) ['eta']"),
        (["sample", "-o", "x"], "expected an option as key=value, got: 'x'"),
        (["sample", "-o", "=1"], "expected an option as key=value"),
        (["sample", "ddim", "--config", "{config}"], "not both"),
        (["sample", "--config", "{tmp}/missing.json"], "missing.json"),
        (["sample", "pndm", "--steps", 2], "at least 4 steps"),
        (["bench", "--schedulers", "nosuch"], "unknown scheduler 'nosuch'"),
        (["bench", "--schedulers", "ddim:nope=1"], "no option(s) ['nope']"),
    ],
)
def test_usage_errors(capsys, tmp_path, argv, message):
    config = tmp_path / "scheduler_config.json"
    config.write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    argv = [str(a).format(config=config, tmp=tmp_path) for a in argv]
    status, _, err = run_cli(capsys, *argv, "--out", tmp_path / "e.png")
    assert status == 2
    assert message in err
    assert err.startswith(f"diffsched {argv[0]}: error: ")
    assert "Traceback" not in err
    assert not (tmp_path / "e.png").exists()


def test_unknown_scheduler_with_gmm_is_a_usage_error(capsys, tmp_path):
    status, _, err = run_cli(
        capsys, "sample", "nosuch", "--model", "gmm", "--out", tmp_path / "e.png"
    )
    assert status == 2
    assert "unknown scheduler 'nosuch'" in err


def test_scheduler_name_case_insensitive_with_gmm(capsys, tmp_path):
    args = ("--model", "gmm", "--num-samples", 4, "--steps", 5, "--no-progress")
    status, out, _ = run_cli(capsys, "sample", "DDIM", *args, "--out", tmp_path / "u.png")
    assert status == 0
    assert "DDIM, 5 steps" in out


def test_sample_name_case_insensitive_with_digits(capsys, tmp_path):
    args = ("--num-samples", 4, "--steps", 4, "--no-progress", "-o", "eta=1.0")
    status, out, _ = run_cli(capsys, "sample", "DDIM", *args, "--out", tmp_path / "u.png")
    assert status == 0
    assert "DDIM, 4 steps" in out


# -- ComfyUI's samplers by name ---------------------------------------------------------------

COMFY_ARGS = ("--model", "gmm", "--num-samples", 16, "--no-progress")


def sample_runs(monkeypatch) -> list:
    """The (scheduler, Run) of each cli.run the command makes."""
    runs = []
    real = cli.run

    def spy(scheduler, *args, **kwargs):
        runs.append((scheduler, real(scheduler, *args, **kwargs)))
        return runs[-1][1]

    monkeypatch.setattr(cli, "run", spy)
    return runs


def test_sample_comfy_sampler_is_the_direct_run(capsys, tmp_path, monkeypatch):
    """`sample comfy-dpmpp_2m -o scheduler=karras` runs ds.from_comfy("dpmpp_2m", "karras")
    on ComfyUI's exact network: the error it prints is the one of that scheduler run
    directly from the same noise (ds.sample, and the ODE reference from the first model
    input), to 1e-12 in float64; the model calls are the scheduler's."""
    runs = sample_runs(monkeypatch)
    png = tmp_path / "c.png"
    status, out, err = run_cli(capsys, "sample", "comfy-dpmpp_2m", "-o", "scheduler=karras",
                               "--steps", 8, *COMFY_ARGS, "--out", png)  # fmt: skip
    assert status == 0, err
    sched = ds.from_comfy("dpmpp_2m", "karras")
    ((used, result),) = runs
    assert used == sched
    noise = cli.make_noise("gmm", 16, 0)
    model = cli.comfy_exact_model(sched, "gmm")
    x = ds.sample(model, sched, noise, 8, 0)
    exact = reference.solve_pf_ode(model.denoiser, noise * sched.init_noise_scale(8),
                                   *sched.noise_levels(8))  # fmt: skip
    direct = float(np.linalg.norm(x - exact) / np.linalg.norm(exact))
    assert 0 < direct < 1  # observed 0.078
    assert result.error == pytest.approx(direct, rel=1e-12)
    again = cli.run(sched, "gmm", 8, noise)
    assert again.error == pytest.approx(direct, rel=1e-12)
    assert printed_error(out) == f"{direct:.3e}"
    calls = sched.program(8).num_calls
    assert f"model calls: {calls}" in out.splitlines() and result.model_calls == calls
    assert ("ComfyDPMPP2M (comfy-dpmpp_2m, scheduler=karras, model=eps), 8 steps (8 model "
            "calls), gmm, 16 samples, numpy float64") in out  # fmt: skip
    normal = cli.run(ds.from_comfy("dpmpp_2m"), "gmm", 8, noise).error
    assert f"{normal:.3e}" != printed_error(out)  # the schedule was taken
    check_png(png)


@pytest.mark.parametrize(
    ("argv", "sched", "calls"),
    [
        (["comfy-euler"], ds.from_comfy("euler"), 6),
        (["comfy-heun", "-o", "scheduler=simple"], ds.from_comfy("heun", "simple"), 11),
        (["comfy-euler", "-o", "model=flow", "-o", "shift=3.0"],
         ds.from_comfy("euler", model="flow", shift=3.0), 6),
        (["comfy-uni_pc", "-o", "model=v"], ds.from_comfy("uni_pc", model="v"), 6),
    ],
)  # fmt: skip
def test_sample_comfy_flag_and_options(capsys, tmp_path, monkeypatch, argv, sched, calls):
    """`--scheduler comfy-NAME` is the positional form; -o scheduler=, model= and the
    model sampling's settings reach from_comfy; the deterministic samplers print their
    error against the exact ODE solution."""
    runs = sample_runs(monkeypatch)
    common = ["--steps", 6, *COMFY_ARGS]
    status, out, err = run_cli(capsys, "sample", *argv, *common, "--out", tmp_path / "a.png")
    assert status == 0, err
    status, flagged, err = run_cli(capsys, "sample", "--scheduler", argv[0], *argv[1:], *common,
                                   "--out", tmp_path / "b.png")  # fmt: skip
    assert status == 0, err
    assert [r[0] for r in runs] == [sched, sched]
    assert np.array_equal(runs[0][1].samples, runs[1][1].samples)
    direct = cli.run(sched, "gmm", 6, cli.make_noise("gmm", 16, 0))
    assert runs[0][1].error == pytest.approx(direct.error, rel=1e-12)
    assert 0 < direct.error < 1
    assert printed_error(out) == printed_error(flagged) == f"{direct.error:.3e}"
    assert f"model calls: {calls}" in out.splitlines() and direct.model_calls == calls


@pytest.mark.parametrize(
    ("argv", "sched"),
    [
        (["comfy-euler_ancestral"], ds.from_comfy("euler_ancestral")),
        (["comfy-dpmpp_2m_sde", "-o", "scheduler=karras", "-o", "eta=0.5"],
         ds.from_comfy("dpmpp_2m_sde", "karras", eta=0.5)),
    ],
)  # fmt: skip
def test_sample_comfy_stochastic_sampler(capsys, tmp_path, monkeypatch, argv, sched):
    """A stochastic ComfyUI sampler runs, its draws keyed by --seed as the direct run's,
    and has no error against the ODE solution (as euler-a)."""
    runs = sample_runs(monkeypatch)
    status, out, err = run_cli(capsys, "sample", *argv, "--steps", 5, "--seed", 3, *COMFY_ARGS,
                               "--out", tmp_path / "s.png")  # fmt: skip
    assert status == 0, err
    assert "error vs exact solution: n/a (stochastic sampler" in out
    assert not ERROR_LINE.search(out)
    ((used, result),) = runs
    assert used == sched and not sched.deterministic
    direct = cli.run(sched, "gmm", 5, cli.make_noise("gmm", 16, 3), seed=3)
    np.testing.assert_array_equal(result.samples, direct.samples)
    check_png(tmp_path / "s.png")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "comfy-nosuch"], "--scheduler comfy-nosuch: unknown ComfyUI sampler 'nosuch'; "
                                     "known: comfy-dpmpp_2m, "),
        (["sample", "--scheduler", "comfy-nosuch"], "unknown ComfyUI sampler 'nosuch'"),
        (["sample", "comfy-euler", "-o", "scheduler=nosuch"],
         "-o scheduler=nosuch: unknown ComfyUI scheduler 'nosuch'; known: simple, "),
        (["sample", "comfy-euler", "-o", "eta=0.5"], "-o: ComfyEuler has no option(s) ['eta']"),
        (["sample", "comfy-euler", "-o", "model=nosuch"], "-o: ComfyEuler option model must be"),
        (["sample", "comfy-euler", "-o", "model=flux"], "'flux' model sampling"),
        (["sample", "comfy-euler", "--grid", "edm"],
         "--grid is for diffsched's own schedulers; comfy-euler runs the σ list of a ComfyUI "
         "schedule: -o scheduler=NAME"),
        (["sample", "comfy-euler", "--strength", "0.5"],
         "--strength is diffusers' image-to-image; comfy-euler (ComfyUI's KSampler) takes a "
         "partial denoise instead"),
        (["sample", "comfy-euler", "--config", "{config}"], "not both"),
        (["sample", "comfy-dpm_adaptive"],
         "--scheduler comfy-dpm_adaptive: ComfyDPMAdaptive is adaptive: its model calls are "
         "decided while it runs"),
        (["tune", "comfy-dpm_adaptive"], "'diffsched bench --adaptive' measures it"),
        (["tune", "comfy-euler"], f"comfy-euler: {cli.COMFY_TUNE_REFUSAL}; tunable: "),
        (["tune", "--scheduler", "comfy-dpmpp_2m", "-o", "scheduler=karras"],
         f"comfy-dpmpp_2m: {cli.COMFY_TUNE_REFUSAL}"),
        (["bench", "--schedulers", "comfy-dpm_adaptive"],
         "--schedulers comfy-dpm_adaptive: ComfyDPMAdaptive is adaptive"),
        (["bench", "--stochastic", "--schedulers", "comfy-dpm_adaptive"], "is adaptive"),
        (["bench", "--schedulers", "comfy-euler:scheduler=nosuch"],
         "--schedulers comfy-euler:scheduler=nosuch: unknown ComfyUI scheduler 'nosuch'"),
        (["bench", "--schedulers", "comfy-euler:eta=1"], "--schedulers comfy-euler:eta=1: "),
    ],
)  # fmt: skip
def test_comfy_usage_errors(capsys, tmp_path, argv, message):
    """A bad ComfyUI name, schedule or option, a flag sample cannot take with a ComfyUI
    sampler, the adaptive dpm_adaptive (no fixed steps) and tuning a ComfyUI sampler are
    usage errors naming the flag given, without a traceback."""
    config = tmp_path / "scheduler_config.json"
    config.write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    argv = [a.format(config=config) for a in argv]
    extra = ["--out", tmp_path / "e.png"] if argv[0] != "tune" else []
    status, out, err = run_cli(capsys, *argv, "--model", "gmm", *extra)
    assert status == 2, (out, err)
    assert err.startswith(f"diffsched {argv[0]}: error: ") and message in err, err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "e.png").exists()


def test_comfy_errors_list_the_known_names(capsys, tmp_path):
    """The unknown sampler's error lists every ComfyUI sampler as the command line names
    it; the unknown schedule's every ComfyUI schedule."""
    status, _, err = run_cli(capsys, "sample", "comfy-nosuch", "--out", tmp_path / "e.png")
    assert status == 2
    known = err.split("known: ", 1)[1].strip().split(", ")
    assert known == [f"comfy-{name}" for name in ds.comfy.SAMPLERS]
    status, _, err = run_cli(capsys, "sample", "comfy-euler", "-o", "scheduler=nosuch",
                             "--out", tmp_path / "e.png")  # fmt: skip
    assert status == 2
    assert err.split("known: ", 1)[1].strip().split(", ") == list(ds.comfy.SCHEDULERS)


def test_comfy_names_build_in_one_place():
    """sample's name and -o options and bench's spec build the same scheduler (the case of
    the name aside); the defaults are from_comfy's; ComfyUI's samplers are not tunable."""
    built = cli.build_scheduler("COMFY-dpmpp_2m_sde", {"scheduler": "karras", "eta": 0.5})
    assert built == cli.parse_spec("comfy-dpmpp_2m_sde:scheduler=karras,eta=0.5")[1]
    assert built == ds.from_comfy("dpmpp_2m_sde", "karras", eta=0.5)
    assert cli.build_scheduler("comfy-euler", {}) == ds.from_comfy("euler", "normal", model="eps")
    assert cli.comfy_defaults() == {"scheduler": "normal", "model": "eps"}
    with pytest.raises(cli.UsageError, match=r"^--schedulers comfy-x:eta=1: unknown ComfyUI "):
        cli.parse_spec("comfy-x:eta=1")
    assert cli.tune_refusal(ds.from_comfy("euler")) == cli.COMFY_TUNE_REFUSAL
    assert cli.tune_refusal(ds.from_comfy("dpm_adaptive")) == cli.COMFY_TUNE_REFUSAL


def test_list_comfy_samplers(capsys):
    """`list` ends with ComfyUI's samplers, comfy-NAME: the class from_comfy builds, one
    line each, after a line with the schedules and model samplings; `sample --help` says
    how to name them."""
    status, out, _ = run_cli(capsys, "list")
    assert status == 0
    lines = out.splitlines()
    start = lines.index(next(x for x in lines if x.startswith("comfy-SAMPLER: ")))
    assert not any(x.startswith("comfy-") for x in lines[:start])
    schedules = lines[start + 1]
    assert f"one of {', '.join(ds.comfy.SCHEDULERS)};" in schedules
    assert (
        "scheduler = 'normal'" in schedules
        and "model = 'eps'; one of eps, v, x0, flow" in schedules
    )
    listed = lines[start + 2 :]
    assert len(listed) == len(ds.comfy.SAMPLERS)
    for line, name in zip(listed, ds.comfy.SAMPLERS, strict=True):
        sched = ds.from_comfy(name)
        assert line.startswith(f"comfy-{name}: {type(sched).__name__}"), line
        assert ("(stochastic)" in line) == (not sched.deterministic)
        assert ("bench --adaptive" in line) == getattr(sched, "ADAPTIVE", False)
    assert "comfy-dpm_adaptive: ComfyDPMAdaptive (adaptive: diffsched bench --adaptive)" in lines
    assert "comfy-euler: ComfyEuler" in lines and "comfy-ddim: ComfyEuler" in lines
    with pytest.raises(SystemExit):
        cli.main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("comfy- ", "comfy-")  # wrapped
    assert "or comfy-SAMPLER: ComfyUI's KSampler sampler by name (see the list command)" in text


# -- bench ----------------------------------------------------------------------------------


def parse_table(out: str) -> list[list[str]]:
    """The cells of the markdown table's body rows."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| model | scheduler | steps | model calls | rel. RMS error |")
    assert set(lines[1]) <= set("|-:")
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_bench_table_and_plot(capsys, tmp_path):
    png = tmp_path / "b.png"
    status, out, err = run_cli(
        capsys, "bench", "--schedulers", *SPECS, "--steps", 4, 8,
        "--model", "digits", "gmm", "--num-samples", 4, "--out", png,
    )  # fmt: skip
    assert status == 0, err
    table = parse_table(out)
    rows = cli.bench_rows(SPECS, [4, 8], ["digits", "gmm"], 4, 0)
    assert len(table) == len(rows) == 2 * 3 * 2
    keys = [(m, s, n) for m in ("digits", "gmm") for s in SPECS for n in (4, 8)]
    assert [(r["model"], r["scheduler"], r["steps"]) for r in rows] == keys
    calls = {"ddim": (4, 8), "pndm": (13, 17), "pndm:reduce_warmup=true": (5, 9)}
    for cells, row in zip(table, rows, strict=True):
        model, spec, steps, ncalls, error = cells
        assert (model, spec, int(steps)) == (row["model"], row["scheduler"], row["steps"])
        assert int(ncalls) == row["calls"] == calls[spec][(4, 8).index(int(steps))]
        assert row["error"] is not None and row["error"] > 0
        assert error == f"{row['error']:.3e}"
    # one row checked against our own run (gmm: bench turns DDIM's clipping off)
    gmm_ddim_8 = exact_error(ds.DDIM(clip_denoised_sample=False), "gmm", 8, 4)
    assert rows[keys.index(("gmm", "ddim", 8))]["error"] == pytest.approx(gmm_ddim_8, rel=1e-12)
    pixels = check_png(png)
    assert pixels.shape[1] > pixels.shape[0]  # two panels side by side


def test_bench_against_diffusers(capsys, tmp_path):
    specs = [*SPECS, "lcm"]
    status, out, err = run_cli(
        capsys, "bench", "--schedulers", *specs, "--steps", 4, 8, "--model", "gmm",
        "--num-samples", 4, "--against", "diffusers", "--out", tmp_path / "d.png",
    )  # fmt: skip
    assert status == 0, err
    assert "| diffusers | ours/diffusers - 1 |" in out
    table = parse_table(out)
    assert len(table) == 4 * 2
    for cells in table:
        _, spec, _, _, ours, peer, ratio = cells
        if spec == "lcm":
            assert ours == peer == ratio == "n/a"
            continue
        assert abs(float(ratio)) <= 1e-6
        assert float(peer) == pytest.approx(float(ours), rel=2e-3)
    assert "n/a: lcm: stochastic sampler" in out
    check_png(tmp_path / "d.png")


def test_bench_rows_against_diffusers():
    rows = cli.bench_rows(
        ["ddim", "pndm", "pndm:reduce_warmup=true", "ddim:timesteps_offset=1"],
        [5],
        ["gmm", "digits"],
        4,
        0,
        against="diffusers",
    )
    assert len(rows) == 8
    for row in rows:
        assert row["error"] > 0 and row["diffusers_error"] > 0
        assert abs(row["error"] / row["diffusers_error"] - 1) <= 1e-6, row


# -- list, parsing --------------------------------------------------------------------------


def test_list(capsys):
    status, out, _ = run_cli(capsys, "list")
    assert status == 0
    sections = re.split(r"^(?=[\w+-]+: )", out, flags=re.MULTILINE)
    sections = {s.split(":", 1)[0]: s for s in sections if s.strip()}
    sections = {name: s for name, s in sections.items() if not name.startswith("comfy-")}
    assert list(sections) == list(cli.SCHEDULERS)  # then ComfyUI's: test_list_comfy_samplers
    assert next(iter(sections)) == "ddim" and {"pndm", "lcm", "euler"} <= set(sections)
    assert sections["ddim"].startswith("ddim: DDIM — Denoising diffusion implicit models")
    assert "(diffusers: DDIMScheduler)" in sections["ddim"]
    for name, cls in cli.SCHEDULERS.items():
        for field in dataclasses.fields(cls):
            if field.init:
                assert f"\n    {field.name} = {field.default!r}" in sections[name], field.name
    assert "    eta = 0.0  [passed to diffusers' step]" in sections["ddim"]
    assert "    clip_denoised_sample = True  [clip_sample]" in sections["ddim"]
    assert "    reduce_warmup = False  [skip_prk_steps]" in sections["pndm"]
    assert "    alpha_clip_strategy = 'alpha_zero'  [set_alpha_to_one]" in sections["pndm"]
    assert "one of ('one', 'alpha_zero')" in sections["pndm"]
    assert "    num_original_steps = 50  [original_inference_steps]" in sections["lcm"]
    assert "    clip_denoised_sample = False" in sections["lcm"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("True", True),
        ("false", False),
        ("0.5", 0.5),
        ("3", 3),
        ("[1, 2]", [1, 2]),
        ("trailing", "trailing"),
        ("angular_velocity", "angular_velocity"),
    ],
)
def test_parse_value(text, value):
    got = cli.parse_value(text)
    assert got == value and type(got) is type(value)


def test_parse_options_and_spec():
    assert cli.parse_options(["timestep_spacing= trailing"]) == {"timestep_spacing": "trailing"}
    assert cli.parse_options([" eta = 0.5", "timestep_spacing=trailing", "a=b=c"]) == {
        "eta": 0.5,
        "timestep_spacing": "trailing",
        "a": "b=c",
    }
    label, sched, options = cli.parse_spec("pndm:reduce_warmup=true,timesteps_offset=1")
    assert label == "pndm:reduce_warmup=true,timesteps_offset=1"
    assert sched == ds.PNDM(reduce_warmup=True, timesteps_offset=1)
    assert options == {"reduce_warmup": True, "timesteps_offset": 1}
    label, sched, options = cli.parse_spec("ddim")
    assert (label, sched, options) == ("ddim", ds.DDIM(), {})
    betas = [0.001] * 1000
    spec = f"ddim:trained_betas={betas},eta=0.5"  # commas inside a list belong to it
    assert cli.parse_spec(spec)[1] == ds.DDIM(trained_betas=tuple(betas), eta=0.5)
    assert cli.parse_spec("lcm:num_original_steps=25")[1] == ds.LCM(num_original_steps=25)
    with pytest.raises(cli.UsageError, match="unknown scheduler"):
        cli.parse_spec("nosuch:eta=1")


def test_build_scheduler():
    assert cli.build_scheduler(None, {}) == ds.DDIM()
    assert cli.build_scheduler("PNDM", {"reduce_warmup": True}) == ds.PNDM(reduce_warmup=True)
    with pytest.raises(cli.UsageError, match=r"LCM has no option\(s\) \['eta'\]"):
        cli.build_scheduler("lcm", {"eta": 0.5})


# -- the console script ---------------------------------------------------------------------


def test_console_script(tmp_path):
    script = Path(sys.executable).with_name("diffsched")
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    png = tmp_path / "p.png"
    done = subprocess.run(
        [script, "sample", "pndm", "--model", "gmm", "--num-samples", "8", "--steps", "10",
         "--no-progress", "--out", png],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "model calls: 19" in done.stdout.splitlines()
    assert printed_error(done.stdout) == f"{exact_error(ds.PNDM(), 'gmm', 10, 8):.3e}"
    check_png(png)

    failed = subprocess.run(
        [sys.executable, "-m", "diffsched.cli", "sample", "-o", "x"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert failed.returncode == 2
    assert "expected an option as key=value" in failed.stderr


def test_gmm_turns_clipping_off_only_when_not_asked_for():
    sched, note = cli.adapt_to_model(ds.DDIM(), "gmm", {})
    assert sched == ds.DDIM(clip_denoised_sample=False) and "clip_denoised_sample=False" in note
    explicit = ds.DDIM(clip_denoised_sample=True)
    assert cli.adapt_to_model(explicit, "gmm", {"clip_denoised_sample": True}) == (explicit, "")
    assert cli.adapt_to_model(ds.LCM(), "gmm", {}) == (ds.LCM(), "")  # LCM does not clip
    assert cli.adapt_to_model(ds.DDIM(), "digits", {}) == (ds.DDIM(), "")
    assert cli.adapt_to_model(ds.PNDM(), "gmm", {}) == (ds.PNDM(), "")  # no such option


def test_best_candidates_fit_their_budget_and_format():
    """`bench --best` candidates: each spec parses, and the steps chosen for a budget spend
    at most that many model calls (Heun-type methods take 2N - 1)."""
    for spec in cli.BEST_CANDIDATES:
        name = spec.split(":", 1)[0]
        if name not in cli.SCHEDULERS:
            continue
        _, sched, _ = cli.parse_spec(spec)
        for budget in cli.BEST_BUDGETS:
            steps = max(n for n in range(1, budget + 1) if cli._calls(sched, n) <= budget)
            assert cli._calls(sched, steps) <= budget
    for spec, grid in cli.OURS_CANDIDATES:
        _, sched, _ = cli.parse_spec(spec)
        assert sched.deterministic and type(sched).CALLS_PER_STEP == 1
        if grid is not None:
            assert ds.named_grid(grid, sched, 10)
    best = {"spec": f"unipc:{cli.BEST_SD},solver_order=3", "steps": 10, "calls": 10}
    peer = {**best, "spec": f"dpm++2m:{cli.BEST_SD}", "error": 0.08, "same": 0.8}
    rows = [{"model": "digits", "budget": 10, "tuned": {**best, "error": 0.02, "same": 0.95},
             "untuned": {**best, "error": 0.05, "same": 0.9}, "diffusers": peer}]  # fmt: skip
    table = cli.format_best(rows)
    assert (
        "| digits | 10 | unipc: solver_order=3 (10 steps) | 2.00e-02 (95%) | unipc: "
        "solver_order=3 (10 steps) | 5.00e-02 (90%) | dpm++2m (10 steps) | 8.00e-02 (80%) | 0.25 |"
    ) in table


def test_tune_saves_a_grid_that_sample_reads_back(capsys, tmp_path):
    """`diffsched tune` prints the grid and the errors before and after on held-out noise,
    saves the grid as JSON; `sample --grid` and `init(**load_grid(...))` read it back."""
    path = tmp_path / "grids" / "g.json"
    argv = ("tune", "--model", "gmm", "--scheduler", "dpm++2m", "--steps", 4, "--calibration",
            16, "--held-out", 16, "--max-evaluations", 20, "--save", path)  # fmt: skip
    status, _, err = run_cli(capsys, *argv)
    assert status == 2 and "--save: the folder" in err and "does not exist" in err
    assert not path.parent.exists()  # never created, as sample and bench --out
    path.parent.mkdir()
    status, out, err = run_cli(capsys, *argv)
    assert status == 0, err
    grid = ds.load_grid(path)
    assert list(grid) == ["timesteps"] and len(grid["timesteps"]) == 4
    assert f"tuned grid: timesteps={grid['timesteps']}" in out
    row = re.search(r"\| calibration noise \| ([\d.e+-]+) \| ([\d.e+-]+) \|", out)
    assert row and float(row[2]) <= float(row[1])
    assert re.search(r"\| held-out noise \| [\d.e+-]+ \| [\d.e+-]+ \|", out)
    _, timesteps = ds.DPMSolverMultistep().init(None, np.zeros((2, 2)), **grid)
    assert np.asarray(timesteps).tolist() == grid["timesteps"]
    held_out = re.search(r"\| held-out noise \| [\d.e+-]+ \| ([\d.e+-]+) \|", out)[1]
    status, out, err = run_cli(capsys, "sample", "dpm++2m", "--model", "gmm", "--grid", path,
                               "--num-samples", 16, "--out", tmp_path / "s.png")  # fmt: skip
    assert status == 0, err
    assert "model calls: 4" in out
    # measured on tune's held-out noise (seed + 1000), not on its calibration noise
    assert f"noise: seed {cli.HELD_OUT_SEED}" in out
    assert printed_error(out) == held_out
    status, out, err = run_cli(capsys, "sample", "ipndm-v", "--model", "gmm", "--grid", "edm",
                               "--steps", 7, "--num-samples", 8,
                               "--out", tmp_path / "e.png")  # fmt: skip
    assert status == 0 and "model calls: 7" in out, err
    status, _, err = run_cli(capsys, "sample", "--grid", "nosuch")
    assert status == 2 and "--grid must be one of edm, logsnr" in err
    status, _, err = run_cli(capsys, "tune", "--save", "x.txt")
    assert status == 2 and "--save must name a .json file" in err


def test_an_unwritable_output_is_refused_before_any_work(capsys, tmp_path, monkeypatch):
    # tuning runs for minutes before it writes: a folder named as the file, or one that
    # cannot be written in, is a usage error at once (the tuner's model never called)
    (tmp_path / "d.json").mkdir()
    status, _, err = run_cli(capsys, "tune", "--model", "gmm", "--save", tmp_path / "d.json")
    assert status == 2 and "is a folder, not a .json file" in err

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", refused)
    monkeypatch.setattr(cli, "exact_model", lambda *a: pytest.fail("the model was built"))
    for argv in (("tune", "--model", "gmm", "--save", tmp_path / "t.json"),
                 ("sample", "--out", tmp_path / "s.png")):  # fmt: skip
        status, _, err = run_cli(capsys, *argv)
        assert status == 2 and "cannot write in" in err and "Permission denied" in err, argv
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "--num-samples", "0"], "--num-samples must be at least 1, got: 0"),
        (["sample", "--out", "noext"], "--out must name a .png file, got: 'noext'"),
        (["sample", "--compile"], "--compile needs --backend jax"),
        (["bench", "--out", "x.txt"], "--out must name a .png file"),
        (["bench", "--adaptive", "-1"], "--adaptive takes positive tolerances (rtol), got -1"),
        (["bench", "--adaptive", "1e-3", "nan"], "--adaptive takes positive tolerances"),
    ],
)
def test_cli_errors_name_the_flag(capsys, argv, message):
    status, _, err = run_cli(capsys, *argv)
    assert status == 2 and message in err


def test_compile_with_defaults_and_img2img(capsys, tmp_path):
    """--compile works with the default progress setting; --strength runs image-to-image
    from data noised to the first call, and its error is measured from there."""
    status, out, err = run_cli(capsys, "sample", "--backend", "jax", "--compile",
                               "--num-samples", 4, "--out", tmp_path / "j.png")  # fmt: skip
    assert status == 0, err
    status, out, err = run_cli(capsys, "sample", "euler", "--strength", "0.5", "--steps", 10,
                               "--num-samples", 4, "--no-progress", "--out",
                               tmp_path / "e.png")  # fmt: skip
    assert status == 0, err
    assert "model calls: 5" in out.splitlines()
    assert "relative RMS error vs exact ODE solution" in out


@pytest.mark.parametrize("tune", ["both", "grid"])
def test_best_rows_measure_ours_and_diffusers_on_held_out_noise(tune):
    """`bench --best` on a tiny budget: diffusers' best configuration is one of ours run
    through diffusers, so our untuned run of the same spec has the same error; the tuned
    row (a tuned table, or tuned grids) carries the tuner's cost."""
    pytest.importorskip("diffusers")
    (row,) = cli.best_rows(["gmm"], 8, 0, budgets=(4,), calibration=8, tune=tune)
    assert row["model"] == "gmm" and row["budget"] == 4
    peer, tuned = row["diffusers"], row["tuned"]
    _, ours, options = cli.parse_spec(peer["spec"])
    ours, _ = cli.adapt_to_model(ours, "gmm", options)
    again = cli.run(ours, "gmm", peer["steps"], cli.make_noise("gmm", 8, cli.HELD_OUT_SEED))
    assert again.error == pytest.approx(peer["error"], rel=1e-6)
    assert row["untuned"]["error"] <= peer["error"] * (1 + 1e-6)
    assert tuned["calls"] == 4 and tuned["tuner_calls"] > 0 and np.isfinite(tuned["error"])
    assert tuned["spec"].startswith("tuned ") == (tune == "both")


def test_bench_tune_flag_is_for_best(capsys, tmp_path):
    """`--tune` picks what `bench --best` tunes; elsewhere it is refused, as is a
    calibration batch too small to hold a quarter out."""
    status, _, err = run_cli(capsys, "bench", "--tune", "grid", "--out", tmp_path / "b.png")
    assert status == 2 and "--tune is for --best" in err
    status, _, err = run_cli(capsys, "bench", "--best", "--calibration", 2,
                             "--out", tmp_path / "b.png")  # fmt: skip
    assert status == 2 and "needs --calibration 4 or more" in err
    with pytest.raises(ValueError, match="tune must be 'grid' or 'both'"):
        cli.best_rows(["gmm"], 4, 0, budgets=(4,), calibration=8, tune="coefficients")


# -- every listed scheduler in every command --------------------------------------------------

MATRIX_STEPS = {"pndm": 4}  # the fewest steps each method takes (PNDM's warm-up needs 4)


def command_argv(command: str, name: str, tmp_path: Path) -> list:
    steps = MATRIX_STEPS.get(name, 3)
    if command == "sample":
        return ["sample", "--scheduler", name, "--model", "gmm", "--num-samples", 4, "--steps",
                steps, "--no-progress", "--out", tmp_path / "s.png"]  # fmt: skip
    if command == "bench":
        return ["bench", "--schedulers", name, "--model", "gmm", "--num-samples", 4, "--steps",
                steps, "--out", tmp_path / "b.png"]  # fmt: skip
    return ["tune", name, "--model", "gmm", "--steps", steps, "--calibration", 4,
            "--held-out", 4, "--max-evaluations", 3]  # fmt: skip


@pytest.mark.parametrize("command", ["sample", "bench", "tune"])
@pytest.mark.parametrize("name", list(cli.SCHEDULERS))
def test_every_listed_scheduler_works_or_says_why(capsys, tmp_path, name, command):
    """Each scheduler the CLI lists runs in each command (an error against the exact
    solution, n/a with its reason for stochastic samplers, the round trip of an inverse
    scheduler), or the command refuses it as a usage error with the reason `list` shows."""
    _, listing, _ = run_cli(capsys, "list")
    section = re.search(rf"^{re.escape(name)}: .*?(?=^[\w+-]+: |\Z)", listing, re.M | re.S)[0]
    why = cli.commands_of(name)[command]
    status, out, err = run_cli(capsys, *command_argv(command, name, tmp_path))
    if why is not None:
        assert f"\n    not in {command}: {why}" in section
        assert status == 2 and why in err, err
        assert "Traceback" not in err
        return
    assert command in re.search(r"\n    commands: (.*)", section)[1].split(", ")
    assert status == 0, err
    sched = cli.SCHEDULERS[name]()
    if command == "tune":
        assert re.search(r"\| held-out noise \| [\d.e+-]+ \| [\d.e+-]+ \|", out)
    elif cli.is_inverse(sched):
        rec = float(re.search(r"relative RMS reconstruction error: (\S+)", out)[1])
        assert 0 < rec < 1
        check_png(tmp_path / "s.png")
    elif not sched.deterministic:
        assert "n/a" in out and "stochastic sampler" in out
    elif command == "sample":
        error = float(printed_error(out))
        assert 0 < error < 10  # DPM2 at 3 steps: 2.06
        check_png(tmp_path / "s.png")
    else:
        (row,) = parse_table(out)
        assert 0 < float(row[4]) < 10
        check_png(tmp_path / "b.png")


def test_matrix_is_what_the_issue_needs():
    """The schedulers that failed everywhere now run in sample and bench; tune takes the
    deterministic discrete-time methods with a custom grid."""
    for name in ("ipndm", "edm-euler", "edm-dpm++2m", "ddim-inverse", "dpm++2m-inverse"):
        assert cli.commands_of(name)["sample"] is None
    for name in ("ipndm", "edm-euler", "edm-dpm++2m"):
        assert cli.commands_of(name)["bench"] is None
    tunable = [n for n in cli.SCHEDULERS if cli.commands_of(n)["tune"] is None]
    assert {"dpm++2m", "unipc", "euler", "heun", "ipndm-v", "dpm++2s"} <= set(tunable)


@pytest.mark.parametrize(
    ("sched", "model_name", "steps", "bound"),
    [
        (ds.IPNDM(), "digits", 100, 1e-9),  # observed 5.1e-14
        (ds.EDMDPMSolverMultistep(), "digits", 400, 1e-7),  # observed 2.2e-10
    ],
)
def test_exact_models_of_continuous_time_schedulers_converge(sched, model_name, steps, bound):
    """iPNDM's v model at t in (0, 1] (called at t = 1, pure noise) and EDM's network F at
    c_noise = ln(σ)/4 are exact: enough steps reach the exact ODE solution."""
    noise = cli.make_noise(model_name, 8, 0)
    few = cli.run(sched, model_name, 5, noise).error
    many = cli.run(sched, model_name, steps, noise).error
    assert few > 1e-2 and many < bound


@pytest.mark.parametrize(
    ("sched", "order"),
    [
        (ds.EDMEuler(), 1),  # error ratio at 4x the steps: 4.2 observed
        (ds.EDMEuler(prediction_type="angular_velocity", final_sigmas_type="sigma_min"), 1),
        (ds.EDMDPMSolverMultistep(), 2),  # 16.3 observed
        (ds.IPNDM(), 1),  # 4.1 observed: its first step drops x̂_0 at ᾱ = 0 (the clamp)
    ],
)
def test_exact_models_give_the_order_of_the_method(sched, order):
    """gmm (a smooth density): the error falls as the method's order at 4x the steps, so
    the model and the reference's start and end levels agree with the scheduler's."""
    noise = cli.make_noise("gmm", 8, 0)
    ratio = cli.run(sched, "gmm", 100, noise).error / cli.run(sched, "gmm", 400, noise).error
    assert 4**order / 1.6 < ratio < 4**order * 1.6, ratio


def test_pure_noise_start_uses_the_flow_form():
    """From ᾱ = 0 the reference solves the same ODE in its flow form: the limit of the
    variance-exploding solve from ᾱ -> 0."""
    denoiser = models.make_denoiser("gmm", **cli.model_kwargs("gmm"))
    x = cli.make_noise("gmm", 8, 0)
    at_zero = cli.solve_vp(denoiser, x, 0.0, 0.5)
    near = [np.abs(reference.solve_pf_ode(denoiser, x, a, 0.5) - at_zero).max()
            for a in (1e-6, 1e-10)]  # fmt: skip
    assert near[1] < near[0] / 30 and near[1] < 1e-4  # observed 6.6e-4, 2.7e-6 (√ᾱ)


def test_inverse_round_trip(capsys, tmp_path):
    """An inverse scheduler's demo: data inverted to noise, regenerated by the forward
    method of the same config; the reconstruction error falls with the steps."""
    noise = cli.make_noise("gmm", 8, 0)
    for sched in (ds.DDIMInverse(clip_denoised_sample=False), ds.DPMSolverMultistepInverse()):
        trip = cli.round_trip(sched, "gmm", 5, noise)
        assert type(trip.forward) is (ds.DDIM if type(sched) is ds.DDIMInverse
                                      else ds.DPMSolverMultistep)  # fmt: skip
        assert trip.forward.beta_schedule == sched.beta_schedule
        finer = cli.round_trip(sched, "gmm", 100, noise)
        assert finer.error < trip.error / 5  # observed 11x and 32x
    status, _, err = run_cli(capsys, "sample", "dpm++2m-inverse", "--grid", "edm",
                             "--out", tmp_path / "x.png")  # fmt: skip
    assert status == 2 and "--grid" in err


def test_tune_config(capsys, tmp_path):
    """`tune --config FILE` tunes the config's scheduler (no default name in the way)."""
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(ds.UniPC(beta_schedule="quadratic").to_config()))
    argv = ("--model", "gmm", "--steps", 3, "--calibration", 4, "--held-out", 4,
            "--max-evaluations", 3)  # fmt: skip
    status, out, err = run_cli(capsys, "tune", "--config", path, *argv)
    assert status == 0, err
    assert "tuning UniPC, 3 steps, on gmm" in out
    status, _, err = run_cli(capsys, "tune", "unipc", "--config", path, *argv)
    assert status == 2 and "not both" in err
    path.write_text(json.dumps(ds.DDIM().to_config()))
    status, _, err = run_cli(capsys, "tune", "--config", path, *argv)
    assert status == 2 and f"--config {path}: DDIM with these options takes no custom grid" in err
    assert "--tune coefficients or both tune one of its bases in its place" in err
    # the table of one of its bases, tuned in its place
    both = ("--model", "gmm", "--steps", 3, "--calibration", 8, "--held-out", 4, "--tune", "both",
            "--max-evaluations", 3)  # fmt: skip
    status, out, err = run_cli(capsys, "tune", "--config", path, *both)
    assert status == 0, err
    assert "tuning DDIM, 3 steps (both), on gmm" in out
    assert "tuned table: base UniPC" in out or "tuned table: base DPMSolverMultistep" in out


def test_tune_a_flow_matching_scheduler(capsys, tmp_path):
    """`tune flow-euler` tunes the rectified-flow grid (custom sigmas=) on the exact flow
    model, and `--tune both` its table, which `sample --config` runs back; UniPC on flow
    levels is tuned the same way, and a dynamic shift is refused with the reason."""
    argv = ("--model", "gmm", "--steps", 4, "--calibration", 16, "--held-out", 8,
            "--max-evaluations", 5)  # fmt: skip
    status, out, err = run_cli(capsys, "tune", "flow-euler", "-o", "shift=3.0", *argv)
    assert status == 0, err
    assert "tuned grid: sigmas=[1.0," in out
    saved = tmp_path / "t.json"
    status, out, err = run_cli(capsys, "tune", "flow-euler", "-o", "shift=3.0", *argv,
                               "--tune", "both", "--save", saved)  # fmt: skip
    assert status == 0, err
    assert "tuned table: base " in out  # FlowMatchEuler, or UniPC on its flow σ's
    (row,) = [line for line in out.splitlines() if line.startswith("| held-out noise |")]
    untuned, tuned = (float(c) for c in row.strip("|").split("|")[1:3])
    assert tuned < untuned  # measured 0.45 -> 0.17 on 32 held-out noises
    errors = []
    for spec in (("--config", saved), ("flow-euler", "-o", "shift=3.0")):
        status, out, err = run_cli(capsys, "sample", *spec, "--model", "gmm", "--steps", 4,
                                   "--out", tmp_path / "s.png")  # fmt: skip
        assert status == 0, err
        (line,) = [x for x in out.splitlines() if x.startswith("relative RMS error vs exact")]
        errors.append(float(line.rsplit(" ", 1)[1]))
    assert errors[0] < errors[1]  # the table run back on the exact flow model, measured
    for sigma in (0.3, 0.9, 1 - 1e-6):  # a solver on flow σ's gives ᾱ = α² / (α² + σ²)
        alpha_bar = (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma**2)
        assert cli._flow_sigma(alpha_bar) == pytest.approx(sigma, rel=1e-9)
    assert cli._flow_sigma(1.0) == 0.0
    status, out, err = run_cli(capsys, "tune", "unipc", "-o", "use_flow_sigmas=true", "-o",
                               "prediction_type=flow", "-o", "flow_shift=3.0", *argv)  # fmt: skip
    assert status == 0, err  # a solver on flow σ's, on the exact flow model
    (row,) = [line for line in out.splitlines() if line.startswith("| held-out noise |")]
    untuned, tuned = (float(c) for c in row.strip("|").split("|")[1:3])
    assert "tuned grid: sigmas=[0.99999" in out and tuned <= untuned
    status, _, err = run_cli(capsys, "tune", "flow-euler", "-o", "use_dynamic_shifting=true",
                             *argv)  # fmt: skip
    assert status == 2 and "mu=" in err


def test_bench_all_na_and_no_samples(capsys, tmp_path):
    png = tmp_path / "b.png"
    status, out, err = run_cli(capsys, "bench", "--schedulers", "lcm", "euler-a", "--steps", 2,
                               "--model", "gmm", "--num-samples", 2, "--out", png)  # fmt: skip
    assert status == 0, err
    assert [row[4] for row in parse_table(out)] == ["n/a", "n/a"]
    assert "no plot: every row is n/a" in out and not png.exists()
    status, _, err = run_cli(capsys, "bench", "--num-samples", 0, "--out", png)
    assert status == 2 and "--num-samples must be at least 1, got: 0" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"diffsched {ds.__version__}"


@pytest.mark.parametrize("command", ["sample", "bench", "tune"])
def test_help_states_each_default_once(capsys, command):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: False)" not in text
    assert not re.search(r"\(default: [^)]*\) \(default:", " ".join(text.split()))
    assert "`" not in text
    if command != "bench":
        assert "--scheduler NAME" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "--seed", "-1"], "--seed must be at least 0, got: -1"),
        (["tune", "--seed", "-1"], "--seed must be at least 0, got: -1"),
        (["bench", "--seed", "-1"], "--seed must be at least 0, got: -1"),
        (["bench", "--steps", "4", "0"], "--steps must be at least 1, got: 0"),
        (["sample", "--config", "{tmp}/nope.json"], "--config: no such file or folder: '"),
        (["tune", "--config", "{tmp}/nope.json"], "--config: no such file or folder: '"),
        (["sample", "-o", "clip_sample=true"], "diffusers' name for clip_denoised_sample"),
        (["sample", "-o", "eta=-1"], "-o: "),
        (["sample", "pndm", "--steps", "2"], "--steps: "),
        (["sample", "euler", "--strength", "2"], "--steps --strength: "),
        (["sample", "ddim", "--scheduler", "pndm"], "two schedulers named"),
        (["bench", "--schedulers", "pndm", "--steps", "2"], "--schedulers pndm --steps 2: "),
        (["bench", "--schedulers", "ddim:eta=x"], "--schedulers ddim:eta=x: "),
        (["bench", "--schedulers", "ddim-inverse"], "is an inverse scheduler"),
        (["tune", "lcm"], "tune needs a deterministic scheduler"),
        # sizes past what a batch or a seed can be (10^9 samples asked for 477 GiB; a
        # 20-digit seed raised a traceback; 10^8 stochastic calls never ended)
        (["sample", "--num-samples", "1000000000"], "--num-samples must be at most 100000"),
        (["sample", "--seed", "99999999999999"], "--seed must be at most 2147483647"),
        (["tune", "--calibration", "1000000000"], "--calibration must be at most 100000"),
        (["bench", "--stochastic", "--calls", "100000000"], "--calls must be at most 10000"),
        (["bench", "--best", "--steps", "100000"], "--steps must be at most 10000"),
    ],
)
def test_errors_name_their_flag(capsys, tmp_path, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    extra = ["--out", str(tmp_path / "e.png")] if argv[0] != "tune" else []
    status, _, err = run_cli(capsys, *argv, *extra)
    assert status == 2, err
    assert message in err
    assert "Errno" not in err and "Traceback" not in err


def test_library_errors_are_not_usage_errors(monkeypatch, tmp_path):
    """Only usage mistakes exit with status 2; a library error is a bug, with its
    traceback."""

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(cli, "run", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["sample", "--model", "gmm", "--out", str(tmp_path / "x.png")])


def test_table_ratio_of_two_exact_solutions():
    """Two errors at the reference's resolution (flow-heun on digits at 50 steps: ours
    7.2e-11, diffusers' 1.4e-21) have no meaningful ratio: the cell says both are exact."""
    row = {"model": "digits", "scheduler": "flow-heun", "steps": 50, "calls": 99}
    table = cli.format_table([{**row, "error": 7.233e-11, "diffusers_error": 1.411e-21},
                              {**row, "error": 2e-3, "diffusers_error": 1e-3}])  # fmt: skip
    lines = table.splitlines()
    assert lines[2].endswith("| 7.233e-11 | 1.411e-21 | both < 1e-9 |")
    assert lines[3].endswith("| 2.000e-03 | 1.000e-03 | +1.0e+00 |")


def test_exact_solution_end_lowest_is_the_discrete_limit():
    """``end="lowest"``: the ODE to the lowest trained level, then the jump to x̂_0 there,
    as the tuner's own reference solves it (a separate solver: within 2e-5; measured
    1.7e-6); the two limits differ by far more (measured 2.6e-4) on this schedule."""
    from diffsched.tuning import Grid, reference_trajectory

    sched = cli.SCHEDULERS["unipc"]()
    model = cli.exact_model(sched, "gmm")
    grid = Grid.of(sched, 6)
    options = grid.init_options(grid.start)
    start = cli.make_noise("gmm", 16, 3) * sched.init_noise_scale(None, **options)
    exact = {}
    for end in ("zero", "lowest"):
        exact[end], note = cli.exact_solution(sched, model, start, None, end, **options)
        assert note == ""
        ref = reference_trajectory(model, sched, start, grid, end=end).final
        assert np.linalg.norm(ref - exact[end]) / np.linalg.norm(exact[end]) < 2e-5
    gap = np.linalg.norm(exact["zero"] - exact["lowest"]) / np.linalg.norm(exact["zero"])
    assert gap > 5e-5
    with pytest.raises(ValueError, match="end must be 'zero' or 'lowest', got 'low'"):
        cli.exact_solution(sched, model, start, None, "low", **options)
    edm = cli.SCHEDULERS["edm-euler"]()
    noise = cli.make_noise("gmm", 4, 0) * edm.init_noise_scale(5)
    assert cli.exact_solution(edm, cli.exact_model(edm, "gmm"), noise, 5, "lowest") == (
        None, "end='lowest' needs a discrete-time schedule (trained levels)")  # fmt: skip


def test_tune_end_lowest(capsys, tmp_path):
    """`tune --end lowest` fits and measures against the discrete limit, records it in the
    saved table, and refuses a rectified-flow scheduler with the reason."""
    argv = ("--model", "gmm", "--steps", 4, "--calibration", 16, "--held-out", 8,
            "--max-evaluations", 5)  # fmt: skip
    saved = tmp_path / "t.json"
    status, out, err = run_cli(capsys, "tune", "unipc", *argv, "--tune", "both", "--end",
                               "lowest", "--save", saved)  # fmt: skip
    assert status == 0, err
    assert "| relative RMS error vs discrete limit" in out
    (row,) = [line for line in out.splitlines() if line.startswith("| held-out noise |")]
    untuned, tuned = (float(c) for c in row.strip("|").split("|")[1:3])
    assert tuned < untuned
    assert json.loads(saved.read_text())["about"]["end"] == "lowest"
    status, out, err = run_cli(capsys, "tune", "dpm++2m", *argv, "--end", "lowest")
    assert status == 0, err
    assert "| relative RMS error vs discrete limit" in out and "tuned grid: timesteps=" in out
    status, _, err = run_cli(capsys, "tune", "flow-euler", "-o", "shift=3.0", *argv, "--end",
                             "lowest")  # fmt: skip
    assert status == 2 and "--end lowest is for discrete-time models" in err


def test_gmm64_is_the_64_dimensional_full_covariance_mixture(capsys, tmp_path):
    """`--model gmm64`: the 64-D mixture with full covariances (issue 20's kind of model)
    in sample, bench (plain and --best) and tune; the tuned table beats the untuned loops
    there (measured: 0.023 against 0.096 for our best untuned at 5 calls, 32 samples)."""
    model = cli.exact_model(cli.SCHEDULERS["unipc"](), "gmm64")
    assert model.denoiser.dim == 64 and model.denoiser.rotations is not None
    assert cli.make_noise("gmm64", 3, 0).shape == (3, 64)
    assert cli.model_kwargs("gmm64") is not cli.model_kwargs("gmm64")  # a copy each time
    status, out, err = run_cli(capsys, "sample", "unipc", "--model", "gmm64", "--num-samples",
                               8, "--steps", 8, "--out", tmp_path / "s.png")  # fmt: skip
    assert status == 0, err
    assert 0 < float(printed_error(out)) < 1  # measured 0.26 on 16 samples
    check_png(tmp_path / "s.png")
    status, out, err = run_cli(capsys, "bench", "--best", "--model", "gmm64", "--steps", 5,
                               "--num-samples", 32, "--calibration", 16, "--out",
                               tmp_path / "b.png")  # fmt: skip
    assert status == 0, err
    (row,) = [line for line in out.splitlines() if line.startswith("| gmm64 | 5 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    tuned, untuned = float(cells[3]), float(cells[5])
    assert tuned < 0.5 * untuned
    with pytest.raises(SystemExit):
        run_cli(capsys, "sample", "--model", "gmm65")
    assert "invalid choice: 'gmm65'" in capsys.readouterr().err


def test_learned_variance_is_refused_with_the_reason(capsys, tmp_path):
    """The command line's models give the prediction only: a learned variance (a name with
    -o, or a diffusers config such as DeepFloyd IF's) is a usage error, not a traceback."""
    status, _, err = run_cli(capsys, "sample", "ddpm", "-o", "variance_type=learned_range",
                             "--steps", 3)  # fmt: skip
    assert status == 2 and "variance channels" in err and "Traceback" not in err
    config = tmp_path / "scheduler_config.json"
    config.write_text(json.dumps({"_class_name": "DPMSolverMultistepScheduler",
                                  "variance_type": "learned"}))  # fmt: skip
    status, _, err = run_cli(capsys, "sample", "--config", config, "--steps", 3)
    assert status == 2 and f"--config {config}" in err and "variance_type='learned'" in err


def _random_command_lines(seed: str, count: int) -> list[list[str]]:
    """``count`` random command lines of cheap flags and values, valid and not (the scratch
    probe that found a one-step flow tune crashing and flags without maxima)."""
    r = random.Random(seed)
    schedulers = ["ddim", "euler", "unipc", "dpm++2m", "flow-euler", "comfy-euler", "pndm",
                  "lcm", "heun", "ddim-inverse", "ipndm-v", "edm-euler", "nope"]  # fmt: skip
    options = ["eta=0.5", "eta=-1", "use_karras_sigmas=true", "timestep_spacing=trailing",
               "prediction_type=v_prediction", "shift=3", "solver_order=3", "x=1", "eta=nan",
               "sigma_schedule=normal", "timestep_spacing=leading"]  # fmt: skip
    values = {
        "--steps": ["1", "2", "4", "0", "-3", "x", "100000"],
        "--strength": ["0.5", "1", "2", "nan", "x"],
        "--seed": ["0", "7", "-1", "99999999999999", "x"],
        "--grid": ["edm", "logsnr", "ays-sd15", "/dev/null", "x"],
        "--tune": ["grid", "both", "coefficients", "x"],
        "--end": ["zero", "lowest", "x"],
        "--dtype": ["float32", "float64"],
    }
    flags = {"sample": ["--steps", "--strength", "--seed", "--grid", "--dtype", "-o"],
             "tune": ["--steps", "--seed", "--tune", "--end", "-o"]}  # fmt: skip
    lines = []
    for _ in range(count):
        command = r.choice(["sample", "tune"])
        argv = [command, r.choice(schedulers), "--model", "gmm"]
        for _ in range(r.randint(0, 3)):
            flag = r.choice(flags[command])
            value = r.choice(options) if flag == "-o" else r.choice(values[flag])
            argv += [flag, value]
        if command == "sample":
            argv += ["--num-samples", "4", "--no-progress"]
        else:
            argv += ["--calibration", "8", "--held-out", "8", "--max-evaluations", "5"]
        lines.append(argv)
    return lines


@pytest.mark.parametrize("argv", _random_command_lines("cli", 24), ids=" ".join)
def test_random_command_lines_end_in_a_result_or_a_usage_error(capsys, tmp_path, argv):
    """Any command line ends with exit status 0 or a usage error (2) naming a flag, never a
    traceback."""
    if argv[0] == "sample":
        argv = [*argv, "--out", str(tmp_path / "r.png")]
    try:
        status, _, err = run_cli(capsys, *argv)
    except SystemExit as exit_:  # argparse's own usage errors (a value of the wrong type)
        status, err = exit_.code, ""
    assert status in (0, 2), (status, err)
    if status == 2 and err:
        assert "error:" in err
