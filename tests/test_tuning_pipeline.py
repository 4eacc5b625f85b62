"""Tuning for pipeline users (diffsched.tuning_pipeline) on a tiny random-weight Stable
Diffusion pipeline (test_adapter's builders): tuning runs on the pipeline's own denoiser,
writes a file, the file loads as the pipeline's scheduler and the pipeline then gives the
tuned loop's samples; a file tuned for another schedule is refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).parent))
from test_adapter import build, sd_components  # noqa: E402, F401

import diffsched as ds  # noqa: E402
from diffsched import tuning_pipeline as tp  # noqa: E402

PROMPTS = ["a cat", "a dog"]
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
STEPS = 4
CHEAP = {"candidates": 12, "substeps": 2, "max_evaluations": 12, "iterations": 1}


@pytest.fixture(scope="module")
def pipe(sd_components):  # noqa: F811
    return build(diffusers.StableDiffusionPipeline, sd_components,
                 diffusers.UniPCMultistepScheduler(**SD))  # fmt: skip


@pytest.mark.parametrize("extra", ["", "times", "samples"])
def test_tune_save_load_reproduce(pipe, tmp_path, extra):
    # times=True: the UNet is called at the tuned (fractional) model times, by the pipeline
    # as by the tuned loop; samples=True: the pipeline's loop weights its earlier latents
    path = tmp_path / "tuned.json"
    tuned = tp.tune(pipe, PROMPTS, STEPS, calibration=4, guidance_scale=5.0, path=path,
                    **({extra: True} if extra else {}), **CHEAP)  # fmt: skip
    assert isinstance(tuned, ds.Tuned) and tuned.tuned_steps == STEPS
    assert (tuned.model_timesteps is not None) == (extra == "times")
    assert (tuned.sample_weights is not None) == (extra == "samples")
    about = json.loads(path.read_text(encoding="utf-8"))["about"]
    assert about["prompts"] == PROMPTS and about["model_calls"] > 0
    assert about["end"] == "zero"  # the default: fitted to the ODE's solution at σ = 0
    assert about["calibration_error"] <= about["calibration_error_before"]

    scheduler = tp.load(path, pipe, num_steps=STEPS)
    assert scheduler.wrapped == tuned
    scheduler.set_timesteps(STEPS)
    _, own = tuned.init(STEPS, torch.zeros(1))
    assert torch.equal(scheduler.timesteps.double(), own.float().double())  # the model times
    # the pipeline with the loaded file gives the tuned loop's samples on the same noise
    noise = tp.calibration_noise(pipe, 2, seed=5)
    model = tp.PipelineDenoiser(pipe, PROMPTS, 5.0)
    ours = ds.sample(model, tuned, noise, STEPS)
    original = pipe.scheduler
    try:
        pipe.scheduler = scheduler
        latents = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=5.0,
                       latents=noise.clone(), output_type="latent").images  # fmt: skip
    finally:
        pipe.scheduler = original
    diff = float((latents - ours).abs().max() / ours.abs().max())
    print("PIPELINE tuned vs pipeline rel diff", diff, "tuner calls", about["model_calls"],
          "seconds", about["seconds"])  # fmt: skip
    assert diff < 1e-5, diff  # float32 UNet calls in the same order
    # and the tuned table is not the base's: the file changes the samples
    base = ds.sample(model, tuned.base_scheduler, noise, STEPS)
    assert float((base - ours).abs().max()) > 10 * diff * float(ours.abs().max())


def test_load_refuses_another_schedule(pipe, tmp_path):
    tuned = ds.Tuned(
        base=ds.UniPC.from_config(diffusers.UniPCMultistepScheduler(**SD).config), tuned_steps=STEPS
    )
    path = ds.save_tuned(tmp_path / "t.json", tuned)
    other = build(diffusers.StableDiffusionPipeline,
                  {k: getattr(pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet")}
                  | {"safety_checker": None, "feature_extractor": None,
                     "requires_safety_checker": False},
                  diffusers.UniPCMultistepScheduler(prediction_type="v_prediction"))  # fmt: skip
    with pytest.raises(ValueError, match="prediction_type"):
        tp.load(path, other)
    loaded = tp.load(path, pipe)
    assert loaded.config is not None
    # a pipeline whose scheduler is a loaded table already: compared through its base
    assert tp.load(path, SimpleNamespace(scheduler=loaded)).config is not None
    # flow levels either way (no beta keys to compare: the model's own schedule decides)
    flow = ds.save_tuned(tmp_path / "f.json", ds.Tuned(base=ds.FlowMatchEuler(shift=3.0),
                                                       tuned_steps=STEPS))  # fmt: skip
    with pytest.raises(ValueError, match="flow levels: True"):
        tp.load(flow, pipe)
    for theirs, what in ((diffusers.FlowMatchEulerDiscreteScheduler(), "shift: 3.0"),
                         (diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), None),
                         (diffusers.DDIMScheduler(**SD), "flow levels: True")):  # fmt: skip
        stand_in = SimpleNamespace(scheduler=theirs)
        if what is None:
            assert tp.load(flow, stand_in).wrapped.base_scheduler.shift == 3.0
        else:
            with pytest.raises(ValueError, match=what):
                tp.load(flow, stand_in)
    with pytest.raises(ValueError, match="flow levels: False"):
        tp.load(path, SimpleNamespace(scheduler=diffusers.FlowMatchEulerDiscreteScheduler()))
    with pytest.raises(ValueError, match=r"beta_schedule: 'scaled_linear' .*'linear'"):
        tp.load(path, SimpleNamespace(scheduler=diffusers.DDIMScheduler()))


def test_tune_refuses_a_scheduler_of_another_model(pipe):
    # the table would be fitted to this pipeline's UNet but saved as another model's
    v_model = ds.UniPC.from_config(diffusers.UniPCMultistepScheduler(**SD).config,
                                   prediction_type="angular_velocity")  # fmt: skip
    for scheduler, what in ((ds.UniPC(), "beta_schedule"), (ds.FlowMatchEuler(), "flow levels"),
                            (v_model, "prediction_type")):  # fmt: skip
        with pytest.raises(ValueError, match=f"describe the pipeline's model.*{what}"):
            tp.tune(pipe, PROMPTS, STEPS, scheduler=scheduler, calibration=4)


def test_cli_tunes_a_saved_pipeline_and_the_file_loads(pipe, tmp_path, capsys):
    """`diffsched tune --pipeline DIR --prompt ...` tunes the pipeline saved in DIR on its
    own denoiser and writes the file `tuning_pipeline.load` reads; the loaded scheduler
    runs in the pipeline. Misuse is a usage error."""
    from diffsched import cli

    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    out = tmp_path / "tuned.json"

    def run(*argv):
        capsys.readouterr()
        status = cli.main([str(a) for a in argv])
        return (status, *capsys.readouterr())

    status, text, err = run("tune", "--pipeline", folder, "--prompt", "a cat", "--prompt",
                            "a dog", "--steps", STEPS, "--calibration", 4, "--guidance-scale",
                            5.0, "--max-evaluations", 6, "--end", "lowest", "--save",
                            out)  # fmt: skip
    assert status == 0, err
    assert f"wrote {out}" in text and "batched UNet calls" in text
    assert "vs the reference discrete limit" in text  # the UNet is never called below t = 0
    about = json.loads(out.read_text(encoding="utf-8"))["about"]
    assert about["prompts"] == PROMPTS and about["guidance_scale"] == 5.0
    assert about["calibration"] == 4 and about["tune"] == "both" and about["end"] == "lowest"
    assert about["calibration_error"] <= about["calibration_error_before"]
    scheduler = tp.load(out, pipe, num_steps=STEPS)
    original = pipe.scheduler
    try:
        pipe.scheduler = scheduler
        latents = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=5.0,
                       latents=tp.calibration_noise(pipe, 2, seed=3),
                       output_type="latent").images  # fmt: skip
    finally:
        pipe.scheduler = original
    assert torch.isfinite(latents).all() and latents.shape[0] == 2

    (tmp_path / "dir.json").mkdir()
    for argv, words in (
        (("--pipeline", folder, "--save", out), "at least one --prompt"),
        (("--pipeline", folder, "--prompt", "a cat"), "needs --save"),
        (("--pipeline", tmp_path / "nowhere", "--prompt", "a", "--save", out), "no such folder"),
        (("--prompt", "a cat"), "--prompt and --guidance-scale are for --pipeline"),
        (
            ("--pipeline", folder, "--prompt", "a", "--save", out, "--model", "gmm"),
            "--model is for the exact models",
        ),
        (
            ("--pipeline", folder, "--prompt", "a", "--save", out, "--held-out", 3),
            "--held-out is for the exact models",
        ),
        (("--pipeline", folder, "--prompt", "a", "--save", tmp_path / "dir.json"), "is a folder"),
        (
            ("--pipeline", folder, "--prompt", "a", "--save", out, "--scheduler", "ddim-inverse"),
            "an inverse scheduler",
        ),
        (
            ("--pipeline", folder, "--prompt", "a", "--save", out, "--scheduler", "flow-euler"),
            "describe the pipeline's model",
        ),
    ):  # each refused before any UNet call, the file untouched
        before = out.read_bytes()
        status, _, err = run("tune", *argv)
        assert status == 2 and words in err, (argv, err)
        assert out.read_bytes() == before


def test_tune_refuses_bad_arguments_before_any_unet_call(pipe, monkeypatch):
    monkeypatch.setattr(tp.PipelineDenoiser, "__call__", lambda *a: pytest.fail("UNet called"))
    for kw, err, words in (
        ({"calibration": True}, ValueError, "calibration must be an integer >= 1"),
        ({"calibration": 4.0}, ValueError, "calibration must be an integer >= 1"),
        ({"calibration": -1}, ValueError, "calibration must be an integer >= 1"),
        ({"seed": 1.5}, ValueError, "seed must be an integer >= 0"),
        ({"guidance_scale": float("nan")}, ValueError, "guidance_scale must be a finite number"),
        ({"prompts": 5}, TypeError, "prompts must be a string or a list of strings"),
        ({"tune": "grid", "samples": True}, TypeError, "samples tunes a table's coefficients"),
        ({"tune": "grid", "history": 2, "times": True}, TypeError, "history, times tune a"),
    ):  # fmt: skip
        kw = {"prompts": PROMPTS, **kw}
        with pytest.raises(err, match=words):
            tp.tune(pipe, kw.pop("prompts"), STEPS, **kw)
