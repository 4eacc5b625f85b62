"""DDPM and EDM Euler against diffusers 0.42.1 over a grid of options and step counts.

Every option value is covered at least once (not every product), each at a few step
counts from 1 to 1000; see ``sigma_parity`` for how the loops are driven. Two diffusers
quirks shape the grid:

* ``DDPMScheduler(variance_type="fixed_large_log")`` takes the square root of log β_t and
  returns NaN; ours is its log-space form of fixed_large, compared against fixed_large.
* diffusers' sigmoid betas come from ``torch.linspace`` without a dtype, so its whole ᾱ table
  stays float32 under the harness's float64 patch; those cases build diffusers' scheduler with
  float64 as torch's default dtype (its formulas, in double precision), and the float32
  table is compared with ours separately.
"""

from __future__ import annotations

import inspect

import numpy as np
import oracle
import pytest
import sigma_parity
import torch

from diffsched.interop import peer
from diffsched.methods.ddim import DDIM
from diffsched.methods.ddpm import DDPM, FIXED_VARIANCES
from diffsched.methods.edm import EDMEuler

V, X0 = "angular_velocity", "sample"
SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}
TRAINED = tuple(float(b) for b in np.linspace(0.0001 ** (1 / 3), 0.02 ** (1 / 3), 1000) ** 3)
THRESHOLD = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 3.0}
ZERO_SNR = {
    "rescale_betas_zero_snr": True,
    "prediction_type": "angular_velocity",
    "timestep_spacing": "trailing",
}
LARGE = {"variance_type": "fixed_large"}  # diffusers' stand-in for fixed_large_log (NaN there)
CHURN = {"s_churn": 2.0, "s_tmin": 0.05, "s_tmax": 30.0, "s_noise": 1.003}

# (scheduler, step counts, diffusers config keys replacing ours)
DDPM_CASES = [
    (DDPM(), (1, 2, 10, 50, 1000), None),
    (DDPM(**SD, timesteps_offset=1), (1, 7, 30), None),  # last t = 1: noise at the last step
    (DDPM(**SD, timestep_spacing="linspace", variance_type="fixed_large"), (1, 7, 40), None),
    (
        DDPM(timestep_spacing="trailing", variance_type="fixed_small_log", prediction_type=X0),
        (1, 4, 25),
        None,
    ),
    (DDPM(beta_schedule="squared_cosine", prediction_type=V, clip_sample_range=0.5), (3, 20), None),
    (DDPM(beta_schedule="sigmoid", timestep_spacing="linspace"), (5, 30, 1000), None),
    (DDPM(beta_schedule="sigmoid", prediction_type="sample", clip_sample_range=0.3), (4,), None),
    (
        DDPM(trained_betas=TRAINED, clip_denoised_sample=False, prediction_type="angular_velocity"),
        (3, 20),
        None,
    ),
    (DDPM(**THRESHOLD), (4, 25), None),
    (DDPM(**THRESHOLD, prediction_type="sample", timestep_spacing="trailing"), (6,), None),
    (DDPM(**SD, **ZERO_SNR), (1, 10, 100), None),
    (DDPM(**ZERO_SNR, variance_type="fixed_large"), (5,), None),
    (DDPM(num_train_steps=500, beta_end=0.03, variance_type="fixed_large_log"), (1, 25), LARGE),
    (
        DDPM(variance_type="fixed_large_log", timestep_spacing="trailing", clip_sample_range=2.0),
        (3, 15),
        LARGE,
    ),
]
EDM_CASES = [
    (EDMEuler(), (1, 2, 10, 50, 1000), None),
    (EDMEuler(sigma_schedule="exponential"), (1, 3, 25), None),
    (
        EDMEuler(prediction_type=V, rho=5.0, sigma_min=0.01, sigma_max=20.0, sigma_data=1.0),
        (2, 13),
        None,
    ),
    (EDMEuler(final_sigmas_type="sigma_min"), (2, 9), None),
    (
        EDMEuler(sigma_schedule="exponential", final_sigmas_type="sigma_min", prediction_type=V),
        (4, 16),
        None,
    ),
    (EDMEuler(**CHURN), (5, 20), None),
    (EDMEuler(num_train_steps=500, sigma_schedule="exponential", s_churn=1.0), (10,), None),
]


