"""Every error the schedulers raise, with its message; configs are immutable and hashable."""

from __future__ import annotations

import dataclasses
import re
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import diffsched as ds

X = np.zeros((2, 4, 8, 8))
XT = torch.zeros((2, 4, 8, 8), dtype=torch.float64)
ALL = [ds.DDIM, ds.PNDM, ds.LCM]


def esc(text: str) -> str:
    return re.escape(text)


# -- step counts --------------------------------------------------------------------------


def test_pndm_needs_four_steps_with_runge_kutta_warmup():
    with pytest.raises(ValueError, match=esc("expected at least 4 steps, got: 2")):
        ds.PNDM().init(2, X)
    with pytest.raises(ValueError, match=esc("expected at least 4 steps, got: 3")):
        ds.PNDM().init(3, X)
    ds.PNDM().init(4, X)


def test_pndm_reduce_warmup_runs_one_step():
    # diffusers' skip_prk_steps at N = 1 makes one call (no improved-Euler redo), a step
    # from the first timestep past t = 0 (parity in test_parity.py)
    _, timesteps = ds.PNDM(reduce_warmup=True).init(1, X)
    assert len(timesteps) == 1
    with pytest.raises(ValueError, match=esc("expected an integer in [1, 10000], got: 0")):
        ds.PNDM(reduce_warmup=True).init(0, X)


def test_lcm_step_limits():
    lcm = ds.LCM(num_train_steps=100, num_original_steps=100)
    with pytest.raises(
        ValueError, match=esc("num_steps must be at most num_train_steps=100, got: 101")
    ):
        lcm.init(101, X)
    lcm.init(100, X)
    with pytest.raises(
        ValueError, match=esc("num_steps must be at most num_original_steps=50, got: 51")
    ):
        ds.LCM().init(51, X)
    ds.LCM().init(50, X)
    with pytest.raises(
        ValueError,
        match=esc("at most floor(num_original_steps * strength) = floor(50 * 0.5) = 25, got: 26"),
    ):
        ds.LCM().init(26, X, strength=0.5)
    ds.LCM().init(25, X, strength=0.5)
    with pytest.raises(ValueError, match=esc("floor(50 * 0.3) = 15, got: 16")):
        ds.LCM().init(16, X, strength=0.3)


@pytest.mark.parametrize("strength", [0, 0.0, -0.5, 1.0000001, 2, True, "1"])
def test_lcm_strength_out_of_range(strength):
    with pytest.raises(
        ValueError,
        match=esc("strength must be a number in (0.0, 1.0], got: ") + esc(repr(strength)),
    ):
        ds.LCM().init(1, X, strength=strength)


def test_lcm_num_original_steps_limit():
    with pytest.raises(
        ValueError, match=esc("num_original_steps must be at most num_train_steps=40, got: 50")
    ):
        ds.LCM(num_train_steps=40)
    with pytest.raises(
        ValueError, match=esc("LCM option num_original_steps must lie in [1, 2147483647], got: 0")
    ):
        ds.LCM(num_original_steps=0)


@pytest.mark.parametrize("cls", [ds.DDIM, ds.PNDM])
def test_more_steps_than_training_steps(cls):
    sched = cls(num_train_steps=100)
    with pytest.raises(
        ValueError, match=esc("num_steps must be at most num_train_steps=100, got: 101")
    ):
        sched.init(101, X)
    sched.init(100, X)


@pytest.mark.parametrize("cls", ALL)
def test_num_steps_must_be_a_positive_int(cls):
    sched = cls()
    with pytest.raises(TypeError, match=esc("num_steps must be an integer, got: 4.0")):
        sched.init(4.0, X)
    with pytest.raises(TypeError, match=esc("num_steps must be an integer, got: True")):
        sched.init(True, X)
    with pytest.raises(TypeError, match=esc("num_steps must be an integer, got: '4'")):
        sched.init("4", X)
    with pytest.raises(
        ValueError, match=esc("num_steps: expected an integer in [1, 10000], got: 0")
    ):
        sched.init(0, X)
    with pytest.raises(
        ValueError, match=esc("num_steps: expected an integer in [1, 10000], got: -3")
    ):
        sched.init(-3, X)
    # NumPy integers are integers
    _, timesteps = sched.init(np.int64(4), X)
    assert timesteps.shape[0] >= 4


