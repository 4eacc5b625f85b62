"""DPM-Solver singlestep and EDM DPM-Solver multistep against diffusers 0.42.1.

Every option value is covered at least once (not every product), each at a few step counts
from 1 to 1000; see ``sigma_parity`` for how the loops are driven. Where diffusers fails
(singlestep ``dpmsolver`` with thresholding; EDM's third-order ``sde-dpmsolver++``; EDM's
``sde-dpmsolver++`` into a final σ_min above the grid's last float32 level) the tests say
so and check that ours is finite and right.
"""

from __future__ import annotations

import inspect
import math
from unittest import mock

import numpy as np
import oracle
import pytest
import sigma_parity
import torch

from diffsched.core.options import diffusers_options
from diffsched.interop import peer
from diffsched.methods import _dpm_solver_coefficients as coefficients
from diffsched.methods.dpmsolver_singlestep import DPMSolverSinglestep, order_list
from diffsched.methods.edm_dpmsolver import EDMDPMSolverMultistep, float32_linspace

SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}
TRAINED = tuple(float(b) for b in np.linspace(0.0001 ** (1 / 3), 0.02 ** (1 / 3), 1000) ** 3)
THRESHOLD = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}
SIGMA_MIN = {"final_sigmas_type": "sigma_min"}
SIGMA_MIN_V = {**SIGMA_MIN, "prediction_type": "angular_velocity"}
FLOW = {"use_flow_sigmas": True, "prediction_type": "flow"}
S = DPMSolverSinglestep
E = EDMDPMSolverMultistep

