"""The same loops on NumPy, PyTorch and JAX: agreement, random draws, dtypes, purity."""

from __future__ import annotations

import array_api_compat
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import oracle  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import diffsched as ds  # noqa: E402

BACKENDS = ("numpy", "torch", "jax")
SHAPE = oracle.SHAPE
_W = np.random.default_rng(1234).standard_normal((SHAPE[-1], SHAPE[-1])) / SHAPE[-1] ** 0.5
_X = np.random.default_rng(0).standard_normal(SHAPE)
_NOISE = np.random.default_rng(7).standard_normal((64, *SHAPE))

THRESHOLD = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 3.0}
CASES = {
    "DDIM": (ds.DDIM(), 10),
    "DDIM-eta1-threshold": (ds.DDIM(eta=1.0, **THRESHOLD), 10),
    "DDIM-v-eta0.5-rederive": (
        ds.DDIM(
            prediction_type="angular_velocity",
            eta=0.5,
            rederive_noise=True,
            timestep_spacing="trailing",
        ),
        12,
    ),
    "PNDM": (ds.PNDM(), 8),
    "PNDM-reduce_warmup": (ds.PNDM(reduce_warmup=True), 8),
    "LCM": (ds.LCM(), 4),
    "LCM-v-zero_snr": (ds.LCM(prediction_type="angular_velocity", rescale_betas_zero_snr=True), 6),
}
STOCHASTIC = [
    name for name, (s, _) in CASES.items() if isinstance(s, ds.LCM) or getattr(s, "eta", 0) > 0
]


def model(x, t):
    """tanh(x @ W + 1e-3 t), written once against the array API (any backend, traceable).

    Half-precision inputs are computed in float32 and the output cast back, so that the
    low-precision tests measure the scheduler's rounding rather than the model's.
    """
    xp = array_api_compat.array_namespace(x)
    dev = array_api_compat.device(x)
    work = x.dtype if x.dtype in (xp.float32, xp.float64) else xp.float32
    xw = xp.astype(x, work)
    w = xp.asarray(_W, dtype=work, device=dev)
    out = xp.tanh(xp.matmul(xw, w) + 1e-3 * xp.astype(xp.asarray(t, device=dev), work))
    return xp.astype(out, x.dtype)


def to_backend(a: np.ndarray, backend: str, dtype: str = "float64"):
    if backend == "numpy":
        return np.asarray(a, dtype=dtype)
    if backend == "torch":
        return torch.asarray(np.asarray(a, dtype=np.float64)).to(getattr(torch, dtype))
    return jnp.asarray(a, dtype=getattr(jnp, dtype))


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(np.asarray(x).astype(np.float64))


