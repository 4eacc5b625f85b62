"""Tuned coefficients (diffsched.tuning_coefficients, ds.Tuned) on the exact Gaussian-mixture
model: the tuned table is never worse than its base on held-out noise, its corrections keep
the moment (order) conditions, the engine runs it on every backend as the fit's own loop
did, and it saves and loads as a file that refuses another config.
"""

from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import diffsched as ds
from diffsched import cli
from diffsched.core import ops
from diffsched.exact.reference import solve_pf_ode
from diffsched.tuning import Grid, reference_trajectory, relative_error, search_coefficients
from diffsched.tuning_coefficients import fit_coefficients, null_basis

jax.config.update("jax_enable_x64", True)

SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}
CALIBRATION = cli.make_noise("gmm", 64, 1)
HELD_OUT = cli.make_noise("gmm", 128, 2)
CASES = {  # name -> (base, steps, grid tuned first, the moments kept (default 1))
    "DPMSolverMultistep-6-coefficients": (ds.DPMSolverMultistep(**SD), 6, False, 1),
    "UniPC-8-both": (ds.UniPC(**SD), 8, True, 2),
    "VariableIPNDM-6-coefficients": (ds.VariableIPNDM(**SD), 6, False, 1),
}


def held_out_error(sched, steps: int) -> float:
    """The final sample's distance to the exact probability-flow ODE solution."""
    model = cli.exact_model(sched, "gmm")
    start = HELD_OUT * sched.init_noise_scale(steps)
    out = np.asarray(ds.sample(model, sched, HELD_OUT, steps))
    exact = solve_pf_ode(model.denoiser, start, *sched.noise_levels(steps))
    return float(np.linalg.norm(out - exact) / np.linalg.norm(exact))


@pytest.fixture(scope="module", params=list(CASES))
def tuned(request):
    base, steps, grid, moments = CASES[request.param]
    model = cli.exact_model(base, "gmm")
    result = search_coefficients(model, base, steps, CALIBRATION, grid=grid, moments=moments)
    return base, steps, result, moments


def test_never_worse_than_the_base_on_held_out_noise(tuned):
    # measured (held-out base -> tuned; with times=True): DPM-Solver++ 6 steps 0.108 ->
    # 0.091 (0.090; coefficients only), UniPC 8 steps 0.077 -> 0.039 (0.044; grid and
    # coefficients), VariableIPNDM 6 steps 0.145 -> 0.096 (0.079)
    base, steps, result, _ = tuned
    before, after = held_out_error(base, steps), held_out_error(result.scheduler, steps)
    assert after <= before, (before, after)
    assert result.error <= result.start_error
    assert result.scheduler.weights is not None  # it did change the table
    assert result.scheduler.model_timesteps is None  # at the base's times (times=False)
    assert result.model_calls > 0 and result.seconds > 0


def test_the_engine_runs_the_fitted_table(tuned):
    # the error the fit reports is that of ds.sample with the Tuned class, on the
    # calibration noise, against the reference (measured agreement ~1e-15)
    base, steps, result, _ = tuned
    model = cli.exact_model(base, "gmm")
    grid = Grid.of(base, steps)
    start = CALIBRATION * base.init_noise_scale(None, **grid.init_options(grid.start))
    ref = reference_trajectory(model, base, start, grid)
    out = np.asarray(ds.sample(model, result.scheduler, CALIBRATION, steps))
    assert relative_error(out, ref.final) == pytest.approx(result.error, rel=1e-9)


def test_corrections_keep_the_moment_conditions(tuned):
    _, steps, result, moments = tuned
    sched = result.scheduler
    base = sched.base_scheduler  # the base the tuner picked
    w = sched.weight_table()
    tab = base.tableau(steps, **sched.grid_options)
    log_train = np.log(np.sqrt((1 - base.alphas_cumprod) / base.alphas_cumprod))
    lam = -np.interp(np.asarray(tab.timesteps, float), np.arange(len(log_train)), log_train)
    for n in range(len(w)):
        lags = np.arange(min(n, w.shape[1] - 1) + 1)
        d = w[n, lags]
        assert np.all(w[n, len(lags) :] == 0)
        assert abs(d.sum()) < 1e-12 * max(1.0, np.abs(d).max())  # zeroth moment
        if moments == 2 and n < len(w) - 1:  # first moment (the last call: zeroth only)
            first = d @ (lam[n - lags] - lam[n])
            assert abs(first) < 1e-12 * max(1.0, np.abs(d).max() * np.ptp(lam))
            # exact on an x̂_0 trajectory linear in λ: the correction adds nothing
            traj = 0.3 + 1.7 * lam[n - lags]
            assert abs(d @ traj) < 1e-10 * max(1.0, np.abs(d).max() * np.abs(traj).max())


def test_leave_one_out_equals_refitting_without_each_sample():
    """The ridge's leave-one-out residuals (the block Woodbury identity) are those of the
    fit redone without each sample, on a linear problem where both are exact."""
    from diffsched.tuning_coefficients import leave_one_out

    rng = np.random.default_rng(0)
    b, d, p, mu = 7, 3, 4, 0.3
    jac, y = rng.standard_normal((b, d, p)), rng.standard_normal((b, d))
    flat = jac.reshape(b * d, p)
    a = flat.T @ flat + mu * np.eye(p)
    theta = np.linalg.solve(a, flat.T @ y.ravel())
    start = rng.standard_normal(p)  # any point: the problem is linear
    resid = (flat @ start).reshape(b, d) - y
    explicit = []
    for i in range(b):
        keep = np.arange(b) != i
        rest = jac[keep].reshape(-1, p)
        th = np.linalg.solve(rest.T @ rest + mu * np.eye(p), rest.T @ y[keep].ravel())
        explicit.append(np.sum((jac[i] @ th - y[i]) ** 2))
    fitted, loo = leave_one_out(jac, resid, start, mu)
    np.testing.assert_allclose(fitted, theta, rtol=1e-10)
    np.testing.assert_allclose(loo, explicit, rtol=1e-10)
    in_sample = np.sum(((flat @ theta).reshape(b, d) - y) ** 2, axis=1)
    assert np.all(loo >= in_sample)


def test_select_split_and_loo_both_fit_and_refuse_others():
    """``select="loo"`` (the default: the whole batch fitted, the ridge chosen by
    leave-one-out) and ``"split"`` (a held-out quarter) each leave the base for a table
    with less calibration error; another value is refused."""
    base = ds.UniPC(**SD)
    model = cli.exact_model(base, "gmm")
    grid = Grid.of(base, 6)
    own = grid.init_options(grid.start)
    ref = reference_trajectory(model, base, CALIBRATION * base.init_noise_scale(None, **own), grid)
    for select in ("loo", "split"):
        result = fit_coefficients(model, base, 6, CALIBRATION, ref.final, own, select=select)
        assert result.scheduler.weights is not None, select
        assert result.error < 0.95 * result.start_error, (select, result)
        assert result.held_errors[result.ridge] < result.held_errors[np.inf]
    with pytest.raises(ValueError, match="select must be 'loo' or 'split'"):
        fit_coefficients(model, base, 6, CALIBRATION, ref.final, own, select="cv")


def test_null_basis_is_orthonormal_and_annihilates_the_moments():
    lams = np.array([2.0, 1.5, 0.7, 0.1])
    basis = null_basis(lams, 2)
    assert basis.shape == (4, 2)
    assert np.allclose(basis.T @ basis, np.eye(2), atol=1e-12)
    assert np.allclose(np.ones(4) @ basis, 0, atol=1e-12)
    assert np.allclose((lams - lams[0]) @ basis, 0, atol=1e-12)
    assert null_basis(lams[:2], 2).shape == (2, 0)  # two weights, two conditions: no freedom