SINGLESTEP_CASES = [
    (S(), (1, 2, 3, 10, 25)),
    (S(solver_order=3), (1, 2, 3, 4, 5, 6, 20)),
    (S(solver_order=3, solver_type="heun"), (3, 7, 26)),
    (S(solver_order=3, lower_order_final=False, **SIGMA_MIN), (3, 9, 10)),  # 10: forced on
    (S(lower_order_final=False, solver_type="heun", **SIGMA_MIN), (2, 12)),
    (S(solver_order=1, prediction_type="angular_velocity"), (1, 6)),
    (S(algorithm_type="dpmsolver", **SIGMA_MIN), (1, 5, 20)),
    (S(algorithm_type="dpmsolver", solver_order=3, solver_type="heun", **SIGMA_MIN_V), (5, 21)),
    (S(algorithm_type="dpmsolver", solver_order=3, **SIGMA_MIN, prediction_type="sample"), (6,)),
    (S(algorithm_type="sde-dpmsolver++"), (1, 5, 20)),
    (S(algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun"), (5, 20)),
    (S(algorithm_type="sde-dpmsolver++", solver_order=3, **SIGMA_MIN), (6,)),
    (S(**SD, use_karras_sigmas=True), (2, 5, 20)),  # "DPM++ 2S Karras"-like
    (S(use_exponential_sigmas=True, prediction_type="sample"), (2, 12)),
    (S(use_beta_sigmas=True, prediction_type="angular_velocity", **SIGMA_MIN), (2, 12)),
    (S(**FLOW, flow_shift=3.0, solver_order=3), (1, 5, 20)),
    (S(**FLOW, algorithm_type="sde-dpmsolver++", solver_type="heun"), (4,)),
    (S(beta_schedule="squared_cosine", lambda_min_clipped=-5.1), (5, 20)),
    (S(trained_betas=TRAINED, solver_order=3), (3, 12)),
    (S(**SD, **THRESHOLD, prediction_type="sample"), (2, 9)),
    (S(num_train_steps=2000, solver_order=3), (1000,)),  # 1000 points of a linspace over T
    (S(num_train_steps=500, beta_end=0.03), (1, 500)),
    (S(prediction_type="flow"), (6,)),  # diffusers' x̂_0 = x - σ v on a variance-preserving grid
    # a v model on flow levels in the ε form: diffusers' ε̂ = σ x + α v (α = 1 - σ there)
    (
        S(
            use_flow_sigmas=True,
            prediction_type="angular_velocity",
            algorithm_type="dpmsolver",
            **SIGMA_MIN,
        ),
        (3, 8),
    ),
]
EDM_CASES = [
    (E(), (1, 2, 3, 10, 14, 15, 25)),
    (E(solver_order=3), (1, 3, 4, 5, 14, 20, 1000)),
    (E(solver_order=3, solver_type="heun", lower_order_final=False, **SIGMA_MIN), (3, 10)),
    (E(solver_order=1), (1, 5)),
    (E(solver_type="heun", prediction_type="angular_velocity"), (5, 20)),
    (E(sigma_schedule="exponential", sigma_min=0.01, sigma_max=50.0, sigma_data=0.7), (1, 5, 20)),
    (E(rho=5.0, num_train_steps=500), (6, 17)),
    (E(euler_at_final=True, lower_order_final=False, **SIGMA_MIN), (5, 20)),
    (E(algorithm_type="sde-dpmsolver++"), (1, 5, 20)),
    (E(algorithm_type="sde-dpmsolver++", solver_type="heun", sigma_min=0.01), (5,)),
    (E(algorithm_type="sde-dpmsolver++", solver_order=3), (3, 4)),  # no third-order step
    (E(**THRESHOLD), (2, 8)),
]


@pytest.mark.parametrize(("sched", "n"), oracle.grid(SINGLESTEP_CASES + EDM_CASES))
def test_parity_float64(sched, n):
    sigma_parity.check(sched, n)


@pytest.mark.parametrize(
    ("sched", "n"),
    [
        (S(**SD, use_karras_sigmas=True), 20),
        (S(algorithm_type="sde-dpmsolver++", solver_order=3), 20),
        (E(), 20),
        (E(algorithm_type="sde-dpmsolver++", sigma_schedule="exponential"), 20),
    ],
)
def test_parity_float32(sched, n):
    sigma_parity.check(sched, n, dtype=torch.float32)


def test_singlestep_custom_timesteps_and_mu():
    ts = [999, 850, 700, 500, 300, 120, 40]
    assert sigma_parity.compare(S(), None, timesteps=ts) < sigma_parity.F64_BOUND
    sched = S(**FLOW, use_dynamic_shifting=True, solver_order=3)
    assert sigma_parity.compare(sched, 9, mu=0.9) < sigma_parity.F64_BOUND


def test_singlestep_order_schedule():
    """diffusers' get_order_list, with its forced lower_order_final."""
    from diffusers import DPMSolverSinglestepScheduler

    for order in (1, 2, 3):
        for lower in (True, False):
            d = DPMSolverSinglestepScheduler(
                solver_order=order, lower_order_final=lower, final_sigmas_type="sigma_min"
            )
            for n in range(1, 30):
                if lower or n % order == 0:
                    assert order_list(n, order, lower, False) == d.get_order_list(n)
    assert S(solver_order=3).orders(8) == [1, 2, 3, 1, 2, 3, 1, 1]
    assert S(solver_order=3, lower_order_final=False, **SIGMA_MIN).orders(6) == [1, 2, 3] * 2


# -- where diffusers fails --------------------------------------------------------------------


def test_singlestep_noise_form_thresholding():
    """diffusers indexes its training tables with a missing timestep there and raises. Ours
    forms x̂_0 at the call's own level, thresholds it and re-derives ε̂: diffusers' loop with
    the call's timestep passed (its tables at an integer timestep of the linspace grid hold
    the same level, up to the grid's float32 rounding)."""
    from diffusers import DPMSolverSinglestepScheduler

    sched = S(algorithm_type="dpmsolver", solver_order=3, **THRESHOLD, **SIGMA_MIN)
    with pytest.raises(RuntimeError):
        sigma_parity.compare(sched, 6)
    original = DPMSolverSinglestepScheduler.convert_model_output

    def with_timestep(self, model_output, *args, sample=None, **kwargs):
        return original(self, model_output, self.timesteps[self.step_index], sample=sample)

    with mock.patch.object(DPMSolverSinglestepScheduler, "convert_model_output", with_timestep):
        r = sigma_parity.compare(sched, 6)
    assert r < sigma_parity.F64_BOUND
    assert oracle.rel(loop(sched, 6), loop(sched.replace(thresholding=False), 6)) > 1e-3


def loop(sched, n, noises=None):
    _, x, _ = sigma_parity.loop_ours(
        sched, n, oracle.start_sample(), oracle.linear_tanh_model(), noises
    )
    return x


def diffusers_steps(sched, n, calls, noises):
    """diffusers' loop (float64 tables) for ``sched``, stopped after ``calls`` model calls."""
    config = sched.to_config()
    d = peer.scheduler(config)
    module = peer.module_of(config)
    with peer._double_tables(module):
        d.set_timesteps(n)
    peer._double_grids(d)
    model = oracle.linear_tanh_model()
    x = oracle.start_sample() * d.init_noise_sigma
    current = [0]
    draw = mock.patch.object(module, "randn_tensor", lambda *a, **k: noises[current[0]])
    with peer._double_tables(module), draw:
        for i, t in enumerate(d.timesteps[:calls]):
            current[0] = i
            x = d.step(model(d.scale_model_input(x, t), t), t, x).prev_sample
    return x


def test_edm_sde_into_sigma_min_above_the_grid():
    """diffusers' float32 karras grid ends an ulp below σ_min = 0.002 here, so its last
    sde-dpmsolver++ step goes up, with the variance 1 - e^{-2h} < 0: NaN. Ours ends at the
    grid's last level (the step is the identity): diffusers' loop one call short."""
    sched = E(algorithm_type="sde-dpmsolver++", solver_type="heun", **SIGMA_MIN)
    noises = oracle.noise_list(40)
    assert not torch.isfinite(diffusers_steps(sched, 5, 5, noises)).all()
    ours = loop(sched, 5, noises)
    assert torch.isfinite(ours).all()
    assert oracle.rel(ours, diffusers_steps(sched, 5, 4, noises)) < sigma_parity.F64_BOUND


def test_edm_third_order_sde():
    """diffusers' EDM third-order step has no sde-dpmsolver++ branch (it raises). Ours is the
    exponential integrator of the reverse SDE (coefficient module, eq. 7) with the D_2 weight
    2 h φ_3(-2h): checked against that update written out in closed form, call by call."""
    sched = E(algorithm_type="sde-dpmsolver++", solver_order=3)
    n = 10
    with pytest.raises(UnboundLocalError):
        sigma_parity.compare(sched, n)
    noises = oracle.noise_list(40)
    ours = loop(sched, n, noises)
    assert torch.isfinite(ours).all()
    # the update of eq. 4 (module docstring) in closed form, in the native (EDM) sample
    _, sig = sched._grid(n)
    model = oracle.linear_tanh_model()
    sd = sched.sigma_data
    x = oracle.start_sample() * sched.init_noise_scale(n) * math.sqrt(sig[0] ** 2 + sd**2)
    outs, lam = [], -np.log(np.where(sig > 0, sig, np.nan))
    orders = [1, 2, 3, 3, 3, 3, 3, 3, 2, 1]  # warm-up; N < 15: 2 then 1 at the end
    for i in range(n):
        s, t = sig[i], sig[i + 1]
        c_in = 1 / math.sqrt(s**2 + sd**2)
        f = model(x * c_in, float(0.25 * np.log(np.float32(s))))
        outs.append(sd**2 / (s**2 + sd**2) * x + s * sd / math.sqrt(s**2 + sd**2) * f)
        e = math.exp(-(lam[i + 1] - lam[i])) if t > 0 else 0.0  # e^{-h}
        h = lam[i + 1] - lam[i]
        d0 = outs[-1]
        new = t / s * e * x + (1 - e * e) * d0 + t * math.sqrt(1 - e * e) * noises[i]
        if orders[i] == 2:
            d1 = (h / (lam[i] - lam[i - 1])) * (outs[-1] - outs[-2])
            new = new + 0.5 * (1 - e * e) * d1
        elif orders[i] == 3:
            h0, h1 = lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
            d1_0 = (h / h0) * (outs[-1] - outs[-2])
            d1_1 = (h / h1) * (outs[-2] - outs[-3])
            d1 = d1_0 + h0 / (h0 + h1) * (d1_0 - d1_1)
            d2 = h / (h0 + h1) * (d1_0 - d1_1)
            c1 = (1 - e * e) / (-2 * h) + 1
            c2 = (1 - e * e - 2 * h + 2 * h * h) / (4 * h * h)  # 2 h φ_3(-2h)
            new = new + c1 * d1 + c2 * d2
        x = new
    assert oracle.rel(ours, x) < 1e-9


# -- the grid, options and errors -------------------------------------------------------------


def test_edm_grid_is_torch_float32():
    """EDM's levels are evaluated in float32 as diffusers' (torch's linspace): to the bit
    where torch runs its vector kernels, which fuse start + i·step into one rounding as we
    do (AVX2, AVX-512); within a few ulps where it runs the scalar kernel, which rounds twice."""
    fused = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    lo, hi = math.log(0.002), math.log(80.0)
    for n in (1, 2, 7, 10, 31, 1000):
        for a, b in ((0.0, 1.0), (lo, hi)):
            ours, theirs = float32_linspace(a, b, n), torch.linspace(a, b, n).numpy()
            if fused:
                assert np.array_equal(ours, theirs), (a, b, n)
            else:
                ulp = np.spacing(np.float32(max(abs(a), abs(b))))  # of the larger end
                assert np.max(np.abs(ours - theirs)) <= 16 * ulp, (a, b, n)  # observed 2
    d = peer.scheduler(E().to_config(), float64=False)
    d.set_timesteps(25)
    ours = E()._grid(25)[1]
    bound = 2.5e-7 if fused else 1e-5  # an ulp or two; the scalar kernel's: observed 1.2e-6
    assert np.max(np.abs(ours[:-1] / d.sigmas.double().numpy()[:-1] - 1)) < bound


@pytest.mark.parametrize(
    ("cls", "diffusers_name"),
    [(S, "DPMSolverSinglestepScheduler"), (E, "EDMDPMSolverMultistepScheduler")],
)
def test_options_are_diffusers(cls, diffusers_name):
    import diffusers

    theirs = set(inspect.signature(getattr(diffusers, diffusers_name).__init__).parameters)
    assert {key for _, key, _, _ in diffusers_options(cls)} == theirs - {"self"}
    assert diffusers_name == cls.DIFFUSERS_CLASS and cls.ORDER == 2


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (S, {"algorithm_type": "dpmsolver"}, "sigma_min"),
        (S, {"use_flow_sigmas": True, "use_karras_sigmas": True}, "use_flow_sigmas"),
        (S, {"prediction_type": "flow", "algorithm_type": "dpmsolver", **SIGMA_MIN}, "flow"),
        (S, {"solver_order": 4}, "solver_order"),
        (E, {"prediction_type": "sample"}, "prediction_type"),
        (E, {"algorithm_type": "dpmsolver"}, "algorithm_type"),
        (E, {"sigma_min": 90.0}, "sigma_min"),
    ],
)
def test_bad_options(cls, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        cls(**kwargs)


def test_bad_init_options():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        S(**FLOW).init(5, x, mu=0.5)
    with pytest.raises(ValueError, match="timesteps"):
        S(use_karras_sigmas=True).init(None, x, timesteps=[900, 500, 100])


def test_facts():
    assert not S(algorithm_type="sde-dpmsolver++").deterministic and S().deterministic
    assert not E(algorithm_type="sde-dpmsolver++").deterministic and E().deterministic
    assert E().init_noise_scale(10) == pytest.approx(math.sqrt(80.0**2 + 1) / math.sqrt(
        float(E()._grid(10)[1][0]) ** 2 + 0.25))  # fmt: skip
    assert E().noise_levels(10)[1] == 1.0
    assert coefficients.phi(2, 0.0) == 0.5