def rel(a, b) -> float:
    a, b = to_numpy(a), to_numpy(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run(sched, n, backend, dtype="float64", *, key=0, override=False, check_state=False):
    """Final sample of an n-step loop; ``override``: the noise comes from ``_NOISE``."""
    x = to_backend(_X, backend, dtype)
    state, timesteps = sched.init(n, x, key=key)
    leaves = [(tuple(a.shape), a.dtype) for a in oracle.leaves(state)]
    state_type = type(state)
    y = x
    for i, t in enumerate(timesteps):
        kwargs = {"noise": to_backend(_NOISE[i], backend, dtype)} if override else {}
        state, y = sched.step(state, y, model(y, t), **kwargs)
        if check_state:
            assert type(state) is state_type
            assert [(tuple(a.shape), a.dtype) for a in oracle.leaves(state)] == leaves
            assert tuple(y.shape) == SHAPE and y.dtype == x.dtype
    return y


def diffusers_result(sched, n):
    """diffusers' float64 loop with the same model, start and noise (torch)."""

    def torch_model(x, t):
        return model(x, t)

    noises = [torch.asarray(_NOISE[i]) for i in range(n)]
    _, y = oracle.run_diffusers(
        sched.to_config(),
        n,
        torch.asarray(_X),
        torch_model,
        eta=getattr(sched, "eta", 0.0),
        rederive=getattr(sched, "rederive_noise", False),
        noises=noises,
    )
    return y


# -- float64: every backend against diffusers, and against each other ----------------------


@pytest.mark.parametrize("name", list(CASES))
def test_backends_match_diffusers_float64(name):
    sched, n = CASES[name]
    theirs = diffusers_result(sched, n)
    override = name in STOCHASTIC
    results = {}
    for backend in BACKENDS:
        ours = run(sched, n, backend, override=override, check_state=True)
        r = rel(ours, theirs)
        oracle.record(f"BACKEND {backend} vs diffusers (float64)", type(sched).__name__, r)
        assert r < 1e-6, backend
        results[backend] = ours
    assert isinstance(results["numpy"], np.ndarray)
    assert isinstance(results["torch"], torch.Tensor)
    assert isinstance(results["jax"], jax.Array)
    assert all(
        results[b].dtype == d
        for b, d in (("numpy", np.float64), ("torch", torch.float64), ("jax", jnp.float64))
    )


@pytest.mark.parametrize("name", STOCHASTIC)
def test_random_draws_agree_across_backends(name):
    """The counter-based RNG gives the same stream on NumPy and JAX for the same key (eager
    PyTorch draws from torch's own generator: see test_torch_eager_draws_its_own_stream)."""
    sched, n = CASES[name]
    results = {b: run(sched, n, b, key=1234) for b in BACKENDS}
    for backend in ("jax",):
        r = rel(results[backend], results["numpy"])
        oracle.record("BACKEND key-drawn noise vs numpy", f"{type(sched).__name__} {backend}", r)
        assert r < 1e-6
    # and the draws are not a no-op: the override result differs
    assert rel(run(sched, n, "numpy", override=True), results["numpy"]) > 1e-2


# -- the random numbers -------------------------------------------------------------------


def _drawn_noise(sched, backend, key, steps_before=0):
    """The noise a step draws, recovered from the step being affine in its noise."""
    x = to_backend(_X, backend)
    state, timesteps = sched.init(10, x, key=key)
    y = x
    for t in timesteps[:steps_before]:
        state, y = sched.step(state, y, model(y, t))
    pred = model(y, timesteps[steps_before])
    zeros = to_backend(np.zeros(SHAPE), backend)
    ones = to_backend(np.ones(SHAPE), backend)
    _, drawn = sched.step(state, y, pred)
    _, at0 = sched.step(state, y, pred, noise=zeros)
    _, at1 = sched.step(state, y, pred, noise=ones)
    sigma = float(np.mean(to_numpy(at1) - to_numpy(at0)))
    assert sigma > 0
    z = (to_numpy(drawn) - to_numpy(at0)) / sigma
    # the drawn noise, passed back explicitly, reproduces the step
    _, again = sched.step(state, y, pred, noise=to_backend(z, backend))
    assert rel(again, drawn) < 1e-12
    return z


def test_drawn_noise_is_the_same_on_numpy_and_jax_and_standard_normal():
    sched = ds.DDIM(eta=1.0, clip_denoised_sample=False)
    z = {b: _drawn_noise(sched, b, key=5) for b in BACKENDS}
    np.testing.assert_allclose(z["jax"], z["numpy"], rtol=0, atol=1e-9)
    for backend in BACKENDS:
        flat = z[backend].ravel()
        assert abs(flat.mean()) < 0.2 and abs(flat.std() - 1) < 0.15
        assert len(np.unique(flat)) == flat.size


def test_torch_eager_draws_its_own_stream():
    """Eager PyTorch on the CPU draws from torch's Philox generator seeded by (key, call):
    reproducible per key and call, independent across them, and not the counter stream."""
    sched = ds.DDIM(eta=1.0, clip_denoised_sample=False)
    z0 = _drawn_noise(sched, "torch", key=5)
    assert np.array_equal(z0, _drawn_noise(sched, "torch", key=5))
    for other in (
        _drawn_noise(sched, "torch", key=6),
        _drawn_noise(sched, "torch", key=5, steps_before=1),
        _drawn_noise(sched, "numpy", key=5),
    ):
        assert abs(np.corrcoef(z0.ravel(), other.ravel())[0, 1]) < 0.25


def test_different_keys_and_steps_give_different_noise_same_key_same_noise():
    sched = ds.DDIM(eta=1.0, clip_denoised_sample=False)
    z0 = _drawn_noise(sched, "numpy", key=0)
    assert np.array_equal(z0, _drawn_noise(sched, "numpy", key=0))
    for other in (
        _drawn_noise(sched, "numpy", key=1),
        _drawn_noise(sched, "numpy", key=0, steps_before=1),
    ):
        # independent standard normals: |z - z'| is about sqrt(2) per entry
        assert np.linalg.norm(z0 - other) / np.linalg.norm(z0) > 1.0
        assert abs(np.corrcoef(z0.ravel(), other.ravel())[0, 1]) < 0.25


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", STOCHASTIC)
def test_keys(name, backend):
    sched, n = CASES[name]
    a = to_numpy(run(sched, n, backend, key=0))
    b = to_numpy(run(sched, n, backend, key=0))
    c = to_numpy(run(sched, n, backend, key=1))
    assert np.array_equal(a, b)
    assert np.linalg.norm(a - c) / np.linalg.norm(a) > 1e-2


def test_jax_prng_keys():
    sched = ds.DDIM(eta=1.0)
    x = jnp.asarray(_X)
    outs = []
    for key in (jax.random.PRNGKey(0), jax.random.key(0), jax.random.PRNGKey(1)):
        state, timesteps = sched.init(5, x, key=key)
        y = x
        for t in timesteps:
            state, y = sched.step(state, y, model(y, t))
        outs.append(np.asarray(y))
    assert np.array_equal(outs[0], outs[1])  # raw and typed key of one seed
    assert np.linalg.norm(outs[0] - outs[2]) / np.linalg.norm(outs[0]) > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_override_is_used_exactly(backend):
    """x_prev(z1) - x_prev(z2) = σ_t (z1 - z2), with σ_t of DDIM's eq. 16 (= diffusers')."""
    sched = ds.DDIM(eta=1.0, **THRESHOLD)
    x = to_backend(_X, backend)
    state, timesteps = sched.init(10, x)
    pred = model(x, timesteps[0])
    z1, z2 = to_backend(_NOISE[0], backend), to_backend(_NOISE[1], backend)
    _, y1 = sched.step(state, x, pred, noise=z1)
    _, y2 = sched.step(state, x, pred, noise=z2)
    _, drawn = sched.step(state, x, pred)
    t = int(timesteps[0])
    acp = sched.alphas_cumprod
    a_t, a_prev = acp[t], acp[t - 100]
    sigma = np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    d = oracle.scheduler(sched.to_config())
    d.set_timesteps(10)
    assert abs(sigma - float(d._get_variance(t, t - 100)) ** 0.5) < 1e-15
    diff = to_numpy(y1) - to_numpy(y2)
    np.testing.assert_allclose(diff, sigma * (_NOISE[0] - _NOISE[1]), rtol=0, atol=1e-12)
    assert rel(drawn, y1) > 1e-2


# -- jax.jit over a whole loop ------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["DDIM", "DDIM-eta1-threshold", "PNDM", "PNDM-reduce_warmup", "LCM"]
)
def test_jitted_jax_loop_matches_eager(name):
    sched, n = CASES[name]
    x = jnp.asarray(_X)
    state, timesteps = sched.init(n, x, key=3)

    def body(i, carry):
        state, y = carry
        return sched.step(state, y, model(y, timesteps[i]))

    @jax.jit
    def loop(state, y):
        return jax.lax.fori_loop(0, timesteps.shape[0], body, (state, y))

    final_state, jitted = loop(state, x)
    eager = run(sched, n, "jax", key=3)
    r = rel(jitted, eager)
    oracle.record("BACKEND jax.jit vs eager", type(sched).__name__, r)
    assert r < 1e-12
    assert int(final_state.step) == timesteps.shape[0]
    assert rel(jitted, x) > 1e-3


