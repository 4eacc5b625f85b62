"""The adapter (``diffsched.diffusers``) in the pipelines that drive their scheduler through
methods of its own (issue 18): ScoreSdeVePipeline (``set_sigmas``, ``step_correct``,
``step_pred``), KarrasVePipeline (``schedule``, ``add_noise_to_input``, ``step``,
``step_correct``), RePaintPipeline (``step`` with the known image and mask, ``undo_step``,
``scheduler.eta = ...``), CogVideoXPipeline with CogVideoXDPMScheduler (``step`` with the
previous x̂_0 and timestep, a tuple), StableCascadePriorPipeline (DDPMWuerstchen, chosen by
``isinstance``), SanaSprintPipeline (SCM) and AnyFlowPipeline (FlowMapEuler's ``sigmas``),
each built from tiny random-weight components (no downloads), run twice with the same seed:
with diffusers' own scheduler of the config and with ``DiffusersScheduler`` wrapping ours.
The outputs (float32, torch CPU) agree within 1e-5 relative to their largest value (the
images of the three deprecated pipelines are clamped to [0, 1], so their final samples are
compared before the clamp, recorded from the scheduler's last output), and the generators
end in the same state (as many draws). Where diffusers' own float32 arithmetic loses
digits (KarrasVe's correction at small σ, RePaint's x̂_0 at small ᾱ, Piflow's 128 float32
substeps), the reference is diffusers' class doing the same arithmetic in float64 on the
pipeline's tensors (see each). Piflow runs in Kandinsky6SRPipeline (a tiny VAE and
transformer; the text-to-video pipeline needs a text encoder that is not small) and in its
loop written out with a model whose output is n_grid times as wide. FlowMapEuler's
``step(..., r_timestep=)`` is checked directly. The consistency decoder runs in
ConsistencyDecoderVAE's ``decode``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import oracle  # noqa: E402

import diffsched as ds  # noqa: E402
from diffsched.diffusers import DiffusersScheduler  # noqa: E402
from diffsched.interop import peer  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def theirs_of(sched):
    """diffusers' own scheduler of our config."""
    config = sched.to_config()
    return getattr(diffusers, config["_class_name"]).from_config(config)


def close(want, got, what):
    """The largest difference relative to the largest value; recorded and checked."""
    want, got = (np.asarray(torch.as_tensor(a).double()) for a in (want, got))
    r = float(np.abs(got - want).max() / np.abs(want).max())
    oracle.record("ADAPTER pipelines", what, r)
    assert r <= TOL, (what, r)
    assert want.std() > 1e-3


def recording(scheduler, *methods):
    """Wraps ``methods`` of a scheduler instance so that each output is kept (in order)."""
    seen = []
    for name in methods:
        method = getattr(scheduler, name)

        def wrapped(*args, _method=method, _name=name, **kwargs):
            out = _method(*args, **kwargs)
            seen.append((_name, out))
            return out

        setattr(scheduler, name, wrapped)
    return seen


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()  # fmt: skip


def run_deprecated(pipe, schedulers, final, **call):
    """(final samples before the clamp, images, generator states) with each scheduler."""
    out = []
    for scheduler in schedulers:
        seen = recording(scheduler, *final)
        pipe.scheduler = scheduler
        g = torch.Generator().manual_seed(0)
        image = pipe(generator=g, output_type="np", **call).images
        out.append((seen, image, g.get_state()))
    return out


class KarrasVeInDouble(diffusers.KarrasVeScheduler):
    """diffusers' KarrasVe whose ``step`` and ``step_correct`` do their arithmetic in
    float64 (on the pipeline's float32 tensors; the results rounded to float32). In float32
    its correction forms d' = (x - D') / σ_{i+1} with D' = x + σ_{i+1} F', which cancels
    digits where σ_{i+1} is small: at the default σ_min = 0.02 (last level 4e-4) its float32
    final sample is 2e-4 (relative) off its own float64 one (3 steps), where ours (written
    with F) is 1.3e-7 off, float32's rounding. So the pipeline is compared with this."""

    def step(self, model_output, sigma_hat, sigma_prev, sample_hat, return_dict=True):
        up = [torch.as_tensor(a).double() for a in (model_output, sigma_hat, sample_hat)]
        out = super().step(up[0], up[1], float(sigma_prev), up[2])
        out.prev_sample = out.prev_sample.float()
        out.derivative = out.derivative.float()
        out["prev_sample"], out["derivative"] = out.prev_sample, out.derivative
        return out

    def step_correct(self, model_output, sigma_hat, sigma_prev, sample_hat, sample_prev,
                     derivative, return_dict=True):  # fmt: skip
        args = (model_output, sigma_hat, sigma_prev, sample_hat, sample_prev, derivative)
        up = [torch.as_tensor(a).double() for a in args]
        out = super().step_correct(*up)
        out.prev_sample = out.prev_sample.float()
        out["prev_sample"] = out.prev_sample
        return out


