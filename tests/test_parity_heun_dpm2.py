"""Heun, DPM2 and DPM2 ancestral against diffusers 0.42.1 over a grid of options and steps.

Every option value is covered at least once (not every product), each at a few step
counts from 1 to 1000; see ``sigma_parity`` for how the loops are driven.
"""

from __future__ import annotations

import inspect

import numpy as np
import oracle
import pytest
import sigma_parity
import torch

from diffsched.core.options import diffusers_options
from diffsched.interop import peer
from diffsched.methods.dpm2 import DPM2, DPM2Ancestral
from diffsched.methods.heun import Heun

SD = {"beta_schedule": "quadratic"}  # with the classes' defaults: Stable Diffusion's betas
TRAINED = tuple(float(b) for b in np.linspace(0.0001 ** (1 / 3), 0.02 ** (1 / 3), 1000) ** 3)
CLIP = {"clip_denoised_sample": True, "clip_sample_range": 0.5}

HEUN_CASES = [
    (Heun(), (1, 2, 10, 50, 1000)),
    (Heun(**SD, timestep_spacing="leading", timesteps_offset=1), (1, 7, 30)),
    (Heun(**SD, timestep_spacing="trailing", prediction_type="angular_velocity"), (1, 4, 25)),
    (Heun(**SD, use_karras_sigmas=True), (2, 10, 50)),
    (Heun(use_exponential_sigmas=True, prediction_type="angular_velocity"), (2, 15)),
    (Heun(**SD, use_beta_sigmas=True), (2, 12)),
    (Heun(beta_schedule="squared_cosine", prediction_type="sample"), (3, 20)),
    (Heun(trained_betas=TRAINED, timestep_spacing="trailing"), (3, 20)),
    (Heun(**SD, **CLIP), (1, 5, 30)),
    (Heun(**CLIP, prediction_type="sample", use_karras_sigmas=True), (4, 20)),
    (Heun(num_train_steps=500, beta_start=0.0001, beta_end=0.03), (1, 25, 500)),
]
DPM2_CASES = [
    (DPM2(), (1, 2, 3, 10, 50, 1000)),
    (DPM2(**SD, timestep_spacing="leading", timesteps_offset=1), (1, 7, 30)),
    (DPM2(**SD, timestep_spacing="trailing", prediction_type="angular_velocity"), (1, 4, 25)),
    (DPM2(**SD, use_karras_sigmas=True), (2, 10, 50)),
    (DPM2(use_exponential_sigmas=True, prediction_type="angular_velocity"), (2, 15)),
    (DPM2(**SD, use_beta_sigmas=True), (2, 12)),
    (DPM2(beta_schedule="squared_cosine"), (3, 20)),
    (DPM2(trained_betas=TRAINED, timestep_spacing="trailing"), (3, 20)),
    (DPM2(num_train_steps=500, beta_start=0.0001, beta_end=0.03), (1, 25, 500)),
]
ANCESTRAL_CASES = [
    (DPM2Ancestral(), (1, 2, 3, 10, 50, 1000)),
    (DPM2Ancestral(**SD, timestep_spacing="leading", timesteps_offset=1), (1, 7, 30)),
    (
        DPM2Ancestral(**SD, timestep_spacing="trailing", prediction_type="angular_velocity"),
        (1, 4, 25),
    ),
    (DPM2Ancestral(**SD, use_karras_sigmas=True), (2, 10, 50)),
    (DPM2Ancestral(use_exponential_sigmas=True, prediction_type="angular_velocity"), (2, 15)),
    (DPM2Ancestral(**SD, use_beta_sigmas=True), (2, 12)),
    (DPM2Ancestral(beta_schedule="squared_cosine", trained_betas=TRAINED), (4, 40)),
    (DPM2Ancestral(num_train_steps=500, beta_end=0.03), (1, 25)),
]


@pytest.mark.parametrize(("sched", "n"), oracle.grid(HEUN_CASES + DPM2_CASES + ANCESTRAL_CASES))
def test_parity_float64(sched, n):
    sigma_parity.check(sched, n)