def assert_backends_agree(model, sched, steps: int) -> np.ndarray:
    """The table's samples on NumPy, torch and JAX agree (measured: ~1e-16); NumPy's."""
    noise = HELD_OUT[:16]
    ref = np.asarray(ds.sample(model, sched, noise, steps))
    via_torch = ds.sample(model, sched, torch.from_numpy(noise), steps).numpy()
    via_jax = np.asarray(ds.sample(model, sched, jnp.asarray(noise), steps))
    assert np.max(np.abs(via_torch - ref)) < 1e-12 * np.max(np.abs(ref))
    assert np.max(np.abs(via_jax - ref)) < 1e-12 * np.max(np.abs(ref))
    return ref


def test_tuned_runs_the_same_on_numpy_torch_and_jax(tuned):
    base, steps, result, _ = tuned
    sched = result.scheduler
    model = cli.exact_model(base, "gmm")
    noise = HELD_OUT[:16]
    ref = assert_backends_agree(model, sched, steps)

    state, timesteps = sched.init(steps, jnp.asarray(noise))
    step = jax.jit(sched.step)
    x = jnp.asarray(noise) * sched.init_noise_scale(steps)
    for t in timesteps:
        state, x = step(state, x, model(x, t))
    assert np.max(np.abs(np.asarray(x) - ref)) < 1e-12 * np.max(np.abs(ref))