@pytest.mark.parametrize(
    ("sched", "steps"),
    [
        (ds.KarrasVe(sigma_max=5.0, s_churn=3.0, s_min=0.1, s_max=20.0), 4),
        (ds.KarrasVe(sigma_max=2.0, s_noise=1.0, s_churn=10.0), 2),
        (ds.KarrasVe(), 3),
    ],
    ids=["churn-in-range", "two-steps", "defaults"],
)  # fmt: skip
def test_karras_ve_pipeline(unet, sched, steps):
    pipe = diffusers.KarrasVePipeline(unet=unet, scheduler=theirs_of(sched))
    pipe.set_progress_bar_config(disable=True)
    theirs = KarrasVeInDouble.from_config(sched.to_config())
    (want, image_w, g_w), (got, image_g, g_g) = run_deprecated(
        pipe, (theirs, DiffusersScheduler(sched)), ("step", "step_correct"),
        num_inference_steps=steps, batch_size=2,
    )  # fmt: skip
    assert [name for name, _ in got] == [name for name, _ in want]
    close(want[-1][1].prev_sample, got[-1][1].prev_sample, f"KarrasVe-N={steps}")
    assert np.abs(image_g - image_w).max() <= TOL
    assert torch.equal(g_g, g_w)  # the churn drawn at every step, as diffusers


@pytest.mark.parametrize(
    ("sched", "steps"),
    [
        (ds.ScoreSdeVe(sigma_max=20.0), 4),
        (ds.ScoreSdeVe(correct_steps=2, snr=0.2, sigma_max=50.0, sampling_eps=1e-3), 3),
        (ds.ScoreSdeVe(correct_steps=0, sigma_max=5.0, sigma_min=0.05), 5),
    ],
    ids=["one-corrector", "two-correctors", "predictor-only"],
)  # fmt: skip
def test_score_sde_ve_pipeline(unet, sched, steps):
    pipe = diffusers.ScoreSdeVePipeline(unet=unet, scheduler=theirs_of(sched))
    pipe.set_progress_bar_config(disable=True)
    (want, image_w, g_w), (got, image_g, g_g) = run_deprecated(
        pipe, (theirs_of(sched), DiffusersScheduler(sched)), ("step_pred", "step_correct"),
        num_inference_steps=steps, batch_size=2,
    )  # fmt: skip
    assert [name for name, _ in got] == [name for name, _ in want]
    close(want[-1][1].prev_sample_mean, got[-1][1].prev_sample_mean, f"ScoreSdeVe-N={steps}")
    # the intermediate noisy samples too (the corrector's step size reads the draw's norm)
    close(want[-2][1].prev_sample, got[-2][1].prev_sample, f"ScoreSdeVe-N={steps} (before)")
    assert np.abs(image_g - image_w).max() <= TOL
    assert torch.equal(g_g, g_w)


class RePaintInDouble(diffusers.RePaintScheduler):
    """diffusers' RePaint with float64 tables (:mod:`diffsched.interop.peer`) whose ``step``
    and ``undo_step`` do their arithmetic in float64 on the pipeline's float32 tensors, the
    draws float32 normals as the float32 class draws them (``float32_draws``). In float32
    its x̂_0 = (x - sqrt(1 - ᾱ) ε̂) / sqrt(ᾱ) at ᾱ ≈ 4e-5 (t = 900) loses about 160 ulps: its
    float32 loop ends 4.2e-6 (relative) off its own float64 one on a smooth model, ours
    1.8e-6, and the two float32 loops 6e-6 apart; so the pipeline is compared with this."""

    @classmethod
    def of(cls, sched):
        from diffsched.interop import peer

        config = {k: v for k, v in sched.to_config().items() if not k.startswith("_")}
        with peer._double_tables(peer.module_of(sched.to_config())):
            return cls(**config)

    def step(self, model_output, timestep, sample, original_image, mask, generator=None,
             return_dict=True):  # fmt: skip
        d = [a.double() for a in (model_output, sample, original_image, mask)]
        out = super().step(d[0], timestep, d[1], d[2], d[3], generator)
        return type(out)(prev_sample=out.prev_sample.float(),
                         pred_original_sample=out.pred_original_sample.float())  # fmt: skip

    def undo_step(self, sample, timestep, generator=None):
        return super().undo_step(sample.double(), timestep, generator).float()


