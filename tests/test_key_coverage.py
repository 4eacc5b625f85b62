"""Every ``__init__`` key of every diffusers class diffsched maps (``ds.SCHEDULERS``,
diffusers 0.42.1): the option of ours it sets, or why it changes nothing here. A key with
neither fails, so a diffusers release that adds a key shows up here. The same for the
values a key takes: every value diffusers accepts (its ``Literal`` annotation, and the
values its code accepts beyond the annotation) loads, or is refused with the reason
written here. The keys added for this (``beta_schedule="laplace"`` for DDPM, ``"exp"`` for
Heun) are checked against diffusers (final sample within 1e-6 relative, float64).
"""

from __future__ import annotations

import inspect
import typing
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import oracle  # noqa: E402

import diffsched as ds  # noqa: E402
from diffsched.core.options import STEP_TIME, specs  # noqa: E402
from diffsched.interop import peer  # noqa: E402

# keys a class accepts that change nothing here (its INERT_KEYS), and why
INERT_WHY = {
    "CogVideoXDDIMScheduler": {
        k: "CogVideoXDDIMScheduler.step never reads it (no clipping or thresholding)"
        for k in ("clip_sample", "clip_sample_range", "sample_max_value")
    },
    "CogVideoXDPMScheduler": {
        k: "CogVideoXDPMScheduler.step never reads it (no clipping or thresholding)"
        for k in ("clip_sample", "clip_sample_range", "sample_max_value")
    },
    "SCMScheduler": {
        "num_train_timesteps": "only the timesteps before set_timesteps, which a loop "
        "never uses; sCM's timesteps are angles in [0, π/2]",
    },
    "ScoreSdeVeScheduler": {
        "num_train_timesteps": "ScoreSdeVeScheduler never reads it: its times are "
        "linspace(1, sampling_eps, N) whatever the training count",
    },
    "ScoreSdeVpScheduler": {
        "num_train_timesteps": "ScoreSdeVpScheduler reads it only in __len__: its times are "
        "linspace(1, sampling_eps, N)",
    },
    "LCMScheduler": {
        "steps_offset": "LCMScheduler.set_timesteps never reads it",
        "timestep_spacing": "LCMScheduler.set_timesteps never reads it",
    },
    "TCDScheduler": {
        "clip_sample": "TCDScheduler.step never clips",
        "clip_sample_range": "TCDScheduler.step never clips",
        "thresholding": "TCDScheduler.step never thresholds",
        "dynamic_thresholding_ratio": "TCDScheduler.step never thresholds",
        "sample_max_value": "TCDScheduler.step never thresholds",
        "set_alpha_to_one": "TCD's last step lands on its own x̂_0 (never reads it)",
        "steps_offset": "TCDScheduler.set_timesteps never reads it",
        "timestep_spacing": "TCDScheduler.set_timesteps never reads it",
        "timestep_scaling": "TCD has no boundary condition, the only reader",
    },
    "FlowMatchLCMScheduler": {
        "upscale_mode": "acts only together with scale_factors (which must be None here)",
    },
    "DDIMInverseScheduler": {
        "kwargs": "**kwargs carries set_alpha_to_zero, the old spelling of set_alpha_to_one "
        "(read through DIFFUSERS_ALIASES)",
    },
}
# values diffusers' code accepts beyond its annotation (found in its __init__)
EXTRA_VALUES = {
    ("DDPMScheduler", "beta_schedule"): ("laplace",),
    ("HeunDiscreteScheduler", "beta_schedule"): ("exp",),
}
PARTNER = {  # values that need another key to be valid in diffusers too
    ("DPMSolverMultistepScheduler", "algorithm_type", "dpmsolver"): {
        "final_sigmas_type": "sigma_min"
    },
    ("DPMSolverMultistepScheduler", "algorithm_type", "sde-dpmsolver"): {
        "final_sigmas_type": "sigma_min"
    },
    ("DPMSolverSinglestepScheduler", "algorithm_type", "dpmsolver"): {
        "final_sigmas_type": "sigma_min"
    },
}
# values refused with a clear error, and why (each alone: some need a partner option)
REFUSED_IN_CLASS = {
    ("DPMSolverSDEScheduler", "prediction_type", "sample"): (
        "diffusers' step raises NotImplementedError for it"
    ),
    ("CosineDPMSolverMultistepScheduler", "prediction_type", "sample"): (
        "diffusers' step raises ValueError for it (epsilon and v_prediction only)"
    ),
    ("DPMSolverMultistepInverseScheduler", "algorithm_type", "sde-dpmsolver"): (
        "a negative noise variance from data to noise (diffusers returns NaN)"
    ),
    ("DPMSolverMultistepInverseScheduler", "algorithm_type", "sde-dpmsolver++"): (
        "a negative noise variance from data to noise (diffusers returns NaN)"
    ),
    ("EDMDPMSolverMultistepScheduler", "prediction_type", "sample"): (
        "diffusers' precondition_outputs raises for it too"
    ),
}


def init_keys(name: str) -> dict[str, inspect.Parameter]:
    params = inspect.signature(peer.diffusers_class(name).__init__).parameters
    return {k: p for k, p in params.items() if k != "self"}