@pytest.mark.parametrize("cls", [ds.DDIM, ds.PNDM])
def test_timesteps_offset_past_last_training_step(cls):
    with pytest.raises(
        ValueError,
        match=esc(
            "timesteps_offset=1 with 1000 steps gives timestep 1000, past the last training "
            "timestep 999"
        ),
    ):
        cls(timesteps_offset=1).init(1000, X)
    message = "timesteps_offset=5 with 200 steps gives timestep 1000"
    with pytest.raises(ValueError, match=esc(message)):
        cls(timesteps_offset=5).init(200, X)
    cls(timesteps_offset=4).init(200, X)
    cls().init(1000, X)
    with pytest.raises(
        ValueError, match=esc("option timesteps_offset must lie in [0, 2147483647], got: -1")
    ):
        cls(timesteps_offset=-1)


# -- option values ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize(
    ("option", "value", "choices"),
    [
        ("beta_schedule", "sigmoid", "('linear', 'quadratic', 'squared_cosine')"),
        ("beta_schedule", "scaled_linear", "('linear', 'quadratic', 'squared_cosine')"),
        ("prediction_type", "epsilon", None),
        ("alpha_clip_strategy", "zero", "('one', 'alpha_zero')"),
        ("alpha_clip_strategy", True, "('one', 'alpha_zero')"),
    ],
)
def test_unknown_option_values(cls, option, value, choices):
    choices = choices or str(cls.PREDICTION_TYPES)
    with pytest.raises(ValueError, match=esc(f"{option} must be one of {choices}, got: {value!r}")):
        cls(**{option: value})


@pytest.mark.parametrize("cls", [ds.DDIM, ds.PNDM])
def test_unknown_timestep_spacing(cls):
    with pytest.raises(
        ValueError,
        match=esc(
            "timestep_spacing must be one of ('leading', 'linspace', 'trailing'), got: 'uniform'"
        ),
    ):
        cls(timestep_spacing="uniform")


def test_pndm_has_no_sample_prediction():
    with pytest.raises(
        ValueError,
        match=esc("prediction_type must be one of ('noise', 'angular_velocity'), got: 'sample'"),
    ):
        ds.PNDM(prediction_type="sample")


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (ds.DDIM, {"eta": -0.1}, "eta must lie in [0.0, inf], got: -0.1"),
        (
            ds.DDIM,
            {"clip_sample_range": 0},
            "clip_sample_range must lie in (0.0, inf], got: 0.0",
        ),
        (
            ds.LCM,
            {"dynamic_thresholding_ratio": 1.5},
            "dynamic_thresholding_ratio must lie in [0.0, 1.0], got: 1.5",
        ),
        (
            ds.DDIM,
            {"sample_max_value": 0.0},
            "sample_max_value must lie in (0.0, inf], got: 0.0",
        ),
        (
            ds.LCM,
            {"boundary_condition_timestep_scale": -1.0},
            "boundary_condition_timestep_scale must lie in [0.0, inf], got: -1.0",
        ),
        (ds.PNDM, {"num_train_steps": 0}, "num_train_steps must lie in [1, 100000], got: 0"),
    ],
)
def test_out_of_range_numbers(cls, kwargs, message):
    with pytest.raises(ValueError, match=esc(message)):
        cls(**kwargs)


def test_non_integer_num_train_steps():
    with pytest.raises(
        TypeError, match=esc("option num_train_steps expects an integer, got: 1000.0")
    ):
        ds.DDIM(num_train_steps=1000.0)


