"""Our schedulers against diffusers 0.42.1 (the oracle), over a grid of options and step counts.

Every option value of every scheduler is covered at least once, each with a few step counts
from the smallest valid one up to 1000; the grid is not a cartesian product. Both loops run
on the same float64 start, with the same model and the same injected noise; diffusers'
tables are built in float64 (see ``oracle.scheduler``). The largest relative difference per
scheduler is printed at the end of the run (``PARITY max rel diff: ...``).
"""

from __future__ import annotations

import dataclasses

import diffusers
import numpy as np
import oracle
import pytest
import torch

import diffsched as ds
from diffsched.core.options import diffusers_options

F64_BOUND, F32_BOUND = oracle.F64_BOUND, oracle.F32_BOUND  # 1e-6, 1e-4

# Explicit betas of no named schedule (cubic in t), to exercise ``trained_betas``.
TRAINED = tuple(float(b) for b in np.linspace(0.0001 ** (1 / 3), 0.02 ** (1 / 3), 1000) ** 3)
# Dynamic thresholding that actually thresholds: s ranges over [1, 3], not clamped to 1.
THRESHOLD = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 3.0}
SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}
ZERO_SNR_V = {"rescale_betas_zero_snr": True, "prediction_type": "angular_velocity"}

# (scheduler, step counts, LCM strength, extra diffusers config keys)
DDIM_CASES = [
    (ds.DDIM(), (1, 2, 3, 10, 50, 99, 250, 1000)),
    (ds.DDIM(**SD, timesteps_offset=1, alpha_clip_strategy="alpha_zero"), (1, 7, 20, 50, 500)),
    (
        ds.DDIM(
            beta_schedule="squared_cosine", timestep_spacing="linspace", clip_denoised_sample=False
        ),
        (1, 3, 25, 200, 1000),
    ),
    (ds.DDIM(trained_betas=TRAINED, timestep_spacing="trailing"), (1, 5, 20, 333, 1000)),
    (ds.DDIM(prediction_type="sample", rederive_noise=True, eta=0.5), (1, 2, 10, 100, 999)),
    (
        ds.DDIM(prediction_type="angular_velocity", clip_denoised_sample=False, eta=1.0),
        (1, 10, 100, 1000),
    ),
    (ds.DDIM(**THRESHOLD, timestep_spacing="trailing"), (1, 4, 30, 150)),
    (ds.DDIM(**THRESHOLD, prediction_type="sample", eta=0.3, rederive_noise=True), (3, 20, 64)),
    (
        ds.DDIM(**ZERO_SNR_V, timestep_spacing="trailing", clip_denoised_sample=False),
        (1, 2, 10, 50, 1000),
    ),
    (
        ds.DDIM(**ZERO_SNR_V, **SD, timesteps_offset=1, rederive_noise=True, eta=1.0),
        (1, 3, 25, 100),
    ),
    (ds.DDIM(**ZERO_SNR_V, **THRESHOLD, timestep_spacing="linspace"), (2, 5, 40, 1000)),
    (
        ds.DDIM(
            clip_sample_range=2.0, alpha_clip_strategy="alpha_zero", eta=1.0, rederive_noise=True
        ),
        (2, 4, 64, 500),
    ),
    (ds.DDIM(num_train_steps=500, beta_end=0.03, timestep_spacing="trailing"), (1, 13, 500)),
]
PNDM_CASES = [
    (ds.PNDM(), (4, 5, 6, 10, 50, 99, 250, 1000)),
    (ds.PNDM(reduce_warmup=True), (2, 3, 4, 5, 10, 100, 1000)),
    (ds.PNDM(**SD, timesteps_offset=1, reduce_warmup=True), (2, 20, 50, 500)),  # Stable Diffusion
    (
        ds.PNDM(
            beta_schedule="squared_cosine", timestep_spacing="linspace", alpha_clip_strategy="one"
        ),
        (4, 9, 100, 1000),
    ),
    (
        ds.PNDM(trained_betas=TRAINED, timestep_spacing="trailing", reduce_warmup=True),
        (1, 2, 7, 333),
    ),
    (ds.PNDM(prediction_type="angular_velocity", timestep_spacing="trailing"), (4, 7, 13, 1000)),
    (
        ds.PNDM(**SD, prediction_type="angular_velocity", timesteps_offset=1, reduce_warmup=True),
        (2, 3, 25, 200),
    ),
    (
        ds.PNDM(
            prediction_type="angular_velocity",
            timestep_spacing="linspace",
            alpha_clip_strategy="one",
        ),
        (4, 6, 60),
    ),
    (ds.PNDM(timesteps_offset=1, timestep_spacing="trailing"), (4, 17)),
    (ds.PNDM(num_train_steps=500, beta_schedule="quadratic", timesteps_offset=1), (4, 11, 250)),
]
LCM_CASES = [
    (ds.LCM(), (1, 2, 3, 4, 8, 20, 49, 50)),
    (ds.LCM(), (1, 3, 7, 25), 0.5),
    (ds.LCM(**ZERO_SNR_V), (1, 4, 16, 50)),
    (ds.LCM(**ZERO_SNR_V, **THRESHOLD), (1, 5, 25), 0.5),
    (
        ds.LCM(
            prediction_type="sample",
            beta_schedule="linear",
            beta_start=0.0001,
            beta_end=0.02,
            clip_denoised_sample=True,
        ),
        (1, 5, 20),
    ),
    (ds.LCM(**THRESHOLD), (1, 2, 8, 30)),
    (
        ds.LCM(
            beta_schedule="squared_cosine",
            alpha_clip_strategy="alpha_zero",
            clip_denoised_sample=True,
            clip_sample_range=1.5,
        ),
        (3, 10),
        0.5,
    ),
    (
        ds.LCM(
            trained_betas=TRAINED,
            prediction_type="angular_velocity",
            boundary_condition_timestep_scale=5.0,
        ),
        (1, 4, 16, 50),
    ),
    (ds.LCM(num_original_steps=1000), (1, 100, 999, 1000)),
    # LCMScheduler's spacing keys are never read by its set_timesteps: same result
    (ds.LCM(), (4,), None, {"steps_offset": 1, "timestep_spacing": "trailing"}),
]


