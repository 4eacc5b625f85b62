"""``ds.comfy.sampler_function(sched)`` for any diffsched scheduler: a k-diffusion sampler
function running the class on ComfyUI's denoiser and σ list.

Without the oracle: ComfyUI's denoiser of the toy model (its model sampling's input scale,
nearest-index timestep and x̂_0 conversion, from diffsched.schedules.comfy) run through the
sampler function of a diffusers-style class and through the ``Comfy*`` class of the same
method (an independent path: that class runs the σ's as an x_0 model), on σ lists of float32
values (the classes' custom grids hold float32 values): Euler = ComfyEuler, Heun =
ComfyHeun, DPMSolverMultistep order 2 = ComfyDPMPP2M, EulerAncestral = ComfyEulerAncestral
(the same keyed draws), FlowMatchEuler on a flow model = ComfyEuler there. Observed <= 4e-16.

With the oracle (../shared/oracles/comfyui): the function inside ComfyUI's own ``KSAMPLER``
equals ComfyUI's sampler of the same method (observed <= 4.8e-14, v: its conversion), and
for the classes with no ComfyUI twin (DPMSolverMultistep orders 1 and 3, UniPC) the class
run on its own loop with the same σ list and model.
"""

from __future__ import annotations

import comfy_parity as cp
import numpy as np
import oracle as summary
import pytest
import record_comfy_samplers as rec
import torch
from comfy_parity import ORACLE, needs_oracle, rel

import diffsched as ds
from diffsched.schedules import comfy as comfy_schedules

FIXTURE = cp.load_fixture(rec.OUT)
W = np.array(FIXTURE["toy"]["W"])
B = np.array(FIXTURE["toy"]["b"])
NOISE = np.array(FIXTURE["toy"]["noise"])
TOL = 1e-12  # observed 4.1e-16 (pure), 4.8e-14 (v-model, KSAMPLER)
# float32 values, as the classes' custom grids hold
EPS_SIGMAS = np.float32([14.6146, 6.1, 2.4, 0.92, 0.31, 0.06, 0.0]).astype(np.float64)
FLOW_SIGMAS = np.float32([0.97, 0.86, 0.7, 0.5, 0.28, 0.09, 0.0]).astype(np.float64)


class Denoiser:
    """ComfyUI's k-diffusion denoiser D(x, σ) of the toy model on ``model``'s model
    sampling, float64 torch; ``inner_model.inner_model.model_sampling`` says CONST on flow
    models, as the sampler functions ask."""

    def __init__(self, model: str, **settings):
        self.ms = comfy_schedules.model_sampling(model, **settings)
        kind = type("CONST", (), {}) if self.ms.flow else type("EPS", (), {})
        self.inner_model = type("Inner", (), {})()
        self.inner_model.inner_model = type("Base", (), {"model_sampling": kind()})()
        self.calls = 0

    def __call__(self, x, sigma, **extra):
        self.calls += 1
        s = float(sigma[0])
        xin = x.numpy() * float(self.ms.input_scale(s))
        t = float(self.ms.timestep(s))
        out = np.tanh(xin.reshape(xin.shape[0], -1) @ W + t / 1000 * B).reshape(xin.shape)
        c_x, c_out = (float(v) for v in self.ms.denoised_coefficients(s))
        return torch.from_numpy(c_x * x.numpy() + c_out * out)


def start(model: str, sigmas) -> torch.Tensor:
    """ComfyUI's noise_scaling at the first level (from pure noise)."""
    a, _ = comfy_schedules.model_sampling(model).noise_scaling(float(sigmas[0]))
    return torch.from_numpy(NOISE * a)


def through(sched, model: str, sigmas, **extra) -> np.ndarray:
    fn = ds.comfy.sampler_function(sched)
    return fn(Denoiser(model), start(model, sigmas), torch.tensor(sigmas), extra).numpy()


