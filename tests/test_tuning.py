"""Tuned grids (diffsched.tuning) on the exact Gaussian-mixture model: the search lowers
the error on its calibration set and on held-out noise, the grid it returns loads through
``init``, the reference trajectory is the exact ODE solution, any backend works, and
schedulers that cannot be tuned are refused before the model is called.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffsched as ds
from diffsched import cli
from diffsched.exact.reference import sigma_from_alpha_bar, solve_pf_ode
from diffsched.tuning import (
    Grid,
    TuneResult,
    _final_sample,
    reference_trajectory,
    relative_error,
    search,
    search_coefficients,
    tune,
)

SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}
STEPS = 6
CALIBRATION = cli.make_noise("gmm", 64, 1)
HELD_OUT = cli.make_noise("gmm", 64, 2)

CASES = {  # name -> (scheduler, the grid's init keyword)
    "DPMSolverMultistep": (ds.DPMSolverMultistep(**SD), "timesteps"),
    "UniPC": (ds.UniPC(**SD), "timesteps"),
    "VariableIPNDM-karras": (ds.VariableIPNDM(**SD, use_karras_sigmas=True), "sigmas"),
    "Euler": (ds.Euler(**SD), "sigmas"),
}


def training_sigmas(sched: ds.Scheduler) -> np.ndarray:
    acp = sched.alphas_cumprod
    return np.sqrt((1 - acp) / acp)


def error_vs_exact(sched: ds.Scheduler, noise: np.ndarray, grid: dict) -> float:
    """The final sample's distance to the exact probability-flow ODE solution."""
    model = cli.exact_model(sched, "gmm")
    start = noise * sched.init_noise_scale(None, **grid)
    out = np.asarray(ds.sample(model, sched, noise, None, **grid))
    exact = solve_pf_ode(model.denoiser, start, *sched.noise_levels(None, **grid))
    return float(np.linalg.norm(out - exact) / np.linalg.norm(exact))


@pytest.fixture(scope="module", params=list(CASES))
def tuned(request) -> tuple[ds.Scheduler, str, TuneResult]:
    sched, mode = CASES[request.param]
    return sched, mode, search(cli.exact_model(sched, "gmm"), sched, STEPS, CALIBRATION)


# -- the search ----------------------------------------------------------------------------


def test_lowers_the_calibration_error(tuned):
    # measured start -> tuned: DPM-Solver++ 0.104 -> 0.023, UniPC 0.100 -> 0.018,
    # VariableIPNDM (Karras) 0.172 -> 0.051, Euler 0.197 -> 0.149
    sched, _, result = tuned
    assert result.error <= result.start_error
    assert result.error < 0.9 * result.start_error
    assert result.model_calls > 0 and result.seconds > 0
    # the errors it reports are the distances to the exact solution, not to itself
    assert result.error == pytest.approx(
        error_vs_exact(sched, CALIBRATION, result.init_options), rel=1e-3
    )
    assert result.start_error == pytest.approx(
        error_vs_exact(sched, CALIBRATION, result.start_options), rel=1e-3
    )


def test_grid_is_decreasing_from_the_top_and_loads_through_init(tuned):
    sched, mode, result = tuned
    for grid in (result.init_options, result.start_options):
        assert list(grid) == [mode]
        levels = np.asarray(grid[mode], dtype=np.float64)
        assert np.all(np.diff(levels) < 0), levels
        top = training_sigmas(sched)[-1]
        if mode == "timesteps":
            assert len(levels) == STEPS
            assert all(isinstance(t, int) for t in grid[mode])
            assert levels[0] == sched.num_train_steps - 1 and levels[-1] >= 0
        else:
            assert len(levels) == STEPS + 1 and grid[mode][-1] == 0.0
            assert levels[0] == pytest.approx(top, rel=1e-12)
            assert levels[-2] >= training_sigmas(sched)[0] * (1 - 1e-12)
        _, timesteps = sched.init(None, CALIBRATION, **grid)
        assert len(timesteps) == STEPS
        alpha_bar_start, alpha_bar_end = sched.noise_levels(None, **grid)
        assert sigma_from_alpha_bar(alpha_bar_start) == pytest.approx(top, rel=1e-6)
        assert alpha_bar_end == 1.0


