"""TCD, DDIM inversion and SA-Solver against diffusers 0.42.1 over a grid of options and
step counts.

Every option value is covered at least once (not every product), each at a few step
counts from the smallest valid one to 1000; see ``sigma_parity`` for how the loops are
driven (stochastic steps get the same noise on both sides). Also: the noise diffusers
draws itself, with its own generator, fed to our steps; the inversion property of
``DDIMInverse``; SA-Solver's Adams weights against quadrature; configs; errors.
"""

from __future__ import annotations

import importlib
import json
import math
import warnings
from unittest import mock

import diffusers
import numpy as np
import oracle
import pytest
import sigma_parity
import torch
from scipy import integrate

from diffsched.exact import models
from diffsched.interop import config as config_io
from diffsched.interop import peer
from diffsched.methods.ddim import DDIM
from diffsched.methods.ddim_inverse import DDIMInverse
from diffsched.methods.sasolver import ConstantTau, SASolver, exp_moments, step_weights
from diffsched.methods.tcd import TCD, consistency_target

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning"  # diffusers' SA-Solver on numpy 2
)

SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}
LINEAR = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}
TRAINED = tuple(float(b) for b in np.linspace(0.0001 ** (1 / 3), 0.02 ** (1 / 3), 1000) ** 3)

TCD_CASES = [
    (TCD(), (1, 2, 4, 8, 50)),
    (TCD(eta=0.0), (1, 6)),
    (TCD(eta=1.0, prediction_type="sample"), (3, 20)),
    (TCD(prediction_type="angular_velocity", rescale_betas_zero_snr=True), (1, 4, 10)),
    (TCD(beta_schedule="squared_cosine", eta=0.8), (5, 25)),
    (TCD(trained_betas=TRAINED, num_original_steps=100, eta=0.9), (7, 100)),
    (TCD(num_train_steps=500, num_original_steps=25, eta=0.5), (1, 25)),
    (TCD(**LINEAR, num_original_steps=1000, eta=0.35), (200, 1000)),
]
INVERSE_CASES = [
    (DDIMInverse(), (1, 2, 10, 50)),
    (DDIMInverse(**SD, clip_denoised_sample=False, timesteps_offset=1), (1, 7, 30)),
    (
        DDIMInverse(
            **SD,
            timestep_spacing="trailing",
            prediction_type="angular_velocity",
            rescale_betas_zero_snr=True,
            clip_denoised_sample=False,
        ),
        (1, 4, 25),
    ),
    (
        DDIMInverse(
            prediction_type="sample", alpha_clip_strategy="alpha_zero", clip_sample_range=2.0
        ),
        (3, 20),
    ),
    (DDIMInverse(beta_schedule="squared_cosine", alpha_clip_strategy="alpha_zero"), (5, 40)),
    (DDIMInverse(trained_betas=TRAINED, timestep_spacing="trailing", clip_sample_range=0.5), (6,)),
    (DDIMInverse(num_train_steps=500, beta_end=0.03), (1, 25, 500)),
    (DDIMInverse(clip_denoised_sample=False), (1000,)),
]
SASOLVER_CASES = [
    (SASolver(), (1, 2, 3, 5, 10, 50)),
    (SASolver(timestep_spacing="trailing"), (1, 1000)),
    (SASolver(tau=0.0), (2, 10)),
    (SASolver(tau=1.0, predictor_order=3, corrector_order=4), (4, 20, 100)),
    (SASolver(predictor_order=4, corrector_order=1, tau=0.5, lower_order_final=False), (3, 6, 30)),
    (SASolver(predictor_order=1, corrector_order=3, algorithm_type="noise_prediction"), (2, 15)),
    (
        SASolver(
            algorithm_type="noise_prediction",
            prediction_type="angular_velocity",
            tau=0.8,
            predictor_order=3,
        ),
        (5, 25),
    ),
    (
        SASolver(
            algorithm_type="noise_prediction", prediction_type="sample", lower_order_final=False
        ),
        (4, 12),
    ),
    (SASolver(**SD, use_karras_sigmas=True, prediction_type="angular_velocity"), (2, 10, 30)),
    (SASolver(**SD, use_exponential_sigmas=True), (2, 12)),
    (SASolver(**SD, use_beta_sigmas=True, algorithm_type="noise_prediction"), (2, 12)),
    (SASolver(use_flow_sigmas=True, prediction_type="flow", flow_shift=3.0), (2, 4, 20)),
    (SASolver(use_flow_sigmas=True, prediction_type="angular_velocity"), (8,)),
    (SASolver(beta_schedule="squared_cosine", lambda_min_clipped=-5.1), (10, 25)),
    (
        SASolver(
            beta_schedule="squared_cosine", lambda_min_clipped=-5.1, timestep_spacing="trailing"
        ),
        (20,),
    ),
    (SASolver(**SD, timestep_spacing="leading", timesteps_offset=1), (1, 7, 30)),
    (
        SASolver(
            prediction_type="sample",
            thresholding=True,
            dynamic_thresholding_ratio=0.9,
            sample_max_value=1.5,
        ),
        (3, 10),
    ),
    (SASolver(trained_betas=TRAINED, tau=2.0), (6, 20)),
    (SASolver(num_train_steps=500, beta_end=0.03), (1, 25)),
]


