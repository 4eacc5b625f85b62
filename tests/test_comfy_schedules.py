"""ComfyUI's model sampling, KSampler schedulers and schedule nodes
(diffsched.schedules.comfy) against ComfyUI's own code: the recorded fixture always, the
oracle (../shared/oracles/comfyui) live where it is present.

Observed (float64 oracle, 576 KSampler cases, 185 node cases): largest relative difference
2.7e-15 (beta), the other schedulers <= 9.6e-16, nodes <= 2.7e-15; float32 oracle within
1.5e-6 (karras; the others <= 5.9e-7) except kl_optimal on the zero-SNR table (ComfyUI's
float32 tan near π/2: 1.3e-4); the σ-grid classes (float32 grids) within 5.3e-8.
"""

from __future__ import annotations

import math

import comfy_parity as cp
import numpy as np
import pytest
import record_comfy_schedules as rec

from diffsched.schedules import comfy

FIXTURE = cp.load_fixture(rec.OUT)
ORACLE = cp.ORACLE
TOL64 = 1e-12  # observed 2.7e-15
TOL32 = 5e-6  # observed 1.5e-6 (karras on the zero-SNR table: σ_max^(1/7) in float32)


def ms_of(key: str) -> comfy.ModelSampling:
    model, settings = rec.MODELS[key]
    return comfy.model_sampling(model, **settings)


def relative(got, ref) -> float:
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (got, ref)
    return float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300), initial=0.0))


def ours_ksampler(case: dict) -> np.ndarray:
    return comfy.ksampler_sigmas(
        case["scheduler"], case["steps"], ms_of(case["model"]),
        discard_penultimate=case["discard"], denoise=case["denoise"],
    )  # fmt: skip


def ours_node(case: dict) -> np.ndarray:
    params = dict(case["params"])
    model = params.pop("model", None)
    return comfy.node_sigmas(
        case["kind"], case["steps"], ms=None if model is None else ms_of(model), **params
    )


def check(ours, ref: list, tol: float, nan_fixed: float | None = None) -> float:
    """ours equals ref within tol; where the oracle's ComfyUI gives NaN, ours raises a
    ValueError (ltxv-stretch at one step), or, given ``nan_fixed``, has that value there as
    ComfyUI's later fix does (kl_optimal at one step: σ_max)."""
    nan = np.isnan(ref)
    if nan.any() and nan_fixed is None:
        with pytest.raises(ValueError, match="NaN"):
            ours()
        return 0.0
    if nan.any():
        ref = np.where(nan, nan_fixed, ref)
    d = relative(ours(), ref)
    assert d < tol
    return d


def test_fixture_cases_are_the_recorder_cases():
    keys = ("model", "scheduler", "steps", "discard", "denoise", "check32")
    assert [{k: c[k] for k in keys} for c in FIXTURE["ksampler"]] == rec.ksampler_cases()
    assert [{k: c[k] for k in ("kind", "steps", "params")} for c in FIXTURE["nodes"]] == (
        rec.node_cases()
    )


@pytest.mark.parametrize("scheduler", rec.SCHEDULERS)
def test_ksampler_sigmas_equal_comfyui(scheduler):
    cases = [c for c in FIXTURE["ksampler"] if c["scheduler"] == scheduler]
    assert len(cases) == len(rec.MODELS) * 8
    worst = 0.0
    for case in cases:
        fixed = ms_of(case["model"]).sigma_max if scheduler == "kl_optimal" else None
        worst = max(worst, check(lambda case=case: ours_ksampler(case), case["float64"], TOL64,
                                 fixed))  # fmt: skip
        f32 = case["float32"]
        if (
            f32 is not None
            and not np.isnan(f32).any()
            and not (scheduler == "kl_optimal" and "zsnr" in case["model"])
        ):
            assert relative(ours_ksampler(case), case["float32"]) < TOL32
    assert worst < TOL64


