"""Per-element schedules (init(..., offsets=o), array strength=): each element runs its own loop.

Solo equivalence for every registered class (each element equals the scheduler run alone on
that element from its own start, noise replayed and, for stochastic classes, drawn from the
element's own key), on NumPy, PyTorch and JAX; waiting and done elements; per-element
image-to-image; a jitted step that does not recompile for new offsets; and three diffusers
comparisons: staggered per-frame UniPC copies (SkyReels-V2's diffusion forcing),
FlowMatchEuler's ``per_token_timesteps`` (LTX's hard conditioning), and the Parallel
schedulers' ``batch_step_no_noise``.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import oracle  # noqa: E402
import pytest  # noqa: E402
import test_engine  # noqa: E402
import torch  # noqa: E402

import diffsched as ds  # noqa: E402
from diffsched.core.per_element import ElementState, element_key  # noqa: E402

CASES = test_engine.CASES
NAMES = list(CASES)
SHAPE = (3, 2, 4, 8)
OFFSETS = np.array([0, 3, 1]).reshape(3, 1, 1, 1)
_G = np.random.default_rng(5)
_X = _G.standard_normal(SHAPE)
_W = _G.standard_normal((8, 8)) / 8**0.5
_Z = _G.standard_normal((80, *SHAPE))


def model(x, t):
    """tanh(x @ W + 1e-3 t), t broadcast per element (any backend)."""
    if isinstance(x, torch.Tensor):
        t = torch.as_tensor(t, dtype=x.dtype)
        return torch.tanh(x @ torch.as_tensor(_W, dtype=x.dtype) + 1e-3 * t)
    if isinstance(x, jax.Array):
        return jnp.tanh(x @ jnp.asarray(_W, dtype=x.dtype) + 1e-3 * jnp.asarray(t, x.dtype))
    return np.tanh(x @ _W + 1e-3 * np.asarray(t, dtype=np.float64))


def to(a, backend):
    if backend == "torch":
        return torch.as_tensor(np.asarray(a, dtype=np.float64))
    if backend == "jax":
        return jnp.asarray(a, dtype=jnp.float64)
    return np.asarray(a, dtype=np.float64)


def host(a):
    if isinstance(a, torch.Tensor):
        return a.detach().numpy()
    return np.asarray(a, dtype=np.float64)


def per_element_loop(sched, n, x, offsets, *, key=3, replay=False, backend="numpy", **opts):
    if sched.NO_PER_ELEMENT is not None:
        with pytest.raises(ValueError, match="has no per-element schedules"):
            sched.init(n, to(x, backend), key, offsets=offsets, **opts)
        pytest.skip(f"{type(sched).__name__}: {sched.NO_PER_ELEMENT}")
    state, ts = sched.init(n, to(x, backend), key, offsets=offsets, **opts)
    assert isinstance(state, ElementState)
    y = to(x, backend) * sched.init_noise_scale(n, **{k: v for k, v in opts.items()
                                                      if k != "strength"})  # fmt: skip
    for k in range(ts.shape[0]):
        kwargs = {"noise": to(_Z[k], backend)} if replay and not sched.deterministic else {}
        state, y = sched.step(state, y, model(y, ts[k]), **kwargs)
    return host(y), host(ts)


def solo_loop(sched, n, x, e, offset, *, key=3, replay=False, backend="numpy"):
    """Element e alone (its batch row), from its own start; replayed noise = the per-element
    loop's global draws at the calls where e runs."""
    xe = x[e : e + 1]
    state, ts = sched.init(n, to(xe, backend), element_key(key, e))
    y = to(xe, backend) * sched.init_noise_scale(n)
    for i, t in enumerate(ts):
        kwargs = {}
        if replay and not sched.deterministic:
            kwargs = {"noise": to(_Z[offset + i][e : e + 1], backend)}
        state, y = sched.step(state, y, model(y, t), **kwargs)
    return host(y)


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _gaussian(sched, n):
    """A class whose default noise is Brownian (DPMSolverSDE) refuses per-element
    schedules with it, clearly; its Gaussian draws run per element."""
    if getattr(sched, "noise_type", "gaussian") != "brownian":
        return sched
    with pytest.raises(ValueError, match="noise_type='brownian' is not supported with per-elem"):
        sched.init(n, _X, 0, offsets=OFFSETS)
    return sched.replace(noise_type="gaussian")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("replay", [False, True])
