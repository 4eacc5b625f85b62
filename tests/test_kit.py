"""The method kit: a new method is its coefficients (Ralston's RK2, added as one class in
one module, is picked up by every registry and generic test), and it converges."""

from __future__ import annotations

import numpy as np
import pytest

import diffsched as ds
from diffsched.exact import models
from diffsched.methods.kit import HEUN, RALSTON


def test_ralston_tableau_has_second_order_and_its_own_stage():
    a, b, c = (np.asarray(v, dtype=float) for v in RALSTON)
    assert np.isclose(b.sum(), 1.0) and np.isclose(b @ c, 0.5)  # order conditions 1, 2
    np.testing.assert_allclose(a.sum(axis=1), c)  # row sums are the stage times
    assert c[1] == 2 / 3 and c[1] != HEUN[2][1]


def test_ralston_converges_at_second_order_on_an_exact_flow_model():
    model = models.make_flow_model("gmm")
    x = np.random.default_rng(0).standard_normal((16, *models.sample_shape("gmm", 1)[1:]))

    def run(n):
        return ds.sample(model, ds.Ralston(model="flow", scheduler="simple"), x, n)

    finest = run(128)
    errors = [np.linalg.norm(run(n) - finest) / np.linalg.norm(finest) for n in (8, 16, 32)]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > 1.7), (errors, orders)  # observed 1.9, 2.3
    heun = ds.sample(model, ds.ComfyHeun(model="flow", scheduler="simple"), x, 8)
    assert not np.allclose(heun, run(8))


def test_a_new_method_class_is_registered_by_its_module_alone():
    assert ds.Ralston in ds.methods.CLASSES and ds.Ralston.FAMILY == "ComfyUI samplers"
    assert ds.from_config(ds.Ralston().to_config()) == ds.Ralston()


def test_no_method_reads_an_option_through_getattr_with_a_default():
    """Options are read as attributes, or passed to the grid functions explicitly
    (``diffsched.schedules``): no ``getattr(self, "option", default)`` for options only some
    classes have."""
    import ast
    from pathlib import Path

    found = []
    for path in sorted((Path(ds.__file__).parent / "methods").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and len(node.args) == 3
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id in ("self", "sched", "scheduler")
            ):
                name = (
                    ast.literal_eval(node.args[1])
                    if isinstance(node.args[1], ast.Constant)
                    else "?"
                )
                found.append(f"{path.name}:{node.lineno} {name}")
    assert not found, found


def test_the_one_noise_estimate_recovers_the_noise_of_every_prediction_type():
    """ε̂ = (x - α x̂_0)/σ (kit.noise_estimate), from the model output and from x̂_0."""
    from diffsched.methods.kit import noise_estimate

    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal(5), rng.standard_normal(5)
    sigma = np.array([0.05, 0.3, 0.6, 0.9, 0.99])
    vp = np.sqrt(1 - sigma**2)
    outputs = {
        "noise": (vp, eps),
        "sample": (vp, x0),
        "angular_velocity": (vp, vp * eps - sigma * x0),
        "flow": (1 - sigma, eps - x0),
    }
    for kind, (alpha, out) in outputs.items():
        x = alpha * x0 + sigma * eps
        est = noise_estimate(kind, alpha, sigma, from_x0=False)
        np.testing.assert_allclose(est.sample * x + est.output * out, eps, atol=1e-12)
        assert not np.any(est.x0), kind
        est = noise_estimate(kind, alpha, sigma, from_x0=True)
        np.testing.assert_allclose(est.sample * x + est.x0 * x0, eps, atol=1e-12)
        assert not np.any(est.output), kind