@pytest.fixture
def float32_draws(monkeypatch):
    """diffusers' RePaint module draws float32 normals whatever dtype it asks for (cast)."""
    import diffusers.schedulers.scheduling_repaint as module

    def draw(shape, generator=None, device=None, dtype=None, **kwargs):
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    monkeypatch.setattr(module, "randn_tensor", draw)


@pytest.mark.parametrize(
    ("sched", "call"),
    [
        (ds.RePaint(), dict(num_inference_steps=10, jump_length=3, jump_n_sample=2, eta=0.0)),
        (ds.RePaint(), dict(num_inference_steps=12, jump_length=2, jump_n_sample=3, eta=1.0)),
        (ds.RePaint(num_train_steps=100, clip_denoised_sample=False, beta_schedule="quadratic"),
         dict(num_inference_steps=8, jump_length=2, jump_n_sample=2, eta=0.5)),
    ],
    ids=["eta0", "eta1", "T100-quadratic-noclip"],
)  # fmt: skip
def test_repaint_pipeline(unet, sched, call, float32_draws):
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    mask = (torch.rand(1, 1, 8, 8, generator=g) > 0.5).float()
    pipe = diffusers.RePaintPipeline(unet=unet, scheduler=theirs_of(sched))
    pipe.set_progress_bar_config(disable=True)
    out = []
    for scheduler in (RePaintInDouble.of(sched), DiffusersScheduler(sched)):
        seen = recording(scheduler, "step", "undo_step")
        pipe.scheduler = scheduler
        gen = torch.Generator().manual_seed(0)
        result = pipe(image, mask, generator=gen, output_type="np", **call).images
        out.append((seen, result, gen.get_state()))
    (want, image_w, g_w), (got, image_g, g_g) = out
    assert [name for name, _ in got] == [name for name, _ in want]
    assert want[-1][0] == "step"  # the schedule ends going down
    close(want[-1][1].prev_sample, got[-1][1].prev_sample, f"RePaint-{call['eta']}")
    ups = [(w, g) for (name, w), (_, g) in zip(want, got, strict=True) if name == "undo_step"]
    assert ups
    close(ups[-1][0], ups[-1][1], "RePaint undo_step")
    assert np.abs(image_g - image_w).max() <= TOL
    assert torch.equal(g_g, g_w)


@pytest.fixture(scope="module")
def cogvideox_pipe():
    torch.manual_seed(0)
    transformer = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4,
        time_embed_dim=2, text_embed_dim=32, num_layers=1, sample_width=2, sample_height=2,
        sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16,
    ).eval()  # fmt: skip
    pipe = diffusers.CogVideoXPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
        scheduler=diffusers.CogVideoXDPMScheduler(),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("sched", "steps"),
    [
        (ds.CogVideoXDPM(rescale_betas_zero_snr=True, prediction_type="angular_velocity",
                         timestep_spacing="trailing", snr_shift_scale=1.0), 4),  # CogVideoX-5b
        (ds.CogVideoXDPM(), 3),
        (ds.CogVideoXDPM(), 1),
    ],
    ids=["5b-config", "defaults", "one-step"],
)  # fmt: skip
def test_cogvideox_dpm_pipeline(cogvideox_pipe, sched, steps):
    g = torch.Generator().manual_seed(1)
    embeds, negative = torch.randn(1, 16, 32, generator=g), torch.randn(1, 16, 32, generator=g)
    out = []
    for scheduler in (theirs_of(sched), DiffusersScheduler(sched)):
        # the pipeline takes its DPM branch (previous x̂_0 and timestep, a tuple) by isinstance
        assert isinstance(scheduler, diffusers.CogVideoXDPMScheduler)
        cogvideox_pipe.scheduler = scheduler
        gen = torch.Generator().manual_seed(0)
        latents = cogvideox_pipe(
            prompt_embeds=embeds, negative_prompt_embeds=negative, height=16, width=16,
            num_frames=9, num_inference_steps=steps, generator=gen, output_type="latent",
            guidance_scale=6.0, max_sequence_length=16,
        ).frames  # fmt: skip
        out.append((latents, gen.get_state()))
    (want, g_w), (got, g_g) = out
    close(want, got, f"CogVideoXDPM-N={steps}")
    assert torch.equal(g_g, g_w)  # twice at a call with history, as diffusers


