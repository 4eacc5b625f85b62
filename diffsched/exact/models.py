"""Exact denoisers: models whose predictions are the true posterior mean, for testing schedulers.

A scheduler only ever sees a model ``model(x_t, t) -> prediction``. For a data distribution
whose optimal denoiser D(x_t; ᾱ) = E[x_0 | x_t] is known in closed form, the exact model is
available without training, so a sampler's output can be compared with the exact solution of
the probability-flow ODE (see :mod:`diffsched.exact.reference`). Two such distributions are
provided:

* :class:`EmpiricalDenoiser`: the empirical distribution of a finite data set (by default
  scikit-learn's 8x8 digits, :func:`digits_data`). With x_t = sqrt(ᾱ) x_0 + sqrt(1-ᾱ) ε and
  x_0 uniform over the rows y_i of the data, Bayes' rule gives
  p(i | x_t) ∝ exp(-|x_t - sqrt(ᾱ) y_i|² / (2 (1-ᾱ))), so E[x_0 | x_t] = Σ_i softmax_i y_i
  (Karras et al. 2022, app. B.3, "ideal denoiser").
* :class:`GaussianMixture`: a mixture of Gaussians (isotropic, or with full covariances),
  for which the posterior over components and the per-component posterior mean are
  Gaussian conditioning formulas.

All denoising code is written against the array API standard (``array_api_compat``), so the
same model runs on NumPy, PyTorch and JAX arrays, float32 or float64, eagerly or under
``jax.jit``: it never branches on array values and never reads them back to the host.

Conventions (variance preserving): ``alphas_cumprod`` is the training table ᾱ_t, t = 0..T-1,
non-increasing, possibly 0 at t = T-1 ("zero terminal SNR"); σ = sqrt((1-ᾱ)/ᾱ). The model
predicts ``"noise"`` (ε), ``"angular_velocity"`` (v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x_0, diffusers'
``v_prediction``; Salimans & Ho 2022) or ``"sample"`` (x_0).

Flow matching (:class:`FlowModel`, :func:`make_flow_model`): the same denoisers as
rectified-flow models (Liu et al. 2022), x_σ = (1 - σ) x_0 + σ ε with σ ∈ (0, 1], called at
t = σ T as the flow-matching schedulers call them, predicting v = ε - x_0 (``"flow"``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import array_api_compat
import numpy as np

from ..core.predictions import PREDICTION_TYPES, check_prediction_type
from .threads import small_matrices

__all__ = [
    "DIGITS_SHAPE",
    "MODEL_NAMES",
    "PREDICTION_TYPES",
    "DenoiserModel",
    "EmpiricalDenoiser",
    "FlowModel",
    "GaussianMixture",
    "digits_data",
    "flow_model_for",
    "flow_posterior_mean",
    "make_denoiser",
    "make_flow_model",
    "make_model",
    "model_for",
    "sample_shape",
]

Array = Any
"""A NumPy, PyTorch or JAX array (possibly a traced JAX value)."""

MODEL_NAMES = ("digits", "gmm")
DIGITS_SHAPE = (1, 8, 8)


@runtime_checkable
class Denoiser(Protocol):
    """An exact denoiser: ``posterior_mean(x_t, ᾱ) = E[x_0 | x_t]`` for samples of ``dim``."""

    @property
    def dim(self) -> int: ...

    def posterior_mean(self, x_t: Array, alpha_bar: Array | float) -> Array: ...


# ----------------------------------------------------------------------------------------
# Small helpers shared by the denoisers
# ----------------------------------------------------------------------------------------


def _namespace(x: Array, name: str):
    """The array-API namespace of ``x`` and the device for the small arrays made beside it
    (tables, ᾱ, the timestep); ValueError if ``x`` is not an array."""
    if not array_api_compat.is_array_api_obj(x) or isinstance(x, np.generic):
        raise ValueError(f"{name} must be a NumPy, PyTorch or JAX array, got {type(x).__name__}")
    xp = array_api_compat.array_namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise ValueError(f"{name} must have a real floating dtype, got {x.dtype}")
    return xp, _small_array_device(x)


def _small_array_device(x: Array):
    """Where the small arrays that meet ``x`` go: ``x``'s device, except for a concrete JAX
    array sharded over several devices. Its sharding (``array_api_compat.device``) has a
    partition spec for ``x``'s rank, which cannot place a 0-d ᾱ or a table of another shape
    (JAX refuses it): those go replicated over its mesh (a ``NamedSharding``), else, for
    other multi-device shardings, uncommitted on the default device (JAX moves them)."""
    if not array_api_compat.is_jax_array(x) or _is_traced(x):
        return array_api_compat.device(x)
    sharding = x.sharding
    if sharding.num_devices == 1:
        return array_api_compat.device(x)
    from jax.sharding import NamedSharding, PartitionSpec

    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec(), memory_kind=sharding.memory_kind)
    return None


def _flatten_batch(xp, x: Array, dim: int, name: str) -> Array:
    """Reshape ``x`` of shape (B, *S) with prod(S) == ``dim`` to (B, dim)."""
    shape = tuple(x.shape)
    if len(shape) < 1:
        raise ValueError(f"{name} must have a batch axis, shape (B, ...), got shape {shape}")
    features = math.prod(shape[1:])
    if features != dim:
        raise ValueError(
            f"{name} must have {dim} values per sample, got shape {shape} "
            f"({features} values per sample)"
        )
    return xp.reshape(x, (shape[0], dim))


def _is_host_number(value: Any) -> bool:
    """Whether ``value`` is a Python or NumPy number (or NumPy array) readable for free."""
    return isinstance(value, int | float | np.integer | np.floating | np.ndarray) and not (
        isinstance(value, bool | np.bool_)
    )


def _host_scalar(value: Any, name: str) -> float:
    """A Python/NumPy scalar (or one-element NumPy array) as a float, else ValueError."""
    array = np.asarray(value)
    if array.size != 1 or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"{name} must be a real scalar, got {value!r}")
    return float(array.reshape(()))


def _alpha_bar_array(alpha_bar: Array | float, xp, dtype, device) -> Array:
    """ᾱ as a 0-d array of the sample's backend/dtype/device.

    Python and NumPy values are checked to lie in [0, 1); backend arrays (possibly traced)
    are only checked to be 0-d, since reading their value would need a host sync.
    """
    if _is_host_number(alpha_bar):
        value = _host_scalar(alpha_bar, "alpha_bar")
        if not 0.0 <= value < 1.0:
            raise ValueError(f"alpha_bar must be in [0, 1), got {value!r}")
        return xp.asarray(value, dtype=dtype, device=device)
    if not array_api_compat.is_array_api_obj(alpha_bar):
        raise ValueError(
            f"alpha_bar must be a float or a 0-d array, got {type(alpha_bar).__name__}"
        )
    if tuple(alpha_bar.shape) != ():
        raise ValueError(f"alpha_bar must be 0-d, got shape {tuple(alpha_bar.shape)}")
    return xp.asarray(alpha_bar, dtype=dtype, device=device)


def _is_traced(array: Array) -> bool:
    """Whether ``array`` is a JAX tracer (which must never be cached across traces)."""
    if not array_api_compat.is_jax_array(array):
        return False
    import jax

    return isinstance(array, jax.core.Tracer)


def _converted(cache: dict, arrays: tuple[np.ndarray, ...], xp, dtype, device) -> tuple[Array, ...]:
    """Host float64 ``arrays`` on the given backend/dtype/device, cached per that triple.

    Conversions made while tracing under ``jax.jit`` are tracers and are not cached.
    """
    key = (xp.__name__, str(dtype), str(device))
    hit = cache.get(key)
    if hit is not None:
        return hit
    # A writable copy: torch warns when wrapping read-only NumPy memory.
    out = tuple(xp.asarray(np.array(a), dtype=dtype, device=device) for a in arrays)
    if not any(_is_traced(a) for a in out):
        cache[key] = out
    return out


def _softmax_rows(xp, logits: Array) -> Array:
    """Row-wise softmax by the stable log-sum-exp: exp(l - max l) / Σ exp(l - max l)."""
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    weights = xp.exp(shifted)
    return weights / xp.sum(weights, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------
# Empirical distribution (digits)
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_cached() -> np.ndarray:
    from sklearn.datasets import load_digits  # only here: keeps ``import`` cheap

    images = np.asarray(load_digits().data, dtype=np.float64)  # (1797, 64), values 0..16
    scaled = images / 8.0 - 1.0
    scaled.setflags(write=False)
    return scaled


def digits_data() -> np.ndarray:
    """scikit-learn's bundled 8x8 digits scaled from 0..16 to [-1, 1]: float64, (1797, 64).

    Each row is one image in row-major order (reshape to (1, 8, 8) for an image).
    Returns a fresh copy.
    """
    return _digits_cached().copy()


@dataclass(frozen=True, eq=False, repr=False)
class EmpiricalDenoiser:
    """The optimal denoiser of the empirical distribution of ``data`` (n, d).

    For x_0 uniform over the rows y_i and x_t = sqrt(ᾱ) x_0 + sqrt(1-ᾱ) ε,

        p(i | x_t) = softmax_i(ℓ_i),  ℓ_i = (sqrt(ᾱ) <x_t, y_i> - ᾱ |y_i|² / 2) / (1-ᾱ),

    which is -|x_t - sqrt(ᾱ) y_i|² / (2 (1-ᾱ)) up to a term independent of i, and
    E[x_0 | x_t] = Σ_i p(i | x_t) y_i. At ᾱ = 0 the weights are uniform (the data mean).
    """

    data: np.ndarray
    _sq_norms: np.ndarray = field(init=False, repr=False)
    _cache: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        try:
            data = np.array(self.data, dtype=np.float64, copy=True)
        except (TypeError, ValueError) as err:
            raise ValueError(f"data must be a real (n, d) array, got {type(self.data)}") from err
        if data.ndim != 2 or data.shape[0] < 1 or data.shape[1] < 1:
            raise ValueError(f"data must have shape (n, d) with n, d >= 1, got {data.shape}")
        if not np.all(np.isfinite(data)):
            raise ValueError("data must be finite, got NaN or inf entries")
        data.setflags(write=False)
        sq_norms = np.sum(data * data, axis=1)
        sq_norms.setflags(write=False)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "_sq_norms", sq_norms)

    def __repr__(self) -> str:
        return f"EmpiricalDenoiser(n={self.data.shape[0]}, dim={self.dim})"

    @property
    def dim(self) -> int:
        """Number of values per sample, d."""
        return int(self.data.shape[1])

    def posterior_mean(self, x_t: Array, alpha_bar: Array | float) -> Array:
        """E[x_0 | x_t] for ``x_t`` of shape (B, *S), prod(S) == d, at 0 <= ᾱ < 1.

        Returns an array of the shape, dtype, backend and device of ``x_t``.
        """
        xp, device = _namespace(x_t, "x_t")
        flat = _flatten_batch(xp, x_t, self.dim, "x_t")
        a = _alpha_bar_array(alpha_bar, xp, x_t.dtype, device)
        data, data_t, sq_norms = _converted(
            self._cache, (self.data, self.data.T, self._sq_norms), xp, x_t.dtype, device
        )
        logits = (xp.sqrt(a) * (flat @ data_t) - (a / 2) * sq_norms) / (1 - a)
        weights = _softmax_rows(xp, logits)  # (B, n)
        return xp.reshape(weights @ data, x_t.shape)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The data's mean (d,) and covariance (d, d), float64: those of the uniform
        distribution over the rows, (1/n) Σ_i y_i and (1/n) Σ_i (y_i - m)(y_i - m)^T."""
        mean = self.data.mean(axis=0)
        centred = self.data - mean
        return mean, centred.T @ centred / self.data.shape[0]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` rows drawn uniformly with replacement, float64 array (n, d)."""
        n = _check_positive_int(n, "n", minimum=0)
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return self.data[rng.integers(0, self.data.shape[0], n)]


# ----------------------------------------------------------------------------------------
# Gaussian mixture
# ----------------------------------------------------------------------------------------


def _check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _spread_points(
    rng: np.random.Generator, count: int, dim: int, scale: float, candidates: int = 32
) -> np.ndarray:
    """``count`` well-separated points in [-scale, scale]^dim (Mitchell's best candidate).

    Each point is the one of ``candidates`` uniform draws farthest from the points already
    chosen, which spreads the points out (visible clusters) and can never fail.
    """
    points = rng.uniform(-scale, scale, size=(1, dim))
    for _ in range(count - 1):
        trial = rng.uniform(-scale, scale, size=(candidates, dim))
        gaps = np.min(np.sum((trial[:, None, :] - points[None, :, :]) ** 2, axis=2), axis=1)
        points = np.concatenate([points, trial[np.argmax(gaps)][None]], axis=0)
    return points


@dataclass(frozen=True)
class GaussianMixture:
    """A mixture Σ_k w_k N(μ_k, Σ_k) in ``dim`` dimensions, drawn deterministically.

    From ``np.random.default_rng(seed)``: means μ_k spread over [-mean_scale, mean_scale]^dim
    (best of 32 uniform candidates each, see :func:`_spread_points`), standard deviations s_k
    uniform in ``std_range``, weights w ~ Dirichlet(5, ..., 5) (all components visible). With
    the defaults the clusters are well separated and the data lie within about [-3, 3].

    ``covariance="isotropic"`` (the default): Σ_k = s_k² I. ``"full"``: Σ_k = U_k diag(s_k²)
    U_kᵀ, the ``dim`` standard deviations s_k of each component drawn uniform in
    ``std_range`` and U_k a random rotation (the Q of a Gaussian matrix's QR, its columns'
    signs fixed by R's diagonal: Haar-distributed), drawn after the isotropic parameters.

    Parameters are the read-only arrays ``means`` (K, dim), ``stds`` (K,) or (K, dim) and
    ``weights`` (K,), and for ``"full"`` ``rotations`` (K, dim, dim), U_k.
    """

    n_components: int = 8
    dim: int = 2
    seed: int = 0
    mean_scale: float = 1.8
    std_range: tuple[float, float] = (0.05, 0.3)
    covariance: str = "isotropic"
    means: np.ndarray = field(init=False, repr=False, compare=False)
    stds: np.ndarray = field(init=False, repr=False, compare=False)
    weights: np.ndarray = field(init=False, repr=False, compare=False)
    rotations: np.ndarray | None = field(init=False, repr=False, compare=False, default=None)
    _cache: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        k = _check_positive_int(self.n_components, "n_components")
        dim = _check_positive_int(self.dim, "dim")
        seed = _check_positive_int(self.seed, "seed", minimum=0)
        if not (math.isfinite(self.mean_scale) and self.mean_scale > 0):
            raise ValueError(f"mean_scale must be a positive float, got {self.mean_scale!r}")
        low, high = (float(s) for s in self.std_range)
        if not (0 < low <= high < math.inf):
            raise ValueError(f"std_range must be (low, high) with 0 < low <= high, got {low, high}")
        rng = np.random.default_rng(seed)
        if self.covariance not in ("isotropic", "full"):
            raise ValueError(f"covariance must be 'isotropic' or 'full', got {self.covariance!r}")
        params = {
            "means": _spread_points(rng, k, dim, self.mean_scale),
            "stds": rng.uniform(low, high, size=k),
            "weights": rng.dirichlet(np.full(k, 5.0)),
        }
        if self.covariance == "full":  # after the isotropic draws: those stay as they were
            params["stds"] = rng.uniform(low, high, size=(k, dim))
            rotations = []
            for _ in range(k):
                q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
                rotations.append(q * np.where(np.diag(r) < 0, -1.0, 1.0))
            params["rotations"] = np.stack(rotations)
        for name, value in params.items():
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` draws x_0 ~ Σ_k w_k N(μ_k, s_k² I), float64 array (n, dim)."""
        n = _check_positive_int(n, "n", minimum=0)
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        k = rng.choice(self.n_components, size=n, p=self.weights)
        z = rng.standard_normal((n, self.dim))
        if self.rotations is None:
            return self.means[k] + self.stds[k, None] * z
        return self.means[k] + np.einsum("nij,nj->ni", self.rotations[k], self.stds[k] * z)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The mixture's mean (dim,) and covariance (dim, dim), float64:
        m = Σ_k w_k μ_k and Σ = Σ_k w_k (s_k² I + (μ_k - m)(μ_k - m)^T) (the law of total
        covariance: the mean of the components' covariances plus the covariance of their
        means)."""
        mean = self.weights @ self.means
        centred = self.means - mean
        cov = (centred.T * self.weights) @ centred
        if self.rotations is None:
            cov += float(self.weights @ self.stds**2) * np.eye(self.dim)
        else:  # Σ_k w_k U_k diag(s_k²) U_kᵀ
            cov += np.einsum("k,kij,kj,klj->il", self.weights, self.rotations, self.stds**2,
                             self.rotations)  # fmt: skip
        return mean, cov

    def posterior_mean(self, x_t: Array, alpha_bar: Array | float) -> Array:
        """E[x_0 | x_t] in closed form, ``x_t`` of shape (B, *S), prod(S) == dim, 0 <= ᾱ < 1.

        Given component k, x_t ~ N(sqrt(ᾱ) μ_k, v_k I) with v_k = ᾱ s_k² + 1 - ᾱ, so the
        responsibilities are r_k ∝ w_k v_k^(-dim/2) exp(-|x_t - sqrt(ᾱ) μ_k|² / (2 v_k))
        (normalised by a stable log-sum-exp), and Gaussian conditioning gives
        E[x_0 | x_t, k] = μ_k + sqrt(ᾱ) s_k² / v_k (x_t - sqrt(ᾱ) μ_k). With full
        covariances the same holds axis by axis in each component's eigenbasis: with
        p = U_kᵀ (x_t - sqrt(ᾱ) μ_k) and v_kj = ᾱ s_kj² + 1 - ᾱ,
        r_k ∝ w_k Π_j v_kj^(-1/2) exp(-Σ_j p_j² / (2 v_kj)) and
        E[x_0 | x_t, k] = μ_k + U_k (sqrt(ᾱ) s_k² / v_k ⊙ p).
        Returns Σ_k r_k E[x_0 | x_t, k], of the shape/dtype/backend/device of ``x_t``.
        """
        xp, device = _namespace(x_t, "x_t")
        flat = _flatten_batch(xp, x_t, self.dim, "x_t")
        a = _alpha_bar_array(alpha_bar, xp, x_t.dtype, device)
        if self.rotations is not None:
            return xp.reshape(self._full_mean(xp, flat, a, device), x_t.shape)
        means, variances, log_weights = _converted(
            self._cache,
            (self.means, self.stds**2, np.log(self.weights)),
            xp,
            x_t.dtype,
            device,
        )
        k, dim = self.n_components, self.dim
        sqrt_a = xp.sqrt(a)
        v = a * variances + (1 - a)  # (K,)
        diff = xp.reshape(flat, (-1, 1, dim)) - sqrt_a * xp.reshape(means, (1, k, dim))
        sq_dist = xp.sum(diff * diff, axis=2)  # (B, K)
        logits = log_weights - (dim / 2) * xp.log(v) - sq_dist / (2 * v)
        resp = _softmax_rows(xp, logits)  # (B, K)
        gain = xp.reshape(sqrt_a * variances / v, (1, k, 1))
        conditional = xp.reshape(means, (1, k, dim)) + gain * diff  # (B, K, dim)
        mean = xp.sum(xp.reshape(resp, (-1, k, 1)) * conditional, axis=1)
        return xp.reshape(mean, x_t.shape)

    def _full_mean(self, xp, flat: Array, a: Array, device: Any) -> Array:
        """:meth:`posterior_mean` of ``flat`` (B, dim) with full covariances."""
        means, variances, log_weights, rotations = _converted(
            self._cache,
            (self.means, self.stds**2, np.log(self.weights), self.rotations),
            xp,
            flat.dtype,
            device,
        )
        k, dim = self.n_components, self.dim
        sqrt_a = xp.sqrt(a)
        diff = xp.reshape(flat, (1, -1, dim)) - sqrt_a * xp.reshape(means, (k, 1, dim))  # (K, B, D)
        proj = xp.matmul(diff, rotations)  # p = U_kᵀ (x - sqrt(ᾱ) μ_k), row-wise: (K, B, D)
        v = a * variances + (1 - a)  # (K, D)
        sq = xp.sum(proj * proj / xp.reshape(v, (k, 1, dim)), axis=2)  # (K, B)
        logits = xp.reshape(log_weights - 0.5 * xp.sum(xp.log(v), axis=1), (k, 1)) - sq / 2
        resp = _softmax_rows(xp, xp.permute_dims(logits, (1, 0)))  # (B, K)
        gain = xp.reshape(sqrt_a * variances / v, (k, 1, dim))
        shift = xp.matmul(gain * proj, xp.permute_dims(rotations, (0, 2, 1)))  # U_k (g ⊙ p)
        conditional = xp.reshape(means, (k, 1, dim)) + shift  # (K, B, D)
        return xp.sum(xp.permute_dims(resp, (1, 0))[..., None] * conditional, axis=0)