@pytest.mark.parametrize(
    ("cls", "option"),
    [
        (ds.DDIM, "foo"),
        (ds.DDIM, "num_train_timesteps"),
        (ds.DDIM, "clip_sample"),
        (ds.PNDM, "clip_denoised_sample"),
        (ds.PNDM, "eta"),
        (ds.PNDM, "rescale_betas_zero_snr"),
        (ds.PNDM, "thresholding"),
        (ds.LCM, "eta"),
        (ds.LCM, "timesteps_offset"),
        (ds.LCM, "reduce_warmup"),
    ],
)
def test_unknown_keyword_option(cls, option):
    with pytest.raises(TypeError, match=esc(f"{cls.__name__} has no option(s) ['{option}']")):
        cls(**{option: 1})


def test_options_are_keyword_only():
    with pytest.raises(TypeError, match="positional argument"):
        ds.DDIM(1000)


@pytest.mark.parametrize("cls", ALL)
def test_trained_betas_of_wrong_length(cls):
    with pytest.raises(
        ValueError, match=esc("trained_betas must have num_train_steps=1000 entries, got: 10")
    ):
        cls(trained_betas=[0.01] * 10)
    with pytest.raises(
        ValueError, match=esc("trained_betas must have num_train_steps=20 entries, got: 1000")
    ):
        extra = {"num_original_steps": 10} if cls is ds.LCM else {}
        cls(num_train_steps=20, trained_betas=[0.01] * 1000, **extra)


@pytest.mark.parametrize("cls", [ds.DDIM, ds.LCM])
def test_zero_snr_with_noise_prediction_fails_in_init(cls):
    sched = cls(
        rescale_betas_zero_snr=True, **({"timestep_spacing": "trailing"} if cls is ds.DDIM else {})
    )
    with pytest.raises(
        ValueError, match=esc(f"{cls.__name__}: model call 0 (timestep 999) has no finite update")
    ) as info:
        sched.init(10 if cls is ds.DDIM else 4, X)
    assert "prediction_type='noise' cannot give x_0" in str(info.value)
    assert "prediction_type='angular_velocity'" in str(info.value)
    # where x_0 is recoverable it is fine: v and x_0 models, and a schedule missing t = 999
    for prediction_type in ("angular_velocity", "sample"):
        _, ts = sched.replace(prediction_type=prediction_type).init(4, X)
        assert int(ts[0]) == 999
    if cls is ds.DDIM:
        _, ts = sched.replace(timestep_spacing="leading").init(10, X)
        assert int(ts[0]) == 900


# -- step inputs --------------------------------------------------------------------------


def _loop_state(sched, x, n):
    state, timesteps = sched.init(n, x)
    y = x
    for _ in timesteps:
        state, y = sched.step(state, y, y)
    return state, timesteps


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
@pytest.mark.parametrize(("cls", "n", "calls"), [(ds.DDIM, 3, 3), (ds.LCM, 2, 2), (ds.PNDM, 4, 13)])
def test_stepping_past_the_end(cls, n, calls, backend):
    x = {"numpy": X, "torch": XT, "jax": jnp.zeros((2, 4, 8, 8))}[backend]
    sched = cls()
    state, timesteps = _loop_state(sched, x, n)
    assert timesteps.shape[0] == calls  # PNDM: the Runge-Kutta warm-up adds 9 model calls
    with pytest.raises(
        IndexError,
        match=esc(
            f"{cls.__name__}.step called after the last of its {calls} model calls "
            f"(call index {calls}); call init again"
        ),
    ):
        sched.step(state, x, x)


@pytest.mark.parametrize("cls", ALL)
def test_sample_and_prediction_shapes_must_match(cls):
    state, _ = cls().init(4, X)
    with pytest.raises(
        ValueError,
        match=esc("sample and prediction must have the same shape, got (2, 4, 8, 8) and (2, 4, 8)"),
    ):
        cls().step(state, X, X[..., 0])