def test_tuned_grid_generalizes_to_held_out_noise(tuned):
    # measured tuned vs untuned on held-out noise: DPM-Solver++ 0.080 vs 0.109, UniPC 0.086
    # vs 0.101, VariableIPNDM 0.085 vs 0.193, Euler 0.179 vs 0.205
    sched, _, result = tuned
    tuned_error = error_vs_exact(sched, HELD_OUT, result.init_options)
    untuned_error = error_vs_exact(sched, HELD_OUT, result.start_options)
    assert tuned_error < 0.95 * untuned_error


def test_tune_returns_the_searched_grid():
    sched = ds.DPMSolverMultistep(**SD)
    model = cli.exact_model(sched, "gmm")
    options = dict(candidates=30, substeps=2, max_evaluations=10)
    grid = tune(model, sched, 3, CALIBRATION[:16], **options)
    assert grid == search(model, sched, 3, CALIBRATION[:16], **options).init_options


# -- the reference -------------------------------------------------------------------------


def test_final_sample_takes_the_order_each_trajectory_supports():
    # x̂_0(σ) = x(0) + a σ² exp(σ / 0.05), smooth in σ: the multistep step (here x(0) +
    # 1e-9) agrees with the extrapolations of x̂_0 to σ = 0 and is taken; where x̂_0
    # also wiggles in σ (a trained network) the extrapolations stop converging and the
    # far-off step (x(0) + 0.1) is refused (measured: 1.0e-9 and 5.2e-3; the jump to
    # x̂_0 alone 3.0e-3 and 2.5e-3).
    rng = np.random.default_rng(0)
    sig = np.exp(np.linspace(np.log(14.6), np.log(0.0292), 100))
    x0, a = rng.standard_normal((2, 2, 16))
    wiggle = np.array([0.0, 1e-3])[:, None]
    denoised = [x0 + a * s**2 * np.exp(s / 0.05) + wiggle * np.sin(s / 3e-3) for s in sig]
    stepped = x0 + np.array([1e-9, 0.1])[:, None]
    error = np.abs(_final_sample(sig, denoised, stepped) - x0).max(axis=1)
    assert error[0] < 1e-7  # the extrapolations alone miss by more
    assert error[1] < 2e-2


