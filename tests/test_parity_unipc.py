"""UniPC against diffusers 0.42.1 over a grid of options and step counts.

Every option value is covered at least once (not every product), each at a few step counts
from 1 to 1000; see ``sigma_parity`` for how the loops are driven. Where diffusers returns
NaN (a step into σ = 0 with ``bh1``, with the noise-prediction form, or at second or third
order), the tests say so and check ours against the σ → 0 limit of diffusers' own loop.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from unittest import mock

import numpy as np
import oracle
import pytest
import sigma_parity
import torch

from diffsched.interop import config as config_module
from diffsched.interop import peer
from diffsched.methods._dpm_solver_coefficients import phi
from diffsched.methods.unipc import UniPC, unipc_weights

FIXTURES = Path(__file__).parent / "fixtures"
SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}
SD15 = {**SD, "timesteps_offset": 1}  # Stable Diffusion 1.5's betas (its PNDM config)
TRAINED = tuple(float(b) for b in np.linspace(0.0001 ** (1 / 3), 0.02 ** (1 / 3), 1000) ** 3)
FLOW = {"use_flow_sigmas": True, "prediction_type": "flow"}
WAN = {**FLOW, "flow_shift": 3.0}  # Wan 2.1's scheduler (tests/fixtures/wan21_t2v_1.3b)
THRESHOLD = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}
SIGMA_MIN = {"final_sigmas_type": "sigma_min"}
ZERO_SNR = {
    **SD,
    "rescale_betas_zero_snr": True,
    "prediction_type": "angular_velocity",
    "timestep_spacing": "trailing",
}
U = UniPC

CASES = [
    (U(), (1, 2, 3, 10, 25)),
    (U(timestep_spacing="trailing", solver_order=3), (1, 4, 1000)),  # every training step
    (U(**SD15), (1, 5, 20, 50)),  # Stable Diffusion 1.5 (from its PNDM config)
    (U(**SD15, timestep_spacing="leading", disable_corrector=(0, 1, 3)), (2, 8, 25)),
    (U(**WAN), (1, 2, 10, 30, 50)),  # Wan 2.1
    (U(**WAN, solver_order=3, solver_type="bh1", **SIGMA_MIN), (3, 20)),
    (U(**FLOW, flow_shift=5.0, shift_terminal=0.1, **SIGMA_MIN), (4, 15)),
    (U(**FLOW, use_karras_sigmas=True, sigma_min=0.05, sigma_max=20.0), (3, 12)),
    (U(solver_order=1), (1, 6)),
    (U(solver_order=3, lower_order_final=False, **SIGMA_MIN), (3, 12)),
    (U(solver_order=4, **SIGMA_MIN, prediction_type="angular_velocity"), (5, 18)),
    (U(solver_type="bh1", **SIGMA_MIN), (1, 7, 30)),
    (U(predict_x0=False, **SIGMA_MIN), (1, 5, 20)),
    (U(predict_x0=False, solver_type="bh1", **SIGMA_MIN, prediction_type="sample"), (4, 16)),
    (U(predict_x0=False, solver_order=3, **SIGMA_MIN, prediction_type="angular_velocity"), (9,)),
    # a v model on flow levels in the ε form: diffusers' ε̂ = σ x + α v (α = 1 - σ there)
    (
        U(use_flow_sigmas=True, predict_x0=False, prediction_type="angular_velocity", **SIGMA_MIN),
        (5,),
    ),
    (U(**SD, use_karras_sigmas=True, prediction_type="sample"), (2, 10, 30)),
    (U(**SD, use_exponential_sigmas=True, sigma_min=0.05, sigma_max=10.0, **SIGMA_MIN), (2, 12)),
    (U(use_beta_sigmas=True, solver_order=3), (2, 12)),
    (U(beta_schedule="squared_cosine", timestep_spacing="leading", timesteps_offset=2), (3, 14)),
    (U(trained_betas=TRAINED, solver_order=3), (3, 20)),
    (U(**ZERO_SNR), (1, 5, 20)),
    # re-gridded zero SNR: σ_max = 4096 (the clamped σ_{T-1}) is timestep T - 1
    (U(**{**ZERO_SNR, "timestep_spacing": "linspace"}, use_karras_sigmas=True), (6,)),
    (U(**SD, **THRESHOLD, prediction_type="sample"), (2, 12)),
    (U(**THRESHOLD, predict_x0=False, **SIGMA_MIN), (6,)),  # diffusers: no thresholding in ε
    (U(num_train_steps=500, beta_end=0.03, timestep_spacing="trailing"), (1, 25, 500)),
    (U(prediction_type="flow"), (6,)),  # diffusers' x̂_0 = x - σ v on a variance-preserving grid
]
MU_CASES = [
    (U(**FLOW, use_dynamic_shifting=True), (1, 8, 24), 0.8),
    (U(**FLOW, use_dynamic_shifting=True, time_shift_type="linear", solver_order=3), (6,), 1.3),
]


@pytest.mark.parametrize(("sched", "n"), oracle.grid(CASES))
def test_parity_float64(sched, n):
    sigma_parity.check(sched, n)


@pytest.mark.parametrize(
    ("sched", "n", "mu"),
    [pytest.param(s, n, mu, id=f"{i}-N={n}") for i, (s, ns, mu) in enumerate(MU_CASES) for n in ns],
)
def test_parity_dynamic_shifting(sched, n, mu):
    sigma_parity.check(sched, n, mu=mu)


@pytest.mark.parametrize("sched", [U(**SD15), U(**WAN, solver_order=3)], ids=["sd15", "wan"])
def test_parity_float32(sched):
    sigma_parity.check(sched, 20, dtype=torch.float32)


def test_custom_sigmas():
    """N flow levels as a pipeline passes them (diffusers shifts them), then the final one."""
    levels = np.linspace(1.0, 1 / 10, 10)
    sched = U(**WAN)
    r = sigma_parity.compare(sched, None, sigmas=[*levels, 0.0], set_timesteps={"sigmas": levels})
    assert r < sigma_parity.F64_BOUND
    sched = U(**WAN, use_dynamic_shifting=True)
    r = sigma_parity.compare(
        sched, None, sigmas=[*levels, 0.0], mu=0.7, set_timesteps={"sigmas": levels, "mu": 0.7}
    )
    assert r < sigma_parity.F64_BOUND
    _, timesteps = sched.init(None, torch.zeros(2), sigmas=[*levels, 0.0], mu=0.7)
    assert len(timesteps) == 10


def test_wan_config_file():
    """Wan 2.1's scheduler_config.json, read as diffusers reads it."""
    path = FIXTURES / "wan21_t2v_1.3b" / "scheduler" / "scheduler_config.json"
    raw = json.loads(path.read_text())
    registry = config_module.registry
    with mock.patch.object(
        config_module, "registry", lambda: {**registry(), U.DIFFUSERS_CLASS: U}
    ):  # fmt: skip
        sched = config_module.from_config(raw)
    assert sched == U(**WAN)
    assert sigma_parity.compare(sched, 30, config=raw) < sigma_parity.F64_BOUND
    assert sched.to_config()["disable_corrector"] == []


