"""LMS: the linear multistep method (variable-step Adams-Bashforth; Hairer, Nørsett & Wanner,
"Solving Ordinary Differential Equations I", sec. III.1 and III.5) on the probability-flow
ODE in σ, as Katherine Crowson's k-diffusion ``sample_lms`` runs it.

The ODE is Euler's (Karras et al. 2022, eq. 4 with s = 1): in the variance-exploding
variable x = x_0 + σ ε,

    dx/dσ = d(x, σ) = (x - x̂_0) / σ.                                            (1)

Step i goes from σ_i to σ_{i+1} with the polynomial through the last p derivatives:

    x_{i+1} = x_i + Σ_{k<p} c_{i,k} d_{i-k},   c_{i,k} = ∫_{σ_i}^{σ_{i+1}} ℓ_{i,k}(τ) dτ,   (2)
    ℓ_{i,k}(τ) = Π_{m<p, m≠k} (τ - σ_{i-m}) / (σ_{i-k} - σ_{i-m}),                (3)

the Lagrange basis on σ_i, σ_{i-1}, ..., σ_{i-p+1}. p = min(i + 1, order): the warm-up
raises the order by one per call, as derivatives accumulate (no Runge-Kutta start).
Each ℓ has degree p - 1 and is integrated exactly (the kit's variable-step
Adams-Bashforth weights); the coefficients are computed once, in ``init``.

The model is called on x_i / sqrt(σ_i² + 1), the variance-preserving sample it was trained
on; that is the sample this scheduler holds (``input_scale``). The history a step reads
is the derivatives d_j of earlier calls, each a fixed combination of that call's sample
and x̂_0: the engine stores exactly those, one array per call, for order - 1 calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import families, predictions
from ..core.engine import Tableau
from ..core.options import with_default
from ..core.scheduler import Scheduler, SigmaGrid, Spacing, document, step_time
from ..schedules import discrete
from ..schedules import sigmas as sigma_schedules
from ._img2img import first_call, restarted
from ._karras import KarrasGrid
from .kit import adams_bashforth_weights, linear_multistep


def lms_coefficients(sigmas: np.ndarray, order: int) -> np.ndarray:
    """(N, order) array of c_{i,k} (eq. 2) for the grid σ_0..σ_N; zero where k >= p_i.

    ``sigmas`` holds the N levels of the model calls and the final one; row i is the step
    from σ_i to σ_{i+1} with p_i = min(i + 1, order) derivatives (the kit's
    :func:`~diffsched.methods.kit.adams_bashforth_weights`).
    """
    sig = np.asarray(sigmas, dtype=np.float64)
    n = len(sig) - 1
    out = np.zeros((n, order))
    for i in range(n):
        w = adams_bashforth_weights(sig, i, order)
        out[i, : len(w)] = w
    return out


@document
@dataclass(frozen=True, kw_only=True)
class LMS(KarrasGrid, SigmaGrid, Spacing, Scheduler):
    """Linear multistep sampling on the probability-flow ODE (k-diffusion's ``sample_lms``).

    Order ``order`` (4 by default; 1, 2, ... during the warm-up); one model call per step;
    deterministic. diffusers: ``LMSDiscreteScheduler``. Not to be confused with PNDM's
    pseudo linear multistep (PLMS, ``PNDM(reduce_warmup=True)``), which applies fixed
    Adams-Bashforth weights to ε inside DDIM's transfer; here the weights are integrals of
    the Lagrange polynomials through the last σ's (eq. 2), applied to the derivative in σ.
    """

    DIFFUSERS_CLASS = "LMSDiscreteScheduler"
    FAMILY = families.KARRAS
    CLI_NAME = "lms"
    ORDER = 4

    timestep_spacing: str = with_default(Spacing, "timestep_spacing", "linspace")
    order: int = step_time(
        4, "the number of derivatives the multistep polynomial runs through (eq. 2-3); at "
        "most 64 (its cost grows as order²)", low=1, high=64,
    )  # fmt: skip

    # diffusers' LMS builds its grid as Euler does (KarrasGrid), without Euler's extra options
    def grid_options(self) -> discrete.GridOptions:
        return super().grid_options()._replace(sigma_schedule=self.sigma_kind)

    def noise_levels(self, num_steps: int, strength: float = 1.0) -> tuple[float, float]:
        _, sig = self._grid(num_steps)
        return float(sigma_schedules.alpha_bar_of(sig[first_call(num_steps, strength)])), float(
            sigma_schedules.alpha_bar_of(sig[-1])
        )

    def tableau(self, num_steps: int, strength: float = 1.0) -> Tableau:
        ts, sig = self._grid(num_steps)
        n = len(ts)
        cut = first_call(n, strength)  # image-to-image: calls before the cut never run
        s = sig[:n]
        x0 = predictions.x0_from_ve(self.prediction_type, s)
        # eq. 2 with d_j = (x_j - x̂_0,j) / σ_j (eq. 1); image-to-image keeps the whole
        # schedule's weights and drops the derivatives of calls before the cut
        weights = [
            adams_bashforth_weights(sig, i, self.order)[: max(i - cut, 0) + 1] for i in range(n)
        ]
        update = linear_multistep(s, weights)
        tab = Tableau(
            timesteps=ts,
            x0_sample=x0.sample_coef,
            x0_output=x0.prediction_coef,
            update=update,
            input_scale=np.append(np.sqrt(s**2 + 1), 1.0),
            start=(1.0, float(s[0])),
            init_noise_sigma=self._init_noise_sigma(sig),
        )
        return restarted(tab, cut, (1.0, float(s[cut])))
