"""RePaint: Lugmayr, Danelljan, Romero, Yu, Timofte & Van Gool 2022, "RePaint: Inpainting
using Denoising Diffusion Probabilistic Models".

Inpainting with an unconditional ε-model: at each step the known region is the known image
noised to the next level, the unknown region is a DDIM step (Song et al. 2020, eq. 12), and
the two are joined by the mask m (1 where the image is known) (Alg. 1, lines 5-8):

    x̂_0 = clip((x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t))
    x^unknown = sqrt(ᾱ_{t'}) x̂_0 + sqrt(1 - ᾱ_{t'} - σ_t²) ε̂ + σ_t z,
        σ_t = η sqrt((1 - ᾱ_{t'}) / (1 - ᾱ_t) (1 - ᾱ_t / ᾱ_{t'}))         (no σ_t z at t = 0)
    x^known = sqrt(ᾱ_{t'}) x_0^known + sqrt(1 - ᾱ_{t'}) z
    x_{t'} = m x^known + (1 - m) x^unknown,   t' = t - T // N.

Resampling (sec. 4.2, Alg. 1 lines 9-10): the schedule goes back up ``jump_length`` steps,
``jump_n_sample`` - 1 times at every ``jump_length``-th step; each step up noises the sample
by the single training steps it crosses, x ← sqrt(1 - β_s) x + sqrt(β_s) z, s = t'' .. t''
+ T // N - 1 from the level t'' the schedule was at (diffusers' ``undo_step``). No model is
called on the way up: the steps up that follow a model call are part of that call's
update, A x + sqrt(1 - A²) z with A = Π sqrt(1 - β_s) over all of them.

Each call's fresh noise is one standard normal per element, w: the sum of the call's normal
draws with their weights (the z of the step, in both regions, and those of the steps up),
which is one normal of variance (A (m k_z + (1 - m) σ_t))² + 1 - A² per element, k_z =
sqrt(1 - ᾱ_{t'}): the same distribution as drawing them one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..core import engine, ops, predictions
from ..core.engine import OUTPUT, X0, Tableau
from ..core.options import option
from ..core.scheduler import Clipping, Scheduler, document
from ..schedules import betas as beta_schedules

Array = Any


@document
@dataclass(frozen=True, kw_only=True)
class RePaint(Scheduler):
    """RePaint inpainting (Lugmayr et al. 2022): DDIM steps with the known region imposed
    and resampling jumps.

    One model call per step; stochastic. diffusers: ``RePaintScheduler`` (driven as
    ``RePaintPipeline`` drives it). Not to be confused with ``DDIM`` (no known region, no
    jumps).

    ``init(..., jump_length=10, jump_n_sample=10)`` as diffusers' ``set_timesteps``: the
    timesteps are the model calls of the resampling schedule (the steps up call no model).
    ``step(..., original_image=x0, mask=m)``: the known image and the mask, 1 where it is
    kept (both broadcast against the sample; ``RePaintPipeline`` passes its preprocessed
    ``image`` and ``mask_image``); without them no region is known. ``noise=``: the call's
    one normal w (see the module docstring): diffusers draws 1 + (T // N) × (steps up)
    normals at a call, of which w is the weighted sum, normalised.
    """

    DIFFUSERS_CLASS = "RePaintScheduler"
    NO_PER_ELEMENT = (
        "its step reads the known image and mask with per-call numbers outside the table"
    )
    PREDICTION_TYPES = ("noise",)

    beta_schedule: str = option(
        "linear",
        "the training betas: linear, quadratic (diffusers' scaled_linear), squared_cosine or "
        "sigmoid",
        "beta_schedule",
        choices=beta_schedules.EXTENDED_BETA_SCHEDULES,
        diffusers_values=beta_schedules.DIFFUSERS_EXTENDED_BETA_SCHEDULES,
    )
    prediction_type: str = option(
        "noise", "what the model predicts: the noise ε", None, choices=PREDICTION_TYPES
    )
    eta: float = option(
        0.0, "η: the weight of the DDIM step's fresh noise (RePaintPipeline sets it from its "
        "eta argument)", "eta", low=0.0,
    )  # fmt: skip
    clip_denoised_sample: bool = option(True, "clip x̂_0 to [-1, 1]", "clip_sample")
    # with Clipping's processing of x̂_0 at a fixed range (diffusers' class has no option)
    clip_sample_range: ClassVar[float] = 1.0
    processes_x0 = Clipping.processes_x0
    _process = Clipping._process

    @property
    def deterministic(self) -> bool:
        return False

    def schedule(self, num_steps: int, jump_length: int = 10, jump_n_sample: int = 10):
        """diffusers' resampling schedule: every timestep visited, going down and up."""
        ops.check_num_steps(num_steps)
        for name, value in (("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got: {value!r}")
        n = min(self.num_train_steps, num_steps)
        # each point jumps back up J - 1 times, and each jump's L steps down are model calls
        points = len(range(0, n - jump_length, jump_length))
        ops.check_calls(type(self).__name__, n + points * (jump_n_sample - 1) * jump_length,
                        f"jump_length={jump_length} and jump_n_sample={jump_n_sample} over "
                        f"{n} steps")  # fmt: skip
        jumps = {j: jump_n_sample - 1 for j in range(0, n - jump_length, jump_length)}
        visited, t = [], n
        while t >= 1:
            t -= 1
            visited.append(t)
            if jumps.get(t, 0) > 0:
                jumps[t] -= 1
                for _ in range(jump_length):
                    t += 1
                    visited.append(t)
        return np.array(visited, dtype=np.int64) * (self.num_train_steps // n), n

    def _calls(self, num_steps: int, jump_length: int = 10, jump_n_sample: int = 10):
        """(model-call timesteps, A of the steps up after each call)."""
        visited, n = self.schedule(num_steps, jump_length, jump_n_sample)
        stride = self.num_train_steps // n
        betas = self.betas
        calls, up = [], []
        last = visited[0] + 1
        for t in visited:
            if t < last:
                calls.append(t)
                up.append(1.0)
            else:  # a step up from level `last`: its single training steps (undo_step)
                up[-1] *= float(np.prod(np.sqrt(1 - betas[last : last + stride])))
            last = t
        return np.array(calls, dtype=np.int64), np.array(up), stride

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        ts, _, _ = self._calls(num_steps, **init_options)
        return float(self.alphas_cumprod[ts[0]]), 1.0

    def _columns(self, num_steps: int, jump_length: int = 10, jump_n_sample: int = 10):
        ts, up, stride = self._calls(num_steps, jump_length, jump_n_sample)
        acp = self.alphas_cumprod
        a_t = acp[ts]
        a_prev = beta_schedules.alpha_bar_at(acp, ts - stride, 1.0)
        sigma = self.eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        sigma_z = np.where((ts > 0) & (self.eta > 0), sigma, 0.0)
        return ts, up, a_t, a_prev, sigma, sigma_z

    def tableau(self, num_steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> Tableau:
        """The unknown region's deterministic update, times A (the noise is added in step)."""
        ts, up, a_t, a_prev, sigma, _ = self._columns(num_steps, jump_length, jump_n_sample)
        x0 = predictions.x0_coefficients("noise", a_t)
        return Tableau(
            timesteps=ts,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update={
                (X0, 0): up * np.sqrt(a_prev),
                (OUTPUT, 0): up * np.sqrt(np.maximum(1 - a_prev - sigma**2, 0.0)),
            },
        )

    def _compile(self, num_steps: int, init_options: dict) -> engine.Program:
        program = super()._compile(num_steps, init_options)
        _, up, _, a_prev, _, sigma_z = self._columns(num_steps, **init_options)
        columns = np.stack(
            [
                up * np.sqrt(a_prev),  # the known image's weight
                up * np.sqrt(1 - a_prev),  # the known region's z weight
                up * sigma_z,  # the unknown region's z weight
                np.sqrt(np.maximum(1 - up**2, 0.0)),  # the steps up's noise
            ],
            axis=1,
        )
        return engine.with_columns(program, columns)

    def step(
        self,
        state: engine.EngineState,
        sample: Array,
        prediction: Array,
        *,
        noise: Array | None = None,
        original_image: Array | None = None,
        mask: Array | None = None,
        unconditional: Array | None = None,
    ) -> tuple[engine.EngineState, Array]:
        """One model call: the DDIM step, the known region imposed, the steps up after it.

        ``original_image`` and ``mask`` (1 where the image is known) broadcast against the
        sample; ``noise`` replaces the call's normal w (the sample's shape);
        ``unconditional`` makes the DDIM step CFG++ (``prediction`` the guided output; see
        :func:`diffsched.core.engine.guided_step`).
        """
        ops.check_step_arrays(type(self).__name__, sample=sample, prediction=prediction,
                              noise=noise, unconditional=unconditional)  # fmt: skip
        self.check_state(state)
        if (original_image is None) != (mask is None):
            raise ValueError("RePaint.step takes original_image= and mask= together")
        xp = ops.namespace(sample, prediction)
        if noise is not None and (
            tuple(noise.shape) != tuple(sample.shape) or not ops.is_float(noise)
        ):
            raise ValueError(
                f"noise must be a floating-point array of the sample's shape "
                f"{tuple(sample.shape)}, got {tuple(noise.shape)} {noise.dtype}"
            )
        known, kz, uz, b = engine.extra_row(state)[-4:]  # after the base columns
        process = self._process if self.processes_x0 else None
        if unconditional is None:
            new_state, unknown = engine.step(
                type(self).__name__, state, sample, prediction, None,
                process=process, stochastic=False,
            )  # fmt: skip
        else:
            new_state, unknown = engine.guided_step(
                type(self).__name__, state, sample, prediction, unconditional, None,
                weight=engine.extra_row(state)[0], process=process, stochastic=False,
            )  # fmt: skip
        z = noise if noise is not None else engine.call_noise(state, unknown)
        if z.dtype != unknown.dtype:
            z = xp.astype(z, unknown.dtype)
        if mask is None:
            return new_state, unknown + (uz**2 + b**2) ** 0.5 * z
        for name, value in (("original_image", original_image), ("mask", mask)):
            ops.check_step_arrays(type(self).__name__, **{name: value})
            if type(value) is not type(sample) and ops.namespace(value) is not xp:
                raise TypeError(
                    f"{name} must be a {type(sample).__name__} like the sample, got "
                    f"{type(value).__name__}"
                )
            zero_one = name == "mask" and xp.isdtype(value.dtype, ("bool", "integral"))
            if not (ops.is_float(value) or zero_one):
                raise TypeError(  # (a mask of 0 and 1 may be bool or integer)
                    f"{name} must be real floating-point, got dtype {value.dtype}"
                )
            try:  # broadcast into the sample's shape, never beyond it
                fits = np.broadcast_shapes(tuple(value.shape), tuple(sample.shape)) == tuple(
                    sample.shape
                )
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(
                    f"{name} of shape {tuple(value.shape)} does not broadcast to the "
                    f"sample's {tuple(sample.shape)}"
                )
        m = xp.astype(mask, unknown.dtype)
        image = xp.astype(original_image, unknown.dtype)
        mix = m * kz + (1 - m) * uz
        out = unknown + m * (known * image - unknown) + (mix**2 + b**2) ** 0.5 * z
        return new_state, out