def test_save_load_round_trip_and_refusals(tuned, tmp_path):
    base, steps, result, _ = tuned
    sched = result.scheduler
    path = ds.save_tuned(tmp_path / "tuned.json", sched, model="gmm", calibration=64)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["about"] == {"model": "gmm", "calibration": 64}
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file is gone
    loaded = ds.load_tuned(path, base=base, num_steps=steps)
    assert loaded == sched
    noise = HELD_OUT[:8]
    model = cli.exact_model(base, "gmm")
    assert np.array_equal(
        np.asarray(ds.sample(model, loaded, noise, steps)),
        np.asarray(ds.sample(model, sched, noise, steps)),
    )
    with pytest.raises(ValueError, match="beta_end"):
        ds.load_tuned(path, base=base.replace(beta_end=0.02))
    with pytest.raises(ValueError, match="another model's schedule; differing: prediction_type"):
        ds.load_tuned(path, base=base.replace(prediction_type="angular_velocity"))
    # another method for the same model: the file brings its own base
    assert ds.load_tuned(path, base=ds.DDIM(**SD)) == sched
    with pytest.raises(ValueError, match=f"num_steps={steps + 1}"):
        ds.load_tuned(path, num_steps=steps + 1)
    with pytest.raises(ValueError, match=f"tuned for num_steps={steps}"):
        sched.init(steps + 1, noise)
    (tmp_path / "bad.json").write_text('{"sigmas": [1, 0]}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a tuned table"):
        ds.load_tuned(tmp_path / "bad.json")


@pytest.mark.parametrize("zero_snr", [False, True])
def test_full_covariance_mixture_v_prediction_and_zero_terminal_snr(zero_snr):
    # an exact mixture with full covariances in 16 dimensions, v-prediction, and on zero
    # terminal SNR (σ = inf at the first call, trailing spacing): tune="both" runs without a
    # numerical warning and lowers the held-out error (measured, seeds 0-2: 0.21-0.24 ->
    # 0.015-0.057)
    from diffsched.exact.models import GaussianMixture, model_for

    gmm = GaussianMixture(n_components=6, dim=16, seed=1, mean_scale=0.8, std_range=(0.1, 0.6),
                          covariance="full")  # fmt: skip
    kw = {**SD, "prediction_type": "angular_velocity"}
    if zero_snr:
        kw |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    sched = ds.UniPC(**kw)
    model = model_for(gmm, sched.alphas_cumprod, sched.prediction_type)
    rng = np.random.default_rng(11)
    cal, held = rng.standard_normal((64, 16)), rng.standard_normal((256, 16))
    steps = 6
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        tuned = ds.tune(model, sched, steps, cal, tune="both")

    def error(s):
        out = np.asarray(ds.sample(model, s, held, steps))
        exact, _ = cli.exact_solution(s, model, held * s.init_noise_scale(steps), steps)
        return float(np.linalg.norm(out - exact) / np.linalg.norm(exact))

    assert error(tuned) < 0.5 * error(sched)
    if zero_snr:  # the sample weights read each call's level, the first's α ≈ 0 (measured:
        with warnings.catch_warnings():  # 0.239 -> 0.056 with them)
            warnings.simplefilter("error", RuntimeWarning)
            sampled = ds.tune(model, sched, steps, cal, tune="both", samples=True)
        assert sampled.sample_weights is not None and error(sampled) < 0.5 * error(sched)


def test_a_tuned_table_runs_per_element_and_refuses_image_to_image(tuned):
    # per-element offsets of 0 run the same loop as the whole sample; strength= would start
    # the table midway, where its weights do not apply: refused, naming the base to use
    base, steps, result, _ = tuned
    sched = result.scheduler
    model = cli.exact_model(base, "gmm")
    noise = HELD_OUT[:3]

    def per_element_model(x, t):  # the exact model, one element's timestep at a time
        t = np.asarray(t).reshape(-1)
        return np.concatenate([model(x[i : i + 1], float(t[i])) for i in range(len(x))])

    out = ds.sample(per_element_model, sched, noise, steps, offsets=np.zeros((3, 1), np.int64))
    np.testing.assert_allclose(out, ds.sample(model, sched, noise, steps), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"strength=.*base_scheduler"):
        sched.init(steps, noise, strength=0.5)


def test_a_two_call_step_has_one_weight_row_per_model_call(tmp_path):
    # Heun calls the model twice a step (2N - 1 calls in N steps): the tuned table keeps a
    # row of weights per call, runs in the engine as in the fit's own loop, and saves and
    # loads; weights that do not fill whole rows are refused
    base = ds.Heun(**SD)
    steps = 3
    model = cli.exact_model(base, "gmm")
    result = search_coefficients(model, base, steps, CALIBRATION, grid=False, bases=None)
    tuned = result.scheduler
    calls = base.tableau(steps).num_calls
    assert calls == 2 * steps - 1
    assert tuned.weights is not None and tuned.weight_table().shape[0] == calls
    assert result.error < result.start_error
    grid = Grid.of(base, steps)
    start = CALIBRATION * base.init_noise_scale(None, **grid.init_options(grid.start))
    ref = reference_trajectory(model, base, start, grid)
    out = np.asarray(ds.sample(model, tuned, CALIBRATION, steps))
    assert relative_error(out, ref.final) == pytest.approx(result.error, rel=1e-9)
    loaded = ds.load_tuned(ds.save_tuned(tmp_path / "heun.json", tuned), num_steps=steps)
    assert loaded == tuned
    rows = tuned.weight_table()
    with pytest.raises(ValueError, match=rf"one row of equal length per model call .*{calls} rows"):
        ds.Tuned(base=base, tuned_steps=steps, weights=rows.ravel()[:-1].tolist())


def test_tuned_sizes_are_checked_before_any_table(monkeypatch):
    """No small input may cost unbounded time: tuned_steps is bounded, and weights too short
    for the number of steps are refused before the base's table is built."""
    with pytest.raises(ValueError, match=r"tuned_steps must lie in \[0, 200000\]"):
        ds.Tuned(tuned_steps=ops.MAX_CALLS + 1)

    def no_table(*args, **kwargs):
        raise AssertionError("the base's table was built")

    monkeypatch.setattr(ds.DPMSolverMultistep, "tableau", no_table)
    with pytest.raises(ValueError, match=r"at least 150000 rows\), got 3 numbers"):
        ds.Tuned(base=ds.DPMSolverMultistep(), tuned_steps=150_000, weights=[0.0] * 3)
    # found by the unseeded fuzzer: empty weights gave NumPy's "zero-size array" error
    with pytest.raises(ValueError, match=r"at least 1 rows\), got 0 numbers"):
        ds.Tuned(tuned_steps=1, weights=[])


def test_tune_dispatch_and_refusals():
    base = ds.DPMSolverMultistep(**SD)
    model = cli.exact_model(base, "gmm")
    grid = ds.tune(model, base, 4, CALIBRATION)  # the default is unchanged: init's options
    assert list(grid) == ["timesteps"]
    out = ds.tune(model, base, 4, CALIBRATION, tune="coefficients", iterations=1)
    assert isinstance(out, ds.Tuned) and out.tuned_steps == 4
    with pytest.raises(ValueError, match="tune must be"):
        ds.tune(model, base, 4, CALIBRATION, tune="weights")
    with pytest.raises(ValueError, match="thresholds"):
        fit_coefficients(model, base.replace(thresholding=True), 4, CALIBRATION,
                         np.zeros_like(CALIBRATION))  # fmt: skip
    with pytest.raises(ValueError, match="history"):
        fit_coefficients(model, base, 4, CALIBRATION, np.zeros_like(CALIBRATION), history=0)
    with pytest.raises(ValueError, match="weights"):
        ds.Tuned(weights=[0.1, 0.2])  # no tuned_steps
    with pytest.raises(ValueError, match="before the first call"):
        ds.Tuned(tuned_steps=2, weights=[0.0, 0.1, 0.0, 0.0])
    with pytest.raises(ValueError, match="within ±1e\\+06"):
        ds.Tuned(tuned_steps=2, weights=[0.0, 0.0, 1e300, 0.0])


# -- rectified flows -----------------------------------------------------------------------


def flow_model():
    from diffsched.exact.models import make_flow_model

    return make_flow_model("gmm", 1000, **cli.model_kwargs("gmm"))


def flow_held_out_error(sched, steps: int, grid: dict | None = None) -> float:
    from diffsched.exact.reference import solve_flow_ode

    grid = grid or {}
    model = flow_model()
    n = None if "sigmas" in grid and not isinstance(sched, ds.UniPC) else steps
    out = np.asarray(ds.sample(model, sched, HELD_OUT, n, **grid))
    sigma0 = float(sched.tableau(steps, **grid).start[1])
    exact = solve_flow_ode(model.denoiser, HELD_OUT, sigma0, 0.0)
    return float(np.linalg.norm(out - exact) / np.linalg.norm(exact))


@pytest.mark.parametrize(
    "sched",
    [
        ds.FlowMatchEuler(shift=3.0),
        ds.UniPC(use_flow_sigmas=True, prediction_type="flow", flow_shift=3.0),
    ],
    ids=["FlowMatchEuler", "UniPC-flow"],
)
def test_flow_grid_and_coefficients_lower_the_held_out_error(sched):
    # measured (held-out, 6 steps): FlowMatchEuler 0.260 -> grid 0.199 -> both 0.082 (0.080
    # with times=True); UniPC (flow σ's) 0.145 -> grid 0.089 -> both 0.082 (0.080)
    from diffsched.exact.reference import solve_flow_ode
    from diffsched.tuning import FlowGrid, flow_reference, search

    model = flow_model()
    grid = FlowGrid.of(sched, 6)
    ref = flow_reference(model, sched, CALIBRATION, grid.sigma0)  # measured 1.9e-5
    exact = solve_flow_ode(model.denoiser, CALIBRATION, grid.sigma0, 0.0)
    assert relative_error(ref, exact) < 1e-4
    before = flow_held_out_error(sched, 6)
    found = search(model, sched, 6, CALIBRATION)
    tuned_grid = flow_held_out_error(sched, 6, found.init_options)
    assert tuned_grid < 0.9 * before, (before, tuned_grid)
    both = search_coefficients(model, sched, 6, CALIBRATION).scheduler
    assert flow_held_out_error(both, 6) <= tuned_grid * 1.05, (tuned_grid, both)


@pytest.mark.parametrize(
    ("sched", "mu"),
    [
        (ds.FlowMatchEuler(use_dynamic_shifting=True), 1.5),
        (ds.FlowMatchEuler(use_dynamic_shifting=True, time_shift_type="linear"), 2.5),
    ],
    ids=["exponential", "linear"],
)
def test_dynamic_shift_is_tuned_for_its_mu(sched, mu, tmp_path):
    """A flow scheduler with ``use_dynamic_shifting=True`` is tuned for one μ (one
    resolution): the grid's ``init_options`` and the tuned table carry it, the table runs
    without it, and a file saved with it loads back to the same samples."""
    # measured (held-out, 6 steps): exponential μ = 1.5: 0.329 -> grid 0.199 -> both 0.074
    # (0.078 with times=True); linear μ = 2.5: 0.248 -> grid 0.200 -> both 0.083 (0.084)
    from diffsched.tuning import search

    model = flow_model()
    before = flow_held_out_error(sched, 6, {"mu": mu})
    found = search(model, sched, 6, CALIBRATION, mu=mu)
    assert found.init_options["mu"] == mu and len(found.init_options["sigmas"]) == 6
    tuned_grid = flow_held_out_error(sched, 6, found.init_options)
    assert tuned_grid < 0.9 * before, (before, tuned_grid)
    both = search_coefficients(model, sched, 6, CALIBRATION, mu=mu).scheduler
    assert both.grid_mu == mu and both.weights is not None
    after = flow_held_out_error(both, 6)
    assert after < 0.5 * before, (before, after)
    path = ds.save_tuned(tmp_path / "t.json", both)
    again = ds.load_tuned(path, base=sched, num_steps=6)
    assert again == both
    np.testing.assert_array_equal(np.asarray(ds.sample(model, again, HELD_OUT, 6)),
                                  np.asarray(ds.sample(model, both, HELD_OUT, 6)))  # fmt: skip
    with pytest.raises(ValueError, match="init got"):
        both.init(6, HELD_OUT, mu=mu)


def test_dynamic_shift_refusals():
    from diffsched.tuning import search

    model = flow_model()
    dynamic = ds.FlowMatchEuler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="needs mu="):
        search(model, dynamic, 6, CALIBRATION)
    with pytest.raises(ValueError, match="only with use_dynamic_shifting=True"):
        search(model, ds.FlowMatchEuler(shift=3.0), 6, CALIBRATION, mu=1.0)
    with pytest.raises(ValueError, match="mu must be finite"):
        search(model, dynamic, 6, CALIBRATION, mu=float("nan"))
    with pytest.raises(ValueError, match="no flow levels"):
        search(cli.exact_model(ds.UniPC(**SD), "gmm"), ds.UniPC(**SD), 6, CALIBRATION, mu=1.0)
    with pytest.raises(ValueError, match="needs a base with use_dynamic_shifting=True"):
        ds.Tuned(base=ds.FlowMatchEuler(), tuned_steps=2, grid_sigmas=[1.0, 0.5], grid_mu=1.0)
    with pytest.raises(ValueError, match="grid_mu needs grid_sigmas"):
        ds.Tuned(base=dynamic, tuned_steps=2, grid_mu=1.0)