@pytest.mark.skipif(ORACLE is None, reason="the ComfyUI oracle (../shared) is absent")
def test_fixture_equals_live_oracle():
    """The recorded numbers are the oracle's today (a sample: every scheduler and node),
    to a few units in the last place: another CPU's vector math rounds differently (with
    NumPy's AVX-512 kernels off, one σ moved by 1 ulp)."""
    for case in FIXTURE["ksampler"][::7]:
        live = np.asarray(rec.ksampler(ORACLE, case), np.float64)
        assert np.allclose(live, case["float64"], rtol=1e-13, atol=0, equal_nan=True)
    for case in FIXTURE["nodes"][::5]:
        live = np.asarray(rec.node(ORACLE, case), np.float64)
        assert np.allclose(live, case["float64"], rtol=1e-13, atol=0, equal_nan=True)


@pytest.mark.parametrize("kind", comfy.NODES)
def test_node_sigmas_equal_comfyui(kind):
    cases = [c for c in FIXTURE["nodes"] if c["kind"] == kind]
    assert cases
    for case in cases:
        check(lambda case=case: ours_node(case), case["float64"], TOL64)


def test_nodes_cover_every_option_value():
    seen = {(c["kind"], k, v) for c in FIXTURE["nodes"] for k, v in c["params"].items()}
    for model_type in comfy.AYS_MODEL_TYPES:
        assert ("ays", "model_type", model_type) in seen
    for coeff in comfy.GITS_COEFFS:
        assert ("gits", "coeff", coeff) in seen
    for model_type in comfy.OPTIMAL_STEPS_LEVELS:
        assert ("optimal_steps", "model_type", model_type) in seen
    for stretch in (True, False):
        assert ("ltxv", "stretch", stretch) in seen
    for scheduler in comfy.KSAMPLER_SCHEDULERS:
        assert ("basic", "scheduler", scheduler) in seen


@pytest.mark.parametrize("key", sorted(rec.MODELS))
def test_model_sampling_maps(key):
    """timestep(σ) equals the timestep ComfyUI gave the model, exactly; σ(t) and
    percent_to_sigma equal ComfyUI's."""
    ms, rows = ms_of(key), FIXTURE["models"][key]
    sig = np.array(rows["timesteps"]["sigma"])
    assert np.array_equal(ms.timestep(sig), rows["timesteps"]["timestep"])
    assert relative(ms.sigma(rows["t"]), rows["sigma"]) < TOL64
    pct = [ms.percent_to_sigma(p) for p in rows["percent"]]
    assert relative(pct, rows["percent_sigma"]) < TOL64