# diffusers' float32 ᾱ (a float32 cumulative product) moves the fractional timesteps of
# DPM2's midpoints near t = 0 by ~1e-5 (relative), past the timestep check of
# sigma_parity.compare, on 20-step linspace grids; the leading grids stay clear of t = 0
@pytest.mark.parametrize(
    ("sched", "n"),
    [
        (Heun(**SD), 20),
        (Heun(**SD, **CLIP), 20),
        (DPM2(**SD, timestep_spacing="leading", timesteps_offset=1), 20),
        (DPM2Ancestral(**SD, timestep_spacing="leading", timesteps_offset=1), 20),
    ],
)
def test_parity_float32(sched, n):
    sigma_parity.check(sched, n, dtype=torch.float32)


def test_options_cover_every_diffusers_option():
    """Every class declares exactly the keyword arguments of diffusers' ``__init__``."""
    for cls in (Heun, DPM2, DPM2Ancestral):
        theirs = getattr(peer.module_of({"_class_name": cls.DIFFUSERS_CLASS}), cls.DIFFUSERS_CLASS)
        params = inspect.signature(theirs.__init__).parameters
        keys = {key for _, key, _, _ in diffusers_options(cls)}
        assert keys == set(params) - {"self"}, cls.__name__
        config = cls().to_config()
        for key in keys - {"beta_schedule", "prediction_type"}:
            assert config[key] == params[key].default, (cls.__name__, key)


def test_clipping_clips():
    """The clipping case of the grid is not vacuous: unclipped, the result differs."""
    start, model = oracle.start_sample(), oracle.linear_tanh_model()
    _, clipped, _ = sigma_parity.loop_ours(Heun(**SD, **CLIP), 5, start, model, None)
    _, plain, _ = sigma_parity.loop_ours(Heun(**SD), 5, start, model, None)
    assert oracle.rel(clipped, plain) > 1e-2


@pytest.mark.parametrize("cls", [DPM2, DPM2Ancestral])
def test_dpm2_rejects_sample_prediction(cls):
    """diffusers' KDPM2 schedulers raise for x_0 models (in step): ours at construction."""
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        cls(prediction_type="sample")


def test_custom_timesteps():
    ts = [999, 850, 700, 500, 300, 120, 40]
    sigma_parity.check(Heun(**SD), None, timesteps=ts)


def test_call_layout():
    """2N - 1 model calls: diffusers' timesteps repeat (Heun) or interleave midpoints (DPM2)."""
    for cls in (Heun, DPM2, DPM2Ancestral):
        for n in (1, 2, 9):
            _, timesteps = cls(**SD).init(n, torch.zeros(2))
            assert len(timesteps) == 2 * n - 1
    _, ts = Heun().init(4, torch.zeros(2))
    assert ts[1] == ts[2] and ts[3] == ts[4]
    _, ts = DPM2().init(4, torch.zeros(2))
    assert torch.all(ts[0:-1:2] > ts[1::2]) and torch.all(ts[1::2] > ts[2::2])


@pytest.mark.parametrize(
    ("sched", "n", "strength"),
    [
        (Heun(**SD), 10, 0.6),
        (Heun(**SD, use_karras_sigmas=True, **CLIP), 25, 0.3),
        (DPM2(**SD), 10, 0.75),
        (DPM2(**SD, timestep_spacing="leading", timesteps_offset=1), 8, 0.5),
        (DPM2Ancestral(**SD), 10, 0.55),
        (DPM2Ancestral(**SD, use_karras_sigmas=True), 3, 0.4),
    ],
)
def test_image_to_image(sched, n, strength):
    """``strength=`` cuts the loop where diffusers' img2img pipelines do (two calls a step)."""
    clean, noise, model, noises = oracle.img2img_inputs(2 * n, tanh=False)
    timesteps, _, x = oracle.img2img_ours(sched, n, strength, clean, noise, model, noises)
    their_ts, _, theirs = oracle.img2img_diffusers(
        sched.to_config(), n, strength, clean, noise, model, noises
    )
    assert len(timesteps) == len(their_ts) == 2 * int(n * strength) - 1
    torch.testing.assert_close(timesteps, their_ts.to(torch.float64), rtol=1e-5, atol=1e-5)
    oracle.check(x, theirs, "PARITY img2img", type(sched).__name__, sigma_parity.F64_BOUND)
