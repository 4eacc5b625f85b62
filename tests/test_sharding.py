"""``ds.sample(..., compile=True)`` on a batch sharded over a device mesh: the state ``init``
builds from the sharded template, the sharding of the result, and samples equal to the
single-device run, deterministic and stochastic (the counter-based noise does not depend
on the sharding). The eager loop (``compile=False``) on the sharded batch gives the same
samples too: the exact models place their ᾱ, timestep and tables replicated over the mesh.

The mesh is 8 simulated CPU devices (``--xla_force_host_platform_device_count=8``). That
flag only acts before JAX starts, and the rest of the suite has started it in this process,
so the checks run in one subprocess, which reports its findings as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

NUM_DEVICES = 8

CHECK = r"""
import json, sys, time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import diffsched as ds
from diffsched.exact import models

devices = jax.devices()
assert len(devices) == 8, devices
flat = Mesh(np.array(devices), ("batch",))
grid = Mesh(np.array(devices).reshape(4, 2), ("batch", "model"))  # replicated over "model"
W = jnp.asarray(np.random.default_rng(2).standard_normal((8, 8)) / 4)


def gmm(sched):
    return models.make_model(
        "gmm", sched.alphas_cumprod, sched.prediction_type, n_components=8, dim=2, seed=0
    )


def tanh_model(sched):
    return lambda x, t: jnp.tanh(x @ W + 1e-3 * t)


def flow_gmm(sched):
    return models.make_flow_model("gmm", sched.num_train_steps, n_components=8, dim=2, seed=0)


# name: (scheduler, model, noise shape, mesh, partition spec of the noise)
CASES = {
    "DDIM": (ds.DDIM(), gmm, (64, 2), flat, P("batch")),
    "Euler": (ds.Euler(), gmm, (64, 2), flat, P("batch")),
    "DPMSolverMultistep": (ds.DPMSolverMultistep(), gmm, (64, 2), flat, P("batch")),
    "EulerAncestral": (ds.EulerAncestral(), gmm, (64, 2), flat, P("batch")),
    "DPMSolverMultistep-4d": (ds.DPMSolverMultistep(), tanh_model, (16, 4, 8, 8), flat, P("batch")),
    "EulerAncestral-4x2-mesh": (ds.EulerAncestral(), gmm, (64, 2), grid, P("batch")),
    "FlowMatchEuler": (ds.FlowMatchEuler(shift=3.0), flow_gmm, (64, 2), flat, P("batch")),
}

report = {}
for name, (sched, make, shape, mesh, spec) in CASES.items():
    model = make(sched)
    noise = np.random.default_rng(0).standard_normal(shape)
    sharding = NamedSharding(mesh, spec)
    one = jax.device_put(noise, devices[0])
    many = jax.device_put(noise, sharding)

    state, timesteps = sched.init(10, many, 7)
    history_want = NamedSharding(mesh, P(None, *spec))
    # a jax.ShapeDtypeStruct with the sharding places the state as the array does
    spec_state, _ = sched.init(10, jax.ShapeDtypeStruct(shape, many.dtype, sharding=sharding), 7)
    small = [a for f, a in state._asdict().items() if f != "history"] + [timesteps]

    start = time.perf_counter()
    want = ds.sample(model, sched, one, 10, key=7, compile=True).block_until_ready()
    mid = time.perf_counter()
    got = ds.sample(model, sched, many, 10, key=7, compile=True).block_until_ready()
    end = time.perf_counter()
    want_eager = ds.sample(model, sched, one, 10, key=7).block_until_ready()
    eager_mid = time.perf_counter()
    got_eager = ds.sample(model, sched, many, 10, key=7).block_until_ready()
    eager_end = time.perf_counter()
    report[name] = {
        "tables_replicated": all(
            a.sharding.is_fully_replicated and a.sharding.device_set == sharding.device_set
            for a in small
        ),
        "history_sharding": str(state.history.sharding.spec),
        "struct_history_as_wanted": spec_state.history.sharding.is_equivalent_to(
            history_want, spec_state.history.ndim
        ),
        "history_as_wanted": state.history.sharding.is_equivalent_to(
            history_want, state.history.ndim
        ),
        "out_sharding": str(got.sharding.spec),
        "out_as_input": got.sharding.is_equivalent_to(many.sharding, got.ndim),
        "max_abs_diff": float(np.max(np.abs(np.asarray(got) - np.asarray(want)))),
        "finite": bool(np.isfinite(np.asarray(got)).all()),
        "seconds_one_device": mid - start,
        "seconds_sharded": end - mid,
        "eager_out_as_input": got_eager.sharding.is_equivalent_to(many.sharding, got_eager.ndim),
        "eager_max_abs_diff": float(
            np.max(np.abs(np.asarray(got_eager) - np.asarray(want_eager)))
        ),
        "eager_finite": bool(np.isfinite(np.asarray(got_eager)).all()),
        "seconds_eager_one_device": eager_mid - end,
        "seconds_eager_sharded": eager_end - eager_mid,
    }
print(json.dumps(report))
"""

CASE_NAMES = (
    "DDIM",
    "Euler",
    "DPMSolverMultistep",
    "EulerAncestral",
    "DPMSolverMultistep-4d",
    "EulerAncestral-4x2-mesh",
    "FlowMatchEuler",
)


@pytest.fixture(scope="module")
def report():
    flags = os.environ.get("XLA_FLAGS", "")
    env = {
        **os.environ,
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={NUM_DEVICES}".strip(),
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_case_ran(report):
    assert tuple(report) == CASE_NAMES


@pytest.mark.parametrize("name", CASE_NAMES)
def test_init_places_the_state_on_the_mesh(report, name):
    """The small tables are replicated over the mesh; the (K, *shape) history is sharded
    like the template on the sample axes, K unsharded (also from a sharded
    ``jax.ShapeDtypeStruct`` template)."""
    case = report[name]
    assert case["tables_replicated"]
    assert case["history_as_wanted"], case["history_sharding"]
    assert case["struct_history_as_wanted"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_sharded_sample_equals_one_device(report, name):
    case = report[name]
    assert case["out_as_input"], case["out_sharding"]
    assert case["finite"]
    assert case["max_abs_diff"] <= 1e-12


@pytest.mark.parametrize("name", CASE_NAMES)
def test_eager_sharded_sample_equals_one_device(report, name):
    """``compile=False`` on the sharded batch: the result is sharded as the batch (the exact
    models' small arrays go replicated over the mesh) and equals the single-device eager
    run."""
    case = report[name]
    assert case["eager_out_as_input"]
    assert case["eager_finite"]
    assert case["eager_max_abs_diff"] <= 1e-12
