"""diffusers as an oracle: its schedulers, built with float64 tables, driven like ours.

diffusers computes its betas and ᾱ in float32. To compare final samples at 1e-6 in float64
we construct its scheduler with every ``torch.float32`` in the scheduler's module read as
``torch.float64`` (its own formulas, run at double precision). The float32 tables
themselves are compared with ours separately, at float32 precision.
"""

from __future__ import annotations

import contextlib
import importlib

import torch

from diffsched.interop.peer import MODULES, _double_tables, module_of, scheduler

__all__ = ["MODULES", "module_of", "scheduler"]


# ----------------------------------------------------------------------------------------
# Driving loops: ours and diffusers', with the same model, the same start and the same noise.
# ----------------------------------------------------------------------------------------

SHAPE = (2, 4, 8, 8)
F64_BOUND = 1e-6  # final samples against diffusers with float64 tables, in float64
F32_BOUND = 1e-4  # ... in float32


def calls(sched, holder: list, timesteps):
    """(call index, timestep) of every model call of a loop: the ``timesteps`` of init, or,
    for an adaptive scheduler (``ADAPTIVE``, docs/adaptive.md), its state's
    ``next_timestep`` until ``done``; ``holder[0]`` is the state, which the caller's loop
    keeps up to date."""
    if not getattr(sched, "ADAPTIVE", False):
        yield from enumerate(timesteps)
        return
    i = 0
    while not bool(sched.done(holder[0])):
        yield i, sched.next_timestep(holder[0])
        i += 1


# Largest relative difference seen per (label, scheduler), printed by conftest's
# pytest_terminal_summary hook.
MAX_REL: dict[tuple[str, str], float] = {}


def record(label: str, scheduler_name: str, value: float) -> None:
    key = (label, scheduler_name)
    MAX_REL[key] = max(MAX_REL.get(key, 0.0), float(value))


def check(ours, theirs, label: str, name: str, bound: float) -> float:
    """:func:`rel` of the two, recorded under (label, name) and asserted below ``bound``."""
    r = rel(ours, theirs)
    record(label, name, r)
    assert r < bound, r
    return r


def rel(ours, theirs) -> float:
    """||ours - theirs|| / ||theirs||, in float64, for torch tensors or NumPy arrays."""
    import numpy as np

    a = np.asarray(torch.as_tensor(ours).detach().cpu().double().numpy())
    b = np.asarray(torch.as_tensor(theirs).detach().cpu().double().numpy())
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def linear_tanh_model(n: int = SHAPE[-1], seed: int = 1234):
    """x -> tanh(x @ W + 1e-3 t): a fixed random map of the last axis, t-dependent (torch)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, n, generator=g, dtype=torch.float64) / n**0.5

    def model(x, t):
        return torch.tanh(x @ w.to(x.dtype) + 1e-3 * float(t))

    return model


def start_sample(shape=SHAPE, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def noise_list(count: int, shape=SHAPE, seed: int = 7, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(count)]


def run_ours(sched, num_steps, x, model, *, noises=None, strength=None, key=0):
    """(timesteps, final sample) of our loop; ``noises[i]`` overrides step i's draw."""
    kwargs = {} if strength is None else {"strength": strength}
    state, timesteps = sched.init(num_steps, x, key=key, **kwargs)
    y = x
    for i, t in enumerate(timesteps):
        pred = model(y, t)
        if noises is None:
            state, y = sched.step(state, y, pred)
        else:
            state, y = sched.step(state, y, pred, noise=noises[i])
    return timesteps, y


def run_diffusers(
    config,
    num_steps,
    x,
    model,
    *,
    eta=0.0,
    rederive=False,
    noises=None,
    strength=None,
    float64=True,
):
    """(timesteps, final sample) of diffusers' loop for ``config``; see :func:`drive`."""
    return drive(
        scheduler(config, float64=float64),
        num_steps,
        x,
        model,
        eta=eta,
        rederive=rederive,
        noises=noises,
        strength=strength,
    )


