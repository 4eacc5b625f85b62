"""Piflow (π-Flow's DX-policy sampler) against diffusers 0.42.1's ``PiflowScheduler``.

Each case runs our loop and diffusers' (driven as its pipelines drive it:
:func:`diffsched.interop.peer.run`, float64 tables and grids) from the same start with the
same model, whose output holds n_grid velocity blocks along the last axis, each its own
function of the sample: timesteps equal to float32 rounding (diffusers builds its grid in
float32; relative 1.4e-7 observed), final samples within 1e-6 relative in float64
(observed: 3.4e-14 at most, at N = 1) and 1e-4 in float32 (diffusers' own float32
loop; observed 1.2e-5 at N = 1, whose one segment diffusers integrates with 128 float32
substeps; 3e-7 elsewhere). The method is deterministic: no noise to replay. Every value
of every option is covered (not every product).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import oracle  # noqa: E402

import diffsched as ds  # noqa: E402
from diffsched.interop import peer  # noqa: E402

F64_TOL = 1e-6
F32_TOL = 1e-4
SHAPE = (2, 6, 5)  # (batch, tokens, channels): channels last, as Kandinsky 6's tokens

# (scheduler, step counts): every option value at least once
CASES = [
    (ds.Piflow(), (1, 2, 4, 8)),
    (ds.Piflow(shift=1.0, n_grid=2), (3, 6)),
    (ds.Piflow(shift=3.0, n_grid=4, final_step_size_scale=1.0), (1, 5)),
    (ds.Piflow(n_grid=7, final_step_size_scale=0.25, num_policy_substeps=7), (2, 9)),
    (ds.Piflow(eps=1e-3, num_policy_substeps=1), (1, 4)),
    (ds.Piflow(eps=0.05, shift=2.0, num_train_steps=500), (3,)),
    (ds.Piflow(num_policy_substeps=1000, n_grid=3), (4,)),
]


def _params():
    return [pytest.param(sched, n, id=f"case{i}-N={n}")
            for i, (sched, steps) in enumerate(CASES) for n in steps]  # fmt: skip


def wide_model(n_grid, channels=SHAPE[-1], seed=1234):
    """x -> [tanh(x @ W_k + 1e-3 t) for k < n_grid] along the last axis: n_grid velocity
    blocks, each its own map of the sample (torch)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(channels, n_grid * channels, generator=g, dtype=torch.float64)
    w = w / channels**0.5

    def model(x, t):
        return torch.tanh(x @ w.to(x.dtype) + 1e-3 * float(t))

    return model


def run_ours(sched, n, x, model):
    state, ts = sched.init(n, x)
    y = x
    for t in ts:
        state, y = sched.step(state, y, model(y, t))
    return ts, y


def compare(sched, n, dtype=torch.float64):
    x = oracle.start_sample(SHAPE, dtype=dtype)
    model = wide_model(sched.n_grid)
    ts, ours = run_ours(sched, n, x, model)
    their_ts, theirs = peer.run(sched.to_config(), model, x, n, float64=dtype == torch.float64)
    return ts, ours, their_ts, theirs


@pytest.mark.parametrize(("sched", "n"), _params())
def test_parity_float64(sched, n):
    ts, ours, their_ts, theirs = compare(sched, n)
    # diffusers' timesteps are float32 (its grid is built in float32)
    np.testing.assert_allclose(np.asarray(ts), their_ts.double().numpy(), rtol=1e-6)
    r = oracle.rel(ours, theirs)
    oracle.record("PARITY Piflow", f"N={n}", r)
    assert r < F64_TOL, r
    assert oracle.rel(ours, oracle.start_sample(SHAPE)) > 1e-2


@pytest.mark.parametrize(("sched", "n"), _params()[::3])
def test_parity_float32(sched, n):
    _, ours, _, theirs = compare(sched, n, dtype=torch.float32)
    assert ours.dtype == torch.float32
    r = oracle.rel(ours, theirs)
    oracle.record("PARITY Piflow float32", f"N={n}", r)
    assert r < F32_TOL, r


def test_equal_velocities_give_the_flow_euler_step():
    """With the n velocities equal, x̂_0 is constant over the segment and the substeps (4)
    telescope: each call is the rectified-flow Euler step x + (σ_d - σ_s) u, whatever the
    substep count."""
    x = oracle.start_sample(SHAPE)
    for sched, n in ((ds.Piflow(), 4), (ds.Piflow(num_policy_substeps=3, shift=2.0), 3)):
        r = sched.raw_times(n)
        sigma = sched._sigma(r)
        state, ts = sched.init(n, x)
        y, want = x, x
        for i, t in enumerate(ts):
            u = torch.tanh(0.8 * y + 1e-3 * float(t))
            state, y = sched.step(state, y, u.repeat(1, 1, sched.n_grid))
            want = want + (sigma[i + 1] - sigma[i]) * torch.tanh(0.8 * want + 1e-3 * float(t))
        assert oracle.rel(y, want) < 1e-13
        # distinct velocities give another result (the weights are not all on one block)
        state, _ = sched.init(n, x)
        grid = torch.cat([torch.full_like(x, float(k)) for k in range(sched.n_grid)], -1)
        _, z = sched.step(state, x, grid)
        assert 0.0 < float((z - x).abs().max()) < sched.n_grid


def test_averaged_velocity_weights():
    """Each call's weights of the n velocities sum to 1 (v̄ is an average) and the step
    size B is σ_d - σ_s (up to rounding); the first substep reads the last block."""
    sched = ds.Piflow(n_grid=5)
    b = sched.policy_weights(6)
    sigma = sched._sigma(sched.raw_times(6))
    np.testing.assert_allclose(b.sum(axis=1), np.diff(sigma), rtol=1e-12)
    assert np.all(b[:, -1] != 0)


def test_from_config_keys():
    config = {"_class_name": "PiflowScheduler", "num_train_timesteps": 500, "shift": 3.0,
              "n_grid": 4, "eps": 1e-4, "final_step_size_scale": 0.75,
              "num_policy_substeps": 64}  # fmt: skip
    sched = ds.from_config(config)
    assert sched == ds.Piflow(num_train_steps=500, shift=3.0, n_grid=4, eps=1e-4,
                              final_step_size_scale=0.75, num_policy_substeps=64)  # fmt: skip
    back = sched.to_config()
    assert {k: back[k] for k in config} == config
    assert ds.from_config(back) == sched


def test_bad_input():
    sched = ds.Piflow(n_grid=3)
    x = np.zeros((2, 4))
    state, _ = sched.init(2, x)
    with pytest.raises(ValueError, match=r"prediction must have shape \(2, 12\)"):
        sched.step(state, x, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="n_grid"):
        ds.Piflow(n_grid=1)
    with pytest.raises(ValueError, match="final_step_size_scale"):
        ds.Piflow(final_step_size_scale=0.0)
    with pytest.raises(ValueError, match="final_step_size_scale"):
        ds.Piflow(final_step_size_scale=1e-9).init(5, x)  # the last call would end above eps
    with pytest.raises(ValueError, match="per-element"):
        sched.init(2, x, offsets=np.array([0, 1]))