@pytest.mark.parametrize(("sched", "n", "theirs"), oracle.grid(DDPM_CASES + EDM_CASES))
def test_parity_float64(sched, n, theirs):
    config = sched.to_config() | (theirs or {})
    # diffusers' sigmoid betas in double precision (see the module docstring)
    with oracle.float64_default(getattr(sched, "beta_schedule", None) == "sigmoid"):
        sigma_parity.check(sched, n, config=config)


@pytest.mark.parametrize(
    ("sched", "n"),
    [(DDPM(**SD), 20), (DDPM(**THRESHOLD, variance_type="fixed_large"), 20), (EDMEuler(), 20)],
)
def test_parity_float32(sched, n):
    sigma_parity.check(sched, n, dtype=torch.float32)


def test_grid_covers_every_option_value():
    """The grid above reaches every value of every option (guards against edits of it)."""
    seen = oracle.values_seen(DDPM_CASES + EDM_CASES)
    for cls in (DDPM, EDMEuler):
        name = cls.__name__
        assert set(cls.PREDICTION_TYPES) <= seen[f"{name}.prediction_type"]
        assert {1, 1000} <= seen[f"{name}.steps"]
    assert {"linear", "quadratic", "squared_cosine", "sigmoid"} <= seen["DDPM.beta_schedule"]
    assert {True, False} <= seen["DDPM.trained_betas"]
    assert {"leading", "linspace", "trailing"} <= seen["DDPM.timestep_spacing"]
    assert {0, 1} <= seen["DDPM.timesteps_offset"]
    assert set(FIXED_VARIANCES) <= seen["DDPM.variance_type"]
    assert {True, False} <= seen["DDPM.clip_denoised_sample"]
    assert len(seen["DDPM.clip_sample_range"]) >= 3
    assert True in seen["DDPM.thresholding"]
    assert True in seen["DDPM.rescale_betas_zero_snr"]
    assert len(seen["DDPM.num_train_steps"]) >= 2
    assert {"karras", "exponential"} <= seen["EDMEuler.sigma_schedule"]
    assert {"zero", "sigma_min"} <= seen["EDMEuler.final_sigmas_type"]
    for option in ("sigma_min", "sigma_max", "sigma_data", "rho", "num_train_steps", "s_churn"):
        assert len(seen[f"EDMEuler.{option}"]) >= 2, option


# -- custom grids and image-to-image ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sched", "timesteps"),
    [
        (DDPM(**SD), [999, 850, 700, 500, 300, 120, 0]),
        (DDPM(variance_type="fixed_large", prediction_type="angular_velocity"), [900, 411, 40]),
    ],
)
def test_ddpm_custom_timesteps(sched, timesteps):
    """diffusers steps to the next listed timestep (and adds noise at a last t > 0)."""
    sigma_parity.check(sched, None, timesteps=timesteps)


def test_ddpm_custom_timesteps_checked():
    sched = DDPM()
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sched.init(None, x, timesteps=[500, 500, 10])
    with pytest.raises(ValueError, match=r"must lie in \[0, 999\]"):
        sched.init(None, x, timesteps=[1000, 10])
    with pytest.raises(ValueError, match="list of integers"):
        sched.init(None, x, timesteps=[500.5, 10])


def test_edm_custom_sigmas():
    """Our sigmas are levels; diffusers' EDM set_timesteps(sigmas=) takes positions on the
    karras ramp (0 at σ_max, 1 at σ_min), so the same grid is given to it as those."""
    sched = EDMEuler(rho=6.0, prediction_type="angular_velocity")
    ramp = np.array([0.0, 0.1, 0.35, 0.6, 0.8, 1.0])
    lo, hi = sched.sigma_min ** (1 / sched.rho), sched.sigma_max ** (1 / sched.rho)
    levels = [*((hi + ramp * (lo - hi)) ** sched.rho), 0.0]
    sigma_parity.check(sched, None, sigmas=levels, set_timesteps={"sigmas": torch.tensor(ramp)})
    # the default grid given as custom levels is the default loop
    default = sched.program(8)
    sig = (hi + np.linspace(0, 1, 8) * (lo - hi)) ** sched.rho
    custom = sched.program(None, sigmas=[*sig, 0.0])
    np.testing.assert_allclose(custom.coefs, default.coefs, rtol=1e-12, equal_nan=True)
    with pytest.raises(ValueError, match="non-increasing"):
        sched.init(None, torch.zeros(2, 3), sigmas=[1.0, 2.0, 0.0])


