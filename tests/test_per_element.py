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


# eager JAX dispatches op by op (slow on the CPU): every class on PyTorch, one of each kind
# of table on JAX (one-step, multistep, two-stage, stochastic, clipped, flow, ComfyUI's)
JAX_NAMES = ["DDIM-eta-threshold", "PNDM", "DPMSolverMultistep", "UniPC", "Heun",
             "EulerAncestral", "DDPM", "FlowMatchEuler", "ComfyDPMPP2MSDE", "ComfySEEDS2",
             "CogVideoXDPM", "Restart"]  # fmt: skip
BACKEND_CASES = [("torch", name) for name in NAMES] + [("jax", n) for n in JAX_NAMES]


@pytest.mark.parametrize(("backend", "name"), BACKEND_CASES)
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


@pytest.mark.parametrize(
    ("frames", "block", "ar_step", "pre"), [(8, 1, 0, 0), (8, 2, 2, 0), (9, 3, 3, 3), (6, 1, 1, 2)]
)
def test_diffusion_forcing_offsets_equal_skyreels_schedule(frames, block, ar_step, pre):
    """SkyReels-V2's generate_timestep_matrix: its step index (into [999, template..., 0])
    of every frame at every iteration is our row + 1 (0 before the start, N + 1 when done)."""
    from diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing import (
        SkyReelsV2DiffusionForcingPipeline as Pipeline,
    )

    template = torch.tensor([999, 800, 600, 400, 200])
    n = len(template)
    _, index, _, _ = Pipeline.generate_timestep_matrix(
        None, frames, template, frames, ar_step, pre, block
    )
    offsets = ds.diffusion_forcing(frames, block=block, ar_step=ar_step, num_pre_ready=pre,
                                   ndim=1, axis=0)  # fmt: skip
    done = offsets <= -n
    ours = [np.where(done, n + 1, np.clip(k - offsets + 1, 0, n + 1)) for k in range(len(index))]
    np.testing.assert_array_equal(np.stack(ours), index.numpy())
    assert ds.diffusion_forcing(frames, block=block, ar_step=ar_step).shape == (1, 1, frames, 1, 1)


def test_sample_runs_a_diffusion_forcing_loop_eager_and_compiled():
    sched = ds.UniPC()
    x = _G.standard_normal((1, 2, 5, 3, 8))
    offsets = ds.diffusion_forcing(5, ar_step=2, num_pre_ready=1)
    eager = ds.sample(model, sched, x, 6, key=1, offsets=offsets)
    state, ts = sched.init(6, x, 1, offsets=offsets)
    y = x.copy()
    for t in ts:
        state, y = sched.step(state, y, model(y, t))
    np.testing.assert_array_equal(eager, y)
    np.testing.assert_array_equal(eager[:, :, 0], x[:, :, 0])  # the pre-ready frame
    compiled = ds.sample(model, sched, jnp.asarray(x), 6, key=1, offsets=offsets, compile=True)
    assert rel(np.asarray(compiled), eager) < 1e-13


def test_torch_compile_step_with_offsets():
    sched, n = CASES["DPMSolverMultistep"]
    x = torch.as_tensor(_X)
    state, ts = sched.init(n, x, 0, offsets=OFFSETS)
    step = torch.compile(sched.step, fullgraph=True, dynamic=False)
    y = x.clone()
    for k in range(ts.shape[0]):
        state, y = step(state, y, model(y, ts[k]))
    eager, _ = per_element_loop(sched, n, _X, OFFSETS, backend="torch", key=0)
    assert rel(host(y), eager) < 1e-13


def test_readme_per_element_example_runs_and_each_request_is_its_own_img2img():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Per-element schedules") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["out"].shape == (1, 4, 9, 8, 16) and ns["edited"].shape == (3, 4, 8, 16)
    images, noise, w = ns["images"], ns["noise"], ns["W"]
    for e, s in enumerate((0.3, 0.6, 1.0)):
        alone = ds.sample(lambda x, t: np.tanh(x @ w + 1e-3 * t), ds.DDIM(), noise[e : e + 1],
                          20, image=images[e : e + 1], strength=s)  # fmt: skip
        assert rel(ns["edited"][e : e + 1], alone) < 1e-13


def test_a_per_element_state_is_refused_by_another_config():
    state, ts = ds.DDIM().init(4, _X, 0, offsets=OFFSETS)
    with pytest.raises(ValueError, match="another configuration's init made"):
        ds.DDIM(eta=1.0).step(state, _X, model(_X, ts[0]))
    with pytest.raises(ValueError, match="another configuration's init made"):
        ds.DDIM(eta=1.0).add_noise(state, _X, _X)


