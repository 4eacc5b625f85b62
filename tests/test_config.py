"""Reading diffusers scheduler configs, writing them back, and both against diffusers."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import diffusers
import numpy as np
import oracle
import pytest
import torch

import diffsched as ds
from diffsched.core.options import diffusers_options, from_diffusers

FIXTURES = Path(__file__).parent / "fixtures"
SD15_FOLDER = FIXTURES / "sd15"
SD15 = SD15_FOLDER / "scheduler" / "scheduler_config.json"
SD21_V = FIXTURES / "sd21_v_scheduler_config.json"
LCM_SDXL = FIXTURES / "lcm_scheduler_config.json"

SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}
EXPECTED = {
    "sd15": ds.PNDM(**SD, alpha_clip_strategy="alpha_zero", reduce_warmup=True, timesteps_offset=1),
    "sd21_v": ds.DDIM(
        **SD,
        prediction_type="angular_velocity",
        clip_denoised_sample=False,
        alpha_clip_strategy="alpha_zero",
        timesteps_offset=1,
    ),
    "lcm": ds.LCM(
        **SD,
        clip_denoised_sample=False,
        num_original_steps=50,
        boundary_condition_timestep_scale=10.0,
        alpha_clip_strategy="one",
    ),
}
FILES = {"sd15": SD15, "sd21_v": SD21_V, "lcm": LCM_SDXL}
# keys the fixture has that its class lacks (reported in one warning)
# keys the fixture has that its class lacks, at a value that changes nothing (clip_sample:
# false for PNDM, skip_prk_steps: true for DDIM): they load without a warning
FOREIGN_KEYS = {"sd15": [], "sd21_v": [], "lcm": []}


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def from_config_quietly(source, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ds.from_config(source, **overrides)


# -- reading ------------------------------------------------------------------------------


def test_fixtures_are_as_published():
    sd15 = load(SD15)
    assert sd15["_class_name"] == "PNDMScheduler" and sd15["skip_prk_steps"] is True
    assert sd15["steps_offset"] == 1 and sd15["set_alpha_to_one"] is False
    assert load(SD21_V)["prediction_type"] == "v_prediction"
    assert load(LCM_SDXL)["original_inference_steps"] == 50
    assert load(SD15_FOLDER / "model_index.json") == {}


@pytest.mark.parametrize("name", list(FILES))
def test_from_config_every_source_kind(name):
    path = FILES[name]
    sources = [load(path), str(path), path]
    if name == "sd15":
        sources += [SD15_FOLDER, str(SD15_FOLDER), SD15.parent]  # model folder, its scheduler/
    for source in sources:
        sched = from_config_quietly(source)
        assert type(sched) is type(EXPECTED[name])
        assert sched == EXPECTED[name], source


def test_lcm_fixture_is_our_lcm_default():
    assert EXPECTED["lcm"] == ds.LCM()


def test_from_config_does_not_modify_the_dict():
    config = load(SD21_V)
    before = json.dumps(config, sort_keys=True)
    from_config_quietly(config, eta=0.5)
    assert json.dumps(config, sort_keys=True) == before


@pytest.mark.parametrize("name", list(FILES))
def test_warns_once_for_keys_the_class_lacks(name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds.from_config(FILES[name])
    user = [w for w in caught if issubclass(w.category, UserWarning)]
    foreign = FOREIGN_KEYS[name]
    if not foreign:
        assert user == []
        return
    assert len(user) == 1
    message = str(user[0].message)
    class_name = load(FILES[name])["_class_name"]
    assert message == f"{class_name} has no option(s) {foreign}; ignored"
    assert user[0].filename == __file__  # points at the caller
    # metadata keys and keys the class has are never reported
    assert "_diffusers_version" not in message and "steps_offset" not in message


def test_warning_lists_every_foreign_key_sorted():
    config = {"_class_name": "PNDMScheduler", "zeta": 1, "clip_sample": True, "eta": 0.0}
    with pytest.warns(
        UserWarning,
        match=re.escape("PNDMScheduler has no option(s) ['clip_sample', 'eta', 'zeta']; ignored"),
    ):
        ds.from_config(config)
    # clip_sample: false is what PNDM does anyway: no warning for it
    with pytest.warns(UserWarning, match=re.escape("no option(s) ['eta', 'zeta']; ignored")):
        ds.from_config(config | {"clip_sample": False})


def test_diffusers_names_are_understood(tmp_path):
    """diffusers' spelling of an option or value names ours; scheduler swapping with
    Class.from_config(other config); save_config writes what from_config reads."""
    with pytest.raises(TypeError, match=re.escape("'clip_sample' is diffusers' name for "
                                                  "clip_denoised_sample")):  # fmt: skip
        ds.DDIM(clip_sample=False)
    with pytest.raises(TypeError, match=re.escape("'steps_offset' is diffusers' name for "
                                                  "timesteps_offset")):  # fmt: skip
        ds.Euler(steps_offset=1)
    with pytest.raises(ValueError, match=re.escape("'scaled_linear' is diffusers' name for "
                                                   "beta_schedule='quadratic'")):  # fmt: skip
        ds.DDIM(beta_schedule="scaled_linear")
    v_hint = "'v_prediction' is diffusers' name for prediction_type='angular_velocity'"
    with pytest.raises(ValueError, match=re.escape(v_hint)):
        ds.Euler(prediction_type="v_prediction")
    sd15 = load(SD15)
    swapped = ds.DPMSolverMultistep.from_config(sd15)  # PNDM's config, DPM-Solver's class
    assert isinstance(swapped, ds.DPMSolverMultistep)
    assert (swapped.beta_schedule, swapped.beta_start, swapped.beta_end) == (
        "quadratic", 0.00085, 0.012)  # fmt: skip
    assert swapped.timesteps_offset == 1
    back = ds.DDIM.from_config(ds.Euler(prediction_type="angular_velocity").to_config())
    assert back.prediction_type == "angular_velocity" and back.timestep_spacing == "linspace"
    path = ds.DDIM(eta=0.5).save_config(tmp_path / "model" / "scheduler")
    assert path.name == "scheduler_config.json"
    assert ds.from_config(tmp_path / "model") == ds.DDIM(eta=0.5)


def test_unknown_class_name():
    supported = sorted([*ds.SCHEDULERS, *(c.__name__ for c in ds.methods.OURS_ONLY)])
    message = f"unsupported scheduler class 'NoSuchScheduler'; supported: {supported}"
    with pytest.raises(ValueError, match=re.escape(message)):
        ds.from_config({"_class_name": "NoSuchScheduler", "num_train_timesteps": 1000})
    with pytest.raises(ValueError, match=re.escape("unsupported scheduler class None")):
        ds.from_config({"num_train_timesteps": 1000})
    assert {"DDIMScheduler", "LCMScheduler", "PNDMScheduler", "EulerDiscreteScheduler"} <= set(
        ds.SCHEDULERS
    )


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError):
        ds.from_config(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError):
        ds.from_config(str(tmp_path / "no-such-config.json"))
    with pytest.raises(FileNotFoundError, match=re.escape("found neither")):
        ds.from_config(tmp_path)  # a folder without a scheduler config


def test_non_object_json(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=re.escape("expected a JSON object in")):
        ds.from_config(path)
    # a scheduler_config.json directly in the folder is found too
    path.write_text(json.dumps(ds.DDIM(eta=0.25).to_config()))
    assert ds.from_config(tmp_path) == ds.DDIM(eta=0.25)


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [
        ("beta_schedule", "sigmoid", "beta_schedule"),
        ("beta_schedule", "quadratic", "beta_schedule"),  # our name, not diffusers'
        ("prediction_type", "noise", "prediction_type"),
        ("prediction_type", "x0", "prediction_type"),
    ],
)
def test_unsupported_values_name_the_key(key, value, what):
    config = {"_class_name": "DDIMScheduler", key: value}
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"DDIMScheduler config key {key!r}: unsupported {what} {value!r}; supported: "
        ),
    ):
        ds.from_config(config)


def test_invalid_values_for_the_class():
    with pytest.raises(ValueError, match=re.escape("prediction_type must be one of")):
        ds.from_config({"_class_name": "PNDMScheduler", "prediction_type": "sample"})
    with pytest.raises(ValueError, match=re.escape("timestep_spacing must be one of")):
        ds.from_config({"_class_name": "DDIMScheduler", "timestep_spacing": "uniform"})


def test_null_is_what_diffusers_makes_of_it():
    # diffusers passes null to its class: a boolean key reads as false there (clip_sample:
    # null does not clip), trained_betas: null is "no betas"; a null number is an error
    # (tests/test_hardening.py checks every key of every class against diffusers)
    sched = ds.from_config(
        {"_class_name": "DDIMScheduler", "clip_sample": None, "trained_betas": None}
    )
    assert sched == ds.DDIM(clip_denoised_sample=False)
    with pytest.raises(ValueError, match="config key 'beta_end' is null"):
        ds.from_config({"_class_name": "DDIMScheduler", "beta_end": None})
    betas = list(np.linspace(1e-4, 0.02, 1000))
    sched = ds.from_config({"_class_name": "DDIMScheduler", "trained_betas": betas})
    assert sched.trained_betas == tuple(betas)


def test_overrides_win():
    sched = from_config_quietly(
        SD15_FOLDER, reduce_warmup=False, timesteps_offset=0, beta_schedule="linear"
    )
    assert sched == EXPECTED["sd15"].replace(
        reduce_warmup=False, timesteps_offset=0, beta_schedule="linear"
    )
    sched = from_config_quietly(SD21_V, eta=1.0, rederive_noise=True, prediction_type="noise")
    assert (sched.eta, sched.rederive_noise, sched.prediction_type) == (1.0, True, "noise")
    # over the private _diffsched key too
    config = ds.DDIM(eta=0.5, rederive_noise=True).to_config()
    assert ds.from_config(config, eta=0.0).eta == 0.0
    assert ds.from_config(config, eta=0.0).rederive_noise is True
    # overrides are our option names, not diffusers' keys
    with pytest.raises(TypeError, match="skip_prk_steps"):
        from_config_quietly(SD15, skip_prk_steps=False)


# -- the fixtures against diffusers -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n"),
    [("sd15", 10), ("sd15", 50), ("sd21_v", 10), ("sd21_v", 50), ("lcm", 4), ("lcm", 10)],
)
def test_fixture_loop_matches_diffusers(name, n):
    config = load(FILES[name])
    ours_sched = from_config_quietly(FILES[name])
    theirs_sched = oracle.scheduler_from_config(config)
    x = oracle.start_sample()
    model = oracle.linear_tanh_model()
    noises = oracle.noise_list(n) if name == "lcm" else None
    ts, ours = oracle.run_ours(ours_sched, n, x, model, noises=noises)
    theirs_ts, theirs = oracle.drive(theirs_sched, n, x, model, noises=noises)
    assert ts.tolist() == theirs_ts.tolist()
    r = oracle.rel(ours, theirs)
    oracle.record("CONFIG fixtures vs diffusers", type(ours_sched).__name__, r)
    assert r < 1e-6
    assert oracle.rel(theirs, x) > 1e-3


# -- writing: to_config -------------------------------------------------------------------

TRAINED = tuple(float(b) for b in np.linspace(1e-4, 0.02, 1000) ** 1.5 / 0.02**0.5)
ROUND_TRIP = [
    ds.DDIM(),
    ds.DDIM(eta=0.5, rederive_noise=True),
    ds.DDIM(eta=1.0, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0),
    ds.DDIM(
        **SD,
        prediction_type="angular_velocity",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_denoised_sample=False,
    ),
    ds.DDIM(
        beta_schedule="squared_cosine",
        prediction_type="sample",
        timesteps_offset=1,
        alpha_clip_strategy="alpha_zero",
        clip_sample_range=2.0,
    ),
    ds.DDIM(trained_betas=TRAINED, timestep_spacing="linspace"),
    ds.DDIM(num_train_steps=500, beta_start=0.0002, beta_end=0.03),
    ds.PNDM(),
    ds.PNDM(**SD, reduce_warmup=True, timesteps_offset=1),
    ds.PNDM(
        prediction_type="angular_velocity", timestep_spacing="trailing", alpha_clip_strategy="one"
    ),
    ds.PNDM(beta_schedule="squared_cosine", timestep_spacing="linspace"),
    ds.PNDM(trained_betas=TRAINED),
    ds.LCM(),
    ds.LCM(prediction_type="angular_velocity", rescale_betas_zero_snr=True),
    ds.LCM(
        prediction_type="sample",
        clip_denoised_sample=True,
        clip_sample_range=1.5,
        beta_schedule="linear",
        beta_start=0.0001,
        beta_end=0.02,
    ),
    ds.LCM(
        thresholding=True,
        sample_max_value=2.0,
        num_original_steps=100,
        boundary_condition_timestep_scale=5.0,
        alpha_clip_strategy="alpha_zero",
    ),
    ds.LCM(trained_betas=TRAINED, beta_schedule="squared_cosine"),
]
IDS = [f"{type(s).__name__}-{i}" for i, s in enumerate(ROUND_TRIP)]


@pytest.mark.parametrize("sched", ROUND_TRIP, ids=IDS)
def test_to_config_round_trips(sched, tmp_path):
    config = sched.to_config()
    assert config["_class_name"] == type(sched).DIFFUSERS_CLASS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our own configs have no foreign keys
        assert ds.from_config(config) == sched
        path = tmp_path / "scheduler" / "scheduler_config.json"
        path.parent.mkdir()
        path.write_text(json.dumps(config))  # JSON-serialisable
        assert ds.from_config(tmp_path) == sched
    if isinstance(sched, ds.DDIM):
        assert config["_diffsched"] == {"eta": sched.eta, "rederive_noise": sched.rederive_noise}
    else:
        assert "_diffsched" not in config


def test_to_config_uses_diffusers_names_and_values():
    config = ds.DDIM(
        **SD,
        prediction_type="angular_velocity",
        alpha_clip_strategy="alpha_zero",
        timesteps_offset=1,
        clip_denoised_sample=False,
    ).to_config()
    assert config["beta_schedule"] == "scaled_linear"
    assert config["prediction_type"] == "v_prediction"
    assert config["set_alpha_to_one"] is False
    assert config["steps_offset"] == 1 and config["clip_sample"] is False
    assert config["num_train_timesteps"] == 1000
    assert (
        ds.DDIM(beta_schedule="squared_cosine").to_config()["beta_schedule"] == "squaredcos_cap_v2"
    )
    assert ds.DDIM().to_config()["prediction_type"] == "epsilon"
    assert ds.PNDM(reduce_warmup=True).to_config()["skip_prk_steps"] is True
    lcm = ds.LCM(num_original_steps=8, boundary_condition_timestep_scale=3.0).to_config()
    assert (lcm["original_inference_steps"], lcm["timestep_scaling"]) == (8, 3.0)
    assert isinstance(ds.DDIM(trained_betas=TRAINED).to_config()["trained_betas"], list)
    json.dumps(ds.DDIM(trained_betas=TRAINED).to_config())


@pytest.mark.parametrize("sched", ROUND_TRIP, ids=IDS)
def test_diffusers_builds_our_config(sched):
    """diffusers' SchedulerClass.from_config(to_config()) has our values and our loop."""
    config = sched.to_config()
    cls = getattr(diffusers, config["_class_name"])
    built = cls.from_config(config)
    owner = type(sched).__name__
    for name, key, default, spec in diffusers_options(type(sched)):
        assert built.config[key] == config[key], key
        value = from_diffusers(owner, key, name, built.config[key], default, spec)
        assert value == getattr(sched, name)
    d = oracle.scheduler_from_config(config)
    assert d.alphas_cumprod.dtype == torch.float64
    n = 6 if not isinstance(sched, ds.PNDM) or sched.reduce_warmup else 8
    x = oracle.start_sample()
    model = oracle.linear_tanh_model()
    eta = getattr(sched, "eta", 0.0)
    noises = oracle.noise_list(n) if eta > 0 or isinstance(sched, ds.LCM) else None
    ts, ours = oracle.run_ours(sched, n, x, model, noises=noises)
    theirs_ts, theirs = oracle.drive(
        d, n, x, model, noises=noises, eta=eta, rederive=getattr(sched, "rederive_noise", False)
    )
    assert ts.tolist() == theirs_ts.tolist()
    r = oracle.rel(ours, theirs)
    oracle.record("CONFIG to_config vs diffusers.from_config", type(sched).__name__, r)
    assert r < 1e-6


def test_every_default_is_diffusers_default():
    """A class built with no options is diffusers' class built with none: every key both
    configs hold has one value (found by review: HeliosDMD's time_shift_type was Helios'
    exponential where diffusers' HeliosDMDScheduler defaults to linear)."""
    import math

    diffusers = pytest.importorskip("diffusers")
    from diffsched.methods import CLASSES

    compared = 0
    for cls in CLASSES:
        theirs_cls = getattr(diffusers, getattr(cls, "DIFFUSERS_CLASS", None) or "", None)
        if theirs_cls is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours, theirs = cls().to_config(), dict(theirs_cls().config)
        for key in sorted(set(ours) & set(theirs) - {"_class_name"}):
            a, b = ours[key], theirs[key]
            if isinstance(a, float) and isinstance(b, float):
                assert math.isclose(a, b, rel_tol=1e-12) or a == b, (cls.__name__, key, a, b)
            else:
                assert (list(a) == list(b)) if isinstance(a, list | tuple) else a == b, (
                    cls.__name__,
                    key,
                    a,
                    b,
                )
        compared += 1
    assert compared > 40, compared