@pytest.mark.parametrize(("sched", "n"), oracle.grid(TCD_CASES + INVERSE_CASES + SASOLVER_CASES))
def test_parity_float64(sched, n):
    sigma_parity.check(sched, n)


@pytest.mark.parametrize(
    ("sched", "n", "strength"), [(TCD(), 4, 0.5), (TCD(eta=0.7), 10, 0.2), (TCD(eta=0.0), 3, 0.9)]
)
def test_tcd_strength(sched, n, strength):
    """Image-to-image: the last floor(50 · strength) points of the original schedule."""
    sigma_parity.check(sched, n, strength=strength, name="TCD")


@pytest.mark.parametrize(
    ("sched", "n"), [(TCD(), 8), (DDIMInverse(**SD), 20), (SASolver(**SD), 20)]
)
def test_parity_float32(sched, n):
    sigma_parity.check(sched, n, dtype=torch.float32)


# -- the noise diffusers draws itself ------------------------------------------------------


def _diffusers_own_noise(sched, n, seed=123):
    """diffusers' loop with its own generator; (final sample, {call index: noise drawn})."""
    config = sched.to_config()
    d = peer.scheduler(config)
    d.set_timesteps(n)
    peer._double_grids(d)
    module = importlib.import_module(peer.MODULES[config["_class_name"]])
    original = module.randn_tensor
    drawn: dict[int, torch.Tensor] = {}
    step_index = [0]

    def recording(*args, **kwargs):
        z = original(*args, **kwargs)
        drawn[step_index[0]] = z.clone()
        return z

    model = oracle.linear_tanh_model()
    x = oracle.start_sample()
    generator = torch.Generator().manual_seed(seed)
    step_kwargs = dict(config.get("_diffsched") or {})
    with peer._double_tables(module), mock.patch.object(module, "randn_tensor", recording):
        for i, t in enumerate(d.timesteps):
            step_index[0] = i
            x = d.step(model(x, t), t, x, generator=generator, **step_kwargs).prev_sample
    return x, drawn


@pytest.mark.parametrize(("sched", "n"), [(TCD(eta=0.6), 8), (SASolver(tau=1.0), 12)])
def test_parity_with_diffusers_own_noise(sched, n):
    theirs, drawn = _diffusers_own_noise(sched, n)
    model = oracle.linear_tanh_model()
    x = oracle.start_sample()
    state, timesteps = sched.init(n, x)
    for i, t in enumerate(timesteps):
        noise = drawn.get(i, torch.zeros_like(x))  # TCD draws nothing at its last step
        state, x = sched.step(state, x, model(x, t), noise=noise)
    assert len(drawn) == (n - 1 if isinstance(sched, TCD) else n)
    oracle.check(
        x, theirs, "PARITY diffusers' own noise", type(sched).__name__, sigma_parity.F64_BOUND
    )


# -- TCD -----------------------------------------------------------------------------------


def test_tcd_target_in_float32_as_diffusers():
    """s = floor((1 - γ) t') is formed in float32, as torch forms a float times an integer."""
    nxt = np.arange(1000)
    for gamma in (0.3, 0.35, 0.8, 0.9):
        theirs = torch.floor((1 - gamma) * torch.from_numpy(nxt)).to(torch.int64).numpy()
        assert np.array_equal(consistency_target(nxt, gamma), theirs)
    assert consistency_target(np.array([90]), 0.3)[0] == 63  # float64 would give 62


