"""The method kit: a new method is its coefficients (Ralston's RK2, added as one class in
one module, is picked up by every registry and generic test), and it converges."""

from __future__ import annotations

import numpy as np

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

    # another helper's file this round (ComfyUI's stochastic samplers, η only on some)
    allowed = {("comfy_stochastic.py", "eta")}
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
                if (path.name, name) not in allowed:
                    found.append(f"{path.name}:{node.lineno} {name}")
    assert not found, found
