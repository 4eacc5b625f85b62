"""The engine, for every method: backends agree, compiled equals eager, steps are pure.

One representative configuration per class (stochastic ones with their noise given), run
on NumPy, PyTorch and JAX, eagerly and compiled (``jax.jit`` over a ``fori_loop``,
``torch.compile(step, fullgraph=True)``); the eager path (which reads the call index on
the host and skips zero terms) against the branch-free path; purity with reused states and
a reused prediction buffer; NaN from a step past the end under ``jax.jit``.
"""

from __future__ import annotations

import warnings

import array_api_compat
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import oracle  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import diffsched as ds  # noqa: E402
from diffsched.core import ops  # noqa: E402

SHAPE = (2, 4, 8, 8)
_G = np.random.default_rng(0)
_X = _G.standard_normal(SHAPE)
_W = _G.standard_normal((8, 8)) / 8**0.5
# a model whose output is wider than the sample (Piflow's n_grid velocities per channel):
# its first 8 columns are _W's, the others more of the same kind
_W_WIDE = np.concatenate([_W, _G.standard_normal((8, 8 * 31)) / 8**0.5], axis=1)
_NOISE = _G.standard_normal((40, *SHAPE))
SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}


def every() -> dict[str, tuple[ds.Scheduler, int]]:
    """name -> (a representative config, num_steps), one or more per class."""
    cases = {
        "DDIM": (ds.DDIM(), 6),
        "DDIM-eta-threshold": (
            ds.DDIM(
                eta=1.0, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0
            ),
            6,
        ),
        "PNDM": (ds.PNDM(), 5),
        "PNDM-reduce_warmup": (ds.PNDM(reduce_warmup=True), 6),
        "LCM": (ds.LCM(), 4),
        "Euler": (ds.Euler(**SD, use_karras_sigmas=True), 6),
        "Euler-churn": (ds.Euler(s_churn=1.0), 6),
        "EulerAncestral": (ds.EulerAncestral(**SD), 6),
    }
    special = {
        "DDPM": dict(),
        "Heun": dict(clip_denoised_sample=True, clip_sample_range=2.0),
        "DPM2": dict(),
        "DPM2Ancestral": dict(),
        "LMS": dict(),
        "EDMEuler": dict(),
        "IPNDM": dict(),
        "TCD": dict(),
        "SASolver": dict(),
        "DDIMInverse": dict(),
        "DPMSolverMultistep": dict(),
        "DPMSolverMultistepInverse": dict(),
        "DEIS": dict(),
        "UniPC": dict(),
        "DPMSolverSinglestep": dict(),
        "EDMDPMSolverMultistep": dict(),
        "FlowMatchEuler": dict(),
        "FlowMatchHeun": dict(),
        "FlowMatchLCM": dict(),
        "VariableIPNDM": dict(**SD, use_karras_sigmas=True),
        # ComfyUI's samplers (one ComfyUI scheduler or model each)
        "ComfyEuler": dict(scheduler="karras", s_churn=1.0),
        "ComfyHeun": dict(model="v"),
        "ComfyDPM2": dict(model="flow", shift=3.0, scheduler="simple"),
        "ComfyHeunPP2": dict(scheduler="exponential"),
        "ComfyDPMFast": dict(),
        "ComfyLMS": dict(scheduler="sgm_uniform"),
        "ComfyIPNDM": dict(scheduler="beta"),
        "ComfyIPNDMV": dict(scheduler="kl_optimal"),
        "ComfyGradientEstimation": dict(scheduler="linear_quadratic"),
        "ComfyDEIS": dict(scheduler="ddim_uniform"),
        "ComfyDPMPP2M": dict(model="flux"),
        "ComfyResMultistep": dict(model="x0"),
        "ComfyUniPC": dict(variant="bh2"),
        # diffusers' newer flow schedulers (issue 18)
        "LTXEulerAncestralRF": dict(),
        "FlowMapEuler": dict(shift=5.0),
        "MiniMaxH3": dict(),
        "Helios": dict(stages=1, shift=3.0),
        "HeliosDMD": dict(),
    }
    for name, kwargs in special.items():
        cases[name] = (getattr(ds, name)(**kwargs), 6)
    # more diffusers classes (issue 18)
    more = {
        "ScoreSdeVe": ds.ScoreSdeVe(sigma_max=20.0),
        "ScoreSdeVe-predictor": ds.ScoreSdeVe(correct_steps=0, sigma_max=20.0),
        "KarrasVe": ds.KarrasVe(sigma_max=5.0, s_churn=3.0, s_min=0.1, s_max=20.0),
        "DDPMWuerstchen": ds.DDPMWuerstchen(),
        "UnCLIP": ds.UnCLIP(),
        "CMStochasticIterative": ds.CMStochasticIterative(),
        "SCM": ds.SCM(),
        "DDIMParallel": ds.DDIMParallel(eta=0.5),
        "DDPMParallel": ds.DDPMParallel(),
        "CogVideoXDDIM": ds.CogVideoXDDIM(),
        "CogVideoXDPM": ds.CogVideoXDPM(
            rescale_betas_zero_snr=True,
            prediction_type="angular_velocity",
            timestep_spacing="trailing",
        ),
        "RePaint": ds.RePaint(eta=0.5),  # without a known region: DDIM with jumps
    }
    cases.update({name: (sched, 6) for name, sched in more.items()})
    covered = {type(sched) for sched, _ in cases.values()}
    for cls in ds.methods.CLASSES:  # every registered class, with its defaults at least
        if cls not in covered:  # an adaptive class: 40 calls bound a whole loop
            cases[cls.__name__] = (cls(), 40 if cls.ADAPTIVE else 6)
    return cases


