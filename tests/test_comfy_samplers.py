"""ComfyUI's deterministic samplers (ds.from_comfy) against ComfyUI's own code: the recorded
fixture (tests/record_comfy_samplers.py) always, the oracle (../shared/oracles/comfyui)
live where it is present.

Per case: the same σ list (1e-12) and the same timestep at every model call, the final
sample within 1e-9 relative of the float64 oracle and 1e-5 of its float32 run, the churn
noise ComfyUI drew replayed. Observed: float64 <= 1.8e-13 (zero-SNR v models, σ_max = 4519;
<= 1e-14 on the others); float32 <= 7e-7 (uni_pc 1.6e-5: see TOL32_UNIPC).
"""

from __future__ import annotations

import comfy_parity as cp
import numpy as np
import oracle as summary
import pytest
import record_comfy_samplers as rec
from comfy_parity import ORACLE, build, init_options, needs_oracle, rel

import diffsched as ds
from diffsched.methods.kit import churn_levels

FIXTURE = cp.load_fixture(rec.OUT)
CASES = FIXTURE["cases"]
W = np.array(FIXTURE["toy"]["W"])
B = np.array(FIXTURE["toy"]["b"])
NOISE = np.array(FIXTURE["toy"]["noise"])
TOL64 = 1e-9  # observed 1.8e-13
TOL32 = 1e-5  # observed 7.0e-7 (ComfyUI's float32 tables and model)
# uni_pc's float32 run: ComfyUI's σ_vp = sqrt(1 - exp(2 log α)) at its end σ = 0.001 cancels
# to 0.00097656 in float32 (2.3% off), which moves its last step: observed 1.6e-5
TOL32_UNIPC = 5e-5
toy = cp.toy_model(W, B)  # the oracle's toy model


def churn_replay(case: dict, sched, sig) -> dict[int, np.ndarray]:
    """{number of model calls before it: noise} of the churn draws ComfyUI used. ComfyUI
    draws one per churned step (heunpp2: one per step, used where churned); ours draws
    only those it uses."""
    exp = case["expected"]
    if not case["options"].get("s_churn"):
        assert case["sampler"] == "heunpp2" or not exp["churn_den"]
        return {}
    hat = churn_levels(sig, sched.s_churn, sched.s_tmin, sched.s_tmax)
    churned = [i for i in range(len(hat)) if hat[i] > sig[i]]
    steps = range(len(hat)) if case["sampler"] == "heunpp2" else churned
    draws = zip(steps, exp["churn_den"], exp["churn_noise"], strict=True)
    return {d: np.reshape(z, NOISE.shape) for i, d, z in draws if i in churned}


def run(case: dict, noise=NOISE):
    """Our loop on the toy model, ComfyUI's churn draws replayed: (σ's, timesteps, result)."""
    sched = build(case)
    opts = init_options(case)
    steps = cp.steps(case)
    sig = sched.sigmas(steps, **opts)
    state, timesteps = sched.init(steps, noise, **opts)
    program = sched.program(steps, **opts)
    held = noise * sched.init_noise_scale(steps, **opts)
    replay = churn_replay(case, sched, sig)
    if 0 in replay:  # the churn of step 0 joins the initial noise (see comfy_rk)
        a = sched.model_sampling.noise_scaling(sig[0])[0]
        hat = churn_levels(sig, sched.s_churn, sched.s_tmin, sched.s_tmax)[0]
        extra = sched.s_noise * np.sqrt(hat**2 - sig[0] ** 2)
        held = (noise * a + extra * replay.pop(0)) / program.input_scale[0]
    for i, t in enumerate(timesteps):
        z = replay.pop(i + 1, None)
        kwargs = {} if z is None else {"noise": z}
        state, held = sched.step(state, held, toy(held, t), **kwargs)
    assert not replay, "a churn draw ComfyUI made was not used"
    return sig, np.asarray(timesteps), held


def test_fixture_cases_are_the_recorder_cases():
    assert cp.recorder_cases(CASES) == rec.cases()


def test_the_grid_covers_every_sampler_scheduler_and_model():
    assert set(rec.SAMPLERS) <= set(ds.comfy.SAMPLERS)  # the rest: test_comfy_stochastic
    for sampler in rec.SAMPLERS:
        mine = [c for c in CASES if c["sampler"] == sampler]
        assert {c["scheduler"] for c in mine} >= set(ds.comfy.SCHEDULERS)
        assert {c["model"] for c in mine} >= {*rec.BASE_MODELS, "eps-sd15-zsnr", "v-sd15-zsnr",
                                              "flux-dev"}  # fmt: skip
        assert len({c["steps"] for c in mine}) >= 2
        assert any(c["check32"] for c in mine)