# ----------------------------------------------------------------------------------------
# ᾱ(t) at real-valued timesteps
# ----------------------------------------------------------------------------------------


def check_alphas_cumprod(alphas_cumprod: Any) -> np.ndarray:
    """``alphas_cumprod`` as a read-only float64 array, validated.

    Must be 1-D, non-empty, finite, non-increasing, with 0 <= ᾱ_t < 1.
    """
    try:
        table = np.array(alphas_cumprod, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"alphas_cumprod must be a 1-D real array, got {type(alphas_cumprod).__name__}"
        ) from err
    if table.ndim != 1 or table.size < 1:
        raise ValueError(f"alphas_cumprod must be a non-empty 1-D array, got shape {table.shape}")
    if not np.all(np.isfinite(table)) or np.any(table < 0) or np.any(table >= 1):
        raise ValueError(
            "alphas_cumprod must have finite values in [0, 1), got values in "
            f"[{np.min(table)!r}, {np.max(table)!r}]"
        )
    if np.any(np.diff(table) > 0):
        first = int(np.argmax(np.diff(table) > 0))
        raise ValueError(
            "alphas_cumprod must be non-increasing in t, got an increase at "
            f"t={first}->{first + 1} ({table[first]!r} -> {table[first + 1]!r})"
        )
    table.setflags(write=False)
    return table


