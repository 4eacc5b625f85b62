"""DPM-Solver multistep (and its inverse) against diffusers 0.42.1 over a grid of options.

Every option value is covered at least once (not every product), each at a few step counts
from 1 to 1000; see ``sigma_parity`` for how the loops are driven. Where diffusers returns
NaN or raises (a repeated level, third-order sde-dpmsolver) the tests say so and check
that ours is finite and right.
"""

from __future__ import annotations

import inspect
import math

import diffusers
import numpy as np
import oracle
import pytest
import sigma_parity
import torch

from diffsched.core.options import diffusers_options
from diffsched.interop import peer
from diffsched.methods import _dpm_solver_coefficients as coefficients
from diffsched.methods.dpmsolver import DPMSolverMultistep, DPMSolverMultistepInverse
from diffsched.schedules import solver_grid

SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}
SD15 = {**SD, "timesteps_offset": 1}  # Stable Diffusion 1.5's scheduler config
TRAINED = tuple(float(b) for b in np.linspace(0.0001 ** (1 / 3), 0.02 ** (1 / 3), 1000) ** 3)
THRESHOLD = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}
SIGMA_MIN = {"final_sigmas_type": "sigma_min"}
ZERO_SNR = {"rescale_betas_zero_snr": True, "prediction_type": "angular_velocity"}
D = DPMSolverMultistep
INV = DPMSolverMultistepInverse