# -- lower precision ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_float32_close_to_float64(name, backend):
    sched, n = CASES[name]
    override = name in STOCHASTIC
    ours32 = run(sched, n, backend, "float32", override=override, check_state=True)
    ours64 = run(sched, n, backend, "float64", override=override)
    assert str(ours32.dtype).endswith("float32")
    assert rel(ours32, ours64) < 1e-4


HALF = [
    ("torch", "float16"),
    ("torch", "bfloat16"),
    ("jax", "float16"),
    ("jax", "bfloat16"),
    ("numpy", "float16"),
]


@pytest.mark.parametrize(("backend", "dtype"), HALF)
@pytest.mark.parametrize(
    "name", ["DDIM", "DDIM-eta1-threshold", "PNDM", "PNDM-reduce_warmup", "LCM"]
)
def test_half_precision(name, backend, dtype):
    sched, n = CASES[name]
    override = name in STOCHASTIC
    half = run(sched, n, backend, dtype, override=override, check_state=True)
    assert str(half.dtype).endswith(dtype)
    values = to_numpy(half)
    assert np.isfinite(values).all()
    single = run(sched, n, backend, "float32", override=override)
    # one rounding of the sample per step (2^-11 float16, 2^-8 bfloat16 relative), which
    # DDIM's 1/sqrt(ᾱ) at its first steps amplifies before clipping: 2.6e-3 and 2.0e-2 seen
    assert rel(half, single) < (5e-2 if dtype == "bfloat16" else 1e-2)