def _interpolation_tables(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ᾱ_t, log σ_t, [ᾱ_t == 0]) on the host in float64.

    log σ = (log(1-ᾱ) - log ᾱ)/2 is +inf where ᾱ = 0; it is stored as 0 there (never used:
    the zero mask decides those entries), so no inf or NaN ever reaches the arithmetic.
    """
    is_zero = table == 0
    safe = np.where(is_zero, 0.5, table)
    log_sigma = np.where(is_zero, 0.0, 0.5 * (np.log1p(-safe) - np.log(safe)))
    return table, log_sigma, is_zero.astype(np.float64)


def _timestep_array(
    timestep: Any, xp, dtype, device, high: float, low_open: bool = False, scale: float = 1.0
) -> Array:
    """``timestep`` / ``scale`` as a 0-d array of ``dtype``; host values are range-checked,
    in [0, high] ((0, high] with ``low_open``) and divided on the host, in float64."""
    if _is_host_number(timestep):
        value = _host_scalar(timestep, "timestep")
        if not ((value > 0.0 if low_open else value >= 0.0) and value <= high):
            left = "(" if low_open else "["
            raise ValueError(f"timestep must be in {left}0, {high}], got {value!r}")
        return xp.asarray(value / scale, dtype=dtype, device=device)
    if not array_api_compat.is_array_api_obj(timestep):
        raise ValueError(
            f"timestep must be a number or a one-element array, got {type(timestep).__name__}"
        )
    if math.prod(tuple(timestep.shape)) != 1:
        raise ValueError(
            f"timestep must be a scalar or one-element array, got shape {tuple(timestep.shape)}"
        )
    t = xp.reshape(xp.asarray(timestep, dtype=dtype, device=device), ())
    return t / scale if scale != 1.0 else t


def _interpolate_alpha_bar(xp, t: Array, tables: tuple[Array, Array, Array]) -> Array:
    """ᾱ at the real timestep ``t`` (0-d), by linear interpolation of log σ.

    With i = floor(t), f = t - i: log σ(t) = (1-f) log σ_i + f log σ_{i+1} and
    ᾱ(t) = 1 / (1 + σ(t)²). At f == 0 the table entry ᾱ_i itself is returned, bit-exact.
    Between i and i+1 with ᾱ_{i+1} == 0 (log σ_{i+1} = +inf) the interpolated log σ is
    +inf for every f > 0, so ᾱ(t) = 0 there: the exact limit of the log-σ interpolation.
    ``t`` outside [0, T-1] (only possible for backend arrays, which are not read) is clipped.
    """
    alphas, log_sigma, is_zero = tables
    last = alphas.shape[0] - 1
    zero = xp.zeros((), dtype=t.dtype, device=array_api_compat.device(t))
    t = xp.minimum(xp.maximum(t, zero), zero + last)
    floor = xp.floor(t)
    frac = t - floor
    lower = xp.reshape(xp.astype(floor, xp.int32), (1,))
    upper = xp.minimum(lower + 1, xp.zeros_like(lower) + last)

    def gather(values: Array, index: Array) -> Array:
        return xp.reshape(xp.take(values, index), ())

    log_s_lower = gather(log_sigma, lower)
    log_s = log_s_lower + frac * (gather(log_sigma, upper) - log_s_lower)
    between = 1 / (1 + xp.exp(2 * log_s))
    between = xp.where(gather(is_zero, upper) > 0, zero, between)
    return xp.where(frac == 0, gather(alphas, lower), between)


def alpha_bar_at(alphas_cumprod: Any, timestep: Any, like: Array) -> Array:
    """ᾱ(t) as a 0-d array of the backend, dtype and device of ``like``.

    Exact at integer t (the table entry); between integers log σ is interpolated linearly
    (see :func:`_interpolate_alpha_bar`; ᾱ = 0 on (T-2, T-1) for zero-terminal-SNR tables).
    """
    xp, device = _namespace(like, "like")
    table = check_alphas_cumprod(alphas_cumprod)
    tables = _converted({}, _interpolation_tables(table), xp, like.dtype, device)
    t = _timestep_array(timestep, xp, like.dtype, device, table.shape[0] - 1)
    return _interpolate_alpha_bar(xp, t, tables)


# ----------------------------------------------------------------------------------------
# The model a scheduler calls
# ----------------------------------------------------------------------------------------


def prediction_from_x0(x_t: Array, x0: Array, alpha_bar: Array, prediction_type: str) -> Array:
    """Turn an estimate of x_0 into the ``prediction_type`` output at ᾱ (0-d array).

    ε = (x_t - sqrt(ᾱ) x_0) / sqrt(1-ᾱ) and v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x_0.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "sample":
        return x0
    xp = array_api_compat.array_namespace(x_t)
    sqrt_a, sqrt_1ma = xp.sqrt(alpha_bar), xp.sqrt(1 - alpha_bar)
    eps = (x_t - sqrt_a * x0) / sqrt_1ma
    if prediction_type == "noise":
        return eps
    return sqrt_a * eps - sqrt_1ma * x0


