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
