"""Scheduler configs shaped after published models', through the adapter in a pipeline's
loop, against diffusers' class (float64 tables) from the same config.

``test_differential.py`` draws option combinations at random; these are the combinations
models ship (the keys that change the result; metadata left out): SDXL's Euler, SDXL
Turbo's trailing Euler ancestral, Stable Video Diffusion's continuous-time Karras Euler
(σ_max 700, v), Kolors' 1100-step table, Playground v2.5's EDM DPM-Solver++, PixArt-α's
DPM-Solver++, Hunyuan-DiT's v DDPM, I2VGen-XL's zero-SNR trailing v DDIM, AnimateDiff's
linear DDIM, HunyuanVideo's and AuraFlow's flow shifts, the DPM++ 2M (SDE) Karras that
users pick for Stable Diffusion, LCM and TCD for SDXL, UniPC on SD 1.5. Each is run at 4,
8 and 25 steps: the same timesteps, the same final sample (1e-6, largest seen 4.6e-8) and
the generator left where diffusers leaves it.
"""

from __future__ import annotations

import warnings

import numpy as np
import oracle
import pytest
import torch
from test_differential import pipeline_loop

from diffsched.diffusers import DiffusersScheduler
from diffsched.interop import peer

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
      "num_train_timesteps": 1000}  # fmt: skip
CONFIGS = {
    "SDXL Euler": {
        "_class_name": "EulerDiscreteScheduler", **SD, "interpolation_type": "linear",
        "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "leading",
    },
    "SDXL Turbo": {
        "_class_name": "EulerAncestralDiscreteScheduler", **SD, "prediction_type": "epsilon",
        "steps_offset": 1, "timestep_spacing": "trailing",
    },
    "Stable Video Diffusion": {
        "_class_name": "EulerDiscreteScheduler", **SD, "interpolation_type": "linear",
        "prediction_type": "v_prediction", "sigma_max": 700.0, "sigma_min": 0.002,
        "steps_offset": 1, "timestep_spacing": "leading", "timestep_type": "continuous",
        "use_karras_sigmas": True,
    },
    "Kolors": {
        "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.014,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1100,
        "interpolation_type": "linear", "prediction_type": "epsilon", "steps_offset": 1,
        "timestep_spacing": "leading",
    },
    "Playground v2.5": {
        "_class_name": "EDMDPMSolverMultistepScheduler", "algorithm_type": "dpmsolver++",
        "final_sigmas_type": "zero", "lower_order_final": True, "num_train_timesteps": 1000,
        "prediction_type": "epsilon", "rho": 7.0, "sigma_data": 0.5, "sigma_max": 80.0,
        "sigma_min": 0.002, "solver_order": 2, "solver_type": "midpoint",
    },
    "PixArt-alpha": {
        "_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver++",
        "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "lower_order_final": True, "num_train_timesteps": 1000, "prediction_type": "epsilon",
        "solver_order": 2, "solver_type": "midpoint", "timestep_spacing": "linspace",
    },
    "Hunyuan-DiT": {
        "_class_name": "DDPMScheduler", "beta_start": 0.00085, "beta_end": 0.03,
        "beta_schedule": "scaled_linear", "clip_sample": False, "num_train_timesteps": 1000,
        "prediction_type": "v_prediction", "steps_offset": 1, "timestep_spacing": "leading",
        "variance_type": "fixed_small",
    },
    "I2VGen-XL": {
        "_class_name": "DDIMScheduler", **SD, "clip_sample": False,
        "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
        "set_alpha_to_one": True, "steps_offset": 1, "timestep_spacing": "trailing",
    },
    "AnimateDiff": {
        "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "linear", "clip_sample": False, "num_train_timesteps": 1000,
        "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "linspace",
    },
    "HunyuanVideo": {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
        "shift": 7.0,
    },
    "AuraFlow": {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
        "shift": 1.73,
    },
    "SD 1.5 DPM++ 2M Karras": {
        "_class_name": "DPMSolverMultistepScheduler", **SD, "algorithm_type": "dpmsolver++",
        "solver_order": 2, "use_karras_sigmas": True, "steps_offset": 1,
        "timestep_spacing": "leading",
    },
    "SDXL DPM++ 2M SDE Karras": {
        "_class_name": "DPMSolverMultistepScheduler", **SD, "algorithm_type": "sde-dpmsolver++",
        "solver_order": 2, "use_karras_sigmas": True, "steps_offset": 1,
        "timestep_spacing": "leading",
    },
    "LCM SDXL": {
        "_class_name": "LCMScheduler", **SD, "original_inference_steps": 50,
        "prediction_type": "epsilon", "set_alpha_to_one": True, "steps_offset": 1,
        "timestep_scaling": 10.0, "timestep_spacing": "leading",
    },
    "TCD SDXL": {
        "_class_name": "TCDScheduler", **SD, "original_inference_steps": 50,
        "prediction_type": "epsilon", "set_alpha_to_one": True, "steps_offset": 1,
        "timestep_scaling": 10.0, "timestep_spacing": "leading",
    },
    "SD 1.5 UniPC": {
        "_class_name": "UniPCMultistepScheduler", **SD, "solver_order": 2, "steps_offset": 1,
        "timestep_spacing": "linspace",
    },
}  # fmt: skip


@pytest.mark.parametrize("steps", [4, 8, 25])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_published_config_equals_diffusers(name, steps):
    config = CONFIGS[name]
    start, model = oracle.start_sample(), oracle.linear_tanh_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers' deprecation notices
        theirs = pipeline_loop(peer.scheduler(config), config, steps, start, model)
        ours = pipeline_loop(DiffusersScheduler.from_config(config), config, steps, start, model)
    np.testing.assert_allclose(
        np.asarray(ours[0], np.float64), theirs[0].to(torch.float64).numpy(), rtol=1e-5, atol=5e-4
    )
    assert torch.equal(ours[2], theirs[2]), "the generator is not where diffusers leaves it"
    err = float((ours[1].double() - theirs[1].double()).norm() / theirs[1].double().norm())
    assert err < 1e-6, err