def test_pndm_sample_must_have_the_template_shape():
    state, _ = ds.PNDM().init(4, X)
    y = np.zeros((1, 4, 8, 8))
    with pytest.raises(
        ValueError, match=esc("sample shape (1, 4, 8, 8) differs from the template's (2, 4, 8, 8)")
    ):
        ds.PNDM().step(state, y, y)


def test_noise_for_a_deterministic_step_is_an_error():
    sched = ds.DDIM()
    state, _ = sched.init(4, X)
    with pytest.raises(ValueError, match=esc("DDIM with this configuration draws no noise")):
        sched.step(state, X, X, noise=X)


@pytest.mark.parametrize("sched", [ds.DDIM(eta=1.0), ds.LCM()])
def test_noise_of_wrong_shape(sched):
    state, _ = sched.init(4, X)
    with pytest.raises(
        ValueError, match=esc("noise must have the sample's shape (2, 4, 8, 8), got (2, 4)")
    ):
        sched.step(state, X, X, noise=np.zeros((2, 4)))


def test_thresholding_needs_a_batch_axis():
    sched = ds.DDIM(thresholding=True)
    state, _ = sched.init(4, np.zeros(3))
    with pytest.raises(
        ValueError,
        match=esc("dynamic thresholding needs a batch axis and at least one more, got shape (3,)"),
    ):
        sched.step(state, np.zeros(3), np.zeros(3))


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize(
    "template",
    [
        np.zeros(3, dtype=np.int64),
        torch.zeros(3, dtype=torch.int32),
        jnp.zeros(3, dtype=jnp.int32),
        np.zeros(3, dtype=bool),
    ],
)
def test_integer_sample_template(cls, template):
    with pytest.raises(TypeError, match="expected a floating-point sample, got dtype"):
        cls().init(4, template)


@pytest.mark.parametrize("cls", ALL)
def test_non_array_sample_template(cls):
    with pytest.raises(
        TypeError,
        match=esc("expected NumPy, PyTorch or JAX arrays (all of one library), got: list"),
    ):
        cls().init(4, [0.0, 1.0])


@pytest.mark.parametrize("cls", ALL)
def test_mixing_numpy_and_torch(cls):
    sched = cls()
    state, _ = sched.init(4, X)
    with pytest.raises(
        TypeError,
        match=esc(
            "expected NumPy, PyTorch or JAX arrays (all of one library), got: Tensor, ndarray"
        ),
    ):
        sched.step(state, XT, X)
    with pytest.raises(TypeError, match=esc("(all of one library), got: Tensor, ndarray")):
        sched.step(state, X, XT)
    # a state made for one library, arrays of another: an error too
    with pytest.raises(TypeError):
        sched.step(state, XT, XT)
    torch_state, _ = sched.init(4, XT)
    with pytest.raises(TypeError):
        sched.step(torch_state, X, X)


@pytest.mark.parametrize("cls", ALL)
def test_mixing_state_and_arrays_has_a_clear_message(cls):
    state, _ = cls().init(4, X)
    with pytest.raises(TypeError, match="init and step must use one array library"):
        cls().step(state, XT, XT)


@pytest.mark.parametrize("key", [True, "seed", 1.5, None])
def test_bad_keys(key):
    with pytest.raises(TypeError, match="expected an integer seed"):
        ds.DDIM(eta=1.0).init(4, X, key=key)


# -- configs are immutable and hashable ---------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_configs_are_frozen(cls):
    sched = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        sched.num_train_steps = 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        sched.prediction_type = "sample"
    with pytest.raises(dataclasses.FrozenInstanceError):
        del sched.beta_start
    assert sched.num_train_steps == 1000
    changed = sched.replace(num_train_steps=500)
    assert changed.num_train_steps == 500 and sched.num_train_steps == 1000
    assert type(changed) is cls