def test_a_flow_scheduler_tunes_on_float32_torch_noise():
    # the flow reference passes each level's timestep as a 0-d array of the noise's dtype
    # (a float64 -> float32 cast torch refused on a 0-d NumPy array)
    model = flow_model()
    sched = ds.FlowMatchEuler(shift=3.0)
    noise = torch.from_numpy(CALIBRATION[:16]).float()
    grid = ds.tune(model, sched, 4, noise, max_evaluations=5)
    tuned = ds.tune(model, sched, 4, noise, tune="both", max_evaluations=5)
    for s, n, kw in ((sched, None, grid), (tuned, 4, {})):
        out = ds.sample(model, s, noise, n, **kw)
        assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())


def test_flow_bases_compete_for_a_flow_scheduler():
    """With ``bases="auto"`` a flow scheduler's table may take UniPC on flow σ's of the
    same shift as its base (candidate_flow_bases), where its grids do clearly better: for
    FlowMatchEuler they do, and the table does as well as the Euler-based one or better."""
    # measured (6 calls, held-out): FlowMatchEuler 0.260; tuned, Euler base 0.111 (0.094
    # with times=True); tuned, UniPC (order 3) base 0.082 (0.080) (1024 held-out noises at
    # 5 and 10 calls, three draws:
    # 0.134 -> 0.059 and 0.074 -> 0.037 before the ridge was set per parameter)
    from diffsched.tuning import candidate_flow_bases

    model = flow_model()
    sched = ds.FlowMatchEuler(shift=3.0)
    auto = search_coefficients(model, sched, 6, CALIBRATION).scheduler
    alone = search_coefficients(model, sched, 6, CALIBRATION, bases=None).scheduler
    base = auto.base_scheduler
    assert type(base) is ds.UniPC and base.use_flow_sigmas and base.flow_shift == 3.0
    assert type(alone.base_scheduler) is ds.FlowMatchEuler
    before = flow_held_out_error(sched, 6)
    assert flow_held_out_error(auto, 6) < 0.5 * before
    assert flow_held_out_error(auto, 6) < 1.15 * flow_held_out_error(alone, 6)
    dynamic = ds.FlowMatchEuler(use_dynamic_shifting=True, time_shift_type="linear")
    found = candidate_flow_bases(dynamic)
    assert [b.solver_order for b in found] == [3, 2]
    assert all(b.use_dynamic_shifting and b.time_shift_type == "linear" for b in found)
    with pytest.raises(ValueError, match="bases of a flow scheduler"):
        search_coefficients(model, sched, 6, CALIBRATION, bases=[ds.UniPC()])


def test_single_step_stage_times_are_tuned():
    """A single-step method's stage times are levels of its grid: DPM-Solver's singlestep
    solver (order 2) calls the model at every grid level, the odd ones its stages, so
    ``tune="both"`` moves the stage times with the step times and fits x̂_0 weights across
    steps; on held-out noise the table does better than the untuned solver."""
    # measured (6 calls, held-out, this module's noise): 0.154 -> 0.065 (0.067 with
    # times=True); stage levels 832, 500, 166 -> 572, 477, 13
    base = ds.DPMSolverSinglestep(solver_order=2, **SD)
    model = cli.exact_model(base, "gmm")
    result = search_coefficients(model, base, 6, CALIBRATION, bases=None)
    tuned = result.scheduler
    assert type(tuned.base_scheduler) is ds.DPMSolverSinglestep
    _, own = base.init(6, CALIBRATION)
    _, levels = tuned.base_scheduler.init(6, CALIBRATION, **tuned.grid_options)  # the grid's
    own, levels = np.asarray(own, np.float64), np.asarray(levels, np.float64)
    assert len(levels) == 6 and levels[0] == own[0]
    # the stage times moved, and not all by one rescaling of the step times
    assert np.max(np.abs(levels[1::2] - own[1::2])) >= 10
    assert not np.allclose(levels[1::2] / own[1::2], levels[1] / own[1], rtol=1e-3)
    before, after = held_out_error(base, 6), held_out_error(tuned, 6)
    assert after < 0.7 * before, (before, after)


# -- the command line ----------------------------------------------------------------------


def run_cli(capsys, *argv):
    capsys.readouterr()
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_tunes_the_table_saves_it_and_sample_reads_it_back(capsys, tmp_path):
    """`diffsched tune --tune both --save` writes a Tuned file that ds.load_tuned and
    `sample --config` read; sample measures it on tune's held-out noise, with tune's error."""
    import re

    path = tmp_path / "t.json"
    argv = ("tune", "unipc", "--model", "gmm", "--steps", 4, "--calibration", 16, "--held-out",
            16, "--max-evaluations", 20, "--tune", "both", "--save", path)  # fmt: skip
    status, out, err = run_cli(capsys, *argv)
    assert status == 0, err
    assert "tuned table: base " in out
    tuned = ds.load_tuned(path, base=cli.build_scheduler("unipc", {}), num_steps=4)
    assert tuned.tuned_steps == 4
    assert json.loads(path.read_text(encoding="utf-8"))["about"]["tune"] == "both"
    row = re.search(r"\| held-out noise \| ([\d.e+-]+) \| ([\d.e+-]+) \|", out)
    assert float(row[2]) <= float(row[1])  # never worse than the scheduler as it is
    status, out, err = run_cli(capsys, "sample", "--config", path, "--model", "gmm", "--steps",
                               4, "--num-samples", 16, "--no-progress",
                               "--out", tmp_path / "s.png")  # fmt: skip
    assert status == 0, err
    assert "model calls: 4" in out and f"noise: seed {cli.HELD_OUT_SEED}" in out
    assert f"relative RMS error vs exact ODE solution: {row[2]}" in out
    status, _, err = run_cli(capsys, "sample", "--config", path, "-o", "eta=1", "--model",
                             "gmm", "--steps", 4)  # fmt: skip
    assert status == 2 and "is a tuned table: it takes no -o options" in err
    with pytest.raises(SystemExit):  # argparse's choices
        cli.main(["tune", "--tune", "weights"])
    assert "invalid choice: 'weights'" in capsys.readouterr().err
    status, _, err = run_cli(capsys, "tune", "--tune", "both", "--calibration", 2)
    assert status == 2 and "--calibration 4 or more" in err
    status, _, err = run_cli(capsys, "tune", "unipc", "--times")  # a grid has no model times
    assert status == 2 and "--times tunes a table's model times" in err
    status, out, err = run_cli(capsys, *argv[:-2], "--times", "--save", tmp_path / "t2.json")
    assert status == 0, err
    timed = ds.load_tuned(tmp_path / "t2.json", num_steps=4)
    assert timed.model_timesteps is not None and "model times [999.0, " in out
    status, out, err = run_cli(capsys, *argv[:-2], "--sample-weights", "--save",
                               tmp_path / "t3.json")  # fmt: skip
    assert status == 0, err
    sampled = ds.load_tuned(tmp_path / "t3.json", num_steps=4)
    assert sampled.sample_weights is not None and "sample weights tuned" in out


def test_refine_fits_more_bases_and_keeps_the_best_held_out_split():
    """``refine=2`` refines and fits the runner-up base too; its first candidate is
    ``refine=1``'s table, so the pick's error on the split the fit did not see is no
    higher, and the runner-up is taken only by 2% or more."""
    from diffsched.tuning import _held_error, json_config

    base = ds.UniPC(**SD)
    model = cli.exact_model(base, "gmm")
    kw = {"max_evaluations": 12, "iterations": 1}
    one = search_coefficients(model, base, 5, CALIBRATION, refine=1, **kw)
    two = search_coefficients(model, base, 5, CALIBRATION, refine=2, **kw)
    assert _held_error(two) <= _held_error(one)
    assert two.model_calls > one.model_calls  # the runner-up's search and fit were paid for
    if json_config(two.scheduler.base_scheduler) != json_config(one.scheduler.base_scheduler):
        assert _held_error(two) < 0.98 * _held_error(one)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="refine must be"):
            search_coefficients(model, base, 5, CALIBRATION, refine=bad)