class DenoiserModel:
    """``model(sample, timestep) -> prediction`` for an exact denoiser and a ᾱ table.

    ``timestep`` may be a Python or NumPy number (range-checked) or a one-element backend
    array (possibly traced by ``jax.jit``; clipped to [0, T-1], never read). ᾱ(t) is computed
    by :func:`_interpolate_alpha_bar` in the sample's dtype, then x_0 = E[x_0 | x_t] and the
    prediction follow. Attributes: ``denoiser``, ``alphas_cumprod`` (read-only float64),
    ``prediction_type``.
    """

    def __init__(self, denoiser: Denoiser, alphas_cumprod: Any, prediction_type: str) -> None:
        if not callable(getattr(denoiser, "posterior_mean", None)):
            raise ValueError(
                "denoiser must have a posterior_mean(x_t, alpha_bar) method, "
                f"got {type(denoiser).__name__}"
            )
        self.denoiser = denoiser
        self.alphas_cumprod = check_alphas_cumprod(alphas_cumprod)
        self.prediction_type = check_prediction_type(prediction_type)
        self._tables = _interpolation_tables(self.alphas_cumprod)
        self._cache: dict = {}

    def __repr__(self) -> str:
        return (
            f"DenoiserModel({self.denoiser!r}, T={self.alphas_cumprod.shape[0]}, "
            f"prediction_type={self.prediction_type!r})"
        )

    def alpha_bar(self, timestep: Any, like: Array) -> Array:
        """ᾱ(timestep) as a 0-d array of ``like``'s backend, dtype and device."""
        xp, device = _namespace(like, "like")
        tables = _converted(self._cache, self._tables, xp, like.dtype, device)
        t = _timestep_array(timestep, xp, like.dtype, device, self.alphas_cumprod.shape[0] - 1)
        return _interpolate_alpha_bar(xp, t, tables)

    def __call__(self, sample: Array, timestep: Any) -> Array:
        """The exact ``prediction_type`` output for ``sample`` (B, *S) at ``timestep``."""
        alpha_bar = self.alpha_bar(timestep, sample)
        with small_matrices():  # small products: one BLAS thread (see .threads)
            x0 = self.denoiser.posterior_mean(sample, alpha_bar)
        return prediction_from_x0(sample, x0, alpha_bar, self.prediction_type)


