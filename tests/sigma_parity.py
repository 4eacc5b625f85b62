"""Parity harness for the σ-based methods: our loop and diffusers', driven as pipelines do.

Both loops start from the same standard normal noise: ours scaled by
``init_noise_scale``, diffusers' by ``init_noise_sigma`` and then ``scale_model_input``.
The model sees the same array in both (we record every model input and compare the
first), stochastic steps get the same noise (``step(..., noise=z)`` here, diffusers'
``randn_tensor`` replaced there), and the final samples must agree.
"""

from __future__ import annotations

import oracle
import torch

from diffsched.interop import peer

F64_BOUND = oracle.F64_BOUND
F32_BOUND = oracle.F32_BOUND


def recording(model):
    inputs = []

    def wrapped(x, t):
        inputs.append(x.clone())
        return model(x, t)

    return wrapped, inputs


def loop_ours(sched, n, start, model, noises, **init_options):
    """(timesteps, final sample, model inputs) of our loop from standard normal ``start``."""
    state, timesteps = sched.init(n, start, key=0, **init_options)
    x = start * sched.init_noise_scale(n, **init_options)
    wrapped, inputs = recording(model)
    for i, t in enumerate(timesteps):
        kwargs = {} if sched.deterministic else {"noise": noises[i]}
        state, x = sched.step(state, x, wrapped(x, t), **kwargs)
    return timesteps, x, inputs


def compare(sched, n, *, dtype=torch.float64, config=None, set_timesteps=None, **init_options):
    """Asserts identical timesteps and first model input; returns the final samples' rel. diff.

    ``set_timesteps`` are diffusers' ``set_timesteps`` keywords when they differ from
    ``init_options`` (for example ``sigmas=`` given to both).
    """
    start = oracle.start_sample(dtype=dtype)
    model = oracle.linear_tanh_model()
    noises = oracle.noise_list(max(3 * (n or 1) + 3, 8), dtype=dtype)
    config = sched.to_config() if config is None else config
    ts, ours, our_inputs = loop_ours(sched, n, start, model, noises, **init_options)
    wrapped, their_inputs = recording(model)
    kwargs = init_options if set_timesteps is None else set_timesteps
    their_ts, theirs = peer.run(
        config, wrapped, start, n, noises=noises, float64=dtype == torch.float64, **kwargs
    )
    assert len(ts) == len(their_ts)
    torch.testing.assert_close(
        torch.as_tensor(ts, dtype=torch.float64),
        their_ts.to(torch.float64),
        rtol=1e-5,
        atol=1e-5,
    )
    assert ours.dtype == theirs.dtype == dtype
    assert torch.isfinite(theirs).all()
    # diffusers forms its start with float32 scalars (init_noise_sigma, the input scale)
    first = oracle.rel(our_inputs[0], their_inputs[0])
    assert first < (1e-7 if dtype == torch.float64 else 1e-6), first
    assert oracle.rel(theirs, start) > 1e-3  # the loop moved the sample
    return oracle.rel(ours, theirs)


def check(sched, n, *, label=None, name=None, **options) -> float:
    """:func:`compare` held to F64_BOUND (F32_BOUND with ``dtype=torch.float32``), its
    difference recorded for the summary under ``label`` ("PARITY", or "PARITY float32",
    by default) and ``name`` (the class name by default); returns the difference."""
    float32 = options.get("dtype", torch.float64) == torch.float32
    r = compare(sched, n, **options)
    if label is None:
        label = "PARITY float32" if float32 else "PARITY"
    oracle.record(label, type(sched).__name__ if name is None else name, r)
    assert r < (F32_BOUND if float32 else F64_BOUND), r
    return r
