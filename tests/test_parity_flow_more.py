"""Parity with diffusers 0.42.1 for its newer flow schedulers: ``LTXEulerAncestralRF``
(``LTXEulerAncestralRFScheduler``), ``FlowMapEuler`` (``FlowMapEulerDiscreteScheduler``)
and ``MiniMaxH3`` (``MiniMaxH3Scheduler``).

Each case runs our loop and diffusers' (driven as its pipelines drive it, float64 tables
and grids: :func:`diffsched.interop.peer.run`) from the same start with the same model and,
where the method draws, the same noise; timesteps equal, final samples within 1e-6
relative in float64 (observed: about 1e-16; MiniMaxH3 1.5e-8, because the float64 peer
builds its grid in float64 where diffusers, and we, build it in float32) and 1e-4 in
float32 (observed 9e-8).
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
LTX_SIGMAS = [1.0, 0.9375, 0.75, 0.5, 0.25, 0.125, 0.0]  # float32-exact ComfyUI-style levels

# (scheduler, step counts, init options = diffusers' set_timesteps keywords)
CASES = [
    (ds.LTXEulerAncestralRF(), (1, 4, 20), {}),
    (ds.LTXEulerAncestralRF(eta=0.0), (3, 10), {}),
    (ds.LTXEulerAncestralRF(eta=0.5, s_noise=0.8, num_train_steps=500), (7,), {}),
    (ds.LTXEulerAncestralRF(s_noise=0.0), (5,), {}),
    (ds.LTXEulerAncestralRF(), (None,), {"sigmas": LTX_SIGMAS}),
    (ds.FlowMapEuler(), (1, 4, 16), {}),
    (ds.FlowMapEuler(shift=5.0, num_train_steps=1000), (2, 8), {}),
    (ds.FlowMapEuler(shift=3.0), (None,), {"sigmas": [1.0, 0.8, 0.5, 0.2]}),
    (ds.FlowMapEuler(), (None,), {"timesteps": [1000.0, 750.0, 400.0, 100.0]}),
    (ds.MiniMaxH3(), (2, 8, 30), {}),
    (ds.MiniMaxH3(shift=3.0), (5, 12), {}),
    (ds.MiniMaxH3(shift=1.0), (6,), {}),
    (ds.MiniMaxH3(), (None,), {"sigmas": [1.0, 0.75, 0.5, 0.0]}),
    (ds.Helios(), (3, 10), {"stage_index": 0}),
    (ds.Helios(), (6,), {"stage_index": 1}),
    (ds.Helios(solver_order=3, solver_type="bh1"), (12,), {"stage_index": 2}),
    (ds.Helios(scheduler_type="euler", gamma=0.5), (5,), {"stage_index": 1}),
    (
        ds.Helios(use_dynamic_shifting=True, time_shift_type="linear"),
        (8,),
        {"stage_index": 2, "mu": 2.0},
    ),
    (ds.Helios(stages=1, stage_range=(0.0, 1.0), shift=3.0), (1, 9), {}),
    (ds.Helios(stages=1, stage_range=(0.0, 1.0), scheduler_type="euler"), (7,), {}),
    (
        ds.Helios(lower_order_final=False, disable_corrector=(2,)),
        (8,),
        {"stage_index": 0},
    ),
]


def _params():
    out = []
    for i, (sched, steps, options) in enumerate(CASES):
        for n in steps:
            label = f"{type(sched).__name__}{i}-N={n}{'-' + next(iter(options)) if options else ''}"
            out.append(pytest.param(sched, n, options, id=label))
    return out


def compare(sched, n, options, dtype=torch.float64):
    x = oracle.start_sample(dtype=dtype)
    model = oracle.linear_tanh_model()
    noises = oracle.noise_list(40, dtype=dtype)
    host = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    ts, ours = _run_ours(sched, n, x, model, noises, host)
    config = sched.to_config()
    kwargs = dict(options)
    their_ts, theirs = peer.run(
        config, model, x, n, noises=None if sched.deterministic else noises,
        float64=dtype == torch.float64, **kwargs,
    )  # fmt: skip
    return ts, ours, their_ts, theirs


def _run_ours(sched, n, x, model, noises, options):
    state, ts = sched.init(n, x, **options)
    y = x
    for i, t in enumerate(ts):
        kwargs = {} if sched.deterministic else {"noise": noises[i]}
        state, y = sched.step(state, y, model(y, t), **kwargs)
    return ts, y


@pytest.mark.parametrize(("sched", "n", "options"), _params())
def test_parity_float64(sched, n, options):
    ts, ours, their_ts, theirs = compare(sched, n, options)
    np.testing.assert_allclose(
        np.asarray(ts, np.float64), their_ts.double().numpy(), rtol=1e-6, atol=1e-6
    )
    oracle.check(ours, theirs, "PARITY flow (newer)", type(sched).__name__, F64_TOL)


@pytest.mark.parametrize(
    ("sched", "n", "options"), [p for p in _params() if "N=None" not in p.id][::3]
)
def test_parity_float32(sched, n, options):
    _, ours, _, theirs = compare(sched, n, options, dtype=torch.float32)
    oracle.check(ours, theirs, "PARITY flow (newer) float32", type(sched).__name__, F32_TOL)


def test_flow_map_r_timesteps():
    """The model's second time input: the next call's timestep, 0 at the last call."""
    sched = ds.FlowMapEuler(shift=5.0)
    _, ts = sched.init(4, np.zeros(3))
    np.testing.assert_allclose(sched.r_timesteps(4), [*np.asarray(ts)[1:], 0.0])


def test_minimax_counts_grid_points():
    """N grid points, the terminal 0 included: N - 1 calls; fewer where points repeat."""
    _, ts = ds.MiniMaxH3().init(8, np.zeros(3))
    assert len(ts) == 7
    with pytest.raises(ValueError, match="num_steps >= 2"):
        ds.MiniMaxH3().init(1, np.zeros(3))
    with pytest.raises(ValueError, match=r"ending at 0\.0"):
        ds.MiniMaxH3().init(None, np.zeros(3), sigmas=[1.0, 0.5])


def test_configs_round_trip():
    for sched in (
        ds.LTXEulerAncestralRF(eta=0.3, s_noise=0.9),
        ds.FlowMapEuler(shift=5.0),
        ds.MiniMaxH3(shift=3.0),
    ):
        assert ds.from_config(sched.to_config()) == sched


# -- image-to-image: the flow img2img pipelines' cut, set_begin_index, scale_noise ----------


def _img2img_diffusers(config, n, strength, clean, noise, model, noises, our_start):
    from unittest import mock

    module = peer.module_of(config)
    d = peer.scheduler(config)
    d.set_timesteps(n)
    peer._double_grids(d)
    calls = d.num_inference_steps
    t_start = int(max(calls - min(calls * strength, calls), 0))  # SD3 / FLUX img2img
    timesteps = d.timesteps[t_start:]
    d.set_begin_index(t_start)
    current = [0]
    # LTXEulerAncestralRFScheduler has no scale_noise (nor add_noise): our start
    start = d.scale_noise(clean, timesteps[:1], noise) if hasattr(d, "scale_noise") else our_start
    x = start
    with mock.patch.object(module, "randn_tensor", lambda *a, **k: noises[current[0]], create=True):
        for i, t in enumerate(timesteps):
            current[0] = i
            x = d.step(model(x, t), t, x).prev_sample
    return timesteps, start, x


@pytest.mark.parametrize("strength", (0.3, 0.75))
@pytest.mark.parametrize(
    ("sched", "n"),
    [(ds.LTXEulerAncestralRF(), 10), (ds.FlowMapEuler(shift=5.0), 10), (ds.MiniMaxH3(), 11)],
    ids=lambda v: type(v).__name__ if not isinstance(v, int) else f"N={v}",
)
def test_strength_matches_diffusers(sched, n, strength):
    clean, noise, model, noises = oracle.img2img_inputs(n)
    ts, start, x = oracle.img2img_ours(sched, n, strength, clean, noise, model, noises)
    their_ts, their_start, theirs = _img2img_diffusers(
        sched.to_config(), n, strength, clean, noise, model, noises, start
    )
    np.testing.assert_allclose(np.asarray(ts, np.float64), their_ts.double().numpy(), rtol=1e-6)
    assert oracle.rel(start, their_start) < F64_TOL
    oracle.check(x, theirs, "IMG2IMG flow (newer)", f"{type(sched).__name__}-s={strength}", F64_TOL)


# -- HeliosDMD: driven as the distilled Helios pipeline drives it ------------------------------

DMD_SHAPE = (2, 2, 2, 2, 8)  # (batch, channels, frames, height, width): diffusers reshapes σ to 5-D


def _dmd_diffusers(config, n, x, model, **set_timesteps):
    d = peer.scheduler(config)
    d.set_timesteps(n, **set_timesteps)
    start = x
    for i, t in enumerate(d.timesteps):
        x = d.step(
            model(x, t), t, x, cur_sampling_step=i, dmd_noisy_tensor=start,
            dmd_sigmas=d.sigmas, dmd_timesteps=d.timesteps, all_timesteps=d.timesteps,
        ).prev_sample  # fmt: skip
    return d.timesteps, x


@pytest.mark.parametrize(
    ("sched", "n", "options"),
    [
        (ds.HeliosDMD(), 3, {"stage_index": 0}),
        (ds.HeliosDMD(), 2, {"stage_index": 1}),
        (ds.HeliosDMD(gamma=0.5), 4, {"stage_index": 2}),
        (ds.HeliosDMD(), 2, {"stage_index": 0, "is_amplify_first_chunk": True}),
        (ds.HeliosDMD(use_dynamic_shifting=True), 3, {"stage_index": 1, "mu": 1.5}),
        (ds.HeliosDMD(stages=1, shift=3.0), 4, {}),
        (ds.HeliosDMD(), 1, {"stage_index": 2}),
    ],
    ids=lambda v: f"N={v}" if isinstance(v, int) else None,
)
def test_helios_dmd_parity(sched, n, options):
    x = oracle.start_sample(shape=DMD_SHAPE)
    model = oracle.linear_tanh_model()
    state, ts = sched.init(n, x, **options)
    y = x
    for t in ts:
        state, y = sched.step(state, y, model(y, t))
    their_ts, theirs = _dmd_diffusers(sched.to_config(), n, x, model, **options)
    np.testing.assert_allclose(np.asarray(ts), their_ts.double().numpy(), rtol=1e-12)
    oracle.check(y, theirs, "PARITY flow (newer)", "HeliosDMD", F64_TOL)