def model_for(
    denoiser: Denoiser, alphas_cumprod: Any, prediction_type: str
) -> Callable[[Array, Any], Array]:
    """The exact model ``(sample, timestep) -> prediction`` of ``denoiser`` (a
    :class:`DenoiserModel`, which also exposes ``denoiser``, ``alphas_cumprod`` and
    ``prediction_type``)."""
    return DenoiserModel(denoiser, alphas_cumprod, prediction_type)


@functools.lru_cache(maxsize=1)
def _digits_denoiser() -> EmpiricalDenoiser:
    return EmpiricalDenoiser(_digits_cached())


def _check_name(name: Any) -> str:
    if name not in MODEL_NAMES:
        raise ValueError(f"model name must be one of {MODEL_NAMES}, got {name!r}")
    return name


def _check_kwargs(name: str, kwargs: dict) -> None:
    allowed = () if name == "digits" else ("n_components", "dim", "seed", "mean_scale", "std_range",
                                           "covariance")  # fmt: skip
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"model {name!r} accepts keyword arguments {allowed}, got {unknown}")


def make_denoiser(name: str, **kwargs: Any) -> Denoiser:
    """The denoiser called ``name``: "digits" (no options) or "gmm" (GaussianMixture options)."""
    _check_kwargs(_check_name(name), kwargs)
    if name == "digits":
        return _digits_denoiser()
    return GaussianMixture(**kwargs)


