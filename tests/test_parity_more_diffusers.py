"""The classes of issue 18 against diffusers 0.42.1, driven as their pipelines drive them.

Per class, a small grid of options (every option value at least once) and step counts: the
same start, the same model (``oracle.linear_tanh_model``, wrapped where the class's model
is a score or a σ-parameterised output), and diffusers' noise draws replayed into ours with
``noise=``. Final samples within 1e-6 relative in float64 (diffusers' tables in float64, see
``oracle.scheduler``), 1e-4 in float32 (against diffusers' plain float32 scheduler), and
the timesteps the model is called with equal. The largest difference per class is printed
at the end of the run (``PARITY ...``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from unittest import mock

import numpy as np
import oracle
import pytest
import torch

import diffsched as ds
from diffsched.interop import peer

F64_BOUND, F32_BOUND = oracle.F64_BOUND, oracle.F32_BOUND  # 1e-6, 1e-4


class Draws:
    """diffusers' ``randn_tensor`` replaced by a list of draws: ``at(i)`` sets the one it
    returns next (call i's), or the next one in order when ``at`` is never called."""

    def __init__(self, noises):
        self.noises, self.index, self.used = noises, None, []

    def at(self, i):
        self.index = i

    def __call__(self, shape, *args, **kwargs):
        i = self.index if self.index is not None else len(self.used)
        self.used.append(i)
        return self.noises[i]


# classes whose grids diffusers builds in torch's default dtype (linspace, torch.tensor of
# Python floats): float64 runs make that default float64, so their formulas run in double
# precision; ours are float64 throughout (the float32 grids agree to float32 precision)
DEFAULT_DTYPE_GRIDS = {
    "ScoreSdeVeScheduler", "DDPMWuerstchenScheduler", "KarrasVeScheduler", "ScoreSdeVpScheduler"
}  # fmt: skip


@contextlib.contextmanager
def patched(config, draws, float64):
    module = peer.module_of(config)
    double = peer._double_tables(module) if float64 else contextlib.nullcontext()
    default = contextlib.nullcontext()
    if float64 and config["_class_name"] in DEFAULT_DTYPE_GRIDS:
        default = oracle.float64_default()
    with double, default, mock.patch.object(module, "randn_tensor", draws, create=True):
        yield


def build(config, float64):
    if float64 and config["_class_name"] in DEFAULT_DTYPE_GRIDS:
        with oracle.float64_default():
            return peer.scheduler(config, float64=float64)
    return peer.scheduler(config, float64=float64)


# -- diffusers' loops, as each pipeline runs them; (timesteps the model saw, final sample) --


def run_score_sde_ve(config, n, x, model, noises, float64):
    d = build(config, float64)
    draws = Draws(noises)
    with patched(config, draws, float64):
        d.set_timesteps(n)
        d.set_sigmas(n)
        if float64:
            peer._double_grids(d)
        sample = x * d.init_noise_sigma
        seen, call = [], 0
        for i, t in enumerate(d.timesteps):
            sigma = d.sigmas[i]
            for _ in range(d.config.correct_steps):
                draws.at(call)
                seen.append(float(sigma))
                out = model(sample, sigma)
                sample = d.step_correct(out, sample).prev_sample
                call += 1
            draws.at(call)
            seen.append(float(sigma))
            output = d.step_pred(model(sample, sigma), t, sample)
            sample, mean = output.prev_sample, output.prev_sample_mean
            call += 1
    return seen, mean


def run_score_sde_vp(config, n, x, model, noises, float64):
    """ScoreSdeVp has no pipeline: the score SDE code's loop (``step_pred`` per time, the
    final sample the last mean)."""
    d = build(config, float64)
    draws = Draws(noises)
    model_time = peer.stock_timestep(config, n, {}) if float64 else None  # as run_indexed
    with patched(config, draws, float64):
        d.set_timesteps(n)
        sample, seen = x, []
        for i, t in enumerate(d.timesteps):
            draws.at(i)
            seen.append(float(t))
            out = model(sample, t if model_time is None else model_time(t))
            sample, mean = d.step_pred(out, sample, t)
    return seen, mean


def run_karras_ve(config, n, x, model, noises, float64):
    """Also returns the first model input (the start plus the first churn)."""
    d = build(config, float64)
    draws = Draws(noises)
    with patched(config, draws, float64):
        d.set_timesteps(n)
        sample = x * d.init_noise_sigma
        seen, first = [], None
        for i, t in enumerate(d.timesteps):
            sigma = d.schedule[t]
            prev = d.schedule[t - 1] if t > 0 else 0
            draws.at(i)
            hat, sigma_hat = d.add_noise_to_input(sample, sigma)
            first = hat if first is None else first
            seen.append(float(sigma_hat))
            out = d.step(model(hat, sigma_hat), sigma_hat, prev, hat)
            if prev != 0:
                seen.append(float(prev))
                out2 = model(out.prev_sample, prev)
                out = d.step_correct(out2, sigma_hat, prev, hat, out.prev_sample, out.derivative)
            sample = out.prev_sample
    return seen, sample, first


def run_indexed(config, n, x, model, noises, float64, *, pass_prev=False, set_kwargs=None):
    """Schedulers stepped once per model call (draw i at call i)."""
    d = build(config, float64)
    draws = Draws(noises)
    name = config["_class_name"]
    if name == "SCMScheduler":  # ours defaults to no intermediate angle
        set_kwargs = {"intermediate_timesteps": None, **(set_kwargs or {})}
    # the model at stock diffusers' timesteps (float32 where its are), as peer.run calls it
    # (ours passes float64 ones to some of these classes: a float32 rounding apart)
    model_time = peer.stock_timestep(config, n, set_kwargs or {}) if float64 else None
    with patched(config, draws, float64):
        d.set_timesteps(n, **(set_kwargs or {}))
        if float64:
            peer._double_grids(d)
        timesteps = d.timesteps
        if name == "DDPMWuerstchenScheduler":
            timesteps = timesteps[:-1]  # the Stable Cascade pipelines
        elif name == "SCMScheduler":
            if float64:  # its float32 angles (.float()), as float64: cos and sin in float64
                d.timesteps = d.timesteps.double()
            timesteps = d.timesteps[:-1]  # the Sana-Sprint pipeline
            d.set_begin_index(0)
        sample = x * d.init_noise_sigma
        if name == "SCMScheduler":
            sample = x * d.config.sigma_data
        for i, t in enumerate(timesteps):
            draws.at(i)
            inp = getattr(d, "scale_model_input", lambda x, t: x)(sample, t)
            kwargs = {}
            if pass_prev:
                kwargs["prev_timestep"] = None if i + 1 == len(timesteps) else timesteps[i + 1]
            step_t = t.reshape(1) if name == "DDPMWuerstchenScheduler" else t
            out = model(inp, t if model_time is None else model_time(t))
            sample = d.step(out, step_t, sample, **kwargs).prev_sample
    return [float(t) for t in timesteps], sample


def run_cogvideox_dpm(config, n, x, model, noises, float64, strength=None):
    """As ``CogVideoXPipeline``: the previous timestep and x̂_0 passed back to each step
    (both draws of a second-order step return draw i: the second is the one used)."""
    d = build(config, float64)
    draws = Draws(noises)
    with patched(config, draws, float64):
        d.set_timesteps(n)
        timesteps = d.timesteps
        sample, old = x, None
        for i, t in enumerate(timesteps):
            draws.at(i)
            back = timesteps[i - 1] if i > 0 else None
            sample, old = d.step(model(sample, t), old, t, back, sample, return_dict=False)
    return [float(t) for t in timesteps], sample


def run_repaint(config, n, x, model, float64, jump_length, jump_n_sample, image, mask):
    """As ``RePaintPipeline``, twice per call: with diffusers' draws and with zero draws
    (the deterministic part). Returns (model-call timesteps, final sample, the noise each
    call adds, as the one normal w ours takes): the difference of the two, over its
    per-element standard deviation from diffusers' own tables."""
    d = build(config, float64)
    g = torch.Generator().manual_seed(7)
    draws = lambda shape, *a, **k: torch.randn(shape, generator=g, dtype=x.dtype)  # noqa: E731
    zero = lambda shape, *a, **k: torch.zeros(shape, dtype=x.dtype)  # noqa: E731
    module = peer.module_of(config)
    double = peer._double_tables(module) if float64 else contextlib.nullcontext()
    with double:
        d.set_timesteps(n, jump_length, jump_n_sample)
        stride = d.config.num_train_timesteps // d.num_inference_steps
        seen, calls, sample = [], [], x
        t_last = d.timesteps[0] + 1
        for t in d.timesteps:
            if t < t_last:
                out = model(sample, t)
                with mock.patch.object(module, "randn_tensor", zero):
                    det = d.step(out, t, sample, image, mask).prev_sample
                with mock.patch.object(module, "randn_tensor", draws):
                    sample = d.step(out, t, sample, image, mask).prev_sample
                prev = int(t) - stride
                a_prev = d.alphas_cumprod[prev] if prev >= 0 else torch.tensor(1.0)
                sigma = d.eta * d._get_variance(int(t)) ** 0.5 if t > 0 and d.eta > 0 else 0.0
                calls.append({"det": det, "real": sample, "up": 1.0,
                              "kz": (1 - a_prev) ** 0.5, "uz": sigma})  # fmt: skip
                seen.append(int(t))
            else:
                call = calls[-1]
                with mock.patch.object(module, "randn_tensor", zero):
                    call["det"] = d.undo_step(call["det"], t_last)
                with mock.patch.object(module, "randn_tensor", draws):
                    sample = call["real"] = d.undo_step(sample, t_last)
                for i in range(stride):
                    call["up"] = call["up"] * float((1 - d.betas[int(t_last) + i]) ** 0.5)
            t_last = t
    replay = []
    for call in calls:
        a = call["up"]
        std = ((a * (mask * call["kz"] + (1 - mask) * call["uz"])) ** 2 + 1 - a**2) ** 0.5
        w = torch.where(std > 0, (call["real"] - call["det"]) / std, 0.0)  # the last call: 0
        replay.append(w.to(x.dtype))
    return seen, sample, replay


def run_ours(sched, n, x, model, noises, *, init_options=None, start=None, step_options=None):
    state, timesteps = sched.init(n, x, key=0, **(init_options or {}))
    y = x * sched.init_noise_scale(n, **(init_options or {})) if start is None else start
    for i, t in enumerate(timesteps):
        noise = None if sched.deterministic else noises[i]
        state, y = sched.step(state, y, model(y, t), noise=noise, **(step_options or {}))
    return [float(t) for t in timesteps], y


# -- the grid ----------------------------------------------------------------------------------


def score_model(base):
    """A score-like output: -x / (σ² + 1) plus the oracle's tanh map."""

    def model(x, sigma):
        return -x / (float(sigma) ** 2 + 1) + base(x, sigma)

    return model


# CogVideoX-5b's scheduler config (zero terminal SNR, v-prediction, trailing)
COGVIDEOX = {
    "rescale_betas_zero_snr": True,
    "prediction_type": "angular_velocity",
    "timestep_spacing": "trailing",
}
CASES = [
    (ds.ScoreSdeVe(), (1, 2, 5, 20)),
    (ds.ScoreSdeVe(correct_steps=0, sigma_max=50.0), (1, 3, 10, 100)),
    (ds.ScoreSdeVe(correct_steps=2, snr=0.3, sigma_min=0.05, sampling_eps=1e-3), (2, 7)),
    (ds.ScoreSdeVp(), (1, 2, 10, 100)),
    (ds.ScoreSdeVp(beta_min=0.5, beta_max=10.0, sampling_eps=1e-2), (3, 25)),
    (ds.KarrasVe(), (2, 3, 10, 50)),
    (ds.KarrasVe(sigma_min=0.1, sigma_max=5.0, s_churn=3.0, s_min=0.5, s_max=4.0), (2, 6, 25)),
    (ds.KarrasVe(sigma_max=10.0, s_churn=0.0, s_noise=1.0), (4, 12)),
    (ds.DDPMWuerstchen(), (1, 2, 10, 60)),
    (ds.DDPMWuerstchen(scaler=2.0, s=0.02), (3, 20)),
    (ds.DDPMWuerstchen(scaler=0.5), (4, 30)),
    (ds.UnCLIP(), (2, 3, 25, 1000)),
    (ds.UnCLIP(prediction_type="sample", clip_sample_range=10.0), (2, 10, 64)),
    (ds.UnCLIP(num_train_steps=500, clip_denoised_sample=False), (5, 100)),
    (ds.CMStochasticIterative(), (1, 2, 3, 10, 40)),
    (ds.CMStochasticIterative(num_train_steps=151, clip_denoised_sample=False), (1, 4, 17)),
    (
        ds.CMStochasticIterative(
            sigma_min=0.01, sigma_max=20.0, sigma_data=1.0, s_noise=0.9, rho=5.0
        ),
        (2, 8),
    ),
    (ds.ConsistencyDecoder(), (2,)),
    (ds.ConsistencyDecoder(sigma_data=0.8, num_train_steps=2000), (2,)),
    (ds.SCM(), (1, 2, 4, 16)),
    (ds.SCM(sigma_data=1.0), (3, 7)),
    (ds.CogVideoXDDIM(), (1, 2, 10, 50)),
    (ds.CogVideoXDDIM(**COGVIDEOX, snr_shift_scale=1.0), (1, 5, 50)),
    (ds.CogVideoXDDIM(timestep_spacing="linspace", prediction_type="sample"), (3, 20)),
    (ds.CogVideoXDDIM(beta_schedule="linear", alpha_clip_strategy="alpha_zero"), (4, 25)),
    (ds.CogVideoXDPM(), (1, 2, 10, 50)),
    (ds.CogVideoXDPM(**COGVIDEOX), (1, 2, 5, 50)),
    (ds.CogVideoXDPM(**COGVIDEOX, snr_shift_scale=1.0, timesteps_offset=0), (3, 20)),
    (ds.CogVideoXDPM(timesteps_offset=1, alpha_clip_strategy="alpha_zero"), (4, 25)),
    (ds.CogVideoXDPM(beta_schedule="squared_cosine", prediction_type="sample"), (3, 12)),
]
# init options given to both (diffusers' set_timesteps keywords)
INIT_CASES = [
    (ds.SCM(), 2, {"intermediate_timesteps": 1.3}),  # Sana-Sprint's two steps
    (ds.SCM(sigma_data=2.0), 3, {"max_timesteps": 1.2}),
    (ds.SCM(), 3, {"timesteps": [1.5, 1.1, 0.4, 0.0], "max_timesteps": None}),
]


def _params():
    out = []
    for i, (sched, steps) in enumerate(CASES):
        for n in steps:
            out.append(pytest.param(sched, n, None, id=f"{type(sched).__name__}{i}-N={n}"))
    for i, (sched, n, options) in enumerate(INIT_CASES):
        out.append(pytest.param(sched, n, options, id=f"{type(sched).__name__}-init{i}"))
    return out


def compare(sched, n, dtype, init_options=None, float64=True):
    """(ours timesteps, ours final, diffusers' timesteps, diffusers' final): ours in
    ``dtype``, diffusers' with float64 tables (or its plain float32 ones) on the same
    start and draws in float64."""
    config = sched.to_config()
    name = config["_class_name"]
    base = oracle.linear_tanh_model()
    model = score_model(base) if name == "ScoreSdeVeScheduler" else base
    x = oracle.start_sample(dtype=torch.float64 if float64 else dtype)
    calls = len(sched.init(n, x, **(init_options or {}))[1])
    noises = oracle.noise_list(calls + n + 1, dtype=x.dtype)
    start = None
    if name == "ScoreSdeVeScheduler":
        seen, theirs = run_score_sde_ve(config, n, x, model, noises, float64)
        ours_noises = noises
    elif name == "ScoreSdeVpScheduler":
        seen, theirs = run_score_sde_vp(config, n, x, model, noises, float64)
        ours_noises = noises
    elif name == "CogVideoXDPMScheduler":
        seen, theirs = run_cogvideox_dpm(config, n, x, model, noises, float64)
        ours_noises = noises
    elif name == "KarrasVeScheduler":
        seen, theirs, start = run_karras_ve(config, n, x, model, noises, float64)
        # step i's churn draw i + 1 goes to the call before: the second call of step i
        ours_noises = [noises[(k + 1) // 2] if k % 2 else noises[0] for k in range(calls)]
    else:
        seen, theirs = run_indexed(
            config, n, x, model, noises, float64,
            pass_prev=name == "UnCLIPScheduler", set_kwargs=init_options,
        )  # fmt: skip
        ours_noises = noises
    mine = [z.to(dtype) for z in ours_noises]
    start = None if start is None else start.to(dtype)
    ts, ours = run_ours(sched, n, x.to(dtype), model, mine, init_options=init_options, start=start)
    return ts, ours, seen, theirs


@pytest.mark.parametrize(("sched", "n", "init_options"), _params())
def test_parity_float64(sched, n, init_options):
    ts, ours, seen, theirs = compare(sched, n, torch.float64, init_options)
    assert len(ts) == len(seen)
    np.testing.assert_allclose(ts, seen, rtol=1e-6, atol=1e-6)
    oracle.check(ours, theirs, "PARITY", type(sched).__name__, F64_BOUND)
    assert oracle.rel(ours, oracle.start_sample()) > 1e-3  # the loop moved


@pytest.mark.parametrize(
    ("sched", "n"),
    [pytest.param(s, steps[min(1, len(steps) - 1)], id=f"{type(s).__name__}{i}")
     for i, (s, steps) in enumerate(CASES)],
)  # fmt: skip
def test_parity_float32(sched, n):
    """Our float32 loop against diffusers' float64 one; and our timesteps against those of
    diffusers' plain float32 scheduler, to float32 precision (its float32 pow / exp)."""
    _, ours, _, theirs = compare(sched, n, torch.float32)
    assert ours.dtype == torch.float32
    ts, _, seen, _ = compare(sched, n, torch.float32, float64=False)
    np.testing.assert_allclose(ts, seen, rtol=2e-6, atol=1e-6)
    oracle.check(ours, theirs, "PARITY float32", type(sched).__name__, F32_BOUND)


NEW_CLASSES = (
    ds.ScoreSdeVe, ds.KarrasVe, ds.DDPMWuerstchen, ds.UnCLIP, ds.CMStochasticIterative, ds.SCM,
    ds.DDIMParallel, ds.DDPMParallel, ds.CogVideoXDDIM, ds.CogVideoXDPM, ds.RePaint,
    ds.ConsistencyDecoder, ds.ScoreSdeVp,
)  # fmt: skip


@pytest.mark.parametrize("sched", NEW_CLASSES, ids=lambda c: c.__name__)
def test_from_config_reads_diffusers_defaults(sched):
    """diffusers' own default config of the class loads as our defaults, by its class name
    (``ds.from_config``), and our config loads back in diffusers' class as its own."""
    d_cls = getattr(peer.module_of({"_class_name": sched.DIFFUSERS_CLASS}), sched.DIFFUSERS_CLASS)
    config = {"_class_name": sched.DIFFUSERS_CLASS, **dict(d_cls().config)}
    assert ds.from_config(config) == sched()
    assert ds.SCHEDULERS[sched.DIFFUSERS_CLASS] is sched
    ours = sched().to_config()
    theirs = dict(d_cls.from_config(ours).config)
    assert {k: v for k, v in ours.items() if k in theirs} == {
        k: theirs[k] for k in ours if k in theirs
    }
    assert set(ours) - {"_class_name"} <= set(theirs), sorted(set(ours) - set(theirs))


# -- ParaDiGMS' classes: DDIM's and DDPM's step, driven by peer.run as a pipeline would ------

PARALLEL_CASES = [
    (ds.DDIMParallel(), (1, 10, 50)),
    (ds.DDIMParallel(eta=1.0, rederive_noise=True, timestep_spacing="trailing"), (3, 20)),
    (
        ds.DDIMParallel(
            beta_schedule="quadratic", prediction_type="angular_velocity", thresholding=True,
            dynamic_thresholding_ratio=0.9, sample_max_value=3.0, timesteps_offset=1,
        ),
        (4, 25),
    ),
    (ds.DDPMParallel(), (1, 10, 50)),
    (ds.DDPMParallel(variance_type="fixed_large", timestep_spacing="linspace"), (3, 20)),
    (ds.DDPMParallel(beta_schedule="squared_cosine", prediction_type="sample"), (5, 30)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sched", "n"),
    [pytest.param(s, n, id=f"{type(s).__name__}{i}-N={n}") for i, (s, steps) in
     enumerate(PARALLEL_CASES) for n in steps],
)  # fmt: skip
def test_parallel_parity_float64(sched, n):
    model = oracle.linear_tanh_model()
    x = oracle.start_sample()
    noises = oracle.noise_list(n)
    theirs_ts, theirs = peer.run(sched.to_config(), model, x, n, noises=noises)
    ts, ours = run_ours(sched, n, x, model, noises)
    assert ts == [float(t) for t in theirs_ts]
    oracle.check(ours, theirs, "PARITY", type(sched).__name__, F64_BOUND)
    # the same numbers as the sequential class they stand for
    base = ds.DDIM if isinstance(sched, ds.DDIM) else ds.DDPM
    twin = base(**{f.name: getattr(sched, f.name) for f in dataclasses.fields(sched)})
    assert sched.to_config() == twin.to_config() | {"_class_name": sched.DIFFUSERS_CLASS}


@pytest.mark.parametrize(
    "sched", [pytest.param(s, id=f"{type(s).__name__}{i}") for i, (s, _) in
              enumerate(PARALLEL_CASES)],
)  # fmt: skip
def test_parallel_parity_float32(sched):
    model = oracle.linear_tanh_model()
    x, noises = oracle.start_sample(), oracle.noise_list(10)
    _, theirs = peer.run(sched.to_config(), model, x, 10, noises=noises)
    _, ours = run_ours(sched, 10, x.float(), model, [z.float() for z in noises])
    assert ours.dtype == torch.float32
    oracle.check(ours, theirs, "PARITY float32", type(sched).__name__, F32_BOUND)


# -- RePaint: the known image and mask at every step, the resampling jumps in the table -------

REPAINT_CASES = [
    (ds.RePaint(), 10, {"jump_length": 3, "jump_n_sample": 3}),
    (ds.RePaint(eta=1.0), 20, {"jump_length": 5, "jump_n_sample": 2}),
    (ds.RePaint(eta=0.5, clip_denoised_sample=False), 25, {"jump_length": 10, "jump_n_sample": 10}),
    (
        ds.RePaint(beta_schedule="quadratic", beta_start=0.00085, beta_end=0.012, eta=0.3),
        8,
        {"jump_length": 2, "jump_n_sample": 4},
    ),
    (ds.RePaint(beta_schedule="squared_cosine", num_train_steps=500), 50, {}),
    (ds.RePaint(eta=1.0), 1, {"jump_length": 1, "jump_n_sample": 1}),
]


@pytest.mark.parametrize(
    ("sched", "n", "options"),
    [pytest.param(s, n, o, id=f"RePaint{i}-N={n}") for i, (s, n, o) in enumerate(REPAINT_CASES)],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_repaint_parity(sched, n, options, dtype):
    """Our float64 (float32) loop against diffusers' float64 one: final sample within 1e-6
    (1e-4), the model-call timesteps equal; half the pixels known (a random binary mask)."""
    model = oracle.linear_tanh_model()
    x = oracle.start_sample()
    image = torch.tanh(oracle.start_sample(seed=5))
    g = torch.Generator().manual_seed(6)
    mask = (torch.rand((1, 1, *x.shape[2:]), generator=g) > 0.5).to(x.dtype)
    jump = (options.get("jump_length", 10), options.get("jump_n_sample", 10))
    seen, theirs, replay = run_repaint(sched.to_config(), n, x, model, True, *jump, image, mask)
    step_options = {"original_image": image.to(dtype), "mask": mask.to(dtype)}
    ts, ours = run_ours(
        sched, n, x.to(dtype), model, [w.to(dtype) for w in replay],
        init_options=options, step_options=step_options,
    )  # fmt: skip
    assert ts == seen
    oracle.check(
        ours,
        theirs,
        "PARITY" if dtype == torch.float64 else "PARITY float32",
        "RePaint",
        F64_BOUND if dtype == torch.float64 else F32_BOUND,
    )
    assert oracle.rel(ours, x) > 1e-3


def test_repaint_known_region_compiles():
    """The step with original_image= and mask= under jax.jit (fori_loop) and torch.compile
    (fullgraph) equals the eager loop; the known region ends at the known image."""
    import warnings

    import jax
    import jax.numpy as jnp

    sched = ds.RePaint(eta=0.5)
    options = {"jump_length": 2, "jump_n_sample": 2}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4))
    image = np.tanh(rng.standard_normal((2, 3, 4, 4)))
    mask = (rng.random((1, 1, 4, 4)) > 0.5).astype(np.float64)
    noise = rng.standard_normal((64, 2, 3, 4, 4))

    def model(y, t):
        return np.tanh(y + 1e-3 * float(t)) if isinstance(y, np.ndarray) else (y + 1e-3 * t) * 0.5

    def eager(xp_x, img, m, zs, lin):
        state, timesteps = sched.init(6, xp_x, **options)
        y = xp_x
        for i, t in enumerate(timesteps):
            state, y = sched.step(state, y, lin(y, t), noise=zs[i], original_image=img, mask=m)
        return y, len(timesteps)

    want, calls = eager(x, image, mask, noise, lambda y, t: (y + 1e-3 * float(t)) * 0.5)
    known = mask.astype(bool).repeat(3, 1).repeat(2, 0)
    np.testing.assert_allclose(want[known], image[known], rtol=1e-12)  # ᾱ = 1 at the end

    jx = jnp.asarray(x)
    state, timesteps = sched.init(6, jx, **options)

    @jax.jit
    def loop(state, y, zs, img, m):
        def body(i, carry):
            s, y = carry
            pred = (y + 1e-3 * timesteps[i]) * 0.5
            return sched.step(s, y, pred, noise=zs[i], original_image=img, mask=m)

        return jax.lax.fori_loop(0, calls, body, (state, y))[1]

    got = loop(state, jx, jnp.asarray(noise), jnp.asarray(image), jnp.asarray(mask))
    assert got.dtype == jx.dtype
    # float64 where the suite enables JAX's x64 (test_engine does), float32 otherwise
    assert oracle.rel(np.asarray(got), want) < (1e-12 if jx.dtype == jnp.float64 else 1e-5)

    torch._dynamo.reset()
    compiled = torch.compile(sched.step, fullgraph=True)
    tx = torch.as_tensor(x, dtype=torch.float32)
    state, timesteps = sched.init(6, tx, **options)
    y = tx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, t in enumerate(timesteps):
            state, y = compiled(
                state, y, (y + 1e-3 * t) * 0.5, noise=torch.as_tensor(noise[i]).float(),
                original_image=torch.as_tensor(image).float(), mask=torch.as_tensor(mask).float(),
            )  # fmt: skip
    assert oracle.rel(y, want) < 1e-5


def test_repaint_refuses_a_known_image_or_mask_that_would_change_the_output():
    # found by review: a (5, ...) image and mask broadcast a (2, ...) sample to (5, ...); a
    # complex mask was cast with NumPy's warning; a list or a torch image gave AttributeError
    import warnings

    import torch

    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    sched = ds.RePaint()
    state, _ = sched.init(4, x)
    ok = np.ones((2, 1, 1))
    for image, mask, err, words in (
        (np.zeros((5, 2, 3, 4)), np.ones((5, 1, 1, 1)), ValueError, "does not broadcast to"),
        (np.zeros((2, 3, 4)), np.ones((2, 1, 1), complex), TypeError, "mask must be real"),
        (np.zeros((2, 3, 4), np.int64), ok, TypeError, "original_image must be real"),
        ([0.0], ok, TypeError, "original_image must be an array"),
        (torch.zeros(2, 3, 4, dtype=torch.float64), ok, TypeError, "like the sample"),
    ):  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(err, match=words):
                sched.step(state, x, 0.1 * x, original_image=image, mask=mask)
    for mask in (ok, ok.astype(bool), ok.astype(np.int64)):  # a 0/1 mask of any real kind
        out = sched.step(state, x, 0.1 * x, original_image=np.zeros((2, 3, 4)), mask=mask)[1]
        assert out.shape == x.shape