@pytest.mark.parametrize("key", sorted(rec.MODELS))
def test_our_sigmas_give_comfyui_timesteps(key):
    """The timesteps of our own σ's (not ComfyUI's) are ComfyUI's too: the euler loops of
    test_model_sampling_maps, rebuilt from our schedules."""
    ms, rows = ms_of(key), FIXTURE["models"][key]["timesteps"]
    ours = np.concatenate([comfy.scheduler_sigmas(s, ms, 9)[:-1] for s in
                           rec.TIMESTEP_SCHEDULERS])  # fmt: skip
    ours = ours[ours > 0]
    assert relative(ours, rows["sigma"]) < TOL64
    got, ref = ms.timestep(ours), np.array(rows["timestep"])
    if ms.discrete:
        # equal, except where σ sits at the log-midpoint of two table entries (normal's
        # t = k + 1/2): there the nearest index turns on σ's last bit, ours or ComfyUI's
        tie = ties(ms, ours)
        assert np.array_equal(got[~tie], ref[~tie])
        assert np.all(np.abs(got[tie] - ref[tie]) <= ms.timesteps // len(ms.sigmas))
        assert tie.sum() <= 1  # observed: 1 of 36 (eps-sd15-zsnr, normal, t = 499.5)
    else:  # σ · multiplier of σ's equal to a few ulps
        assert relative(got, ref) < TOL64


def ties(ms: comfy.ModelSampling, sigma) -> np.ndarray:
    """Whether each σ is (to 1e-9 relative in log distance) as near two table entries."""
    dist = np.sort(np.abs(np.log(sigma)[:, None] - np.log(ms.sigmas)), axis=1)
    return dist[:, 1] - dist[:, 0] <= 1e-9 * np.maximum(dist[:, 1], 1e-300)


def test_tables():
    sd15 = comfy.model_sampling("eps")
    assert sd15.sigmas.shape == (1000,) and not sd15.sigmas.flags.writeable
    assert sd15.sigma_min == pytest.approx(np.sqrt(0.00085 / (1 - 0.00085)), rel=1e-15)
    assert sd15.sigma_max == pytest.approx(14.614642, rel=1e-6)
    assert comfy.model_sampling("eps", zsnr=True).sigma_max == pytest.approx(4518.76, rel=1e-5)
    lcm = comfy.model_sampling("lcm")
    assert lcm.sigmas.shape == (50,)
    assert np.array_equal(lcm.sigmas, sd15.sigmas[19::20])  # index 20 k + 19
    assert lcm.timestep(lcm.sigmas).tolist() == list(range(19, 1000, 20))
    flux = comfy.model_sampling("flux")
    assert flux.sigmas.shape == (10000,)
    assert flux.timestep(0.5) == 0.5
    assert comfy.model_sampling("flow", shift=3.0).timestep(0.5) == 500.0
    for name in ("cosine", "squaredcos_cap_v2", "sqrt_linear", "sqrt"):
        table = comfy.model_sampling("v", beta_schedule=name).sigmas
        assert np.all(np.diff(table) > 0) and np.all(np.isfinite(table))


def test_noise_scaling():
    sd15 = comfy.model_sampling("eps")
    top = sd15.sigma_max
    assert sd15.noise_scaling(top) == (np.sqrt(1 + top**2), 1.0)
    assert sd15.noise_scaling(top * (1 - 1e-6)) == (np.sqrt(1 + (top * (1 - 1e-6)) ** 2), 1.0)
    assert sd15.noise_scaling(3.0) == (3.0, 1.0)
    assert sd15.noise_scaling(3.0, max_denoise=True) == (np.sqrt(10.0), 1.0)
    assert sd15.inverse_noise_scaling(0.5) == 1.0
    flow = comfy.model_sampling("flow", shift=3.0)
    assert flow.noise_scaling(0.75) == (0.75, 0.25)
    assert flow.inverse_noise_scaling(0.001) == 1 / 0.999
    assert flow.inverse_noise_scaling(0.0) == 1.0


def test_denoised_coefficients():
    """x̂_0 = c_x x + c_out output, against the prediction formulas at σ = 2 (and the LCM
    boundary condition at its timestep)."""
    s = 2.0
    pairs = {
        "eps": (1.0, -s), "flow": (1.0, -s), "x0": (0.0, 1.0),
        "v": (1 / (s * s + 1), -s / np.sqrt(s * s + 1)),
    }  # fmt: skip
    for model, (cx, cout) in pairs.items():
        got = comfy.model_sampling(model).denoised_coefficients(s)
        assert np.allclose(got, (cx, cout), rtol=1e-15, atol=0)
    lcm = comfy.model_sampling("lcm")
    t10 = float(lcm.timestep(s)) * 10
    skip, out = 0.25 / (t10**2 + 0.25), t10 / np.sqrt(t10**2 + 0.25)
    assert np.allclose(lcm.denoised_coefficients(s), (out + skip, -out * s), rtol=1e-15)


def test_ays_levels_reuse_the_published_timesteps():
    from diffsched.schedules import ays

    table = comfy.model_sampling("eps").sigmas
    sd1 = comfy.ays_levels("SD1")
    assert np.allclose(sd1, table[[*ays.TIMESTEPS["sd15"], 0]], rtol=2e-9, atol=0)
    assert comfy.ays_levels("SVD")[:-1].tolist() == list(ays.SIGMAS["svd"][:-1])


def test_errors():
    with pytest.raises(ValueError, match=r"model must be one of \('eps', 'v'"):
        comfy.model_sampling("edm")
    with pytest.raises(ValueError, match=r"timesteps must be at most 100000, got: 10000000"):
        comfy.model_sampling("eps", timesteps=10**7)  # a table that size: no small input
    with pytest.raises(TypeError, match=r"takes the settings \['multiplier', 'shift'"):
        comfy.model_sampling("flow", zsnr=True)
    with pytest.raises(ValueError, match="beta_schedule must be one of"):
        comfy.model_sampling("eps", beta_schedule="scaled_linear")
    with pytest.raises(ValueError, match="scheduler must be one of"):
        comfy.scheduler_sigmas("nope", comfy.model_sampling(), 5)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        comfy.ksampler_sigmas("normal", 0, comfy.model_sampling())
    with pytest.raises(ValueError, match="ModelSampling kind must be one of"):
        comfy.ModelSampling(kind="edm")
    with pytest.raises(ValueError, match="node must be one of"):
        comfy.node_sigmas("align", 5)
    with pytest.raises(TypeError, match=r"node 'gits' takes \['coeff', 'denoise'\]"):
        comfy.node_sigmas("gits", 5, rho=2)
    with pytest.raises(ValueError, match="GITS coeff must be one of"):
        comfy.gits(5, coeff=1.22)
    with pytest.raises(ValueError, match="model_type must be one of"):
        comfy.optimal_steps(5, model_type="SD3")
    assert comfy.ksampler_sigmas("normal", 5, comfy.model_sampling(), denoise=0.0).size == 0


# -- sigma_schedule= values on the σ-based classes -----------------------------------------

import diffsched as ds  # noqa: E402
from diffsched.schedules import sigmas as sigma_schedules  # noqa: E402

SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}  # = eps-sd15
CLASSES = [(ds.Euler, SD, "eps-sd15"), (ds.DPMSolverMultistep, SD, "eps-sd15"),
           (ds.UniPC, SD, "eps-sd15"), (ds.FlowMatchEuler, {"shift": 3.0}, "flow-sd3")]  # fmt: skip