def test_exponential_step_starts_from_its_origin_and_weighs_the_estimates():
    """Row i of kit.exponential_multistep: keep_i on the sample of call o_i, c_ik times
    m_{i-k} spread over the operands m is formed from."""
    from diffsched.core.engine import OUTPUT, SAMPLE, X0
    from diffsched.methods.kit import Estimate, exponential_multistep

    est = Estimate(np.array([2.0, 3.0, 5.0]), np.array([7.0, 11.0, 13.0]), np.zeros(3))
    update = exponential_multistep([0.5, 0.25, 0.125], [[1.0], {0: 2.0, 1: 0.0}, {1: 3.0}],
                                   est, origin=[0, 0, 2])  # fmt: skip
    assert update[(SAMPLE, 0)].tolist() == [0.5 + 2.0, 2.0 * 3.0, 0.125]
    assert update[(SAMPLE, 1)].tolist() == [0.0, 0.25, 3.0 * 3.0]
    assert update[(OUTPUT, 0)].tolist() == [7.0, 2.0 * 11.0, 0.0]
    assert update[(OUTPUT, 1)].tolist() == [0.0, 0.0, 3.0 * 11.0]
    assert (X0, 0) not in update and (SAMPLE, 2) not in update


def test_unipc_weights_with_bh2_at_second_order_are_dpm_solver_plus_plus_2m():
    """UniP-2 with B(h) = e^ĥ - 1 takes ρ = 1/2: DPM-Solver++(2M) (Zhao et al. 2023,
    sec. 3.3); UniC-1's ρ^c = 1/2; the corrector's ρ^c solves R ρ = g."""
    import math

    from diffsched.methods.kit import unipc_rhos

    hh = -0.7
    h_phis = [math.expm1(hh) / hh - 1, 0.01]  # ĥ φ_2(ĥ), and a made-up third
    st = unipc_rhos(np.array([-1.3]), hh, "bh2", h_phis)
    assert st.b_h == math.expm1(hh) and st.rho_p.tolist() == [0.5]
    g = [h_phis[0] / st.b_h, h_phis[1] * 2 / st.b_h]
    np.testing.assert_allclose(np.array([[1, 1], [-1.3, 1]]) @ st.rho_c, g, rtol=0, atol=1e-14)
    assert unipc_rhos(np.zeros(0), hh, "bh1", h_phis).rho_c.tolist() == [0.5]


def _FLOW_MATCH(**o):
    return ds.FlowMatchEuler(**o)


@pytest.mark.parametrize(
    "make",
    [
        lambda **o: ds.DPMSolverMultistep(use_flow_sigmas=True, prediction_type="flow", **o),
        lambda **o: ds.DPMSolverSinglestep(use_flow_sigmas=True, prediction_type="flow", **o),
        lambda **o: ds.DEIS(use_flow_sigmas=True, prediction_type="flow", **o),
        lambda **o: ds.UniPC(use_flow_sigmas=True, prediction_type="flow", **o),
        _FLOW_MATCH,
        lambda **o: ds.Helios(**o),
    ],
    ids=["DPMSolverMultistep", "DPMSolverSinglestep", "DEIS", "UniPC", "FlowMatchEuler", "Helios"],
)
def test_every_dynamic_shift_checks_mu_the_same_way(make):
    """init(..., mu=) (schedules.shifts.checked_mu): refused without use_dynamic_shifting,
    a number and finite with it."""
    x = np.zeros((1, 3))
    if make is not _FLOW_MATCH:
        with pytest.raises(ValueError, match="only with use_dynamic_shifting=True"):
            make().init(4, x, mu=0.5)
    else:  # as diffusers, whose flow pipelines pass μ to every config (FLUX.1-schnell's too)
        assert np.array_equal(make().init(4, x, mu=0.5)[1], make().init(4, x)[1])
    dynamic = make(use_dynamic_shifting=True)
    with pytest.raises(TypeError, match="mu must be a number"):
        dynamic.init(4, x, mu="0.5")
    with pytest.raises(ValueError, match="mu must be finite"):
        dynamic.init(4, x, mu=float("nan"))
    a, b = dynamic.init(4, x, mu=0.5)[1], dynamic.init(4, x, mu=1.5)[1]
    assert not np.allclose(np.asarray(a, float), np.asarray(b, float))