def test_every_element_equals_its_solo_run_numpy(name, replay):
    sched, n = CASES[name]
    sched = _gaussian(sched, n)
    if replay and sched.deterministic:
        pytest.skip("deterministic: nothing to replay")
    y, ts = per_element_loop(sched, n, _X, OFFSETS, replay=replay)
    calls = len(sched.init(n, _X[:1])[1])
    assert ts.shape == (int(OFFSETS.max()) + calls, 3, 1, 1, 1)
    for e, o in enumerate(OFFSETS.reshape(-1)):
        solo = solo_loop(sched, n, _X, e, int(o), replay=replay)
        oracle.record("PER-ELEMENT vs solo (numpy)", name, rel(y[e : e + 1], solo))
        assert rel(y[e : e + 1], solo) < 1e-12, (name, e)


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("name", NAMES)
def test_every_element_equals_its_solo_run_on_other_backends(name, backend):
    sched, n = CASES[name]
    sched = _gaussian(sched, n)
    y, _ = per_element_loop(sched, n, _X, OFFSETS, backend=backend)
    for e, o in enumerate(OFFSETS.reshape(-1)):
        solo = solo_loop(sched, n, _X, e, int(o), backend=backend)
        oracle.record(f"PER-ELEMENT vs solo ({backend})", name, rel(y[e : e + 1], solo))
        assert rel(y[e : e + 1], solo) < 1e-12, (name, e)


@pytest.mark.parametrize("name", ["UniPC", "DDIM-eta-threshold", "EulerAncestral", "Heun"])
def test_per_frame_offsets_wait_and_done_elements(name):
    """(1, 1, F, 1, 1) offsets on a video-like sample; a frame done from the start (offset
    <= -calls) and one that waits stay exactly as given until they run."""
    sched, n = CASES[name]
    x = _G.standard_normal((1, 2, 4, 3, 8))
    calls = len(sched.init(n, x)[1])
    offsets = np.array([-calls, 0, 2, 5]).reshape(1, 1, 4, 1, 1)
    state, ts = sched.init(n, x, 3, offsets=offsets)
    assert ts.shape == (5 + calls, 1, 1, 4, 1, 1)
    first = sched.init(n, x[:, :, :1])[1]
    np.testing.assert_array_equal(ts[:3, 0, 0, 2], np.broadcast_to(first[0], (3, 1, 1)))
    np.testing.assert_array_equal(ts[:, 0, 0, 0, 0, 0], np.full(5 + calls, first[-1]))
    y = x * sched.init_noise_scale(n)
    for k in range(ts.shape[0]):
        before = y.copy()
        state, y = sched.step(state, y, model(y, ts[k]))
        np.testing.assert_array_equal(y[:, :, 0], before[:, :, 0])  # done from the start
        if k < 5:
            np.testing.assert_array_equal(y[:, :, 3], before[:, :, 3])  # waits
    with pytest.raises(IndexError, match="after the last"):
        sched.step(state, y, model(y, ts[-1]))


def test_per_element_strength_and_add_noise():
    """Batched image-to-image: each element's own strength, noised to its own start."""
    sched = ds.DDIM(clip_denoised_sample=False)
    strength = np.array([0.3, 1.0, 0.6]).reshape(3, 1, 1, 1)
    clean, noise = _X, _G.standard_normal(SHAPE)
    state, ts = sched.init(10, clean, 0, strength=strength)
    y = sched.add_noise(state, clean, noise)
    for k in range(ts.shape[0]):
        state, y = sched.step(state, y, model(y, ts[k]))
    for e, s in enumerate(strength.reshape(-1)):
        st, tse = sched.init(10, clean[e : e + 1], 0, strength=float(s))
        ye = sched.add_noise(st, clean[e : e + 1], noise[e : e + 1])
        for t in tse:
            st, ye = sched.step(st, ye, model(ye, t))
        assert rel(y[e : e + 1], ye) < 1e-12