# a step count each kind gives N levels at, and the recorded ComfyUI case it equals
STEPS = {"ddim_uniform": 20, "sd_turbo": 4, "align_your_steps-sd1": 10,
         "align_your_steps-sdxl": 5, "align_your_steps-svd": 24, "optimal_steps-flux": 10,
         "optimal_steps-wan": 17, "optimal_steps-chroma": 50, "ltxv": 20}  # fmt: skip
F32 = 2e-7  # the classes store their grids in float32 (observed 5.3e-8; rounding <= 6e-8)


def class_levels(sched, n: int) -> np.ndarray:
    out = sched._grid(n)
    return np.asarray(out.sigmas if hasattr(out, "sigmas") else out[1], dtype=np.float64)


def recorded(kind: str, model: str, n: int) -> list | None:
    """ComfyUI's σ's for ``sigma_schedule=kind`` on ``model`` at n steps, where recorded."""
    name = "beta" if kind == "beta_sampling" else kind
    for case in FIXTURE["ksampler"]:
        if (case["scheduler"], case["model"], case["steps"], case["discard"],
                case["denoise"]) == (name, model, n, False, 1.0):  # fmt: skip
            return case["float64"]
    node = {"align_your_steps-sd1": ("ays", {"model_type": "SD1"}),
            "align_your_steps-sdxl": ("ays", {"model_type": "SDXL"}),
            "align_your_steps-svd": ("ays", {"model_type": "SVD"}),
            "gits": ("gits", {"coeff": 1.2}), "vp": ("vp", {}), "ltxv": ("ltxv", {"stretch": True}),
            "optimal_steps-flux": ("optimal_steps", {"model_type": "FLUX"}),
            "optimal_steps-wan": ("optimal_steps", {"model_type": "Wan"}),
            "optimal_steps-chroma": ("optimal_steps", {"model_type": "Chroma"}),
            "sd_turbo": ("sd_turbo", {"model": model})}.get(kind)  # fmt: skip
    for case in FIXTURE["nodes"]:
        if node and (case["kind"], case["params"], case["steps"]) == (*node, n):
            return case["float64"]
    return None