def _describe(sched) -> str:
    default = type(sched)()
    parts = []
    for field in dataclasses.fields(sched):
        value = getattr(sched, field.name)
        if value != getattr(default, field.name):
            parts.append(
                f"{field.name}=trained"
                if field.name == "trained_betas"
                else f"{field.name}={value}"
            )
    return ",".join(parts) or "default"


def _grid(cases):
    params = []
    for case in cases:
        sched, steps, strength, extra = (*case, None, None)[:4]
        for n in steps:
            label = f"{type(sched).__name__}[{_describe(sched)}]"
            if strength is not None:
                label += f"-strength={strength}"
            if extra:
                label += "-" + ",".join(f"{k}={v}" for k, v in extra.items())
            params.append(pytest.param(sched, n, strength, extra, id=f"{label}-N={n}"))
    return params


def _noisy(sched) -> bool:
    return isinstance(sched, ds.LCM) or getattr(sched, "eta", 0.0) > 0


def compare(sched, n, *, strength=None, extra=None, dtype=torch.float64, config=None):
    """(ours, diffusers') final samples of an n-step loop; asserts identical timesteps."""
    x = oracle.start_sample(dtype=dtype)
    model = oracle.linear_tanh_model()
    noises = oracle.noise_list(n, dtype=dtype) if _noisy(sched) else None
    config = dict(sched.to_config() if config is None else config) | (extra or {})
    ts, ours = oracle.run_ours(sched, n, x, model, noises=noises, strength=strength)
    theirs_ts, theirs = oracle.run_diffusers(
        config,
        n,
        x,
        model,
        eta=getattr(sched, "eta", 0.0),
        rederive=getattr(sched, "rederive_noise", False),
        noises=noises,
        strength=strength,
        float64=dtype == torch.float64,
    )
    assert isinstance(ts, torch.Tensor)
    assert ts.tolist() == theirs_ts.tolist()
    assert ours.dtype == theirs.dtype == dtype
    assert ours.shape == x.shape
    assert torch.isfinite(theirs).all()
    # the loop moved the sample: a match is not the trivial one
    assert oracle.rel(theirs, x) > 1e-3
    return ours, theirs


@pytest.mark.parametrize(
    ("sched", "n", "strength", "extra"), _grid(DDIM_CASES) + _grid(PNDM_CASES) + _grid(LCM_CASES)
)
def test_parity_float64(sched, n, strength, extra):
    ours, theirs = compare(sched, n, strength=strength, extra=extra)
    oracle.check(ours, theirs, "PARITY", type(sched).__name__, F64_BOUND)