def test_tcd_eta_zero_is_deterministic_and_lands_on_alpha_zero():
    sched = TCD(eta=0.0)
    assert sched.deterministic and not TCD().deterministic
    acp = sched.alphas_cumprod
    start, end = sched.noise_levels(4)
    assert end == acp[0] and start == acp[sched.timesteps(4)[0]]


def test_tcd_inert_keys_read_without_warning():
    config = dict(diffusers.TCDScheduler(clip_sample=True, timestep_scaling=3.0).config)
    config["_class_name"] = "TCDScheduler"
    with _registered(), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config_io.from_config(config) == TCD()


# -- DDIM inversion ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spacing", "prediction_type"), [("leading", "noise"), ("trailing", "angular_velocity")]
)
def test_inversion_then_ddim_returns_to_the_start(spacing, prediction_type):
    """Inverting N steps, then sampling N steps with DDIM (exact model of a Gaussian
    mixture) returns to the data, with a first-order error in 1/N."""
    options = {"timestep_spacing": spacing, "prediction_type": prediction_type}
    inverse = DDIMInverse(clip_denoised_sample=False, **options)
    forward = DDIM(clip_denoised_sample=False, **options)
    mixture = {"dim": 4, "std_range": (0.3, 0.6)}
    model = models.make_model("gmm", inverse.alphas_cumprod, prediction_type, **mixture)
    data = models.GaussianMixture(**mixture)
    rng = np.random.default_rng(0)
    k = rng.integers(0, len(data.weights), 16)
    x0 = torch.from_numpy(data.means[k] + data.stds[k, None] * rng.standard_normal((16, 4)))
    errors = []
    for n in (50, 250):
        _, latent = oracle.run_ours(inverse, n, x0, model)
        assert 0.8 < float(latent.std()) < 1.3  # noise-like
        _, back = oracle.run_ours(forward, n, latent, model)
        errors.append(oracle.rel(back, x0))
    assert errors[1] < 2e-2
    assert errors[1] < errors[0] / 3


def test_inverse_timesteps_ascend_and_start_below_zero():
    sched = DDIMInverse()
    _, timesteps = sched.init(10, torch.zeros(2))
    assert timesteps.tolist() == list(range(0, 1000, 100))
    assert sched.noise_levels(10) == (1.0, sched.alphas_cumprod[900])
    zero = DDIMInverse(alpha_clip_strategy="alpha_zero")
    assert zero.noise_levels(10)[0] == zero.alphas_cumprod[0]


def test_inverse_reads_diffusers_deprecated_set_alpha_to_zero():
    """diffusers reads set_alpha_to_zero as set_alpha_to_one with the same value (a quirk)."""
    config = {**DDIMInverse().to_config(), "set_alpha_to_one": True, "set_alpha_to_zero": False}
    with _registered():
        sched = config_io.from_config(config)
        assert sched == DDIMInverse(alpha_clip_strategy="alpha_zero")
        assert config_io.from_config({**config, "set_alpha_to_zero": None}) == DDIMInverse()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' deprecation notice
        r = sigma_parity.compare(sched, 10, config=config)
    assert r < sigma_parity.F64_BOUND


# -- SA-Solver -----------------------------------------------------------------------------


@pytest.mark.parametrize("x", [-12.0, -1.6, -1.4, -0.3, 0.0, 1e-9, 0.7, 1.49, 1.51, 4.0, 40.0])
def test_exp_moments(x):
    for m, value in enumerate(exp_moments(x, 3)):
        want = integrate.quad(lambda s, m=m: math.exp(-x * s) * s**m, 0, 1, epsabs=0, epsrel=1e-13)
        assert value == pytest.approx(want[0], rel=1e-12)