@pytest.mark.parametrize("cls,config,model", CLASSES, ids=lambda c: getattr(c, "__name__", ""))
def test_sigma_schedule_values_are_comfyui_schedules(cls, config, model):
    """Each ComfyUI value gives ComfyUI's σ's on the class's own table (here SD1.5's betas,
    ComfyUI's eps-sd15, or flow levels at shift 3, its flow-sd3), then the class's final
    level; and a loop runs on them."""
    ms = ms_of(model)
    flow = model.startswith("flow")
    kinds = [k for k in comfy.SIGMA_SCHEDULES if k not in (comfy.VE_LISTS if flow else
                                                            comfy.FLOW_LISTS)]  # fmt: skip
    checked = 0
    for kind in kinds:
        n = 7 if kind == "gits" else STEPS.get(kind, 20 if kind == "normal" else 7)
        sched = cls(**config, sigma_schedule=kind)
        got = class_levels(sched, n)
        ref = recorded(kind, model, n)
        if ref is None:  # nodes on the table's ends (the recorded ones: SD1.5's node range)
            assert kind in ("polyexponential", "laplace", "sd_turbo"), kind
            if kind == "sd_turbo":
                node = comfy.node_sigmas(kind, n, ms=ms)
            else:
                node = comfy.node_sigmas(kind, n, sigma_max=ms.sigma_max, sigma_min=ms.sigma_min)
            ref = np.append(node[:n], 0.0)
        else:
            checked += 1
        assert got.shape == (n + 1,) and got[-1] == 0.0, kind
        assert relative(got[:-1], ref[:-1]) < F32, kind
        # a loop on them: finite, and (Euler) the same as the levels passed as a custom grid
        x = np.random.default_rng(0).standard_normal((2, 3))
        state, ts = sched.init(n, x)
        y = x * sched.init_noise_scale(n)
        for t in ts:
            state, y = sched.step(state, y, np.tanh(0.5 * y + 1e-3 * float(t)))
        assert np.all(np.isfinite(y)) and not np.allclose(y, x), kind
        if cls is ds.Euler:
            custom = cls(**config).program(None, sigmas=got)
            assert np.array_equal(custom.coefs[:-1], sched.program(n).coefs[:-1]), kind
    assert checked >= 9  # the KSampler's (8 here: not karras/exponential) and the lists


def test_sigma_schedule_ends_and_errors():
    # karras / exponential stay diffsched's (the loop's ends); with linspace spacing those are
    # the table's, so they are ComfyUI's karras and exponential too
    for kind in ("karras", "exponential"):
        got = class_levels(ds.Euler(**SD, sigma_schedule=kind), 7)
        ref = recorded(kind, "eps-sd15", 7)
        assert relative(got, ref) < F32
    with pytest.raises(ValueError, match=r"'ddim_uniform' gives 8 steps for num_steps=7"):
        ds.Euler(**SD, sigma_schedule="ddim_uniform").init(7, np.zeros(2))
    with pytest.raises(ValueError, match="lists flow levels"):
        ds.UniPC(**SD, sigma_schedule="optimal_steps-flux").init(7, np.zeros(2))
    with pytest.raises(ValueError, match="lists variance-exploding"):
        ds.FlowMatchEuler(sigma_schedule="gits")
    with pytest.raises(ValueError, match="option sigma_schedule must be one of"):
        ds.DPMSolverMultistep(sigma_schedule="beta_comfy")
    with pytest.raises(ValueError, match="use_flow_sigmas, sigma_schedule='normal'"):
        ds.DPMSolverMultistep(use_flow_sigmas=True, sigma_schedule="normal")
    with pytest.raises(ValueError, match="use_flow_sigmas cannot be combined"):
        ds.UniPC(use_flow_sigmas=True, sigma_schedule="normal")
    sched = ds.DPMSolverMultistep(sigma_schedule="kl_optimal")
    assert ds.from_config(sched.to_config()) == sched
    assert set(comfy.SIGMA_SCHEDULES) <= set(sigma_schedules.SIGMA_SCHEDULES)


