"""π-Flow: Chen, Zhang, Tan, Guibas, Wetzstein & Bi 2025, "π-Flow: Policy-Based Few-Step
Generation via Imitation Distillation" (diffusers' ``PiflowScheduler``, the sampler of the
distilled Kandinsky 6 checkpoints).

A π-Flow student does not predict the velocity of the rectified flow

    x_σ = (1 - σ) x_0 + σ ε                                                          (1)

at one point: at each of its few calls it outputs a *policy*, a network-free velocity field
π(x, σ) valid over the segment to the next call, and the sampler integrates that field with
many cheap substeps (no model call between them). The policy used here is the paper's DX
policy: the model gives n velocities u_0 .. u_{n-1} at once (the model output has n times
the sample's channels, channel block k holding u_k), read as n estimates of x_0,

    x̂_0^k = x_s - σ_s u_k                                                            (2)

at the points of a uniform grid over the segment's *unshifted* time r (σ = S(r), the static
shift S(r) = s r / (1 + (s - 1) r) of Esser et al. 2024, eq. 23; r = S⁻¹(σ)): estimate k
belongs to r_d + k (r_s - r_d) / (n - 1), from the segment's end r_d (k = 0) to its start
r_s (k = n - 1). Between grid points x̂_0(r) is linear in r (clamped to the segment), and
the policy is the velocity that points from it:

    π(x, σ) = (x - x̂_0(r(σ))) / max(σ, η)                                            (3)

(η: ``eps``). The segment is integrated with M = max(1, round((r_s - r_d) K)) Euler steps
of equal size in r (K: ``num_policy_substeps`` per unit of r), each an Euler step in σ:

    x_{j+1} = x_j + (σ_{j+1} - σ_j) π(x_j, σ_j),   σ_j = S(r_s - j (r_s - r_d) / M)         (4)

Everything in (2)-(4) is linear in (x_s, u_0 .. u_{n-1}) with numbers fixed by the grid:
writing x_j = x_s + Σ_k B_jk u_k (the coefficient of x_s stays 1, since Σ_k w_k(r) = 1 for
the interpolation weights w_k of x̂_0(r) = x_s - σ_s Σ_k w_k(r) u_k),

    B_{j+1} = (1 + c_j) B_j + c_j σ_s w(r_j),   c_j = (σ_{j+1} - σ_j) / max(σ_j, η)        (5)

So a call is a rectified-flow Euler step x_d = x_s + B v̄ with B = Σ_k B_Mk (σ_d - σ_s up
to rounding: exactly that when the n velocities agree, (4) being exact for a constant
x̂_0) on the *policy-averaged velocity* v̄ = Σ_k (B_Mk / B) u_k. The weights are computed
in ``init`` in float64; ``step`` forms v̄ (one weighted sum over the n blocks) and hands it
to the engine's flow step, with x̂_0 = x_s - σ_s v̄.

The grid (diffusers' ``set_timesteps``): N calls at r_i = 1 - i / (N - 1 + f), f the
relative size of the last segment (``final_step_size_scale``); the last call integrates to
r = η, so the final sample is at σ = S(η), not 0. The model is called at t_i = S(r_i) T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import engine, ops, predictions
from ..core.engine import OUTPUT, SAMPLE, Tableau
from ..core.options import option
from ..core.scheduler import MAX_TRAIN_STEPS, BaseScheduler, document
from ..schedules import shifts

Array = Any


@document
@dataclass(frozen=True, kw_only=True)
class Piflow(BaseScheduler):
    """π-Flow's few-step sampler: each call's n-velocity policy integrated over its segment
    (Chen et al. 2025, the DX policy).

    First order per segment (the policy is integrated by Euler substeps); one model call per
    step; deterministic. diffusers: ``PiflowScheduler`` (Kandinsky 6's distilled
    checkpoints). Not to be confused with ``FlowMatchEuler`` (one velocity per call, one
    Euler step per segment), which is what this gives when the n velocities agree.

    **The model output is wider than the sample**: ``n_grid`` velocities u_0 .. u_{n-1},
    concatenated along the *last* axis (the channels of a channels-last sample, as
    Kandinsky 6's transformer gives them): its shape is :meth:`prediction_shape` of the
    sample's, ``sample.shape[:-1] + (n_grid * sample.shape[-1],)``, and block k is u_k, the
    velocity at the k-th of n_grid points of the segment from its end (k = 0) to its start.
    ``unconditional=`` takes an output of the same shape. The final sample is at
    σ = S(``eps``), as diffusers ends its loop.
    """

    DIFFUSERS_CLASS = "PiflowScheduler"
    PREDICTION_TYPES = (predictions.FLOW,)
    TRAINING_TIMESTEPS = False
    NO_PER_ELEMENT = "its step averages the model's n_grid velocities with per-call weights"

    num_train_steps: int = option(
        1000, "T: a level σ is called at t = σ T", "num_train_timesteps",
        low=1, high=MAX_TRAIN_STEPS,
    )  # fmt: skip
    shift: float = option(
        5.0, "the static shift s of the levels, σ = s r / (1 + (s - 1) r) (Esser et al. "
        "2024, eq. 23)", "shift", low=0.0, low_open=True,
    )  # fmt: skip
    n_grid: int = option(
        10, "n: the velocities in each model output, on a uniform grid of the segment (2)",
        "n_grid", low=2, high=4096,
    )  # fmt: skip
    eps: float = option(
        1e-6, "η: the floor of σ in the policy (3), and the unshifted time the last segment "
        "ends at", "eps", low=0.0, low_open=True, high=0.5,
    )  # fmt: skip
    final_step_size_scale: float = option(
        0.5, "f: the last segment's size in r relative to the others'",
        "final_step_size_scale", low=0.0, low_open=True, high=1.0,
    )  # fmt: skip
    num_policy_substeps: int = option(
        128, "K: Euler substeps (4) per unit of unshifted time r", "num_policy_substeps",
        low=1, high=1 << 20,
    )  # fmt: skip
    prediction_type: str = option(
        predictions.FLOW, "what the model predicts: flow, n velocities ε - x_0 (2)", None,
        choices=(predictions.FLOW,),
    )  # fmt: skip

    def prediction_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The model output's shape for a sample of ``sample_shape``: n_grid times the
        channels (the last axis)."""
        sample_shape = tuple(sample_shape)
        if not sample_shape:
            raise ValueError("Piflow needs a sample with a channel axis (the last one)")
        return (*sample_shape[:-1], self.n_grid * sample_shape[-1])

    def raw_times(self, num_steps: int) -> np.ndarray:
        """r_0 .. r_{N-1} of the calls and the end r_N = η (unshifted, float64)."""
        ops.check_num_steps(num_steps)
        r = 1.0 - np.arange(num_steps) / (num_steps - 1 + self.final_step_size_scale)
        if r[-1] <= self.eps:
            raise ValueError(
                f"Piflow: the last call's unshifted time {r[-1]:.3g} is not above eps="
                f"{self.eps}; use a larger final_step_size_scale (got "
                f"{self.final_step_size_scale}), fewer steps than {num_steps} or a smaller eps"
            )
        return np.append(r, self.eps)

    def _sigma(self, r: np.ndarray | float) -> np.ndarray:
        return shifts.shift(r, self.shift)

    def _unshift(self, sigma: np.ndarray | float) -> np.ndarray:
        s, sigma = self.shift, np.asarray(sigma, np.float64)
        return sigma / (s * (1.0 - sigma) + sigma)  # s + (1 - s) σ, exact at σ = 1

    def policy_weights(self, num_steps: int) -> np.ndarray:
        """(N, n) B_Mk of (5) per call: x_d = x_s + Σ_k B_Mk u_k."""
        r = self.raw_times(num_steps)
        n, eta = self.n_grid, self.eps
        out = np.zeros((num_steps, n))
        for i in range(num_steps):
            r_s, r_d = r[i], r[i + 1]
            sigma_s = float(self._sigma(r_s))
            segment = max(r_s - r_d, eta)
            m = max(1, int(np.round((r_s - r_d) * self.num_policy_substeps)))
            rj = np.maximum(r_s - np.arange(m + 1) * ((r_s - r_d) / m), 0.0)
            sig = self._sigma(rj)
            sig[0] = sigma_s
            # grid position of each substep's x̂_0 (2)-(3): linear in r, clamped to the segment
            p = np.clip((self._unshift(sig[:-1]) - r_d) / segment, 0.0, 1.0) * (n - 1)
            k0 = np.clip(np.floor(p).astype(np.int64), 0, n - 2)
            b = np.zeros(n)
            for j in range(m):
                c = (sig[j + 1] - sig[j]) / max(sig[j], eta)  # (5)
                w = np.zeros(n)
                w[k0[j]], w[k0[j] + 1] = k0[j] + 1 - p[j], p[j] - k0[j]
                b = (1.0 + c) * b + c * sigma_s * w
            out[i] = b
        return out

    def noise_levels(self, num_steps: int) -> tuple[float, float]:
        """(σ at the first model call, σ of the final sample): flow levels of (1)."""
        r = self.raw_times(num_steps)
        return float(self._sigma(r[0])), float(self._sigma(r[-1]))

    def tableau(self, num_steps: int) -> Tableau:
        sigma = self._sigma(self.raw_times(num_steps)[:-1])
        b = self.policy_weights(num_steps).sum(axis=1)
        return Tableau(
            timesteps=sigma * self.num_train_steps,
            x0_sample=np.ones(num_steps),  # x̂_0 = x_s - σ_s v̄ (2)
            x0_output=-sigma,
            update={(SAMPLE, 0): np.ones(num_steps), (OUTPUT, 0): b},  # x_d = x_s + B v̄ (5)
        )

    def _compile(self, num_steps: int, init_options: dict) -> engine.Program:
        program = super()._compile(num_steps, init_options)
        weights = self.policy_weights(num_steps)
        total = weights.sum(axis=1, keepdims=True)
        # v̄'s weights B_Mk / B after the base columns (B is 0 only where σ does not fall
        # over a segment: a shift so large that its levels round to one float64 value)
        flat = np.flatnonzero(~(np.abs(total[:, 0]) > 0))
        if flat.size:
            i = int(flat[0])
            r = self.raw_times(num_steps)
            raise ValueError(
                f"Piflow: shift={self.shift!r} maps call {i}'s segment, unshifted times "
                f"{r[i]:.6g} to {r[i + 1]:.6g}, to one level σ = {float(self._sigma(r[i])):.17g} "
                f"in float64 (its step would not move; n_grid={self.n_grid}): use a smaller "
                f"shift"
            )
        return engine.with_columns(program, weights / total)

    def average_velocity(self, state: engine.EngineState, sample: Array, output: Array,
                         name: str = "prediction") -> Array:  # fmt: skip
        """v̄ of this call: the policy-weighted sum of the output's n_grid velocity blocks."""
        want = self.prediction_shape(tuple(sample.shape))
        if tuple(output.shape) != want:
            raise ValueError(
                f"Piflow: {name} must have shape {want} (the sample's {tuple(sample.shape)} "
                f"with n_grid={self.n_grid} times its last axis), got {tuple(output.shape)}"
            )
        xp = ops.namespace(sample, output)
        weights = engine.extra_row(state)[-self.n_grid :]
        c = sample.shape[-1]
        blocks = xp.reshape(output, (*sample.shape[:-1], self.n_grid, c))
        total = weights[0] * blocks[..., 0, :]
        for k in range(1, self.n_grid):
            total = total + weights[k] * blocks[..., k, :]
        return total if total.dtype == output.dtype else xp.astype(total, output.dtype)

    def step(
        self,
        state: engine.EngineState,
        sample: Array,
        prediction: Array,
        *,
        noise: Array | None = None,
        unconditional: Array | None = None,
    ) -> tuple[engine.EngineState, Array]:
        """One model call: the call's policy (``prediction``: n_grid velocity blocks, see
        the class) integrated over its segment, as the flow Euler step on the averaged
        velocity v̄ (5). ``unconditional`` (CFG++): the unconditional output, same shape."""
        ops.check_step_arrays(type(self).__name__, sample=sample, prediction=prediction,
                              noise=noise, unconditional=unconditional)  # fmt: skip
        self.check_state(state)
        velocity = self.average_velocity(state, sample, prediction)
        if unconditional is not None:
            unconditional = self.average_velocity(state, sample, unconditional, "unconditional")
        return super().step(state, sample, velocity, noise=noise, unconditional=unconditional)