def coverage(name: str, cls) -> dict[str, str]:
    """{diffusers key: "option <ours>" or "inert: <why>"}; a key with neither is missing."""
    by_key = {s.diffusers_key: field for field, (_, s) in specs(cls).items()
              if s.diffusers_key not in (None, STEP_TIME)}  # fmt: skip
    out = {}
    for key in init_keys(name):
        if key in by_key:
            out[key] = f"option {by_key[key]}"
        elif key in cls.INERT_KEYS or key == "kwargs":
            why = INERT_WHY.get(name, {}).get(key)
            out[key] = f"inert: {why}" if why else "missing: inert without a reason"
        else:
            out[key] = "missing"
    return out


@pytest.mark.parametrize("name", sorted(ds.SCHEDULERS))
def test_every_init_key_is_explained(name):
    cls = ds.SCHEDULERS[name]
    table = coverage(name, cls)
    missing = {k: v for k, v in table.items() if v.startswith("missing")}
    assert not missing, f"{name}: keys without an option of ours or a reason: {missing}"
    # and no reason for a key diffusers does not have, or one our class does not drop
    stale = set(INERT_WHY.get(name, {})) - set(table)
    assert not stale, f"{name}: INERT_WHY names keys diffusers lacks: {stale}"
    undocumented = set(cls.INERT_KEYS) - set(INERT_WHY.get(name, {}))
    assert not undocumented, f"{name}: INERT_KEYS without a reason here: {undocumented}"


def accepted_values(name: str, key: str, param: inspect.Parameter) -> list:
    values = []
    for arg in (param.annotation, *typing.get_args(param.annotation)):
        if typing.get_origin(arg) is typing.Literal:
            values += list(typing.get_args(arg))
    return values + list(EXTRA_VALUES.get((name, key), ()))


@pytest.mark.parametrize("name", sorted(ds.SCHEDULERS))
def test_every_value_diffusers_accepts_loads(name):
    cls = ds.SCHEDULERS[name]
    for key, param in init_keys(name).items():
        for value in accepted_values(name, key, param):
            config = {"_class_name": name, key: value}
            config.update(PARTNER.get((name, key, value), {}))
            why = REFUSED_IN_CLASS.get((name, key, value))
            if why is not None:
                with pytest.raises(ValueError, match=key):
                    ds.from_config(config)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # an ignored key would warn
                sched = ds.from_config(config)
            assert isinstance(sched, cls)
            if key not in cls.INERT_KEYS:  # written back as read
                assert sched.to_config()[key] == value, (name, key, value)


def test_summary_counts():
    """The table as a whole: every key of every mapped class is an option or documented
    inert (at this writing 383 keys mapped to options and 13 inert, over 29 classes)."""
    kinds = {"option": 0, "inert": 0}
    for name, cls in ds.SCHEDULERS.items():
        for how in coverage(name, cls).values():
            kinds[how.split()[0].rstrip(":")] += 1
    assert kinds["inert"] == sum(len(v) for v in INERT_WHY.values())
    assert kinds["option"] == sum(len(init_keys(n)) for n in ds.SCHEDULERS) - kinds["inert"]


# -- the keys added: parity with diffusers -----------------------------------------------------

NEW_KEYS = [
    (ds.DDPM(beta_schedule="laplace"), (5, 30)),
    (ds.DDPM(beta_schedule="laplace", prediction_type="angular_velocity"), (12,)),
    (ds.Heun(beta_schedule="exponential"), (4, 10)),
    (ds.Heun(beta_schedule="exponential", use_karras_sigmas=True), (6,)),
]


@pytest.mark.parametrize(
    ("sched", "n"),
    [pytest.param(s, n, id=f"{type(s).__name__}-{s.beta_schedule}-{i}-N={n}")
     for i, (s, ns) in enumerate(NEW_KEYS) for n in ns],
)  # fmt: skip
def test_new_beta_schedules_match_diffusers(sched, n):
    x = oracle.start_sample()
    model = oracle.linear_tanh_model()
    noises = oracle.noise_list(2 * n + 2)
    # our loop starts at noise × init_noise_scale (the model input), diffusers' at
    # noise × init_noise_sigma (its native sample)
    program = sched.program(n)
    ts, ours = oracle.run_ours(
        sched, n, x * program.init_noise_scale, model,
        noises=None if sched.deterministic else noises,
    )  # fmt: skip
    their_ts, theirs = peer.run(
        sched.to_config(), model, x, n, noises=None if sched.deterministic else noises
    )
    np.testing.assert_allclose(np.asarray(ts, np.float64), their_ts.double().numpy(), rtol=1e-6)
    r = oracle.rel(ours, theirs)
    oracle.record("PARITY new keys", f"{type(sched).__name__}.{sched.beta_schedule}", r)
    assert r < 1e-6, r  # observed: about 1e-15


def test_laplace_table_matches_diffusers_float32():
    """The float32 ᾱ table diffusers builds (its betas in float32) agrees to float32."""
    for sched in (ds.DDPM(beta_schedule="laplace"), ds.Heun(beta_schedule="exponential")):
        theirs = peer.scheduler(sched.to_config(), float64=False).alphas_cumprod.double()
        np.testing.assert_allclose(sched.alphas_cumprod, theirs.numpy(), rtol=2e-5, atol=1e-9)
