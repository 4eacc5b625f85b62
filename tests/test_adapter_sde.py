"""diffusers' SDE classes through the adapter (``DiffusersScheduler``) in a tiny Stable
Diffusion pipeline (random weights, no downloads): ``DPMSolverSDE`` and
``CosineDPMSolverMultistep`` against diffusers' ``DPMSolverSDEScheduler`` and
``CosineDPMSolverMultistepScheduler``, float32, torch CPU.

Both diffusers classes draw from a torchsde Brownian tree; here its noise sampler is
replaced by one returning diffsched's tree increments over our calls' levels, seeded as
diffusers seeds it (``noise_sampler_seed``; the pipeline generator's initial seed, 0, for
the Cosine class, which the adapter's key 0 matches), so the two loops see the same noise:
every step's sample and the image agree within 1e-5, and neither loop draws from the
generators.
"""

from __future__ import annotations

import importlib
from unittest import mock

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import test_adapter  # noqa: E402
from test_adapter import compare, sd_call, sd_components, sd_pipe  # noqa: E402, F401

import diffsched as ds  # noqa: E402
from diffsched.core import brownian, engine, ops  # noqa: E402
from diffsched.diffusers import DiffusersScheduler  # noqa: E402

one_thread = test_adapter.one_thread


def our_tree_sampler(ours, num_steps):
    """diffusers' BrownianTreeNoiseSampler(x, σ_min, σ_max, seed), drawing our tree's
    increments: a request for (σ, σ') is served at the levels of our call whose interval
    is nearest (diffusers' float32 midpoints are an ulp off ours, and a Brownian path moves
    by sqrt(δ) over δ), from that call's row of our float32 table, with the seed diffusers
    passes."""
    program = ours.program(num_steps)
    first = len(engine.COEF_COLUMNS) + 1
    table = program.coefs[: program.num_calls].astype(np.float32).astype(np.float64)
    levels = program.coefs[: program.num_calls, first : first + 2]
    leaves = table[:, first + 2 : first + 7]  # (k, f, k', f', scale) as a float32 table

    def make(x, sigma_min=None, sigma_max=None, seed=None, **_):
        key = torch.tensor(ops.seed_array(np, int(seed or 0), np.zeros(())).item(),
                           dtype=torch.int32)  # fmt: skip

        def draw(sigma, sigma_next):
            want = np.array([float(v) / (1.0 + float(v)) for v in (sigma, sigma_next)])
            row = leaves[np.argmin(np.abs(levels - want).sum(axis=1))]
            like = torch.zeros(x.shape, dtype=x.dtype)
            return brownian.call_increment(brownian.tree_seed(key), tuple(row.tolist()),
                                           like, x.dtype)  # fmt: skip

        return draw

    return make


@pytest.mark.parametrize(
    "ours",
    [
        ds.DPMSolverSDE(**test_adapter.SD_SCHEDULE, noise_sampler_seed=3),
        ds.DPMSolverSDE(**test_adapter.SD_SCHEDULE, noise_sampler_seed=3, use_karras_sigmas=True),
        ds.CosineDPMSolverMultistep(sigma_max=80.0, prediction_type="noise"),
    ],
    ids=["dpmpp-sde", "dpmpp-sde-karras", "cosine"],
)
def test_sde_classes_in_stable_diffusion(sd_pipe, ours):  # noqa: F811
    module = importlib.import_module(test_adapter.diffusers_twin(ours).__class__.__module__)
    with mock.patch.object(module, "BrownianTreeNoiseSampler", our_tree_sampler(ours, 4)):
        diff = compare(sd_pipe, ours, **sd_call("SDE", num_inference_steps=4))
    assert diff <= test_adapter.IMAGE_TOL


def test_gaussian_noise_draws_from_the_generator(sd_pipe):  # noqa: F811
    """With noise_type="gaussian" the adapter draws the pipeline generator's normals (more
    noise drawn than diffusers' Brownian loop: the generators end apart)."""
    ours = ds.DPMSolverSDE(**test_adapter.SD_SCHEDULE, noise_type="gaussian")
    g = torch.Generator().manual_seed(0)
    sd_pipe.scheduler = DiffusersScheduler(ours)
    out = sd_pipe(generator=g, output_type="np", **sd_call("SDE", num_inference_steps=3)).images
    g_fresh = torch.Generator().manual_seed(0)
    sd_pipe(generator=g_fresh, output_type="np", num_images_per_prompt=1,
            **sd_call("SDE", num_inference_steps=1))  # fmt: skip
    assert np.isfinite(out).all()
    assert not torch.equal(g.get_state(), g_fresh.get_state())