def test_grid_covers_every_option_value():
    """The grid above reaches every value of every option (guards against edits of it)."""
    seen = oracle.values_seen(DDIM_CASES + PNDM_CASES + LCM_CASES)
    for case in DDIM_CASES + PNDM_CASES + LCM_CASES:
        if len(case) > 2 and case[2] is not None:
            seen.setdefault(f"{type(case[0]).__name__}.strength", set()).add(case[2])
    for name in ("DDIM", "PNDM", "LCM"):
        cls = getattr(ds, name)
        assert set(cls.PREDICTION_TYPES) <= seen[f"{name}.prediction_type"]
        assert {"linear", "quadratic", "squared_cosine"} <= seen[f"{name}.beta_schedule"]
        assert {True, False} <= seen[f"{name}.trained_betas"]
        assert {"one", "alpha_zero"} <= seen[f"{name}.alpha_clip_strategy"]
        assert 1000 in seen[f"{name}.steps"]
    for name in ("DDIM", "PNDM"):
        assert {0, 1} <= seen[f"{name}.timesteps_offset"]
        assert {"leading", "linspace", "trailing"} <= seen[f"{name}.timestep_spacing"]
    for name in ("DDIM", "LCM"):
        assert {True, False} <= seen[f"{name}.clip_denoised_sample"]
        assert True in seen[f"{name}.thresholding"]
        assert {True, False} <= seen[f"{name}.rescale_betas_zero_snr"]
    assert {0.0} < seen["DDIM.eta"] and True in seen["DDIM.rederive_noise"]
    assert {True, False} <= seen["PNDM.reduce_warmup"]
    # the smallest valid step counts: 1, except PNDM 4 (F-PNDM)
    assert 1 in seen["DDIM.steps"] and 1 in seen["LCM.steps"]
    assert min(n for c in PNDM_CASES if not c[0].reduce_warmup for n in c[1]) == 4
    assert min(n for c in PNDM_CASES if c[0].reduce_warmup for n in c[1]) == 1
    assert {0.5} <= seen["LCM.strength"]


# -- float32: our float32 loop against diffusers' plain float32 scheduler -------------------

F32_CASES = [
    (ds.DDIM(), 50),
    (ds.DDIM(clip_denoised_sample=False, beta_schedule="squared_cosine"), 1000),
    (ds.DDIM(**SD, eta=1.0), 100),
    (ds.DDIM(**THRESHOLD), 20),
    (ds.DDIM(**ZERO_SNR_V, timestep_spacing="trailing"), 25),
    (ds.PNDM(), 50),
    (ds.PNDM(reduce_warmup=True, beta_schedule="squared_cosine"), 1000),
    (ds.PNDM(prediction_type="angular_velocity"), 20),
    (ds.LCM(), 4),
    (ds.LCM(**ZERO_SNR_V), 8),
    (ds.LCM(num_original_steps=1000), 1000),
]


@pytest.mark.parametrize(
    ("sched", "n"),
    F32_CASES,
    ids=[f"{type(s).__name__}[{_describe(s)}]-N={n}" for s, n in F32_CASES],
)
def test_parity_float32(sched, n):
    ours, theirs = compare(sched, n, dtype=torch.float32)
    oracle.check(ours, theirs, "PARITY float32", type(sched).__name__, F32_BOUND)


# -- the training tables ------------------------------------------------------------------

TABLE_CASES = [
    (cls, options, zero_snr)
    for cls in (ds.DDIM, ds.PNDM, ds.LCM)
    for options in (
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        SD,
        {"beta_schedule": "squared_cosine"},
        {"trained_betas": TRAINED},
    )
    for zero_snr in ((False,) if cls is ds.PNDM else (False, True))
]


@pytest.mark.parametrize(("cls", "options", "zero_snr"), TABLE_CASES)
def test_tables_match_diffusers_float32(cls, options, zero_snr):
    """diffusers' own float32 betas and ᾱ against ours (float64) at float32 precision."""
    kwargs = {"rescale_betas_zero_snr": True} if zero_snr else {}
    sched = cls(**options, **kwargs)
    d = oracle.scheduler(sched.to_config(), float64=False)
    assert d.alphas_cumprod.dtype == torch.float32
    theirs_acp = d.alphas_cumprod.double().numpy()
    theirs_betas = d.betas.double().numpy()
    acp, betas = sched.alphas_cumprod, sched.betas
    assert acp.dtype == betas.dtype == np.float64 and acp.shape == (1000,)
    # float32 precision, accumulated: a cumulative product of 1000 float32 factors (up to
    # ~3e-5 relative at the tiny tail of ᾱ; more where zero-SNR rescaling cancels), and
    # zero-SNR betas are 1 - ᾱ_t/ᾱ_{t-1} of such values.
    np.testing.assert_allclose(acp, theirs_acp, rtol=0, atol=2e-6)
    np.testing.assert_allclose(acp[:10], theirs_acp[:10], rtol=1e-6)
    positive = acp > 0
    np.testing.assert_allclose(acp[positive], theirs_acp[positive], rtol=1e-4 if zero_snr else 3e-5)
    if zero_snr:
        assert acp[-1] == 0.0 and theirs_acp[-1] == 0.0
        np.testing.assert_allclose(betas, theirs_betas, rtol=0, atol=2e-5)
    else:
        np.testing.assert_allclose(betas, theirs_betas, rtol=1e-6)
    final = 1.0 if sched.alpha_clip_strategy == "one" else acp[0]
    assert sched.final_alpha_cumprod == final
    assert abs(float(d.final_alpha_cumprod) - final) < 1e-7