def make_model(
    name: str, alphas_cumprod: Any, prediction_type: str, **kwargs: Any
) -> DenoiserModel:
    """The exact model for the named data set: "digits" (samples (B, 1, 8, 8), the empirical
    distribution of :func:`digits_data`) or "gmm" (samples (B, dim), a :class:`GaussianMixture`
    built from ``kwargs``)."""
    return DenoiserModel(make_denoiser(name, **kwargs), alphas_cumprod, prediction_type)


def sample_shape(name: str, num_samples: int, **kwargs: Any) -> tuple[int, ...]:
    """The shape of a batch of ``num_samples`` samples for :func:`make_model` ``(name, ...)``."""
    _check_kwargs(_check_name(name), kwargs)
    n = _check_positive_int(num_samples, "num_samples", minimum=0)
    if name == "digits":
        return (n, *DIGITS_SHAPE)
    return (n, _check_positive_int(kwargs.get("dim", 2), "dim"))


# ----------------------------------------------------------------------------------------
# Flow matching: the same denoisers as rectified-flow models
# ----------------------------------------------------------------------------------------


def flow_posterior_mean(denoiser: Denoiser, sample: Array, sigma: Array | float) -> Array:
    """E[x_0 | x_σ] for a rectified-flow sample x_σ = (1 - σ) x_0 + σ ε, 0 < σ <= 1.

    x_σ / (1 - σ) = x_0 + σ/(1 - σ) ε is a variance-exploding sample at level σ/(1 - σ), so
    the posterior mean is the denoiser's at that level. In the variance-preserving form the
    denoisers take (which stays finite at σ = 1, pure noise), with r = sqrt((1 - σ)² + σ²):

        x_t = x_σ / r,   ᾱ = (1 - σ)² / r²                                          (F1)

    (x_t = sqrt(ᾱ) x_0 + sqrt(1 - ᾱ) ε). ``sigma`` is a Python number or a 0-d array of
    the sample's backend; the result has the sample's shape, dtype, backend and device.
    """
    xp, device = _namespace(sample, "sample")
    if _is_host_number(sigma):
        value = _host_scalar(sigma, "sigma")
        if not 0.0 < value <= 1.0:
            raise ValueError(f"sigma must be in (0, 1], got {value!r}")
    sigma = xp.asarray(sigma, dtype=sample.dtype, device=device)
    keep = 1 - sigma
    r2 = keep * keep + sigma * sigma
    return denoiser.posterior_mean(sample / xp.sqrt(r2), keep * keep / r2)  # (F1)


