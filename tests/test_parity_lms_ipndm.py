"""LMS and iPNDM against diffusers 0.42.1 over a grid of options and step counts.

Every option value is covered at least once (not every product), each at a few step
counts from the smallest to 1000; see ``sigma_parity`` for how the loops are driven.
diffusers' IPNDMScheduler builds its grid at torch's default dtype, float32, which the
peer's float64 tables do not reach: the float64 comparisons evaluate it in float64
(:func:`oracle.float64_default`), and :func:`test_ipndm_grid_is_diffusers_float32_grid`
bounds the difference to diffusers' float32 grid.
"""

from __future__ import annotations

import inspect

import diffusers
import numpy as np
import oracle
import pytest
import sigma_parity
import torch
from scipy import integrate

from diffsched.interop import peer
from diffsched.methods.ipndm import IPNDM
from diffsched.methods.lms import LMS, lms_coefficients

SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}
TRAINED = tuple(float(b) for b in np.linspace(0.0001 ** (1 / 3), 0.02 ** (1 / 3), 1000) ** 3)
# explicit IPNDM levels (diffusers' trained_betas): v-diffusion's cosine schedule, from pure
# noise; and one from below pure noise to a noisy final sample
COSINE = tuple(float(b) for b in np.sin(np.linspace(1.0, 0.0, 16) * np.pi / 2))
PARTIAL = tuple(float(b) for b in 0.97 * np.sin(np.linspace(0.9, 0.05, 9) * np.pi / 2))

LMS_CASES = [
    (LMS(), (1, 2, 3, 4, 5, 10, 50, 1000)),
    (LMS(**SD, timestep_spacing="leading", timesteps_offset=1), (1, 7, 30)),  # SD 1.x
    (LMS(**SD, timestep_spacing="trailing", prediction_type="angular_velocity"), (1, 4, 25)),
    (LMS(**SD, use_karras_sigmas=True), (2, 10, 50)),
    (LMS(use_exponential_sigmas=True, prediction_type="angular_velocity"), (2, 15)),
    (LMS(**SD, use_beta_sigmas=True, order=3), (2, 12)),
    (LMS(beta_schedule="squared_cosine", prediction_type="sample"), (3, 20)),
    (LMS(trained_betas=TRAINED, order=2), (1, 3, 20)),
    (LMS(**SD, order=1), (1, 10)),
    (LMS(num_train_steps=500, beta_end=0.03, timestep_spacing="leading"), (1, 25, 500)),
]
IPNDM_CASES = [
    (IPNDM(), (2, 3, 4, 5, 10, 50, 1000)),
    (IPNDM(num_train_steps=500), (7,)),
    (IPNDM(noise_grid=COSINE), (len(COSINE) - 1,)),
    (IPNDM(noise_grid=PARTIAL), (len(PARTIAL) - 1,)),
]


@pytest.mark.parametrize(("sched", "n"), oracle.grid(LMS_CASES + IPNDM_CASES))
def test_parity_float64(sched, n):
    with oracle.float64_default(isinstance(sched, IPNDM)):
        sigma_parity.check(sched, n)


@pytest.mark.parametrize(("sched", "n"), [(LMS(**SD), 20), (IPNDM(), 20)])
def test_parity_float32(sched, n):
    """Against diffusers as it runs: float32 tables, float32 samples."""
    sigma_parity.check(sched, n, dtype=torch.float32)


def test_ipndm_one_step_ignores_the_model():
    """N = 1 goes from pure noise (a = 0) to b = 0 with x̂_0 clamped to 0: both give zeros."""
    sched = IPNDM()
    start, model = oracle.start_sample(), oracle.linear_tanh_model()
    _, ours, _ = sigma_parity.loop_ours(sched, 1, start, model, None)
    with oracle.float64_default():
        _, theirs = peer.run(sched.to_config(), model, start, 1)
    assert torch.count_nonzero(ours) == 0 and torch.count_nonzero(theirs) == 0