def test_a_fit_that_extrapolates_is_refused():
    """The case that found the guard (tuning_coefficients._Stress): UniPC's own 10-step
    grid on a 64-D mixture with components 6.6-8.3 apart, 64 calibration samples. The fit
    of least leave-one-out error (0.016; the base 0.132) extrapolated the last x̂_0's of
    the 3% of samples still between components at the grid's last level, 15-22 away from
    the exact solution: 0.43 on 8192 held-out noises against the base's 0.134. Guarded:
    0.086 there; on these 1024 noises 0.082 guarded, 0.27 unguarded, the base 0.131."""
    from diffsched.exact import models

    base = ds.UniPC(**SD)
    options = {**cli.model_kwargs("gmm64"), "mean_scale": 1.0}
    model = models.make_model("gmm", base.alphas_cumprod, base.prediction_type, **options)
    calibration = np.random.default_rng(101).standard_normal((64, 64))
    result = search_coefficients(model, base, 10, calibration, grid=False, bases=None)
    held = np.random.default_rng(7).standard_normal((1024, 64))
    start = held * base.init_noise_scale(10)
    exact = solve_pf_ode(model.denoiser, start, *base.noise_levels(10))

    def error(sched):
        out = np.asarray(ds.sample(model, sched, held, 10))
        return float(np.linalg.norm(out - exact) / np.linalg.norm(exact))

    # measured 0.082 against 0.131 (0.070 with times=True)
    assert error(result.scheduler) < 0.75 * error(base)


# -- the model's times (eq. (3) of diffsched.methods.tuned) -----------------------------------


def test_model_timesteps_call_the_model_there_with_the_base_coefficients():
    # eq. (3): the sample stays on the base's levels and the base's coefficients step it;
    # only the time each call passes the model moves
    base = ds.UniPC(**SD)
    times = [999.0, 700.25, 431.5, 190.0, 37.75]
    tuned = ds.Tuned(base=base, tuned_steps=5, model_timesteps=times)
    model = cli.exact_model(base, "gmm")
    seen = []

    def recording(x, t):
        seen.append(float(t))
        return model(x, t)

    noise = HELD_OUT[:8]
    out = np.asarray(ds.sample(recording, tuned, noise, 5))
    assert seen == times
    state, base_times = base.init(5, noise)
    assert not np.allclose(np.asarray(base_times, np.float64), times)  # they did move
    x = noise * base.init_noise_scale(5)
    for t in times:  # the base's loop, its model asked at the tuned times
        state, x = base.step(state, x, model(x, t))
    np.testing.assert_allclose(out, x, rtol=0, atol=1e-12)
    assert not np.allclose(out, ds.sample(model, base, noise, 5))  # and that changed it


def test_model_timesteps_refusals():
    base = ds.UniPC(**SD)
    with pytest.raises(ValueError, match=r"one timestep per model call .*\(5\), got 4"):
        ds.Tuned(base=ds.Heun(**SD), tuned_steps=3, model_timesteps=[999.0, 700.0, 400.0, 1.0])
    with pytest.raises(ValueError, match=r"trained range \[0, 999\], got 0 to 1000"):
        ds.Tuned(base=base, tuned_steps=2, model_timesteps=[1000.0, 0.0])
    with pytest.raises(ValueError, match="finite numbers"):
        ds.Tuned(base=base, tuned_steps=2, model_timesteps=[999.0, float("nan")])
    with pytest.raises(ValueError, match="needs tuned_steps > 0"):
        ds.Tuned(base=base, model_timesteps=[999.0])
    with pytest.raises(ValueError, match=r"at least 150000 timesteps\), got 2 numbers"):
        ds.Tuned(base=base, tuned_steps=150_000, model_timesteps=[999.0, 0.0])
    flow = ds.FlowMatchEuler()
    ok = ds.Tuned(base=flow, tuned_steps=2, model_timesteps=[1000.0, 400.0])  # t = σ T: [0, T]
    assert ok.init(2, np.zeros((1, 2)))[1].tolist() == [1000.0, 400.0]
    model = cli.exact_model(base, "gmm")
    with pytest.raises(TypeError, match="times must be True or False"):
        fit_coefficients(model, base, 4, CALIBRATION, CALIBRATION, times="yes")
    with pytest.raises(ValueError, match=r"times=True .* needs calls='all'"):
        fit_coefficients(model, base, 4, CALIBRATION, CALIBRATION, times=True, calls="final")


def assert_fit_runs_and_round_trips(base, steps: int, result, tmp_path) -> ds.Tuned:
    """The fitted table's error on the calibration batch is the engine's, it does not
    lose to its base on held-out noise, and it saves, loads and runs on every backend;
    the loaded table."""
    sched = result.scheduler
    model = cli.exact_model(base, "gmm")
    grid = Grid.of(base, steps)
    start = CALIBRATION * base.init_noise_scale(None, **grid.init_options(grid.start))
    ref = reference_trajectory(model, base, start, grid)
    out = np.asarray(ds.sample(model, sched, CALIBRATION, steps))
    assert relative_error(out, ref.final) == pytest.approx(result.error, rel=1e-9)
    assert held_out_error(sched, steps) <= held_out_error(base, steps)
    loaded = ds.load_tuned(ds.save_tuned(tmp_path / "tuned.json", sched), base=base)
    assert loaded == sched
    assert_backends_agree(model, loaded, steps)
    return loaded


@pytest.fixture(scope="module", params=["times", "samples"])
def extended(request):
    """DPM-Solver++'s table fitted with its model's times, or with its sample weights."""
    base = ds.DPMSolverMultistep(**SD)
    model = cli.exact_model(base, "gmm")
    found = search_coefficients(model, base, 6, CALIBRATION, grid=False, **{request.param: True})
    return request.param, base, 6, found


def test_a_fit_of_the_times_or_samples_runs_in_the_engine_and_does_not_lose(extended, tmp_path):
    # measured (held-out, 128 noises): DPM-Solver++ 6 steps 0.108 (base), 0.091 (weights),
    # 0.090 (weights and times), 0.084 (weights and sample weights)
    kind, base, steps, result = extended
    sched = result.scheduler
    assert sched.weights is not None
    assert (sched.model_timesteps is not None) == (kind == "times")
    assert (sched.sample_weights is not None) == (kind == "samples")
    if kind == "times":
        times = np.asarray(sched.model_timesteps)
        _, own = base.init(steps, CALIBRATION, **sched.grid_options)
        assert times.shape == (steps,) and times[0] == own[0] == 999  # the first stays on top
        assert np.all((times >= 0) & (times <= 999)) and not np.allclose(times, own)
    else:
        v = sched.sample_weight_table()
        assert v.shape == (steps, 5) and np.all(v[np.triu_indices(steps, 1, 5)] == 0)
    loaded = assert_fit_runs_and_round_trips(base, steps, result, tmp_path)
    assert loaded.model_timesteps == sched.model_timesteps
    assert loaded.sample_weights == sched.sample_weights