def drive(d, num_steps, x, model, *, eta=0.0, rederive=False, noises=None, strength=None):
    """(timesteps, final sample) of a diffusers scheduler's loop, driven like a pipeline.

    DDIM gets ``eta``/``use_clipped_model_output`` and ``variance_noise=noises[i]``; LCM gets
    ``int(t)`` (a tensor timestep makes it compute c_skip/c_out in float32) and its internal
    ``randn_tensor`` draws replaced by ``noises`` in order.
    """
    from unittest import mock

    name = type(d).__name__
    if name == "LCMScheduler":
        d.set_timesteps(num_steps, strength=1.0 if strength is None else strength)
    else:
        d.set_timesteps(num_steps)
    y = x
    patch = contextlib.nullcontext()
    if name == "LCMScheduler":
        draws = iter(noises)
        patch = mock.patch.object(
            importlib.import_module(MODULES[name]), "randn_tensor", lambda *a, **k: next(draws)
        )
    with patch:
        for i, t in enumerate(d.timesteps):
            kwargs = {}
            if name == "DDIMScheduler":
                kwargs = {"eta": eta, "use_clipped_model_output": rederive}
                if eta > 0:
                    kwargs["variance_noise"] = noises[i]
            step_t = int(t) if name == "LCMScheduler" else t
            y = d.step(model(y, t), step_t, y, **kwargs).prev_sample
    return d.timesteps, y


@contextlib.contextmanager
def float64_default(active: bool = True):
    """torch's default dtype float64 (where ``active``): the grids diffusers builds in the
    default dtype (``torch.linspace`` without a dtype, ``torch.tensor`` of Python floats)
    computed in double precision."""
    if not active:
        yield
        return
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def img2img_inputs(noise_count: int, tanh: bool = True):
    """(clean image, noise, model, step noises) of the image-to-image comparisons: the clean
    image tanh of a normal sample (seed 3; ``tanh=False``: the sample itself), the noise
    added to it seed 4, ``noise_count`` step draws."""
    clean = start_sample(seed=3)
    return (torch.tanh(clean) if tanh else clean, start_sample(seed=4), linear_tanh_model(),
            noise_list(noise_count))  # fmt: skip


def img2img_ours(sched, num_steps, strength, clean, noise, model, noises):
    """(timesteps, start, final sample) of our image-to-image loop: ``init(strength=)``,
    ``add_noise`` of ``clean``, then the steps (``noises[i]`` at step i if stochastic)."""
    state, timesteps = sched.init(num_steps, clean, strength=strength)
    start = sched.add_noise(state, clean, noise)
    x = start
    for i, t in enumerate(timesteps):
        kwargs = {} if sched.deterministic else {"noise": noises[i]}
        state, x = sched.step(state, x, model(x, t), **kwargs)
    return timesteps, start, x


def img2img_diffusers(config, num_steps, strength, clean, noise, model, noises, given_start=None):
    """(timesteps, start, final sample) of diffusers' scheduler (float64 tables) driven as
    ``StableDiffusionImg2ImgPipeline`` drives it: ``set_timesteps(N)``, the last floor(N s)
    steps (``timesteps[t_start · order:]``), ``set_begin_index``, ``add_noise`` at the first
    of them (``given_start`` for a class without ``add_noise``: start None), the step loop
    with ``randn_tensor``'s draw at step i replaced by ``noises[i]``."""
    from unittest import mock

    from diffsched.interop import peer

    module = peer.module_of(config)
    d = peer.scheduler(config)
    with peer._double_tables(module):
        d.set_timesteps(num_steps)
    peer._double_grids(d)
    t_start = num_steps - min(int(num_steps * strength), num_steps)
    timesteps = d.timesteps[t_start * d.order :]
    if hasattr(d, "set_begin_index"):
        d.set_begin_index(t_start * d.order)
    current = [0]

    def draw(shape, *args, **kwargs):
        return noises[current[0]]

    with (
        peer._double_tables(module),
        mock.patch.object(module, "randn_tensor", draw, create=True),
    ):
        # IPNDMScheduler has no add_noise (its img2img pipelines cannot run it): our start
        start = d.add_noise(clean, noise, timesteps[:1]) if hasattr(d, "add_noise") else None
        x = start if start is not None else given_start
        for i, t in enumerate(timesteps):
            current[0] = i
            x = d.step(model(d.scale_model_input(x, t), t), t, x).prev_sample
    return timesteps, start, x


def scheduler_from_config(config: dict, *, float64: bool = True):
    """diffusers' own ``SchedulerClass.from_config(config)`` (float64 tables by default).

    Unlike :func:`scheduler` this goes through diffusers' config loading, which drops the
    keys its class has no argument for (with a logged warning), as when loading a model.
    """
    name = config["_class_name"]
    module = importlib.import_module(MODULES[name])
    cls = getattr(module, name)
    if not float64:
        return cls.from_config(dict(config))
    with _double_tables(module):
        return cls.from_config(dict(config))