@pytest.mark.parametrize("c", [1.0, 2.0, 5.0, -1.0])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_adams_weights_integrate_the_lagrange_basis(c, order):
    """W_k = ∫ e^{-c (λ_t - λ)} ℓ_k(λ) dλ over [λ_s, λ_t] (eq. 4), by quadrature."""
    rng = np.random.default_rng(order)
    lam_from, lam_to = -1.3, -0.4
    nodes = lam_from - np.concatenate([[0.0], np.cumsum(rng.uniform(0.3, 1.0, order - 1))])
    got = step_weights(lam_to, lam_from, nodes, c, unweighted_slope=False)
    for k in range(order):

        def integrand(lam, k=k):
            basis = np.prod(
                [(lam - nodes[j]) / (nodes[k] - nodes[j]) for j in range(order) if j != k]
            )
            return math.exp(-c * (lam_to - lam)) * basis

        want = integrate.quad(integrand, lam_from, lam_to, epsabs=0, epsrel=1e-13)[0]
        assert got[k] == pytest.approx(want, rel=1e-11, abs=1e-14)
    # weights of a Lagrange basis reproduce the integral of the weight itself
    assert got.sum() == pytest.approx(-math.expm1(-c * (lam_to - lam_from)) / c, rel=1e-12)


def test_sasolver_tau_zero_is_deterministic_and_default_tau_is_mid_trajectory():
    assert SASolver(tau=0.0).deterministic and not SASolver().deterministic
    sched = SASolver()
    timesteps = sched.grid(10).timesteps
    assert sched.taus(timesteps).tolist() == [float(200 <= t <= 800) for t in timesteps]
    tab = sched.tableau(10)
    assert np.all((tab.noise > 0) == (sched.taus(timesteps) > 0))


def test_sasolver_threshold_in_noise_prediction():
    """diffusers fails there; here ε̂ is re-derived from the thresholded x̂_0: the same loop
    when no |x̂_0| exceeds 1 (s clamps to 1), another one when the threshold bites."""
    base = SASolver(algorithm_type="noise_prediction", prediction_type="sample", tau=0.0)
    model = oracle.linear_tanh_model()  # x̂_0 = tanh(...) lies in (-1, 1)
    x = oracle.start_sample()
    _, plain = oracle.run_ours(base, 8, x, model)
    _, thresholded = oracle.run_ours(base.replace(thresholding=True), 8, x, model)
    assert oracle.rel(thresholded, plain) < 1e-13
    _, bitten = oracle.run_ours(base.replace(thresholding=True), 8, x, lambda y, t: 3 * model(y, t))
    _, unbitten = oracle.run_ours(base, 8, x, lambda y, t: 3 * model(y, t))
    assert oracle.rel(bitten, unbitten) > 1e-3


def test_sasolver_constant_tau_in_configs():
    """A constant τ is a JSON number in the config that diffusers can call as tau_func."""
    config = SASolver(tau=0.5).to_config()
    assert isinstance(config["tau_func"], ConstantTau) and config["tau_func"](999) == 0.5
    text = json.dumps(config)
    assert json.loads(text)["tau_func"] == 0.5
    assert diffusers.SASolverScheduler.from_config(config).tau_func(10) == 0.5
    assert SASolver().to_config()["tau_func"] is None
    with _registered():
        assert config_io.from_config(json.loads(text)) == SASolver(tau=0.5)
        assert config_io.from_config(SASolver().to_config()) == SASolver()
        with pytest.raises(TypeError, match="tau_func"):
            config_io.from_config({**config, "tau_func": "lambda t: 1"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"use_flow_sigmas": True, "use_karras_sigmas": True}, "use_flow_sigmas"),
        ({"prediction_type": "flow"}, "use_flow_sigmas=True"),
        (
            {
                "prediction_type": "flow",
                "use_flow_sigmas": True,
                "algorithm_type": "noise_prediction",
            },
            "data_prediction",
        ),
        ({"predictor_order": 5}, "predictor_order"),
        ({"corrector_order": 0}, "corrector_order"),
        ({"tau": -1.0}, "tau"),
        ({"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
    ],
)
def test_sasolver_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SASolver(**kwargs)


def test_errors_of_tcd_and_inverse():
    with pytest.raises(ValueError, match="eta"):
        TCD(eta=1.5)
    with pytest.raises(ValueError, match="num_original_steps"):
        TCD().init(51, torch.zeros(2))
    with pytest.raises(ValueError, match="alpha_zero"):
        DDIMInverse(prediction_type="sample").init(4, torch.zeros(2))
    with pytest.raises(ValueError, match="timestep_spacing"):
        DDIMInverse(timestep_spacing="linspace")


def _registered():
    classes = {cls.DIFFUSERS_CLASS: cls for cls in (TCD, DDIMInverse, SASolver)}
    return mock.patch.object(config_io, "registry", lambda: classes)