class FlowModel:
    """``model(x_σ, timestep) -> v`` for an exact denoiser as a rectified-flow model.

    The flow-matching schedulers call the model on x_σ = (1 - σ) x_0 + σ ε at the timestep
    t = σ T (T = ``num_train_steps``, diffusers' ``num_train_timesteps``), and read its output
    as the velocity v = ε - x_0 (diffusers' ``flow_prediction``). With the exact
    x̂_0 = E[x_0 | x_σ] (:func:`flow_posterior_mean`), ε̂ = (x_σ - (1 - σ) x̂_0) / σ, so

        v̂ = ε̂ - x̂_0 = (x_σ - x̂_0) / σ.                                           (F2)

    ``timestep`` may be a Python or NumPy number, checked to lie in (0, T], or a
    one-element backend array (possibly traced by ``jax.jit``; not read, not checked: at
    t = 0 the velocity is not defined). Attributes: ``denoiser``, ``num_train_steps``,
    ``prediction_type`` (``"flow"``).
    """

    prediction_type = "flow"

    def __init__(self, denoiser: Denoiser, num_train_steps: int = 1000) -> None:
        if not callable(getattr(denoiser, "posterior_mean", None)):
            raise ValueError(
                "denoiser must have a posterior_mean(x_t, alpha_bar) method, "
                f"got {type(denoiser).__name__}"
            )
        self.denoiser = denoiser
        self.num_train_steps = _check_positive_int(num_train_steps, "num_train_steps")

    def __repr__(self) -> str:
        return f"FlowModel({self.denoiser!r}, T={self.num_train_steps})"

    def sigma(self, timestep: Any, like: Array) -> Array:
        """σ = t / T as a 0-d array of ``like``'s backend, dtype and device."""
        xp, device = _namespace(like, "like")
        T = self.num_train_steps
        return _timestep_array(timestep, xp, like.dtype, device, T, low_open=True, scale=T)

    def __call__(self, sample: Array, timestep: Any) -> Array:
        """The exact velocity v̂ (F2) for ``sample`` (B, *S) at ``timestep``."""
        sigma = self.sigma(timestep, sample)
        with small_matrices():  # small products: one BLAS thread (see .threads)
            x0 = flow_posterior_mean(self.denoiser, sample, sigma)
        return (sample - x0) / sigma  # (F2)


def flow_model_for(denoiser: Denoiser, num_train_steps: int = 1000) -> FlowModel:
    """The exact rectified-flow model ``(x_σ, t) -> v`` of ``denoiser`` (t = σ T)."""
    return FlowModel(denoiser, num_train_steps)


def make_flow_model(name: str, num_train_steps: int = 1000, **kwargs: Any) -> FlowModel:
    """The exact rectified-flow model of the named data set ("digits" or "gmm", as
    :func:`make_model`), called at t = σ T with T = ``num_train_steps``."""
    return FlowModel(make_denoiser(name, **kwargs), num_train_steps)