def leaves(state) -> list:
    """The arrays of a state, nested tuples (the engine's history) flattened."""
    out = []
    for leaf in state:
        if isinstance(leaf, tuple):
            out.extend(leaves(leaf))
        else:
            out.append(leaf)
    return out


# ----------------------------------------------------------------------------------------
# DPM2 ancestral's σ_down, well conditioned
# ----------------------------------------------------------------------------------------


def exact_ancestral_split(d) -> None:
    """Replaces, after ``set_timesteps``, the σ_down of a diffusers
    ``KDPM2AncestralDiscreteScheduler`` (and what derives from it: the midpoint σ's and
    timesteps) by the well-conditioned value σ_down = σ_{i+1}² / σ_i.

    diffusers forms σ_down = sqrt(σ_{i+1}² - σ_up²) in float32, and σ_up² = σ_{i+1}² (1 -
    σ_{i+1}²/σ_i²) nearly cancels σ_{i+1}² wherever σ_{i+1} << σ_i (the step down to the
    lowest σ of every grid): a one-ulp difference in σ_up, which torch's vectorised
    ``** 0.5`` gives on some CPUs and not others, moves σ_down by up to 1e-2 relative and the
    midpoint's timestep by 1e-2 absolute. diffsched computes σ_down exactly; the comparison
    with diffusers is made on diffusers' step run on that same, exact, split (its own code
    for everything else), so that it does not depend on the CPU.
    """
    import numpy as np

    sig = d.sigmas  # [σ_0, σ_1, σ_1, ..., σ_N, σ_N] with σ_N = 0 (interleaved)
    base = torch.cat([sig[:1], sig[1:-1:2]]).double()  # σ_0 .. σ_N
    nxt = torch.cat([base[1:], base.new_zeros(1)])
    down = torch.where(base > 0, nxt**2 / torch.where(base > 0, base, 1.0), 0.0)
    down[-1] = 0.0
    interpol = torch.sqrt(base * down)  # exp(lerp(log σ, log σ_down, 1/2))
    interpol[-2:] = 0.0
    down, interpol = down.to(d.sigmas_down.dtype), interpol.to(d.sigmas_interpol.dtype)

    def spread(v):
        return torch.cat([v[:1], v[1:].repeat_interleave(2), v[-1:]])

    d.sigmas_down, d.sigmas_interpol = spread(down), spread(interpol)
    ts = d.timesteps
    base_t = torch.cat([ts[:1], ts[2::2]])
    log_sigmas = d.log_sigmas.cpu()
    mid_t = np.array([d._sigma_to_t(s, log_sigmas) for s in interpol.float()])
    mid_t = torch.from_numpy(mid_t).to(ts.dtype)
    pairs = torch.stack((mid_t[:-2, None], base_t[1:, None]), dim=-1).flatten()
    d.timesteps = torch.cat([base_t[:1], pairs])


@contextlib.contextmanager
def well_conditioned_dpm2_ancestral():
    """diffusers' ``KDPM2AncestralDiscreteScheduler.set_timesteps`` followed by
    :func:`exact_ancestral_split` (for every instance, pipelines' included)."""
    from diffusers import KDPM2AncestralDiscreteScheduler as cls

    original = cls.set_timesteps

    def set_timesteps(self, *args, **kwargs):
        original(self, *args, **kwargs)
        exact_ancestral_split(self)

    cls.set_timesteps = set_timesteps
    try:
        yield
    finally:
        cls.set_timesteps = original


def values_seen(cases) -> dict[str, set]:
    """{"Class.option": the values the grid's cases give it} (``trained_betas``: whether
    given), and {"Class.steps": the step counts}, of ``(sched, steps, ...)`` cases."""
    import dataclasses

    seen: dict[str, set] = {}
    for sched, steps, *_ in cases:
        name = type(sched).__name__
        for field in dataclasses.fields(sched):
            value = getattr(sched, field.name)
            value = value is not None if field.name == "trained_betas" else value
            seen.setdefault(f"{name}.{field.name}", set()).add(value)
        seen.setdefault(f"{name}.steps", set()).update(steps)
    return seen


def grid(cases):
    """pytest parameters: one per (case, step count); a case is ``(sched, steps, *extra)``
    and its parameters are ``(sched, n, *extra)``; dict extras show in the id."""
    import pytest

    params = []
    for i, (sched, steps, *extra) in enumerate(cases):
        shown = "".join(f"-{sorted(e.items())}" for e in extra if isinstance(e, dict))
        for n in steps:
            label = f"{type(sched).__name__}{i}-N={n}{shown}"
            params.append(pytest.param(sched, n, *extra, id=label))
    return params