# -- where diffusers returns NaN: the step into σ = 0 -----------------------------------------


def diffusers_loop(sched, n, *, final_sigma=None, **changes):
    """diffusers' loop (float64 tables) for ``sched`` with config ``changes``, its final level
    replaced by ``final_sigma``."""
    config = {**sched.to_config(), **changes}
    d = peer.scheduler(config)
    module = peer.module_of(config)
    with peer._double_tables(module):
        d.set_timesteps(n)
    peer._double_grids(d)
    if final_sigma is not None:
        assert d.sigmas[-1] == 0
        d.sigmas[-1] = final_sigma
    model = oracle.linear_tanh_model()
    x = oracle.start_sample()
    with peer._double_tables(module):
        for t in d.timesteps:
            x = d.step(model(x, t), t, x).prev_sample
    return x


def ours(sched, n):
    _, x, _ = sigma_parity.loop_ours(
        sched, n, oracle.start_sample(), oracle.linear_tanh_model(), None
    )
    return x


@pytest.mark.parametrize(
    "sched",
    [
        U(solver_type="bh1"),
        U(solver_type="bh1", solver_order=3, prediction_type="angular_velocity"),
        U(**WAN, solver_type="bh1"),
        U(predict_x0=False),
        U(predict_x0=False, solver_type="bh1", prediction_type="sample"),
    ],
    ids=["bh1", "bh1-order3-v", "bh1-wan", "noise-form", "noise-form-bh1"],
)
@pytest.mark.parametrize("n", [1, 2, 7, 20])
def test_step_to_zero_where_diffusers_is_nan(sched, n):
    """diffusers' last step into σ = 0 is ∞ · 0 here; ours is the limit σ → 0 of its step,
    diffusers' own loop with the final level at 1e-150 instead of 0."""
    theirs = diffusers_loop(sched, n)
    assert not torch.isfinite(theirs).all()
    x = ours(sched, n)
    assert torch.isfinite(x).all()
    oracle.check(
        x, diffusers_loop(sched, n, final_sigma=1e-150), "PARITY (σ → 0 limit)", "UniPC", 1e-9
    )