@pytest.mark.parametrize("name", ["DPMSolverMultistep", "VariableIPNDM-karras"])
def test_reference_trajectory_is_the_exact_solution(name):
    # measured relative errors: 1.7e-6 (timesteps mode), 1.0e-6 (σ mode)
    sched, _ = CASES[name]
    model = cli.exact_model(sched, "gmm")
    grid = Grid.of(sched, STEPS)
    init_options = grid.init_options(grid.start)
    start = CALIBRATION * sched.init_noise_scale(None, **init_options)
    ref = reference_trajectory(model, sched, start, grid)
    alpha_bar_start, alpha_bar_end = sched.noise_levels(None, **init_options)
    exact = solve_pf_ode(model.denoiser, start, alpha_bar_start, alpha_bar_end)
    assert np.linalg.norm(ref.final - exact) / np.linalg.norm(exact) < 1e-4
    assert np.all(np.diff(ref.sigmas) < 0)
    assert len(ref.native) == len(ref.denoised) == len(ref.sigmas) == len(ref.levels)
    assert ref.sigmas[0] == pytest.approx(training_sigmas(sched)[-1], rel=1e-12)
    # on the way down: x = x_0 + σ ε at the candidate levels
    for k in (len(ref.sigmas) // 3, len(ref.sigmas) - 1):
        sigma = ref.sigmas[k]
        vp = solve_pf_ode(model.denoiser, start, alpha_bar_start, 1 / (1 + sigma**2))
        native = vp * np.sqrt(1 + sigma**2)
        assert np.linalg.norm(ref.native[k] - native) / np.linalg.norm(native) < 1e-4


# -- backends and the count of model calls ---------------------------------------------------


class Counting:
    def __init__(self, model):
        self.model, self.calls, self.kinds = model, 0, set()

    def __call__(self, sample, t):
        self.calls += 1
        self.kinds.add((type(sample).__name__, str(sample.dtype)))
        return self.model(sample, t)


@pytest.mark.parametrize("name", ["DPMSolverMultistep", "VariableIPNDM-karras"])
def test_torch_and_numpy_give_the_same_grid_and_count_calls(name):
    sched, _ = CASES[name]
    noise = CALIBRATION[:16]
    results = {}
    for backend, x in (("numpy", noise), ("torch", torch.from_numpy(noise))):
        model = Counting(cli.exact_model(sched, "gmm"))
        result = search(model, sched, 3, x, max_evaluations=10)
        assert result.model_calls > 0 and result.model_calls == model.calls
        expected = ("ndarray", "float64") if backend == "numpy" else ("Tensor", "torch.float64")
        assert model.kinds == {expected}
        assert result.error < result.start_error
        results[backend] = result
    assert results["torch"].init_options == results["numpy"].init_options
    assert results["torch"].error == pytest.approx(results["numpy"].error, rel=1e-9)
    assert results["torch"].model_calls == results["numpy"].model_calls


# -- what cannot be tuned ------------------------------------------------------------------


def never_called(sample, t):
    raise AssertionError("the model must not be called")


@pytest.mark.parametrize(
    "sched", [ds.DDPM(**SD), ds.EulerAncestral(**SD), ds.Euler(**SD, s_churn=1.0)]
)
def test_stochastic_scheduler_is_refused(sched):
    with pytest.raises(ValueError, match="deterministic"):
        search(never_called, sched, STEPS, CALIBRATION)


@pytest.mark.parametrize("sched", [ds.DDIM(**SD), ds.LMS(**SD)])
def test_scheduler_without_custom_grid_is_refused(sched):
    with pytest.raises(TypeError, match="custom grid"):
        tune(never_called, sched, STEPS, CALIBRATION)


@pytest.mark.parametrize("sched", [ds.DEIS(), ds.PNDM()])
def test_deis_and_pndm_are_refused_for_their_grid(sched):
    with pytest.raises(TypeError, match="custom grid"):
        tune(never_called, sched, STEPS, CALIBRATION)


@pytest.mark.parametrize("sched", [ds.DDIM(**SD), ds.PNDM(**SD)])
def test_a_scheduler_without_custom_grid_has_a_base_tuned_in_its_place(sched):
    # its loop cannot start at the reference's top level: tune="coefficients" / "both" tune
    # the table of one of its bases (another method for the same model) in its place, and
    # with no base to take it the refusal says so
    model = cli.exact_model(sched, "gmm")
    for mode in ("coefficients", "both"):
        tuned = tune(model, sched, STEPS, CALIBRATION, tune=mode, max_evaluations=20)
        assert isinstance(tuned, ds.Tuned) and tuned.tuned_steps == STEPS
        base = tuned.base_scheduler
        assert type(base) in (ds.UniPC, ds.DPMSolverMultistep, ds.VariableIPNDM)
        assert np.array_equal(base.alphas_cumprod, sched.alphas_cumprod)
        assert base.prediction_type == sched.prediction_type
        # the own loop's held-out error against the tuned table's, each to its exact solution
        assert (
            cli.run(tuned, "gmm", STEPS, HELD_OUT).error
            < cli.run(sched, "gmm", STEPS, HELD_OUT).error
        )
    with pytest.raises(TypeError, match=r"custom grid.*in its place, with bases='auto'"):
        tune(never_called, sched, STEPS, CALIBRATION, tune="both", bases=None)


@pytest.mark.parametrize(
    "sched",
    [
        ds.DPMSolverMultistep(**SD, final_sigmas_type="sigma_min"),
        ds.UniPC(**SD, final_sigmas_type="sigma_min"),
        ds.Euler(**SD, final_sigmas_type="sigma_min"),
    ],
)
def test_loop_not_ending_at_zero_is_refused(sched):
    with pytest.raises(ValueError, match="σ = 0"):
        search(never_called, sched, STEPS, CALIBRATION)


def test_end_lowest_fits_the_discrete_limit():
    # end="lowest": the reference's final samples are the jump to x̂_0 at the lowest trained
    # level from the ODE's solution there (the discrete limit), and the tuned table comes
    # closer to that limit than the untuned one
    from diffsched.tuning import search_coefficients

    sched = ds.UniPC(**SD)
    model = cli.exact_model(sched, "gmm")
    grid = Grid.of(sched, STEPS)
    start = CALIBRATION * sched.init_noise_scale(None, **grid.init_options(grid.start))
    ref = reference_trajectory(model, sched, start, grid, end="lowest")
    lowest = float(sched.alphas_cumprod[0])
    x = solve_pf_ode(model.denoiser, start, float(sched.alphas_cumprod[-1]), lowest)
    limit = model.denoiser.posterior_mean(x, lowest)
    assert relative_error(ref.final, limit) < 1e-5  # measured 5.0e-7 (the solves' accuracy)
    zero = reference_trajectory(model, sched, start, grid)
    assert relative_error(zero.final, limit) > 4e-4  # the two ends differ (measured 1.4e-3)
    tuned = search_coefficients(model, sched, STEPS, CALIBRATION, end="lowest",
                                reference=ref).scheduler  # fmt: skip

    def to_limit(s):
        start = HELD_OUT * s.init_noise_scale(STEPS)
        a0 = s.noise_levels(STEPS)[0]
        x = solve_pf_ode(model.denoiser, start, a0, lowest)
        limit = model.denoiser.posterior_mean(x, lowest)
        return relative_error(np.asarray(ds.sample(model, s, HELD_OUT, STEPS)), limit)

    assert to_limit(tuned) < 0.75 * to_limit(sched)  # measured 0.055 against 0.102
    with pytest.raises(ValueError, match="end must be one of"):
        tune(never_called, sched, STEPS, CALIBRATION, end="one")
    with pytest.raises(ValueError, match="end='lowest' is for discrete-time models"):
        tune(never_called, ds.FlowMatchEuler(), STEPS, CALIBRATION, end="lowest")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"calibration_noise": CALIBRATION.tolist()}, TypeError, "must be an array"),
        ({"calibration_noise": CALIBRATION * np.nan}, ValueError, "must be finite"),
        ({"scheduler": "unipc"}, TypeError, "a diffsched scheduler, got str"),
        ({"max_evaluations": -1}, ValueError, r"max_evaluations must be an integer in \[0, "),
        ({"substeps": 0}, ValueError, r"substeps must be an integer in \[1, "),
        ({"tolerance": 0.0}, ValueError, "tolerance must be a positive number"),
        ({"tune": "both", "calibration_noise": CALIBRATION[:3]}, ValueError, "at least 4 samples"),
        # the fit's options are checked before the reference solve (they were checked
        # after it, an unknown one only by the fit's own TypeError; ridges not at all)
        ({"tune": "both", "histroy": 3}, TypeError, "unknown tuning option histroy"),
        ({"tune": "coefficients", "ridges": []}, ValueError, "ridges must be 1 to 32"),
        ({"tune": "both", "ridges": [float("nan")]}, ValueError, "ridges must be 1 to 32"),
        ({"tune": "both", "iterations": 10**12}, ValueError, r"iterations .* in \[0, 100\]"),
        ({"tune": "both", "holdout": "x"}, ValueError, "holdout must be a number"),
        ({"tune": "both", "seed": -1}, ValueError, "seed must be an integer >= 0"),
        ({"tune": "both", "bases": 42}, TypeError, "bases must be 'auto', a list"),
        # sizes that cost unbounded memory or time (a 10^12-level reference was allocated)
        ({"candidates": 10**12}, ValueError, r"candidates .* in \[num_steps=6, 2000\]"),
        ({"tune": "both", "substeps": 10**9}, ValueError, r"substeps .* in \[1, 100\]"),
        ({"max_evaluations": 10**9}, ValueError, r"max_evaluations .* in \[0, 100000\]"),
        ({"num_steps": 10**9}, ValueError, r"num_steps: expected an integer in \[1, 2000\]"),
    ],
)
def test_bad_input_is_refused_before_any_model_call(kwargs, error, match):
    args = {"model": never_called, "scheduler": ds.UniPC(**SD), "num_steps": STEPS,
            "calibration_noise": CALIBRATION} | kwargs  # fmt: skip
    with pytest.raises(error, match=match):
        tune(**args)


