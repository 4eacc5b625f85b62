"""Learned variances (``variance_type="learned"`` / ``"learned_range"``): the model output
carries C variance channels after the prediction's along axis 1 (DeepFloyd IF's and
unCLIP's decoders), against diffusers 0.42.1 driven as their pipelines drive them.

DDPM, DDPMParallel and UnCLIP draw their noise with the learned σ_t (Nichol & Dhariwal
2021, eq. 15); the DPM-Solver classes and SA-Solver drop the variance channels, as
diffusers' do (which keep the first 3 channels: the samples here have 3).
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import oracle
import pytest
import torch

import diffsched as ds
from diffsched.interop import peer

SHAPE = (2, 3, 8, 8)  # diffusers' DPM-Solver keeps model_output[:, :3]
SD = {"beta_schedule": "quadratic", "beta_start": 0.00085, "beta_end": 0.012}


def two_headed(variance_type: str, scale: float = 1.0):
    """A model with C prediction channels, then C variance channels: v in (-1, 1) for
    learned_range (eq. 15's interpolation weight), a variance in (0.02, 0.04) for learned."""
    head = oracle.linear_tanh_model(n=SHAPE[-1])
    tail = oracle.linear_tanh_model(n=SHAPE[-1], seed=99)

    def model(x, t):
        v = scale * tail(x, t)
        if variance_type == "learned":
            v = 0.03 + 0.01 * v
        return torch.cat([head(x, t), v], dim=1)

    return model


def run_diffusers(config, n, x, model, noises):
    """diffusers' loop in float64 tables, its draws replaced by ``noises`` (call i: i)."""
    d = peer.scheduler(config, float64=True)
    module = peer.module_of(config)
    current = [0]
    unclip = config["_class_name"] == "UnCLIPScheduler"
    with (
        peer._double_tables(module),
        mock.patch.object(module, "randn_tensor", lambda *a, **k: noises[current[0]]),
    ):
        d.set_timesteps(n)
        peer._double_grids(d)
        ts = d.timesteps
        y = x * d.init_noise_sigma
        for i, t in enumerate(ts):
            current[0] = i
            kwargs = {"prev_timestep": ts[i + 1] if i + 1 < len(ts) else None} if unclip else {}
            y = d.step(model(d.scale_model_input(y, t), t), t, y, **kwargs).prev_sample
    return y


def run_ours(sched, n, x, model, noises, key=0):
    state, ts = sched.init(n, x, key=key)
    y = x * sched.init_noise_scale(n)
    for i, t in enumerate(ts):
        noise = None if noises is None or sched.deterministic else noises[i]
        state, y = sched.step(state, y, model(y, t), noise=noise)
    return y


CASES = [
    (ds.DDPM(variance_type="learned_range"), (1, 4, 25)),
    (ds.DDPM(variance_type="learned", **SD), (1, 6)),
    # trailing: the last timestep is above 0, so the last step adds noise too
    (
        ds.DDPM(variance_type="learned_range", timestep_spacing="trailing", clip_sample_range=2.0),
        (3, 10),
    ),
    (
        ds.DDPM(
            variance_type="learned_range",
            prediction_type="angular_velocity",
            **SD,
            rescale_betas_zero_snr=True,
            timestep_spacing="trailing",
        ),
        (5,),
    ),
    (ds.DDPMParallel(variance_type="learned_range", beta_schedule="squared_cosine"), (2, 12)),
    (ds.UnCLIP(variance_type="learned_range"), (2, 9, 25)),
    (ds.UnCLIP(variance_type="learned_range", prediction_type="sample"), (5,)),
    (ds.DPMSolverMultistep(variance_type="learned_range"), (1, 8)),
    (ds.DPMSolverMultistep(variance_type="learned", algorithm_type="sde-dpmsolver++"), (2, 7)),
    (ds.DPMSolverSinglestep(variance_type="learned_range", **SD), (3, 8)),
    (ds.DPMSolverMultistepInverse(variance_type="learned"), (4,)),
    (ds.SASolver(variance_type="learned_range"), (5,)),
]


@pytest.mark.parametrize(
    ("sched", "n"),
    [pytest.param(s, n, id=f"{type(s).__name__}{i}-{s.variance_type}-N={n}")
     for i, (s, steps) in enumerate(CASES) for n in steps],
)  # fmt: skip
def test_parity_float64(sched, n):
    x = oracle.start_sample(SHAPE)
    noises = oracle.noise_list(n + 2, SHAPE)
    model = two_headed(sched.variance_type)
    theirs = run_diffusers(sched.to_config(), n, x, model, noises)
    ours = run_ours(sched, n, x, model, noises)
    assert tuple(ours.shape) == SHAPE and torch.isfinite(theirs).all()
    oracle.check(ours, theirs, "PARITY", f"{type(sched).__name__} learned", oracle.F64_BOUND)


@pytest.mark.parametrize(
    "sched",
    [ds.DDPM(variance_type="learned_range"), ds.DDPM(variance_type="learned"),
     ds.UnCLIP(variance_type="learned_range")],
)  # fmt: skip
def test_the_variance_channels_set_the_noise(sched):
    """DDPM's draw is scaled by the learned σ_t: other variance channels, another sample
    (a test that could not pass if they were dropped)."""
    x = oracle.start_sample(SHAPE)
    a = run_ours(sched, 5, x, two_headed(sched.variance_type), None)
    b = run_ours(sched, 5, x, two_headed(sched.variance_type, scale=0.5), None)
    assert oracle.rel(a, b) > 1e-3


@pytest.mark.parametrize(
    "sched",
    [ds.DPMSolverMultistep(variance_type="learned_range", algorithm_type="sde-dpmsolver++"),
     ds.DPMSolverSinglestep(variance_type="learned"), ds.SASolver(variance_type="learned")],
)  # fmt: skip
def test_solvers_drop_the_variance_channels(sched):
    """The solvers' result is the same for any variance channels, and equals the same
    config without a learned variance given the prediction channels alone."""
    x = oracle.start_sample(SHAPE)
    a = run_ours(sched, 6, x, two_headed(sched.variance_type), None)
    b = run_ours(sched, 6, x, two_headed(sched.variance_type, scale=0.5), None)
    plain = sched.replace(variance_type=None)
    head = two_headed(sched.variance_type)
    c = run_ours(plain, 6, x, lambda y, t: head(y, t)[:, : SHAPE[1]], None)
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_prediction_shape_and_errors(variance_type):
    sched = ds.DDPM(variance_type=variance_type)
    assert sched.prediction_shape((2, 3, 8, 8)) == (2, 6, 8, 8)
    assert ds.DDPM().prediction_shape((2, 3, 8, 8)) == (2, 3, 8, 8)
    x = np.zeros((2, 3, 4))
    state, _ = sched.init(4, x)
    with pytest.raises(ValueError, match=r"must have shape \(2, 6, 4\).*got \(2, 3, 4\)"):
        sched.step(state, x, np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="channel axis"):
        sched.prediction_shape((5,))
    with pytest.raises(ValueError, match="noise must have the sample's shape"):
        sched.step(state, x, np.zeros((2, 6, 4)), noise=np.zeros((2, 6, 4)))
    with pytest.raises(ValueError, match="learned variance"):
        sched.init(4, x, offsets=np.zeros(2, np.int64))
    with pytest.raises(TypeError, match=r"prediction must be an array.*got list"):
        sched.step(state, x, [[1.0]])


@pytest.mark.parametrize("noise_type", ["gaussian", "brownian"])
def test_jax_jit_equals_numpy(noise_type):
    """The compiled step (the call index traced) equals the eager one, the draws included."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    sched = ds.DDPM(variance_type="learned_range", noise_type=noise_type)
    head = two_headed("learned_range")

    def np_model(y, t):
        return head(torch.from_numpy(np.asarray(y)), t).numpy()

    x = np.asarray(oracle.start_sample(SHAPE).numpy())
    eager = np.asarray(run_ours(sched, 6, x, np_model, None, key=3))
    state, ts = sched.init(6, jax.numpy.asarray(x), key=3)
    step = jax.jit(sched.step)
    y = jax.numpy.asarray(x)
    for t in ts:
        state, y = step(state, y, jax.numpy.asarray(np_model(np.asarray(y), float(t))))
    np.testing.assert_allclose(np.asarray(y), eager, rtol=1e-12, atol=1e-12)


def test_torch_compile_equals_eager():
    sched = ds.DDPM(variance_type="learned_range")
    model = two_headed("learned_range")
    x = oracle.start_sample(SHAPE)
    noises = oracle.noise_list(6, SHAPE)
    eager = run_ours(sched, 6, x, model, noises)
    state, ts = sched.init(6, x, key=0)
    step = torch.compile(sched.step, fullgraph=True, dynamic=False)
    y = x
    for i, t in enumerate(ts):
        state, y = step(state, y, model(y, t), noise=noises[i])
    torch.testing.assert_close(y, eager, rtol=1e-10, atol=1e-10)


# -- through the diffusers adapter: DeepFloyd IF's pipeline (tiny random weights) ------------

IF_CONFIG = {
    "_class_name": "DDPMScheduler",
    "beta_schedule": "squaredcos_cap_v2",
    "variance_type": "learned_range",
    "thresholding": True,
    "dynamic_thresholding_ratio": 0.95,
    "sample_max_value": 1.5,
}


def if_images(scheduler, steps, dtype):
    """IFPipeline's images (its UNet predicts ε and the variance: 6 channels) from fixed
    prompt embeddings; and the generator's state after (as much noise drawn)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=6, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=4, norm_num_groups=4,
    ).to(dtype)  # fmt: skip
    pipe = diffusers.IFPipeline(
        tokenizer=None, text_encoder=None, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, watermarker=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(3)).to(dtype)
    images = pipe(
        prompt_embeds=emb, negative_prompt_embeds=torch.zeros_like(emb), height=16, width=16,
        num_inference_steps=steps, generator=generator, output_type="pt",
    ).images  # fmt: skip
    return images, generator.get_state()