@pytest.mark.parametrize("sampler", rec.SAMPLERS)
def test_sampler_equals_comfyui(sampler):
    tol32 = TOL32_UNIPC if sampler.startswith("uni_pc") else TOL32
    checked = cp.check_cases([c for c in CASES if c["sampler"] == sampler], run, TOL64, tol32)
    for case, d, _ in checked:
        summary.record("COMFY float64 vs oracle", f"{sampler} {case['model']}", d)
    summary.record("COMFY float32 oracle vs ours", sampler, cp.worst(checked)[1])


def test_initial_noise_is_comfyuis_noise_scaling():
    for case in CASES[::7]:
        if case["options"].get("s_churn"):
            continue
        sched = build(case)
        opts = init_options(case)
        steps = cp.steps(case)
        sig = sched.sigmas(steps, **opts)
        native = sched.init_noise_scale(steps, **opts) * sched.program(steps, **opts).input_scale[0]
        assert native == pytest.approx(sched.model_sampling.noise_scaling(sig[0])[0], rel=1e-14)


@needs_oracle
def test_fixture_is_the_live_oracle():
    cp.check_live(CASES[::5], rec.run)


@needs_oracle
@pytest.mark.parametrize(
    "sampler,scheduler,model,options",
    [
        ("heun", "karras", "eps-sd15", {}),
        ("dpmpp_2m", "normal", "v-sd15", {}),
        ("uni_pc", "simple", "flow-sd3", {}),
        ("deis", "sgm_uniform", "eps-sd15", {"max_order": 2}),
        ("dpm_fast", "exponential", "flow-sd3", {}),
    ],
)
def test_sampler_function_runs_in_comfyuis_ksampler(sampler, scheduler, model, options):
    """ds.comfy.sampler_function(sched) inside ComfyUI's own KSAMPLER (noise scaling,
    denoiser wrapper, inverse scaling) gives ComfyUI's result for the same sampler, and
    reports the same steps to its progress callback."""
    import torch

    case = dict(sampler=sampler, scheduler=scheduler, steps=6, model=model, options=options,
                denoise=1.0, sigmas=None, check32=False)  # fmt: skip
    reference = rec.run(ORACLE, case)
    ours = cp.MODELS[model]
    fn = ds.comfy.sampler_function(ds.from_comfy(sampler, model=ours[0], **ours[1], **options))
    original = ORACLE._sampler_object
    ORACLE._sampler_object = lambda S, U, name, opts: S.KSAMPLER(fn)
    try:
        got = ORACLE.run(sampler, scheduler, 6, cp.toy(ORACLE), torch.tensor(NOISE),
                         model=model)  # fmt: skip
    finally:
        ORACLE._sampler_object = original
    assert np.array_equal(got["step_i"], reference["step_i"])  # the progress callback
    assert rel(got["step_denoised"], reference["step_denoised"]) < TOL64
    d = rel(got["sample"], reference["sample"])
    summary.record("COMFY sampler_function in KSAMPLER", sampler, d)
    assert d < TOL64


def test_sampler_function_uni_pc_on_float64_sigmas_below_its_end():
    """ComfyUI's uni_pc writes 0.001 over the list's final 0 in place; on a float64 list
    (the caller's memory, which NumPy shares) whose last level is below 0.001 (flux,
    Karras, partial denoise) ours ran a list that rises at its end and refused it."""
    import torch

    sched = ds.from_comfy("uni_pc_bh2", model="flux")
    sigmas = torch.tensor([0.16, 0.08, 0.03, 0.0007, 0.0], dtype=torch.float64)
    x = torch.tensor(NOISE) * 0.16

    def denoiser(x_in, sigma, **extra):
        return torch.tanh(x_in) * (1.0 - sigma[:, None])

    got = ds.comfy.sampler_function(sched)(denoiser, x.clone(), sigmas)
    assert float(sigmas[-1]) == 0.001  # ComfyUI's in-place quirk, kept
    # the same loop on a float32 list (whose float64 copy shares nothing with it): the same
    # result, to the float32 rounding of the levels
    again = ds.comfy.sampler_function(sched)(
        denoiser, x.clone(), torch.tensor([0.16, 0.08, 0.03, 0.0007, 0.0])
    )
    torch.testing.assert_close(got, again, rtol=1e-5, atol=1e-7)