@pytest.fixture(scope="module")
def cascade_prior():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    prior = diffusers.StableCascadeUNet(
        in_channels=4, out_channels=4, timestep_ratio_embedding_dim=16, conditioning_dim=16,
        block_out_channels=(16, 16), num_attention_heads=(2, 2), down_num_layers_per_block=(1, 1),
        up_num_layers_per_block=(1, 1), clip_text_in_channels=16, clip_text_pooled_in_channels=16,
        clip_image_in_channels=16, clip_seq=4, dropout=(0.0, 0.0), switch_level=(False,),
    ).eval()  # fmt: skip
    text_encoder = transformers.CLIPTextModelWithProjection(
        transformers.CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=16,
            projection_dim=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            vocab_size=50,
            max_position_embeddings=16,
        )
    ).eval()  # fmt: skip (its dtype only: the prompts come as embeddings)
    pipe = diffusers.StableCascadePriorPipeline(
        tokenizer=None, text_encoder=text_encoder, prior=prior,
        scheduler=diffusers.DDPMWuerstchenScheduler(),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("sched", "steps"),
    [(ds.DDPMWuerstchen(), 4), (ds.DDPMWuerstchen(scaler=2.0, s=0.01), 3),
     (ds.DDPMWuerstchen(scaler=0.5), 1)],
    ids=["defaults", "scaler2", "one-step"],
)  # fmt: skip
def test_stable_cascade_prior_pipeline(cascade_prior, sched, steps):
    g = torch.Generator().manual_seed(1)
    embeds = [torch.randn(1, n, 16, generator=g) for n in (8, 1, 8, 1)]
    out = []
    for scheduler in (theirs_of(sched), DiffusersScheduler(sched)):
        assert isinstance(scheduler, diffusers.DDPMWuerstchenScheduler)  # the pipeline's branch
        cascade_prior.scheduler = scheduler
        gen = torch.Generator().manual_seed(0)
        result = cascade_prior(
            prompt_embeds=embeds[0], prompt_embeds_pooled=embeds[1],
            negative_prompt_embeds=embeds[2], negative_prompt_embeds_pooled=embeds[3],
            height=128, width=128, num_inference_steps=steps, generator=gen, guidance_scale=4.0,
        )  # fmt: skip
        out.append((result.image_embeddings, gen.get_state()))
    (want, g_w), (got, g_g) = out
    assert want.shape == (1, 4, 3, 3)
    close(want, got, f"DDPMWuerstchen-N={steps}")
    assert torch.equal(g_g, g_w)  # also on the step to t = 0


@pytest.fixture(scope="module")
def sana_sprint():
    torch.manual_seed(0)
    transformer = diffusers.SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
        caption_channels=16, sample_size=8, patch_size=1, guidance_embeds=True,
        qk_norm="rms_norm_across_heads",
    ).eval()  # fmt: skip
    pipe = diffusers.SanaSprintPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
        scheduler=diffusers.SCMScheduler(),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("sched", "call"),
    [
        (ds.SCM(), dict(num_inference_steps=2)),  # Sana-Sprint's two steps via 1.3
        (ds.SCM(sigma_data=0.7), dict(num_inference_steps=4, intermediate_timesteps=None)),
        (ds.SCM(), dict(num_inference_steps=1, intermediate_timesteps=None)),
    ],
    ids=["two-steps", "four-steps", "one-step"],
)  # fmt: skip
def test_sana_sprint_pipeline(sana_sprint, sched, call):
    g = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, 8, 16, generator=g)
    out = []
    for scheduler in (theirs_of(sched), DiffusersScheduler(sched)):
        sana_sprint.scheduler = scheduler
        gen = torch.Generator().manual_seed(0)
        latents = sana_sprint(
            prompt_embeds=embeds, prompt_attention_mask=torch.ones(1, 8), height=256, width=256,
            generator=gen, output_type="latent", use_resolution_binning=False, **call,
        ).images  # fmt: skip
        out.append((latents, gen.get_state()))
    (want, g_w), (got, g_g) = out
    assert want.shape == (1, 4, 8, 8)
    close(want, got, f"SCM-N={call['num_inference_steps']}")
    assert torch.equal(g_g, g_w)  # also on the last call


