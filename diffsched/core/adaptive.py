"""The state of an adaptive loop (docs/adaptive.md; the methods: diffsched.methods._adaptive).

It lives here, beside the engine's state, so that every ``step`` can tell the two apart
and refuse the other kind with a clear error.
"""

from __future__ import annotations

from typing import Any, NamedTuple

Array = Any


class AdaptiveState(NamedTuple):
    """The loop state of an adaptive method: arrays of shapes fixed at ``init``.

    Attributes:
        x: the accepted solution (native sample) at the current level.
        extra: (E, *shape) the method's per-attempt arrays (stage derivatives, ...).
        clock: (9,) compute dtype: the time τ = -log σ of ``x``, the time the attempt steps
            to, the proposed step size, σ of the pending model call, three error memories of
            the step-size controller, the end time, the factor of the result (ComfyUI's
            inverse noise scaling).
        counts: (5,) int32: the stage of the pending call within its attempt, model calls
            so far, accepted and rejected attempts, the bound ``max_calls``.
        flags: (2,) bool: done, reached (the loop ended at its end level).
        table: (T,) log σ of the model's table (discrete timesteps), or (1,) zero.
        fingerprint: 0-d int32: the config's fingerprint (``step`` refuses a foreign state).
        key: the noise stream of a stochastic configuration: the 0-d int32 seed of ``init``'s
            key (draw k of the loop is a pure function of it and k), or with
            ``noise_stream="comfy"`` the state of ComfyUI's seeded torch.Generator (uint8);
            a deterministic configuration holds the seed and never reads it.
    """

    x: Array
    extra: Array
    clock: Array
    counts: Array
    flags: Array
    table: Array
    fingerprint: Array
    key: Array


def foreign(name: str, state: AdaptiveState, describe) -> str:
    """The message for an adaptive state given to a fixed-grid class's ``step``."""
    from . import ops

    made = ops.concrete_int(state.fingerprint)
    maker = describe(made) if made is not None else "an adaptive scheduler"
    return (
        f"{name}.step was given a state that another configuration's init made: an adaptive "
        f"loop's state, made by {maker}. Use the scheduler that made the state"
    )
