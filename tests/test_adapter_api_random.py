"""The adapter's API calls against diffusers' class, on seeded random configs.

``test_differential.py`` runs whole loops; this draws configs the same way (its ``draw``,
every mirrored class) and compares what a pipeline or a training script reads from the
scheduler besides ``step``, each on the adapter's own loop against diffusers' class of the
same config:

* ``timesteps`` (relative 1e-6), where diffusers has them ``sigmas`` (1e-5) and
  ``init_noise_sigma``, against diffusers' class with float64 tables (the stock float32
  class maps Karras σ's to timesteps in float32: 7.4416 where the exact map gives 7.4391);
* ``scale_model_input`` at the loop's first timestep and ``add_noise`` at one of the
  loop's timesteps drawn at random (1e-5, float64 tables), each at the adapter's own
  timestep of the same index.

Where diffusers' timesteps are NaN, ours must be finite. Known departures, excluded with
their reason:

* ``DPM2Ancestral``'s midpoint timesteps: diffusers computes the midpoint level from
  σ_down = sqrt(σ_next² - σ_up²), which cancels catastrophically where σ ≫ σ_next (a
  squared-cosine table's top σ is 2e4: its first midpoint timestep came out 913.8 where
  the exact level, σ_next itself, is at 888); ours is exact. The main timesteps are
  compared.
* ``DPMSolverMultistepInverse`` where Karras levels round to one timestep: diffusers drops
  the repeated timestep but not its level (``test_differential.py``'s departure).
* configs ours refuses with a named reason (zero terminal SNR with ε, a level visited
  twice, a grid stretched past the training range, DDIMInverse from clean data with
  ``prediction_type="sample"``).

``DIFFSCHED_ADAPTER_API=N`` runs N configs per class instead of CI's 3, and
``DIFFSCHED_ADAPTER_API_SEED=S`` draws another set.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from test_differential import drawn, made

import diffsched as ds
from diffsched.diffusers import DiffusersScheduler
from diffsched.grids import is_flow
from diffsched.interop import peer

EXAMPLES = int(os.environ.get("DIFFSCHED_ADAPTER_API", "3"))
SEED = os.environ.get("DIFFSCHED_ADAPTER_API_SEED", "adapter-api")
REFUSED = ("zero signal-to-noise", "visits", "stretches", "clean data")


def cases():
    return [
        pytest.param(name, options, n, r.random(), id=f"{name}-{k}-N={n}")
        for name, k, options, n, r in drawn(SEED, EXAMPLES)
    ]


def rel(a, b, floor: float = 0.0) -> float:
    """|a - b| / max(|b|, floor) (floor: timesteps of a one-step loop may all be ~0)."""
    a = torch.as_tensor(a, dtype=torch.float64).reshape(-1)
    b = torch.as_tensor(b, dtype=torch.float64).reshape(-1)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(float(b.norm()), floor)
    return float((a - b).norm()) / (scale if scale > 0 else 1.0)


@pytest.mark.parametrize(("name", "options", "n", "u"), cases())
def test_api_calls_equal_diffusers(name, options, n, u):
    sched = made(name, options)
    if sched is None:
        return
    config = sched.to_config()
    module = peer.module_of(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with peer._double_tables(module):
                theirs = peer.scheduler(config)
                theirs.set_timesteps(n)
            peer._double_grids(theirs)
        except Exception:  # diffusers cannot run this config (test_differential's concern)
            return
        try:
            ours = DiffusersScheduler.from_config(config)
            ours.set_timesteps(n)
        except ValueError as err:
            assert any(w in str(err) for w in REFUSED), err
            return
    ts_ours, ts_theirs = ours.timesteps, theirs.timesteps
    inverse = name == "DPMSolverMultistepInverse"
    if inverse and len(ts_ours) < n:
        return  # a repeated timestep dropped with its level (module docstring)
    assert ts_ours.shape == ts_theirs.shape, (ts_ours, ts_theirs)
    if not torch.isfinite(ts_theirs).all():  # diffusers' NaN (FlowMatchLCM at N = 1): ours finite
        assert torch.isfinite(ts_ours).all(), ts_ours
        return
    main = slice(None, None, 2) if name == "DPM2Ancestral" else slice(None)
    # a flow loop calls the model at t = σ T: stock diffusers' float32 σ next to 0 (1 - σ
    # inverted, 1.2e-7) is t = 1.2e-4 where the float64 tables give 0 (seed 20261210,
    # FlowMatchLCM at N = 1; ours is stock's): one-step loops are judged on the scale T
    floor = float(sched.num_train_steps) if is_flow(sched) else 1.0
    assert rel(ts_ours[main], ts_theirs[main], floor) <= 1e-6, (ts_ours, ts_theirs)
    if torch.is_tensor(getattr(theirs, "sigmas", None)):
        assert rel(ours.sigmas, theirs.sigmas) <= 1e-5, (ours.sigmas, theirs.sigmas)
    if hasattr(theirs, "init_noise_sigma"):
        want = float(theirs.init_noise_sigma)
        assert abs(float(ours.init_noise_sigma) - want) <= 1e-6 * max(1.0, abs(want))
    g = torch.Generator().manual_seed(len(ts_ours))
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    z = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    if hasattr(theirs, "scale_model_input"):
        got = ours.scale_model_input(x, ts_ours[0])
        assert rel(got, theirs.scale_model_input(x, theirs.timesteps[0])) <= 1e-5
    if not hasattr(theirs, "add_noise"):
        return
    i = int(u * len(ts_ours))
    got = ours.add_noise(x, z, ts_ours[i : i + 1].repeat(2))
    with peer._double_tables(module):
        want = theirs.add_noise(x, z, theirs.timesteps[i : i + 1].repeat(2))
    assert rel(got, want) <= 1e-5, (i, rel(got, want))


def test_an_inverted_flow_one_step_loop_is_stock_diffusers():
    """The case behind the flow floor above: at N = 1 with inverted exponential σ's, stock
    diffusers (float32 tables) calls the model at t = 1.19e-4, the float64 tables at 0;
    the adapter's timestep is stock's."""
    config = ds.FlowMatchLCM(shift=1.0513023717890235, use_exponential_sigmas=True,
                             invert_sigmas=True).to_config()  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stock = peer.scheduler(config, float64=False)
        stock.set_timesteps(1)
        ours = DiffusersScheduler.from_config(config)
        ours.set_timesteps(1)
    assert ours.timesteps.tolist() == stock.timesteps.tolist() == [2.0**-23 * 1000]