@pytest.mark.parametrize(
    ("sched", "n", "strength"),
    [
        (DDPM(**SD, timesteps_offset=1), 20, 0.6),
        (DDPM(timestep_spacing="trailing", variance_type="fixed_large"), 9, 0.5),
        (EDMEuler(), 12, 0.75),
        (EDMEuler(sigma_schedule="exponential", **CHURN), 10, 0.3),
    ],
)
def test_strength(sched, n, strength):
    clean, noise, model, noises = oracle.img2img_inputs(n)
    ts, _, x = oracle.img2img_ours(sched, n, strength, clean, noise, model, noises)
    their_ts, _, theirs = oracle.img2img_diffusers(
        sched.to_config(), n, strength, clean, noise, model, noises
    )
    assert len(ts) == len(their_ts) == int(n * strength)
    np.testing.assert_allclose(np.asarray(ts, np.float64), their_ts.double().numpy(), rtol=1e-6)
    oracle.check(x, theirs, "PARITY", type(sched).__name__, sigma_parity.F64_BOUND)


# -- options, configs and diffusers' quirks --------------------------------------------------


def test_diffusers_fixed_large_log_is_nan():
    """Why fixed_large_log is compared against fixed_large: diffusers returns NaN."""
    config = DDPM(variance_type="fixed_large_log").to_config()
    model = oracle.linear_tanh_model()
    _, theirs = peer.run(config, model, oracle.start_sample(), 5, noises=oracle.noise_list(5))
    assert not torch.isfinite(theirs).all()


def test_sigmoid_betas_match_diffusers_float32_table():
    ours = DDPM(beta_schedule="sigmoid", beta_start=0.0002, beta_end=0.03)
    d = peer.scheduler(ours.to_config(), float64=False)
    assert d.betas.dtype == torch.float32
    np.testing.assert_allclose(d.betas.double().numpy(), ours.betas, rtol=1e-6)
    np.testing.assert_allclose(d.alphas_cumprod.double().numpy(), ours.alphas_cumprod, rtol=1e-5)


@pytest.mark.parametrize("sched", [DDPM(**THRESHOLD), EDMEuler(**CHURN)])
def test_config_keys_are_diffusers_init_arguments(sched):
    config = sched.to_config()
    module = peer.module_of(config)
    accepted = set(inspect.signature(getattr(module, config["_class_name"]).__init__).parameters)
    keys = {k for k in config if not k.startswith("_")}
    assert keys == accepted - {"self"}


def test_edm_has_no_betas():
    with pytest.raises(TypeError):
        EDMEuler(beta_schedule="linear")  # type: ignore[call-arg]
    assert not hasattr(EDMEuler(), "alphas_cumprod")
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        EDMEuler(prediction_type="sample")
    with pytest.raises(ValueError, match="sigma_min must be below"):
        EDMEuler(sigma_min=100.0)


def test_noise_levels():
    sched = EDMEuler(final_sigmas_type="sigma_min")
    first, last = sched.noise_levels(10)
    sig = np.float32(sched.sigma_max), np.float32(sched.sigma_min)
    assert first == pytest.approx(1 / (1 + float(sig[0]) ** 2))
    assert last == pytest.approx(1 / (1 + float(sig[1]) ** 2))
    assert EDMEuler().noise_levels(10)[1] == 1.0
    ddpm = DDPM(timestep_spacing="trailing")
    assert ddpm.noise_levels(10) == (ddpm.alphas_cumprod[999], 1.0)
    assert ddpm.noise_levels(10, strength=0.5) == (ddpm.alphas_cumprod[499], 1.0)


def test_ddpm_is_ddim_with_eta_one_without_clipping():
    """The posterior mean of eq. 7 equals DDIM's eq. 12 with η = 1 when x̂_0 is not clipped."""
    x, model, noises = oracle.start_sample(), oracle.linear_tanh_model(), oracle.noise_list(20)
    _, ddpm = oracle.run_ours(DDPM(clip_denoised_sample=False), 20, x, model, noises=noises)
    ddim = DDIM(clip_denoised_sample=False, eta=1.0)
    _, theirs = oracle.run_ours(ddim, 20, x, model, noises=noises)
    assert oracle.rel(ddpm, theirs) < 1e-12