@pytest.fixture(scope="module")
def anyflow():
    torch.manual_seed(0)
    transformer = diffusers.AnyFlowTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
    ).eval()  # fmt: skip
    pipe = diffusers.AnyFlowPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
        scheduler=diffusers.FlowMapEulerDiscreteScheduler(),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("sched", "call"),
    [
        (ds.FlowMapEuler(shift=5.0), dict(num_inference_steps=4)),
        (ds.FlowMapEuler(), dict(num_inference_steps=2)),
        (ds.FlowMapEuler(shift=3.0), dict(num_inference_steps=None, sigmas=[1.0, 0.8, 0.5, 0.2])),
        # custom levels below 1: the first timestep (964.28...) is not a float32 number
        (ds.FlowMapEuler(shift=3.0), dict(num_inference_steps=3, sigmas=[0.9, 0.6, 0.3])),
    ],
    ids=["shift5", "defaults", "custom-sigmas", "custom-sigmas-below-1"],
)  # fmt: skip
def test_anyflow_pipeline(anyflow, sched, call):
    """AnyFlow reads ``sigmas[i + 1]`` for the model's target time r (the flow map's)."""
    g = torch.Generator().manual_seed(1)
    embeds, negative = torch.randn(1, 8, 16, generator=g), torch.randn(1, 8, 16, generator=g)
    out = []
    for scheduler in (theirs_of(sched), DiffusersScheduler(sched)):
        anyflow.scheduler = scheduler
        gen = torch.Generator().manual_seed(0)
        frames = anyflow(
            prompt_embeds=embeds, negative_prompt_embeds=negative, height=32, width=32,
            num_frames=5, generator=gen, output_type="latent", guidance_scale=3.0, **call,
        ).frames  # fmt: skip
        out.append((frames, scheduler.sigmas.clone(), gen.get_state()))
    (want, s_w, g_w), (got, s_g, g_g) = out
    assert s_g.dtype == s_w.dtype and torch.allclose(s_g, s_w, rtol=0, atol=1e-12)
    close(want, got, f"FlowMapEuler-{call['num_inference_steps']}-{len(call.get('sigmas', ()))}")
    assert torch.equal(g_g, g_w)


def test_flow_map_r_timestep():
    """``step(..., r_timestep=)``: the call's own target (the next timestep, 0 at the last;
    a tensor of one per batch element) gives diffusers' step; differing targets within the
    batch are refused, by name (another target: ``test_flow_map_any_step_sampling``)."""
    sched = ds.FlowMapEuler(shift=5.0)
    ours, theirs = DiffusersScheduler(sched), theirs_of(sched)
    x = oracle.start_sample((2, 4, 6), dtype=torch.float32)
    y = x.clone()
    for s in (ours, theirs):
        s.set_timesteps(4)
    r = sched.r_timesteps(4)
    for i, t in enumerate(theirs.timesteps):
        out = torch.tanh(0.5 * x + 1e-3 * float(t))
        target = torch.full((2,), float(r[i]), dtype=torch.float64)
        x = ours.step(out, t, x, r_timestep=target).prev_sample
        y = theirs.step(out, t, y, r_timestep=target).prev_sample
    assert oracle.rel(x, y) < 1e-6
    ours.set_timesteps(4)
    with pytest.raises(NotImplementedError, match="one time for the whole batch"):
        ours.step(x, ours.timesteps[0], x, r_timestep=torch.tensor([float(r[1]), 0.0]))


