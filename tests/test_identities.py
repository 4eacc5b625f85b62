"""Identities between methods: the papers' own reductions, held without any oracle.

Parity tests hold each class to diffusers; these hold the classes to each other, where
the papers say two methods are one:

* **First order is DDIM.** DDIM (Song et al. 2021, Eq. 12, η = 0) is the first-order
  DPM-Solver (Lu et al. 2022a, Eq. 3.7) and DPM-Solver++ (Lu et al. 2022b, Eq. 4.4), the
  first-order UniP without its corrector (Zhao et al. 2023, Alg. 1 with p = 1), DEIS of
  order 0 (Zhang & Chen 2023, tAB-DEIS r = 0), TCD at γ = 0 (Zheng et al. 2024, Eq. 13)
  and Euler's method on x / sqrt(ᾱ) in σ (Karras et al. 2022, Alg. 1 is DDIM's ODE).
* **η = 1 is DDPM's ancestral step.** DDIM with η = 1 (Song et al. 2021, Eq. 16) is
  DDPM's posterior step with the "fixed_small" variance (Ho et al. 2020, Eq. 7) and the
  Euler-ancestral step of σ_up / σ_down (Karras et al. 2022's k-diffusion split): the same
  mean and the same noise scale (in VE coordinates σ_up = σ_ddim / sqrt(ᾱ_prev)), so with
  one noise the three agree.

Each class runs from the same held sample (ours holds the model's input, so the three
parametrisations start alike) with the same model and noise, on the same timesteps: the
trailing spacing with N dividing the 1000 training steps (DDIM steps to t - 1000 // N,
the next listed timestep only then), or the reference's timesteps where a class takes
custom ones. The two ends: DDIM's last step to ᾱ = 1 (``alpha_clip_strategy="one"``) is
σ = 0 (``final_sigmas_type="zero"``); to ᾱ_0 (``"alpha_zero"``) is σ_0 (``"sigma_min"``,
DEIS's and the ε-form DPM-Solver's end).

The σ-based classes hold σ = sqrt((1 - ᾱ) / ᾱ) rounded to float32, as diffusers does:
they differ from DDIM's ᾱ tables by up to 1.3e-7 of the sample here (a math error is
1e-3 or more); the bound is 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

import diffsched as ds

SHAPE = (2, 3, 4)
_W = np.random.default_rng(0).standard_normal((4, 4)) / 2
_X = np.random.default_rng(1).standard_normal(SHAPE)
_Z = np.random.default_rng(2).standard_normal((64, *SHAPE))
BOUND = 1e-5

# every prediction type with every beta schedule, each at two step counts
SETTINGS = [
    (prediction, schedule, n)
    for k, (prediction, schedule) in enumerate(
        (p, s)
        for p in ("noise", "angular_velocity", "sample")
        for s in ("linear", "quadratic", "squared_cosine")
    )
    for n in ((1, 10), (4, 25), (5, 20))[k % 3]
]


def _model(x, t):
    return np.tanh(x @ _W + 1e-3 * float(t))


def _run(sched, n, **init):
    """(timesteps, final sample) from the held sample _X, noise _Z[i] at call i."""
    state, timesteps = sched.init(n, _X, 0, **init)
    x = _X
    for i, t in enumerate(np.asarray(timesteps)):
        kwargs = {} if sched.deterministic else {"noise": _Z[i]}
        state, x = sched.step(state, x, _model(x, t), **kwargs)
    return np.asarray(timesteps, dtype=np.float64), x


def _made(cls, prediction, **options):
    if prediction not in cls.PREDICTION_TYPES:
        return None
    return cls(prediction_type=prediction, **options)


def _agree(candidates, reference, n):
    ref_timesteps, ref = reference
    checked = 0
    for label, (sched, init) in candidates.items():
        if sched is None:
            continue
        timesteps, final = _run(sched, n if not init else None, **init)
        np.testing.assert_array_equal(timesteps, ref_timesteps, err_msg=label)
        err = float(np.abs(final - ref).max() / np.abs(ref).max())
        assert err < BOUND, (label, err)
        checked += 1
    return checked


def _betas(schedule):
    """Explicit β ranges: the classes' defaults differ (DDIM's are DDPM's, LCM's and
    TCD's Stable Diffusion's)."""
    if schedule == "quadratic":  # Stable Diffusion's
        return {"beta_schedule": schedule, "beta_start": 0.00085, "beta_end": 0.012}
    return {"beta_schedule": schedule, "beta_start": 0.0001, "beta_end": 0.02}


@pytest.mark.parametrize(("prediction", "schedule", "n"), SETTINGS)
def test_first_order_methods_are_ddim_to_zero(prediction, schedule, n):
    betas = _betas(schedule)
    trailing = {"timestep_spacing": "trailing", **betas}
    ddim = ds.DDIM(prediction_type=prediction, clip_denoised_sample=False, **trailing)
    reference = _run(ddim, n)
    custom = {"timesteps": [int(t) for t in reference[0]]}
    candidates = {
        "DPM-Solver++ 1": (
            _made(ds.DPMSolverMultistep, prediction, solver_order=1, **trailing),
            {},
        ),
        "singlestep DPM-Solver++ 1": (
            _made(ds.DPMSolverSinglestep, prediction, solver_order=1, **betas),
            custom,
        ),
        "UniP 1, no corrector": (
            _made(
                ds.UniPC, prediction, solver_order=1, disable_corrector=list(range(n)), **trailing
            ),
            {},
        ),
        "Euler": (_made(ds.Euler, prediction, **trailing), {}),
    }
    assert _agree(candidates, reference, n) >= 3


@pytest.mark.parametrize(("prediction", "schedule", "n"), SETTINGS)
def test_first_order_methods_are_ddim_to_the_last_training_level(prediction, schedule, n):
    betas = _betas(schedule)
    trailing = {"timestep_spacing": "trailing", **betas}
    ddim = ds.DDIM(
        prediction_type=prediction,
        clip_denoised_sample=False,
        alpha_clip_strategy="alpha_zero",
        **trailing,
    )
    reference = _run(ddim, n)
    custom = {"timesteps": [int(t) for t in reference[0]]}
    sigma_min = {"final_sigmas_type": "sigma_min", "solver_order": 1, **trailing}
    candidates = {
        "DPM-Solver++ 1": (_made(ds.DPMSolverMultistep, prediction, **sigma_min), {}),
        "DPM-Solver 1 (ε form)": (
            _made(ds.DPMSolverMultistep, prediction, algorithm_type="dpmsolver", **sigma_min),
            {},
        ),
        "DEIS 1": (_made(ds.DEIS, prediction, solver_order=1, **trailing), {}),
        "TCD γ = 0": (_made(ds.TCD, prediction, eta=0.0, **betas), custom),
    }
    assert _agree(candidates, reference, n) >= 3


@pytest.mark.parametrize(("prediction", "schedule", "n"), SETTINGS)
def test_ancestral_steps_are_ddim_at_eta_one(prediction, schedule, n):
    betas = _betas(schedule)
    trailing = {"timestep_spacing": "trailing", **betas}
    ddim = ds.DDIM(prediction_type=prediction, clip_denoised_sample=False, eta=1.0, **trailing)
    reference = _run(ddim, n)
    candidates = {
        "DDPM fixed_small": (
            _made(ds.DDPM, prediction, clip_denoised_sample=False, **trailing),
            {},
        ),
        "Euler ancestral": (_made(ds.EulerAncestral, prediction, **trailing), {}),
    }
    assert _agree(candidates, reference, n) >= 1


def test_the_identities_fail_where_the_methods_differ():
    """The comparison can fail: second-order DPM-Solver++ is not DDIM."""
    trailing = {"timestep_spacing": "trailing"}
    reference = _run(ds.DDIM(clip_denoised_sample=False, **trailing), 10)
    with pytest.raises(AssertionError):
        _agree({"DPM-Solver++ 2": (ds.DPMSolverMultistep(**trailing), {})}, reference, 10)


# ComfyUI's (k-diffusion's) stochastic samplers at η = 0 are their deterministic
# counterparts: the ancestral split with η = 0 has σ_up = 0 and σ_down = σ_next (Euler,
# DPM-2, the multistep RES); DPM-Solver++ SDE and SEEDS-2 at η = 0 are DPM-Solver++(2S)
# (Lu et al. 2022b, Alg. 1 with r = 1/2); the 2M SDE at η = 0 is DPM-Solver++(2M). On flow
# models ComfyUI's SDE variants take λ from α = 1 - σ where its 2S and 2M take -log σ, so
# the last three pairs are identities on ε and v models only (3e-4 to 5e-2 apart on flow,
# where each of the five samplers equals ComfyUI's own code to 4e-16).
COMFY_PAIRS = [
    ("euler_ancestral", "euler", ("eps", "v", "flow")),
    ("dpm_2_ancestral", "dpm_2", ("eps", "v", "flow")),
    ("res_multistep_ancestral", "res_multistep", ("eps", "v", "flow")),
    ("dpmpp_sde", "dpmpp_2s_ancestral", ("eps", "v")),
    ("seeds_2", "dpmpp_2s_ancestral", ("eps", "v")),
    ("dpmpp_2m_sde", "dpmpp_2m", ("eps", "v")),
]


@pytest.mark.parametrize("steps", [3, 8])
@pytest.mark.parametrize(
    ("stochastic", "deterministic", "model"),
    [(a, b, m) for a, b, models in COMFY_PAIRS for m in models],
)
def test_comfy_stochastic_samplers_at_eta_zero_are_their_ode_samplers(
    stochastic, deterministic, model, steps
):
    import dataclasses

    scheduler = "simple" if model == "flow" else "karras"

    def run(sched):
        state, timesteps = sched.init(steps, _X, 0)
        x = _X * sched.init_noise_scale(steps)
        for t in np.asarray(timesteps):
            state, x = sched.step(state, x, _model(x, t))
        return x

    def made(name):
        return ds.from_comfy(name, scheduler, model=model)

    eta_zero = dataclasses.replace(made(stochastic), eta=0.0)
    if deterministic == "dpmpp_2s_ancestral":
        reference = run(dataclasses.replace(made(deterministic), eta=0.0))
    else:
        reference = run(made(deterministic))
    got = run(eta_zero)
    err = float(np.abs(got - reference).max() / np.abs(reference).max())
    assert err < 1e-12, err  # observed 1.5e-15
