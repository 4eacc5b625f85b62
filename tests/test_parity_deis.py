"""DEIS against diffusers 0.42.1 over a grid of options and step counts.

Every option value is covered at least once (not every product), each at a few step counts
from 1 to 1000; see ``sigma_parity`` for how the loops are driven.
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
from diffsched.methods.deis import DEIS
from diffsched.methods.dpmsolver import DPMSolverMultistep

SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}
SD15 = {**SD, "timesteps_offset": 1}
TRAINED = tuple(float(b) for b in np.linspace(0.0001 ** (1 / 3), 0.02 ** (1 / 3), 1000) ** 3)
THRESHOLD = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}
FLOW = {"use_flow_sigmas": True, "prediction_type": "flow"}

CASES = [
    (DEIS(), (1, 2, 3, 10, 25)),
    (DEIS(solver_order=3, timestep_spacing="trailing"), (1, 4, 20, 1000)),
    (DEIS(**SD15, timestep_spacing="leading"), (1, 7, 30)),
    (DEIS(**SD15, use_karras_sigmas=True), (2, 20, 50)),
    (DEIS(**SD, use_karras_sigmas=True, solver_order=3), (5, 25)),
    (DEIS(solver_order=1, prediction_type="angular_velocity"), (1, 9)),
    (DEIS(solver_order=3, lower_order_final=False), (3, 12)),
    (DEIS(use_exponential_sigmas=True, prediction_type="sample"), (2, 12)),
    (DEIS(**SD, use_beta_sigmas=True, solver_order=3), (3, 16)),
    (DEIS(beta_schedule="squared_cosine", prediction_type="angular_velocity"), (3, 20)),
    (DEIS(trained_betas=TRAINED, solver_order=3), (3, 20)),
    (DEIS(**SD, **THRESHOLD, prediction_type="sample"), (2, 12)),
    (DEIS(**THRESHOLD, solver_order=3), (8,)),
    (DEIS(**FLOW, flow_shift=3.0), (2, 10, 28)),  # N = 1: its final level repeats, no move
    (DEIS(**FLOW, solver_order=3, **THRESHOLD), (12,)),
    (DEIS(**SD, prediction_type="flow"), (6,)),  # x̂_0 = x - σ v, ε̂ = (x - α x̂_0) / σ: σ the grid's
    (DEIS(num_train_steps=500, beta_end=0.03), (1, 25, 400)),
]


@pytest.mark.parametrize(("sched", "n"), oracle.grid(CASES))
def test_parity_float64(sched, n):
    # diffusers' closed-form log-ρ integrals cancel digits: 1e-10 at 1000 third-order steps
    sigma_parity.check(sched, n)


@pytest.mark.parametrize(
    ("sched", "n"), [(DEIS(**SD15), 20), (DEIS(**SD15, use_karras_sigmas=True, solver_order=3), 20)]
)
def test_parity_float32(sched, n):
    sigma_parity.check(sched, n, dtype=torch.float32)


def test_float32_third_order_with_many_steps_is_diffusers_cancellation():
    """diffusers' third-order DEIS weights subtract values of size ρ (log ρ)² / h² to get
    one of size ρ h: in float32, with 100 steps, they lose about four digits. Ours are the
    φ-function weights (module docstring, eq. 4) and agree with diffusers' float64 run."""
    sched = DEIS(**SD, solver_order=3)
    r32 = sigma_parity.compare(sched, 100, dtype=torch.float32)
    r64 = sigma_parity.compare(sched, 100)
    assert r64 < 1e-12
    assert 1e-5 < r32 < 1e-2


@pytest.mark.parametrize("mu", [0.4, 1.1])
def test_dynamic_shift(mu):
    sched = DEIS(**FLOW, use_dynamic_shifting=True)
    assert sigma_parity.compare(sched, 11, mu=mu) < sigma_parity.F64_BOUND
    _, ts = sched.init(11, torch.zeros(2), mu=mu)
    static = DEIS(**FLOW, flow_shift=math.exp(mu)).init(11, torch.zeros(2))[1]
    assert ts.tolist() == static.tolist()
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        DEIS(**FLOW).init(11, torch.zeros(2), mu=mu)


@pytest.mark.parametrize("n", [5, 20])
def test_second_order_is_dpm_solver_heun(n):
    """Order 2 is DPM-Solver's ε-form multistep with the Taylor (heun) weight, on the same
    grid (DEIS's final level is the training σ_0, as final_sigmas_type="sigma_min")."""
    start, model = oracle.start_sample(), oracle.linear_tanh_model()
    _, ours = oracle.run_ours(DEIS(**SD), n, start, model)
    dpm = DPMSolverMultistep(
        **SD, algorithm_type="dpmsolver", solver_type="heun", final_sigmas_type="sigma_min"
    )
    _, theirs = oracle.run_ours(dpm, n, start, model)
    assert oracle.rel(ours, theirs) < 1e-13


def test_third_order_differs_from_dpm_solver_by_its_d2_term():
    """Order 3 integrates the quadratic through the last three ε̂ exactly; DPM-Solver's
    third-order step halves that quadratic's D_2 term, so the two differ."""
    start, model = oracle.start_sample(), oracle.linear_tanh_model()
    _, ours = oracle.run_ours(DEIS(**SD, solver_order=3), 20, start, model)
    dpm = DPMSolverMultistep(
        **SD, algorithm_type="dpmsolver", solver_order=3, final_sigmas_type="sigma_min"
    )
    _, theirs = oracle.run_ours(dpm, 20, start, model)
    assert 1e-6 < oracle.rel(ours, theirs) < 1e-2


def test_repeated_final_level_is_the_identity():
    """Re-gridded levels end with a repeat of the last (diffusers' sigmas[-1:]): the last
    step moves nothing, in diffusers and here."""
    sched = DEIS(use_karras_sigmas=True)
    grid = sched._grid(20)
    assert grid.sigmas[-1] == grid.sigmas[-2]
    program = sched.program(20)
    assert program.coefs[19, 2] == 1.0  # the sample's own coefficient
    assert np.all(program.coefs[19, [3, 4]] == 0) and np.all(program.reads[19, :, 1] == 0)


def test_option_errors():
    with pytest.raises(ValueError, match="solver_order"):
        DEIS(solver_order=4)
    with pytest.raises(ValueError, match="algorithm_type"):
        DEIS(algorithm_type="dpmsolver++")
    with pytest.raises(ValueError, match="solver_type"):
        DEIS(solver_type="midpoint")
    with pytest.raises(ValueError, match="use_flow_sigmas"):
        DEIS(use_flow_sigmas=True, use_karras_sigmas=True)
    with pytest.raises(ValueError, match="at most one"):
        DEIS(use_beta_sigmas=True, use_karras_sigmas=True)


def test_options_are_the_diffusers_init_arguments():
    params = inspect.signature(diffusers.DEISMultistepScheduler.__init__).parameters
    keys = {key for _, key, _, _ in diffusers_options(DEIS)}
    assert keys == set(params) - {"self"}
    config = DEIS().to_config()
    for key in keys - {"beta_schedule", "prediction_type"}:
        assert config[key] == params[key].default, key


def test_noise_levels():
    sched = DEIS(**SD)
    first, last = sched.noise_levels(10)
    acp = sched.alphas_cumprod
    assert first == pytest.approx(acp[999], rel=1e-6)
    assert last == pytest.approx(acp[0], rel=1e-6)  # the final level is the training σ_0