def jacobian_against_whole_runs(loop, noise, params, theta, columns, h: float,
                                tol: float) -> None:  # fmt: skip
    """The fit's Jacobian (each column from the run's prefix, a forward difference) at
    ``theta`` equals, on ``columns``, the central difference of whole runs (step ``h``) to
    ``tol`` of each column's largest entry; every such column moves the final sample."""
    from diffsched.tuning_coefficients import _jacobian

    x0 = loop.start(noise)
    _, jac = _jacobian(loop, params, x0, np.zeros_like(x0), 1.0, theta)

    def final(th):
        out, _ = loop.run(x0, params.weights(th), shifts=params.shifts(th),
                          v=params.sample_weights(th))  # fmt: skip
        return out.reshape(len(x0), -1)

    for i in columns:
        e = np.zeros(params.size)
        e[i] = h
        central = (final(theta + e) - final(theta - e)) / (2 * h)
        assert np.abs(central).max() > 1e-6  # the parameter does move the final sample
        np.testing.assert_allclose(jac[..., i], central, rtol=0,
                                   atol=tol * np.abs(central).max())  # fmt: skip


def test_the_fit_differentiates_the_model_times_as_a_whole_run_does():
    # a time column of the Jacobian reruns the loop from its own call (the prefix reused)
    # with a forward difference: it equals the central difference of whole runs to the
    # forward difference's own error (measured: within 1.2e-4 of the column's largest entry;
    # the exact model's log σ is piecewise linear in t, so the times sit inside one piece)
    from diffsched.tuning_coefficients import _Loop, _Params

    base = ds.DPMSolverMultistep(**SD)
    loop = _Loop(cli.exact_model(base, "gmm"), base, 4, {}, CALIBRATION[:8])
    params = _Params(loop.lams, 2, 1, 1, "all", times=True)
    assert len(params.time_calls) == 3 and params.size == params.size_w + 3
    theta = np.zeros(params.size)
    theta[params.size_w :] = [-20.3, 14.3, -6.7]  # mid-interval times
    theta[: params.size_w] = 0.01
    jacobian_against_whole_runs(loop, CALIBRATION[:8], params, theta,
                                range(params.size_w, params.size), 0.01,
                                1e-3)  # fmt: skip


# -- the sample weights (eq. (4) of diffsched.methods.tuned) ----------------------------------


def point_mass_model(sched, x0: np.ndarray):
    """The exact model of data that is the single point ``x0`` (at integer timesteps of a
    discrete table, or flow times t = σ T), in ``sched``'s prediction type: its x̂_0 is x0
    whatever the sample, and its noise estimate (x - α x0) / σ."""
    flow = sched.prediction_type == "flow"
    ac = None if flow else np.asarray(sched.alphas_cumprod, np.float64)

    def model(x, t):
        t = float(t)
        if flow:
            sigma = t / sched.num_train_steps
            alpha = 1 - sigma
        else:
            assert t == round(t)  # the table's own levels: no interpolation to agree on
            alpha, sigma = np.sqrt(ac[int(t)]), np.sqrt(1 - ac[int(t)])
        eps = (x - alpha * x0) / sigma
        return {"noise": eps, "angular_velocity": alpha * eps - sigma * x0, "sample": x0 + 0 * x,
                "flow": eps - x0}[sched.prediction_type]  # fmt: skip

    return model


SAMPLE_BASES = {
    "UniPC-noise": ds.UniPC(**SD),
    "UniPC-angular_velocity": ds.UniPC(**SD, prediction_type="angular_velocity"),
    "DPMSolverMultistep-sample": ds.DPMSolverMultistep(**SD, prediction_type="sample"),
    "FlowMatchEuler": ds.FlowMatchEuler(),
}


@pytest.mark.parametrize("name", list(SAMPLE_BASES))
def test_sample_weights_keep_the_moments_of_both_parametrisations(name):
    # eq. (4): x = A x̂_0 + S ε̂ at every call, so sample weights v and x̂_0 weights δ are a
    # correction of the x̂_0's by δ + vA and of the noise estimates by vS. On a point mass
    # both are constant along the loop: where both keep their moments (moments=2: the noise
    # estimates keep one, their sum) the tuned table lands where its base does; with the
    # default (moments=1) only the noise estimates' sum is free, which rescales the noise
    # the loop carries and nothing else (measured, relative to how far the sample weights
    # alone move it, 1.2 to 1300: at most 8e-9 with both kept, 1.5e-8 with the default)
    from diffsched.tuning_coefficients import _Loop, _Params, _tuned

    base, steps = SAMPLE_BASES[name], 6
    rng = np.random.default_rng(5)
    x0 = rng.standard_normal((3, 5))
    noise = rng.standard_normal((3, 5))
    model = point_mass_model(base, x0)
    loop = _Loop(model, base, steps, {}, noise)
    plain = np.asarray(ds.sample(model, base, noise, steps))
    assert np.max(np.abs(plain - x0)) < 1e-6  # the base is exact on a point mass
    for moments in (2, 1):
        params = _Params(loop.lams, 3, moments, moments, "all", False, loop.levels)
        theta = 0.3 * rng.standard_normal(params.size)
        w, v = params.weights(theta), params.sample_weights(theta)
        assert np.any(v != 0) and np.any(w != 0)
        tuned = _tuned(base, steps, {}, w, None, v)
        out = np.asarray(ds.sample(model, tuned, noise, steps))
        own, _ = loop.run(loop.start(noise), w, v=v)  # the fit's loop is the engine's
        np.testing.assert_allclose(own, out, rtol=0, atol=1e-10 * np.abs(out).max())
        alone = _tuned(base, steps, {}, None, None, v)  # δ + vA no longer sums to zero
        moved = np.max(np.abs(np.asarray(ds.sample(model, alone, noise, steps)) - x0))
        assert moved > 1e-2
        tol = 1e-5 * moved  # (float32 flow times: the point mass's model is exact to ~1e-7)
        if moments == 2:
            np.testing.assert_allclose(out, plain, rtol=0, atol=tol)
            continue
        # the loop's noise estimate, (x - A x0) / S at the first call, only rescaled
        eps = (loop.start(noise) - loop.levels[0][0] * x0) / loop.levels[1][0]
        c = float(np.sum((out - x0) * eps) / np.sum(eps * eps))
        assert abs(c) > 1e-3
        np.testing.assert_allclose(out - x0, c * eps, rtol=0, atol=tol)


def test_the_fit_differentiates_the_sample_weights_as_a_whole_run_does():
    # a weight's column of the Jacobian reruns the loop from the next call with the
    # sample moved along its basis column (the last call's is linear, in closed form): it
    # equals the central difference of whole runs to the forward difference's own error
    # (measured: within 1.2e-5 of the column's largest entry)
    from diffsched.tuning_coefficients import _Loop, _Params

    base = ds.UniPC(**SD)
    loop = _Loop(cli.exact_model(base, "gmm"), base, 4, {}, CALIBRATION[:8])
    params = _Params(loop.lams, 2, 1, 1, "all", False, loop.levels)
    plain = _Params(loop.lams, 2, 1, 1, "all")
    assert params.size > plain.size and params.samples and not plain.samples
    theta = 0.01 * np.random.default_rng(2).standard_normal(params.size)
    jacobian_against_whole_runs(loop, CALIBRATION[:8], params, theta, range(params.size), 1e-4,
                                2e-4)  # fmt: skip


