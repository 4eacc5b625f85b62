"""Ancestral Euler sampling of a rectified-flow model (k-diffusion's / ComfyUI's
``sample_euler_ancestral_RF``), as diffusers' ``LTXEulerAncestralRFScheduler`` runs it for
LTX-Video's long multi-prompt pipeline.

The sample is the rectified-flow interpolation (Liu, Gong & Liu 2022) and the model
predicts its velocity v = ε - x_0 (prediction type ``flow``):

    x_σ = α_σ x_0 + σ ε,   α_σ = 1 - σ,          x̂_0 = x_σ - σ v̂                     (1)

A step from σ to σ' < σ first goes down to σ_d <= σ' deterministically (DDIM's step on the
straight line) and then adds fresh noise up to σ', the ancestral split in flow form:

    σ_d = σ' (1 + (σ'/σ - 1) η)                                                       (2)
    x_d = (σ_d/σ) x + (1 - σ_d/σ) x̂_0            (the sample at level σ_d)            (3)
    x' = (α_σ'/α_σd) x_d + S_noise sqrt(σ'² - σ_d² α_σ'²/α_σd²) z                      (4)

(4) rescales the signal from α_σd to α_σ' and tops the noise up so that its variance is σ'²
(for S_noise = 1). η = 0 is the deterministic Euler / DDIM step; η = 1 the full ancestral
one. The last step, to σ' = 0, lands on x̂_0. diffusers guards the divisions by α_σd with
+10⁻¹² (and the square root with a clamp at 0), and skips (4) whole where it adds no noise
(η = 0 or S_noise = 0: with S_noise = 0 and η > 0 its step ends at σ_d, not σ'); so does
this table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import predictions
from ..core.engine import SAMPLE, X0, Tableau
from ..core.options import option
from ..core.scheduler import (
    MAX_TRAIN_STEPS,
    BaseScheduler,
    BrownianNoise,
    document,
)
from ._img2img import restarted
from .flow_match import FlowMatchEuler, first_flow_call

GUARD = 1e-12  # diffusers' guard on the divisions by α_σd (4)


@document
@dataclass(frozen=True, kw_only=True)
class LTXEulerAncestralRF(BrownianNoise, BaseScheduler):
    """Ancestral Euler on the rectified-flow ODE (k-diffusion's ``sample_euler_ancestral_RF``).

    First order; one model call per step; stochastic for η > 0 and S_noise > 0 (one noise
    per call, none at the last, to σ = 0). diffusers: ``LTXEulerAncestralRFScheduler``. Not
    to be confused with ``EulerAncestral``, the same split for variance-exploding σ's
    (whose signal never shrinks), nor with ``FlowMatchEuler(stochastic_sampling=True)``,
    which re-noises x̂_0 all the way (η = 1 here gives a different σ_d).

    The grid is ``FlowMatchEuler``'s default one (no shift), as diffusers' class builds it
    from the same config. ``init(..., sigmas=[...])``: ComfyUI-style levels, the terminal 0
    included (float32), called at t = σ T; diffusers then lists the terminal level as a
    timestep too, and so does this table: a last model call, at t = 0, that changes
    nothing. ``init(..., timesteps=[...])`` is diffusers' alias of ``sigmas=``.
    ``init(..., strength=s)``: image-to-image, the first int(N - N s) calls skipped, as the
    flow img2img pipelines cut theirs (diffusers' class has no ``add_noise`` or
    ``scale_noise``; ours starts at x = (1 - σ) x_0 + σ ε of the first call run).
    """

    DIFFUSERS_CLASS = "LTXEulerAncestralRFScheduler"
    PREDICTION_TYPES = (predictions.FLOW,)
    TRAINING_TIMESTEPS = False

    num_train_steps: int = option(
        1000, "T: a level σ is called at t = σ T", "num_train_timesteps",
        low=1, high=MAX_TRAIN_STEPS,
    )  # fmt: skip
    eta: float = option(
        1.0, "η of eq. 2: 0 the deterministic Euler step, 1 the full ancestral step", "eta",
        low=0.0,
    )  # fmt: skip
    s_noise: float = option(
        1.0, "S_noise of eq. 4: the scale of the added noise", "s_noise", low=0.0
    )  # fmt: skip
    prediction_type: str = option(
        predictions.FLOW, "what the model predicts: flow, v = ε - x_0 of "
        "x_σ = (1 - σ) x_0 + σ ε (the only choice, as diffusers)", None,
        choices=(predictions.FLOW,),
    )  # fmt: skip

    @property
    def deterministic(self) -> bool:
        return self.eta == 0 or self.s_noise == 0

    def grid(
        self, num_steps: int | None, sigmas: Any = None, timesteps: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(the timesteps of the calls, the levels with the final one), float32 values."""
        custom = sigmas if sigmas is not None else timesteps
        label = "sigmas" if sigmas is not None else "timesteps (diffusers' alias of sigmas)"
        if custom is None:
            return FlowMatchEuler(num_train_steps=self.num_train_steps)._grid(num_steps)
        try:
            sig = np.asarray(custom, dtype=np.float64).reshape(-1).astype(np.float32)
        except (TypeError, ValueError):
            raise TypeError(f"{label} must be a list of numbers, got: {custom!r}") from None
        if sig.size < 2 or np.any(np.diff(sig) > 0) or sig[-1] < 0 or sig[0] > 1:
            raise ValueError(
                f"{label} must list at least two non-increasing levels in [0, 1], the terminal "
                f"one included, got: {np.asarray(custom).tolist()}"
            )
        ts = (sig * np.float32(self.num_train_steps)).astype(np.float64)
        # every level is a call (diffusers' timesteps): the last one's step is the identity
        return ts, np.append(sig.astype(np.float64), sig[-1])

    def custom_steps(self, init_options: dict) -> int | None:
        """Custom ``sigmas=`` (or its alias ``timesteps=``): N + 1 levels, the terminal one
        included."""
        custom = init_options.get("sigmas", init_options.get("timesteps"))
        return None if custom is None else len(np.asarray(custom).reshape(-1)) - 1

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        """(σ at the first model call, σ of the final sample): flow levels of (1)."""
        strength = init_options.pop("strength", 1.0)
        _, sig = self.grid(num_steps, **init_options)
        return float(sig[first_flow_call(len(sig) - 1, strength)]), float(sig[-1])

    def tableau(
        self,
        num_steps: int | None,
        sigmas: Any = None,
        timesteps: Any = None,
        strength: float = 1.0,
    ) -> Tableau:
        ts, sig = self.grid(num_steps, sigmas, timesteps)
        n = len(ts)
        keep, to_x0, noise = np.ones(n), np.zeros(n), np.zeros(n)
        for i in range(n):
            s, s_next = sig[i], sig[i + 1]
            if i == n - 1 and s_next == s:  # the terminal level listed as a call: identity
                continue
            if abs(s_next) < 1e-8:  # the last step lands on x̂_0
                keep[i], to_x0[i] = 0.0, 1.0
                continue
            s_down = s_next * (1.0 + (s_next / s - 1.0) * self.eta)  # (2)
            a_next, a_down = 1.0 - s_next, 1.0 - s_down
            # (4); diffusers skips it whole, the rescaling too, without noise (S_noise = 0
            # with η > 0 then ends the step at σ_d, not σ')
            lift = 1.0 if self.deterministic else a_next / (a_down + GUARD)
            keep[i] = lift * s_down / s  # (3) then (4)
            to_x0[i] = lift * (1.0 - s_down / s)
            if not self.deterministic:
                var = s_next**2 - s_down**2 * a_next**2 / (a_down**2 + GUARD)
                noise[i] = math.sqrt(max(var, 0.0)) * self.s_noise
        tab = Tableau(
            timesteps=ts,
            x0_sample=np.ones(n),
            x0_output=-sig[:n],  # (1): x̂_0 = x - σ v̂
            update={(SAMPLE, 0): keep, (X0, 0): to_x0},
            noise=None if self.deterministic else noise,
        )
        cut = first_flow_call(n, strength)  # image-to-image (a one-step method)
        return restarted(tab, cut, (1.0 - float(sig[cut]), float(sig[cut])))
