"""What the tests of the exact ODE references (tests/test_reference.py: the
probability-flow ODE; tests/test_flow_reference.py: the rectified-flow ODE) share: start
points, the max-norm relative difference, an independent fixed-step RK4 and the σ → 0
limit of the empirical (digits) denoiser."""

from __future__ import annotations

import numpy as np

from diffsched.exact.models import sample_shape


def start_points(name: str, count: int, seed: int) -> np.ndarray:
    """Standard normal points of the named model's sample shape: VP samples at the noisy
    end (roughly unit variance), or flow samples at σ = 1."""
    return np.random.default_rng(seed).standard_normal(sample_shape(name, count))


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def assert_converges(solve, denoiser, x, start, end, *, rtol, atol, tol) -> None:
    """``solve(denoiser, x, start, end)`` (float64, x's shape) agrees within ``tol`` with
    its run at the tightened tolerances ``rtol``, ``atol``."""
    default = solve(denoiser, x, start, end)
    tighter = solve(denoiser, x, start, end, rtol=rtol, atol=atol)
    assert default.shape == x.shape and default.dtype == np.float64
    assert relative_difference(default, tighter) < tol


def rk4(slope, y, u_start: float, u_end: float, steps: int):
    """y(u_end) by classical fixed-step RK4 on dy/du = slope(u, y) from y(u_start) = y
    (written independently of the references' adaptive solvers)."""
    h = (u_end - u_start) / steps
    for k in range(steps):
        u = u_start + k * h
        k1 = slope(u, y)
        k2 = slope(u + h / 2, y + h / 2 * k1)
        k3 = slope(u + h / 2, y + h / 2 * k2)
        k4 = slope(u + h, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def nearest_training_image(denoiser, x: np.ndarray) -> np.ndarray:
    """The empirical denoiser's training image nearest to each sample of x: the σ → 0 end
    of its flow (an independent route to that limit)."""
    flat = x.reshape(len(x), -1)
    gaps = np.sum((flat[:, None] - denoiser.data[None]) ** 2, axis=2)
    return denoiser.data[np.argmin(gaps, axis=1)].reshape(x.shape)