@pytest.mark.parametrize("sched", [ds.UniPC(**SD), ds.FlowMatchEuler(shift=3.0)])
def test_a_model_with_non_finite_output_is_named(sched):
    with pytest.raises(ValueError, match="model's output is not finite"):
        tune(lambda x, t: x * np.nan, sched, STEPS, CALIBRATION)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="rectified-flow"):
        search(
            never_called,
            ds.DEIS(use_flow_sigmas=True, prediction_type="flow"),  # no sigmas= to take
            STEPS,
            CALIBRATION,
        )
    with pytest.raises(ValueError, match="candidates"):
        search(never_called, ds.Euler(**SD), STEPS, CALIBRATION, candidates=STEPS - 1)


# -- guards against overfitting --------------------------------------------------------------


def test_a_fall_carried_by_a_few_samples_does_not_count():
    """Score.beats: the own grid is left only for a fall of two standard errors of the
    paired per-sample differences (an empirical model's samples flip between training
    images: fixing one calibration sample's flip does not carry over to other noise)."""
    from diffsched.tuning import Score

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((64, 8))
    near = ref + 0.01 * rng.standard_normal(ref.shape)
    flipped = near.copy()
    flipped[3] = -ref[3]  # one sample on another mode
    spread = ref + 0.005 * rng.standard_normal(ref.shape)  # every sample a little better
    one_fixed = Score.of(near, ref)
    assert one_fixed.error < 0.2 * Score.of(flipped, ref).error  # a far lower error ...
    assert not one_fixed.beats(Score.of(flipped, ref))  # ... carried by one sample
    assert Score.of(spread, ref).beats(Score.of(near, ref))
    assert not Score.of(near, ref).beats(Score.of(spread, ref))
    assert np.mean(Score.of(near, ref).per_sample) == pytest.approx(one_fixed.error**2)


