"""diffusers' two SDE classes on a Brownian tree: ``DPMSolverSDE`` (``DPMSolverSDEScheduler``)
and ``CosineDPMSolverMultistep`` (``CosineDPMSolverMultistepScheduler``), against diffusers
0.42.1 in float64 with its noise sampler's draws replayed through ``noise=``.

Observed largest relative differences of the final sample: DPMSolverSDE 2.2e-9 (Karras,
exponential and beta grids: the midpoints' fractional timesteps; 9e-16 on the spaced
grids), CosineDPMSolverMultistep 7.1e-8 (its float32 arctan timesteps, within an ulp of
torch's float32 atan).
"""

from __future__ import annotations

import math

import numpy as np
import oracle
import pytest
import torch

import diffsched as ds
from diffsched.core import brownian, engine
from diffsched.core.scheduler import _brownian_noise
from diffsched.interop import peer

SDE_CASES = [
    (ds.DPMSolverSDE(), (1, 2, 5, 10)),
    (ds.DPMSolverSDE(beta_schedule="quadratic", use_karras_sigmas=True), (3, 12)),
    (
        ds.DPMSolverSDE(
            prediction_type="angular_velocity", timestep_spacing="leading", timesteps_offset=1
        ),
        (4, 9),
    ),
    (ds.DPMSolverSDE(timestep_spacing="trailing", use_exponential_sigmas=True), (6,)),
    (ds.DPMSolverSDE(use_beta_sigmas=True, beta_schedule="squared_cosine"), (7,)),
]
COSINE_CASES = [
    (ds.CosineDPMSolverMultistep(), (1, 2, 5, 20)),
    (ds.CosineDPMSolverMultistep(sigma_schedule="karras", prediction_type="noise"), (3, 12)),
    (ds.CosineDPMSolverMultistep(solver_type="heun"), (4, 16)),
    (ds.CosineDPMSolverMultistep(solver_order=1), (5,)),
    (
        ds.CosineDPMSolverMultistep(lower_order_final=False, euler_at_final=True, sigma_data=0.5),
        (6,),
    ),
    (ds.CosineDPMSolverMultistep(final_sigmas_type="sigma_min", sigma_min=0.5, sigma_max=80), (7,)),
]


def _diffusers(config, n, x0, noises):
    """diffusers' loop (float64 tables and grids), its Brownian noise sampler replaced by
    ``noises`` in draw order; (timesteps, final sample, number of draws)."""
    d = peer.scheduler(config)
    with peer._double_tables(peer.module_of(config)):
        d.set_timesteps(n)
    peer._double_grids(d)
    draws = iter(noises)
    count = [0]

    def sampler(sigma, sigma_next):
        count[0] += 1
        return next(draws)

    d.noise_sampler = sampler
    model = oracle.linear_tanh_model()
    x = x0 * d.init_noise_sigma
    for t in d.timesteps:
        x = d.step(model(d.scale_model_input(x, t), t), t, x).prev_sample
    return d.timesteps.numpy(), x, count[0]


def _ours(sched, n, x0, noises):
    """Our loop, each drawing call given the next of ``noises``."""
    model = oracle.linear_tanh_model()
    state, ts = sched.init(n, x0, 0)
    program = sched.program(n)
    y = x0 * sched.init_noise_scale(n)
    draws = iter(noises)
    for i, t in enumerate(ts):
        z = next(draws) if program.coefs[i, engine.COEF_COLUMNS.index("out_noise")] else None
        state, y = sched.step(state, y, model(y, t), noise=z)
    return np.asarray(ts), y


@pytest.mark.parametrize("sched, counts", SDE_CASES + COSINE_CASES, ids=lambda v: str(v)[:60])
def test_equal_to_diffusers_with_its_noise(sched, counts):
    for n in counts:
        g = torch.Generator().manual_seed(n)
        x0 = torch.randn(oracle.SHAPE, generator=g, dtype=torch.float64)
        noises = [torch.randn(oracle.SHAPE, generator=g, dtype=torch.float64) for _ in range(2 * n)]
        ts_d, ref, drawn = _diffusers(sched.to_config(), n, x0, noises)
        ts, out = _ours(sched, n, x0, noises)
        assert len(ts) == len(ts_d) == (2 * n - 1 if isinstance(sched, ds.DPMSolverSDE) else n)
        np.testing.assert_allclose(ts, ts_d, rtol=1e-6, atol=1e-6)
        rel = float((out - ref).abs().max() / ref.abs().max())
        oracle.record("PARITY-SDE", type(sched).__name__, rel)
        assert rel < 1e-6, (n, rel)
        if isinstance(sched, ds.DPMSolverSDE):  # diffusers draws at every call but the last
            assert drawn == 2 * n - 2


def test_loaded_by_from_config():
    sched = ds.from_config(
        {
            "_class_name": "DPMSolverSDEScheduler",
            "use_karras_sigmas": True,
            "noise_sampler_seed": 42,
            "beta_schedule": "scaled_linear",
            "timestep_spacing": "leading",
            "steps_offset": 1,
        }
    )
    assert isinstance(sched, ds.DPMSolverSDE)
    assert sched.use_karras_sigmas and sched.noise_sampler_seed == 42
    assert sched.noise_type == "brownian"
    cos = ds.from_config(
        {"_class_name": "CosineDPMSolverMultistepScheduler", "sigma_max": 500.0,
         "sigma_min": 0.3, "prediction_type": "v_prediction", "solver_type": "heun"}
    )  # fmt: skip
    assert isinstance(cos, ds.CosineDPMSolverMultistep)
    assert cos.prediction_type == "angular_velocity" and cos.solver_type == "heun"


def test_noise_sampler_seed_is_the_key():
    x = np.random.default_rng(0).standard_normal((2, 8))
    runs = []
    for sched, key in [
        (ds.DPMSolverSDE(noise_sampler_seed=5), 0),
        (ds.DPMSolverSDE(noise_sampler_seed=5), 9),
        (ds.DPMSolverSDE(), 5),
        (ds.DPMSolverSDE(), 6),
    ]:
        state, ts = sched.init(4, x, key)
        y = x
        for _ in ts:
            state, y = sched.step(state, y, np.tanh(y))
        runs.append(y)
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])
    assert not np.array_equal(runs[2], runs[3])


def test_dpmsolver_sde_draws_share_one_path():
    """z_1 over (σ_i, σ_m) and z_2 over (σ_i, σ_{i+1}) are increments of one path: their
    correlation is sqrt(|Δτ_1| / |Δτ_2|) (observed within 0.01 on 40 000 paths)."""
    sched = ds.DPMSolverSDE(use_karras_sigmas=True)
    shape = (40_000,)
    state, _ = sched.init(5, np.zeros(shape), 3)
    z1 = _brownian_noise(state, np.zeros(shape))
    a, b = engine.extra_row(state)[1:3]
    state, _ = sched.step(state, np.zeros(shape), np.zeros(shape), noise=z1)
    z2 = _brownian_noise(state, np.zeros(shape))
    c, d = engine.extra_row(state)[1:3]
    assert a == c and d < b < a  # both from σ_i: to the midpoint, then to σ_{i+1}
    expected = math.sqrt((a - b) / (a - d))
    assert abs(np.corrcoef(z1, z2)[0, 1] - expected) < 5 / math.sqrt(shape[0])
    assert abs(z1.std() - 1) < 0.02 and abs(z2.std() - 1) < 0.02
    np.testing.assert_allclose(
        z1, brownian.increment(brownian.tree_seed(state.key), a, b, np.zeros(shape)), rtol=1e-12
    )
