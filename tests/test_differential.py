"""Differential fuzz against diffusers: seeded random configs, every mirrored class.

The parity grids (``test_parity*.py``) cover every option value at hand-picked points;
this draws the *combinations*: for each class that mirrors a diffusers scheduler, a fixed
set of random configs (each option set with probability 1/2, to a value from its choices
or a realistic range) and step counts, run by our class and by diffusers (float64 tables,
the same start, model and noise draws; see ``sigma_parity``). The properties:

* both loops call the model at the same timesteps (diffusers' at stock diffusers' float32
  values where its are float32: ``peer.run`` rounds the float64 tables' to them) and end within
  1e-6 (relative, float64; 1e-5 for the EDM classes, whose Karras grid is float32 as stock
  diffusers builds it);
* where diffusers raises or returns NaN / inf, ours is finite (or refuses the config with
  a named reason);
* ours refuses a config that diffusers runs only for the documented reasons below;
* through the adapter (``DiffusersScheduler``, driven as a pipeline drives diffusers'
  class: ``set_timesteps``, ``scale_model_input``, ``step`` with a generator and the
  step-time options), the same final sample and the generator left in the same state.

Known, documented departures are excluded case by case, each with its reason:

* ``DPMSolverMultistepInverse`` with repeated integer timesteps (Karras levels rounded
  to one timestep): diffusers drops the repeat but not its level, misaligning every later
  call; ours drops both (class docstring).
* ``EDMDPMSolverMultistep``'s stochastic variant with ``final_sigmas_type="sigma_min"`` on
  a grid whose last level already is σ_min: the last step has h = 0, where diffusers' noise
  weight sqrt(1 - e^{-2h}) amplifies its float32 rounding of h (1e-7 -> 4e-4, or NaN where
  the rounding makes h < 0); ours adds no noise on a step of zero length.
* ε-prediction on zero terminal SNR: the first call has no x̂_0 (ᾱ = 0); diffusers divides
  by zero and clips the infinities to ±clip_sample_range (a sign pattern); ours refuses.

``DIFFSCHED_DIFFERENTIAL=N`` runs N configs per class instead of the CI budget, and
``DIFFSCHED_DIFFERENTIAL_SEED=S`` draws another set (CI's is the default seed).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import warnings

import numpy as np
import oracle
import pytest
import sigma_parity
import torch

import diffsched as ds
from diffsched.core.options import specs
from diffsched.diffusers import DiffusersScheduler
from diffsched.interop import peer

NAMES = [
    "DDIM", "DDIMInverse", "DDIMParallel", "DDPM", "DDPMParallel", "LCM", "PNDM", "TCD",
    "DPM2", "DPM2Ancestral", "EDMEuler", "Euler", "EulerAncestral", "Heun", "IPNDM", "LMS",
    "DEIS", "DPMSolverMultistep", "DPMSolverMultistepInverse", "DPMSolverSinglestep",
    "EDMDPMSolverMultistep", "SASolver", "UniPC", "FlowMatchEuler", "FlowMatchHeun",
    "FlowMatchLCM",
]  # fmt: skip
EXAMPLES = int(os.environ.get("DIFFSCHED_DIFFERENTIAL", "6"))
SEED = os.environ.get("DIFFSCHED_DIFFERENTIAL_SEED", "differential")
STEPS = (1, 2, 3, 4, 5, 7, 10, 13, 20, 25)
# options left at their defaults: arrays, seeds, the dynamic shift (needs mu at init)
FIXED = {
    "trained_betas", "noise_grid", "scale_factors", "noise_sampler_seed", "solver_p",
    "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len",
    "use_dynamic_shifting",
}  # fmt: skip
RESCALED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas",
            "use_lu_lambdas")  # fmt: skip


def realistic(r: random.Random, name: str):
    """A value of a numeric option within the range real configs use, or None."""
    ranges = {
        "num_train_steps": lambda: r.choice([1000, 1000, 500, 100]),
        "beta_start": lambda: 10 ** r.uniform(-5, -2.7),
        "beta_end": lambda: r.uniform(0.005, 0.025),
        "timesteps_offset": lambda: r.choice([0, 1]),
        "clip_sample_range": lambda: r.uniform(0.5, 3),
        "dynamic_thresholding_ratio": lambda: r.uniform(0.9, 0.999),
        "sample_max_value": lambda: r.uniform(0.5, 3),
        "eta": lambda: r.choice([0.0, r.uniform(0, 1)]),
        "s_churn": lambda: r.choice([0.0, r.uniform(0, 2)]),
        "s_tmin": lambda: r.uniform(0, 1),
        "s_tmax": lambda: r.choice([math.inf, r.uniform(1, 20)]),
        "s_noise": lambda: r.uniform(0.9, 1.1),
        "sigma_min": lambda: 10 ** r.uniform(-3, -1),
        "sigma_max": lambda: r.uniform(10, 120),
        "sigma_data": lambda: r.uniform(0.3, 1.0),
        "rho": lambda: r.uniform(3, 9),
        "solver_order": lambda: r.randint(1, 3),
        "predictor_order": lambda: r.randint(1, 4),
        "corrector_order": lambda: r.randint(1, 4),
        "tau": lambda: r.choice([0.0, r.uniform(0, 1)]),
        "flow_shift": lambda: r.uniform(0.5, 6),
        "shift": lambda: r.uniform(0.5, 6),
        "shift_terminal": lambda: r.choice([None, r.uniform(0.02, 0.5)]),
        "lambda_min_clipped": lambda: r.choice([-math.inf, -5.1]),
        "disable_corrector": lambda: tuple(sorted(r.sample(range(4), r.randint(0, 2)))),
        "num_original_steps": lambda: r.choice([50, 25, 100]),
        "boundary_condition_timestep_scale": lambda: r.uniform(1, 20),
    }
    return ranges[name]() if name in ranges else None


def draw(r: random.Random, cls) -> dict:
    """Options of ``cls``: each diffusers-mapped option set with probability 1/2."""
    options = {}
    for name, (default, spec) in specs(cls).items():
        if name in FIXED or spec.diffusers_key is None or r.random() < 0.5:
            continue
        if spec.choices:
            # learned variances need a model with twice the channels (test_learned_variance)
            choices = [c for c in spec.choices if not str(c).startswith("learned")]
            if choices:
                options[name] = r.choice(choices)
        elif isinstance(default, bool):
            options[name] = r.random() < 0.5
        else:
            value = realistic(r, name)
            if value is not None or name == "shift_terminal":
                options[name] = value
    for name in [k for k in RESCALED if options.get(k)][1:]:  # diffusers takes one at most
        options[name] = False
    return options


def drawn(seed: str, examples: int):
    """(name, k, options, n, the generator) of each drawn config: ``examples`` per class,
    from the class's own stream of ``seed`` (the generator goes on to draw more)."""
    for name in NAMES:
        r = random.Random(f"{seed}-{name}")
        for k in range(examples):
            options, n = draw(r, getattr(ds, name)), r.choice(STEPS)
            yield name, k, options, n, r