def test_candidate_bases_are_other_methods_for_the_same_model():
    from diffsched.tuning import _bases, candidate_bases

    sched = ds.UniPC(**SD, solver_order=2)
    found = candidate_bases(sched)
    names = {(type(b).__name__, b.solver_order) for b in found}
    assert names == {("UniPC", 3), ("DPMSolverMultistep", 3), ("DPMSolverMultistep", 2),
                     ("VariableIPNDM", 4)}  # fmt: skip
    for b in found:
        assert np.array_equal(b.alphas_cumprod, sched.alphas_cumprod)
        assert b.prediction_type == sched.prediction_type
    assert _bases(sched, None, 6) == []
    with pytest.raises(ValueError, match="bases must be 'auto'"):
        _bases(sched, "all", 6)
    with pytest.raises(ValueError, match="same model"):
        _bases(sched, [ds.DPMSolverMultistep(**{**SD, "beta_end": 0.02})], 6)
    with pytest.raises(TypeError, match="bases must hold schedulers"):
        _bases(sched, ["unipc"], 6)


def test_a_weak_gain_is_confirmed_on_the_negated_noise(capsys):
    """tuning._confirmation: a result whose paired fall from the untuned one is CONFIRMED
    standard errors or more on the calibration batch needs no other noise; a weaker one
    is run on the negated batch, whose reference is then solved (and only then), and kept
    unless it does worse there by REFUTED standard errors (then the fallbacks, in order)."""
    from diffsched.tuning import CONFIRMED, REFUTED, _confirmation

    rng = np.random.default_rng(0)
    noise = rng.standard_normal((64, 8))
    solved = []

    def negated_reference():  # the truth is the noise itself
        solved.append(True)
        return -noise

    def off(by, exact=0):  # the first ``exact`` samples exact, the others off by ``by``
        return lambda x: np.where(np.arange(64)[:, None] < exact, x, x + by)

    untuned, everywhere, few = off(0.1), off(0.01), off(0.1, exact=3)
    assert _confirmation(noise, noise, everywhere, untuned, negated_reference) is None
    assert not solved
    check = _confirmation(noise, noise, few, untuned, negated_reference, (("w", off(0.2)),))
    assert solved == [True]
    assert 0 < check["significance"] < CONFIRMED  # 3 of 64 samples better
    assert check["tuned"] == pytest.approx(relative_error(few(-noise), -noise))
    assert check["base"] == pytest.approx(relative_error(untuned(-noise), -noise))
    assert check["kept"] == "tuned" and "w" not in check  # no fallback needed
    bad = off(0.3, exact=3)
    check = _confirmation(noise, noise, bad, untuned, negated_reference,
                          (("w", off(0.2)), ("e", everywhere)))  # fmt: skip
    assert check["tuned significance"] < -REFUTED and check["w significance"] < -REFUTED
    assert check["kept"] == "e" and check["e"] < check["base"]
    assert CONFIRMED > 3  # above the largest of a few hundred null z-scores
    cli._print_confirmation({**check, "kept": None})  # what diffsched tune says about it
    said = capsys.readouterr().out
    assert f"{check['significance']:.1f} standard errors" in said
    assert "refuted: the untuned one returned" in said


