"""Align Your Steps grids: the published lists, their interpolation, a loop on them."""

from __future__ import annotations

import numpy as np
import pytest
import sigma_parity
from diffusers.schedulers import AysSchedules

import diffsched as ds
from diffsched.schedules import ays

SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}


def test_published_lists_equal_diffusers():
    assert list(ays.SIGMAS["sd15"]) == AysSchedules["StableDiffusionSigmas"]
    assert list(ays.SIGMAS["sdxl"]) == AysSchedules["StableDiffusionXLSigmas"]
    assert list(ays.SIGMAS["svd"]) == AysSchedules["StableDiffusionVideoSigmas"]
    assert list(ays.TIMESTEPS["sd15"]) == AysSchedules["StableDiffusionTimesteps"]
    assert list(ays.TIMESTEPS["sdxl"]) == AysSchedules["StableDiffusionXLTimesteps"]


@pytest.mark.parametrize("model", sorted(ays.SIGMAS))
def test_interpolation(model):
    assert ays.sigmas(model, 10).tolist() == list(ays.SIGMAS[model])  # the list itself
    for n in (4, 15, 30):
        grid = ays.sigmas(model, n)
        assert grid.shape == (n + 1,) and grid[-1] == 0.0
        assert np.all(np.diff(grid) < 0)  # strictly decreasing
        assert grid[0] == pytest.approx(ays.SIGMAS[model][0])  # same end points
        assert grid[-2] == pytest.approx(ays.SIGMAS[model][-2])
    # log-linear between published points: the midpoint of two neighbours at 19 steps
    grid = ays.sigmas(model, 19)
    published = ays.SIGMAS[model]
    assert grid[1] == pytest.approx(np.sqrt(published[0] * published[1]))


def test_errors():
    with pytest.raises(ValueError, match="AYS model must be one of"):
        ays.sigmas("sd3", 10)
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        ays.sigmas("sd15", 0)


@pytest.mark.parametrize("n", [10, 15])
def test_euler_on_ays_grid_equals_diffusers(n):
    sched = ds.Euler(**SD)
    grid = ays.sigmas("sd15", n).tolist()
    assert sigma_parity.compare(sched, None, sigmas=grid) < sigma_parity.F64_BOUND