def test_dynamic_shift_uses_the_flux_table():
    sched = ds.FlowMatchEuler(use_dynamic_shifting=True, sigma_schedule="normal")
    got = sched._grid(9, mu=1.15)[1]
    ms = comfy.flow_sampling(1000, mu=1.15)
    assert relative(got[:-1], comfy.normal(ms, 9)[:-1]) < F32
    with pytest.raises(ValueError, match="time_shift_type='exponential'"):
        ds.FlowMatchEuler(use_dynamic_shifting=True, time_shift_type="linear",
                          sigma_schedule="simple")._grid(5, mu=0.5)  # fmt: skip


def sigma_grid_classes():
    from diffsched.core.scheduler import SigmaGrid

    return [c for c in (*ds.methods.ALL, *ds.methods.OURS_ONLY) if issubclass(c, SigmaGrid)]


@pytest.mark.parametrize("cls", sigma_grid_classes(), ids=lambda c: c.__name__)
def test_every_sigma_grid_class_runs_every_comfyui_schedule(cls):
    """Every value of its family (variance-exploding or flow) gives a finite loop."""
    flow = cls.__name__.startswith("FlowMatch")
    config = {} if flow else SD
    x = np.random.default_rng(1).standard_normal((2, 3))
    for kind in comfy.SIGMA_SCHEDULES:
        n = {"ddim_uniform": 20, "sd_turbo": 4}.get(kind, 8)
        if kind in (comfy.VE_LISTS if flow else comfy.FLOW_LISTS):
            with pytest.raises(ValueError, match="lists"):
                cls(**config, sigma_schedule=kind).init(n, x)
            continue
        sched = cls(**config, sigma_schedule=kind)
        state, ts = sched.init(n, x)
        y = x * sched.init_noise_scale(n)
        for t in ts:
            state, y = sched.step(state, y, np.tanh(0.5 * y + 1e-3 * float(t)))
        assert np.all(np.isfinite(y)), kind


def test_kl_optimal_one_step_is_sigma_max_then_zero():
    """One kl_optimal step is σ_max, then 0, as ComfyUI since its fix of the 0/0 at
    i/(N - 1) (its own kl_optimal test; the oracle's older copy gives NaN, and ours refused
    N = 1); N >= 2 is unchanged (the recorded levels above)."""
    one = comfy.kl_optimal(1, 0.0291675, 14.614642)
    assert one.shape == (2,) and np.isfinite(one).all()
    assert one[0] == 14.614642 and one[-1] == 0.0
    many = comfy.kl_optimal(20, 0.0291675, 14.614642)
    assert many.shape == (21,) and abs(many[0] - 14.614642) < 1e-9 and many[-1] == 0.0
    sched = ds.from_comfy("euler", "kl_optimal", model="eps")
    _, ts = sched.init(1, np.zeros((1, 4)))
    assert len(ts) == 1 and np.isfinite(sched.sigmas(1)).all()


def test_linspace_is_torchs_to_the_bit():
    """ComfyUI's beta tables and schedules come from torch.linspace (float64): each point
    rounded once from its nearer end where torch runs its vector kernels (AVX2, AVX-512:
    fused multiply-add), within a few ulps where it runs the scalar kernel."""
    torch = pytest.importorskip("torch")
    fused = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    cases = [(0.00085**0.5, 0.012**0.5, 1000), (999.0, 0.0, 9), (0.0, 1.0, 7),
             (math.log(14.6), math.log(0.03), 31), (1.0, 0.001, 1001), (-3.5, 2.25, 2),
             (5.0, 5.0, 4), (0.1, 0.2, 1)]  # fmt: skip
    differs = 0
    for a, b, n in cases:
        ours = comfy.linspace(a, b, n)
        theirs = torch.linspace(a, b, n, dtype=torch.float64).numpy()
        differs += int(np.sum(np.linspace(a, b, n) != theirs))
        if fused:
            assert np.array_equal(ours, theirs), (a, b, n)
        else:
            scale = np.spacing(max(abs(a), abs(b)))
            assert np.max(np.abs(ours - theirs)) <= 16 * scale, (a, b, n)
    assert differs > 100  # NumPy's linspace is not torch's: the test can fail