FORWARD_CASES = [
    (D(), (1, 2, 3, 10, 25)),
    (D(timestep_spacing="trailing", solver_order=3), (1, 4, 1000)),  # every training step
    (D(**SD15, use_karras_sigmas=True), (1, 5, 20, 50)),  # DPM++ 2M Karras
    (D(**SD15, use_karras_sigmas=True, algorithm_type="sde-dpmsolver++"), (2, 20, 30)),
    (D(**SD, timestep_spacing="leading", timesteps_offset=1, solver_type="heun"), (3, 16)),
    (D(**SD, solver_order=3, lower_order_final=False), (4, 12)),
    (D(solver_order=1, prediction_type="angular_velocity"), (1, 8)),
    (D(algorithm_type="dpmsolver", **SIGMA_MIN), (1, 3, 20)),
    (D(algorithm_type="dpmsolver", solver_order=3, solver_type="heun", **SIGMA_MIN), (5, 18)),
    (D(algorithm_type="sde-dpmsolver", **SIGMA_MIN, prediction_type="sample"), (2, 12)),
    (D(algorithm_type="sde-dpmsolver", solver_type="heun", **SIGMA_MIN), (7, 16)),
    (D(algorithm_type="sde-dpmsolver++", solver_order=3, euler_at_final=True), (6, 20)),
    (D(algorithm_type="sde-dpmsolver++", solver_type="heun", solver_order=3), (3, 17)),
    (D(euler_at_final=True, solver_order=3, lower_order_final=False), (5, 20)),
    (D(**SD, use_lu_lambdas=True), (2, 16)),
    (D(**SD, use_exponential_sigmas=True, prediction_type="sample", **SIGMA_MIN), (2, 12)),
    (D(use_beta_sigmas=True, prediction_type="angular_velocity"), (2, 12)),
    (D(beta_schedule="squared_cosine", lambda_min_clipped=-5.1), (1, 10, 30)),
    (D(beta_schedule="squared_cosine", lambda_min_clipped=-5.1, use_karras_sigmas=True), (9,)),
    (D(beta_schedule="squared_cosine", timestep_spacing="trailing", lambda_min_clipped=-3), (10,)),
    (D(beta_schedule="squared_cosine", timestep_spacing="leading", lambda_min_clipped=-5), (7,)),
    (D(trained_betas=TRAINED, solver_order=3), (3, 20)),
    (D(**SD, **THRESHOLD, prediction_type="angular_velocity"), (2, 12)),
    (D(**THRESHOLD, algorithm_type="dpmsolver", **SIGMA_MIN, prediction_type="sample"), (9,)),
    (D(**THRESHOLD, algorithm_type="sde-dpmsolver", solver_type="heun", **SIGMA_MIN), (6,)),
    (D(use_flow_sigmas=True, prediction_type="flow", flow_shift=3.0), (1, 10, 28)),
    (D(use_flow_sigmas=True, prediction_type="flow", solver_order=3, **SIGMA_MIN), (12,)),
    (D(use_flow_sigmas=True, prediction_type="flow", **THRESHOLD), (8,)),
    (D(use_flow_sigmas=True, algorithm_type="sde-dpmsolver++", prediction_type="flow"), (9,)),
    (D(**SD, prediction_type="flow"), (6,)),  # x̂_0 = x - σ v with the grid's σ, as diffusers
    # a v model on flow levels in the ε form: diffusers' ε̂ = σ x + α v (α = 1 - σ there)
    (
        D(
            use_flow_sigmas=True,
            prediction_type="angular_velocity",
            algorithm_type="dpmsolver",
            **SIGMA_MIN,
        ),
        (2, 9),
    ),
    (
        D(
            **SD,
            rescale_betas_zero_snr=True,
            prediction_type="angular_velocity",
            timestep_spacing="trailing",
        ),
        (1, 10, 30),
    ),
    (D(num_train_steps=500, beta_end=0.03, timestep_spacing="leading"), (1, 25, 499)),
    # zero terminal SNR re-gridded: σ_max is the clamped σ_{T-1} = 4096, below σ_{T-2}, and
    # diffusers maps it to timestep T - 1 (the last training level at or below it)
    (D(**ZERO_SNR, use_karras_sigmas=True, **SIGMA_MIN), (5, 20)),
    (D(**ZERO_SNR, use_exponential_sigmas=True, algorithm_type="sde-dpmsolver++"), (7,)),
]
INVERSE_CASES = [
    (INV(), (1, 2, 3, 10, 25)),
    (INV(timestep_spacing="trailing"), (2, 6, 14)),  # N = 1: one step of h = 0, the identity
    (INV(**SD, timestep_spacing="leading", timesteps_offset=1, solver_order=3), (4, 20)),
    (INV(**SD, use_karras_sigmas=True, solver_order=1), (2, 10)),
    (INV(use_exponential_sigmas=True), (3, 12)),
    (INV(use_beta_sigmas=True, prediction_type="angular_velocity"), (3, 12)),
    (INV(algorithm_type="dpmsolver", solver_type="heun"), (3, 12)),
    (INV(algorithm_type="dpmsolver", prediction_type="sample", **THRESHOLD), (5,)),
    (INV(**THRESHOLD, euler_at_final=True, solver_order=3, lower_order_final=False), (8, 16)),
    (INV(beta_schedule="squared_cosine", lambda_min_clipped=-5.1, solver_order=3), (2, 25)),
    (INV(trained_betas=TRAINED, prediction_type="flow"), (6,)),
    (INV(num_train_steps=500, beta_end=0.03), (1, 30)),
    # beta levels whose fractional timesteps truncate to one integer (998, 998, 998):
    # diffusers keeps every level (its repeats are dropped before the cast)
    (INV(beta_schedule="squared_cosine", use_beta_sigmas=True, solver_order=2), (5,)),
]


@pytest.mark.parametrize(("sched", "n"), oracle.grid(FORWARD_CASES + INVERSE_CASES))
def test_parity_float64(sched, n):
    sigma_parity.check(sched, n)


@pytest.mark.parametrize(
    ("sched", "n"),
    [
        (D(**SD15, use_karras_sigmas=True), 20),
        (D(**SD15, use_karras_sigmas=True, algorithm_type="sde-dpmsolver++"), 20),
        (D(**SD, solver_order=3, **THRESHOLD), 15),
        (INV(**SD), 20),
    ],
)
def test_parity_float32(sched, n):
    sigma_parity.check(sched, n, dtype=torch.float32)