@pytest.mark.parametrize("n", [3, 50, 1000])
def test_ipndm_grid_is_diffusers_float32_grid(n):
    """Our float64 grid, rounded, is diffusers' float32 one up to the last bit of its sin."""
    d = diffusers.IPNDMScheduler()
    d.set_timesteps(n)
    a, b, ts = IPNDM().grid(n)
    np.testing.assert_allclose(b, d.betas.double().numpy(), rtol=2.0**-21, atol=0)  # 4 ulp
    np.testing.assert_allclose(ts, d.timesteps.double().numpy(), rtol=0, atol=2e-5)
    assert a[0] == 0.0 and b[0] == 1.0 and b[-1] == 0.0


@pytest.mark.parametrize(
    ("config", "n"),
    [
        ({}, 10),
        ({"use_karras_sigmas": True, **SD}, 25),
        ({"timestep_spacing": "trailing", "beta_schedule": "squared_cosine"}, 8),
    ],
)
@pytest.mark.parametrize("order", [1, 2, 3, 4, 6])
def test_lms_coefficients_are_quad(config, n, order):
    """Gauss-Legendre (eq. 2) against diffusers' get_lms_coefficient (scipy's quad)."""
    d = peer.scheduler(LMS(**config).to_config())
    d.set_timesteps(n)
    d.sigmas = d.sigmas.double()  # its float32 grid's values, integrated in float64
    sig = d.sigmas.numpy()
    ours = lms_coefficients(sig, order)
    for i in range(n):
        p = min(i + 1, order)
        theirs = [d.get_lms_coefficient(p, i, k) for k in range(p)]
        np.testing.assert_allclose(ours[i, :p], theirs, rtol=1e-12, atol=1e-12)
        assert np.all(ours[i, p:] == 0)
        # and against quad on our own Lagrange basis, to its tolerance
        past = sig[i - np.arange(p)]
        for k in range(p):
            node, others = past[k], np.delete(past, k)

            def basis(tau, node=node, others=others):
                return np.prod((tau - others) / (node - others))

            value = integrate.quad(basis, sig[i], sig[i + 1], epsabs=0, epsrel=1e-13)[0]
            assert abs(ours[i, k] - value) <= 1e-12 * max(1.0, abs(value))


@pytest.mark.parametrize("sched", [LMS(order=3), IPNDM(noise_grid=COSINE)])
def test_options_are_the_diffusers_init_arguments(sched):
    config = sched.to_config()
    cls = getattr(diffusers, config["_class_name"])
    keys = {k for k in config if not k.startswith("_")}
    assert keys == set(inspect.signature(cls.__init__).parameters) - {"self"}
    built = cls.from_config(config)
    for key in keys:
        assert built.config[key] == config[key]


def test_lms_order_is_passed_to_step():
    assert LMS(order=2).to_config()["_diffsched"] == {"order": 2}
    with pytest.raises(ValueError, match="order"):
        LMS(order=0)


def test_ipndm_options():
    assert IPNDM().prediction_type == "angular_velocity"
    for lacking in ("beta_schedule", "beta_start", "prediction_type", "trained_betas"):
        with pytest.raises(TypeError, match=lacking):
            IPNDM(**{lacking: None})
    with pytest.raises(ValueError, match="decreasing values in"):
        IPNDM(noise_grid=[0.5, 0.6, 0.0])
    with pytest.raises(ValueError, match="decreasing values in"):
        IPNDM(noise_grid=[1.5, 0.0])
    with pytest.raises(ValueError, match="runs 15 steps, got num_steps=10"):
        IPNDM(noise_grid=COSINE).init(10, torch.zeros(2))
    assert IPNDM(noise_grid=list(COSINE)) == IPNDM(noise_grid=COSINE)
    assert IPNDM().noise_levels(10) == (0.0, 1.0)
