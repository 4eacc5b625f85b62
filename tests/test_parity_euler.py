"""Euler and Euler ancestral against diffusers 0.42.1 over a grid of options and step counts.

Every option value is covered at least once (not every product), each at a few step
counts from 1 to 1000; see ``sigma_parity`` for how the loops are driven.
"""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import sigma_parity
import torch

import diffsched as ds

SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}
TRAINED = tuple(float(b) for b in np.linspace(0.0001 ** (1 / 3), 0.02 ** (1 / 3), 1000) ** 3)
CHURN = {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 20.0, "s_noise": 1.003}
ZERO_SNR = {"rescale_betas_zero_snr": True, "prediction_type": "angular_velocity"}

EULER_CASES = [
    (ds.Euler(), (1, 2, 10, 50, 1000)),
    (ds.Euler(**SD, timestep_spacing="leading", timesteps_offset=1), (1, 7, 30)),  # SD / SDXL
    (ds.Euler(**SD, timestep_spacing="trailing"), (1, 4, 25)),
    (ds.Euler(**SD, use_karras_sigmas=True), (2, 10, 50)),
    (ds.Euler(use_exponential_sigmas=True, prediction_type="angular_velocity"), (2, 15)),
    (ds.Euler(**SD, use_beta_sigmas=True), (2, 12)),
    (ds.Euler(beta_schedule="squared_cosine", prediction_type="sample"), (3, 20)),
    (ds.Euler(trained_betas=TRAINED, interpolation_type="log_linear"), (3, 20)),
    (ds.Euler(**SD, use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0), (5, 20)),
    (
        ds.Euler(
            **SD,
            prediction_type="angular_velocity",
            timestep_type="continuous",
            use_karras_sigmas=True,
        ),
        (4, 25),
    ),
    (ds.Euler(final_sigmas_type="sigma_min", timestep_spacing="trailing"), (1, 9)),
    (
        ds.Euler(
            **SD,
            rescale_betas_zero_snr=True,
            prediction_type="angular_velocity",
            timestep_spacing="trailing",
        ),
        (1, 10, 100),
    ),
    (ds.Euler(**SD, **CHURN), (5, 30)),
    (ds.Euler(**CHURN, prediction_type="angular_velocity", use_karras_sigmas=True), (6, 40)),
    (ds.Euler(s_churn=1.0, prediction_type="sample"), (10,)),
    (ds.Euler(num_train_steps=500, beta_end=0.03), (1, 25, 500)),
    # zero terminal SNR re-gridded: σ_max = 4096 (the clamped σ_{T-1}, below σ_{T-2}) is
    # timestep T - 1 for diffusers, the last training level at or below it
    (ds.Euler(**ZERO_SNR, use_karras_sigmas=True), (5, 30)),
    (ds.Euler(**ZERO_SNR, use_exponential_sigmas=True, final_sigmas_type="sigma_min"), (4,)),
    (ds.Euler(**ZERO_SNR, use_beta_sigmas=True, interpolation_type="log_linear"), (6,)),
]
ANCESTRAL_CASES = [
    (ds.EulerAncestral(), (1, 2, 10, 50, 1000)),
    (ds.EulerAncestral(**SD, timestep_spacing="leading", timesteps_offset=1), (1, 20)),
    (ds.EulerAncestral(prediction_type="angular_velocity", timestep_spacing="trailing"), (3, 30)),
    (
        ds.EulerAncestral(
            **SD,
            rescale_betas_zero_snr=True,
            prediction_type="angular_velocity",
            timestep_spacing="trailing",
        ),
        (1, 10),
    ),
    (ds.EulerAncestral(beta_schedule="squared_cosine", trained_betas=TRAINED), (4, 40)),
]


@pytest.mark.parametrize(("sched", "n"), oracle.grid(EULER_CASES + ANCESTRAL_CASES))
def test_parity_float64(sched, n):
    sigma_parity.check(sched, n)


@pytest.mark.parametrize(
    ("sched", "n"),
    [(ds.Euler(**SD), 20), (ds.Euler(**SD, **CHURN), 20), (ds.EulerAncestral(**SD), 20)],
)
def test_parity_float32(sched, n):
    sigma_parity.check(sched, n, dtype=torch.float32)


AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0]


@pytest.mark.parametrize("cls", [ds.Euler, ds.EulerAncestral])
def test_custom_sigmas(cls):
    """Align-Your-Steps' SD1.5 list, given as diffusers' pipelines give it."""
    sched = cls(**SD)
    r = sigma_parity.compare(sched, None, sigmas=AYS_SD15) if cls is ds.Euler else None
    if r is not None:
        assert r < sigma_parity.F64_BOUND
    _, timesteps = sched.init(None, torch.zeros(2), sigmas=AYS_SD15)
    assert len(timesteps) == 10


def test_custom_timesteps():
    sched = ds.Euler(**SD)
    ts = [999, 850, 700, 500, 300, 120, 40]
    assert sigma_parity.compare(sched, None, timesteps=ts) < sigma_parity.F64_BOUND


def test_init_noise_scale_follows_spacing():
    """diffusers starts linspace/trailing grids at σ_max, not sqrt(σ_max² + 1)."""
    acp = ds.Euler(**SD).alphas_cumprod
    sigma_max = np.sqrt((1 - acp[-1]) / acp[-1])
    linspace = ds.Euler(**SD).init_noise_scale(10)
    assert linspace == pytest.approx(
        np.float32(sigma_max) / np.sqrt(np.float32(sigma_max) ** 2 + 1)
    )
    assert ds.Euler(**SD, timestep_spacing="leading").init_noise_scale(10) == pytest.approx(1.0)
