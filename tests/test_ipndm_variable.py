"""Variable-step iPNDM (diffsched.methods.ipndm_variable): the Adams-Bashforth weights,
convergence to the probability-flow ODE on the exact Gaussian-mixture model, order one is
Euler, custom grids, configs and option checks.

There is no diffusers scheduler to compare with (``DIFFUSERS_CLASS = None``): the weights
are checked against the classical Adams-Bashforth table and against exact integrals of
polynomials, the loop against Euler and against the exact ODE solution.
"""

from __future__ import annotations

import numpy as np
import pytest

import diffsched as ds
from diffsched import cli
from diffsched.exact.reference import solve_pf_ode
from diffsched.methods.ipndm_variable import adams_bashforth_weights

SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}
CLASSICAL = {
    1: [1.0],
    2: [3 / 2, -1 / 2],
    3: [23 / 12, -16 / 12, 5 / 12],
    4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
}
NOISE = cli.make_noise("gmm", 64, 0)


def relative_error(samples: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(samples - exact) / np.linalg.norm(exact))


def error_vs_exact(sched: ds.Scheduler, num_steps: int | None, **init_options) -> float:
    """The final sample's distance to the exact probability-flow ODE solution (gmm)."""
    model = cli.exact_model(sched, "gmm")
    start = NOISE * sched.init_noise_scale(num_steps, **init_options)
    out = ds.sample(model, sched, NOISE, num_steps, **init_options)
    alpha_bar_start, alpha_bar_end = sched.noise_levels(num_steps, **init_options)
    exact = solve_pf_ode(model.denoiser, start, alpha_bar_start, alpha_bar_end)
    return relative_error(np.asarray(out), exact)


# -- the weights -------------------------------------------------------------------------


@pytest.mark.parametrize("h", [-0.5, -3.0, -1e-3])
def test_even_grid_gives_the_classical_weights(h):
    sigmas = 20.0 + h * np.arange(12)  # descending: h < 0
    for order, expected in CLASSICAL.items():
        for i in range(order - 1, 11):  # the history is full
            got = adams_bashforth_weights(sigmas, i, order) / h
            np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-12)
        for i in range(order - 1):  # warm-up: the order rises with the history
            got = adams_bashforth_weights(sigmas, i, order) / h
            np.testing.assert_allclose(got, CLASSICAL[i + 1], rtol=1e-11, atol=1e-12)


def uneven_grids(rng: np.random.Generator) -> list[np.ndarray]:
    """Descending grids with irregular steps, each ending at σ = 0."""
    grids = []
    for n in (5, 8, 12):
        grids.append(np.append(np.sort(rng.uniform(0.01, 15.0, n))[::-1], 0.0))
        log_sigma = np.sort(rng.uniform(np.log(0.03), np.log(14.6), n))[::-1]
        grids.append(np.append(np.exp(log_sigma), 0.0))  # spread over orders of magnitude
    return grids


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_uneven_weights_integrate_polynomials_below_the_order_exactly(order):
    rng = np.random.default_rng(order)
    for sigmas in uneven_grids(rng):
        # every step, the final one (to σ = 0) included
        for i in range(len(sigmas) - 1):
            p = min(i + 1, order)
            nodes = sigmas[i - np.arange(p)]
            w = adams_bashforth_weights(sigmas, i, order)
            assert w.shape == (p,) and w.dtype == np.float64
            for degree in range(p):
                poly = np.polynomial.Polynomial(rng.standard_normal(degree + 1))
                antiderivative = poly.integ()
                exact = antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i])
                got = float(np.dot(w, poly(nodes)))
                scale = float(np.sum(np.abs(w * poly(nodes)))) + abs(exact)
                assert abs(got - exact) <= 1e-11 * scale, (sigmas, i, degree)
            if p == order and i >= order:  # degree p is beyond the method: not exact
                monomial = np.polynomial.Polynomial.basis(p, domain=[sigmas[i] - 1, sigmas[i] + 1])
                antiderivative = monomial.integ()
                exact = antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i])
                assert abs(float(np.dot(w, monomial(nodes))) - exact) > 1e-9 * abs(exact)


# -- convergence on the exact model --------------------------------------------------------


@pytest.fixture(scope="module")
def errors() -> dict[int, list[float]]:
    """solver_order -> error at 10, 20, 40 Karras steps."""
    return {
        order: [
            error_vs_exact(ds.VariableIPNDM(**SD, use_karras_sigmas=True, solver_order=order), n)
            for n in (10, 20, 40)
        ]
        for order in (1, 2, 3, 4)
    }


def test_error_falls_as_steps_grow(errors):
    # measured (64 gmm samples): order 1: 0.20, 0.069, 0.042; order 2: 0.079, 0.018, 0.0047;
    # order 3: 0.052, 0.0093, 0.0021; order 4: 0.039, 0.0099, 0.0013
    for order, errs in errors.items():
        assert errs[0] > errs[1] > errs[2], (order, errs)
    # high order: 20 -> 40 steps cuts the error 7.4x (order 1: 1.6x)
    assert errors[4][2] < errors[4][1] / 3
    assert errors[4][2] < 5e-3  # 1.3e-3


def test_fourth_order_beats_first_order(errors):
    assert errors[1][2] > 10 * errors[4][2]  # 0.042 vs 0.0013: 31x


