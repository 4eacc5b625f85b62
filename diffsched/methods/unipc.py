"""UniPC: Zhao, Bai, Rao, Zhou & Lu 2023, "UniPC: A Unified Predictor-Corrector Framework
for Fast Sampling of Diffusion Models", as diffusers' ``UniPCMultistepScheduler`` runs it.

The sample is x_t = α_t x_0 + σ_t ε (variance preserving, α = 1/sqrt(σ² + 1) and σ_t = σ α
for the VE level σ of the grid, or rectified flow, α = 1 - σ and σ_t = σ), and the solver
steps in the half-log-SNR λ = log(α_t / σ_t) (Lu et al. 2022, "DPM-Solver", sec. 3.1). With
the data prediction m = x̂_0 (``predict_x0``) the exact solution from s to t = s + h in λ is

    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x̂_0(λ) dλ,                          (1)

and with the noise prediction m = ε̂

    x_t = (α_t/α_s) x_s - α_t ∫_{λ_s}^{λ_t} e^{-λ} ε̂(λ) dλ.                            (2)

Write ĥ = -h for (1) and ĥ = h for (2), and (ℓ, s_x) = (α_t, σ_t/σ_s) for (1),
(σ_t, α_t/α_s) for (2). The φ functions are φ_0(z) = e^z, φ_{k+1}(z) = (φ_k(z) - 1/k!)/z
(φ_1(z) = (e^z - 1)/z; :mod:`diffsched.methods._dpm_solver_coefficients`), and B(h), the
paper's free function of the step, is ĥ (``bh1``) or e^ĥ - 1 (``bh2``).

**UniP-p**, the predictor from s_0 = the current call, with the last p model outputs
m_0 (this call), m_1, ..., m_{p-1} (earlier calls at λ_{s_k}):

    r_k = (λ_{s_k} - λ_{s_0}) / h,   D_k = (m_k - m_0) / r_k,   k = 1..p-1,            (3)
    x̃_t = s_x x_{s_0} - ℓ (e^ĥ - 1) m_0 - ℓ B(h) Σ_{k<p} ρ^p_k D_k,                   (4)

where ρ^p solves the (p-1)×(p-1) system Σ_k ρ^p_k r_k^{i-1} = g_i, i = 1..p-1, with

    g_i = ĥ φ_{i+1}(ĥ) i! / B(h)                                                       (5)

except that p = 2 takes ρ^p = 1/2 (as the authors' code and diffusers do).

**UniC-p**, the corrector: once the model has been called at the predicted x̃_t, giving
m_t, the same step is redone with m_t as one more point (r_p = 1, D_p = m_t - m_0):

    x^c_t = s_x x_{s_0} - ℓ (e^ĥ - 1) m_0 - ℓ B(h) (Σ_{k<p} ρ^c_k D_k + ρ^c_p D_p),   (6)

ρ^c solving the full p×p system Σ_k ρ^c_k r_k^{i-1} = g_i, i = 1..p (ρ^c = 1/2 for p = 1).
Since (4) and (6) share everything but the ρ's,

    x^c_t = x̃_t + ℓ B(h) (Σ_{k<p} (ρ^p_k - ρ^c_k) D_k - ρ^c_p (m_t - m_0)),          (7)

a fixed linear combination of the model call's sample and of the last p + 1 model
outputs: the table holds it (the kit's :func:`~diffsched.methods.kit.exponential_multistep`,
with ρ from :func:`~diffsched.methods.kit.unipc_rhos`, shared with ComfyUI's ``uni_pc``).
The model output m_t is formed from the uncorrected x̃_t; the
corrected x^c_t starts the next predictor step and is never a model input (the corrector
costs no model call). The order rises from 1 by one per call (the multistep warm-up) and,
with ``lower_order_final``, falls to N - n at call n.

**The step to σ = 0** (``final_sigmas_type="zero"``) has λ_t = +∞ and h = ∞. With p = 1,
(4) has a limit (σ_t/σ_s → 0 and α_t (e^{-h} - 1) → -α_t in (1); σ_t (e^h - 1) → α_t σ_s/α_s
in (2)), used here:

    x_t = x̂_0 (= m_0)  (data form),     x_t = (α_t/α_s) (x^c_s - σ_s ε̂_s)  (noise form),  (8)

x^c_s the corrected sample, ε̂_s formed from the uncorrected one. diffusers evaluates (4)
at h = ∞ and returns NaN for ``bh1`` (B(h) ρ D = ∞ · 0 with no D) and for the noise form
(σ_t (e^h - 1) = 0 · ∞), and for p >= 2 whatever the form (r_k = 0). No finite limit
exists for p >= 2 (D_k grows like h), so this last step is first order always, as
``lower_order_final`` makes it anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families, predictions
from ..core.engine import Tableau
from ..core.options import option, with_default
from ..core.scheduler import Scheduler, SigmaGrid, SolverOptions, Spacing, ZeroTerminalSNR, document
from ..schedules import discrete, shifts, solver_grid
from ._dpm_solver_coefficients import phi
from ._img2img import first_call
from .dpmsolver import (
    SolverGridLevels,
    Thresholding,
    custom_timesteps,
    flow_prediction_type_option,
    restarted_on_grid,
)
from .kit import UniPCRhos, data_estimate, exponential_multistep, noise_estimate, unipc_rhos

SOLVER_TYPES = ("bh1", "bh2")


def unipc_weights(r: np.ndarray, hh: float, solver_type: str) -> tuple[float, list, list]:
    """(B(h), ρ^p, ρ^c) of a UniPC step of order p = len(r) + 1 (eq. 3-6).

    ``r`` holds r_1..r_{p-1} (eq. 3); ``hh`` is ĥ; ρ^p has p - 1 entries, ρ^c has p.
    """
    h_phis = [hh * phi(i + 1, hh) for i in range(1, len(r) + 2)]  # ĥ φ_{i+1}(ĥ) of eq. 5
    rhos = unipc_rhos(np.asarray(r, dtype=np.float64), hh, solver_type, h_phis)
    return rhos.b_h, list(rhos.rho_p), list(rhos.rho_c)


@document
@dataclass(frozen=True, kw_only=True)
class UniPC(Thresholding, SolverGridLevels, ZeroTerminalSNR, SigmaGrid, Spacing, Scheduler):
    """UniPC, the unified predictor-corrector (Zhao et al. 2023, Alg. 2 with UniC).

    Order ``solver_order`` for the predictor UniP, one more after the corrector UniC (1, 2,
    ... during the warm-up); one model call per step (the corrector reuses the next call's
    output); deterministic. diffusers: ``UniPCMultistepScheduler``. Not to be confused
    with DPM-Solver++ multistep (``DPMSolverMultistep``), whose multistep predictor this
    generalizes (UniP-2 with ``bh2`` is DPM-Solver++(2M)) but which has no corrector.

    ``init(..., mu=μ)``: the dynamic shift of flow grids (``use_dynamic_shifting``).
    ``init(..., sigmas=[...])`` (flow grids): N + 1 levels, the first N as diffusers'
    ``set_timesteps(sigmas=...)`` takes them (before the shift; they are shifted), the last
    the final level as is (0: the last step lands on x̂_0; final_sigmas_type then unused).
    ``init(..., timesteps=[...])``: custom integer timesteps (descending), as
    ``DPMSolverMultistep`` takes them (diffusers' UniPC has no such argument; a tuned grid
    from :func:`diffsched.tune` is one). ``init(..., strength=s)``: image-to-image over the
    last floor(N s) calls of the N-step grid, the warm-up restarted there (no corrector at
    the first call run, orders rising from 1), as diffusers runs it after a pipeline's
    ``set_begin_index``.
    """

    DIFFUSERS_CLASS = "UniPCMultistepScheduler"
    FAMILY = families.SOLVERS
    CLI_NAME = "unipc"
    PREDICTION_TYPES = predictions.FLOW_PREDICTION_TYPES
    ORDER = 3

    prediction_type: str = flow_prediction_type_option()
    solver_order: int = option(
        2, "p, the order of the predictor UniP-p (the corrector adds one): 1, 2, 3, ...",
        "solver_order", low=1,
    )  # fmt: skip
    predict_x0: bool = option(
        True, "solve the data-prediction form (1) (UniPC with x̂_0, B(h) variants) instead of "
        "the noise-prediction form (2)", "predict_x0",
    )  # fmt: skip
    solver_type: str = option(
        "bh2", "B(h) of eq. 5-6: bh1 (B = ĥ; few steps, unconditional) or bh2 (B = e^ĥ - 1)",
        "solver_type", choices=SOLVER_TYPES,
    )  # fmt: skip
    lower_order_final: bool = option(
        True, "lower the order to N - n at call n, so the last step is first order",
        "lower_order_final",
    )  # fmt: skip
    disable_corrector: tuple[int, ...] = option(
        (), "steps k whose predicted sample is not corrected (at call k + 1), against the "
        "misalignment of UniC with large guidance scales", "disable_corrector",
        to_diffusers=list, from_diffusers=lambda v: _step_indices(v),
    )  # fmt: skip
    solver_p: None = option(
        None, "diffusers' other scheduler as the predictor (solver_p + UniC): not supported, "
        "must be None", "solver_p", nullable=True,
    )  # fmt: skip
    use_flow_sigmas: bool = with_default(SolverOptions, "use_flow_sigmas", False)
    flow_shift: float = with_default(SolverOptions, "flow_shift", 1.0)
    timestep_spacing: str = with_default(Spacing, "timestep_spacing", "linspace")
    final_sigmas_type: str = with_default(SolverOptions, "final_sigmas_type", "zero")
    use_dynamic_shifting: bool = with_default(SolverOptions, "use_dynamic_shifting", False)
    time_shift_type: str = option(
        "exponential", "the dynamic shift: exponential e^μ / (e^μ + 1/σ - 1) or linear "
        "μ / (μ + 1/σ - 1)", "time_shift_type", choices=shifts.TIME_SHIFT_TYPES,
    )  # fmt: skip
    sigma_min: float | None = option(
        None, "lowest σ of karras / exponential / beta grids (default: the training range's)",
        "sigma_min", nullable=True, low=0.0, low_open=True,
    )  # fmt: skip
    sigma_max: float | None = option(
        None, "highest σ of karras / exponential / beta grids (default: the training range's)",
        "sigma_max", nullable=True, low=0.0, low_open=True,
    )  # fmt: skip
    shift_terminal: float | None = option(
        None, "stretch flow levels so that the last one is this (LTX-Video); flow grids only",
        "shift_terminal", nullable=True, low=0.0, high=1.0, high_open=True,
    )  # fmt: skip

    def _check(self) -> None:
        object.__setattr__(self, "disable_corrector", _step_indices(self.disable_corrector))
        if self.solver_p is not None:
            raise ValueError(
                "UniPC option solver_p is not supported (diffusers' solver_p + UniC runs "
                "another scheduler object as the predictor); leave it None"
            )
        self.check_flow_grid(allow=("karras",))
        if self.shift_terminal is not None and not self.use_flow_sigmas:
            raise ValueError("UniPC option shift_terminal needs use_flow_sigmas=True")
        if self.prediction_type == predictions.FLOW and not self.predict_x0:
            raise ValueError(
                "UniPC with prediction_type='flow' needs predict_x0=True (diffusers' "
                "noise-prediction form has no flow conversion)"
            )

    @property
    def processes_x0(self) -> bool:
        # diffusers thresholds x̂_0 only in the data-prediction form
        return self.thresholding and self.predict_x0

    # -- the grid ------------------------------------------------------------------------

    def _grid(
        self,
        num_steps: int | None,
        sigmas: Any = None,
        mu: float | None = None,
        timesteps: Any = None,
    ) -> solver_grid.SolverGrid:
        """diffusers' ``set_timesteps``: timesteps and N + 1 levels (float32 values)."""
        kind = self.sigma_kind
        flow = self.use_flow_sigmas
        if flow and kind is None:
            kind = "flow"
        mu = shifts.checked_mu(mu, dynamic=self.use_dynamic_shifting, who="UniPC", required=True)
        levels = final = None
        if sigmas is not None:
            if kind != "flow":
                raise ValueError(
                    "UniPC takes custom sigmas= only with use_flow_sigmas=True (and no "
                    "use_karras_sigmas), as diffusers"
                )
            levels, final = _custom_flow_levels(sigmas)
        if timesteps is not None:
            if sigmas is not None or kind is not None:
                other = "sigmas=" if sigmas is not None else f"{kind} levels"
                raise ValueError(f"UniPC: timesteps= cannot be combined with {other}")
            timesteps = custom_timesteps(timesteps, self.num_train_steps)
        acp = discrete.training_alphas_cumprod(
            self.alphas_cumprod, zero_terminal_snr=self.rescale_betas_zero_snr
        )
        grid = solver_grid.solver_grid(
            acp, num_steps,
            spacing=self.timestep_spacing, offset=self.timesteps_offset,
            sigma_schedule=kind, final_sigma=self.final_sigmas_type,
            converted_final_sigma="last" if self.final_sigmas_type == "sigma_min" else "zero",
            sigma_min=self.sigma_min, sigma_max=self.sigma_max,
            flow_shift=self.flow_shift, flow_base="linspace",
            flow_mu=mu if kind == "flow" else None,
            time_shift_type=self.time_shift_type, shift_terminal=self.shift_terminal,
            flow_nudge_from_one=True, karras_as_flow=flow and kind == "karras", sigmas=levels,
            timesteps=timesteps,
        )  # fmt: skip
        if final is not None:
            sig = grid.sigmas.copy()
            sig[-1] = np.float32(final)
            if sig[-1] > sig[-2]:
                raise ValueError(
                    f"the final level {final} lies above the last shifted level {sig[-2]}"
                )
            grid = grid._replace(sigmas=sig)
        return grid

    # -- the table -----------------------------------------------------------------------

    def tableau(
        self,
        num_steps: int | None,
        sigmas: Any = None,
        mu: Any = None,
        timesteps: Any = None,
        strength: float = 1.0,
    ) -> Tableau:
        grid = self._grid(num_steps, sigmas, mu, timesteps)
        return self.table(grid, first_call(len(grid.timesteps), strength))

    def table(self, grid: solver_grid.SolverGrid, cut: int = 0) -> Tableau:
        """The predictor-corrector table over ``grid`` (eq. 3-8), the warm-up starting at
        call ``cut`` (image-to-image; the calls before it are dropped)."""
        n = len(grid.timesteps)
        sig = grid.sigmas
        alpha, sigma = solver_grid.alpha_sigma(sig, grid.flow)
        lam = solver_grid.half_log_snr(alpha, sigma)  # +inf at a final σ = 0
        # diffusers' flow x̂_0 = x - σ v uses the grid's σ (σ_t itself on flow grids)
        level = sig[:n] if self.prediction_type == predictions.FLOW else sigma[:n]
        x0 = predictions.x0_from_alpha_sigma(self.prediction_type, alpha[:n], level)
        data = self.predict_x0
        lead = alpha if data else sigma  # ℓ of (4) and (6) at each level

        # predictor order at each call: warm-up, lower_order_final, first order into σ = 0
        orders = []
        for j in range(n):
            p = min(self.solver_order, n - j) if self.lower_order_final else self.solver_order
            p = min(p, j - cut + 1)
            orders.append(1 if sig[j + 1] == 0 else p)

        # m of (1)-(2): x̂_0, or ε̂ formed from the call's sample and output
        if data:
            estimate = data_estimate(n)
        else:
            estimate = noise_estimate(
                self.prediction_type, alpha[:n], sigma[:n], from_x0=False, direct_velocity=True
            )
        keep, rows = np.zeros(n), [{} for _ in range(n)]

        def add_model(lag: int, j: int, value: float) -> None:
            """``value`` times m of call j - lag, in the row of call j."""
            rows[j][lag] = rows[j].get(lag, 0.0) + value

        def step_weights(j: int) -> tuple[np.ndarray, UniPCRhos]:
            """(r, B and the ρ's) of the predictor step from call j to level j + 1."""
            h = lam[j + 1] - lam[j]
            hh = -h if data else h
            r = np.array([(lam[j - k] - lam[j]) / h for k in range(1, orders[j])])  # eq. 3
            return r, UniPCRhos(*unipc_weights(r, hh, self.solver_type))

        weights: list[tuple[np.ndarray, UniPCRhos] | None] = [None] * n
        for j in range(n):
            # the corrected sample x^c_j = x̃_j + corr (eq. 7): {lag: coefficient of m}
            corr: dict[int, float] = {}
            if j > cut and (j - 1) not in self.disable_corrector and weights[j - 1] is not None:
                r, st = weights[j - 1]
                scale = lead[j] * st.b_h
                for k in range(1, orders[j - 1]):  # D_k = (m_{j-1-k} - m_{j-1}) / r_k
                    w = scale * (st.rho_p[k - 1] - st.rho_c[k - 1]) / r[k - 1]
                    corr[1 + k] = corr.get(1 + k, 0.0) + w
                    corr[1] = corr.get(1, 0.0) - w
                corr[0] = corr.get(0, 0.0) - scale * st.rho_c[-1]  # D_p = m_j - m_{j-1}
                corr[1] = corr.get(1, 0.0) + scale * st.rho_c[-1]
            # the predictor from x^c_j to level j + 1 (eq. 4)
            t = j + 1
            s_x = sigma[t] / sigma[j] if data else alpha[t] / alpha[j]
            keep[j] = s_x
            for lag, c in corr.items():
                add_model(lag, j, s_x * c)
            if sig[t] == 0:  # h = ∞: the first-order limit (8)
                weights[j] = None
                add_model(0, j, alpha[t] if data else -alpha[t] * sigma[j] / alpha[j])
                continue
            if sig[t] == sig[j]:  # h = 0 (a final level repeating the last): the identity
                weights[j] = None
                continue
            r, st = weights[j] = step_weights(j)
            hh = lam[j] - lam[t] if data else lam[t] - lam[j]  # ĥ
            add_model(0, j, -lead[t] * math.expm1(hh))
            for k in range(1, orders[j]):  # D_k = (m_{j-k} - m_j) / r_k
                w = -lead[t] * st.b_h * st.rho_p[k - 1] / r[k - 1]
                add_model(k, j, w)
                add_model(0, j, -w)
        tab = Tableau(
            timesteps=grid.timesteps,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update=exponential_multistep(keep, rows, estimate),
            start=(float(alpha[0]), float(sigma[0])),
            init_noise_sigma=1.0,
        )
        return restarted_on_grid(tab, grid, cut)


def _step_indices(value: Any) -> tuple[int, ...]:
    """``disable_corrector`` as a tuple of non-negative step indices, or an error."""
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(
            f"disable_corrector expects a list of step indices, got: {value!r}"
        ) from None
    for k in items:
        if isinstance(k, bool | np.bool_) or not isinstance(k, int | np.integer) or k < 0:
            raise TypeError(
                f"disable_corrector expects non-negative integer step indices, got: {value!r}"
            )
    return tuple(int(k) for k in items)


def _custom_flow_levels(values: Any) -> tuple[np.ndarray, float]:
    """(the N flow levels before the shift, the final level) of ``sigmas=``."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size < 2 or not np.all(np.isfinite(arr)):
        raise ValueError(
            "sigmas must list at least two finite flow levels (N model calls and the final "
            f"one), got: {values!r}"
        )
    levels, final = arr[:-1], float(arr[-1])
    if np.any(levels <= 0) or np.any(levels > 1) or np.any(np.diff(levels) > 0) or final < 0:
        raise ValueError(
            "sigmas must be non-increasing flow levels in (0, 1] (the final one may be 0), "
            f"got: {arr.tolist()}"
        )
    return levels, final