# -- states and purity --------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_state_is_a_namedtuple_of_arrays(name, backend):
    sched, n = CASES[name]
    x = to_backend(_X, backend)
    state, timesteps = sched.init(n, x)
    assert isinstance(state, tuple) and hasattr(state, "_fields")
    assert type(state).__name__ == "EngineState"
    xp = array_api_compat.array_namespace(x)
    for leaf in oracle.leaves(state):
        assert array_api_compat.array_namespace(leaf) is xp
    assert array_api_compat.array_namespace(timesteps) is xp
    assert tuple(timesteps.shape) == (sched.init(n, x)[0].coefs.shape[0] - 1,)
    assert int(state.step) == 0
    # every leaf keeps its shape and dtype through the loop (run asserts it step by step)
    run(sched, n, backend, check_state=True, override=name in STOCHASTIC)


PURITY = {
    "DDIM-clip": ds.DDIM(),
    "DDIM-noclip": ds.DDIM(clip_denoised_sample=False),
    "DDIM-sample-clip": ds.DDIM(prediction_type="sample"),
    "DDIM-sample-noclip": ds.DDIM(prediction_type="sample", clip_denoised_sample=False),
    "DDIM-threshold-eta": ds.DDIM(eta=1.0, **THRESHOLD),
    "DDIM-rederive": ds.DDIM(rederive_noise=True, eta=0.5),
    "PNDM": ds.PNDM(),
    "PNDM-reduce_warmup": ds.PNDM(reduce_warmup=True),
    "LCM": ds.LCM(),
    "LCM-sample-clip": ds.LCM(prediction_type="sample", clip_denoised_sample=True),
}


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", list(PURITY))
def test_step_does_not_mutate_its_inputs(name, backend):
    sched = PURITY[name]
    x = to_backend(_X, backend)
    state, timesteps = sched.init(6, x)
    y = x
    for t in timesteps:
        pred = model(y, t) * 3  # large enough that clipping/thresholding changes x_0
        kept = (
            to_numpy(y).copy(),
            to_numpy(pred).copy(),
            [to_numpy(a).copy() for a in oracle.leaves(state)],
        )
        new_state, out = sched.step(state, y, pred)
        assert np.array_equal(to_numpy(y), kept[0])
        assert np.array_equal(to_numpy(pred), kept[1])
        for leaf, before in zip(oracle.leaves(state), kept[2], strict=True):
            assert np.array_equal(to_numpy(leaf), before, equal_nan=True)
        # the old state is still valid: stepping from it again gives the same result
        assert np.array_equal(to_numpy(sched.step(state, y, pred)[1]), to_numpy(out))
        state, y = new_state, out