def cases():
    return [
        pytest.param(name, options, n, id=f"{name}-{k}-N={n}")
        for name, k, options, n, _ in drawn(SEED, EXAMPLES)
    ]


def diffusers_loop(sched, n, start, model, noises):
    """(timesteps, final sample) of diffusers' loop, or None where it raises or ends
    non-finite."""
    name = type(sched).__name__
    context = (
        oracle.well_conditioned_dpm2_ancestral() if name == "DPM2Ancestral"
        else contextlib.nullcontext()
    )  # fmt: skip
    # grids diffusers builds at torch's default dtype: made float64 like its tables
    default = name == "IPNDM" or getattr(sched, "beta_schedule", None) == "sigmoid"
    try:
        with warnings.catch_warnings(), context, oracle.float64_default(default):
            warnings.simplefilter("ignore")
            timesteps, final = peer.run(sched.to_config(), model, start, n, noises=noises)
    except Exception:  # diffusers' own failure (ours must then be finite or refuse)
        return None
    return (timesteps, final) if torch.isfinite(final).all() else None


def departs(sched, n, timesteps) -> bool:
    """Whether the case is one of the documented departures (module docstring)."""
    name = type(sched).__name__
    if name == "DPMSolverMultistepInverse":
        return len(timesteps) < n  # a repeated timestep dropped with its level
    if name == "EDMDPMSolverMultistep" and not sched.deterministic:
        levels = sched._grid(n)[1]  # the N levels and the final one
        return levels[-1] > 0 and math.isclose(levels[-1], levels[-2], rel_tol=1e-6)
    return False


