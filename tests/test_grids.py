"""Named grids (EDM's ρ grid, logSNR-uniform, Align Your Steps) as ``init`` arguments for
any scheduler that takes a custom grid, and grid JSON files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import diffsched as ds
from diffsched.schedules import ays
from diffsched.schedules import sigmas as sigma_schedules

SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}


def train_sigmas(sched):
    return sigma_schedules.from_alphas_cumprod(sched.alphas_cumprod)


@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_edm_grid_is_even_in_sigma_to_the_one_over_rho(rho):
    sched = ds.VariableIPNDM(**SD)
    grid = ds.named_grid("edm", sched, 8, rho=rho)
    sig = np.asarray(grid["sigmas"])
    train = train_sigmas(sched)
    assert len(sig) == 9 and sig[-1] == 0.0
    np.testing.assert_allclose(sig[[0, -2]], [train[-1], train[0]], rtol=1e-12)
    np.testing.assert_allclose(np.diff(sig[:-1] ** (1 / rho), 2), 0.0, atol=1e-12)


def test_logsnr_grid_is_even_in_log_sigma_and_loads_through_init():
    sched = ds.Euler(**SD)
    grid = ds.named_grid("logsnr", sched, 6)
    sig = np.asarray(grid["sigmas"][:-1])
    np.testing.assert_allclose(np.diff(np.log(sig), 2), 0.0, atol=1e-12)
    _, timesteps = sched.init(None, np.zeros((2, 3)), **grid)
    assert len(timesteps) == 6 and float(timesteps[0]) == 999.0


def test_ays_grid_is_the_published_list_from_the_top_level():
    sched = ds.VariableIPNDM(**SD)
    sig = np.asarray(ds.named_grid("ays-sd15", sched, 10)["sigmas"])
    published = np.asarray(ays.SIGMAS["sd15"])
    # the first level is the model's own largest trained σ (14.6146... for SD1.5's betas)
    assert sig[0] == pytest.approx(train_sigmas(sched)[-1], rel=1e-12)
    assert sig[0] == pytest.approx(published[0], abs=1e-3)
    np.testing.assert_allclose(sig[1:], published[1:], rtol=1e-12)


def test_timestep_methods_get_the_nearest_training_steps():
    sched = ds.DPMSolverMultistep(**SD)
    grid = ds.named_grid("ays-sd15", sched, 10)
    ts = grid["timesteps"]
    want = np.round(sigma_schedules.sigma_to_t(np.asarray(ays.SIGMAS["sd15"][:-1]),
                                               np.log(train_sigmas(sched))))  # fmt: skip
    want[0] = 999
    assert ts == [int(t) for t in want]
    # diffusers' own AYS timesteps for SD1.5 differ from the σ's nearest steps by a few
    assert np.max(np.abs(np.asarray(ts) - np.asarray(ays.TIMESTEPS["sd15"]))) <= 30
    with pytest.raises(ValueError, match="two levels on one training step"):
        ds.named_grid("edm", sched, 400)


def test_named_grid_errors():
    with pytest.raises(ValueError, match="grid must be one of"):
        ds.named_grid("nosuch", ds.Euler(), 5)
    with pytest.raises(ValueError, match="rho must be a positive number"):
        ds.named_grid("edm", ds.Euler(), 5, rho=0)
    with pytest.raises(TypeError, match="custom grid"):
        ds.named_grid("edm", ds.DEIS(), 5)


def test_grid_files_round_trip(tmp_path):
    grid = ds.named_grid("edm", ds.UniPC(**SD), 7)
    path = ds.save_grid(tmp_path / "g.json", grid)
    assert ds.load_grid(path) == grid
    assert json.loads(path.read_text()) == grid  # plain init keyword arguments
    (tmp_path / "bad.json").write_text('{"sigmas": [1, 0], "x": 1}')
    with pytest.raises(ValueError, match="must be one of"):
        ds.load_grid(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        ds.load_grid(tmp_path / "broken.json")


SIGMA_GRID_CLASSES = [ds.Euler, ds.Heun, ds.DPM2, ds.LMS, ds.DPMSolverMultistep, ds.UniPC,
                      ds.DEIS, ds.SASolver, ds.DPMSolverSinglestep, ds.VariableIPNDM]  # fmt: skip


def same_program(a, b):
    return np.array_equal(a.timesteps, b.timesteps) and np.array_equal(a.coefs[:-1], b.coefs[:-1])


@pytest.mark.parametrize("cls", SIGMA_GRID_CLASSES, ids=lambda c: c.__name__)
def test_sigma_schedule_option_names_the_grids(cls):
    """sigma_schedule="edm" / "karras" is use_karras_sigmas (ρ = 7), "logsnr" /
    "exponential" is use_exponential_sigmas; AYS follows the published list."""
    for name, flag in (("edm", "karras"), ("karras", "karras"), ("logsnr", "exponential"),
                       ("exponential", "exponential")):  # fmt: skip
        ours = cls(**SD, sigma_schedule=name).program(7)
        theirs = cls(**SD, **{f"use_{flag}_sigmas": True}).program(7)
        assert same_program(ours, theirs), (cls.__name__, name)
    ts = np.asarray(cls(**SD, sigma_schedule="ays-sd15").program(10).timesteps, np.float64)
    levels = [float(t) for t in dict.fromkeys(ts.tolist())]  # Heun repeats its levels
    published = np.asarray(ays.TIMESTEPS["sd15"], np.float64)
    assert len(levels) >= 10 and levels[0] == 999.0
    if cls in (ds.DPM2,):
        levels = levels[::2]  # DPM-2 calls the model at midpoints too
    assert np.max(np.abs(np.asarray(levels[:10]) - published)) <= 1.0


def test_sigma_schedule_conflicts_flow_and_config_round_trip():
    with pytest.raises(ValueError, match="use_karras_sigmas=True, sigma_schedule='logsnr'"):
        ds.Euler(use_karras_sigmas=True, sigma_schedule="logsnr")
    with pytest.raises(ValueError, match="sigma_schedule='ays-sd15'"):
        ds.DPMSolverMultistep(use_karras_sigmas=True, sigma_schedule="ays-sd15")
    with pytest.raises(ValueError, match="lists variance-exploding"):
        ds.FlowMatchEuler(sigma_schedule="ays-sd15")
    flow = ds.FlowMatchEuler(sigma_schedule="edm").program(6)
    assert same_program(flow, ds.FlowMatchEuler(use_karras_sigmas=True).program(6))
    with pytest.raises(ValueError, match="option sigma_schedule must be one of"):
        ds.Euler(sigma_schedule="nosuch")
    sched = ds.UniPC(**SD, sigma_schedule="ays-sdxl")
    config = sched.to_config()
    assert config["_diffsched_options"] == {"sigma_schedule": "ays-sdxl"}
    assert "sigma_schedule" not in config and "_diffsched_options" not in ds.UniPC().to_config()
    assert ds.from_config(config) == sched
    # a diffusers EDM config's own sigma_schedule does not carry over in a swap
    edm = ds.EDMEuler(sigma_schedule="exponential").to_config()
    assert ds.Euler.from_config(edm).sigma_schedule is None