@pytest.mark.parametrize(
    "ours,twin,model",
    [
        (ds.Euler(), ds.ComfyEuler(), "eps"),
        (ds.Euler(prediction_type="angular_velocity"), ds.ComfyEuler(model="v"), "v"),
        (ds.Heun(), ds.ComfyHeun(), "eps"),
        (ds.DPMSolverMultistep(solver_order=2), ds.ComfyDPMPP2M(), "eps"),
        (ds.EulerAncestral(), ds.ComfyEulerAncestral(), "eps"),
        (ds.FlowMatchEuler(), ds.ComfyEuler(model="flow"), "flow"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
def test_any_class_equals_its_comfy_twin(ours, twin, model):
    sigmas = FLOW_SIGMAS if model == "flow" else EPS_SIGMAS
    got = through(ours, model, sigmas, seed=7)
    want = through(twin, model, sigmas, seed=7)
    d = rel(got, want)
    summary.record("COMFY sampler_function (any class) vs Comfy twin", type(ours).__name__, d)
    assert d < TOL, d


def test_the_loop_calls_the_denoiser_at_the_class_levels_and_reports_each_step():
    """Heun: 2N - 1 calls; the callback once per step, at its first call, with ComfyUI's
    σ_i (k-diffusion's progress report)."""
    seen = []
    fn = ds.comfy.sampler_function(ds.Heun())
    den = Denoiser("eps")
    fn(den, start("eps", EPS_SIGMAS), torch.tensor(EPS_SIGMAS),
       callback=lambda info: seen.append((info["i"], info["sigma"])))  # fmt: skip
    n = len(EPS_SIGMAS) - 1
    assert den.calls == 2 * n - 1
    assert [i for i, _ in seen] == list(range(n))
    np.testing.assert_allclose([s for _, s in seen], EPS_SIGMAS[:-1], rtol=0)


@pytest.mark.parametrize(
    "ours,model", [(ds.FlowMatchEuler(), "eps"), (ds.Euler(), "flow")], ids=["flow-on-eps",
                                                                          "ve-on-flow"]
)  # fmt: skip
def test_the_sigma_conventions_convert(ours, model):
    """A flow class on an ε-model runs σ/(1 + σ), a variance-exploding one on a flow model
    σ/(1 - σ), converting the sample at each call: Euler in either variable is the same
    method (the exact step of x̂_0 held fixed), so both equal ComfyEuler on that model, up to
    the float32 rounding of the converted levels (observed 2.4e-8 and 1.3e-9)."""
    sigmas = FLOW_SIGMAS if model == "flow" else EPS_SIGMAS
    got = through(ours, model, sigmas)
    want = through(ds.ComfyEuler(model=model), model, sigmas)
    assert rel(got, want) < 1e-7, rel(got, want)


@pytest.mark.parametrize("cls", [ds.EDMEuler, ds.FlowMapEuler, ds.MiniMaxH3, ds.Euler],
                         ids=lambda c: c.__name__)  # fmt: skip
@pytest.mark.parametrize("model", ["eps", "flow"])
def test_every_euler_form_is_comfyuis_euler(cls, model):
    """Each σ-list form (N + 1 levels; N levels and the class's own final 0; MiniMaxH3's
    grid points) and each space (EDM's, flow) gives Euler's method on ComfyUI's levels:
    ComfyEuler's result, up to the float32 rounding of the converted levels (observed
    <= 5.8e-8; FlowMapEuler on flow levels 2e-16)."""
    sigmas = FLOW_SIGMAS if model == "flow" else EPS_SIGMAS
    got = through(cls(), model, sigmas)
    assert rel(got, through(ds.ComfyEuler(model=model), model, sigmas)) < 1e-6


def test_errors_name_the_reason():
    with pytest.raises(TypeError, match="takes no sigmas="):
        ds.comfy.sampler_function(ds.DDIM())
    with pytest.raises(TypeError, match="diffsched scheduler"):
        ds.comfy.sampler_function(object())
    with pytest.raises(ValueError, match="does not run the σ list"):  # its shift moves them
        through(ds.FlowMatchEuler(shift=3.0), "flow", FLOW_SIGMAS)
    with pytest.raises(ValueError, match="σ = 1 has none"):
        through(ds.Euler(), "flow", np.array([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="does not run the σ list"):  # churn raises σ_0
        through(ds.Euler(s_churn=1.0), "eps", EPS_SIGMAS)


# -- inside ComfyUI's KSAMPLER (the oracle) -----------------------------------------------


def ksampler(fn, sampler, scheduler, model, sigmas):
    original = ORACLE._sampler_object
    ORACLE._sampler_object = lambda S, U, name, opts: S.KSAMPLER(fn)
    try:
        return ORACLE.run(sampler, scheduler, 6, cp.toy(ORACLE), torch.tensor(NOISE),
                          model=model, sigmas=torch.tensor(sigmas))  # fmt: skip
    finally:
        ORACLE._sampler_object = original


@needs_oracle
@pytest.mark.parametrize(
    "sched,sampler,scheduler,model",
    [
        (ds.Euler(), "euler", "karras", "eps-sd15"),
        (ds.Euler(prediction_type="angular_velocity"), "euler", "normal", "v-sd15"),
        (ds.Heun(), "heun", "exponential", "eps-sd15"),
        (ds.DPMSolverMultistep(solver_order=2), "dpmpp_2m", "karras", "eps-sd15"),
        (ds.DPMSolverMultistep(solver_order=2, prediction_type="angular_velocity"),
         "dpmpp_2m", "kl_optimal", "v-sd15"),
        (ds.FlowMatchEuler(), "euler", "simple", "flow-sd3"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)  # fmt: skip
def test_in_comfyuis_ksampler_equals_comfyuis_sampler(sched, sampler, scheduler, model):
    """ComfyUI's σ's of the float32 run (float32 values: the classes' custom grids hold
    float32), the float64 run: ComfyUI's sampler of the same method to float64 precision."""
    sigmas = ORACLE.compute_sigmas(sampler, scheduler, 6, model=model, precision="float32")
    sigmas = np.asarray(sigmas, np.float64)
    want = ORACLE.run(sampler, scheduler, 6, cp.toy(ORACLE), torch.tensor(NOISE), model=model,
                      sigmas=torch.tensor(sigmas))  # fmt: skip
    got = ksampler(ds.comfy.sampler_function(sched), sampler, scheduler, model, sigmas)
    assert np.array_equal(got["step_i"], want["step_i"])
    d = rel(got["sample"], want["sample"])
    summary.record("COMFY sampler_function (any class) in KSAMPLER", type(sched).__name__, d)
    assert d < TOL, d


@needs_oracle
@pytest.mark.parametrize(
    "sched,model",
    [
        (ds.DPMSolverMultistep(solver_order=1), "eps-sd15"),
        (ds.DPMSolverMultistep(solver_order=3), "eps-sd15"),
        (ds.UniPC(solver_order=2, use_flow_sigmas=True, prediction_type="flow"), "flow-sd3"),
        (ds.UniPC(solver_order=3, use_flow_sigmas=True, prediction_type="flow"), "flow-sd3"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)  # fmt: skip
def test_in_comfyuis_ksampler_equals_the_class_on_its_own(sched, model):
    """Classes with no ComfyUI twin: the result equals the class's own loop on the same σ
    list (one call per level), from KSampler's start, its model ComfyUI's denoiser turned
    into the class's prediction: ε̂ = (x - D(x, σ))/σ of the variance-exploding x = held ·
    sqrt(1 + σ²) (DPM-Solver holds the variance-preserving sample), v = (x - D(x, σ))/σ of
    the flow sample (UniPC's flow form holds it)."""
    flow = model.startswith("flow")
    sigmas = FLOW_SIGMAS if flow else EPS_SIGMAS
    got = ksampler(ds.comfy.sampler_function(sched), "euler", "normal", model, sigmas)
    den = Denoiser("flow", shift=3.0) if flow else Denoiser("eps")
    scale = np.ones(len(sigmas)) if flow else np.sqrt(1.0 + sigmas**2)  # x = scale · held
    state, timesteps = sched.init(None, NOISE, sigmas=sigmas)
    held = got["x_init"] / scale[0]
    for n, _ in enumerate(timesteps):
        x = torch.from_numpy(held * scale[n])
        x0 = den(x, torch.tensor([sigmas[n]])).numpy()
        state, held = sched.step(state, held, (held * scale[n] - x0) / sigmas[n])
    d = rel(got["sample"], held)
    summary.record("COMFY sampler_function (any class) in KSAMPLER", type(sched).__name__, d)
    assert d < TOL, d


def test_custom_sigma_lists_of_heun_and_dpmsolver():
    """``init(None, template, sigmas=[...])``: the list's levels (float32 values), its
    timesteps at their place among the training σ's; clear errors otherwise."""
    x = np.zeros(3)
    sched = ds.DPMSolverMultistep()
    _, timesteps = sched.init(None, x, sigmas=EPS_SIGMAS)
    assert len(timesteps) == len(EPS_SIGMAS) - 1 and np.all(np.diff(timesteps) < 0)
    _, heun_ts = ds.Heun().init(None, x, sigmas=EPS_SIGMAS)
    assert len(heun_ts) == 2 * (len(EPS_SIGMAS) - 1) - 1
    with pytest.raises(ValueError, match="at most one of sigmas="):
        sched.init(None, x, sigmas=EPS_SIGMAS, timesteps=[999, 500])
    with pytest.raises(ValueError, match="decreasing"):
        sched.init(None, x, sigmas=[1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ds.DPMSolverMultistep(use_flow_sigmas=True, prediction_type="flow").init(
            None, x, sigmas=[2.0, 0.5, 0.0]
        )
    flow = ds.DPMSolverMultistep(use_flow_sigmas=True, prediction_type="flow")
    _, ts = flow.init(None, x, sigmas=FLOW_SIGMAS)
    np.testing.assert_array_equal(ts, np.trunc(FLOW_SIGMAS[:-1] * 1000.0))  # as flow grids


@pytest.mark.parametrize("name", ["euler", "uni_pc", "dpmpp_2m"])
def test_sigmas_must_be_comfys_1d_tensor(name):
    """The σ list is ComfyUI's 1-D torch tensor: a NumPy array (an AttributeError before) and
    a 2-D tensor (one row ran no step and returned the noise) are refused by name; an empty
    list returns the input as ComfyUI's KSampler does (uni_pc raised an IndexError)."""
    fn = ds.comfy.sampler_function(ds.from_comfy(name))
    x = torch.ones(1, 2, dtype=torch.float64)
    model = lambda x, s, **k: 0.5 * x  # noqa: E731
    with pytest.raises(TypeError, match="1-D torch tensor"):
        fn(model, x, np.array([5.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"got shape \(1, 3\)"):
        fn(model, x, torch.tensor([[5.0, 1.0, 0.0]], dtype=torch.float64))
    assert fn(model, x, torch.zeros(0, dtype=torch.float64)) is x