def test_bad_offsets_are_refused():
    sched = ds.DDIM()
    with pytest.raises(ValueError, match="broadcast against the sample"):
        sched.init(4, _X, offsets=np.zeros((2, 1, 1, 1), int))
    with pytest.raises(TypeError, match="integers"):
        sched.init(4, _X, offsets=np.full((3, 1, 1, 1), 0.5))
    with pytest.raises(ValueError, match="cannot start inside its loop"):
        sched.init(4, _X, offsets=np.array([0, -1, 0]).reshape(3, 1, 1, 1))
    with pytest.raises(ValueError, match="every element is done"):
        sched.init(4, _X, offsets=np.full((3, 1, 1, 1), -4))


def test_jitted_step_does_not_recompile_for_new_offsets():
    sched, n = CASES["DPMSolverMultistep"]
    traces = []

    @jax.jit
    def step(state, y, t):
        traces.append(1)
        return sched.step(state, y, model(y, t))

    results = []
    for offsets in (OFFSETS, np.array([2, 0, 3]).reshape(3, 1, 1, 1)):
        state, ts = sched.init(n, jnp.asarray(_X), 3, offsets=offsets)
        y = jnp.asarray(_X)
        for k in range(ts.shape[0]):
            state, y = step(state, y, ts[k])
        results.append(np.asarray(y))
        eager, _ = per_element_loop(sched, n, _X, offsets, backend="jax")
        assert rel(results[-1], eager) < 1e-13
    assert len(traces) == 1


# -- diffusers -------------------------------------------------------------------------------


def test_staggered_unipc_copies_equal_one_loop_with_frame_offsets():
    """SkyReels-V2's diffusion forcing: one UniPC per latent frame, frame f starting at call
    o_f, each stepped on its own array (the pipeline as written lets UniPC keep a view of
    the latents it then overwrites; copies on their own arrays are the method)."""
    from diffsched.interop import peer

    sched = ds.UniPC(beta_schedule="quadratic", beta_start=0.00085, beta_end=0.012,
                     timestep_spacing="trailing")  # fmt: skip
    n, frames = 6, 4
    offsets = np.array([0, 0, 2, 4])
    x = torch.as_tensor(_G.standard_normal((1, 2, frames, 3, 8)))
    config = sched.to_config()
    copies = []
    for _ in range(frames):
        d = peer.scheduler(config)
        with peer._double_tables(peer.module_of(config)):
            d.set_timesteps(n)
        peer._double_grids(d)
        copies.append(d)
    ts_d = copies[0].timesteps
    total = int(offsets.max()) + n
    y = x.clone()
    for k in range(total):
        rows = np.clip(k - offsets, 0, n - 1)
        t = torch.tensor([float(ts_d[r]) for r in rows], dtype=torch.float64).reshape(
            1, 1, frames, 1, 1
        )
        out = model(y, t)
        new = y.clone()
        for f in range(frames):
            if 0 <= k - offsets[f] < n:
                frame = y[:, :, f : f + 1].clone()
                new[:, :, f : f + 1] = (
                    copies[f]
                    .step(out[:, :, f : f + 1].clone(), ts_d[k - offsets[f]], frame)
                    .prev_sample
                )
        y = new
    state, ts = sched.init(n, x, 0, offsets=offsets.reshape(1, 1, frames, 1, 1))
    np.testing.assert_allclose(ts[:, 0, 0, :, 0, 0], [[float(ts_d[r]) for r in np.clip(
        k - offsets, 0, n - 1)] for k in range(total)])  # fmt: skip
    ours = x.clone()
    for k in range(total):
        state, ours = sched.step(state, ours, model(ours, ts[k]))
    oracle.record("PER-ELEMENT vs diffusers", "UniPC staggered copies", rel(host(ours), host(y)))
    assert rel(host(ours), host(y)) < 1e-6