class PiflowInDouble(diffusers.PiflowScheduler):
    """diffusers' Piflow whose grid and ``step`` arithmetic are float64 (peer), its
    timesteps (the model's input) rounded to float32, its results to the sample's dtype.
    In float32 its N = 1 loop (one segment, 128 float32 substeps) ends 3.6e-6 (relative)
    off ours in Kandinsky 6's pipeline."""

    def set_timesteps(self, *args, **kwargs):
        with peer._double_tables(peer.module_of({"_class_name": "PiflowScheduler"})):
            super().set_timesteps(*args, **kwargs)
        self.timesteps = self.timesteps.float()

    def step(self, model_output, timestep, sample, return_dict=True):
        with peer._double_tables(peer.module_of({"_class_name": "PiflowScheduler"})):
            out = super().step(model_output.double(), timestep, sample.double(), False)[0]
        return (out.to(sample.dtype),)


@pytest.fixture(scope="module")
def kandinsky6_sr():
    """Kandinsky6SRPipeline (video super-resolution, PiflowScheduler) from a tiny random VAE
    and transformer (n_grid = 2: its output has 2 × 4 latent channels); its NABLA attention
    runs through torch's flex_attention on CPU."""
    if not hasattr(diffusers, "Kandinsky6SRPipeline"):
        pytest.skip("diffusers has no Kandinsky6SRPipeline")
    torch.manual_seed(0)
    vae = diffusers.Kandinsky6SRVAE(
        latent_channels=4, encoder_block_out_channels=(8, 16), decoder_block_out_channels=(8, 16),
        layers_per_block=1,
    ).eval()  # fmt: skip
    try:
        transformer = diffusers.Kandinsky6SRTransformer3DModel(
            in_visual_dim=4, out_visual_dim=8, time_dim=16, model_dim=16, ff_dim=32,
            num_visual_blocks=1, axes_dims=(2, 4, 2), tile_sizes=((16, 16),),
        ).eval()  # fmt: skip
    except ImportError as err:  # flex_attention missing from this torch
        pytest.skip(str(err))
    pipe = diffusers.Kandinsky6SRPipeline(
        transformer=transformer, vae=vae, scheduler=diffusers.PiflowScheduler(n_grid=2)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("sched", "steps"),
    [(ds.Piflow(n_grid=2), 2), (ds.Piflow(n_grid=2, shift=3.0), 1),
     (ds.Piflow(n_grid=2, final_step_size_scale=1.0, num_policy_substeps=32), 4)],
    ids=["defaults-N2", "shift3-N1", "f1-K32-N4"],
)  # fmt: skip
def test_kandinsky6_sr_pipeline(kandinsky6_sr, sched, steps):
    """The super-resolved video, and the last latents before the VAE (recorded)."""
    video = torch.rand(1, 5, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    out = []
    for scheduler in (PiflowInDouble.from_config(sched.to_config()), DiffusersScheduler(sched)):
        seen = recording(scheduler, "step")
        kandinsky6_sr.scheduler = scheduler
        gen = torch.Generator().manual_seed(0)
        frames = kandinsky6_sr(
            video=video, resolution_scale=2, num_inference_steps=steps, generator=gen,
            output_type="pt",
        ).frames  # fmt: skip
        out.append((seen[-1][1][0], frames, gen.get_state()))
    (want, frames_w, g_w), (got, frames_g, g_g) = out
    assert got.shape == (1, 5, 8, 8, 4)  # channels last: the model's output was 8 wide
    close(want, got, f"Piflow (Kandinsky 6 SR)-N={steps}")
    assert float((frames_g - frames_w).abs().max()) <= TOL
    assert torch.equal(g_g, g_w)


@pytest.mark.parametrize(
    ("sched", "steps"),
    [(ds.Piflow(), 4), (ds.Piflow(n_grid=3, shift=3.0, num_policy_substeps=16), 2),
     (ds.Piflow(), 1)],
)  # fmt: skip
def test_piflow_driven_as_kandinsky6(sched, steps):
    """Kandinsky 6's loop: ``set_timesteps(N)``, then per timestep the model (its output
    n_grid times the channels, channels last) and ``step(out, t, x)[0]``; float32."""
    x0 = oracle.start_sample((2, 6, 5), dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5, 5 * sched.n_grid, generator=g) / 5**0.5
    out = []
    for scheduler in (theirs_of(sched), DiffusersScheduler(sched)):
        scheduler.set_timesteps(steps)
        x = x0.clone()
        for t in scheduler.timesteps:
            x = scheduler.step(torch.tanh(x @ w + 1e-3 * float(t)), t, x, return_dict=False)[0]
        out.append((x, scheduler.timesteps))
    (want, t_w), (got, t_g) = out
    assert torch.allclose(t_g.double(), t_w.double(), rtol=1e-6, atol=0)
    # diffusers' float32 loop integrates each segment with up to 128 float32 substeps (N = 1:
    # 7.9e-6 from ours); so the 1e-5 bound is against its arithmetic in float64 (peer)
    x = x0.double()
    double = peer.scheduler(sched.to_config(), float64=True)
    with peer._double_tables(peer.module_of(sched.to_config())):
        double.set_timesteps(steps)
        for t in double.timesteps:
            out = torch.tanh(x.float() @ w + 1e-3 * float(t)).double()
            x = double.step(out, t, x, return_dict=False)[0]
    close(x, got, f"Piflow-N={steps}")
    assert oracle.rel(got, want) < 1e-4  # diffusers' own float32 loop


@pytest.mark.parametrize(
    "sched", [ds.ConsistencyDecoder(), ds.ConsistencyDecoder(sigma_data=0.7)], ids=repr
)
def test_consistency_decoder_vae(sched):
    """ConsistencyDecoderVAE.decode (its scheduler stepped with the generator as the fourth
    positional argument) with ``DiffusersScheduler(ConsistencyDecoder())`` as its
    ``decoder_scheduler``: the same image (6.3e-7 seen on images of ~1) and draws."""
    torch.manual_seed(0)
    vae = diffusers.ConsistencyDecoderVAE(
        encoder_block_out_channels=(8, 16), encoder_down_block_types=("DownEncoderBlock2D",) * 2,
        encoder_layers_per_block=1, encoder_norm_num_groups=4,
        decoder_block_out_channels=(8, 16),
        decoder_down_block_types=("ResnetDownsampleBlock2D",) * 2,
        decoder_up_block_types=("ResnetUpsampleBlock2D",) * 2, decoder_layers_per_block=1,
        decoder_norm_num_groups=4, sample_size=16,
    )  # fmt: skip
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(5))

    def decode(scheduler):
        vae.decoder_scheduler = scheduler
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            image = vae.decode(latents, generator=generator).sample
        return image, generator.get_state()

    theirs, drawn = decode(peer.scheduler(sched.to_config(), float64=False))
    ours, ours_drawn = decode(DiffusersScheduler(sched))
    assert torch.equal(drawn, ours_drawn)
    assert float((ours - theirs).abs().max()) <= TOL * float(theirs.abs().max())


