"""A tuned table: a base method's coefficients with a small, fitted correction of the
weights of its earlier x̂_0 estimates, on a fixed grid (:func:`diffsched.tune` with
``tune="coefficients"`` or ``"both"`` returns one).

Every deterministic method is a table (:class:`~diffsched.core.engine.Tableau`): call n
forms x̂_0 from its sample and model output, and the next native sample is a fixed linear
combination of the samples, outputs and x̂_0's of this and earlier calls. A multistep
solver's weights come from a polynomial model of x̂_0(λ) along the trajectory, λ = -log σ
(DPM-Solver++, Lu et al. 2022b, eq. 9; UniPC, Zhao et al. 2023; DEIS, Zhang & Chen 2023;
iPNDM); learned solvers fit them instead (S4S, Frankel et al. 2025; PAS, Wang et al.
2025). The tuned table keeps the base's and adds, at call n,

    x_{n+1} = base_n(...) + Σ_{j=0}^{L} δ_{n,j} x̂_0(n - j)                             (1)

with moments that vanish up to the order the tuner kept,

    Σ_j δ_{n,j} = 0,    Σ_j δ_{n,j} (λ_{n-j} - λ_n) = 0,                               (2)

so that on a trajectory whose x̂_0 is constant, or linear in λ, the correction is zero
and the base's consistency (order) conditions hold: the tuned table is a real solver plus
a correction of the size of its truncation error. The δ's are stored explicitly (the
``weights`` option, N rows of L + 1), with the grid they were fitted on (``grid_sigmas`` or
``grid_timesteps``) and the base's config (``base``), so that ``tableau`` needs no fit and
the class runs on every backend, jitted and compiled, as every other.

A tuned table may also weight the earlier samples themselves (``sample_weights``, N rows
of L + 1 in the base's native space): with x_k = A_k x̂_0(k) + S_k ε̂(k) at each call (A_k,
S_k the native coefficients of the clean sample and the noise at the call's level, ε̂ the
model's noise estimate), a correction of both histories

    x_{n+1} = base_n(...) + Σ_j δ_{n,j} x̂_0(n - j) + Σ_j v_{n,j} x_{n-j}
            = base_n(...) + Σ_j (δ_{n,j} + v_{n,j} A_{n-j}) x̂_0(n - j)
                          + Σ_j v_{n,j} S_{n-j} ε̂(n - j)                                  (4)

is a correction in the data and the noise parametrisations at once (DPM-Solver++ and
DPM-Solver's, Lu et al. 2022b and 2022a): a linear multistep method proper, which combines
past solutions as well as past derivatives (Dahlquist 1956), where eq. (1) combines the
derivatives only. The tuner keeps the moments (2) of the x̂_0's effective weights δ + vA,
and one moment fewer of the noise estimates' vS: with the default (one moment) the sum
Σ_j v_{n,j} S_{n-j} is free, a rescaling of the noise the step carries (as the ε-scaling of
Ning et al. 2024 rescales the model's noise estimate), held toward zero by the fit's prior
only. On a trajectory whose x̂_0 is constant and whose noise estimates keep their moments
(with two moments, a point mass's exact one) the correction is zero.

A tuned table may also call the model at a time of its own (``model_timesteps``, one per
call), decoupled from the level its sample sits at: the sample of call n is on the base's
level σ_n, and the model is asked at t'_n,

    m_n = model(x_n, t'_n),    x̂_0(n) = a_n x_n + b_n m_n   (a_n, b_n the base's, at σ_n)   (3)

(S4S, Frankel et al. 2025, learns the times with the coefficients; the time-shift samplers,
Li et al. 2024, move them alone to counter the exposure bias of a trained model). With
t'_n = t_n it is the table above.

``Tuned()`` (no weights) is its base, DPM-Solver++(2M), unchanged; ``Tuned(base=sched)``
is ``sched``. :func:`diffsched.save_tuned` / :func:`diffsched.load_tuned` write and read
one as a small JSON file.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families, ops
from ..core.engine import SAMPLE, X0, Tableau
from ..core.options import describe, option
from ..core.scheduler import BaseScheduler, check_custom_grids, document

__all__ = ["Tuned", "model_time_range"]

MAX_WEIGHT = 1e6  # a larger correction is no tuned table (a corrupted file): refused


def _floats_or_none(owner: str, name: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    where = f"{owner} option {name}"
    try:
        flat = isinstance(value, str | bytes | dict | bool) or np.ndim(value) != 1
    except ValueError:  # a ragged nesting
        flat = True
    if flat:
        raise TypeError(f"{where} expects a list of numbers, got: {describe(value)}")
    not_numbers = (bool, np.bool_, str, bytes)  # True is no weight: refused, not cast to 1.0
    kind = np.asarray(value).dtype.kind
    listed = kind == "O" or not hasattr(value, "dtype")  # a list (or object array): its items
    if kind in "bUS" or (listed and any(isinstance(v, not_numbers) for v in value)):
        raise TypeError(f"{where} expects a list of numbers, not bools or strings, got: "
                        f"{describe(value)}")  # fmt: skip
    try:
        out = tuple(float(v) for v in np.asarray(value, dtype=np.float64))
    except OverflowError:  # an integer beyond any float
        raise ValueError(f"{where} expects finite numbers, got: {describe(value)}") from None
    except (TypeError, ValueError):
        raise TypeError(f"{where} expects a list of numbers, got: {describe(value)}") from None
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{where} expects finite numbers, got: {describe(value)}")
    return out


def model_time_range(scheduler: Any) -> tuple[float, float] | None:
    """The timesteps a model trained for ``scheduler``'s levels takes: [0, T - 1] for a
    discrete table of T levels, [T / 1000, T] for flow matching (t = σ T; σ = 0, clean
    data, is no level a flow model is asked at), None where the timestep is no index of a
    training table (EDM's c_noise)."""
    from ..grids import is_flow

    if is_flow(scheduler):
        top = float(scheduler.num_train_steps)
        return top / 1000, top
    if not hasattr(scheduler, "alphas_cumprod"):  # a σ-parametrised class (EDM)
        return None
    return 0.0, float(len(scheduler.alphas_cumprod) - 1)


@functools.lru_cache(maxsize=64)
def _base_from_json(text: str) -> BaseScheduler:
    from ..core.config import build
    from . import CLASSES  # the registry (this package's, read when the base is needed)

    config = json.loads(text)
    classes = {cls.config_class_name(): cls for cls in CLASSES}
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name not in classes:
        raise ValueError(f"Tuned: unknown base scheduler class {name!r}")
    return build(classes[name], config, {}, strict=True)


def base_json(base: Any) -> str:
    """The canonical text of a base config: a scheduler, a config dict or its JSON."""
    if isinstance(base, BaseScheduler):
        config = base.to_config()
    elif isinstance(base, dict):
        config = base
    elif isinstance(base, str):
        try:
            config = json.loads(base)
        except json.JSONDecodeError as err:
            raise ValueError(f"Tuned option base is not a scheduler config: {err}") from None
        except RecursionError:
            raise ValueError("Tuned option base is JSON nested too deeply to be a config") from None
    else:
        raise TypeError(
            f"Tuned option base expects a scheduler, a config dict or its JSON, got: {base!r}"
        )
    if not isinstance(config, dict) or not isinstance(config.get("_class_name"), str):
        raise ValueError(f"Tuned option base must be a config with a _class_name, got: {base!r}")
    return json.dumps(config, sort_keys=True)


@document
@dataclass(frozen=True, kw_only=True)
class Tuned(BaseScheduler):
    """A base method's table with tuned x̂_0 history weights on a tuned grid, with tuned
    weights of the earlier samples and its model called at tuned times where those were
    tuned (module docstring, eq. (1)-(4)); made by
    :func:`diffsched.tune` (``tune="coefficients"`` or ``"both"``), saved and loaded by
    :func:`diffsched.save_tuned` / :func:`diffsched.load_tuned`. It runs only the number of
    steps it was tuned for.

    Any other attribute (``alphas_cumprod``, ``prediction_type``, ...) is the base's.
    Not in diffusers (ours: its pipelines load it through ``DiffusersScheduler``).
    """

    DIFFUSERS_CLASS = None
    FAMILY = families.MORE

    base: Any = option(  # noqa: RUF009
        None,
        "the base method: a scheduler, its config dict or that dict's JSON (kept as JSON); "
        "None is DPMSolverMultistep()",
        nullable=True,
    )
    tuned_steps: int = option(
        0,
        "the number of steps the table was tuned for (0: none, the base as it is)",
        low=0,
        high=ops.MAX_CALLS,
    )
    grid_sigmas: tuple[float, ...] | None = option(
        None, "the tuned grid, as the base's init(sigmas=) (tuned_steps + 1 levels; N for the "
        "flow-matching classes)",
        nullable=True,
    )  # fmt: skip
    grid_timesteps: tuple[float, ...] | None = option(
        None, "the tuned grid, as the base's init(timesteps=) (tuned_steps values)",
        nullable=True,
    )  # fmt: skip
    weights: tuple[float, ...] | None = option(
        None,
        "the corrections δ of eq. (1), row by row: one row per model call of the base's "
        "tuned_steps-step loop, L + 1 weights of the x̂_0 of this call and of the L calls before",
        nullable=True,
    )
    sample_weights: tuple[float, ...] | None = option(
        None, "the weights v of eq. (4) on the earlier native samples, row by row: one row "
        "per model call of the base's tuned_steps-step loop, L + 1 weights of the sample of "
        "this call and of the L calls before",
        nullable=True,
    )  # fmt: skip
    model_timesteps: tuple[float, ...] | None = option(
        None, "the timestep each model call of the base's tuned_steps-step loop passes the "
        "model, eq. (3) (one per call, within the trained range); None: the base's",
        nullable=True,
    )  # fmt: skip
    grid_mu: float | None = option(
        None, "the dynamic shift's μ the grid was tuned for (a flow base with "
        "use_dynamic_shifting=True), passed to the base's init(mu=)",
        nullable=True,
    )  # fmt: skip

    def _check(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "base", None if self.base is None else base_json(self.base))
        if self.base is not None and json.loads(self.base)["_class_name"] == owner:
            raise ValueError("Tuned option base must be another method, got a Tuned config")
        for name in ("grid_sigmas", "grid_timesteps", "weights", "sample_weights",
                     "model_timesteps"):  # fmt: skip
            value = _floats_or_none(owner, name, getattr(self, name))
            object.__setattr__(self, name, value)
            if value is not None and self.tuned_steps == 0:
                raise ValueError(f"{owner} option {name} needs tuned_steps > 0, got tuned_steps=0")
        n = self.tuned_steps
        if self.grid_mu is not None:
            mu = self.grid_mu
            if isinstance(mu, bool) or not isinstance(mu, int | float) or not np.isfinite(mu):
                raise TypeError(f"{owner} option grid_mu expects a finite number, got: {mu!r}")
            object.__setattr__(self, "grid_mu", float(mu))
            if self.grid_sigmas is None:
                raise ValueError(f"{owner} option grid_mu needs grid_sigmas (a tuned flow grid)")
        if self.grid_sigmas is not None and self.grid_timesteps is not None:
            raise ValueError(f"{owner} takes grid_sigmas or grid_timesteps, not both")
        if self.grid_sigmas is not None and len(self.grid_sigmas) not in (n, n + 1):
            raise ValueError(
                f"{owner} option grid_sigmas must have tuned_steps + 1 = {n + 1} levels (N for "
                f"the flow-matching classes), got: {len(self.grid_sigmas)}"
            )
        if self.grid_timesteps is not None and len(self.grid_timesteps) != n:
            raise ValueError(
                f"{owner} option grid_timesteps must have tuned_steps = {n} values, "
                f"got: {len(self.grid_timesteps)}"
            )
        base = self._make_base()  # a bad base config: its own error, now
        if self.base is not None:  # canonical: the config the base runs (equal bases, equal
            object.__setattr__(self, "base", base_json(base))  # tables; no stray keys kept)
        table = None
        if self.grid_options:  # a grid of the base's, for n steps: its own checks, now
            name = "grid_sigmas" if self.grid_sigmas is not None else "grid_timesteps"
            try:
                check_custom_grids(type(base).__name__, self.grid_options)
                count = base.custom_steps(self.grid_options)
                if count != n:
                    raise ValueError(f"it gives {count} steps, not tuned_steps={n}")
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    table = base.tableau(n, **self.grid_options)
            except (TypeError, ValueError, OverflowError) as err:
                raise ValueError(
                    f"{owner} option {name} is no {n}-step grid of {type(base).__name__}: {err}"
                ) from None
        if self.grid_mu is not None and not getattr(base, "use_dynamic_shifting", False):
            raise ValueError(
                f"{owner} option grid_mu needs a base with use_dynamic_shifting=True, got "
                f"{type(base).__name__} without"
            )
        calls = n
        tables = ("weights", "sample_weights", "model_timesteps")
        if any(getattr(self, name) is not None for name in tables):
            for name, what in (("weights", "one row"), ("sample_weights", "one row"),
                               ("model_timesteps", "one timestep")):  # fmt: skip
                value = getattr(self, name)
                if value is not None and len(value) < n:  # a call per step at least: refused
                    raise ValueError(  # before the table is built
                        f"{owner} option {name} must have {what} per model call of the base's "
                        f"{n}-step loop (at least {n} {what.split()[1]}s), got {len(value)} numbers"
                    )
            if table is None:
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    table = base.tableau(n)  # (refused at init)
            calls = table.num_calls
        if self.model_timesteps is not None:
            times = np.asarray(self.model_timesteps)
            if len(times) != calls:
                raise ValueError(
                    f"{owner} option model_timesteps must have one timestep per model call of "
                    f"the base's {n}-step loop ({calls}), got {len(times)}"
                )
            span = model_time_range(base)
            if span is not None and not (span[0] <= times.min() and times.max() <= span[1]):
                raise ValueError(
                    f"{owner} option model_timesteps must lie in the base's trained range "
                    f"[{span[0]:g}, {span[1]:g}], got {times.min():g} to {times.max():g}"
                )
        for name, what in (("weights", "an x̂_0"), ("sample_weights", "a sample")):
            value = getattr(self, name)  # one row per model call (two per step for Heun)
            if value is None:
                continue
            if len(value) % calls:
                raise ValueError(
                    f"{owner} option {name} must have one row of equal length per model call "
                    f"of the base's {n}-step loop ({calls} rows), got {len(value)} numbers"
                )
            w = np.asarray(value, dtype=np.float64).reshape(calls, -1)
            if np.abs(w).max() > MAX_WEIGHT:
                raise ValueError(
                    f"{owner} option {name} must lie within ±{MAX_WEIGHT:g} (corrections of a "
                    f"solver's weights, which are of order 1), got {np.abs(w).max():.3g}"
                )
            early = np.triu(np.ones(w.shape, bool), 1)  # lag j > call n
            if np.any(w[early] != 0):
                raise ValueError(
                    f"{owner} option {name} reads {what} before the first call (its "
                    f"{len(value)} numbers as {calls} rows of {w.shape[1]}, one per model call "
                    f"of the base's {n}-step loop: row k weighs lags 0 to k only)"
                )
        object.__setattr__(self, "_calls", calls)
        object.__setattr__(self, "_base_instance", base)  # plain attributes: compilers trace
        object.__setattr__(self, "_base_processes", bool(base.processes_x0))  # them directly
        object.__setattr__(self, "_base_deterministic", bool(base.deterministic))

    # -- the base -------------------------------------------------------------------------

    @property
    def base_scheduler(self) -> BaseScheduler:
        """The base method (a scheduler instance)."""
        return self._base_instance

    def _make_base(self) -> BaseScheduler:
        if self.base is None:
            from .dpmsolver import DPMSolverMultistep

            return DPMSolverMultistep()
        return _base_from_json(self.base)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("base", "base_scheduler", "weights",
                                            "sample_weights"):  # fmt: skip
            raise AttributeError(name)
        return getattr(self.base_scheduler, name)

    @property
    def grid_options(self) -> dict[str, list]:
        """The tuned grid as the base's init keyword arguments ({} if none)."""
        if self.grid_sigmas is not None:
            mu = {} if self.grid_mu is None else {"mu": self.grid_mu}
            return {"sigmas": list(self.grid_sigmas), **mu}
        if self.grid_timesteps is not None:
            ts = [int(t) if float(t).is_integer() else t for t in self.grid_timesteps]
            return {"timesteps": ts}
        return {}

    def weight_table(self) -> np.ndarray:
        """The corrections δ of eq. (1): (model calls, L + 1); zeros(N, 1) if none."""
        return self._table(self.weights)

    def sample_weight_table(self) -> np.ndarray:
        """The sample weights v of eq. (4): (model calls, L + 1); zeros(N, 1) if none."""
        return self._table(self.sample_weights)

    def _table(self, value: tuple[float, ...] | None) -> np.ndarray:
        if value is None:
            return np.zeros((max(self._calls, 1), 1))
        return np.asarray(value, dtype=np.float64).reshape(self._calls, -1)

    @property
    def deterministic(self) -> bool:
        return self._base_deterministic

    @property
    def processes_x0(self) -> bool:
        return self._base_processes

    def _process(self, x0: Any, owned: bool) -> Any:
        return self.base_scheduler._process(x0, owned)

    # -- the table ------------------------------------------------------------------------

    def _options(self, num_steps: int | None, init_options: dict) -> dict:
        if not self.tuned_steps:
            return init_options
        if num_steps != self.tuned_steps:
            raise ValueError(
                f"Tuned was tuned for num_steps={self.tuned_steps}, got num_steps={num_steps}"
            )
        if init_options.get("strength") is not None:
            raise ValueError(
                "Tuned runs the whole loop it was tuned for; init(strength=) (image-to-image) "
                "starts it midway, where its tuned weights and grid do not apply: run the base "
                "(tuned.base_scheduler) for image-to-image"
            )
        clash = sorted(set(init_options) & {"sigmas", "timesteps", "mu"})
        if clash and self.grid_options:
            raise ValueError(f"Tuned has its tuned grid; init got {clash} as well")
        tables = [name for name in ("weights", "sample_weights", "model_timesteps")
                  if getattr(self, name) is not None]  # fmt: skip
        grid = sorted(set(clash) - {"mu"})  # (a dynamic shift's μ: the base asks for it)
        if grid and tables:  # fitted on one grid, they are no correction of another's table
            raise ValueError(
                f"Tuned's {', '.join(tables)} were tuned on the base's own "
                f"{self.tuned_steps}-step grid; init got {grid}, another grid"
            )
        return {**self.grid_options, **init_options}

    def tableau(self, num_steps: int, **init_options: Any) -> Tableau:
        """The base's table on the tuned grid, plus eq. (1)'s corrections, its model
        called at eq. (3)'s times."""
        base = self.base_scheduler
        tab = base.tableau(num_steps, **self._options(num_steps, init_options))
        if self.weights is None and self.sample_weights is None and self.model_timesteps is None:
            return tab
        update = {term: tab.column(term) for term in tab.update}
        for name, operand in (("weights", X0), ("sample_weights", SAMPLE)):
            if getattr(self, name) is None:
                continue
            w = self._table(getattr(self, name))
            if tab.num_calls != len(w):
                raise ValueError(
                    f"Tuned {name} have {len(w)} rows; the base's {num_steps}-step loop makes "
                    f"{tab.num_calls} model calls"
                )
            for lag in range(w.shape[1]):
                if np.any(w[:, lag] != 0):  # eq. (1) and eq. (4)
                    update[(operand, lag)] = tab.column((operand, lag)) + w[:, lag]
        timesteps = tab.timesteps
        if self.model_timesteps is not None:
            if tab.num_calls != len(self.model_timesteps):
                raise ValueError(
                    f"Tuned model_timesteps has {len(self.model_timesteps)} entries; the "
                    f"base's {num_steps}-step loop makes {tab.num_calls} model calls"
                )
            timesteps = np.asarray(self.model_timesteps, dtype=np.float64)
        return Tableau(
            timesteps=timesteps,
            x0_sample=tab.x0_sample,
            x0_output=tab.x0_output,
            update=update,
            noise=tab.noise,
            input_scale=tab.input_scale,
            start=tab.start,
            init_noise_sigma=tab.init_noise_sigma,
        )

    def native_levels(self, tableau: Tableau, num_steps: int,
                      init_options: dict) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
        """The base's: the corrections leave each call's x̂_0 conversion as it is."""
        options = self._options(num_steps, init_options)
        base = self.base_scheduler
        return base.native_levels(base.tableau(num_steps, **options), num_steps, options)

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        return self.base_scheduler.noise_levels(num_steps, **self._options(num_steps, init_options))