@pytest.mark.parametrize("cls", ALL)
def test_configs_are_hashable_values(cls):
    a, b = cls(beta_end=0.03), cls(beta_end=0.03)
    assert a == b and a is not b and hash(a) == hash(b)
    assert a != cls() and a != cls(beta_end=0.031)
    table = {a: "a", cls(): "default"}
    assert table[b] == "a" and table[cls()] == "default" and len(table) == 2
    assert len({cls(), cls(), a, b}) == 2
    # trained betas given as a list or an array are stored as a tuple: still hashable
    betas = np.linspace(1e-4, 0.02, 1000)
    from_list, from_array = cls(trained_betas=list(betas)), cls(trained_betas=betas)
    assert isinstance(from_array.trained_betas, tuple)
    assert from_list == from_array and hash(from_list) == hash(from_array)
    assert {from_list: 1}[from_array] == 1


def test_different_classes_are_not_equal():
    assert ds.DDIM() != ds.PNDM() and ds.DDIM() != ds.LCM()
    assert ds.DDIM(alpha_clip_strategy="alpha_zero") != ds.PNDM(alpha_clip_strategy="alpha_zero")


@pytest.mark.parametrize(
    ("cls", "option", "value", "expected"),
    [
        (ds.DDIM, "clip_denoised_sample", "yes", "True or False"),
        (ds.DDIM, "eta", "0.5", "a number"),
        (ds.PNDM, "reduce_warmup", 1, "True or False"),
        (ds.LCM, "boundary_condition_timestep_scale", None, "a number"),
    ],
)
def test_option_types(cls, option, value, expected):
    with pytest.raises(TypeError, match=f"option {option} expects {expected}, got: "):
        cls(**{option: value})


def test_a_float32_table_out_of_range_names_the_schedule_options():
    """A table float32 cannot hold (ᾱ at the top level near float32's tiniest) is refused
    for a float32 sample, naming the options that set the noise schedule (found by the
    fuzz test: ComfyUI's linear_start=0.25); a float64 sample runs."""
    sched = ds.ComfyHeunPP2(linear_start=0.25)
    with pytest.raises(ValueError, match=r"float32.*\(the noise schedule: linear_start=0\.25\)"):
        sched.init(1, np.zeros((2, 3), np.float32))
    sched.init(1, np.zeros((2, 3), np.float64))
    # per-element schedules (offsets=) run the same table: the same refusal
    with pytest.raises(ValueError, match=r"float32.*\(the noise schedule: linear_start=0\.25\)"):
        sched.init(1, np.zeros((2, 3), np.float32), offsets=np.array([[0], [1]]))
    sched.init(1, np.zeros((2, 3), np.float64), offsets=np.array([[0], [1]]))


@pytest.mark.parametrize("steps", [5000, 73253])
def test_too_many_training_steps_is_named(steps):
    """Linear betas over many training steps drive ᾱ below 1e-12, and past ~10⁴ steps to 0
    in float64 (where it also stops decreasing): either way the message names the number of
    training steps, not a beta too small to lower ᾱ (the fuzzer's case: 73253 steps)."""
    with pytest.raises(ValueError, match=esc(f"or the number of training steps ({steps})")):
        ds.DDIM(num_train_steps=steps)


def test_options_that_multiply_calls_are_bounded():
    """A small config must not cost unbounded time or memory: correctors and resampling
    jumps multiply the model calls of a loop, refused past ops.MAX_CALLS before any per-call
    table is built (the unseeded fuzzer hung on ScoreSdeVe with a large correct_steps)."""
    from diffsched.core.ops import MAX_CALLS

    with pytest.raises(ValueError, match="correct_steps=2147483647 give 10737418240 model calls"):
        ds.ScoreSdeVe(correct_steps=2**31 - 1).init(5, X)
    with pytest.raises(ValueError, match=esc(f"expected at most {MAX_CALLS}")):
        ds.RePaint().init(10, X, jump_length=1, jump_n_sample=10**9)
    with pytest.raises(ValueError, match="restart_steps=10000 and restart_times=100 give"):
        ds.Restart(restart_steps=10_000, restart_times=100).init(30, X)
    # the count is exact: one call under the bound runs
    steps, correct = 4, MAX_CALLS // 4 - 1
    assert len(ds.ScoreSdeVe(correct_steps=correct).init(steps, X)[1]) == MAX_CALLS