@pytest.mark.parametrize("cls", [ds.DDIM, ds.PNDM, ds.LCM])
def test_float64_oracle_tables_match_ours(cls):
    """The oracle's float64 trick really gives double-precision tables (else 1e-6 is moot)."""
    for options in ({}, {"beta_schedule": "squared_cosine"}, {"trained_betas": TRAINED}):
        sched = cls(**options)
        d = oracle.scheduler(sched.to_config())
        assert d.alphas_cumprod.dtype == torch.float64
        np.testing.assert_allclose(d.alphas_cumprod.numpy(), sched.alphas_cumprod, rtol=1e-13)


def test_thresholding_is_exercised():
    """The thresholding cases differ from plain clipping, so the quantile path is tested."""
    x = oracle.start_sample()
    model = oracle.linear_tanh_model()
    _, thresholded = oracle.run_ours(ds.DDIM(**THRESHOLD), 20, x, model)
    _, clipped = oracle.run_ours(ds.DDIM(), 20, x, model)
    _, as_clip = oracle.run_ours(ds.DDIM(**(THRESHOLD | {"sample_max_value": 1.0})), 20, x, model)
    assert oracle.rel(thresholded, clipped) > 1e-3
    # s clamped to [1, 1] is clipping to [-1, 1]
    assert oracle.rel(as_clip, clipped) < 1e-14


# -- default configs ----------------------------------------------------------------------

# Mapped keys where our default (the seed system's) differs from diffusers' class default.
EXPECTED_DEFAULT_DIFFERENCES = {"DDIM": set(), "PNDM": set(), "LCM": set()}
# diffusers config keys with no option of ours (LCMScheduler never reads these two).
EXPECTED_UNMAPPED = {"DDIM": set(), "PNDM": set(), "LCM": {"steps_offset", "timestep_spacing"}}


@pytest.mark.parametrize("cls", [ds.DDIM, ds.PNDM, ds.LCM])
def test_default_config_against_diffusers_defaults(cls):
    ours = cls().to_config()
    theirs = dict(getattr(diffusers, ours["_class_name"])().config)
    mapped = {k for k in ours if not k.startswith("_")}
    assert mapped == {key for _, key, _, _ in diffusers_options(cls)}
    assert mapped <= set(theirs)
    differ = {k for k in mapped if ours[k] != theirs[k]}
    assert differ == EXPECTED_DEFAULT_DIFFERENCES[cls.__name__]
    unmapped = {k for k in theirs if not k.startswith("_")} - mapped
    assert unmapped == EXPECTED_UNMAPPED[cls.__name__]


def test_default_values_pinned():
    """The seed system's defaults, spelled out."""
    ddim, pndm, lcm = ds.DDIM(), ds.PNDM(), ds.LCM()
    assert (ddim.beta_schedule, ddim.beta_start, ddim.beta_end) == ("linear", 0.0001, 0.02)
    assert ddim.clip_denoised_sample and ddim.alpha_clip_strategy == "one"
    assert (ddim.eta, ddim.rederive_noise, ddim.timesteps_offset) == (0.0, False, 0)
    assert pndm.alpha_clip_strategy == "alpha_zero" and not pndm.reduce_warmup
    assert pndm.to_config()["set_alpha_to_one"] is False
    assert pndm.to_config()["skip_prk_steps"] is False
    assert (lcm.beta_schedule, lcm.beta_start, lcm.beta_end) == ("quadratic", 0.00085, 0.012)
    assert not lcm.clip_denoised_sample and not lcm.thresholding
    assert (lcm.num_original_steps, lcm.boundary_condition_timestep_scale) == (50, 10.0)
    for s in (ddim, pndm, lcm):
        assert s.num_train_steps == 1000 and s.prediction_type == "noise"


@pytest.mark.parametrize(("cls", "n"), [(ds.DDIM, 10), (ds.PNDM, 10), (ds.LCM, 4)])
def test_default_loop_matches_diffusers_defaults(cls, n):
    """Our default instance against diffusers' class built with no arguments at all."""
    ours, theirs = compare(cls(), n, config={"_class_name": cls.DIFFUSERS_CLASS})
    oracle.check(ours, theirs, "PARITY", cls.__name__, F64_BOUND)