@pytest.mark.parametrize(
    ("name", "steps"), [("DDPMScheduler", 3), ("DPMSolverMultistepScheduler", 4)]
)
def test_deepfloyd_if_pipeline(name, steps):
    """IFPipeline with the adapter: equal to diffusers' own scheduler where both compute in
    float64 (diffusers' tables made float64, ``peer._double_tables``: DDPM 4e-15 seen, held
    to 1e-12; DPM-Solver 8.8e-8, its σ grid stays float32, held to the parity bound 1e-6);
    in float32, within 1e-4: diffusers' float32 ᾱ table loses digits in β_t = 1 - ᾱ_t/ᾱ_{t'}
    near t = 0 (3.2e-5 seen at 3 steps; its fixed variance gives 7.6e-6)."""
    diffusers = pytest.importorskip("diffusers")
    from diffsched.diffusers import DiffusersScheduler

    config = {**IF_CONFIG, "_class_name": name}
    with peer._double_tables(peer.module_of(config)):
        theirs, drawn = if_images(
            getattr(diffusers, name).from_config(config), steps, torch.float64
        )
    ours, ours_drawn = if_images(DiffusersScheduler.from_config(config), steps, torch.float64)
    assert torch.equal(drawn, ours_drawn)
    gap = float((ours - theirs).abs().max())
    assert gap < (1e-12 if name == "DDPMScheduler" else 1e-6), gap
    theirs, _ = if_images(getattr(diffusers, name).from_config(config), steps, torch.float32)
    ours, _ = if_images(DiffusersScheduler.from_config(config), steps, torch.float32)
    gap = float((ours - theirs).abs().max())
    assert gap < 1e-4, gap