@pytest.mark.parametrize("cls", ds.methods.CLASSES, ids=lambda c: c.__name__)
def test_a_shape_dtype_struct_is_a_template(cls):
    """``init`` takes a ``jax.ShapeDtypeStruct`` (Bumblebee's ``Nx.template``: a shape and
    a dtype, no values) as it takes an array of that spec: the same state, timesteps and
    loop, eagerly and inside ``jax.jit``."""
    sched = cls()
    x = jnp.asarray(_X, dtype=jnp.float32)
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    key = jax.random.key(3)
    state_a, timesteps_a = sched.init(4, x, key)
    state_b, timesteps_b = sched.init(4, spec, key)
    np.testing.assert_array_equal(np.asarray(timesteps_a), np.asarray(timesteps_b))
    for a, b in zip(jax.tree_util.tree_leaves(state_a), jax.tree_util.tree_leaves(state_b),
                    strict=True):  # fmt: skip
        assert a.shape == b.shape and a.dtype == b.dtype
    n = int(np.isfinite(np.asarray(timesteps_a)).sum()) if cls.ADAPTIVE else len(timesteps_a)
    pshape = tuple(sched.prediction_shape(x.shape))
    prediction = jnp.full(pshape, 0.1, dtype=x.dtype)
    ya = yb = x
    for _ in range(min(n, 2)):
        state_a, ya = sched.step(state_a, ya, prediction)
        state_b, yb = sched.step(state_b, yb, prediction)
    np.testing.assert_array_equal(np.asarray(ya), np.asarray(yb))
    if not cls.ADAPTIVE:
        jitted = jax.jit(lambda: sched.init(4, spec, key)[0])()
        assert jax.tree_util.tree_structure(jitted) == jax.tree_util.tree_structure(state_a)


def test_a_shape_dtype_struct_with_an_integer_dtype_is_refused():
    with pytest.raises(TypeError, match="floating-point"):
        ds.DDIM().init(4, jax.ShapeDtypeStruct((2, 3), jnp.int32), 0)


@pytest.mark.parametrize(
    "cls", [c for c in ds.methods.CLASSES if not c.ADAPTIVE], ids=lambda c: c.__name__
)
def test_a_vmapped_loop_equals_one_loop_per_item(cls):
    """``jax.vmap`` over (key, noise) pairs runs one loop per item: each item's final sample
    is its own loop's (a stochastic class draws each item's noise from its own key)."""
    sched = cls()
    w = jnp.asarray(_W[:3, :3], dtype=jnp.float64)
    k = sched.prediction_shape((1, 2, 3))[-1] // 3  # Piflow: k velocities per channel

    def loop(key, x):
        state, timesteps = sched.init(4, x, key)
        for _ in range(len(timesteps)):
            m = jnp.tanh(x @ w)
            state, x = sched.step(state, x, jnp.tile(m, (1, 1, k)) if k > 1 else m)
        return x

    xs = jnp.asarray(np.random.default_rng(1).standard_normal((2, 1, 2, 3)))
    keys = jax.random.split(jax.random.key(0), 2)
    both = jax.vmap(loop)(keys, xs)
    for i in range(2):
        np.testing.assert_allclose(np.asarray(both[i]), np.asarray(loop(keys[i], xs[i])),
                                   rtol=1e-12, atol=1e-12)  # fmt: skip