def test_custom_timesteps():
    ts = [999, 850, 700, 500, 300, 120, 40]
    r = sigma_parity.compare(D(**SD), None, timesteps=ts)
    assert r < sigma_parity.F64_BOUND
    _, timesteps = D(**SD).init(None, torch.zeros(2), timesteps=ts)
    assert timesteps.tolist() == ts
    with pytest.raises(ValueError, match="karras"):
        D(use_karras_sigmas=True).init(None, torch.zeros(2), timesteps=ts)
    with pytest.raises(ValueError, match="decreasing"):
        D().init(None, torch.zeros(2), timesteps=[10, 500])


@pytest.mark.parametrize("mu", [0.5, 1.2])
def test_dynamic_shift(mu):
    """init(mu=) as diffusers' set_timesteps(mu=): the flow shift becomes e^μ."""
    sched = D(use_flow_sigmas=True, use_dynamic_shifting=True, prediction_type="flow")
    assert sigma_parity.compare(sched, 12, mu=mu) < sigma_parity.F64_BOUND
    shifted = D(use_flow_sigmas=True, prediction_type="flow", flow_shift=math.exp(mu))
    _, ts = sched.init(12, torch.zeros(2), mu=mu)
    assert ts.tolist() == shifted.init(12, torch.zeros(2))[1].tolist()
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        D(use_flow_sigmas=True).init(12, torch.zeros(2), mu=mu)


def _diffusers_final(sched, n, **config):
    """diffusers' final sample for ``sched`` (config keys overridden), or the exception."""
    cfg = {**sched.to_config(), **config}
    noises = oracle.noise_list(3 * n + 3)
    try:
        return peer.run(cfg, oracle.linear_tanh_model(), oracle.start_sample(), n, noises=noises)[1]
    except Exception as err:  # the test reports what diffusers does
        return err


@pytest.mark.parametrize(
    "sched",
    [
        D(**SD, use_karras_sigmas=True, solver_order=3, **SIGMA_MIN),
        D(**SD, use_exponential_sigmas=True, solver_type="heun", **SIGMA_MIN),
        INV(timestep_spacing="trailing", solver_type="heun"),
        INV(timestep_spacing="trailing", solver_order=3),
        INV(use_karras_sigmas=True, solver_order=3),
    ],
)
def test_repeated_level_is_the_identity_where_diffusers_gives_nan(sched):
    """A grid whose last step repeats its level (h = 0): diffusers' heun and third-order
    weights are 0/0 there and its final sample is NaN; ours is the identity step, so the
    loop equals diffusers' with a first-order (also identity) last step."""
    n = 20
    grid = sched._grid(n)
    assert grid.sigmas[-1] == grid.sigmas[-2]
    theirs = _diffusers_final(sched, n)
    assert not torch.isfinite(theirs).all()
    r = sigma_parity.compare(sched, n, config={**sched.to_config(), "euler_at_final": True})
    assert r < sigma_parity.F64_BOUND


def test_third_order_sde_dpmsolver_where_diffusers_raises():
    """diffusers has no third-order sde-dpmsolver step (an UnboundLocalError); ours is eq. 7:
    every weight twice the deterministic ε form's, as in its first and second order."""
    sched = D(algorithm_type="sde-dpmsolver", solver_order=3, **SIGMA_MIN)
    assert isinstance(_diffusers_final(sched, 10), UnboundLocalError)
    start = oracle.start_sample()
    noises = oracle.noise_list(30)
    _, ours = oracle.run_ours(sched, 20, start, oracle.linear_tanh_model(), noises=noises)
    assert torch.isfinite(ours).all()
    _, second = oracle.run_ours(
        sched.replace(solver_order=2), 20, start, oracle.linear_tanh_model(), noises=noises
    )
    assert oracle.rel(ours, second) < 0.05  # the same path, to the third-order correction
    for second_order in coefficients.SECOND_ORDER:
        ode = coefficients.noise_prediction(0.6, 0.8, 0.9, 0.2, second=second_order)
        sde = coefficients.noise_prediction(0.6, 0.8, 0.9, 0.2, second=second_order,
                                            stochastic=True)  # fmt: skip
        assert sde.x == ode.x
        np.testing.assert_allclose([sde.d0, sde.d1, sde.d2], [2 * ode.d0, 2 * ode.d1, 2 * ode.d2])


