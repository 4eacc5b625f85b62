"""What every ComfyUI sampler shares: ComfyUI's model convention around a method's math.

ComfyUI (comfyanonymous/ComfyUI) runs every sampler on k-diffusion's denoiser D(x, σ) in
the variance-exploding variable x = x_0 + σ ε (ε-, v-, x_0- and LCM models) or on the
rectified-flow sample x = (1 - σ) x_0 + σ ε (flow, flux), with the ODE derivative
d = (x - D(x, σ)) / σ in both (Karras et al. 2022, eq. 4 with s = 1). Around a method's
steps, its ``KSampler``:

* builds the σ list of the loop from a scheduler and the model sampling
  (:func:`diffsched.schedules.comfy.ksampler_sigmas`: DISCARD_PENULTIMATE for the samplers
  that need it, partial denoise d < 1), or takes an explicit list (``SamplerCustom``);
* calls the network on x / sqrt(σ² + 1) (flow: x) at the timestep of σ, the nearest entry
  of its table (``ModelSampling.timestep``), and forms D from its output
  (``calculate_denoised``: :meth:`ModelSampling.denoised_coefficients`);
* starts from x = a · noise (+ b · latent) (``noise_scaling``: a = sqrt(1 + σ_0²) when σ_0
  is the model's σ_max, else σ_0; flow: a = σ_0) and divides the result by 1 - σ_last on
  flow models (``inverse_noise_scaling``).

A :class:`ComfySampler` holds the model input, x / sqrt(σ² + 1) (flow: x), as its sample
(the engine's ``input_scale``), so ``init_noise_scale`` is a / sqrt(σ_0² + 1), 1 at full
denoise; the final sample is ComfyUI's result. A method gives only its model calls for a
σ list, as a :class:`Calls`: the level of each call and the update in the native x.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from ..core import families, ops
from ..core.engine import COEF_COLUMNS, Program, Tableau, Update
from ..core.options import describe, option, specs
from ..core.scheduler import BaseScheduler, check_custom_grids
from ..schedules import comfy as comfy_schedules

MODELS = comfy_schedules.MODELS
SCHEDULERS = comfy_schedules.KSAMPLER_SCHEDULERS


class Calls(NamedTuple):
    """A method's model calls on a σ list, in the native sample x.

    Attributes:
        sigmas: (N,) the noise level of each model call.
        update: the next native sample of each call (engine terms).
        noise: (N,) coefficient of fresh noise added by each call's update, or None.
        end: the σ the loop's result sits at, for ComfyUI's inverse_noise_scaling (default:
            the last entry of the σ list).
        start_sigma: the level of the first call's sample when it differs from the list's
            first entry (churn raises it: the initial noise then carries that churn).
        first: (N,) whether each call is the first of a step (None: every call is; what
            ComfyUI reports to its progress callback).
        draws: (N, 2) the (σ, σ') ComfyUI's noise sampler is asked for after each call, NaN
            where ComfyUI draws nothing (None: after each call that adds noise); draws it
            multiplies by 0 included (``noise_stream="comfy"``).
        guided: (N,) for a method whose CFG++ form is its own (ComfyUI's ``*_cfg_pp``
            samplers, :class:`CFGPlusPlus`): the coefficient of each call's guided x̂_0 in
            its update (native x), the rest of the call's x̂_0 terms taken from the
            unconditional output; None: the engine's CFG++ rule
            (:func:`diffsched.core.engine.guided_step`).
    """

    sigmas: np.ndarray
    update: Update
    noise: np.ndarray | None = None
    end: float | None = None
    start_sigma: float | None = None
    first: np.ndarray | None = None
    draws: np.ndarray | None = None
    guided: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True)
class ComfySampler(BaseScheduler):
    """A ComfyUI sampler: its model sampling, its scheduler and the method's calls."""

    DIFFUSERS_CLASS = None
    FAMILY = families.COMFY
    TRAINING_TIMESTEPS = False
    # ComfyUI's KSampler asks these samplers' schedulers for N + 1 steps and drops the
    # second-to-last level (DISCARD_PENULTIMATE_SIGMA_SAMPLERS)
    DISCARD_PENULTIMATE: ClassVar[bool] = False
    # the KSampler sampler names this class runs (ds.from_comfy)
    COMFY_NAMES: ClassVar[tuple[str, ...]] = ()
    # options a name fixes (uni_pc_bh2: variant="bh2")
    COMFY_OPTIONS: ClassVar[dict[str, dict[str, Any]]] = {}
    # defaults a name sets, which options may override (dpmpp_2m_sde_heun: solver_type="heun")
    COMFY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    # CFG++ (step(..., unconditional=)) on flow models splits x = α x̂_0 + σ ε̂ with the
    # model's α = 1 - σ (ComfyUI's euler_cfg_pp), or, set True, with α = 1, the split
    # x = x̂_0 + σ d ComfyUI's dpmpp_2m_cfg_pp and gradient_estimation_cfg_pp use on
    # every model
    CFG_PP_VE_SPLIT: ClassVar[bool] = False

    model: str = option(
        "eps", "ComfyUI's model sampling: eps, v, x0, lcm (discrete tables, the model input "
        "x / sqrt(σ² + 1)), flow or flux (rectified flow, the model input x)",
        choices=MODELS,
    )  # fmt: skip
    scheduler: str = option(
        "normal", "ComfyUI's scheduler of the σ list (KSampler's scheduler_name); "
        "init(..., sigmas=[...]) overrides it", choices=SCHEDULERS,
    )  # fmt: skip
    linear_start: float | None = option(
        None, "model sampling: the first β of a discrete model (None: 0.00085)", nullable=True,
        low=0.0, low_open=True,
    )  # fmt: skip
    linear_end: float | None = option(
        None, "model sampling: the last β of a discrete model (None: 0.012)", nullable=True,
        low=0.0, low_open=True,
    )  # fmt: skip
    beta_schedule: str | None = option(
        None, "model sampling: the β schedule of a discrete model (None: linear, ComfyUI's "
        "name for evenly spaced sqrt(β))", nullable=True,
        choices=comfy_schedules.BETA_SCHEDULES,
    )  # fmt: skip
    zsnr: bool | None = option(
        None, "model sampling: zero terminal SNR of a discrete model (None: False)",
        nullable=True,
    )  # fmt: skip
    shift: float | None = option(
        None, "model sampling: the shift of a flow model (None: 1.0) or μ of a flux model "
        "(None: 1.15)", nullable=True,
    )  # fmt: skip
    multiplier: float | None = option(
        None, "model sampling: the timestep of a flow model is σ times this (None: 1000)",
        nullable=True, low=0.0, low_open=True,
    )  # fmt: skip

    def _check(self) -> None:
        ms = self.model_sampling  # the settings fit the model, said at construction
        if ms.discrete and not ms.sigma_max < float(np.finfo(np.float32).max):
            settings = {n: getattr(self, n) for n in ("linear_start", "linear_end",
                        "beta_schedule", "zsnr") if getattr(self, n) is not None}  # fmt: skip
            raise ValueError(
                f"{type(self).__name__}: the model sampling's largest σ ({ms.sigma_max:.3g}) "
                f"is beyond float32, where ComfyUI keeps its σ table: the β's of {settings} "
                "give no usable schedule"
            )

    @functools.cached_property
    def model_sampling(self) -> comfy_schedules.ModelSampling:
        """ComfyUI's model sampling of ``model`` with the settings given (made once per
        config: the steps read it at every call)."""
        settings = {
            name: getattr(self, name)
            for name in ("linear_start", "linear_end", "beta_schedule", "zsnr", "shift",
                         "multiplier")
            if getattr(self, name) is not None
        }  # fmt: skip
        try:
            return comfy_schedules.model_sampling(self.model, **settings)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{type(self).__name__}: {err}") from None

    def sigmas(self, num_steps: int | None, sigmas: Any = None, denoise: float = 1.0) -> np.ndarray:
        """The σ list of the loop (N + 1 levels, the last one the end), float64: ``sigmas``
        as given, or the scheduler's for ``num_steps`` as ComfyUI's KSampler builds it."""
        if sigmas is not None:
            if denoise != 1.0:
                raise ValueError("pass at most one of sigmas= and denoise=")
            out = np.asarray(sigmas, dtype=np.float64).reshape(-1)
            if out.size < 2 or not np.all(np.isfinite(out)) or np.any(out < 0):
                raise ValueError(
                    f"sigmas must hold at least 2 finite levels >= 0, got: {out.tolist()}"
                )
            if np.any(np.diff(out) >= 0):
                raise ValueError(f"sigmas must be decreasing, got: {out.tolist()}")
            return out
        out = comfy_schedules.ksampler_sigmas(
            self.scheduler, ops.check_num_steps(num_steps), self.model_sampling,
            discard_penultimate=self.DISCARD_PENULTIMATE, denoise=denoise,
        )  # fmt: skip
        if not np.all(np.isfinite(out)) or np.any(np.diff(out) >= 0) or np.any(out < 0):
            settings = ", ".join(
                f"{name}={getattr(self, name)!r}"
                for name in ("linear_start", "linear_end", "beta_schedule", "zsnr", "shift",
                             "multiplier")
                if getattr(self, name) is not None
            )  # fmt: skip
            raise ValueError(
                f"{type(self).__name__}: model={self.model!r} ({settings or 'its defaults'}) "
                f"with scheduler={self.scheduler!r} and {num_steps} steps gives σ's that are not "
                f"finite and decreasing: {out.tolist()}"
            )
        if len(out) < 2:
            raise ValueError(
                f"{type(self).__name__}: scheduler {self.scheduler!r} with {num_steps} steps "
                f"and denoise={denoise} gives no step (σ's {out.tolist()})"
            )
        return out

    def program(self, num_steps: int | None, **init_options: Any):
        """The compiled loop; ``num_steps`` may be None with ``sigmas=``. The scheduler's
        list can hold more (ddim_uniform) or fewer (beta) steps than ``num_steps``."""
        check_custom_grids(type(self).__name__, init_options)  # a flat list, not flattened
        custom = init_options.get("sigmas")
        if custom is not None:
            count = len(np.asarray(custom).reshape(-1)) - 1
            if num_steps is not None and num_steps != count:
                raise ValueError(
                    f"num_steps={num_steps} disagrees with sigmas=, which gives {count} steps "
                    "(pass num_steps=None)"
                )
            num_steps = count
            init_options = {**init_options, "sigmas": tuple(np.asarray(custom, float).ravel())}
        return super().program(num_steps, **init_options)

    def calls(self, sigmas: np.ndarray) -> Calls:
        """The method's model calls on the σ list (its math)."""
        raise NotImplementedError

    def tableau(self, num_steps: int, sigmas: Any = None, denoise: float = 1.0) -> Tableau:
        sig = self.sigmas(num_steps, sigmas, denoise)
        if np.any(sig[:-1] <= 0):
            raise ValueError(
                f"{type(self).__name__}: only the last level of the σ list may be 0, got: "
                f"{sig.tolist()}"
            )
        ms = self.model_sampling
        try:
            calls = self.calls(sig)
        except (ArithmeticError, ValueError) as err:
            if isinstance(err, ValueError) and "math domain" not in str(err):
                raise
            raise ValueError(
                f"{self._bad_call(None, None)}: no finite step on the σ's {sig.tolist()} ({err})"
            ) from None
        c_x, c_out = ms.denoised_coefficients(calls.sigmas)
        native = 1.0 / ms.input_scale(calls.sigmas)  # native x = native · held sample
        end = float(sig[-1] if calls.end is None else calls.end)
        final = 1.0 / ms.inverse_noise_scaling(end)  # held result = native / (1 - σ) (flow)
        noise_scale, latent_scale = ms.noise_scaling(float(sig[0]))
        top = float(sig[0] if calls.start_sigma is None else calls.start_sigma)
        if top != sig[0]:  # churn before the first call: its noise joins the initial noise
            noise_scale = math.sqrt(noise_scale**2 + top**2 - float(sig[0]) ** 2)
        return Tableau(
            timesteps=ms.timestep(calls.sigmas),
            x0_sample=c_x,
            x0_output=c_out,
            update=calls.update,
            noise=calls.noise,
            input_scale=np.append(native, final),
            start=(latent_scale, noise_scale),
            init_noise_sigma=noise_scale,
        )

    def _bad_call(self, program_tableau: Tableau | None, n: int | None) -> str:
        """What a non-finite coefficient says: the model and the options that differ from
        their defaults (a large eta, a stage outside its step, a model sampling whose
        levels overflow)."""
        changed = [f"{name}={describe(getattr(self, name))}" for name, (default, _) in
                   specs(self).items() if getattr(self, name) != default]  # fmt: skip
        where = "" if n is None else f" at model call {n}"
        return (
            f"{type(self).__name__}{where}: model={self.model!r} with these options "
            f"({', '.join(changed) or 'the defaults'}) gives a non-finite coefficient"
        )

    def native_levels(
        self, tableau: Tableau, num_steps: int, init_options: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """(α, σ) of each call's native sample (σ its level): (1, σ) on discrete models;
        on flow models (1 - σ, σ), the model's own split (ComfyUI's euler_cfg_pp), or
        (1, σ) where the class sets ``CFG_PP_VE_SPLIT``."""
        sig = self.sigmas(num_steps, **init_options)
        levels = self.calls(sig).sigmas
        if self.model_sampling.flow and not self.CFG_PP_VE_SPLIT:
            return 1.0 - levels, levels
        return np.ones_like(levels), levels

    def _with_step_columns(
        self, program: Program, tableau: Tableau, num_steps: int, init_options: dict
    ) -> Program:
        """The base columns, and where the method's :class:`Calls` give their own CFG++
        split (``guided``), the CFG++ weight from it: the guided x̂_0's coefficient c
        adds c · b (g - u) to the native update (x̂_0 = a x + b · output), so the held
        weight is c b / (the next call's input scale)."""
        program = super()._with_step_columns(program, tableau, num_steps, init_options)
        guided = self.calls(self.sigmas(num_steps, **init_options)).guided
        if guided is None:
            return program
        held = program.held
        coefs = np.array(program.coefs)
        coefs[:-1, len(COEF_COLUMNS)] = np.asarray(guided) * held.x0_output / held.scale[1:]
        return dataclasses.replace(program, coefs=coefs, host={})

    @property
    def takes_unconditional(self) -> bool:
        return True

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        sig = self.sigmas(num_steps, **init_options)
        if self.model_sampling.flow:
            raise NotImplementedError("noise_levels: flow models have no ᾱ")
        return float(1.0 / (1.0 + sig[0] ** 2)), float(1.0 / (1.0 + sig[-1] ** 2))


@dataclass(frozen=True, kw_only=True)
class CFGPlusPlus:
    """A ComfyUI sampler with a CFG++ form (Chung et al. 2024, "CFG++: Manifold-constrained
    Classifier Free Guidance for Diffusion Models"): ComfyUI's ``<name>_cfg_pp``."""

    cfg_pp: bool = option(
        False, "ComfyUI's <name>_cfg_pp form: step(..., unconditional=u) as ComfyUI's CFG++ "
        "sampler (x̂_0 from the guided output, the renoising direction and the history from "
        "u); without unconditional= the step takes u = the prediction",
    )  # fmt: skip


def check_step_count(owner: str, sigmas: np.ndarray, least: int) -> None:
    """A clear error when a method needs more steps than the σ list gives."""
    if len(sigmas) - 1 < least:
        raise ValueError(
            f"{owner} needs at least {least} steps, the σ list gives {len(sigmas) - 1}: "
            f"{sigmas.tolist()}"
        )