@pytest.mark.parametrize("sched", [ds.ScoreSdeVp(), ds.ScoreSdeVp(beta_max=12.0)], ids=repr)
def test_score_sde_vp_protocol(sched):
    """ScoreSdeVp's ``step_pred(score, x, t, generator)`` (no pipeline drives it: the score
    SDE code's loop), against diffusers' class: the same samples and means (float32), and
    the same draws."""
    start = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    runs = []
    for scheduler in (peer.scheduler(sched.to_config(), float64=False), DiffusersScheduler(sched)):
        scheduler.set_timesteps(10)
        x, generator = start.clone(), torch.Generator().manual_seed(1)
        for t in scheduler.timesteps:
            x, mean = scheduler.step_pred(torch.tanh(x + t), x, t, generator)
        runs.append((x, mean, generator.get_state()))
    (x, mean, drawn), (ours, ours_mean, ours_drawn) = runs
    assert torch.equal(drawn, ours_drawn)
    assert float((ours - x).abs().max()) <= TOL * float(x.abs().max())
    assert float((ours_mean - mean).abs().max()) <= TOL * float(mean.abs().max())


def test_protocol_misuse_is_refused():
    """Calls out of the protocol's order, and what the table cannot do, say so."""
    x = torch.zeros(1, 3, 4, 4)
    karras = DiffusersScheduler(ds.KarrasVe())
    karras.set_timesteps(3)
    with pytest.raises(RuntimeError, match="step_correct must follow step"):
        karras.step_correct(x, 1.0, 0.5, x, x, x)
    sde = DiffusersScheduler(ds.ScoreSdeVe(correct_steps=1))
    sde.set_timesteps(2)
    sde.set_sigmas(2)
    with pytest.raises(RuntimeError, match="step_pred called at a corrector call"):
        sde.step_pred(x, sde.timesteps[0], x)
    sde.step_correct(x + 1, x)
    with pytest.raises(RuntimeError, match="step_correct called at a predictor call"):
        sde.step_correct(x + 1, x)
    cascade = DiffusersScheduler(ds.DDPMWuerstchen())
    with pytest.raises(NotImplementedError, match="custom timesteps"):
        cascade.set_timesteps(timesteps=[1.0, 0.5, 0.0])
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        karras.step(np.zeros((1, 3, 4, 4)), 1.0, 0.5, x)