CASES = every()
NAMES = list(CASES)


def model(x, t, width=8):
    """tanh(x @ W + 1e-3 t) on any backend; ``width`` output channels (the method's
    ``prediction_shape``: 8, the sample's, for every class but Piflow)."""
    xp = array_api_compat.array_namespace(x)
    w = xp.asarray(_W_WIDE[:, :width], dtype=x.dtype, device=array_api_compat.device(x))
    t = xp.astype(xp.asarray(t), x.dtype)
    return xp.tanh(x @ w + 1e-3 * t)


def to_backend(a, backend, dtype="float64"):
    if backend == "numpy":
        return np.asarray(a, dtype=dtype)
    if backend == "torch":
        return torch.asarray(np.asarray(a, dtype=np.float64)).to(getattr(torch, dtype))
    return jnp.asarray(a, dtype=getattr(jnp, dtype))


def to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def rel(a, b):
    a, b = to_numpy(a), to_numpy(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def width(sched):
    """The model output's last axis for ``sched`` (its ``prediction_shape`` hook)."""
    return sched.prediction_shape(SHAPE)[-1]


def run(sched, n, backend, *, step=None, dtype="float64", buffer=False):
    x = to_backend(_X, backend, dtype)
    state, timesteps = sched.init(n, x, key=3)
    y = x * sched.init_noise_scale(n)
    step = step or sched.step
    pred_buffer = None
    holder = [state]
    for i, t in oracle.calls(sched, holder, timesteps):
        state = holder[0]
        kwargs = {} if sched.deterministic else {"noise": to_backend(_NOISE[i], backend, dtype)}
        pred = model(y, t, width(sched))
        if buffer:  # one prediction array, overwritten by every call (as a CUDA graph does)
            if pred_buffer is None:
                pred_buffer = pred.clone() if backend == "torch" else np.array(pred)
            elif backend == "torch":
                pred_buffer.copy_(pred)
            else:
                pred_buffer[...] = pred
            pred = pred_buffer
        state, y = step(state, y, pred, **kwargs)
        holder[0] = state
    return y


@pytest.mark.parametrize("name", NAMES)
def test_backends_agree(name):
    sched, n = CASES[name]
    results = {b: run(sched, n, b) for b in ("numpy", "torch", "jax")}
    for b in ("torch", "jax"):
        r = rel(results[b], results["numpy"])
        oracle.record("ENGINE backend vs numpy", f"{name} {b}", r)
        assert r < 1e-6
    assert rel(results["numpy"], _X) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_jitted_fori_loop_equals_eager(name):
    sched, n = CASES[name]
    x = jnp.asarray(_X)
    state, timesteps = sched.init(n, x, key=3)
    noise = jnp.asarray(_NOISE[: len(timesteps)])

    @jax.jit
    def loop(state, y):
        def body(i, carry):
            state, y = carry
            kwargs = {} if sched.deterministic else {"noise": noise[i]}
            # an adaptive loop's calls: its state's next timestep (a step after done
            # returns its arguments, so max_calls iterations give the while loop's result)
            t = sched.next_timestep(state) if sched.ADAPTIVE else timesteps[i]
            return sched.step(state, y, model(y, t, width(sched)), **kwargs)

        return jax.lax.fori_loop(0, timesteps.shape[0], body, (state, y))

    end, got = loop(state, x * sched.init_noise_scale(n))
    want = run(sched, n, "jax")
    r = rel(got, want)
    oracle.record("ENGINE jax.jit vs eager", name, r)
    assert r < 1e-12
    if sched.ADAPTIVE:  # past the end an adaptive step returns its arguments (its contract)
        assert bool(sched.done(end))
        return
    # a step past the end cannot raise under jit: it returns NaN, unmistakably
    _, after = jax.jit(lambda s, y: sched.step(s, y, model(y, 0.0, width(sched)), **(
        {} if sched.deterministic else {"noise": y})))(end, got)  # fmt: skip
    assert bool(jnp.all(jnp.isnan(after)))


@pytest.mark.parametrize("name", NAMES)
def test_eager_path_equals_branch_free_path(name, monkeypatch):
    """The host-index path (zero terms skipped) and the branch-free path (every term,
    gathered rows: torch.compile, accelerators) give the same result."""
    sched, n = CASES[name]
    eager = run(sched, n, "torch")
    monkeypatch.setattr(ops, "host_index", lambda step: None)
    branch_free = run(sched, n, "torch")
    r = rel(branch_free, eager)
    oracle.record("ENGINE eager vs branch-free", name, r)
    assert r < 1e-13


@pytest.mark.parametrize("name", NAMES)
def test_torch_compile_fullgraph(name):
    import torch._dynamo

    sched, n = CASES[name]
    torch._dynamo.reset()
    compiled = torch.compile(sched.step, fullgraph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = run(sched, n, "torch", step=compiled, dtype="float32")
    want = run(sched, n, "torch", dtype="float32")
    assert torch.isfinite(got).all()
    assert rel(got, want) < 1e-5


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", NAMES)
def test_pure_steps_and_a_reused_prediction_buffer(name, backend):
    sched, n = CASES[name]
    fresh = run(sched, n, backend)
    reused = run(sched, n, backend, buffer=True)
    assert np.array_equal(to_numpy(fresh), to_numpy(reused))
    # a step never writes into its inputs or its state; stepping from an old state again
    # gives the same result
    x = to_backend(_X, backend)
    state, timesteps = sched.init(n, x, key=3)
    y = x
    holder = [state]
    for i, t in oracle.calls(sched, holder, timesteps):
        kwargs = {} if sched.deterministic else {"noise": to_backend(_NOISE[i], backend)}
        pred = model(y, t, width(sched)) * 3
        kept = [to_numpy(a).copy() for a in (y, pred, *oracle.leaves(state))]
        new_state, out = sched.step(state, y, pred, **kwargs)
        for a, before in zip((y, pred, *oracle.leaves(state)), kept, strict=True):
            assert np.array_equal(to_numpy(a), before, equal_nan=True)
        again = sched.step(state, y, pred, **kwargs)[1]
        assert np.array_equal(to_numpy(again), to_numpy(out))
        state, y = new_state, out
        holder[0] = state


@pytest.mark.parametrize("name", NAMES)
def test_per_method_facts(name):
    sched, _n = CASES[name]
    cls = type(sched)
    assert isinstance(cls.ORDER, int) and cls.ORDER >= 1
    assert cls.CALLS_PER_STEP in (1, 2, 3)  # 3: Heun++
    assert isinstance(sched.deterministic, bool)
    doc = cls.__doc__ or ""
    assert "Options (diffusers' key" in doc  # generated from the option declarations
    if cls.DIFFUSERS_CLASS is None:  # ours only: the docstring says so
        assert "Not in diffusers" in doc and cls in ds.methods.OURS_ONLY
        assert cls.config_class_name() == cls.__name__
    else:
        assert "diffusers" in doc and cls.DIFFUSERS_CLASS in doc
        assert cls.DIFFUSERS_CLASS in ds.SCHEDULERS


def test_a_step_counter_written_in_place_reaches_no_other_loop():
    """PyTorch states share cached step counters (no kernel launch per step); a caller that
    writes into its state's counter (``state.step += 1``, ``zero_()``) must not change any
    other loop (found by review: every later loop skipped or repeated a call)."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    ref = ds.sample(lambda s, t: 0.1 * s, ds.DPMSolverMultistep(), x, 5)
    for write in (lambda step: step.add_(1), lambda step: step.zero_()):
        state, _ = ds.DDIM().init(4, torch.tensor(x))
        state, _ = ds.DDIM().step(state, torch.tensor(x), torch.tensor(x))
        write(state.step)
        out = ds.sample(lambda s, t: 0.1 * s, ds.DPMSolverMultistep(), torch.tensor(x), 5)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_a_cached_programs_held_columns_are_read_only():
    # a program is shared by every equal config; its held columns (read by per-element
    # plans) were writable: one write changed every later per-element loop of the config
    program = ds.DDPM().program(5)
    for arr in (program.held.noise, program.held.x0_sample, *program.held.terms.values()):
        with pytest.raises(ValueError, match="read-only"):
            arr[...] = 0.0
