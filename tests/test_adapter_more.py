"""The adapter (``diffsched.diffusers``) with the classes of issue 18 in real diffusers
pipelines built from tiny random-weight components (no downloads): each pipeline runs twice
with the same seed, with diffusers' own scheduler of the config and with
``DiffusersScheduler`` wrapping ours; the images (float32, torch CPU) must agree within 1e-5
and the generators end in the same state.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffsched as ds  # noqa: E402
from diffsched.diffusers import DiffusersScheduler  # noqa: E402
from diffsched.interop import peer  # noqa: E402

IMAGE_TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_both(pipe, ours, theirs, **call):
    """(images with diffusers' scheduler, with ours; the generators' final states)."""
    out = []
    for scheduler in (theirs, ours):
        pipe.scheduler = scheduler
        g = torch.Generator().manual_seed(0)
        image = pipe(generator=g, output_type="np", **call).images
        out.append((np.asarray(image, dtype=np.float64), g.get_state()))
    return out


@pytest.fixture(scope="module")
def consistency_pipe():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    pipe = diffusers.ConsistencyModelPipeline(
        unet=unet, scheduler=diffusers.CMStochasticIterativeScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("sched", "call"),
    [
        (ds.CMStochasticIterative(), {"num_inference_steps": 1}),
        (ds.CMStochasticIterative(), {"num_inference_steps": 3}),
        (ds.CMStochasticIterative(num_train_steps=151, clip_denoised_sample=False),
         {"timesteps": [140, 80, 20]}),
    ],
    ids=["1-step", "3-step", "custom-timesteps"],
)  # fmt: skip
def test_consistency_model_pipeline(consistency_pipe, sched, call):
    theirs = diffusers.CMStochasticIterativeScheduler.from_config(sched.to_config())
    (want, g_want), (got, g_got) = run_both(
        consistency_pipe, DiffusersScheduler(sched), theirs, batch_size=2, **call
    )
    assert np.abs(got - want).max() <= IMAGE_TOL
    assert torch.equal(g_got, g_want)  # as much noise drawn
    assert want.std() > 1e-3


@pytest.fixture(scope="module")
def kandinsky_prior(tmp_path_factory):
    """KandinskyPriorPipeline from tiny random CLIP encoders and prior (Kandinsky 2.1's
    prior scheduler config: x_0-predicting, clipped at 10)."""
    transformers = pytest.importorskip("transformers")
    from test_adapter import tiny_tokenizer

    tokenizer, vocab = tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    torch.manual_seed(0)
    width = 16
    text_encoder = transformers.CLIPTextModelWithProjection(
        transformers.CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=width,
            projection_dim=width, intermediate_size=32, num_attention_heads=2,
            num_hidden_layers=1, vocab_size=vocab, max_position_embeddings=16,
        )
    ).eval()  # fmt: skip
    image_encoder = transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(
            hidden_size=width, image_size=28, projection_dim=width, intermediate_size=32,
            num_attention_heads=2, num_channels=3, num_hidden_layers=1, patch_size=14,
        )
    ).eval()  # fmt: skip
    processor = transformers.CLIPImageProcessor(crop_size=28, size=28)
    prior = diffusers.PriorTransformer(
        num_attention_heads=2, attention_head_dim=8, embedding_dim=width, num_layers=1,
        num_embeddings=16,
    ).eval()  # fmt: skip
    prior.clip_std = torch.nn.Parameter(torch.ones(1, width))
    prior.clip_mean = torch.nn.Parameter(torch.zeros(1, width))
    config = {"variance_type": "fixed_small_log", "prediction_type": "sample",
              "clip_sample": True, "clip_sample_range": 10.0}  # fmt: skip
    pipe = diffusers.KandinskyPriorPipeline(
        prior=prior, image_encoder=image_encoder, text_encoder=text_encoder,
        tokenizer=tokenizer, scheduler=diffusers.UnCLIPScheduler(**config),
        image_processor=processor,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("steps", [2, 5, 25])
def test_kandinsky_prior_pipeline(kandinsky_prior, steps):
    sched = ds.UnCLIP.from_config(dict(kandinsky_prior.scheduler.config))
    assert isinstance(sched, ds.UnCLIP) and sched.prediction_type == "sample"
    # diffusers' ᾱ table in float64 (its formulas; see tests/oracle.py): with its float32
    # table, 1 - ᾱ_t near t = 0 (about 1e-5 there) is 2.6e-4 off the float64 value, and the
    # embeddings 5e-4
    theirs = peer.scheduler(sched.to_config(), float64=True)
    out = []
    for scheduler in (theirs, DiffusersScheduler(sched)):
        kandinsky_prior.scheduler = scheduler
        g = torch.Generator().manual_seed(0)
        result = kandinsky_prior(
            "a cat", num_inference_steps=steps, generator=g, output_type="pt",
            guidance_scale=4.0,
        )  # fmt: skip
        out.append((result.image_embeds.double().numpy(), g.get_state()))
    (want, g_want), (got, g_got) = out
    assert np.abs(got - want).max() <= IMAGE_TOL * max(1.0, np.abs(want).max())
    assert torch.equal(g_got, g_want)
    assert want.std() > 1e-3


@pytest.fixture(scope="module")
def cogvideox_pipe():
    """CogVideoXPipeline from a tiny random transformer, run on given prompt embeddings to
    latents (no text encoder, tokenizer or VAE: none is downloadable here)."""
    torch.manual_seed(0)
    transformer = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4,
        time_embed_dim=2, text_embed_dim=32, num_layers=1, sample_width=2, sample_height=2,
        sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16,
    ).eval()  # fmt: skip
    pipe = diffusers.CogVideoXPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
        scheduler=diffusers.CogVideoXDDIMScheduler(),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("sched", "steps"),
    [
        (ds.CogVideoXDDIM(rescale_betas_zero_snr=True, prediction_type="angular_velocity",
                          timestep_spacing="trailing", snr_shift_scale=1.0), 4),  # CogVideoX-5b
        (ds.CogVideoXDDIM(), 3),
    ],
    ids=["5b-config", "defaults"],
)  # fmt: skip
def test_cogvideox_pipeline(cogvideox_pipe, sched, steps):
    g = torch.Generator().manual_seed(1)
    embeds, negative = torch.randn(1, 16, 32, generator=g), torch.randn(1, 16, 32, generator=g)
    out = []
    for scheduler in (
        diffusers.CogVideoXDDIMScheduler.from_config(sched.to_config()),
        DiffusersScheduler(sched),
    ):
        cogvideox_pipe.scheduler = scheduler
        latents = cogvideox_pipe(
            prompt_embeds=embeds, negative_prompt_embeds=negative, height=16, width=16,
            num_frames=9, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
            output_type="latent", guidance_scale=6.0, max_sequence_length=16,
        ).frames  # fmt: skip
        out.append(latents.double().numpy())
    want, got = out
    assert np.abs(got - want).max() <= IMAGE_TOL * np.abs(want).max()
    assert want.std() > 1e-3