SHARDED = r"""
import json
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import diffsched as ds
mesh = Mesh(np.array(jax.devices()), ("batch",))
W = jnp.asarray(np.random.default_rng(2).standard_normal((8, 8)) / 4)
model = lambda x, t: jnp.tanh(x @ W + 1e-3 * t)
x = np.random.default_rng(0).standard_normal((16, 4, 8))
offsets = (np.arange(16) % 3).reshape(16, 1, 1)
out = {}
for sched in (ds.DPMSolverMultistep(), ds.EulerAncestral()):
    ref = np.asarray(ds.sample(model, sched, jnp.asarray(x), 6, offsets=offsets, compile=True))
    xs = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("batch")))
    got = ds.sample(model, sched, xs, 6, offsets=offsets, compile=True)
    run = lambda xb: ds.sample(model, sched, xb, 6, offsets=offsets, compile=True)
    both = jax.vmap(run)(jnp.stack([jnp.asarray(x), jnp.asarray(x) * 0.5]))
    out[type(sched).__name__] = {
        "sharded": float(np.abs(np.asarray(got) - ref).max()),
        "devices": len(got.sharding.device_set),
        "vmapped": float(np.abs(np.asarray(both[0]) - ref).max()),
    }
print(json.dumps(out))
"""


def test_sharded_and_vmapped_loops_with_offsets():
    """A batch sharded over 8 simulated devices (a subprocess: the flag acts before JAX
    starts) and a vmapped batch of loops, both with offsets, equal one device's loop."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    done = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for name, r in found.items():
        assert r["devices"] == 8, name
        assert r["sharded"] < 1e-12 and r["vmapped"] < 1e-11, (name, r)


def test_offsets_that_would_cost_unbounded_memory_are_refused_at_once():
    # found by review: offsets of 10**9 built a (10**9, 3, 1) timestep array (tens of GB)
    # in a Python loop; the loop's calls and its timesteps per element are bounded
    import time

    from diffsched.core import ops, per_element

    sched = ds.UniPC()
    x = np.zeros((3, 2))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=f"expected at most {ops.MAX_CALLS}"):
        sched.init(6, x, offsets=np.array([[0], [1], [10**9]]))
    wide = np.zeros((100, 1000))  # 100 000 elements, offsets up to 999: 1005 calls each
    with pytest.raises(ValueError, match=f"expected at most {per_element.MAX_ENTRIES}"):
        sched.init(6, wide, offsets=np.arange(1000) * np.ones((100, 1), np.int64))
    assert time.perf_counter() - t0 < 5.0  # refused before any table of that size
    _, ts = sched.init(6, x, offsets=np.array([[0], [1], [2]]))
    assert ts.shape == (8, 3, 1)  # the loop as before: 6 calls, the last element 2 later
    np.testing.assert_array_equal(ts[:, 0, 0], np.append(ts[:6, 0, 0], [ts[5, 0, 0]] * 2))
    np.testing.assert_array_equal(ts[2:, 2, 0], ts[:6, 0, 0])


def test_a_per_element_step_checks_the_sample_and_noise_as_the_uniform_step():
    # found by review: another shape than init's template, a float64 sample into a float32
    # state, and integer or foreign noise were taken
    import torch

    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    offsets = np.array([0, 2]).reshape(2, 1, 1)
    sched = ds.DPMSolverMultistep()  # a loop that holds history: its shape is the template's
    state, _ = sched.init(4, x, 0, offsets=offsets)
    with pytest.raises(ValueError, match=r"differs from the template's \(2, 3, 4\)"):
        sched.step(state, np.zeros((2, 5, 7)), np.zeros((2, 5, 7)))
    state, _ = sched.init(4, x.astype(np.float32), 0, offsets=offsets)
    with pytest.raises(TypeError, match="float64 sample but the state computes in float32"):
        sched.step(state, x, x)
    ddpm = ds.DDPM()
    state, _ = ddpm.init(4, x, 0, offsets=offsets)
    with pytest.raises(TypeError, match="floating-point noise"):
        ddpm.step(state, x, x, noise=np.zeros((2, 3, 4), np.int64))
    with pytest.raises(TypeError, match="noise must be a ndarray like the sample"):
        ddpm.step(state, x, x, noise=torch.zeros(2, 3, 4, dtype=torch.float64))
