"""The adapter's ``sigmas`` (issue: diffusers pipelines read ``scheduler.sigmas[...]``):
for every class whose diffusers counterpart has ``sigmas``, the same list after the same
``set_timesteps`` (length, interleaving of the two-stage methods, final entries), float32,
compared with diffusers' own class of the same config; an AttributeError for the classes
whose diffusers counterpart has none.

Tolerance: diffusers computes its levels from a float32 cumulative product of ᾱ (ours is
float64), which loses digits where 1 - ᾱ is small: observed 8.3e-5 relative at σ ≈ 0.01
(8.3e-7 absolute), 1.3e-5 at σ ≈ 0.03 (3.8e-7 absolute), up to 2.3e-6 relative at the
middle levels and 1e-7 at σ_max = 157 (1.5e-5 absolute); the flow-matching levels agree
exactly. Hence |ours - theirs| <= 1e-5 |theirs| + 4e-6 (worst observed: 0.33 of it)."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffsched as ds  # noqa: E402
from diffsched.diffusers import DiffusersScheduler  # noqa: E402
from diffsched.interop import peer  # noqa: E402

RTOL, ATOL = 1e-5, 4e-6  # worst observed entry: 0.33 of the bound (see the module doc)
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
KARRAS = {**SD, "use_karras_sigmas": True}
TRAILING = {**SD, "timestep_spacing": "trailing"}

# diffusers class -> option variants (diffusers config keys) beside the default config
CASES = {
    "EulerDiscreteScheduler": [
        KARRAS,
        TRAILING,
        {**SD, "final_sigmas_type": "sigma_min"},
        # a grid one level longer than its calls (the last step lands on σ_min)
        {**SD, "interpolation_type": "log_linear"},
        {**SD, "interpolation_type": "log_linear", "final_sigmas_type": "sigma_min"},
    ],
    "EulerAncestralDiscreteScheduler": [TRAILING],
    "HeunDiscreteScheduler": [KARRAS, TRAILING],
    "LMSDiscreteScheduler": [KARRAS],
    "KDPM2DiscreteScheduler": [KARRAS, TRAILING],
    "KDPM2AncestralDiscreteScheduler": [TRAILING],
    "DPMSolverSDEScheduler": [KARRAS],
    # flow σ's on a noise model: the levels are flow σ's whatever the model predicts;
    # DEIS and SA-Solver repeat the last one there (diffusers' own tests,
    # test_flow_and_karras_sigmas_values)
    # a re-gridded loop (Karras, exponential, beta) ends with its grid's last level again:
    # its only level at one step (STEPS)
    "DEISMultistepScheduler": [
        KARRAS,
        TRAILING,
        {"use_flow_sigmas": True, "flow_shift": 3.0},
        {**SD, "use_exponential_sigmas": True},
        {**SD, "use_beta_sigmas": True, "prediction_type": "flow_prediction"},
    ],
    "DPMSolverMultistepScheduler": [
        KARRAS,
        {**SD, "final_sigmas_type": "sigma_min"},
        {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"},
    ],
    "DPMSolverMultistepInverseScheduler": [
        KARRAS,
        {**SD, "use_exponential_sigmas": True},
        {**SD, "lambda_min_clipped": -5.1},  # ends at the noisiest level the clip leaves
    ],
    "DPMSolverSinglestepScheduler": [KARRAS, TRAILING],
    "SASolverScheduler": [KARRAS, {"use_flow_sigmas": True}, {**SD, "use_beta_sigmas": True}],
    "UniPCMultistepScheduler": [
        KARRAS,
        TRAILING,
        {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"},
        {"use_flow_sigmas": True, "use_karras_sigmas": True, "sigma_min": 0.01, "sigma_max": 200.0},
        # final_sigmas_type="sigma_min" on a re-gridded loop: the grid's end, sigma_min here
        {**KARRAS, "final_sigmas_type": "sigma_min", "sigma_min": 0.02},
        {"use_flow_sigmas": True, "flow_shift": 1.3, "final_sigmas_type": "sigma_min"},
    ],
    "FlowMatchEulerDiscreteScheduler": [
        {"shift": 3.0},
        {"use_karras_sigmas": True},
        {"shift": 2.0, "invert_sigmas": True},  # the inverted loop ends at σ = 1
    ],
    "FlowMatchHeunDiscreteScheduler": [{"shift": 3.0}],
    "FlowMatchLCMScheduler": [{"shift": 3.0}, {"invert_sigmas": True, "use_karras_sigmas": True}],
    "LTXEulerAncestralRFScheduler": [{}],
    "EDMEulerScheduler": [{"sigma_schedule": "exponential"}, {"final_sigmas_type": "sigma_min"}],
    "EDMDPMSolverMultistepScheduler": [{"sigma_schedule": "exponential"}],
    "CosineDPMSolverMultistepScheduler": [{"sigma_schedule": "karras"}],
    "CMStochasticIterativeScheduler": [{"sigma_max": 40.0}],
    "MiniMaxH3Scheduler": [],
    "PiflowScheduler": [],
}
STEPS = (1, 4, 9)


def pair(name, config):
    """Our adapter and diffusers' own class of the same diffusers config."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = ds.from_config({"_class_name": name, **config})
        conf = {k: v for k, v in ours.to_config().items() if not k.startswith("_diffsched")}
        return DiffusersScheduler(ours), peer.diffusers_class(name).from_config(conf)


