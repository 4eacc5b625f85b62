"""Adaptive step-size loops: the contract extension and what its ComfyUI-convention methods
share (see docs/adaptive.md).

A fixed-grid method knows every model call at ``init``. An adaptive one decides the next
level from an error estimate while it runs, so its loop length is not known in advance. To
keep the loop compilable (fixed shapes, a static bound), an adaptive class
(``ADAPTIVE = True``) takes the *maximum number of model calls* where the others take the
number of steps:

    state, timesteps = sched.init(max_calls, sample_template, key, **init_options)
    x = noise * sched.init_noise_scale(max_calls, **init_options)
    while not sched.done(state):
        prediction = model(x, sched.next_timestep(state))
        state, x = sched.step(state, x, prediction)

* ``timesteps`` has ``max_calls`` entries: the first call's timestep, then NaN (the later
  ones are decided as the loop runs; ``next_timestep(state)`` gives each when it is due).
* ``done(state)``, ``reached(state)``: 0-d bool arrays (traceable): the loop is over; the
  loop reached its end level (False when ``max_calls`` ran out first: then the result is
  the last accepted solution, as each class documents). After ``done``, ``step`` returns
  its arguments unchanged, so a loop of exactly ``max_calls`` calls (a ``fori_loop``) gives
  the same result as the ``while`` loop.
* ``info(state)``: 0-d arrays ``calls``, ``accepted``, ``rejected`` (attempts of a step),
  ``done``, ``reached``.

The state (:class:`AdaptiveState`) holds fixed-shape arrays only; ``step`` runs the
method's stage machine (the stage within an attempt, accept or reject by the error
estimate, the step-size controller) with ``where``-selects, so it is pure and jits
(``jax.lax.while_loop``; ``ds.sample(..., compile=True)``). The whole sample shares one
step size (the error norm runs over every element, batch included, as ComfyUI's).

The classes here run on ComfyUI's model convention (:mod:`diffsched.methods._comfy`): the
held sample is the model input x / sqrt(σ² + 1) (flow models: x), the model's timestep is
the nearest table index of σ (discrete models) or σ times the multiplier (flow), and the
σ range comes from ComfyUI's schedulers (``scheduler`` with ``init(..., steps=N)``, or
``init(..., sigmas=[...])``, ``init(..., denoise=d)``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..core import ops
from ..core.adaptive import AdaptiveState
from ..core.engine import Tableau
from ..schedules import comfy as comfy_schedules
from ._comfy import ComfySampler

Array = Any

# clock entries (compute dtype)
S, T, H, SIGMA, E0, E1, E2, END, FINAL = range(9)
CLOCK = 9
# count entries (int32)
STAGE, CALLS, ACCEPTED, REJECTED, MAX_CALLS = range(5)
DEFAULT_GRID_STEPS = 20  # KSampler's default steps: the σ list whose ends an adaptive loop spans


def _check_max_calls(owner: str, max_calls: Any) -> int:
    """``max_calls`` (init's first argument, where fixed-grid classes take num_steps) as an
    int in [1, 10000], or a clear error."""
    try:
        return ops.check_num_steps(max_calls)
    except (TypeError, ValueError) as err:
        raise type(err)(
            f"{owner}.init: max_calls, the bound on the model calls of an adaptive loop (the "
            f"argument fixed-grid classes call num_steps): {err}"
        ) from None


def _where(flag: Array | bool, a: Array, b: Array, xp) -> Array:
    """a where ``flag``, else b (any dtype): a 0-d bool array is a select (no host sync;
    both made), a Python bool read on the host (:func:`host_value`) takes the one chosen."""
    if isinstance(flag, bool):
        return a if flag else b
    return xp.where(flag, a, b)


def host_value(xp, x: Array) -> int | None:
    """The 0-d integer or bool ``x`` read on the host where that costs nothing (eager
    NumPy, eager PyTorch on the CPU), else None (JAX, compiled, accelerators): where a step
    may branch in Python and make only the arrays it selects, the same expressions as the
    branch-free step, so the same bits."""
    return None if ops.is_jax(xp) else ops.concrete_int(x)


@dataclass(frozen=True, kw_only=True)
class AdaptiveComfy(ComfySampler):
    """An adaptive loop on ComfyUI's model convention (see the module): the contract's
    ``init``, ``step``, ``next_timestep``, ``done``, ``reached``, ``info``; a method gives
    ``_start`` (its extra arrays, its first proposal) and ``_advance`` (one model call's
    stage)."""

    ADAPTIVE: ClassVar[bool] = True
    NO_PER_ELEMENT = (
        "an adaptive loop chooses its levels from an error norm over the whole sample: "
        "elements cannot run their own schedules"
    )
    EXTRA: ClassVar[int] = 1  # the number of sample-shaped arrays in AdaptiveState.extra

    @property
    def takes_unconditional(self) -> bool:
        return False

    # -- the σ range --------------------------------------------------------------------------

    def span(self, steps: int | None = None, sigmas: Any = None, denoise: float = 1.0):
        """(σ_start, σ_end, σ_last) of the loop: the first level of ComfyUI's σ list, its
        last nonzero level, and its last level (0, or where a partial list ends), float64.
        ``steps`` (KSampler's steps, default 20) builds the list from ``scheduler``;
        ``sigmas=`` gives it."""
        if sigmas is None and steps is None:
            steps = DEFAULT_GRID_STEPS
        sig = self.sigmas(steps if sigmas is None else None, sigmas, denoise)
        low = float(sig[-1]) if sig[-1] != 0 else float(sig[-2])
        if not (low > 0 and sig[0] > 0):
            raise ValueError(
                f"{type(self).__name__}: the σ list must have a nonzero first and last-nonzero "
                f"level, got: {sig.tolist()}"
            )
        return float(sig[0]), low, float(sig[-1])

    def _span_options(self, owner: str, init_options: dict) -> dict:
        known = {"steps", "sigmas", "denoise"}
        unknown = sorted(set(init_options) - known)
        if unknown:
            raise TypeError(
                f"{owner}.init got unexpected keyword argument(s) {unknown}; its init options: "
                f"{sorted(known)} (steps: KSampler's steps of the σ list, default "
                f"{DEFAULT_GRID_STEPS})"
            )
        steps = init_options.get("steps")
        if steps is not None:
            steps = ops.check_num_steps(steps)
        return {"steps": steps, "sigmas": init_options.get("sigmas"),
                "denoise": init_options.get("denoise", 1.0)}  # fmt: skip

    # -- the contract -------------------------------------------------------------------------

    def tableau(self, num_steps: int, **init_options: Any) -> Tableau:
        raise TypeError(
            f"{type(self).__name__} is adaptive (ADAPTIVE = True): its model calls are decided "
            "while the loop runs, so it has no tableau; use init(max_calls, ...) and step"
        )

    def calls(self, sigmas: np.ndarray):
        raise TypeError(
            f"{type(self).__name__} is adaptive (ADAPTIVE = True): it has no fixed model calls "
            "on a σ list (ds.comfy.sampler_function does not run it; ComfyUI has its own)"
        )

    def program(self, num_steps: int | None, **init_options: Any):
        return self.tableau(num_steps, **init_options)

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        raise TypeError(f"{type(self).__name__} is adaptive: it has no fixed noise levels")

    def init_noise_scale(self, num_steps: int | None = None, **init_options: Any) -> float:
        """The factor turning standard normal noise into the first model input: ComfyUI's
        noise scaling a times the first call's input scale (1 at full denoise). The bound
        on model calls (``num_steps``, or ``max_calls=``) does not change it."""
        init_options.pop("max_calls", None)
        opts = self._span_options(type(self).__name__, init_options)
        first, _, _ = self.span(**opts)
        ms = self.model_sampling
        a, _ = ms.noise_scaling(first)
        return float(a * ms.input_scale(self._first_sigma(first)))

    def _first_sigma(self, sigma_start: float) -> float:
        """σ of the first model call (a method may round-trip it through its time)."""
        return sigma_start

    def init(
        self,
        num_steps: int | None = None,
        sample_template: Array | None = None,
        key: Any = 0,
        *,
        max_calls: int | None = None,
        **init_options: Any,
    ) -> tuple[AdaptiveState, Array]:
        """The loop state and ``timesteps`` (``max_calls`` entries: the first call's, then
        NaN: see the module). The first argument is the contract's ``num_steps``: here the
        bound on model calls, ``max_calls`` (either name, not both). ``init_options``:
        ``steps`` (KSampler's steps of the σ list, default 20), ``sigmas=[...]`` (an
        explicit list) or ``denoise``. ``key`` seeds the noise of a stochastic
        configuration (:meth:`_key`); a deterministic one checks it as every class does
        and never reads it."""
        owner = type(self).__name__
        if max_calls is not None and num_steps is not None:
            raise TypeError(
                f"{owner}.init: num_steps and max_calls name one bound, the model calls of "
                f"an adaptive loop; pass one, got num_steps={num_steps!r} and "
                f"max_calls={max_calls!r}"
            )
        max_calls = num_steps if max_calls is None else max_calls  # checked below
        sample_template = ops.template(sample_template)
        if init_options.get("offsets") is not None or np.ndim(init_options.get("strength")) > 0:
            raise ValueError(
                f"{owner} has no per-element schedules (offsets=, an array strength=): "
                f"{self.NO_PER_ELEMENT}"
            )
        opts = self._span_options(owner, init_options)
        max_calls = _check_max_calls(owner, max_calls)
        first, low, last = self.span(**opts)
        xp = ops.namespace(sample_template)
        dtype = ops.compute_dtype(xp, sample_template.dtype)
        stream = self._key(key, sample_template)
        if len(sample_template.shape) < 1:
            raise ValueError(f"{owner}.init: the sample template needs a batch axis, got a 0-d")
        dev = ops.device(sample_template)
        shape = tuple(sample_template.shape)
        clock, extra_count = self._start(first, low, last)
        ms = self.model_sampling
        table = np.zeros(1)
        if ms.discrete:
            table = np.array(comfy_schedules._log_table(ms), np.float64)
        final = ms.inverse_noise_scaling(last)
        clock = np.asarray(clock, np.float64)
        clock[FINAL] = final
        done0 = not bool(self._running(clock[S], clock[END]))
        state = AdaptiveState(
            x=xp.zeros(shape, dtype=dtype, device=dev),
            extra=xp.zeros((extra_count, *shape), dtype=dtype, device=dev),
            clock=xp.asarray(clock, dtype=dtype, device=dev),
            counts=xp.asarray([0, 0, 0, 0, max_calls], dtype=xp.int32, device=dev),
            flags=xp.asarray([done0, False], dtype=xp.bool, device=dev),
            table=xp.asarray(table, dtype=dtype, device=dev),
            fingerprint=xp.asarray(self.fingerprint, dtype=xp.int32, device=dev),
            key=stream,
        )
        timesteps = np.full(max_calls, np.nan)
        if not done0:
            timesteps[0] = float(ms.timestep(np.asarray(clock[SIGMA])))
        ts_dtype = xp.float64 if dtype == xp.float64 else xp.float32
        return state, xp.asarray(timesteps, dtype=ts_dtype, device=dev)

    def add_noise(self, state: AdaptiveState, clean: Array, noise: Array) -> Array:
        """A clean sample noised to the loop's first model input (image-to-image, as
        ComfyUI's noise scaling: x = a · noise + b · clean at the first level, then the
        model input); reads the state's first level on the host (call it before any step)."""
        owner = type(self).__name__
        for name, arr in (("clean", clean), ("noise", noise)):
            if not ops.is_float(arr):
                raise TypeError(
                    f"{owner}.add_noise: {name} must be a floating-point array, got {arr.dtype}"
                )
        sigma0 = float(ops.to_numpy64(state.clock[SIGMA]))
        a, b = self.model_sampling.noise_scaling(sigma0)
        xp = ops.namespace(clean)
        return self._to_held(xp, noise * a + clean * b, sigma0)

    def _running(self, s: Any, end: Any) -> Any:
        """Whether the loop goes on from time s (ComfyUI's ``s < t_end - 1e-5``)."""
        return s < end - 1e-5

    # -- reading a state ----------------------------------------------------------------------

    def next_sigma(self, state: AdaptiveState) -> Array:
        """σ of the next model call (0-d)."""
        return state.clock[SIGMA]

    def next_timestep(self, state: AdaptiveState) -> Array:
        """The model's timestep of the next model call (0-d; ComfyUI's
        ``model_sampling.timestep`` of :meth:`next_sigma`)."""
        xp = ops.namespace(state.clock)
        return self._timestep(xp, state.clock[SIGMA], state.table)

    def done(self, state: AdaptiveState) -> Array:
        """Whether the loop is over (0-d bool): the end level reached, or ``max_calls``
        calls made."""
        return state.flags[0]

    def reached(self, state: AdaptiveState) -> Array:
        """Whether the loop ended at its end level (0-d bool; False while running, and when
        ``max_calls`` ran out first)."""
        return state.flags[1]

    def info(self, state: AdaptiveState) -> dict[str, Array]:
        """0-d arrays: ``calls`` (model calls made), ``accepted`` and ``rejected`` (attempts
        of a step), ``done``, ``reached``."""
        return {"calls": state.counts[CALLS], "accepted": state.counts[ACCEPTED],
                "rejected": state.counts[REJECTED], "done": state.flags[0],
                "reached": state.flags[1]}  # fmt: skip

    # -- ComfyUI's model convention at a traced σ ------------------------------------------

    def _timestep(self, xp, sigma: Array, table: Array) -> Array:
        ms = self.model_sampling
        if ms.kind == "flow":
            return sigma * ms.multiplier
        if ms.kind == "flux":
            return sigma
        dist = xp.abs(xp.log(sigma) - table)
        index = xp.astype(xp.argmin(dist), sigma.dtype)  # the first of equals, as torch
        if ms.kind == "lcm":
            skip = ms.timesteps // comfy_schedules.LCM_STEPS
            return index * skip + (skip - 1)
        return index

    def _denoised(self, xp, sigma: Array, x: Array, output: Array, table: Array) -> Array:
        """ComfyUI's ``calculate_denoised``: x̂_0 of the native x and the model's output."""
        kind = self.model_sampling.kind
        if kind in ("eps", "flow", "flux"):
            return x - output * sigma
        if kind == "v":
            return x / (sigma**2 + 1.0) - output * sigma / (sigma**2 + 1.0) ** 0.5
        if kind == "x0":
            return output
        s = self._timestep(xp, sigma, table) * 10.0  # lcm (see ModelSampling)
        c_skip = 0.25 / (s**2 + 0.25)
        c_out = s / (s**2 + 0.25) ** 0.5
        return (x - output * sigma) * c_out + x * c_skip

    def _to_native(self, xp, held: Array, sigma: Array) -> Array:
        if self.model_sampling.flow:
            return held
        return held * (sigma**2 + 1.0) ** 0.5

    def _to_held(self, xp, native: Array, sigma: Array) -> Array:
        if self.model_sampling.flow:
            return native
        return native / (sigma**2 + 1.0) ** 0.5

    # -- the step -----------------------------------------------------------------------------

    def _start(self, sigma_start: float, sigma_end: float, sigma_last: float):
        """(the initial clock, the number of extra arrays) of a loop from σ_start to σ_end
        on a list ending at σ_last."""
        raise NotImplementedError

    def _advance(self, xp, state: AdaptiveState, x_call: Array, denoised: Array,
                 noise: Array | None):  # fmt: skip
        """One model call's stage: (x, extra, clock, counts, finished, next native sample);
        counts with the stage, accepted and rejected updated (the base counts the call).
        ``noise``: a stochastic configuration's standard normal draw for the attempt this
        call may accept (None where deterministic)."""
        raise NotImplementedError

    # -- noise (stochastic configurations) ----------------------------------------------------

    def _key(self, key: Any, sample_template: Array) -> Array:
        """The state's noise stream for ``init``'s ``key``: the 0-d int32 seed (the same
        checks as every class)."""
        return ops.seed_array(ops.namespace(sample_template), key, sample_template)

    def _noise(self, xp, state: AdaptiveState, sample: Array,
               noise: Array | None) -> tuple[Array, Array]:  # fmt: skip
        """(the draw for the attempt this call may accept, the stream's state after it,
        kept only where the call accepts): ``noise`` where given, else draw k of the seed, k
        the number of attempts accepted so far (a pure function of the state)."""
        if noise is not None:
            return noise, state.key
        x = state.x
        return ops.normal(state.key, state.counts[ACCEPTED], tuple(x.shape), x.dtype, x), state.key

    def _result(self, xp, state: AdaptiveState, x: Array, extra: Array) -> Array:
        """The native result of a finished (or cut) loop: by default the accepted x."""
        return x

    def step(
        self,
        state: AdaptiveState,
        sample: Array,
        prediction: Array,
        *,
        noise: Array | None = None,
        unconditional: Array | None = None,
    ) -> tuple[AdaptiveState, Array]:
        """One model call: (next state, the sample for the next model call, or the result
        once ``done``). A done state is returned unchanged with ``sample``.
        ``unconditional=`` (CFG++) is refused: the error control sees one model output per
        call. ``noise=`` (a stochastic configuration only: a standard normal array of the
        sample's shape) replaces the draw of the attempt this call may accept; a call that
        accepts no attempt does not use it (which calls accept is decided as the loop runs:
        ``info(state)["accepted"]`` counts them)."""
        owner = type(self).__name__
        ops.check_step_arrays(owner, sample=sample, prediction=prediction, noise=noise,
                              unconditional=unconditional)  # fmt: skip
        if noise is not None and self.deterministic:
            raise TypeError(
                f"{owner}.step takes no noise=: this configuration is deterministic (η = 0)"
            )
        if unconditional is not None:
            raise TypeError(
                f"{owner}.step takes no unconditional= (CFG++): an adaptive loop's error "
                "control sees one model output per call; pass the guided output"
            )
        if not isinstance(state, AdaptiveState):
            raise ValueError(
                f"{owner}.step was given a state that another configuration's init made: it "
                f"needs the state its own init(max_calls, ...) made, got {type(state).__name__}"
            )
        made = ops.concrete_int(state.fingerprint)
        if made is not None and made != self.fingerprint:
            from ..core.scheduler import _maker

            raise ValueError(
                f"{owner}.step was given a state that another configuration's init made: made "
                f"by {_maker(made)}; step of {_maker(self.fingerprint)}"
            )
        shape = tuple(state.x.shape)
        xp = ops.namespace(state.clock)
        if ops.namespace(sample, prediction) is not xp:
            raise TypeError(
                f"{owner}.step: the state holds {type(state.clock).__name__} arrays but step was "
                f"given {type(sample).__name__} arrays; init and step must use one array library"
            )
        for name, arr in (("sample", sample), ("prediction", prediction)):
            if tuple(arr.shape) != shape:
                raise ValueError(
                    f"{owner}.step: {name} shape {tuple(arr.shape)} differs from the template's "
                    f"{shape} given to init"
                )
            if not ops.is_float(arr):
                raise TypeError(f"{owner}.step: expected a floating-point {name}, got {arr.dtype}")
        dtype = state.clock.dtype
        if sample.dtype != dtype and sample.dtype == xp.float64:
            raise TypeError(
                f"{owner}.step got a float64 sample but the state computes in {dtype} (init was "
                "given a lower-precision sample_template): pass a float64 template to init"
            )
        if noise is not None:
            if ops.namespace(noise) is not xp or tuple(noise.shape) != shape:
                raise ValueError(
                    f"{owner}.step: noise must be a {type(state.clock).__name__} array of the "
                    f"sample's shape {shape}, got {type(noise).__name__} of shape "
                    f"{tuple(getattr(noise, 'shape', ()))}"
                )
            if not ops.is_float(noise):
                raise TypeError(f"{owner}.step: expected a floating-point noise, got {noise.dtype}")
            noise = noise if noise.dtype == dtype else xp.astype(noise, dtype)
        x_in = sample if sample.dtype == dtype else xp.astype(sample, dtype)
        m = prediction if prediction.dtype == dtype else xp.astype(prediction, dtype)
        sigma = state.clock[SIGMA]
        x_call = self._to_native(xp, x_in, sigma)
        denoised = self._denoised(xp, sigma, x_call, m, state.table)
        quiet = np.errstate(all="ignore") if ops.is_numpy(xp) else contextlib.nullcontext()
        z, after = (None, state.key) if self.deterministic else self._noise(xp, state, x_in, noise)
        with quiet:  # NumPy: the step of a done state (h = 0) is computed, then discarded
            x, extra, clock, counts, finished, nxt = self._advance(xp, state, x_call, denoised, z)
        key = state.key
        if after is not state.key:  # the stream moves on where the call accepts an attempt
            key = _where(counts[ACCEPTED] > state.counts[ACCEPTED], after, state.key, xp)
        calls = counts[CALLS] + 1
        counts = xp.concat([counts[:CALLS], xp.reshape(calls, (1,)), counts[CALLS + 1 :]])
        done = finished | (calls >= counts[MAX_CALLS])
        flags = xp.stack([done, finished])
        new = AdaptiveState(x, extra, clock, counts, flags, state.table, state.fingerprint, key)
        # eager NumPy / PyTorch on the CPU: the flags are read on the host and only the
        # selected arrays are made (where(True, a, b) is a, bit for bit)
        host_done, host_old = host_value(xp, done), host_value(xp, state.flags[0])
        if host_done is None:
            result = self._result(xp, new, x, extra) * self._final(xp, clock)
            held = self._to_held(xp, nxt, clock[SIGMA])
            out = _where(done, result, held, xp)
        elif host_done:
            out = self._result(xp, new, x, extra) * self._final(xp, clock)
        else:
            out = self._to_held(xp, nxt, clock[SIGMA])
        if host_old is None:
            old = state.flags[0]
            new = AdaptiveState(*(_where(old, a, b, xp) for a, b in zip(state, new, strict=True)))
            out = _where(old, x_in, out, xp)
        elif host_old:  # a done state is returned unchanged with the sample
            new, out = state, x_in
        if out.dtype != sample.dtype:
            out = xp.astype(out, sample.dtype)
        return new, out

    def _final(self, xp, clock: Array) -> Any:
        """ComfyUI's inverse noise scaling of the result (flow models: 1 / (1 - σ_last))."""
        return clock[FINAL]


def const(xp, value: float, like: Array) -> Array:
    """A 0-d array of ``value`` in ``like``'s dtype and device (two-argument functions take
    arrays: scalars go through a dtype query ``torch.compile`` cannot trace)."""
    return xp.full((), value, dtype=like.dtype, device=ops.device(like))


def _counts(xp, counts: Array, stage: Array, accept: Array, reject: Array) -> Array:
    """The counts after a call's stage: the next stage, the accepted and rejected attempts
    (the calls, counted by the base, and the bound unchanged)."""
    dtype = counts.dtype

    def count(flag: Any) -> Any:  # a 0-d bool, or a Python bool read on the host
        return int(flag) if isinstance(flag, bool) else xp.astype(flag, dtype)

    return xp.stack([
        xp.astype(stage, dtype), counts[CALLS],
        counts[ACCEPTED] + count(accept), counts[REJECTED] + count(reject), counts[MAX_CALLS],
    ])  # fmt: skip


def pi_factor(err: Array, err_prev: Array, order: int, beta: float, safety: float, xp) -> Array:
    """The PI step-size factor (Gustafsson 1991; Hairer & Wanner, "Solving ODEs I", sec.
    II.4, eq. (4.13) and the "stabilized step size control" after it):
    fac = safety · err^(-α) · err_prev^β, α = 1/q - 0.75 β, q the order of the error
    estimate plus one."""
    alpha = 1.0 / order - 0.75 * beta
    err = xp.maximum(err, const(xp, 1e-10, err))
    return safety * err ** (-alpha) * err_prev**beta