def test_third_order_weight_is_half_the_taylor_term():
    """Lu's reference code and diffusers weigh D_2 by α_t h φ_3(-h): half of what the Taylor
    expansion of eq. 2 gives. One step with exact history of a smooth x̂_0(λ): the full
    weight has local error O(h⁴), diffusers' not."""

    def prediction(lam):
        return math.sin(lam) + 0.3 * lam**2

    def integral(lam):  # ∫ e^λ x̂_0(λ) dλ
        return math.exp(lam) * ((math.sin(lam) - math.cos(lam)) / 2 + 0.3 * (lam**2 - 2 * lam + 2))

    def step_error(h, third):
        lam_s, lam_t = 0.3, 0.3 + h
        a_s, a_t = (1 / math.sqrt(1 + math.exp(-2 * lam)) for lam in (lam_s, lam_t))
        s_s, s_t = a_s * math.exp(-lam_s), a_t * math.exp(-lam_t)
        exact = s_t / s_s * 0.7 + s_t * (integral(lam_t) - integral(lam_s))
        c = coefficients.data_prediction(a_s, s_s, a_t, s_t, second="taylor", third=third)
        m = [prediction(lam_s - k * h) for k in range(3)]
        w = coefficients.model_weights(c, coefficients.multistep_differences(h, h, h), 3)
        return abs(c.x * 0.7 + w @ m - exact)

    for third, order in (("taylor", 4.0), ("reference", None)):
        errors = [step_error(h, third) for h in (0.1, 0.05, 0.025)]
        rates = np.log2(np.array(errors[:-1]) / errors[1:])
        if order is None:
            assert rates.min() < 3.5
        else:
            np.testing.assert_allclose(rates, order, atol=0.1)


def test_sde_dpmsolver_pp_third_order_keeps_diffusers_weight():
    """diffusers' third-order sde-dpmsolver++ weighs D_2 by α_t((1 - e^{-2h} - 2h)/(2h)² - 1/2)
    ≈ -α_t (a sign slip: α_t(1/2 - φ_2(-2h)) ≈ α_t h/3 matches its other weights); kept."""
    c = coefficients.data_prediction(0.6, 0.8, 0.7, 0.7, stochastic=True)
    h = coefficients.step_size(0.6, 0.8, 0.7, 0.7)
    assert c.d2 == pytest.approx(0.7 * ((1 - math.exp(-2 * h) - 2 * h) / (2 * h) ** 2 - 0.5))
    fixed = coefficients.data_prediction(0.6, 0.8, 0.7, 0.7, stochastic=True, sde_third="reference")
    assert fixed.d2 == pytest.approx(0.7 * (0.5 - coefficients.phi(2, -2 * h)))


@pytest.mark.parametrize("h", [0.0, 1e-9, 1e-3, 0.3, 2.0, 40.0, math.inf])
def test_weights_are_finite(h):
    """φ's series near 0, expm1, and the limits at h = ∞ (a final σ_t = 0)."""
    a_s, s_s = 0.6, 0.8
    lam_t = math.log(a_s / s_s) + h
    a_t = 1 / math.sqrt(1 + math.exp(-2 * lam_t)) if h < math.inf else 1.0
    s_t = a_t * math.exp(-lam_t) if h < math.inf else 0.0
    if h == 0:
        a_t, s_t = a_s, s_s
    for stochastic in (False, True):
        c = coefficients.data_prediction(a_s, s_s, a_t, s_t, second="taylor", stochastic=stochastic)
        assert all(math.isfinite(v) for v in c)
    c = coefficients.noise_prediction(a_s, s_s, a_t, s_t, second="taylor")
    assert math.isfinite(c.d0)
    if h == 0:
        assert c.d0 == c.d1 == c.d2 == 0 and c.x == 1
    for k in (1, 2, 3):
        z = -h if h < math.inf else -math.inf
        series = sum(z**j / math.factorial(j + k) for j in range(40)) if abs(z) < 1 else None
        if series is not None:
            assert coefficients.phi(k, z) == pytest.approx(series, rel=1e-14, abs=1e-300)