def test_brownian_intervals_one_pass_is_the_definition():
    """call_intervals (every stochastic loop's draw levels) found each call's next level by a
    scan of all later calls: quadratic in the calls of a loop (a corrector loop of 15000
    calls took 8 s; benchmarks measure speed, not this test). Its one pass from the end
    gives the definition's intervals, repeated levels included."""
    from diffsched.core import brownian

    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 12))
        tau = rng.choice([0.1, 0.3, 0.5, 0.9], n)
        noise = rng.integers(0, 2, n) * rng.random(n)
        got = brownian.call_intervals(tau, noise, 0.7)
        for i in range(n):
            later = [t for t in tau[i + 1 :] if t != tau[i]]
            want = (later[0] if later else 0.7) if noise[i] != 0 else tau[i]
            assert got[i, 1] == want and got[i, 0] == tau[i]


def test_float32_range_error_names_the_other_options_set():
    """A coefficient past float32's range from an option that is no schedule option (the
    unseeded fuzzer: ComfyUI's dpmpp_sde with s_noise=1.8e18) is named too."""
    with pytest.raises(ValueError, match=r"float32.*other options set: s_noise=1\.8"):
        ds.ComfyDPMPPSDE(s_noise=1.8e18).init(5, np.zeros((1, 2), np.float32))


def test_dpm_adaptive_first_step_is_bounded_below():
    """A first step below float32's resolution of λ (the unseeded fuzzer's h_init=3e-105:
    NaN from 0/0 in the error estimate) is refused, naming the option."""
    with pytest.raises(ValueError, match=r"option h_init must lie in \[0\.0001"):
        ds.ComfyDPMAdaptive(h_init=2.99e-105)
    ds.ComfyDPMAdaptive(h_init=1e-4)


@pytest.mark.parametrize("cls", [ds.CogVideoXDDIM, ds.CogVideoXDPM])
def test_cogvideox_betas_are_checked_as_every_schedule(cls):
    """CogVideoX's own betas skipped the schedule checks: beta_end=0.625 drove ᾱ to 6e-121
    and a float32 loop from a finite model to -inf (the unseeded fuzzer)."""
    with pytest.raises(ValueError, match=r"drive ᾱ down to 5\.73e-121"):
        cls(beta_end=0.625)


def _discrete_spaced_classes():
    """The classes whose timesteps are training timesteps picked by a spacing (no flow or
    EDM time: their timesteps are not indices of a training table)."""
    from diffsched.core.options import specs

    out = []
    for cls in ds.methods.CLASSES:
        options = specs(cls)
        if "timestep_spacing" in options and "num_train_steps" in options:
            out.append(cls)
    return out