def test_sample_weights_refusals(capsys, monkeypatch):
    base = ds.UniPC(**SD)
    with pytest.raises(ValueError, match=r"sample_weights must have one row of equal length .*"
                                         r"\(3 rows\), got 7 numbers"):  # fmt: skip
        ds.Tuned(base=base, tuned_steps=3, sample_weights=[0.0] * 7)
    with pytest.raises(ValueError, match="sample_weights reads a sample before the first call"):
        ds.Tuned(base=base, tuned_steps=2, sample_weights=[0.0, 0.1, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"sample_weights must lie within ±1e\+06"):
        ds.Tuned(base=base, tuned_steps=1, sample_weights=[2e6])
    with pytest.raises(ValueError, match="sample_weights needs tuned_steps > 0"):
        ds.Tuned(base=base, sample_weights=[0.1])
    with pytest.raises(ValueError, match="sample_weights expects finite numbers"):
        ds.Tuned(base=base, tuned_steps=1, sample_weights=[float("inf")])
    for bad in ([0.5, True], np.array([True, False]), np.array(["0.5", "1"]), ["0.5", 1.0]):
        with pytest.raises(TypeError, match="expects a list of numbers, not bools or strings"):
            ds.Tuned(base=base, tuned_steps=1, sample_weights=bad)  # True is no weight of 1.0
        with pytest.raises(TypeError, match="weights expects a list of numbers, not bools"):
            ds.Tuned(base=base, tuned_steps=1, weights=bad)
    with pytest.raises(ValueError, match=r"one row per model call .*\(at least 3 rows\)"):
        ds.Tuned(base=ds.Heun(**SD), tuned_steps=3, sample_weights=[0.0, 0.0])
    model = cli.exact_model(base, "gmm")
    with pytest.raises(TypeError, match="samples must be True or False, got 'yes'"):
        fit_coefficients(model, base, 4, CALIBRATION, CALIBRATION, samples="yes")
    with monkeypatch.context() as m:  # a prediction type that says nothing of the level
        m.setattr(ds.UniPC, "native_levels", lambda self, *args: None)
        with pytest.raises(ValueError, match="samples=True needs the level of each call's"):
            fit_coefficients(model, base, 4, CALIBRATION, CALIBRATION, samples=True)
    status, _, err = run_cli(capsys, "tune", "unipc", "--sample-weights")  # a grid alone
    assert status == 2 and "--sample-weights tunes a table's sample weights" in err


def test_an_x0_predicting_scheduler_is_tuned_and_its_table_runs():
    # a Tuned table reads its calls' levels off its base (for a sample-predicting base, off
    # the same config's noise-predicting twin), not off a copy of itself (which has no
    # prediction_type option: every x̂_0-model table failed at init; measured after the
    # fix, DPM-Solver++ 5 steps, x̂_0 model: held-out 0.143 -> 0.102)
    base = ds.DPMSolverMultistep(**SD, prediction_type="sample")
    table = ds.Tuned(base=base, tuned_steps=3, weights=[0.0, 0.0, 0.1, -0.1, 0.0, 0.0])
    levels = table.native_levels(table.tableau(3), 3, {})
    np.testing.assert_array_equal(levels, base.native_levels(base.tableau(3), 3, {}))
    assert np.all(levels[0] > 0) and np.all(np.diff(levels[1]) < 0)
    result = search_coefficients(cli.exact_model(base, "gmm"), base, 5, CALIBRATION, grid=False)
    tuned = result.scheduler
    assert tuned.weights is not None and tuned.base_scheduler.prediction_type == "sample"
    assert held_out_error(tuned, 5) <= held_out_error(base, 5)


@pytest.mark.parametrize("select", ["loo", "split"])
def test_a_refused_fit_of_the_sample_weights_gives_the_table_without_them(monkeypatch, select):
    # samples=True tries the larger table first; where the guards refuse its fit, the table
    # samples=False fits is fitted in its place (so the option never loses a fit the
    # smaller table would keep), whichever way the ridge is selected
    from diffsched import tuning_coefficients as tcoef

    base = ds.DPMSolverMultistep(**SD)
    model = cli.exact_model(base, "gmm")
    plain = search_coefficients(model, base, 6, CALIBRATION, grid=False, select=select)
    assert plain.scheduler.weights is not None
    original = tcoef._Stress.extrapolates
    refused = []

    def refuse_sample_weights(self, weights, shifts, calibrated, samples=None):
        if samples is not None and np.any(samples != 0):
            refused.append(1)
            return True  # as if the fit with sample weights extrapolated
        return original(self, weights, shifts, calibrated, samples)

    monkeypatch.setattr(tcoef._Stress, "extrapolates", refuse_sample_weights)
    sampled = search_coefficients(model, base, 6, CALIBRATION, grid=False, samples=True,
                                  select=select)  # fmt: skip
    assert refused and sampled.scheduler.sample_weights is None
    assert sampled.scheduler == plain.scheduler and sampled.error == plain.error


@pytest.mark.parametrize("select", ["loo", "split"])
def test_a_refused_fit_of_every_call_falls_back_to_the_last_calls_combination(monkeypatch, select):
    # where the guards refuse the fit of every call, the last call's combination alone is
    # fitted and judged the same way (module docstring, step 4), whichever way the ridge is
    # selected
    from diffsched import tuning_coefficients as tcoef

    base = ds.DPMSolverMultistep(**SD)
    model = cli.exact_model(base, "gmm")
    original = tcoef._Stress.extrapolates

    def refuse_all_calls(self, weights, shifts, calibrated, samples=None):
        if np.any(np.asarray(weights)[:-1] != 0):
            return True  # as if the fit of every call extrapolated
        return original(self, weights, shifts, calibrated, samples)

    monkeypatch.setattr(tcoef._Stress, "extrapolates", refuse_all_calls)
    result = search_coefficients(model, base, 6, CALIBRATION, grid=False, select=select)
    w = np.asarray(result.scheduler.weights).reshape(6, -1)  # None (the base): fails here
    assert np.all(w[:-1] == 0) and np.any(w[-1] != 0)
    assert result.error < 0.9 * result.start_error  # measured: 0.104 -> 0.082 either way


def test_a_tuned_grid_is_checked_against_its_base_at_construction():
    # a grid the base would not run, or one of another number of steps (which would change
    # the number of model calls), is refused when the table is made, naming the option
    for kw, words in (
        ({"grid_sigmas": [14.0, 3.0, 0.5]}, "grid_sigmas is no 3-step grid of DPMSolverMultistep"
                                            ": it gives 2 steps"),
        ({"grid_timesteps": [5000, 500, 100]}, "grid_timesteps is no 3-step grid .*timesteps"),
        ({"grid_timesteps": [500, 900, 100]}, "strictly decreasing"),
        ({"grid_sigmas": [14.0, 3.0, -0.5, 0.0]}, "grid_sigmas is no 3-step grid"),
        ({"base": ds.FlowMatchEuler(), "grid_sigmas": [1.0, 0.6, 0.3, 0.1]}, "gives 4 steps"),
        ({"base": ds.DDPM(), "grid_sigmas": [14.0, 3.0, 0.5, 0.0]}, "no 3-step grid of DDPM"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=words):
            ds.Tuned(tuned_steps=3, **kw)
    ok = ds.Tuned(base=ds.FlowMatchEuler(), tuned_steps=3, grid_sigmas=[1.0, 0.6, 0.3])
    assert ok.tableau(3).num_calls == 3  # the flow classes: one level per call
    assert ds.Tuned(tuned_steps=3, grid_sigmas=[14.0, 3.0, 0.5, 0.0]).tableau(3).num_calls == 3
    # a malformed nesting or a number beyond any float: the option named, the value cut short
    with pytest.raises(TypeError, match="weights expects a list of numbers"):
        ds.Tuned(tuned_steps=3, weights=[[0, 1], [0]])
    with pytest.raises(ValueError, match="weights expects finite numbers") as err:
        ds.Tuned(tuned_steps=1, weights=[10**400])
    assert len(str(err.value)) < 300


def test_a_table_tuned_on_the_base_grid_refuses_another_grid_at_init():
    noise = np.zeros((1, 2))
    plain = ds.Tuned(tuned_steps=3)  # no table: the base, on whatever grid init is given
    assert len(plain.init(3, noise, sigmas=[14.0, 3.0, 0.5, 0.0])[1]) == 3
    for kw in ({"weights": [0, 0, 0.1, -0.1, 0, 0]}, {"model_timesteps": [999.0, 600.0, 200.0]},
               {"sample_weights": [0.0, 0.0, 0.01, 0.0, 0.0, 0.0]}):  # fmt: skip
        tuned = ds.Tuned(tuned_steps=3, **kw)
        tuned.init(3, noise)  # its own grid runs
        for grid in ({"sigmas": [14.0, 3.0, 0.5, 0.0]}, {"timesteps": [999, 500, 100]}):
            with pytest.raises(ValueError, match=r"tuned on the base's own 3-step grid; init got"):
                tuned.init(3, noise, **grid)


def test_the_file_names_its_version_keeps_permissions_and_bases_compare_canonically(tmp_path):
    import os
    import stat

    diffusers = pytest.importorskip("diffusers")
    tuned = ds.Tuned(base=ds.UniPC(**SD), tuned_steps=3)
    path = ds.save_tuned(tmp_path / "t.json", tuned)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # not mkstemp's 0o600
    os.chmod(path, 0o640)
    ds.save_tuned(path, tuned)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # an existing file keeps its mode
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere" / "t.json")):
        ds.save_tuned(tmp_path / "nowhere" / "t.json", tuned)  # named, not the temporary file
    data = json.loads(path.read_text(encoding="utf-8"))
    for version in (2, "1", None):
        (tmp_path / "v.json").write_text(json.dumps({**data, "version": version}), "utf-8")
        with pytest.raises(
            ValueError, match=f"version {version!r}; this diffsched reads version 1"
        ):
            ds.load_tuned(tmp_path / "v.json")
    for bad in ("3", True, 3.0):
        with pytest.raises(TypeError, match="num_steps expects an integer"):
            ds.load_tuned(path, num_steps=bad)
    assert ds.load_tuned(path, num_steps=np.int64(3)) == tuned
    # the base it replaces: ours, diffusers', a config file or folder, a dict
    sd = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    theirs = diffusers.UniPCMultistepScheduler(**sd)
    theirs.save_config(tmp_path / "cfg")
    for base in (theirs, tmp_path / "cfg", str(tmp_path / "cfg" / "scheduler_config.json"),
                 ds.DDIM(**SD).to_config()):  # fmt: skip
        assert ds.load_tuned(path, base=base) == tuned
    with pytest.raises(ValueError, match="beta_schedule"):
        ds.load_tuned(path, base=diffusers.UniPCMultistepScheduler())
    # a base given as a scheduler, its config or its JSON (stray keys dropped): one table
    config = ds.UniPC(**SD).to_config()
    with pytest.warns(UserWarning, match="no option"):
        stray = ds.Tuned(base={**config, "bogus": 1}, tuned_steps=3)
    assert stray == tuned == ds.Tuned(base=json.dumps(config), tuned_steps=3)
    assert hash(stray) == hash(tuned) and "bogus" not in stray.base


def test_tune_refuses_what_it_cannot_take_before_any_model_call():
    from diffsched.tuning import solve_reference

    base = ds.UniPC(**SD)
    model = cli.exact_model(base, "gmm")
    noise = CALIBRATION[:16]

    def never(*args):
        raise AssertionError("the model was called")

    for scheduler, kw, err, words in (
        (base, {"tune": "coefficients", "select": "split", "holdout": 0.95}, ValueError,
         r"holdout=0.95 leaves 1 of the 16 calibration samples to fit"),
        (base, {"tune": "grid", "samples": True}, TypeError, "samples tunes a table's"),
        (base, {"tune": "both", "reference": np.zeros((16, 2))}, TypeError,
         "reference must be the Reference"),
        (base, {"tune": "both", "bases": [ds.FlowMatchEuler()]}, TypeError,
         "bases must hold schedulers of a discrete-time model"),
        (base, {"tune": "both", "bases": [ds.EulerAncestral(**SD)]}, ValueError,
         "EulerAncestral cannot be a tuned base: .*deterministic"),
        (base, {"tune": "both", "bases": [ds.UniPC(**SD, use_karras_sigmas=True)]}, ValueError,
         "UniPC cannot be a tuned base"),
        (ds.Tuned(base=base, tuned_steps=4), {}, TypeError, "a Tuned table already"),
        (ds.Euler(**SD, timestep_type="continuous", prediction_type="angular_velocity"), {},
         TypeError, "timestep_type='continuous' calls it at 0.25 log σ"),
    ):  # fmt: skip
        with pytest.raises(err, match=words):
            ds.tune(never, scheduler, 4, noise, **kw)
    for bad in (noise.astype(np.complex128), noise.astype(np.int64)):
        with pytest.raises(TypeError, match="calibration_noise must be real floating-point"):
            ds.tune(never, base, 4, bad)
    reference = solve_reference(model, base, 4, noise[:8])  # of another batch
    with pytest.raises(ValueError, match=r"final samples have shape \(8, 2\), the noise"):
        ds.tune(never, base, 4, noise, tune="both", reference=reference)


def test_tune_runs_where_the_reference_levels_merge_and_on_bfloat16():
    # candidates close to num_steps: rounded to integer timesteps, the reference's levels
    # merge and its dynamic programme finds no path; that start is left out (it raised
    # "timesteps must be strictly decreasing" from the search)
    base = ds.UniPC(**SD)
    model = cli.exact_model(base, "gmm")
    grid = ds.tune(model, base, 40, CALIBRATION[:16], candidates=40, max_evaluations=10)
    assert len(grid["timesteps"]) == 40 and np.all(np.diff(grid["timesteps"]) < 0)
    # bfloat16 torch noise (no NumPy dtype): read on the host in float64
    half = torch.from_numpy(CALIBRATION[:16]).to(torch.bfloat16)
    grid = ds.tune(lambda x, t: 0.5 * x, base, 4, half, max_evaluations=10)
    assert len(grid["timesteps"]) == 4


def test_flow_options_the_tuner_cannot_take_are_refused_by_name():
    def never(*args):
        raise AssertionError("the model was called")

    flow_dpm = {"use_flow_sigmas": True, "prediction_type": "flow"}
    for scheduler, kw, words in (
        (ds.FlowMatchEuler(invert_sigmas=True), {}, "invert_sigmas=True runs from data to noise"),
        (ds.DPMSolverMultistep(**flow_dpm, use_dynamic_shifting=True), {"mu": 0.8},
         "flow levels of DPMSolverMultistep with these options and mu=0.8: pass at most one"),
        (ds.DPMSolverMultistep(**flow_dpm, flow_shift=3.0), {},
         "custom sigmas= come back as other levels"),
        (ds.FlowMatchEuler(use_dynamic_shifting=True), {"mu": 1e6}, "and mu=1000000.0: math"),
        (ds.FlowMatchEuler(use_dynamic_shifting=True), {"mu": -100.0}, "the levels merge"),
    ):  # fmt: skip
        for mode in ("grid", "both"):
            with pytest.raises(ValueError, match=words):
                ds.tune(never, scheduler, 4, CALIBRATION[:16], tune=mode, **kw)
