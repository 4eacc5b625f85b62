"""ComfyUI's noise, draw for draw: the same image as ComfyUI for the same seed.

A ComfyUI KSampler run with seed s on the CPU draws its standard normals from three
sources, each a fixed function of s:

1. **The initial noise** (``comfy.sample.prepare_noise``): the global generator seeded
   with s, then one ``torch.randn(latent shape, float32)``. :func:`initial_noise` draws it
   from a generator of its own (the same numbers; the global one is never touched).
2. **A sampler's noise** (k-diffusion's ``default_noise_sampler``: euler_ancestral,
   dpm_2_ancestral, dpmpp_2s_ancestral, ddpm, lcm, res_multistep_ancestral, er_sde, SEEDS,
   SA-Solver): a new ``torch.Generator`` seeded with s when the sampler starts, one
   ``torch.randn(x.shape, float32)`` per draw, in order (so its first draw equals the
   initial noise). A draw ComfyUI makes and multiplies by 0 still moves the stream.
3. **Churn** (euler, heun, dpm_2 with ``s_churn`` > 0; heunpp2): ``torch.randn_like(x)``
   on the global generator, which goes on from where the initial noise left it.
4. **The Brownian samplers** (dpmpp_sde, dpmpp_2m_sde, dpmpp_2m_sde_heun, dpmpp_3m_sde and
   their ``_gpu`` names): ``torchsde.BrownianTree(t0=σ_lo, w0=0, t1=σ_hi, entropy=s)``
   over the float32 levels, σ_lo the smallest nonzero σ of the list and σ_hi the largest
   (taken before ComfyUI's ``offset_first_sigma_for_snr``); a draw over (σ, σ') is

       z = (W(σ') - W(σ)) / sqrt|σ' - σ|,                                              (1)

   σ, σ' rounded to float32 and (1) computed in float32, as ComfyUI's CPU tree does. On a
   CPU the ``_gpu`` names' tree is the same tree (it lives on the latent's device).

Every draw is float32 (ComfyUI's latent) and then cast to the sample's dtype.

**In the loop state.** A class with ``noise_stream="comfy"`` keeps its stream in the
engine state's ``key`` (a uint8 tensor; ``init``'s ``key`` is the seed):

* generator streams (2, 3): ``torch.Generator.get_state()`` of the stream before the
  next draw. A step that draws sets a fresh generator to that state, draws, and returns
  a state holding ``get_state()`` after the draw: ``step`` stays pure (the same state
  and inputs give the same draw, any number of times, in any thread).
* the Brownian tree (4) is no array: the state holds the seed (8 bytes) and the program's
  per-call columns hold each draw's (σ, σ') and the tree's (σ_lo, σ_hi); a step queries
  the tree of (seed, σ_lo, σ_hi, shape), rebuilt deterministically where it is not in a
  small bounded cache (:data:`TREE_CACHE_SIZE` trees, least recently used first out,
  behind a lock; torchsde's tree gives the same increment whatever it was asked before).

Eager PyTorch on the CPU only: a torch.Generator state cannot be traced, so
``torch.compile``, JAX and NumPy are refused with a clear error.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..core import engine, ops
from ..core.options import option

NOISE_STREAMS = ("diffsched", "comfy")
# the kinds of stream a class draws from with noise_stream="comfy"
GENERATOR, GLOBAL, BROWNIAN = "generator", "global", "brownian"
TREE_CACHE_SIZE = 8
SEED_LIMIT = 1 << 64  # ComfyUI's seeds: 0 .. 0xffffffffffffffff
# the per-call columns a comfy stream adds to a program: whether ComfyUI draws after the
# call, the draw's (σ, σ'), the tree's (σ_lo, σ_hi)
_COLUMNS = 5


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a test dependency
        raise ImportError("noise_stream='comfy' needs PyTorch (pip install torch)") from None
    return torch


def check_seed(seed: Any, what: str = "seed") -> int:
    """ComfyUI's seed: an integer in [0, 2**64)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"{what}: ComfyUI's seed is an integer, got {type(seed).__name__}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"{what}: ComfyUI's seed lies in [0, 2**64), got {int(seed)}")
    return int(seed)