def compare(adapter, theirs):
    ours, want = adapter.sigmas, theirs.sigmas
    assert ours.dtype == want.dtype == torch.float32
    assert ours.shape == want.shape, (ours.shape, want.shape)
    assert bool(ours[-1] == 0) == bool(want[-1] == 0)  # the final entry: 0 or a level
    assert torch.allclose(ours.double(), want.double(), rtol=RTOL, atol=ATOL), (ours, want)


PARAMS = [
    pytest.param(name, config, id=f"{name}-{i}")
    for name, variants in CASES.items()
    for i, config in enumerate([{}, *variants])
]


@pytest.mark.parametrize(("name", "config"), PARAMS)
def test_sigmas_as_diffusers(name, config):
    adapter, theirs = pair(name, config)
    for steps in STEPS:
        if steps == 1 and name == "MiniMaxH3Scheduler":
            continue  # diffusers' MiniMax-H3 refuses one step
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs.set_timesteps(steps)
        adapter.set_timesteps(steps)
        compare(adapter, theirs)


@pytest.mark.parametrize(
    "name",
    ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
     "LMSDiscreteScheduler"],
)  # fmt: skip
def test_sigmas_before_set_timesteps(name):
    """diffusers' __init__ sets up the loop over every training step (its sigmas too)."""
    compare(*pair(name, SD))


def test_sigmas_before_set_timesteps_is_an_error_elsewhere():
    adapter, _ = pair("DPMSolverMultistepScheduler", SD)
    with pytest.raises(RuntimeError, match="call set_timesteps before reading sigmas"):
        _ = adapter.sigmas


def test_sigmas_on_the_timesteps_device():
    adapter, _ = pair("EulerDiscreteScheduler", SD)
    adapter.set_timesteps(4, device="meta")
    assert adapter.sigmas.device == adapter.timesteps.device


@pytest.mark.parametrize(
    "name",
    ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LCMScheduler", "TCDScheduler",
     "DDIMInverseScheduler", "IPNDMScheduler"],
)  # fmt: skip
def test_no_sigmas_where_diffusers_has_none(name):
    adapter, theirs = pair(name, SD)
    adapter.set_timesteps(4)
    theirs.set_timesteps(4)
    assert not hasattr(theirs, "sigmas")
    with pytest.raises(AttributeError, match=name):
        _ = adapter.sigmas
    assert not hasattr(adapter, "sigmas")


# classes with diffusers sigmas whose adapter sets them in its protocol (tested with their
# pipelines) or does not provide them (an AttributeError that says why)
PROTOCOL = {"ScoreSdeVeScheduler", "FlowMapEulerDiscreteScheduler"}
LEFT = {"HeliosScheduler", "HeliosDMDScheduler"}


def test_every_class_is_covered():
    """Every adapter class whose diffusers counterpart has sigmas is compared above (or
    set by its protocol, or listed as left); the others raise an AttributeError."""
    for name in ds.SCHEDULERS:
        if name is None or name in CASES or name in PROTOCOL:
            continue
        adapter, theirs = pair(name, {})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                theirs.set_timesteps(4)
            except (ValueError, TypeError, KeyError):
                theirs = None  # a staged or two-step class: judged by its __init__
        # (ScoreSdeVp's attribute is None: it never sets one)
        has = getattr(theirs, "sigmas", None) is not None if theirs is not None else name in LEFT
        assert has == (name in LEFT), name
        with pytest.raises(AttributeError, match=name):
            _ = adapter.sigmas


def test_churn_moves_the_calls_not_the_grid():
    """Euler's churn calls the model at σ̂ = (1 + γ) σ; diffusers' ``sigmas`` and ``add_noise``
    keep the grid's σ (found by random API calls: ours listed, and noised to, σ̂)."""
    sched = ds.Euler(**{k: v for k, v in SD.items() if k != "beta_schedule"},
                     beta_schedule="quadratic", s_churn=1.0, s_tmin=0.5, s_tmax=20.0)  # fmt: skip
    config = sched.to_config()
    adapter, theirs = DiffusersScheduler.from_config(config), peer.scheduler(config)
    for n in (3, 7):
        adapter.set_timesteps(n)
        theirs.set_timesteps(n)
        compare(adapter, theirs)
        assert sched.program(n).coefs.shape[0] == n + 1  # (the churn is in the calls)
        x = torch.ones(1, 2, dtype=torch.float64)
        for t in theirs.timesteps:
            want = theirs.add_noise(x, x, t.reshape(1))
            assert torch.allclose(adapter.add_noise(x, x, t.reshape(1)), want, rtol=RTOL), t