@needs_oracle
def test_sampler_function_uni_pc_below_its_end_in_comfyuis_ksampler():
    """The case that found it: uni_pc_bh2 on flux, Karras, 12 steps at denoise 0.652 (its
    last level 0.0007), inside ComfyUI's KSAMPLER, equals ComfyUI's own sampler."""
    import torch

    case = dict(sampler="uni_pc_bh2", scheduler="karras", steps=12, model="flux-dev",
                options={}, denoise=0.652, sigmas=None, check32=False)  # fmt: skip
    reference = rec.run(ORACLE, case)
    fn = ds.comfy.sampler_function(ds.from_comfy("uni_pc_bh2", model="flux"))
    original = ORACLE._sampler_object
    ORACLE._sampler_object = lambda S, U, name, opts: S.KSAMPLER(fn)
    try:
        got = ORACLE.run("uni_pc_bh2", "karras", 12, cp.toy(ORACLE), torch.tensor(NOISE),
                         model="flux-dev", denoise=0.652)  # fmt: skip
    finally:
        ORACLE._sampler_object = original
    assert rel(got["sample"], reference["sample"]) < TOL64


def test_sampler_function_refuses_classes_without_a_sigma_list():
    # any class that runs a given σ list is taken: tests/test_comfy_sampler_function.py
    with pytest.raises(TypeError, match="takes no sigmas="):
        ds.comfy.sampler_function(ds.DDIM())


def test_deis_rhoab_past_comfyuis_range_is_adams_bashforth():
    """ComfyUI's ρAB fails from max_order + 2 steps on; ours runs the method: the
    variable-step Adams-Bashforth of LMS at that order."""
    x = NOISE
    results = []
    for sched in (ds.from_comfy("deis", "karras", deis_mode="rhoab", max_order=3),
                  ds.from_comfy("lms", "karras", order=3)):  # fmt: skip
        state, ts = sched.init(9, x)
        y = x * sched.init_noise_scale(9)
        for t in ts:
            state, y = sched.step(state, y, toy(y, t))
        results.append(y)
    assert rel(results[0], results[1]) < 1e-14


def test_names_and_errors():
    assert ds.comfy.SCHEDULERS == ("simple", "sgm_uniform", "karras", "exponential",
                                   "ddim_uniform", "beta", "normal", "linear_quadratic",
                                   "kl_optimal")  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown ComfyUI sampler 'eulr'; known: .*'euler'"):
        ds.from_comfy("eulr")
    with pytest.raises(ValueError, match=r"unknown ComfyUI scheduler 'karas'; known: .*'karras'"):
        ds.from_comfy("euler", "karas")
    with pytest.raises(TypeError, match="fixes"):
        ds.from_comfy("uni_pc_bh2", variant="bh1")
    with pytest.raises(TypeError, match="no option"):
        ds.from_comfy("euler", order=3)
    with pytest.raises(TypeError, match="shift"):
        ds.from_comfy("euler", model="eps", shift=3.0)
    with pytest.raises(ValueError, match="decreasing"):
        ds.from_comfy("euler").init(None, NOISE, sigmas=[1.0, 2.0, 0.0])
    assert isinstance(ds.from_comfy("ddim"), ds.ComfyEuler)
    # the scheduler also as scheduler= (the classes' option name), once (was a bare
    # "got multiple values for keyword argument 'scheduler'")
    assert ds.from_comfy("euler", scheduler="karras") == ds.from_comfy("euler", "karras")
    assert ds.from_comfy("euler").scheduler == "normal"
    with pytest.raises(TypeError, match="twice"):
        ds.from_comfy("euler", "simple", scheduler="karras")
    with pytest.raises(ValueError, match="unknown ComfyUI scheduler 'karas'"):
        ds.from_comfy("euler", scheduler="karas")


def test_config_round_trip():
    for sched in (
        ds.from_comfy("deis", "karras", model="flow", shift=3.0, max_order=4, deis_mode="rhoab"),
        ds.from_comfy("heun", "beta", s_churn=0.5),
        ds.from_comfy("uni_pc_bh2", "kl_optimal", model="v", zsnr=True),
    ):
        config = sched.to_config()
        assert config["_class_name"] == type(sched).__name__
        assert ds.from_config(config) == sched


@needs_oracle
@pytest.mark.parametrize("sampler,model", [("dpmpp_2m", "eps-sd15"), ("heun", "flow-sd3")])
def test_partial_denoise_of_a_latent_is_comfyuis_img2img(sampler, model):
    """init(..., denoise=d) and add_noise (ds.sample's image=) from a nonzero latent equal
    ComfyUI's KSampler with that latent_image and denoise."""
    import torch

    latent = np.random.default_rng(5).standard_normal(NOISE.shape) * 0.5
    reference = ORACLE.run(sampler, "karras", 5, cp.toy(ORACLE), torch.tensor(NOISE),
                           model=model, denoise=0.6, latent_image=torch.tensor(latent))  # fmt: skip
    name, settings = cp.MODELS[model]
    sched = ds.from_comfy(sampler, "karras", model=name, **settings)
    got = ds.sample(toy, sched, NOISE, 5, image=latent, denoise=0.6)
    d = rel(got, reference["sample"])
    summary.record("COMFY img2img (denoise 0.6, latent)", sampler, d)
    assert d < TOL64
