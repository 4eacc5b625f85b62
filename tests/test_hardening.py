"""Regression tests for an adversarial sweep's findings (issue 21): nothing shared can be
corrupted, no misuse gives a silent wrong answer, no input can take the machine.

One test (or parametrized group) per finding, numbered as in the issue.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings

import numpy as np
import oracle
import pytest
import torch

import diffsched as ds
from diffsched.core import engine
from diffsched.core.options import diffusers_options
from diffsched.interop import peer

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)

CLASSES = [*ds.methods.ALL, *ds.methods.OURS_ONLY]
X64 = np.zeros((1, 2, 2, 2))


def _loop(sched, n, x, model=lambda x, t: 0.1 * x, key=0):
    state, ts = sched.init(n, x, key)
    for t in ts:
        state, x = sched.step(state, x, model(x, t))
    return x


# -- 1. shared tables leak to callers ---------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("cls", [ds.DDIM, ds.Euler, ds.DPMSolverMultistep])
def test_01_init_returns_arrays_the_caller_owns(cls, backend):
    x = X64 if backend == "numpy" else torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    x32 = np.zeros((1, 2, 2, 2), np.float32)
    state, ts = cls().init(10, x)
    want_ts = np.array(ts).copy()
    want_coefs = np.array(state.coefs).copy()
    before = _loop(cls(), 10, x32 + 1)
    # a caller writes into everything it was given
    ts[...] = 0
    state.coefs[...] = 7.0
    state.reads[...] = 0
    state.writes[...] = 0
    state2, ts2 = cls().init(10, x)  # an equal config, a new instance
    np.testing.assert_array_equal(np.array(ts2), want_ts)
    np.testing.assert_array_equal(np.array(state2.coefs), want_coefs)
    np.testing.assert_array_equal(_loop(cls(), 10, x32 + 1), before)
    # the shared program itself cannot be written
    program = cls().program(10)
    for name in ("timesteps", "coefs", "reads", "writes"):
        assert not getattr(program, name).flags.writeable


def test_01_eager_rows_follow_the_copy():
    # the eager fast path reads per-state rows: a fresh state after a caller edited
    # another one gives the untouched result, and equals the branch-free path
    sched = ds.DPMSolverMultistep()
    x = np.random.default_rng(0).standard_normal((1, 2, 2, 2))
    a = _loop(sched, 8, x)
    state, _ = sched.init(8, x)
    state.coefs[...] = 0
    b = _loop(sched, 8, x)
    np.testing.assert_array_equal(a, b)


# -- 2. a state is accepted by another scheduler's step ---------------------------------

FOREIGN = [
    (ds.EulerAncestral(), ds.Euler()),
    (ds.DDPM(), ds.DDIM()),
    (ds.DDIM(eta=0.0), ds.DDIM(eta=1.0)),
    (ds.DPMSolverMultistep(), ds.DPMSolverMultistep(solver_order=3)),
    (ds.Euler(), ds.FlowMatchEuler()),
]


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("maker, stepper", FOREIGN, ids=lambda s: type(s).__name__)
def test_02_step_refuses_a_foreign_state(maker, stepper, backend):
    if backend == "numpy":
        x = X64
    elif backend == "torch":
        x = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    else:
        jnp = pytest.importorskip("jax.numpy")
        x = jnp.zeros((1, 2, 2, 2))
    state, _ = maker.init(6, x)
    with pytest.raises(ValueError, match="another configuration") as err:
        stepper.step(state, x, x)
    message = str(err.value)
    assert f"made by {type(maker).__name__}(" in message
    assert f"step of {type(stepper).__name__}(" in message
    with pytest.raises(ValueError, match="another configuration"):
        stepper.add_noise(state, x, x)
    # its own config (another instance, equal) steps it
    state, _ = maker.replace().init(6, x)
    maker.step(state, x, x)


def test_02_fingerprint_is_cheap_and_survives_jit():
    sched = ds.DDIM()
    assert sched.fingerprint == ds.DDIM().fingerprint != ds.DDIM(eta=0.5).fingerprint
    assert "fingerprint" in sched.__dict__  # computed once per instance
    jnp = jax.numpy
    x = jnp.ones((1, 2, 2, 2))
    state, _ = sched.init(5, x)
    assert int(state.fingerprint[0]) == sched.fingerprint
    out = ds.sample(lambda x, t: 0.1 * x, sched, x, 5, compile=True)
    eager = ds.sample(lambda x, t: 0.1 * x, sched, x, 5)
    np.testing.assert_allclose(np.asarray(out), np.asarray(eager), rtol=1e-12)


# -- 3. JSON null: diffusers' schedule or a clear error, per key ------------------------


def _null_cases():
    for cls in CLASSES:
        if cls.DIFFUSERS_CLASS not in peer.MODULES:
            continue
        for name, key, _, _ in diffusers_options(cls):
            yield pytest.param(cls, name, key, id=f"{cls.__name__}-{key}")


def _diffusers_run(config):
    x = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.manual_seed(0)  # diffusers' Brownian samplers seed their trees from the global RNGs
    np.random.seed(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ts, out = peer.run(config, lambda x, t: torch.tanh(0.5 * x), x, 4)
    except Exception as err:
        return type(err).__name__
    return np.asarray(ts, dtype=np.float64), out.numpy()


@pytest.mark.parametrize("cls, name, key", list(_null_cases()))
def test_03_json_null_is_diffusers_meaning_or_an_error(cls, name, key):
    config = {"_class_name": cls.DIFFUSERS_CLASS, key: None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = ds.from_config(config)
    except (ValueError, TypeError) as err:
        assert repr(key) in str(err), str(err)
        return
    value = ours.to_config()[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ours == ds.from_config({"_class_name": cls.DIFFUSERS_CLASS, key: value})
    # diffusers makes of null what we make of it
    theirs_null = _diffusers_run(config)
    theirs_value = _diffusers_run({"_class_name": cls.DIFFUSERS_CLASS, key: value})
    if isinstance(theirs_null, str) or isinstance(theirs_value, str):
        assert theirs_null == theirs_value
        return
    np.testing.assert_array_equal(theirs_null[0], theirs_value[0])
    np.testing.assert_array_equal(theirs_null[1], theirs_value[1])


# -- 4. add_noise ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_04_add_noise_raises_or_is_finite(cls):
    sched = cls()
    x = np.ones((1, 2, 2, 2))
    state, _ = sched.init(6, x)
    if cls.ADAPTIVE:  # no program: it starts from ComfyUI's noise scaling at its first level
        assert np.isfinite(sched.add_noise(state, x, x)).all()
    elif np.isnan(sched.program(6).coefs[0, engine._C["start_clean"]]):
        with pytest.raises(ValueError, match="image-to-image"):
            sched.add_noise(state, x, x)
    else:
        assert np.isfinite(sched.add_noise(state, x, x)).all()
    for bad in (x.astype(np.int64), np.full(x.shape, np.iinfo(np.int64).min)):
        with pytest.raises(TypeError, match="floating-point"):
            sched.add_noise(state, bad, x)
        with pytest.raises(TypeError, match="floating-point"):
            sched.add_noise(state, x, bad)


# -- 5. a nested custom grid ---------------------------------------------------------------


@pytest.mark.parametrize(
    "sched, options",
    [
        (ds.Euler(), {"sigmas": [[14.6, 5.0], [1.0, 0.0]]}),
        (ds.EDMEuler(), {"sigmas": [[14.6, 5.0], [1.0, 0.0]]}),
        (ds.FlowMatchEuler(), {"sigmas": [[0.9, 0.5], [0.3, 0.1]]}),
        (ds.DPMSolverMultistep(), {"timesteps": [[999, 500], [200, 1]]}),
        (ds.Euler(), {"sigmas": np.array([[14.6, 5.0], [1.0, 0.0]])}),
    ],
)
def test_05_nested_custom_grid_is_refused(sched, options):
    name = next(iter(options))
    with pytest.raises(ValueError, match=f"{name}= must be a flat list"):
        sched.init(None, X64, **options)


# -- 6. _diffsched_options cannot override a key the file shows ---------------------------


def test_06_private_options_do_not_override_visible_keys():
    config = ds.DDIM().to_config()
    config["beta_start"] = 0.001
    config["_diffsched_options"] = {"beta_start": 0.002}
    with pytest.raises(ValueError, match="beta_start"):
        ds.from_config(config)
    # a swap from another class's config: the visible key wins
    assert ds.DDIM.from_config(config).beta_start == 0.001
    config["_diffsched"] = {"clip_denoised_sample": False}
    config.pop("_diffsched_options")
    with pytest.raises(ValueError, match="clip_sample"):
        ds.from_config(config)
    # our own options still travel there
    euler = ds.Euler(sigma_schedule="edm")
    assert ds.from_config(euler.to_config()) == euler


# -- 7. bounded work, short messages -------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_07_num_steps_is_bounded_before_any_work(cls):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"num_steps: expected an integer in \[1, 10000\]"):
        cls().init(10_001, X64)
    with pytest.raises(ValueError, match=r"num_steps"):
        cls().init(10**30, X64)
    assert time.perf_counter() - t0 < 0.5


def test_07_sizes_and_messages_are_bounded():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="order must lie in"):
        ds.LMS(order=100_001)
    with pytest.raises(ValueError, match="num_steps"):
        ds.grids.named_grid("edm", ds.Euler(), 10**6)
    with pytest.raises(ValueError, match="num_steps"):
        ds.Euler().init(None, X64, sigmas=np.linspace(10.0, 0.0, 200_002))
    assert time.perf_counter() - t0 < 2.0
    big = "x" * 50_000_000
    with pytest.raises(ValueError) as err:
        ds.DDIM(beta_schedule=big)
    assert "beta_schedule" in str(err.value) and len(str(err.value)) < 1000
    with pytest.raises(ValueError) as err:
        ds.DDIM(timesteps_offset=10**5000)
    assert "timesteps_offset" in str(err.value) and len(str(err.value)) < 1000
    # a refusal never lists every timestep
    with pytest.raises(ValueError) as err:
        ds.SASolver().init(1000, X64)
    assert len(str(err.value)) < 1000


# -- 8. atomic saves -----------------------------------------------------------------------


def test_08_a_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    sched = ds.DDIM()
    path = sched.save_config(tmp_path)
    good = path.read_text()
    grid = tmp_path / "grid.json"
    ds.grids.save_grid(grid, {"sigmas": [3.0, 1.0, 0.0]})
    good_grid = grid.read_text()
    # text that cannot be encoded fails midway through the write
    monkeypatch.setattr(json, "dumps", lambda *a, **k: '{"a": "\ud800"}')
    with pytest.raises(UnicodeEncodeError):
        ds.DDIM(eta=0.5).save_config(tmp_path)
    with pytest.raises(UnicodeEncodeError):
        ds.grids.save_grid(grid, {"sigmas": [2.0, 0.0]})
    assert path.read_text() == good and grid.read_text() == good_grid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json", "scheduler_config.json"]


# -- 9. the program cache is bounded in bytes ------------------------------------------------


def test_09_program_cache_is_bounded_in_bytes():
    from diffsched.core import scheduler

    cache = scheduler.cached_program
    assert cache.max_bytes <= 64 << 20
    small = scheduler._ProgramCache(max_bytes=1 << 20)
    configs = [ds.EDMEuler(sigma_max=80.0 + i) for i in range(6)]
    for sched in configs:
        small(sched, 4000, ())  # ~0.3 MB each
    assert small.nbytes <= 1 << 20 and 1 <= len(small) < len(configs)
    # the most recent stays; the global cache holds programs as before
    assert small(configs[-1], 4000, ()) is small(configs[-1], 4000, ())
    assert ds.DDIM().program(7) is ds.DDIM().program(7)


def test_09_program_cache_is_thread_safe():
    from diffsched.core import scheduler

    cache = scheduler._ProgramCache(max_bytes=200_000)
    errors = []

    def work(i):
        try:
            for k in range(20):
                p = cache(ds.DDIM(eta=0.1 * ((i + k) % 5)), 5 + k % 3, ())
                assert p.num_calls == 5 + k % 3
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and cache.nbytes <= 200_000


# -- 10. eager and compiled agree on non-finite input --------------------------------------

# configs with a call where the sample or the model output has a zero weight (found by
# scanning every class's tables): there the eager path skips the array
NONFINITE_CONFIGS = [
    ds.DDIM(),  # clipping: the sample's own weight is 0 (it reaches x̂_0 only, clipped)
    ds.DDPM(),  # the model output's weight is 0
    ds.DDIMInverse(),
    ds.Euler(prediction_type="sample"),  # last call: the output only
    ds.Euler(final_sigmas_type="sigma_min"),  # last call: the sample only
    ds.Heun(),
    ds.DPM2Ancestral(),
    ds.PNDM(),
    ds.IPNDM(),
    ds.EDMEuler(final_sigmas_type="sigma_min"),
    ds.DPMSolverSinglestep(prediction_type="sample"),
    ds.DPMSolverMultistep(thresholding=True),
    ds.LCM(thresholding=True),
]


@pytest.mark.parametrize("sched", NONFINITE_CONFIGS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("where", ["output", "sample"])
def test_10_eager_and_compiled_agree_on_non_finite_input(sched, where):
    jnp = jax.numpy
    x0 = np.random.default_rng(1).standard_normal((2, 1, 2, 2))
    n = 4
    poison = np.ones(x0.shape)
    poison.reshape(-1)[[2, 5]] = (np.nan, np.inf)  # one NaN, one inf, in two batch items

    def run(xp, x, at):
        state, ts = sched.init(n, x)
        for i in range(len(ts)):
            m = 0.1 * x
            if i == at and where == "output":
                m = m * xp.asarray(poison)
            elif i == at:
                x = x * xp.asarray(poison)
            state, x = sched.step(state, x, m)
        return np.asarray(x)

    calls = len(sched.init(n, x0)[1])
    for at in range(calls):
        eager = run(np, x0.copy(), at)
        traced = run(jnp, jnp.asarray(x0), at)
        np.testing.assert_array_equal(np.isfinite(eager), np.isfinite(traced), f"call {at}")
        assert not np.isfinite(eager).all(), f"call {at}"  # it propagates, as in diffusers
        finite = np.isfinite(eager)
        np.testing.assert_allclose(eager[finite], traced[finite], rtol=1e-9, atol=1e-12)


# -- 11. integer seeds are used whole ------------------------------------------------------


def test_11_seeds_outside_32_bits_are_refused():
    sched = ds.DDPM()
    a = _loop(sched, 4, X64 + 1, key=5)
    assert not np.array_equal(a, _loop(sched, 4, X64 + 1, key=6))
    for key in (2**32 + 5, -1, 2**64):
        with pytest.raises(ValueError, match=r"key: an integer seed must lie in \[0, 2\*\*32\)"):
            sched.init(4, X64, key)
    sched.init(4, X64, 2**32 - 1)


# -- 12. unclear errors become ValueError / TypeError naming what is wrong ------------------


def _deep_json(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


def _latin1(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_bytes(b'{"_class_name": "DDIMScheduler", "x": "\xe9"}')
    return path


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda p: ds.DDIM(timesteps_offset=10**30), ValueError, ["timesteps_offset"]),
        (lambda p: ds.EDMEuler(sigma_max=1e308).init(10, X64), ValueError, ["sigma_max"]),
        (
            lambda p: ds.FlowMatchEuler(use_dynamic_shifting=True).init(10, X64, mu=1000.0),
            ValueError,
            ["mu=1000"],
        ),
        (
            lambda p: ds.FlowMatchEuler(use_dynamic_shifting=True).init(
                10, X64, image_seq_len=10**12
            ),
            ValueError,
            ["image_seq_len"],
        ),
        (lambda p: ds.from_config(_deep_json(p)), ValueError, ["nested", "scheduler_config"]),
        (lambda p: ds.from_config(_latin1(p)), ValueError, ["UTF-8", "scheduler_config"]),
        (lambda p: ds.sample(lambda x, t: x, ds.DDIM, X64, 4), TypeError, ["DDIM", "construct"]),
        (
            lambda p: ds.sample(
                lambda x, t: x, peer.scheduler({"_class_name": "DDIMScheduler"}), X64, 4
            ),
            TypeError,
            ["DDIMScheduler", "from_config"],
        ),
        (
            lambda p: ds.DPMSolverMultistep(lambda_min_clipped=float("inf")).init(10, X64),
            ValueError,
            ["lambda_min_clipped"],
        ),
    ],
)
def test_12_clear_errors(call, error, words, tmp_path):
    with pytest.raises(error) as err:
        call(tmp_path)
    for word in words:
        assert word in str(err.value), str(err.value)
    assert "fewer steps" not in str(err.value)


def test_12_adapter_given_numpy_arrays():
    adapter = ds.to_diffusers(ds.DDIM())
    adapter.set_timesteps(4)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        adapter.step(X64, adapter.timesteps[0], X64)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_12_huge_custom_timesteps(cls):
    # DDPM indexed its table with int64(1e30) (an IndexError); every class that takes
    # timesteps= runs or says what is wrong
    try:
        cls().init(None, X64, timesteps=[10**30, 5, 1])
    except TypeError as err:
        assert "timesteps" in str(err)
    except ValueError as err:
        assert "timesteps" in str(err)
    if cls is ds.DDPM:
        with pytest.raises(ValueError, match="timesteps"):
            cls().init(None, X64, timesteps=[10**30, 5, 1])


def test_12_thresholding_with_an_empty_batch():
    sched = ds.DDIM(thresholding=True)
    x = np.zeros((0, 2, 2, 2))
    state, ts = sched.init(4, x)
    for _ in ts:
        state, x = sched.step(state, x, x)
    assert x.shape == (0, 2, 2, 2)


# -- 13. range checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: ds.SASolver(tau=1e30), "tau"),
        (lambda: ds.LMS(order=0), "order"),
        (lambda: ds.FlowMatchEuler(base_image_seq_len=-5), "base_image_seq_len"),
        (lambda: ds.FlowMatchEuler(max_image_seq_len=0), "max_image_seq_len"),
        (lambda: ds.grids.named_grid("edm", ds.Euler(), 5, rho=True), "rho"),
        (
            lambda: ds.tune(lambda x, t: x, ds.Euler(), 4, np.zeros((0, 2))),
            "calibration_noise",
        ),
    ],
)
def test_13_range_checks(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_13_dtype_and_shape_must_match_the_template():
    sched = ds.DDIM()
    state, _ = sched.init(4, np.zeros((1, 2, 2, 2), np.float32))
    with pytest.raises(TypeError, match="float64 sample"):
        sched.step(state, X64, X64)
    for cls in CLASSES:  # with or without history
        state, _ = cls().init(6, X64)
        other = np.zeros((2, 2, 2, 2))
        prediction = np.zeros(cls().prediction_shape(other.shape))  # Piflow's is wider
        with pytest.raises(ValueError, match="differs from the template"):
            cls().step(state, other, prediction)


# -- 14. files: only regular files of sane size are read -----------------------------------


def test_14_non_regular_and_huge_files_are_refused(tmp_path):
    fifo = tmp_path / "scheduler_config.json"
    os.mkfifo(fifo)
    result = []

    def read():
        try:
            ds.from_config(fifo)
        except Exception as err:
            result.append(err)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5.0)
    blocked = reader.is_alive()
    if blocked:  # release the reader
        with open(fifo, "w"):
            pass
        reader.join(5.0)
    assert not blocked, "reading a FIFO blocked"
    assert isinstance(result[0], ValueError) and "not a regular file" in str(result[0])
    assert str(fifo) in str(result[0])
    with pytest.raises(ValueError, match="not a regular file"):
        ds.grids.load_grid(fifo)
    if os.path.exists("/dev/zero"):  # a device that never ends
        with pytest.raises(ValueError, match="/dev/zero is not a regular file"):
            ds.from_config("/dev/zero")
    big = tmp_path / "big" / "scheduler_config.json"
    big.parent.mkdir()
    with open(big, "wb") as f:
        f.truncate(11 << 20)
    with pytest.raises(ValueError, match="bytes"):
        ds.from_config(big)
    with pytest.raises(ValueError, match="bytes"):
        ds.grids.load_grid(big)
    # a tuned table is read the same way (it blocked on a FIFO and never ended on /dev/zero)
    with pytest.raises(ValueError, match="not a regular file"):
        ds.load_tuned(fifo)
    with pytest.raises(ValueError, match="bytes"):
        ds.load_tuned(big)
    for load in (ds.load_tuned, ds.grids.load_grid):  # a folder opens read-only on POSIX
        with pytest.raises(ValueError, match="is a folder, not a file"):
            load(tmp_path)


def test_14_malformed_tuned_tables_are_refused_by_name(tmp_path):
    """A tuned table's JSON: nested without end, without its config, or not UTF-8 gives a
    ValueError naming the file (it gave RecursionError, KeyError, UnicodeDecodeError)."""
    from diffsched.tuning_coefficients import FORMAT

    texts = {
        "nested too deeply": b"[" * 100_000 + b"]" * 100_000,
        "'config' must be": json.dumps({"format": FORMAT, "version": 1}).encode(),
        "Tuned config dict, got: list": json.dumps(
            {"format": FORMAT, "version": 1, "config": [1]}
        ).encode(),
        "not UTF-8": b"\xff\xfe{",
    }
    for k, (cause, raw) in enumerate(texts.items()):
        path = tmp_path / f"t{k}.json"
        path.write_bytes(raw)
        with pytest.raises(ValueError, match=cause) as err:
            ds.load_tuned(path)
        assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="nested too deeply"):
        ds.Tuned(base="[" * 100_000)


# -- 15. the adapter and threads -------------------------------------------------------------


def test_15_one_adapter_per_thread_is_documented_and_cheap():
    from pathlib import Path

    from diffsched.diffusers import DiffusersScheduler

    assert "one adapter per thread" in DiffusersScheduler.__doc__
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert "one adapter per thread" in readme
    sched = ds.DPMSolverMultistep()
    ds.to_diffusers(sched)
    t0 = time.perf_counter()
    for _ in range(200):
        ds.to_diffusers(sched)
    assert (time.perf_counter() - t0) / 200 < 1e-3  # measured ~5 us (was ~33 us)


# -- 16. sample_max_value below 1; the NaN trained_betas error ------------------------------


def test_16_sample_max_value_below_one_matches_diffusers():
    sched = ds.DDIM(thresholding=True, sample_max_value=0.5, prediction_type="sample")
    x = oracle.start_sample()
    model = oracle.linear_tanh_model()

    def sample_model(x, t):  # x̂_0 beyond 0.5 in places: the clamp is active
        return 3.0 * model(x, t)

    _, ours = oracle.run_ours(sched, 6, x, sample_model)
    _, theirs = peer.run(sched.to_config(), sample_model, x, 6)
    err = oracle.rel(ours, theirs)
    assert err < 1e-6, err  # observed 2.1e-15


def test_16_nan_trained_betas_error_names_the_key():
    betas = [0.01] * 1000
    betas[3] = float("nan")
    with pytest.raises(ValueError, match="trained_betas"):
        ds.DDIM(trained_betas=betas)
    with pytest.raises(ValueError, match="trained_betas"):
        ds.from_config({"_class_name": "DDIMScheduler", "trained_betas": betas})


# -- found by a longer, unseeded run of the fuzzer (tests/test_fuzz.py) ------------------


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [(False, TypeError, "expects an integer seed"), (2.5, TypeError, "expects an integer seed"),
     ("7", TypeError, "expects an integer seed"), (-1, ValueError, r"must lie in \[0, 2\*\*32\)"),
     (1 << 32, ValueError, r"must lie in \[0, 2\*\*32\)")],
)  # fmt: skip
def test_noise_sampler_seed_is_checked_where_it_is_given(value, error, match):
    """A bad seed was refused only by init, in a message that did not name the option."""
    with pytest.raises(error, match=f"noise_sampler_seed {match}"):
        ds.DPMSolverSDE(noise_sampler_seed=value)
    with pytest.raises(error, match="noise_sampler_seed"):
        ds.DPMSolverSDE.from_config({"noise_sampler_seed": value})
    seeded = ds.DPMSolverSDE(noise_sampler_seed=np.uint32(7))
    assert type(seeded.noise_sampler_seed) is int and seeded == ds.DPMSolverSDE(
        noise_sampler_seed=7
    )
    # the seed is the key: init's own key is not used
    one = _loop(seeded, 4, np.ones((1, 2, 2, 2)), key=0)
    assert np.array_equal(one, _loop(seeded, 4, np.ones((1, 2, 2, 2)), key=5))
    assert np.isfinite(one).all()


@pytest.mark.parametrize(
    ("cls", "option"),
    [(ds.ComfySEEDS3, "r_1"), (ds.ComfySEEDS3, "r_2"), (ds.ComfySEEDS2, "r"),
     (ds.ComfyDPMPPSDE, "r")],
)  # fmt: skip
def test_stage_fractions_that_amplify_rounding_are_refused(cls, option):
    """A stage at λ_s + r h enters with weight ~1/r: r_1 = 2e-158 gave 1e141 and NaN
    from a finite model. r >= 1e-3 is taken, and its loop stays finite."""
    with pytest.raises(ValueError, match=f"{option} must lie in \\[0.001"):
        cls(**{option: 2e-158})
    with pytest.raises(ValueError, match=f"{option} must lie in \\[0.001"):
        cls(**{option: 5e-4})
    low = {option: 1e-3, **({"r_1": 1e-3, "r_2": 2e-3} if cls is ds.ComfySEEDS3 else {})}
    out = _loop(cls(**low), 4, np.ones((1, 2, 2, 2)), model=lambda x, t: np.tanh(x))
    assert np.isfinite(out).all()


def test_one_training_level_has_finite_timesteps():
    """num_train_steps=1: σ → t interpolated over a one-entry table was 0/0 (a NaN
    timestep and a NaN sample from DPMSolverSDE's midpoints); every σ is at t = 0 there."""
    from diffsched.schedules.sigmas import sigma_to_t

    assert np.array_equal(sigma_to_t(np.array([0.5, 2.0]), np.log(np.array([1.0]))), [0, 0])
    # two equal training levels: an index, not NaN
    t = sigma_to_t(np.array([0.5, 1.0, 2.0]), np.log(np.array([1.0, 1.0])))
    assert np.isfinite(t).all() and ((t >= 0) & (t <= 1)).all()
    sched = ds.DPMSolverSDE(num_train_steps=1, prediction_type="noise")
    _, timesteps = sched.init(2, np.ones((2, 3)), 0)
    assert np.isfinite(timesteps).all()
    assert np.isfinite(_loop(sched, 2, np.ones((2, 3)))).all()


@pytest.mark.parametrize("cls", [ds.FlowMatchEuler, ds.FlowMatchLCM, ds.FlowMatchHeun])
def test_flow_shift_diffusers_float32_cannot_take_is_refused(cls):
    """diffusers shifts the levels in float32: below 2**-23, 1 + (s - 1) σ rounds to 0 at
    σ = 1 (shift 7.7e-199 gave a NaN grid and an error about rho)."""
    for shift in (7.7e-199, 1e-39, 1e-7):
        with pytest.raises(ValueError, match="option shift must lie in"):
            cls(shift=shift)
    _, timesteps = cls(shift=2.0**-23).init(4, np.ones(2), 0)
    assert np.isfinite(timesteps).all()


def test_piflow_shift_that_collapses_its_levels_is_refused_by_name():
    """shift = 4.8e16 rounds every level of a 2-step loop to σ = 1: the policy's segment
    sum B was 0, and init failed with the engine's "extra per-call columns must be finite"
    after a NumPy divide-by-zero warning (unseeded fuzzer). A shift whose levels still
    move runs, and the shift's inverse is exact at σ = 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for shift in (4.77908843649812e16, 1e300):
            with pytest.raises(ValueError, match=r"Piflow: shift=.* to one level σ = 1 in float64"):
                ds.Piflow(shift=shift, n_grid=2).init(2, np.zeros((2, 3)), 0)
        sched = ds.Piflow(shift=1e15, n_grid=2)
        out = _loop(sched, 2, np.ones((2, 3)), model=lambda x, t: np.zeros((2, 6)))
        assert np.isfinite(out).all()
    for shift in (0.2, 5.0, 1e3):
        sched = ds.Piflow(shift=shift)
        r = np.array([1.0, 0.75, 0.5, 1e-6])
        assert sched._unshift(1.0) == 1.0
        np.testing.assert_allclose(sched._unshift(sched._sigma(r)), r, rtol=1e-9)


def test_float32_range_error_names_the_options_that_set_the_levels():
    with pytest.raises(engine.Float32RangeError, match=r"sigma_max=1e\+20"):
        ds.ScoreSdeVe(sigma_max=1e20).init(3, np.ones((2, 3), np.float32), 0)
    ds.ScoreSdeVe(sigma_max=1e20).init(3, np.ones((2, 3)), 0)  # float64 holds it


def test_sigma_data_is_bounded():
    """σ_data (EDM, consistency models: 0.5 or 1) above 1e6 is refused: at 7e307 the start
    σ_d ε overflowed float64 (the unseeded fuzzer's SCM) and σ_d² the EDM coefficients."""
    for cls in (ds.SCM, ds.EDMEuler, ds.CMStochasticIterative, ds.ConsistencyDecoder,
                ds.EDMDPMSolverMultistep, ds.CosineDPMSolverMultistep):  # fmt: skip
        with pytest.raises(ValueError, match=r"option sigma_data must lie in \(0\.0, 1000000"):
            cls(sigma_data=7e307)
    assert np.isfinite(_loop(ds.SCM(sigma_data=1e6), 2, np.ones((2, 3)))).all()


def test_zero_snr_clamp_refusal_names_the_rising_levels():
    """EulerAncestral on zero terminal SNR over every training step: diffusers' clamp of
    ᾱ_{T-1} to 2^-24 puts σ there (4096) below σ at T-2, so the loop rises at its first
    call, whatever the model predicts (diffusers' own loop gives NaN there). The refusal
    said that ε-prediction was the cause; it names the levels now. A loop that skips
    T-2 runs; DDPM (no clamp, ᾱ_{T-1} = 0) keeps the ε message."""
    for prediction in ("noise", "angular_velocity"):
        sched = ds.EulerAncestral(rescale_betas_zero_snr=True, prediction_type=prediction)
        with pytest.raises(ValueError, match=r"timesteps 999 and 998 rises there"):
            sched.program(1000)
        assert np.isfinite(_loop(sched, 10, np.ones((1, 2, 2, 2)))).all()
    with pytest.raises(ValueError, match="cannot give x_0 at zero signal-to-noise"):
        ds.DDPM(rescale_betas_zero_snr=True).program(1000)


def test_score_sde_vp_beta_is_bounded_and_its_largest_loop_is_finite_in_float32():
    """The fuzzer's finding: ScoreSdeVp(beta_min=8.2e10) took the config and a finite model
    gave inf (float32): the reverse drift grows the sample by up to exp(¼ (β_min + β_max))
    without a score to pull it back. β is bounded at 100 (refused above, by name), and at
    the bound every loop stays finite in float32 (3.5e20 at 1000 steps seen)."""
    with pytest.raises(ValueError, match=r"beta_min must lie in \[0.0, 100.0\]"):
        ds.ScoreSdeVp(beta_min=8.2e10)
    with pytest.raises(ValueError, match="beta_max"):
        ds.ScoreSdeVp(beta_max=101.0)
    sched = ds.ScoreSdeVp(beta_min=100.0, beta_max=100.0)
    for n in (1, 5, 100, 1000):
        x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
        state, ts = sched.init(n, x, key=1)
        y = x
        for t in ts:
            state, y = sched.step(state, y, np.tanh(0.7 * y + 1e-3 * float(t)))
        assert y.dtype == np.float32 and np.isfinite(y).all(), n


def test_refusals_come_without_numpy_warnings():
    """A config or loop that is refused says why in its exception, and NumPy's warnings on
    the way (0/0 in a table of a level visited twice, σ = inf) are not raised first: under
    ``-W error`` (common in test suites) they would replace the message."""
    refused = [
        (lambda: ds.DPMSolverMultistep().init(2000, np.zeros((1, 2)), 0), "visits a noise level"),
        (lambda: ds.Tuned(tuned_steps=2000, weights=[0.0] * 2000).init(2000, np.zeros((1, 2)), 0),
         "visits a noise level"),
        (lambda: ds.ComfyEuler(model="eps", linear_end=1.0), "beyond float32"),
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for make, words in refused:
            with pytest.raises(ValueError, match=words):
                make()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_an_empty_batch_runs_without_warnings(cls, backend):
    """A batch of no samples (and a sample with an empty axis) is a valid array: the loop
    returns an empty array of its shape and dtype, with no NumPy warning on the way (the
    error norms and the score SDE's corrector normalise by sample norms, 0 / 0 there)."""
    sched = cls()
    for shape in ((0, 2, 3), (2, 0, 3)):
        x = np.zeros(shape) if backend == "numpy" else torch.zeros(shape, dtype=torch.float64)
        pshape = tuple(sched.prediction_shape(shape))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            state, ts = sched.init(4, x, 0)
            for _ in range(len(ts)):
                m = np.zeros(pshape) if backend == "numpy" else torch.zeros(pshape, dtype=x.dtype)
                state, x = sched.step(state, x, m)
        assert tuple(x.shape) == shape
        assert x.dtype == (np.float64 if backend == "numpy" else torch.float64)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_contract_by_keyword(cls):
    """``init(num_steps=, sample_template=, key=)`` and ``step(state=, sample=,
    prediction=)`` by the contract's names for every class (the adaptive classes' bound on
    model calls is their num_steps; ``max_calls=`` names it too), with the positional
    call's result."""
    sched = cls()
    x = np.ones((1, 2, 3))
    state, timesteps = sched.init(num_steps=4, sample_template=x, key=0)
    state_p, timesteps_p = sched.init(4, x, 0)
    np.testing.assert_array_equal(np.asarray(timesteps), np.asarray(timesteps_p))
    m = np.full(tuple(sched.prediction_shape(x.shape)), 0.1)
    _, y = sched.step(state=state, sample=x, prediction=m)
    _, y_p = sched.step(state_p, x, m)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_p))
    if cls.ADAPTIVE:
        _, by_name = sched.init(max_calls=4, sample_template=x, key=0)
        np.testing.assert_array_equal(np.asarray(by_name), np.asarray(timesteps))
        with pytest.raises(TypeError, match="pass one"):
            sched.init(4, x, 0, max_calls=4)
