"""Helios' staged samplers (diffusers' ``HeliosScheduler`` and ``HeliosDMDScheduler``): a
rectified-flow model sampled in stages, Euler's method or UniPC (Zhao et al. 2023) within
each, or the distilled model's re-noising steps (``HeliosDMD``).

The sample is the rectified-flow interpolation x_σ = (1 - σ) x_0 + σ ε (Liu, Gong & Liu
2022) and the model predicts v = ε - x_0 (prediction type ``flow``), x̂_0 = x_σ - σ v̂.

**Stages.** Helios generates coarse to fine: the training time range is cut into
``stages`` pieces at ``stage_range``; a pipeline samples stage k with its own loop (and
upsamples and re-noises between stages, which is the pipeline's business). With the
training levels σ_j (j = 0..T-1) of 1 - linspace(1, 1/T, T + 1), shifted by ``shift``
(Esser et al. 2024, eq. 23) and descending, stage k runs from σ_{⌊r_k T⌋} to σ_{⌊r_{k+1} T⌋}
(0 for the last), its start raised for k > 0 to 1 - c, c = o / (sqrt(1 + 1/γ) (1 - o) + o),
o = 1 - σ_start (the level the upsampled, re-noised sample has). The stages' lengths in σ,
normalised, cut [0, 1) again into the stages' time ranges; stage k's timesteps are
linspace(t_max, t_min, N) within its range, while its levels are always
linspace(0.999, 0.999/T, N) and the final 0 (optionally shifted by the dynamic shift
mu / (mu + 1/σ - 1), the timesteps then following the levels within the stage's range).
With ``stages=1`` the levels are linspace(1, 1/T, N + 1)[:N] in float32, moved by
e^s / (e^s + 1/σ - 1) for a shift s (diffusers' time shift with μ = s), t = σ T.

**The step.** ``scheduler_type="euler"``: x' = x + (σ' - σ) v̂. ``"unipc"``: UniPC's
predictor-corrector on the flow levels (α = 1 - σ), the table of :class:`UniPC`, with its
warm-up from the stage's first call (diffusers' class restarts its history at every
``set_timesteps``, that is at every stage); the final level σ = 0 enters as σ_t = 10⁻⁸,
diffusers' clamp, so that the last step has the order ``lower_order_final`` gives it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import predictions
from ..core.engine import OUTPUT, SAMPLE, X0, Tableau, Update
from ..core.options import option, with_default
from ..core.scheduler import MAX_TRAIN_STEPS, BaseScheduler, document, tuple_of_floats
from ..schedules import shifts, solver_grid
from .unipc import UniPC

SCHEDULER_TYPES = ("unipc", "euler")
FLOOR = 1e-8  # diffusers' clamp of the flow σ_t in its UniPC step


@dataclass(frozen=True, kw_only=True)
class _HeliosStages(BaseScheduler):
    """The stages' options and grid, shared by diffusers' two Helios classes."""

    PREDICTION_TYPES = (predictions.FLOW,)
    TRAINING_TIMESTEPS = False

    num_train_steps: int = option(
        1000, "T: the number of training levels", "num_train_timesteps",
        low=1, high=MAX_TRAIN_STEPS,
    )  # fmt: skip
    shift: float = option(
        1.0, "the static shift s of the training levels, σ' = s σ / (1 + (s - 1) σ) (Esser "
        "et al. 2024, eq. 23); with stages=1, the levels' time shift e^s / (e^s + 1/σ - 1)",
        "shift", low=0.0, low_open=True,
    )  # fmt: skip
    stages: int = option(3, "the number of stages (coarse to fine)", "stages", low=1)
    stage_range: tuple[float, ...] = option(
        (0.0, 1 / 3, 2 / 3, 1.0), "the stages' bounds r_0 < ... < r_stages in the training "
        "range [0, 1] (the first stages + 1 values are read)", "stage_range",
        to_diffusers=list, from_diffusers=tuple_of_floats,
    )  # fmt: skip
    gamma: float = option(
        1 / 3, "γ of the raised start of stages after the first (the re-noising after an "
        "upsampling)", "gamma", low=0.0, low_open=True,
    )  # fmt: skip
    use_dynamic_shifting: bool = option(
        False, "shift the levels by init(..., mu=μ): μ / (μ + 1/σ - 1) (linear) or "
        "e^μ / (e^μ + 1/σ - 1) (exponential)", "use_dynamic_shifting",
    )  # fmt: skip
    time_shift_type: str = option(
        "exponential", "the dynamic shift: exponential or linear", "time_shift_type",
        choices=("exponential", "linear"),
    )  # fmt: skip
    prediction_type: str = option(
        predictions.FLOW, "what the model predicts: flow, v = ε - x_0 (diffusers' "
        "flow_prediction; the only choice here)", "prediction_type",
        choices=(predictions.FLOW,), diffusers_values=predictions.DIFFUSERS_PREDICTION_TYPES,
    )  # fmt: skip
    use_flow_sigmas: bool = option(
        True, "rectified-flow levels (α = 1 - σ); must be True", "use_flow_sigmas"
    )

    def _check(self) -> None:
        try:
            r = np.asarray(tuple_of_floats(self.stage_range))
        except TypeError as err:
            raise TypeError(f"{type(self).__name__} option stage_range: {err}") from None
        object.__setattr__(self, "stage_range", tuple(r.tolist()))
        if len(r) < self.stages + 1 or np.any(np.diff(r) <= 0) or r[0] < 0 or r[-1] > 1:
            raise ValueError(
                f"{type(self).__name__} option stage_range must hold at least stages + 1 = "
                f"{self.stages + 1} increasing values in [0, 1] (the first stages + 1 are "
                f"read), got: {list(self.stage_range)}"
            )
        if not self.use_flow_sigmas:
            raise ValueError(
                f"{type(self).__name__} option 'use_flow_sigmas'=False is not supported; it must "
                "be True"
            )
        if self.use_dynamic_shifting and self.shift != 1.0:
            raise ValueError(
                f"{type(self).__name__}: use_dynamic_shifting needs shift=1.0 (as diffusers)"
            )

    # -- the grid --------------------------------------------------------------------------

    def _training_levels(self) -> np.ndarray:
        """The T training levels, shifted and descending (diffusers' ``init_sigmas``)."""
        T, s = self.num_train_steps, self.shift
        sig = 1.0 - np.linspace(1.0, 1.0 / T, T + 1)
        return np.flip(s * sig / (1 + (s - 1) * sig))[:-1].copy()

    def stage_time_ranges(self) -> list[tuple[float, float]]:
        """(t_max, t_min) of each stage (the module docstring)."""
        T = self.num_train_steps
        sig = self._training_levels()
        ts = sig * T
        starts, distance = [], []
        for k in range(self.stages):
            lo = max(int(self.stage_range[k] * T), 0)
            hi = min(int(self.stage_range[k + 1] * T), T)
            start, end = float(sig[lo]), float(sig[hi]) if hi < T else 0.0
            if k != 0:  # the raised start of a re-noised stage
                o = 1.0 - start
                start = 1.0 - o / (math.sqrt(1 + 1 / self.gamma) * (1 - o) + o)
            starts.append(start)
            distance.append(start - end)
        total = sum(distance)
        if not total > 0:
            raise ValueError(
                f"Helios: the stages of stage_range={list(self.stage_range)} span no levels at "
                f"num_train_steps={T}"
            )
        out = []
        for k in range(self.stages):
            r0 = 0.0 if k == 0 else sum(distance[:k]) / total
            r1 = 0.9999999999999999 if k == self.stages - 1 else sum(distance[: k + 1]) / total
            t_max = min(float(ts[int(r0 * T)]), 999.0)
            t_min = float(ts[min(int(r1 * T), T - 1)])
            # diffusers' per-stage table linspace(t_max, t_min, T + 1)[:T]: its last entry
            out.append((t_max, float(np.linspace(t_max, t_min, T + 1)[T - 1])))
        return out

    def grid(
        self, num_steps: int, stage_index: Any = None, mu: Any = None, *, trim: bool = False
    ) -> solver_grid.SolverGrid:
        """The stage's timesteps and its levels with the final 0, as diffusers'
        ``set_timesteps(num_steps, stage_index, mu=)``; ``trim``: the DMD class's, over
        ``num_steps`` points less the last timestep and the last level before 0."""
        T = self.num_train_steps
        owner = type(self).__name__
        mu = shifts.checked_mu(mu, dynamic=self.use_dynamic_shifting, who=owner, required=True)
        if self.stages == 1:
            if stage_index not in (None, 0):
                raise ValueError(f"{owner} with stages=1 has stage 0 only, got: {stage_index!r}")
            sig = np.linspace(1.0, 1.0 / T, num_steps + 1)[:-1].astype(np.float32)
            if self.shift != 1.0:
                sig = self._time_shift(self.shift, sig).astype(np.float32)
            ts = (sig * np.float32(T)).astype(np.float64)
            levels = np.append(sig.astype(np.float64), 0.0)
            t_range = None
        else:
            if stage_index is None:
                stage_index = 0  # the first stage (diffusers needs it said)
            if isinstance(stage_index, bool) or not isinstance(stage_index, int | np.integer):
                raise TypeError(
                    f"{owner} init option stage_index must be an integer in "
                    f"[0, {self.stages - 1}], got: {stage_index!r}"
                )
            if not 0 <= stage_index < self.stages:
                raise ValueError(
                    f"stage_index must lie in [0, {self.stages - 1}], got: {stage_index}"
                )
            t_range = self.stage_time_ranges()[stage_index]
            ts = np.linspace(*t_range, num_steps)
            levels = np.append(np.linspace(0.999, 0.999 / T, num_steps), 0.0)
        if trim:  # the DMD grid: one timestep and the level before 0 fewer
            ts, levels = ts[:-1], np.append(levels[:-2], levels[-1])
        if self.use_dynamic_shifting:
            levels = self._time_shift(mu, levels)
            if t_range is None:
                ts = levels[:-1] * T
            else:
                ts = t_range[1] + levels[:-1] * (t_range[0] - t_range[1])
        return solver_grid.SolverGrid(ts, levels, True)

    def _time_shift(self, mu: float, sig: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            tail = 1.0 / sig - 1.0  # ∞ at σ = 0: the level stays 0
        if self.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + tail)
        return mu / (mu + tail)


@document
@dataclass(frozen=True, kw_only=True)
class Helios(_HeliosStages):
    """Helios' staged rectified-flow sampler: UniPC (default) or Euler within each stage.

    Order ``solver_order`` with ``scheduler_type="unipc"`` (2 by default, lower in the
    warm-up and at the end), 1 with ``"euler"``; one model call per step; deterministic.
    diffusers: ``HeliosScheduler``. Not to be confused with ``UniPC(use_flow_sigmas=True)``,
    the same solver on one grid of shifted levels called at t = σ T: here each stage has its
    own time range while its levels span (0, 0.999], and nothing is shifted by default.

    ``init(..., stage_index=k)``: the loop of stage k (0, the first, by default), as
    diffusers' ``set_timesteps(stage_index=k)`` (which needs it said when ``stages > 1``);
    ``init(..., mu=μ)`` the dynamic shift (``use_dynamic_shifting``). diffusers' DMD
    variant (``scheduler_type="dmd"``) is the class ``HeliosDMDScheduler``, not this one
    (its ``step`` refuses it).
    """

    DIFFUSERS_CLASS = "HeliosScheduler"
    ORDER = 3

    scheduler_type: str = option(
        "unipc", "the step within a stage: unipc (Zhao et al. 2023, predictor-corrector) or "
        "euler", "scheduler_type", choices=SCHEDULER_TYPES,
    )  # fmt: skip
    solver_order: int = with_default(UniPC, "solver_order", 2)
    predict_x0: bool = with_default(UniPC, "predict_x0", True)
    solver_type: str = with_default(UniPC, "solver_type", "bh2")
    lower_order_final: bool = with_default(UniPC, "lower_order_final", True)
    disable_corrector: tuple[int, ...] = with_default(UniPC, "disable_corrector", ())
    thresholding: bool = option(
        False, "dynamic thresholding of x̂_0: not supported here, must be False", "thresholding"
    )
    solver_p: None = with_default(UniPC, "solver_p", None)

    def _check(self) -> None:
        super()._check()
        for name, ok, want in (
            ("thresholding", not self.thresholding, "False"),
            ("solver_p", self.solver_p is None, "None"),
        ):
            if not ok:
                raise ValueError(
                    f"Helios option {name!r}={getattr(self, name)!r} is not supported; it must be "
                    f"{want}"
                )
        if not self.predict_x0 and self.scheduler_type == "unipc":
            raise ValueError(
                "Helios option 'predict_x0'=False: the flow prediction has no noise form here "
                "(diffusers' conversion refuses it too); use predict_x0=True"
            )

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        """(σ at the first model call, σ of the final sample): flow levels."""
        return float(self.grid(num_steps, **init_options).sigmas[0]), 0.0

    # -- the table -------------------------------------------------------------------------

    def tableau(self, num_steps: int, stage_index: Any = None, mu: Any = None) -> Tableau:
        grid = self.grid(num_steps, stage_index, mu)
        s = grid.sigmas
        start = (1.0 - float(s[0]), float(s[0]))
        if self.scheduler_type == "euler":  # x' = x + (σ' - σ) v̂
            n = len(grid.timesteps)
            return Tableau(
                timesteps=grid.timesteps,
                x0_sample=np.ones(n),
                x0_output=-s[:n],
                update={(SAMPLE, 0): np.ones(n), (OUTPUT, 0): s[1:] - s[:-1]},
                start=start,
            )
        unipc = UniPC(
            solver_order=self.solver_order, predict_x0=self.predict_x0,
            solver_type=self.solver_type, lower_order_final=self.lower_order_final,
            disable_corrector=self.disable_corrector, use_flow_sigmas=True,
            prediction_type=predictions.FLOW,
        )  # fmt: skip
        # diffusers clamps σ_t at 1e-8 (α stays 1 - σ = 1): the last step lands at σ_t = 1e-8,
        # a finite λ, at the order lower_order_final gives it (not the first-order limit)
        levels = grid.sigmas.copy()
        levels[levels == 0] = FLOOR
        tab = unipc.table(grid._replace(sigmas=levels))
        return Tableau(
            timesteps=tab.timesteps, x0_sample=tab.x0_sample, x0_output=tab.x0_output,
            update=tab.update, start=start,
        )  # fmt: skip


@document
@dataclass(frozen=True, kw_only=True)
class HeliosDMD(_HeliosStages):
    """Helios' distilled (DMD) sampler: each call's x̂_0 re-noised with the stage's start.

    First order; one model call per step; deterministic: the noise of the re-noising is
    the stage's first sample, not a fresh draw. diffusers: ``HeliosDMDScheduler`` (the
    distilled Helios pipelines). Not to be confused with ``FlowMatchLCM``, which re-noises
    x̂_0 with fresh noise at every call.

    At call i (of the stage's grid, the module docstring's with one timestep and the level
    before 0 dropped): x̂_0 = x - σ_i v̂, then x' = (1 - σ') x̂_0 + σ' x_start, σ' the
    next call's level, x_start the sample of the stage's first call (what the Helios
    pipeline passes as ``dmd_noisy_tensor``); the last call returns x̂_0. As diffusers, each
    level is looked up at the timestep nearest to the call's timestep truncated to an
    integer. ``init(..., stage_index=k, mu=μ, is_amplify_first_chunk=b)`` as diffusers'
    ``set_timesteps`` (``is_amplify_first_chunk``: 2 N + 1 grid points instead of N + 1).
    """

    DIFFUSERS_CLASS = "HeliosDMDScheduler"

    time_shift_type: str = option(
        "linear", "the dynamic shift: linear (diffusers' default for this class) or "
        "exponential", "time_shift_type", choices=("exponential", "linear"),
    )  # fmt: skip

    def noise_levels(self, num_steps: int, **init_options: Any) -> tuple[float, float]:
        """(σ at the first model call, σ of the final sample): flow levels."""
        return float(self.tableau(num_steps, **init_options).start[1]), 0.0

    def tableau(
        self,
        num_steps: int,
        stage_index: Any = None,
        mu: Any = None,
        is_amplify_first_chunk: bool = False,
    ) -> Tableau:
        if not isinstance(is_amplify_first_chunk, bool):
            raise TypeError(
                f"is_amplify_first_chunk must be a bool, got: {is_amplify_first_chunk!r}"
            )
        count = 2 * num_steps + 1 if is_amplify_first_chunk else num_steps + 1
        grid = self.grid(count, stage_index, mu, trim=True)
        ts, levels = np.asarray(grid.timesteps, np.float64), grid.sigmas
        n = len(ts)

        def level_at(t: float) -> float:  # diffusers: the timestep cast to an integer
            return float(levels[int(np.argmin(np.abs(ts - math.trunc(t))))])

        own = np.array([level_at(t) for t in ts])
        update = Update(n)
        for i in range(n - 1):
            target = level_at(ts[i + 1])
            update.add(X0, 0, i, 1.0 - target)  # x' = (1 - σ') x̂_0 + σ' x_start
            update.add(SAMPLE, i, i, target)
        update.add(X0, 0, n - 1, 1.0)
        return Tableau(
            timesteps=ts,
            x0_sample=np.ones(n),
            x0_output=-own,
            update=update,
            start=(1.0 - own[0], own[0]),
        )