@pytest.mark.parametrize("order", [2, 3])
def test_high_order_step_to_zero(order):
    """Without lower_order_final, diffusers' step into σ = 0 at order >= 2 is NaN (order 2)
    or a singular system (order 3): no finite limit exists (D_k grows like h). Ours steps to
    σ = 0 at first order, so order 2 equals diffusers' lower_order_final loop, whose orders
    agree with it elsewhere."""
    sched = U(solver_order=order, lower_order_final=False)
    if order == 2:
        assert not torch.isfinite(diffusers_loop(sched, 10)).all()
        r = oracle.rel(ours(sched, 10), diffusers_loop(sched, 10, lower_order_final=True))
        assert r < sigma_parity.F64_BOUND
    else:
        with pytest.raises(RuntimeError, match="singular"):
            diffusers_loop(sched, 10)
        assert torch.isfinite(ours(sched, 10)).all()


def test_step_to_zero_converges_to_the_ode_solution():
    """bh1 into σ = 0 (NaN in diffusers) against the exact probability-flow ODE solution of a
    Gaussian-mixture model: the error falls with N, and stays within 1.5 times that of
    bh2 (which diffusers runs)."""
    from diffsched.exact import models, reference

    noise = np.random.default_rng(0).standard_normal((16, 2))

    def errors(sched):
        model = models.make_model("gmm", sched.alphas_cumprod, sched.prediction_type)
        out = []
        for n in (10, 20, 40):
            state, timesteps = sched.init(n, noise)
            x = noise
            for t in timesteps:
                state, x = sched.step(state, x, model(x, t))
            exact = reference.solve_pf_ode(model.denoiser, noise, *sched.noise_levels(n))
            out.append(float(np.linalg.norm(x - exact) / np.linalg.norm(exact)))
        return np.array(out)

    bh1 = errors(U(solver_type="bh1", solver_order=3, timestep_spacing="trailing"))
    bh2 = errors(U(solver_type="bh2", solver_order=3, timestep_spacing="trailing"))
    assert np.all(np.diff(bh1) < 0) and bh1[-1] < 0.02, bh1
    assert np.all(bh1 < 1.5 * bh2), (bh1, bh2)


def test_repeated_level_where_diffusers_is_nan():
    """diffusers' 1000-step linspace grid rounds two timesteps to the same level (h = 0, a
    0/0 in the multistep weights) and returns NaN; ours refuses the grid, saying why."""
    assert not torch.isfinite(diffusers_loop(U(), 1000)).all()
    with pytest.raises(ValueError, match="twice"):
        U().init(1000, torch.zeros(2))


# -- the coefficients -------------------------------------------------------------------------


def test_weights_match_the_paper():
    """ρ^c of UniC-1 is 1/2; with bh2 and r = (-1,), UniP-2 is DPM-Solver++(2M)'s 1/2 and
    UniC solves R ρ = g (eq. 5)."""
    b_h, rho_p, rho_c = unipc_weights(np.array([]), -0.4, "bh2")
    assert rho_p == [] and rho_c == [0.5] and b_h == pytest.approx(math.expm1(-0.4))
    hh = -0.3
    b_h, rho_p, rho_c = unipc_weights(np.array([-0.8]), hh, "bh1")
    g = [hh * phi(i + 1, hh) * math.factorial(i) / b_h for i in (1, 2)]
    assert rho_p == [0.5]
    assert np.allclose(np.array([[1, 1], [-0.8, 1]]) @ rho_c, g, rtol=1e-14)


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"solver_p": object()}, "solver_p"),
        ({"use_flow_sigmas": True, "use_exponential_sigmas": True}, "use_flow_sigmas"),
        ({"shift_terminal": 0.1}, "shift_terminal"),
        ({"prediction_type": "flow", "predict_x0": False}, "predict_x0"),
        ({"disable_corrector": [1, -2]}, "disable_corrector"),
        ({"solver_type": "heun"}, "solver_type"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        U(**kwargs)


def test_bad_init_options():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="mu"):
        U(**FLOW, use_dynamic_shifting=True).init(5, x)
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        U(**FLOW).init(5, x, mu=0.5)
    with pytest.raises(ValueError, match="use_flow_sigmas"):
        U().init(None, x, sigmas=[1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="flow levels"):
        U(**FLOW).init(None, x, sigmas=[2.0, 0.5, 0.0])


def test_options_and_facts():
    """Exactly diffusers' options; disable_corrector travels as a list; the class facts."""
    import inspect

    from diffusers import UniPCMultistepScheduler

    from diffsched.core.options import diffusers_options

    ours_keys = {key for _, key, _, _ in diffusers_options(U)}
    theirs = set(inspect.signature(UniPCMultistepScheduler.__init__).parameters) - {"self"}
    assert ours_keys == theirs
    sched = U(disable_corrector=[2, 0])
    assert sched.disable_corrector == (2, 0) and hash(sched)
    assert (U.ORDER, U.CALLS_PER_STEP) == (3, 1) and sched.deterministic
    assert U(**WAN).init_noise_scale(10) == 1.0