def test_a_gain_fitted_to_a_few_samples_is_not_kept():
    """The case that found the confirmation: the digits model, UniPC at 10 steps, 64
    calibration samples. The refined grid fell from 0.030 to 2e-8 on the calibration batch
    (2.3 standard errors: a few samples moved onto their training images) and did 0.100
    against the own grid's 0.0625 on 1024 held-out noises, the tuned table 0.077. On the
    negated batch they do 0.153 and 0.114 against 0.048: the own grid is kept."""
    sched = ds.UniPC(**SD)
    model = cli.exact_model(sched, "digits")
    calibration = cli.make_noise("digits", 64, 105)
    found = search(model, sched, 10, calibration)
    assert found.confirmation["tuned"] > 1.5 * found.confirmation["base"]  # 0.153, 0.048
    assert found.confirmation["kept"] is None
    assert found.init_options == found.start_options
    assert found.error == found.start_error
    table = search_coefficients(model, sched, 10, calibration)
    assert table.confirmation["tuned"] > 1.5 * table.confirmation["base"]  # 0.114, 0.048
    assert table.confirmation["kept"] is None
    assert table.scheduler.weights is None and table.scheduler.base_scheduler == sched
    own = found.start_options["timesteps"]
    assert list(table.scheduler.grid_timesteps) == pytest.approx(own)


def test_a_table_whose_weights_do_not_carry_over_falls_back_to_its_grid():
    """tuning._confirmed_table: a tuned table that does worse than the untuned scheduler
    on the negated batch is replaced by its grid with the base's own weights where that
    does better there, else by the untuned scheduler."""
    from diffsched.tuning import _confirmed_table, solve_reference
    from diffsched.tuning_coefficients import _tuned

    sched = ds.UniPC(**SD)
    model = cli.exact_model(sched, "gmm")
    fitted = search_coefficients(model, sched, STEPS, CALIBRATION)
    table = fitted.scheduler
    assert table.weights is not None and table.grid_options  # grid and weights tuned
    broken = _tuned(table.base_scheduler, STEPS, table.grid_options,
                    -20 * table.weight_table())  # fmt: skip
    grid = Grid.of(sched, STEPS)
    own = grid.init_options(grid.start)
    ref = solve_reference(model, sched, STEPS, CALIBRATION).final
    solve = {"candidates": 100, "substeps": 4, "end": "zero", "mu": None}
    checked = _confirmed_table(fitted._replace(scheduler=broken), model, sched, STEPS,
                               CALIBRATION, ref, own, solve)  # fmt: skip
    check = checked.confirmation
    assert check["tuned"] > check["base"] > check["grid alone"]
    assert check["kept"] == "grid alone"
    assert checked.scheduler == _tuned(table.base_scheduler, STEPS, table.grid_options, None)
    assert checked.error == fitted.start_error  # the grid alone's calibration error
    # a table on the own grid has no other fallback than the untuned scheduler
    own_broken = _tuned(sched, STEPS, own, -20 * table.weight_table())
    checked = _confirmed_table(fitted._replace(scheduler=own_broken), model, sched, STEPS,
                               CALIBRATION, ref, own, solve)  # fmt: skip
    assert "grid alone" not in checked.confirmation and checked.confirmation["kept"] is None
    assert checked.scheduler == _tuned(sched, STEPS, own, None)
    assert checked.error == pytest.approx(checked.start_error)


@pytest.mark.parametrize("tune_what", ["grid", "coefficients", "both"])
def test_an_inverse_scheduler_is_refused_with_the_reason(tune_what):
    for sched in (ds.DDIMInverse(**SD), ds.DPMSolverMultistepInverse(**SD)):
        with pytest.raises(TypeError, match="inversion"):
            tune(never_called, sched, STEPS, CALIBRATION, tune=tune_what)


@pytest.mark.parametrize("mode", ["grid", "both"])
def test_a_one_step_flow_loop_tunes(mode):
    """One step of a flow scheduler has one level, the first: the tuner keeps it (it raised
    NumPy's "zero-dimensional arrays cannot be concatenated" building a start; found by
    random command lines)."""
    sched = ds.FlowMatchEuler(shift=3.0)
    model = cli.exact_model(sched, "gmm")
    result = tune(model, sched, 1, CALIBRATION[:8], tune=mode, max_evaluations=10)
    if mode == "grid":
        assert len(result["sigmas"]) == 1
    else:
        assert result.tuned_steps == 1