def test_option_errors():
    with pytest.raises(ValueError, match="final_sigmas_type"):
        D(algorithm_type="dpmsolver")  # diffusers: the ε form cannot step to σ = 0
    with pytest.raises(ValueError, match="flow"):
        D(algorithm_type="dpmsolver", prediction_type="flow", **SIGMA_MIN)
    with pytest.raises(ValueError, match="at most one"):
        D(use_karras_sigmas=True, use_lu_lambdas=True)
    with pytest.raises(ValueError, match="at most one"):
        D(use_flow_sigmas=True, use_exponential_sigmas=True)
    with pytest.raises(ValueError, match="solver_order"):
        D(solver_order=4)
    with pytest.raises(ValueError, match="stochastic"):
        INV(algorithm_type="sde-dpmsolver++")
    with pytest.raises(ValueError, match="use_flow_sigmas"):
        INV(use_flow_sigmas=True)


def test_inverse_sde_is_nan_in_diffusers():
    """Why the inverse rejects the stochastic variants: σ_t sqrt(1 - e^{-2h}) with h < 0."""
    cfg = {**INV().to_config(), "algorithm_type": "sde-dpmsolver++"}
    noises = oracle.noise_list(40)
    start = oracle.start_sample()
    _, theirs = peer.run(cfg, oracle.linear_tanh_model(), start, 10, noises=noises)
    assert not torch.isfinite(theirs).all()


def test_inverse_drops_repeated_timesteps_with_their_levels():
    """diffusers' np.unique drops repeated timesteps but keeps every level, so the calls
    after a repeat read shifted levels; here each timestep keeps its own level."""
    sched = INV(use_karras_sigmas=True)
    grid = sched._grid(999)
    ts = grid.timesteps
    assert len(np.unique(ts)) == len(ts) < 999
    train = np.sqrt((1 - sched.alphas_cumprod) / sched.alphas_cumprod)
    log_train = np.log(train)
    from diffsched.schedules import sigmas as sigma_schedules

    t_of_levels = sigma_schedules.sigma_to_t(grid.sigmas[:-1], log_train).round()
    assert np.array_equal(t_of_levels, ts)


def test_inverse_then_forward_returns_close_to_the_start():
    """DPM-Solver++ inverts: N steps up, then N steps down, land near where they began."""
    model = oracle.linear_tanh_model()
    x = oracle.start_sample() * 0.5

    def run(sched, start):
        return oracle.run_ours(sched, 50, start, lambda y, t: 0.1 * model(y, t))[1]

    up = run(INV(solver_order=2), x)
    down = run(D(solver_order=2, **SIGMA_MIN), up)
    assert oracle.rel(down, x) < 0.05
    assert oracle.rel(up, x) > 1.0


@pytest.mark.parametrize(
    ("cls", "theirs"),
    [(D, "DPMSolverMultistepScheduler"), (INV, "DPMSolverMultistepInverseScheduler")],
)
def test_options_are_the_diffusers_init_arguments(cls, theirs):
    params = inspect.signature(getattr(diffusers, theirs).__init__).parameters
    keys = {key for _, key, _, _ in diffusers_options(cls)}
    assert keys == set(params) - {"self"}
    config = cls().to_config()
    for key in keys - {"beta_schedule", "prediction_type"}:
        assert config[key] == params[key].default, key


def test_noise_levels():
    sched = D(**SD15, use_karras_sigmas=True)
    first, last = sched.noise_levels(20)
    assert first == pytest.approx(sched.alphas_cumprod[-1], rel=1e-6)
    assert last == 1.0
    flow = D(use_flow_sigmas=True, prediction_type="flow")
    grid = flow._grid(10)
    a, s = solver_grid.alpha_sigma(grid.sigmas[:1], True)
    assert flow.noise_levels(10)[0] == pytest.approx(float(a[0] ** 2 / (a[0] ** 2 + s[0] ** 2)))
