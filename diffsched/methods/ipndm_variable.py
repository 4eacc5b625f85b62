"""iPNDM with variable step sizes: the improved pseudo numerical method of Zhang & Chen
2023 ("Fast Sampling of Diffusion Models with Exponential Integrator", sec. 4 and app. B,
iPNDM), in the variance-exploding form used with searched grids (Chen et al. 2024, "On
the Trajectory Regularity of ODE-based Diffusion Sampling", GITS; Zhou et al. 2024, AMED).

The probability-flow ODE in the variance-exploding variable x = x_0 + σ ε reads
(Karras et al. 2022, eq. 4 with s = 1, σ(t) = t)

    dx/dσ = d(x, σ) = (x - x̂_0(x, σ)) / σ.                                         (1)

A linear multistep method integrates the polynomial through the last p derivatives
exactly (Adams-Bashforth on a variable grid; Hairer, Nørsett & Wanner, "Solving Ordinary
Differential Equations I", sec. III.5):

    x_{i+1} = x_i + Σ_{k<p} w_{ik} d_{i-k},
    w_{ik} = ∫_{σ_i}^{σ_{i+1}} ℓ_{ik}(σ) dσ,   ℓ_{ik} the Lagrange basis polynomial of
             σ_{i-k} over the nodes σ_i, ..., σ_{i-p+1},                            (2)

with p = min(i + 1, order): the order rises from one as the history fills, with no
Runge-Kutta warm-up (iPNDM's lower-order start). On an even grid (2) gives the classical
weights 1; 3/2, -1/2; 23/12, -16/12, 5/12; 55/24, -59/24, 37/24, -9/24 of iPNDM.

The final step. The last step lands on σ_N = 0 (or the lowest training σ) through (2) as
well: the integral of a polynomial in σ is finite at σ = 0, so the last model call enters
at full order. The exponential integrators (DPM-Solver++, UniPC, DEIS) cannot: their step
in λ = -log σ is infinite there, so their last step is first order, x_N = x̂_0 of the last
call, and a grid whose last call sits at a large σ leaves that first-order error whatever
the solver.

The model is called on x_i / sqrt(σ_i² + 1), the variance-preserving sample it was
trained on, at the timestep of σ_i (interpolated over the training σ's, as Euler); that is
the sample this scheduler holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import families, predictions
from ..core.engine import Tableau
from ..core.options import option
from ..core.scheduler import SigmaGrid, document
from ..schedules import discrete
from ._karras import EulerBase
from .kit import adams_bashforth_weights, linear_multistep

__all__ = ["MAX_ORDER", "VariableIPNDM", "adams_bashforth_weights"]

MAX_ORDER = 4


@document
@dataclass(frozen=True, kw_only=True)
class VariableIPNDM(SigmaGrid, EulerBase):
    """iPNDM with variable step sizes on the probability-flow ODE in σ (Zhang & Chen 2023;
    the form GITS and AMED use with searched grids).

    Order ``solver_order`` (1 to 4; lower during the warm-up); one model call per step;
    deterministic. Not in diffusers (its ``IPNDMScheduler``, ``IPNDM`` here, is the
    equal-step method on the v-diffusion "crash" grid): this one runs on any σ grid of a
    discrete-time model (the spacings, Karras, exponential, Align Your Steps, a tuned grid
    from :func:`diffsched.tune`) and its last step reaches σ = 0 at full order.

    ``init(..., sigmas=[...])`` (N + 1 levels, the last one final) or
    ``init(..., timesteps=[...])`` give a custom grid; ``init(..., strength=s)`` is
    image-to-image.
    """

    DIFFUSERS_CLASS = None
    FAMILY = families.KARRAS
    CLI_NAME = "ipndm-v"
    ORDER = MAX_ORDER

    solver_order: int = option(
        MAX_ORDER, "the most past derivatives each step combines (eq. 2)", "solver_order",
        low=1, high=MAX_ORDER,
    )  # fmt: skip

    def grid_options(self) -> discrete.GridOptions:
        return super().grid_options()._replace(sigma_schedule=self.sigma_kind)

    def tableau(self, num_steps: int, **init_options: Any) -> Tableau:
        ts, sig = self._grid(num_steps, **init_options)
        n = len(ts)
        s = sig[: n + 1]
        x0 = predictions.x0_from_ve(self.prediction_type, s[:n])
        # eq. 2, d_j = (x_j - x̂_0j) / σ_j (eq. 1)
        weights = [adams_bashforth_weights(s, i, self.solver_order) for i in range(n)]
        update = linear_multistep(s[:n], weights)
        return Tableau(
            timesteps=ts,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update=update,
            input_scale=np.append(np.sqrt(s[:n] ** 2 + 1), 1.0),
            start=(1.0, float(s[0])),
            init_noise_sigma=self._init_noise_sigma(sig),
        )