def test_flow_match_euler_per_token_timesteps_with_hard_conditioning():
    """LTX's condition pipeline: conditioning tokens held clean (per-token timestep 0 in
    diffusers; done from the start here), the rest denoised by FlowMatchEuler."""
    from diffsched.interop import peer

    sched = ds.FlowMatchEuler(shift=3.0)
    n, tokens = 5, 6
    cond = np.array([1, 1, 0, 0, 0, 0], bool)
    x = torch.as_tensor(_G.standard_normal((1, tokens, 8)))
    d = peer.scheduler(sched.to_config())
    d.set_timesteps(n)
    peer._double_grids(d)
    y = x.clone()
    mask = torch.as_tensor(cond, dtype=torch.float64).reshape(1, tokens)
    for t in d.timesteps:
        t = t.double()
        per_token = torch.minimum(t.expand(1, tokens), (1 - mask) * 1000.0)
        out = model(y, per_token[..., None])
        # (the per-token path steps by σ - σ_next, the other by σ_next - σ: LTX negates)
        stepped = d.step(-out, t, y, per_token_timesteps=per_token, return_dict=False)[0]
        keep = (t / 1000 - 1e-6 < (1.0 - mask)).unsqueeze(-1)
        y = torch.where(keep, stepped, y)
    offsets = np.where(cond, -n, 0).reshape(1, tokens, 1)
    state, ts = sched.init(n, x, 0, offsets=offsets)
    ours = x.clone()
    for k in range(ts.shape[0]):
        t = torch.where(torch.as_tensor(cond).reshape(1, tokens, 1), 0.0, ts[k])
        state, ours = sched.step(state, ours, model(ours, t))
    np.testing.assert_array_equal(host(ours)[:, :2], host(x)[:, :2])
    oracle.record("PER-ELEMENT vs diffusers", "FlowMatchEuler per-token", rel(host(ours), host(y)))
    assert rel(host(ours), host(y)) < 1e-6


@pytest.mark.parametrize("kind", ["DDPM", "DDIM"])
def test_parallel_batch_step_equals_one_per_element_step(kind):
    """ParaDiGMS' batch steps: B samples at B different timesteps in one call (their batch
    steps take prev = t - T // N and, for DDIM, ᾱ_prev = 1 past t = 0: leading spacing,
    set_alpha_to_one)."""
    import diffusers

    n = 10
    if kind == "DDPM":
        sched = ds.DDPM(clip_denoised_sample=False, timestep_spacing="leading")
        d = diffusers.DDPMParallelScheduler.from_config(sched.to_config())
    else:
        sched = ds.DDIM(clip_denoised_sample=False, timestep_spacing="leading")
        d = diffusers.DDIMParallelScheduler.from_config(sched.to_config())
    d.alphas_cumprod = d.alphas_cumprod.double()
    if hasattr(d, "final_alpha_cumprod"):
        d.final_alpha_cumprod = torch.as_tensor(d.final_alpha_cumprod).double()
    d.set_timesteps(n)
    rows = np.array([0, 4, 9])  # the row (call) each batch element is at
    x = torch.as_tensor(_X)
    out = torch.as_tensor(model(_X, 0.0))
    theirs = d.batch_step_no_noise(out, d.timesteps[rows], x)
    k0 = int(rows.max())
    offsets = (k0 - rows).reshape(3, 1, 1, 1)
    state, ts = sched.init(n, x, 0, offsets=offsets)
    np.testing.assert_array_equal(host(ts[k0]).reshape(-1), host(d.timesteps[rows]))
    y = x.clone()
    for _ in range(k0):  # advance the loop to global call k0 (what it computes is not used)
        state, y = sched.step(state, y, torch.zeros_like(y), **(
            {} if sched.deterministic else {"noise": torch.zeros_like(y)}))  # fmt: skip
    zero = {} if sched.deterministic else {"noise": torch.zeros_like(x)}
    _, ours = sched.step(state, x, out, **zero)
    oracle.record("PER-ELEMENT vs diffusers", f"{kind}Parallel", rel(host(ours), host(theirs)))
    assert rel(host(ours), host(theirs)) < 1e-6