def _shape(shape: Any) -> tuple[int, ...]:
    try:
        out = tuple(int(n) for n in shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of integers, got {shape!r}") from None
    if any(n < 0 for n in out):
        raise ValueError(f"shape must hold sizes >= 0, got {out}")
    return out


def initial_noise(seed: int, shape: Any) -> Any:
    """ComfyUI's initial noise for ``seed`` (``comfy.sample.prepare_noise``): a float32
    torch tensor of ``shape`` on the CPU, bit for bit ComfyUI's. The global torch
    generator is not touched.

    A loop from it: ``x = initial_noise(seed, shape).double() * sched.init_noise_scale(n)``,
    then ``sched.init(n, x, seed)`` with ``noise_stream="comfy"`` (or ``ds.sample(model,
    sched, initial_noise(seed, shape).double(), n, key=seed)``).
    """
    torch = _torch()
    gen = torch.Generator().manual_seed(check_seed(seed))
    return torch.randn(_shape(shape), generator=gen, dtype=torch.float32)


def generator_state(seed: int, skip: tuple[int, ...] | None = None) -> Any:
    """The state (uint8 tensor) of a generator seeded with ``seed``, after one float32 draw
    of shape ``skip`` where given (the global generator after the initial noise)."""
    torch = _torch()
    gen = torch.Generator().manual_seed(check_seed(seed))
    if skip is not None:
        torch.randn(skip, generator=gen, dtype=torch.float32)
    return gen.get_state()


def generator_draw(state: Any, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """(the next float32 normal of ``shape`` of the stream in ``state``, the stream's state
    after it); ``state`` is not changed."""
    torch = _torch()
    gen = torch.Generator()
    gen.set_state(state)
    z = torch.randn(shape, generator=gen, dtype=torch.float32)
    return z, gen.get_state()


def comfy_bad(owner: str, what: str) -> str:
    """The message refusing ``noise_stream="comfy"`` where its torch noise cannot run."""
    return (
        f"{owner}: noise_stream='comfy' draws ComfyUI's torch noise in eager PyTorch on the "
        f"CPU; {what}"
    )


def check_eager_cpu(owner: str, array: Any, name: str) -> None:
    """Refuses an ``array`` (named ``name``) that ComfyUI's torch noise cannot be drawn
    beside: not a torch tensor (TypeError), not on the CPU (ValueError), or traced by
    torch.compile (RuntimeError)."""
    if type(array).__module__.split(".")[0] != "torch":
        raise TypeError(comfy_bad(owner, f"got a {type(array).__name__} {name}"))
    if array.device.type != "cpu":
        raise ValueError(comfy_bad(owner, f"got a tensor on {array.device}"))
    if _torch().compiler.is_compiling():
        raise RuntimeError(comfy_bad(owner, "not under torch.compile"))


def seed_bytes(seed: int) -> Any:
    """``seed`` as 8 little-endian bytes (a uint8 tensor): the Brownian stream's state."""
    torch = _torch()
    return torch.tensor(list(int(seed).to_bytes(8, "little")), dtype=torch.uint8)


def seed_of(data: Any) -> int:
    """The seed :func:`seed_bytes` wrote."""
    return int.from_bytes(bytes(data.tolist()), "little")


_TREES: OrderedDict[tuple, Any] = OrderedDict()
_TREES_LOCK = threading.Lock()


def _tree(seed: int, lo, hi, shape: tuple[int, ...]):
    """ComfyUI's Brownian tree of ``seed`` over [lo, hi] (float32 0-d tensors), from the
    bounded cache or built (the caller holds the lock)."""
    key = (seed, float(lo), float(hi), shape)
    tree = _TREES.get(key)
    if tree is not None:
        _TREES.move_to_end(key)
        return tree
    try:
        import torchsde
    except ImportError:
        raise ImportError(
            "noise_stream='comfy' on ComfyUI's Brownian samplers (dpmpp_sde, dpmpp_2m_sde, "
            "dpmpp_3m_sde, ...) needs torchsde, which ComfyUI draws from (pip install torchsde)"
        ) from None
    torch = _torch()
    tree = torchsde.BrownianTree(lo, torch.zeros(shape, dtype=torch.float32), hi, entropy=seed)
    _TREES[key] = tree
    while len(_TREES) > TREE_CACHE_SIZE:
        _TREES.popitem(last=False)
    return tree


def brownian_draw(
    seed: int, lo: float, hi: float, a: float, b: float, shape: tuple[int, ...]
) -> Any:
    """Eq. 1: the float32 draw ComfyUI's Brownian noise sampler of ``seed`` over [lo, hi]
    makes when asked for (σ, σ') = (a, b)."""
    torch = _torch()
    f32 = torch.float32
    lo, hi, a, b = (torch.tensor(float(v), dtype=f32) for v in (lo, hi, a, b))
    first, last, sign = (a, b, 1) if a < b else (b, a, -1)
    with _TREES_LOCK, warnings.catch_warnings():
        # torchsde compares a float32 query with its ends as Python floats and warns that
        # σ_lo or σ_hi lies past them: the draw is ComfyUI's all the same (ComfyUI sees the
        # same warning)
        warnings.filterwarnings("ignore", message="Should have t[ab]", category=UserWarning)
        w = _tree(seed, lo, hi, shape)(first, last)
    return (w * sign) / (b - a).abs().sqrt()


@dataclass(frozen=True, kw_only=True)
class ComfyNoise:
    """The ``noise_stream`` option of ComfyUI's stochastic classes (see
    :mod:`diffsched.methods._comfy_noise`), mixed in beside
    :class:`~diffsched.core.scheduler.BrownianNoise` (its ``noise_type``)."""

    # which stream this class's draws come from with noise_stream="comfy"
    COMFY_STREAM: ClassVar[str] = GENERATOR

    noise_stream: str = option(
        "diffsched", "diffsched (the noise of noise_type, keyed by the seed) or comfy "
        "(ComfyUI's own draws for the seed init's key is: its seeded torch.Generator stream, "
        "its global-generator churn draws, torchsde's Brownian tree for the Brownian "
        "samplers; equal to ComfyUI on the CPU draw for draw, with "
        "ds.comfy.initial_noise(seed, shape) as the initial noise; eager PyTorch on the CPU "
        "only)", choices=NOISE_STREAMS,
    )  # fmt: skip

    def _check(self) -> None:
        super()._check()  # type: ignore[misc]
        if self.noise_stream == "comfy" and self.noise_type != "gaussian":  # type: ignore[attr-defined]
            raise ValueError(
                f"{type(self).__name__}: noise_stream='comfy' draws ComfyUI's own noise, which "
                f"noise_type={self.noise_type!r} would replace; use noise_type='gaussian'"
            )

    # -- the hooks -----------------------------------------------------------------------

    def comfy_draws(self, sigmas: np.ndarray) -> np.ndarray:
        """(N, 2) the (σ, σ') of the draw ComfyUI makes after each model call, NaN where it
        draws none (for the σ list of :meth:`sigmas`). By default the calls' own record
        (:class:`~diffsched.methods._comfy.Calls`' ``draws``), else a draw after every call
        that adds noise."""
        calls = self.calls(sigmas)  # type: ignore[attr-defined]
        if getattr(calls, "draws", None) is not None:
            return np.asarray(calls.draws, np.float64).reshape(-1, 2)
        out = np.full((len(calls.sigmas), 2), np.nan)
        if calls.noise is not None:
            out[np.asarray(calls.noise) != 0] = 0.0
        return out

    def comfy_skip(self, sigmas: np.ndarray) -> int:
        """How many draws of the global generator, after the initial noise, come before the
        first model call (churn of the first step)."""
        return 0

    def comfy_initial_noise(
        self, seed: int, shape: Any, num_steps: int | None, **init_options: Any
    ) -> Any:
        """The unit noise a loop equal to ComfyUI's KSampler with ``seed`` starts from (times
        ``init_noise_scale``, as ``ds.sample`` does), float64: ComfyUI's initial noise
        (:func:`initial_noise`), combined with its first churn draw where a churn sampler's
        first step churns."""
        return initial_noise(seed, shape).double()

    def _with_step_columns(self, program, tableau, num_steps, init_options):
        program = super()._with_step_columns(  # type: ignore[misc]
            program, tableau, num_steps, init_options
        )
        if self.noise_stream != "comfy":
            return program
        sig = self.sigmas(num_steps, **init_options)  # type: ignore[attr-defined]
        draws = self.comfy_draws(sig)
        n = program.num_calls
        drawn = ~np.isnan(draws[:, 0])
        noise = program.coefs[:n, engine.COEF_COLUMNS.index("out_noise")]
        lost = np.flatnonzero((noise != 0) & ~drawn)
        if lost.size:  # every call that adds noise takes one of ComfyUI's draws
            raise ValueError(
                f"{type(self).__name__}: noise_stream='comfy' has no ComfyUI draw for model "
                f"call(s) {lost.tolist()} of this configuration"
            )
        positive = sig[sig > 0]
        lo, hi = (float(positive.min()), float(sig.max())) if positive.size else (0.0, 0.0)
        columns = np.zeros((n, _COLUMNS))
        columns[:, 0] = drawn
        columns[drawn, 1:3] = np.nan_to_num(draws[drawn])
        columns[:, 3:5] = lo, hi
        return engine.with_columns(program, columns)

    def _comfy_bad(self, what: str) -> str:
        return comfy_bad(type(self).__name__, what)

    def init(self, num_steps, sample_template, key=0, **init_options):
        """The class's ``init``; with ``noise_stream="comfy"`` ``key`` is ComfyUI's seed
        (an integer in [0, 2**64)) and the state's ``key`` holds the stream."""
        if self.noise_stream != "comfy":
            return super().init(num_steps, sample_template, key, **init_options)  # type: ignore[misc]
        sample_template = ops.template(sample_template)
        check_eager_cpu(type(self).__name__, sample_template, "sample_template")
        if init_options.get("offsets") is not None or np.ndim(init_options.get("strength")) > 0:
            raise ValueError(
                self._comfy_bad("per-element schedules (offsets=, an array strength=) are not")
            )
        seed = check_seed(key, f"{type(self).__name__}.init key (ComfyUI's seed)")
        state, timesteps = super().init(num_steps, sample_template, 0, **init_options)  # type: ignore[misc]
        shape = tuple(sample_template.shape)
        if self.COMFY_STREAM == BROWNIAN:
            stream = seed_bytes(seed)
        elif self.COMFY_STREAM == GLOBAL:
            sig = self.sigmas(num_steps, **init_options)  # type: ignore[attr-defined]
            stream = generator_state(seed, shape)
            for _ in range(self.comfy_skip(sig)):
                stream = generator_draw(stream, shape)[1]
        else:
            stream = generator_state(seed)
        return state._replace(key=stream), timesteps

    def step(self, state, sample, prediction, *, noise=None, unconditional=None):
        """The class's ``step``; with ``noise_stream="comfy"`` the call takes ComfyUI's
        draw (``noise=`` still replaces it; the stream moves on either way)."""
        if self.noise_stream != "comfy":
            return super().step(  # type: ignore[misc]
                state, sample, prediction, noise=noise, unconditional=unconditional
            )
        if type(sample).__module__.split(".")[0] != "torch":
            raise TypeError(self._comfy_bad(f"got a {type(sample).__name__} sample"))
        key = getattr(state, "key", None)
        if not isinstance(state, engine.EngineState) or getattr(key, "dtype", None) is not (
                _torch().uint8):  # fmt: skip
            raise ValueError(
                f"{type(self).__name__}: noise_stream='comfy' needs the state its own init "
                "made (one holding ComfyUI's noise stream)"
            )
        if ops.host_index(state.step) is None:
            raise RuntimeError(self._comfy_bad("not traced (torch.compile) or on an accelerator"))
        row = engine.extra_row(state)[-_COLUMNS:]
        stream, draw = state.key, None
        if row[0]:
            shape = tuple(sample.shape)
            if self.COMFY_STREAM == BROWNIAN:
                draw = brownian_draw(seed_of(stream), row[3], row[4], row[1], row[2], shape)
            else:
                draw, stream = generator_draw(stream, shape)
            draw = draw.to(sample.dtype)
        if noise is None and draw is not None and not self.deterministic:  # type: ignore[attr-defined]
            noise = draw
        new, out = super().step(  # type: ignore[misc]
            state, sample, prediction, noise=noise, unconditional=unconditional
        )
        return new._replace(key=stream), out