def test_protocol_adapters_pickle_and_keep_their_loop():
    import pickle

    repaint = DiffusersScheduler(ds.RePaint())
    repaint.set_timesteps(10, 3, 2)
    repaint.eta = 0.5  # as RePaintPipeline sets it
    back = pickle.loads(pickle.dumps(repaint))
    assert type(back).__name__ == "RePaintScheduler" and back.eta == 0.5
    assert torch.equal(back.timesteps, repaint.timesteps)
    cog = DiffusersScheduler(ds.CogVideoXDPM())
    assert isinstance(pickle.loads(pickle.dumps(cog)), diffusers.CogVideoXDPMScheduler)


@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_flow_map_any_step_sampling(shift):
    """A flow map steps from any t to any r in one call (AnyFlow's any-step sampling,
    ``step(..., r_timestep=)``): off the loop's grid, to a level further down it, to 0 at
    once, and t to itself (the identity), each equal to diffusers' class (float64 σ's on
    both sides), its counter as diffusers' (it refused these before)."""
    sched = ds.FlowMapEuler(shift=shift)
    theirs = peer.scheduler(sched.to_config(), float64=False)
    ours = DiffusersScheduler(sched)
    for s in (theirs, ours):
        s.set_timesteps(8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 4, generator=g)
    u = torch.randn(1, 4, 4, 4, generator=g)
    ts = theirs.timesteps
    pairs = [
        (torch.tensor([777.7]), torch.tensor([123.4])),  # both off the grid
        (ts[1:2], ts[5:6]),  # four levels down in one call
        (ts[0:1], torch.tensor([0.0])),  # one-shot
        (ts[2:3], ts[2:3]),  # r = t: the identity
    ]
    for t, r in pairs:
        outs = []
        for s in (theirs, ours):
            s._step_index = None
            outs.append((s.step(u, t, x, r_timestep=r).prev_sample, s.step_index))
        torch.testing.assert_close(outs[1][0], outs[0][0], rtol=0, atol=1e-6)
        assert outs[1][1] == outs[0][1]
    torch.testing.assert_close(ours.step(u, ts[2:3], x, r_timestep=ts[2:3]).prev_sample, x)
    with pytest.raises(ValueError, match="pass r_timestep"):
        ours.step(u, torch.tensor([777.7]), x)


def test_flow_map_scale_noise_is_diffusers():
    """FlowMapEuler's ``scale_noise`` reads σ = t / T of any timestep, as diffusers' (it
    refused a timestep off the grid, and needed set_timesteps): the ends and a batch."""
    sched = ds.FlowMapEuler(shift=5.0)
    theirs, ours = peer.scheduler(sched.to_config(), float64=False), DiffusersScheduler(sched)
    sample = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1))
    for t in (torch.tensor([0.0]), torch.tensor([1000.0]), torch.tensor([777.7, 10.0, 0.0])):
        torch.testing.assert_close(
            ours.scale_noise(sample, t, noise), theirs.scale_noise(sample, t, noise)
        )
    torch.testing.assert_close(ours.scale_noise(sample, torch.tensor([0.0]), noise), sample)


def test_protocol_methods_name_themselves_in_type_errors():
    """A non-tensor given to a protocol method is refused naming that method."""
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(TypeError, match=r"scale_noise\(\) of FlowMapEuler.*noise must be"):
        DiffusersScheduler(ds.FlowMapEuler()).scale_noise(x, torch.tensor([1.0]), None)
    vp = DiffusersScheduler(ds.ScoreSdeVp())
    vp.set_timesteps(3)
    with pytest.raises(TypeError, match=r"step_pred\(\) of ScoreSdeVp.*score must be"):
        vp.step_pred(np.zeros((1, 3, 4, 4)), x, vp.timesteps[0])