@pytest.mark.parametrize("cls", _discrete_spaced_classes(), ids=lambda c: c.__name__)
def test_a_spacing_never_calls_the_model_off_the_training_timesteps(cls):
    """Every timestep a spaced loop calls the model at is a training one, in [0, T - 1],
    or the config is refused naming the spacing: ``trailing`` with more steps than T gave
    timestep -1, ``leading`` with an offset gave T or more (Euler, Heun, DPM2, the SDE
    solver, DPM-Solver, UniPC, DEIS, SA-Solver; diffusers calls the model there at the
    nearest end's σ), and UniPC of order 3 on a grid that repeats a level raised NumPy's
    LinAlgError instead of naming the repeat."""
    from diffsched.core.options import specs

    T = 100
    # the causes a refusal may name: too many steps, a level visited twice, a timestep
    # off the training ones, one timestep for every step, ε at zero terminal SNR
    EXPLAINED = ("num_steps", "twice", "training timestep", "one timestep",
                 "zero signal-to-noise")  # fmt: skip
    choices = specs(cls)["timestep_spacing"][1].choices
    offsets = (0, 1, 7) if "timesteps_offset" in specs(cls) else (0,)
    orders = (None, 3) if "solver_order" in specs(cls) else (None,)
    checked = 0
    for spacing in choices:
        for offset in offsets:
            for order in orders:
                for n in (T // 2 + 1, T - 1, T, 2 * T):
                    kw = {"num_train_steps": T, "timestep_spacing": spacing}
                    if offset:
                        kw["timesteps_offset"] = offset
                    if order:
                        kw["solver_order"] = order
                    try:
                        _, ts = cls(**kw).init(n, np.zeros((1, 2)))
                    except ValueError as err:
                        msg = str(err)
                        assert any(w in msg for w in EXPLAINED), msg
                        continue
                    ts = np.asarray(ts, np.float64)
                    assert ts.min() >= 0 and ts.max() <= T - 1, (kw, n, ts.min(), ts.max())
                    checked += 1
    assert checked > 0


@pytest.mark.parametrize("cls", ds.methods.CLASSES, ids=lambda c: c.__name__)
def test_a_prediction_that_is_no_array_is_named(cls):
    """A model that returns a float, None or a nested list: every class's step (engine,
    per-element, adaptive, Piflow's, the score SDE's corrector) raises a TypeError naming
    the prediction, not an AttributeError from deep in the step."""
    x = np.zeros((2, 3))
    try:
        sched = cls()
        state, _ = sched.init(4, x, 0)
    except (TypeError, ValueError, NotImplementedError):
        pytest.skip("no default loop on this template")
    for bad in (0.1, None, [[0.0] * 3] * 2):
        with pytest.raises(TypeError, match="the prediction must be an array"):
            sched.step(state, x, bad)
    with pytest.raises(TypeError, match="the sample must be an array"):
        sched.step(state, x.tolist(), x)


def test_comfy_schedules_on_a_zero_snr_table_name_the_clamp():
    """ComfyUI's schedules read the training σ table by timestep; diffusers' zero-SNR clamp
    (ᾱ = 2^-24 at the last step) makes that table fall at its top. Every class taking both
    options refuses naming the option (it said "the σ table must be ascending"; found by
    the unseeded fuzzer)."""
    from diffsched.core.options import specs
    from diffsched.schedules.sigmas import COMFY_SCHEDULES

    checked = 0
    for cls in ds.methods.CLASSES:
        options = specs(cls)
        if "rescale_betas_zero_snr" not in options or "sigma_schedule" not in options:
            continue
        for kind in options["sigma_schedule"][1].choices:
            if kind not in COMFY_SCHEDULES:
                continue
            sched = cls(rescale_betas_zero_snr=True, sigma_schedule=kind)
            with pytest.raises(ValueError, match="rescale_betas_zero_snr=True"):
                sched.init(5, np.zeros((2, 3)))
            checked += 1
    assert checked >= 40


def test_comfy_schedules_on_one_training_level_name_the_option():
    """A training table of one level (num_train_steps=1) has no span for ComfyUI's
    schedules to read: every discrete-time class taking sigma_schedule refuses at init
    naming the option and num_train_steps (it said "the σ table must hold at least 2
    finite positive levels"; found by the unseeded fuzzer, Euler with
    sigma_schedule="simple"), and runs the same table with a schedule that needs no table
    (karras). Flow-matching classes read no training table (their levels are σ itself)."""
    from diffsched.core.options import specs
    from diffsched.grids import is_flow
    from diffsched.schedules.sigmas import COMFY_SCHEDULES

    checked = 0
    x = np.zeros((2, 3))
    for cls in ds.methods.CLASSES:
        options = specs(cls)
        if "num_train_steps" not in options or "sigma_schedule" not in options:
            continue
        if is_flow(cls()):
            continue
        kinds = options["sigma_schedule"][1].choices
        for kind in (k for k in kinds if k in COMFY_SCHEDULES):
            sched = cls(num_train_steps=1, sigma_schedule=kind)
            with pytest.raises(ValueError, match=rf"sigma_schedule '{kind}'.*num_train_steps"):
                sched.init(1, x)
            checked += 1
        if "karras" in kinds:
            _, ts = cls(num_train_steps=1, sigma_schedule="karras").init(1, x)
            assert np.all(np.isfinite(np.asarray(ts, dtype=np.float64)))
    assert checked >= 40


@pytest.mark.parametrize(
    "cls", [ds.UniPC, ds.DPMSolverMultistep, ds.DPMSolverSinglestep, ds.LCM, ds.TCD, ds.DDPM]
)
def test_custom_integer_timesteps_refuse_a_fraction(cls):
    """The classes that call the model at integer training timesteps refuse a custom
    timestep with a fraction (999.5 ran as 999, as diffusers truncates it; DDPM refused
    already); integral floats are integers."""
    x = np.zeros((1, 2))
    with pytest.raises(ValueError, match="integers"):
        cls().init(None, x, timesteps=[999.5, 500.0, 100.0])
    _, ts = cls().init(None, x, timesteps=[999.0, 500.0, 100.0])
    assert list(np.asarray(ts)[:1]) == [999]


@pytest.mark.parametrize("cls", ds.methods.CLASSES, ids=lambda c: c.__name__)
def test_a_custom_grid_of_two_dimensions_is_refused(cls):
    """A 2-D ``sigmas=`` / ``timesteps=`` is refused by every class, never flattened (the
    ComfyUI classes, Ralston, Restart and the consistency decoder flattened it)."""
    x = np.zeros((1, 2))
    for name, grid in (("sigmas", [[10.0, 1.0, 0.0]]), ("timesteps", [[999.0, 500.0, 0.0]])):
        with pytest.raises((TypeError, ValueError)):
            cls().init(None, x, **{name: grid})


def test_scm_custom_angles_are_trigflow_angles():
    """SCM's custom timesteps are TrigFlow angles from π/2 down to 0: ascending, negative
    or past 1.5708 (diffusers' first angle) are refused (they ran)."""
    x = np.zeros((1, 2))
    for angles in ([0.1, 1.0, 0.0], [1.0, -1.0, 0.0], [3.0, 1.0, 0.0]):
        with pytest.raises(ValueError, match="strictly decreasing"):
            ds.SCM().init(None, x, timesteps=angles)
    _, ts = ds.SCM().init(None, x, timesteps=[1.5708, 1.3, 0.0])
    assert len(ts) == 2


def test_a_jax_key_is_a_seed_or_integer_key_data():
    """On JAX a key is an integer seed or a PRNG key (typed, or integer key data): a float,
    a NaN or a list was cast to key data silently (NumPy and PyTorch refused them)."""
    x = jnp.zeros((2, 3))
    for key in (1.5, float("nan"), [1, 2], jnp.asarray([0.5, 1.0])):
        with pytest.raises(TypeError, match="JAX PRNG key"):
            ds.EulerAncestral().init(4, x, key)
    import jax

    for key in (3, jax.random.PRNGKey(3), jax.random.key(3)):
        ds.EulerAncestral().init(4, x, key)


def test_every_class_refuses_a_complex_or_integer_prediction():
    # found by review: ScoreSdeVe's corrector cast a complex prediction to real (NumPy's
    # ComplexWarning) before the engine's dtype check could refuse it
    from diffsched.methods import CLASSES

    x = np.random.default_rng(0).standard_normal((2, 3))
    checked = 0
    for cls in CLASSES:
        sched = cls()
        try:
            state, _ = sched.init(4, x) if sched.deterministic else sched.init(4, x, key=0)
            sched.step(state, x, np.zeros((2, 3)))  # a prediction of the sample's shape
        except (TypeError, ValueError):  # a class that needs options or another shape
            continue
        for bad in (np.zeros((2, 3), complex), np.zeros((2, 3), np.int64)):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no cast with a warning first
                with pytest.raises(TypeError, match="floating-point prediction"):
                    sched.step(state, x, bad)
        checked += 1
    assert checked > 40, checked