def bound(name: str) -> float:
    """The final samples' bound: 1e-6, but 1e-5 for the EDM classes, whose Karras grid is
    float32 as stock diffusers computes it, where the float64-table peer computes it in
    float64 (2e-6 apart at the lowest level; the stochastic solver's noise weight and a
    large sigma_max carry that to 1.0e-6 of the final sample: seed "final", 60 per class)."""
    return 1e-5 if name.startswith("EDM") else oracle.F64_BOUND


def made(name: str, options: dict):
    """``name(**options)``, or None where the config is refused (the messages are
    test_fuzz's and test_errors')."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getattr(ds, name)(**options)
    except (ValueError, TypeError):
        return None


@pytest.mark.parametrize(("name", "options", "n"), cases())
def test_random_config_equals_diffusers(name, options, n):
    sched = made(name, options)
    if sched is None:
        return
    start = oracle.start_sample()
    model = oracle.linear_tanh_model()
    noises = oracle.noise_list(max(3 * n + 3, 8))
    theirs = diffusers_loop(sched, n, start, model, noises)
    try:
        timesteps, ours, _ = sigma_parity.loop_ours(sched, n, start, model, noises)
    except ValueError as err:
        # a config diffusers runs is refused only for ε at zero terminal SNR
        assert theirs is None or "zero signal-to-noise" in str(err), err
        return
    ours = torch.as_tensor(ours)
    assert torch.isfinite(ours).all(), (options, n)
    if theirs is None or departs(sched, n, np.asarray(timesteps)):
        return
    their_timesteps, their_final = theirs
    # timesteps: ours are float32 where diffusers' float64 tables give float64 (flow grids
    # inverted near t = 0 differ by a float32 rounding of 1000 · σ)
    np.testing.assert_allclose(
        np.asarray(timesteps, dtype=np.float64),
        their_timesteps.to(torch.float64).numpy(),
        rtol=1e-5,
        atol=5e-4,
    )
    if float(their_final.norm()) == 0.0:  # a loop that ends at exactly 0 (IPNDM, N = 1)
        assert float(ours.norm()) == 0.0
        return
    oracle.check(ours, their_final, "DIFFERENTIAL", name, bound(name))


def pipeline_loop(scheduler, config, n, start, model):
    """(timesteps, final sample, the generator's next draws) of a pipeline's loop over
    ``scheduler`` (diffusers' class with float64 tables, or the adapter): seed 0, the
    step-time options passed to ``step`` as a pipeline passes them."""
    import inspect

    module = peer.module_of(config)
    theirs = not isinstance(scheduler, DiffusersScheduler)
    double = peer._double_tables(module) if theirs else contextlib.nullcontext()
    with double:
        scheduler.set_timesteps(n)
    if theirs:
        peer._double_grids(scheduler)
    # the model at stock diffusers' timesteps (float32 where its are), as ours passes them
    model_time = peer.stock_timestep(config, n, {}) if theirs else None
    generator = torch.Generator().manual_seed(0)
    kwargs = {peer.STEP_KWARGS.get(k, k): v for k, v in (config.get("_diffsched") or {}).items()}
    if "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = generator
    flow = config["_class_name"].startswith("FlowMatch")  # no input scaling in diffusers
    x = start if flow else start * scheduler.init_noise_sigma
    double = peer._double_tables(module) if theirs else contextlib.nullcontext()
    with double:
        for t in scheduler.timesteps:
            inp = x if flow else scheduler.scale_model_input(x, t)
            step_t = int(t) if config["_class_name"] == "LCMScheduler" else t
            out = model(inp, t if model_time is None else model_time(t))
            x = scheduler.step(out, step_t, x, **kwargs).prev_sample
    return scheduler.timesteps, x, torch.randn(4, generator=generator, dtype=torch.float32)


@pytest.mark.parametrize(("name", "options", "n"), cases())
def test_random_config_through_the_adapter(name, options, n):
    sched = made(name, options)
    if sched is None:
        return
    config = sched.to_config()
    start, model = oracle.start_sample(), oracle.linear_tanh_model()
    sigmoid = getattr(sched, "beta_schedule", None) == "sigmoid"

    def context():
        if name == "DPM2Ancestral":
            return oracle.well_conditioned_dpm2_ancestral()
        return contextlib.nullcontext()

    try:
        with (
            warnings.catch_warnings(),
            context(),
            oracle.float64_default(name == "IPNDM" or sigmoid),
        ):
            warnings.simplefilter("ignore")
            theirs = pipeline_loop(peer.scheduler(config), config, n, start, model)
    except Exception:
        theirs = None  # diffusers' own failure
    if theirs is None or not torch.isfinite(theirs[1]).all():
        return
    try:
        with warnings.catch_warnings(), context():
            warnings.simplefilter("ignore")
            ours = pipeline_loop(DiffusersScheduler.from_config(config), config, n, start, model)
    except ValueError as err:
        assert "zero signal-to-noise" in str(err), err  # the one documented refusal
        return
    if departs(sched, n, np.asarray(ours[0])):
        return
    np.testing.assert_allclose(
        np.asarray(ours[0], np.float64), theirs[0].to(torch.float64).numpy(), rtol=1e-5, atol=5e-4
    )
    assert torch.equal(ours[2], theirs[2]), "the generator is not where diffusers leaves it"
    if float(theirs[1].norm()) == 0.0:
        assert float(ours[1].norm()) == 0.0
        return
    oracle.check(ours[1], theirs[1], "DIFFERENTIAL adapter", name, bound(name))


# -- found by these comparisons -------------------------------------------------------------

# quadratic betas on which exp(log σ_max) lands an ulp below the top training level: its
# timestep 998.99999... truncated to 998 where diffusers calls the model at 999 (seed 5151)
ULP_BELOW_THE_TOP = {
    "beta_schedule": "quadratic",
    "beta_start": 0.0006951817842214607,
    "beta_end": 0.02374510604578722,
}


@pytest.mark.parametrize("name", ["DPMSolverMultistep", "UniPC", "DEIS", "SASolver"])
@pytest.mark.parametrize("kind", ["use_exponential_sigmas", "use_beta_sigmas", "use_karras_sigmas"])
def test_a_converted_grid_starts_at_the_top_timestep(name, kind):
    sched = getattr(ds, name)(**ULP_BELOW_THE_TOP, **{kind: True})
    theirs = peer.scheduler(sched.to_config(), float64=True)
    for n in (5, 25):
        timesteps = np.asarray(sched.init(n, np.zeros((1, 2)), 0)[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs.set_timesteps(n)
        assert timesteps[0] == 999, (n, timesteps[:3])
        assert np.array_equal(timesteps, theirs.timesteps.numpy()), n


# a steep schedule's top (squared cosine, σ up to 2e4) on fractional timesteps: stock
# diffusers calls the model at float32 timesteps (998.9440918), as ours does, where the
# float64 tables give 998.9440648; with the model called there the loops were 1.08e-6 apart
# (seed 20261208), now 6e-11: the peer passes the model stock's timesteps (``peer.run``)
STEEP_TOP = {
    "beta_schedule": "squared_cosine",
    "beta_end": 0.02354138781993895,
    "prediction_type": "sample",
    "timestep_spacing": "trailing",
    "use_beta_sigmas": True,
}


@pytest.mark.parametrize("name", ["Heun", "Euler", "LMS"])
def test_the_model_is_called_at_stock_diffusers_timesteps(name):
    sched = getattr(ds, name)(**STEEP_TOP)
    start, model, noises = oracle.start_sample(), oracle.linear_tanh_model(), oracle.noise_list(18)
    seen = []

    def recording(x, t):
        seen.append(float(t))
        return model(x, t)

    their_timesteps, theirs = peer.run(sched.to_config(), recording, start, 5, noises=noises)
    timesteps, ours, _ = sigma_parity.loop_ours(sched, 5, start, model, noises)
    # stock's timesteps are float32: the float64 tables' rounded, as ours
    assert seen == their_timesteps.float().double().tolist() == np.asarray(timesteps).tolist()
    assert oracle.rel(torch.as_tensor(ours), theirs) < 1e-9