def test_full_order_final_step_beats_dpm_solver_floor(errors):
    """DPM-Solver++'s last step, from the lowest training σ to 0, is first order: an error
    floor that 40 steps do not lower; iPNDM's last step is at full order."""
    dpm = error_vs_exact(ds.DPMSolverMultistep(**SD, use_karras_sigmas=True), 40)
    assert dpm > 1e-2  # 0.027 (0.055 at 10 steps, 0.032 at 20)
    assert errors[4][2] < dpm / 5  # 0.0013


# -- order one is Euler ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "num_steps"),
    [
        (dict(SD, use_karras_sigmas=True), 12),
        (dict(SD), 9),
        (dict(SD, timestep_spacing="trailing", prediction_type="angular_velocity"), 7),
        (dict(use_exponential_sigmas=True, prediction_type="sample"), 5),
    ],
)
def test_order_one_is_euler_step_for_step(options, num_steps):
    ipndm = ds.VariableIPNDM(**options, solver_order=1)
    euler = ds.Euler(**options)
    model = cli.exact_model(euler, "gmm")
    assert ipndm.init_noise_scale(num_steps) == euler.init_noise_scale(num_steps)
    s_ipndm, ts = ipndm.init(num_steps, NOISE)
    s_euler, ts_euler = euler.init(num_steps, NOISE)
    np.testing.assert_array_equal(np.asarray(ts), np.asarray(ts_euler))
    x = y = NOISE * euler.init_noise_scale(num_steps)
    for t in ts:
        s_ipndm, x = ipndm.step(s_ipndm, x, model(x, t))
        s_euler, y = euler.step(s_euler, y, model(y, t))
        assert relative_error(np.asarray(x), np.asarray(y)) < 1e-12


# -- custom grids, configs, options ----------------------------------------------------------


def test_custom_sigmas():
    sched = ds.VariableIPNDM(**SD)
    train = np.sqrt((1 - sched.alphas_cumprod) / sched.alphas_cumprod)
    sigmas = [*np.exp(np.linspace(np.log(train[-1]), np.log(train[0]), 15)).tolist(), 0.0]
    _, ts = sched.init(None, NOISE, sigmas=sigmas)
    assert len(ts) == 15 and np.all(np.diff(np.asarray(ts)) < 0)
    assert ts[0] == pytest.approx(999) and ts[-1] == pytest.approx(0, abs=1e-4)
    alpha_bar_start, alpha_bar_end = sched.noise_levels(None, sigmas=sigmas)
    assert alpha_bar_start == pytest.approx(1 / (1 + train[-1] ** 2), rel=1e-6)
    assert alpha_bar_end == 1.0
    # the same grid as the built-in exponential one: the same loop
    builtin = ds.VariableIPNDM(**SD, use_exponential_sigmas=True)
    model = cli.exact_model(sched, "gmm")
    np.testing.assert_allclose(
        ds.sample(model, sched, NOISE, None, sigmas=sigmas),
        ds.sample(model, builtin, NOISE, 15),
        rtol=1e-6, atol=1e-6,
    )  # fmt: skip
    assert error_vs_exact(sched, None, sigmas=sigmas) < 0.05  # 15 steps, fourth order
    with pytest.raises(ValueError, match="disagrees"):
        sched.init(10, NOISE, sigmas=sigmas)
    with pytest.raises(ValueError, match="non-increasing"):
        sched.init(None, NOISE, sigmas=sigmas[::-1])


def test_custom_timesteps_equal_their_training_sigmas():
    sched = ds.VariableIPNDM(**SD)
    timesteps = [999, 900, 700, 420, 260, 120, 40, 5]
    train = np.sqrt((1 - sched.alphas_cumprod) / sched.alphas_cumprod)
    sigmas = [*train[timesteps].tolist(), 0.0]
    _, ts = sched.init(None, NOISE, timesteps=timesteps)
    np.testing.assert_allclose(np.asarray(ts), timesteps)
    model = cli.exact_model(sched, "gmm")
    np.testing.assert_allclose(
        ds.sample(model, sched, NOISE, None, timesteps=timesteps),
        ds.sample(model, sched, NOISE, None, sigmas=sigmas),
        rtol=1e-6, atol=1e-6,
    )  # fmt: skip
    with pytest.raises(ValueError, match="timesteps= cannot be combined"):
        ds.VariableIPNDM(**SD, use_karras_sigmas=True).init(None, NOISE, timesteps=timesteps)
    with pytest.raises(ValueError, match="at most one"):
        sched.init(None, NOISE, timesteps=timesteps, sigmas=sigmas)


def test_config_names_our_class():
    config = ds.VariableIPNDM().to_config()
    assert ds.VariableIPNDM.DIFFUSERS_CLASS is None
    assert config["_class_name"] == "VariableIPNDM"


@pytest.mark.parametrize(
    "sched",
    [
        ds.VariableIPNDM(),
        ds.VariableIPNDM(**SD, use_karras_sigmas=True),
        ds.VariableIPNDM(**SD, timestep_spacing="trailing", prediction_type="angular_velocity"),
        ds.VariableIPNDM(**SD, use_karras_sigmas=True, solver_order=3),
    ],
)
def test_config_round_trip(sched):
    again = ds.from_config(sched.to_config())
    assert type(again) is ds.VariableIPNDM
    assert again == sched


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (5, ValueError), (-1, ValueError), (2.0, TypeError)]
)
def test_bad_solver_order(value, error):
    with pytest.raises(error, match="solver_order"):
        ds.VariableIPNDM(solver_order=value)