def test_adapter_takes_c_channels_where_the_variance_is_not_read():
    """As diffusers' classes: a C-channel output at a call that adds no noise (DDPM's last)
    or for a solver (which drops the variance) is taken; at a DDPM call that adds noise it
    is refused with the shapes (diffusers' DDPM fails there with a TypeError)."""
    from diffsched.diffusers import DiffusersScheduler

    x = oracle.start_sample(SHAPE)
    ddpm = DiffusersScheduler(ds.DDPM(variance_type="learned_range"))
    ddpm.set_timesteps(3)
    t0, t1, t2 = ddpm.timesteps
    with pytest.raises(ValueError, match=r"model_output must have .*\(2, 6, 8, 8\)"):
        ddpm.step(0.1 * x, t0, x)
    wide = torch.cat([0.1 * x, 0.2 * x], dim=1)
    ddpm.step(wide, t0, x, generator=torch.Generator().manual_seed(0))
    ddpm.step(wide, t1, x, generator=torch.Generator().manual_seed(0))
    last = ddpm.step(0.1 * x, t2, x)  # timestep 0: no noise
    again = DiffusersScheduler(ds.DDPM(variance_type="learned_range"))
    again.set_timesteps(3)
    again.step(wide, t0, x, generator=torch.Generator().manual_seed(0))
    again.step(wide, t1, x, generator=torch.Generator().manual_seed(0))
    full = again.step(wide, t2, x)
    assert torch.equal(last.prev_sample, full.prev_sample)
    assert torch.equal(last.pred_original_sample, full.pred_original_sample)
    solver = DiffusersScheduler(ds.DPMSolverMultistep(variance_type="learned"))
    solver.set_timesteps(2)
    a = solver.step(0.1 * x, solver.timesteps[0], x).prev_sample
    solver.set_timesteps(2)
    b = solver.step(wide, solver.timesteps[0], x).prev_sample
    assert torch.equal(a, b)


@pytest.mark.parametrize("cfg_pp", [False, True])
def test_guidance_guides_the_prediction_and_keeps_the_conditional_variance(cfg_pp):
    """``ds.sample`` with a guided model: the prediction channels mixed, the variance the
    conditional output's (DeepFloyd IF's pipeline), whatever the unconditional variance."""
    sched = ds.DDPM(variance_type="learned_range")
    cond, uncond = two_headed("learned_range"), two_headed("learned_range", scale=0.3)
    c = SHAPE[1]
    x = oracle.start_sample(SHAPE)

    def by_hand(y, t):
        a, b = cond(y, t), uncond(y, t)
        return torch.cat([b[:, :c] + 2.0 * (a[:, :c] - b[:, :c]), a[:, c:]], dim=1)

    got = ds.sample(ds.Guided(cond, uncond, 2.0, cfg_pp=cfg_pp), sched, x, 5, key=4)
    if not cfg_pp:
        assert torch.equal(got, ds.sample(by_hand, sched, x, 5, key=4))
    other = ds.Guided(cond, two_headed("learned_range", scale=0.3), 2.0, cfg_pp=cfg_pp)

    def swapped(y, t):  # the unconditional variance channels changed: nothing moves
        out = uncond(y, t)
        return torch.cat([out[:, :c], -out[:, c:]], dim=1)

    moved = ds.sample(ds.Guided(cond, swapped, 2.0, cfg_pp=cfg_pp), sched, x, 5, key=4)
    assert torch.equal(got, ds.sample(other, sched, x, 5, key=4)) and torch.equal(got, moved)
