"""Exact denoisers (diffsched.exact.models) against independent brute-force evaluations."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from diffsched.exact import models
from diffsched.exact.models import (
    EmpiricalDenoiser,
    GaussianMixture,
    alpha_bar_at,
    digits_data,
    make_denoiser,
    make_model,
    model_for,
    sample_shape,
)

T = 1000


def scaled_linear_table(num_steps: int = T) -> np.ndarray:
    """ᾱ of the "scaled linear" schedule (Stable Diffusion): β from 0.00085 to 0.012."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, num_steps) ** 2
    return np.cumprod(1.0 - betas)


def zero_terminal_table(num_steps: int = T) -> np.ndarray:
    """The same schedule rescaled to zero terminal SNR (Lin et al. 2024, alg. 1).

    sqrt(ᾱ) is shifted so that its last value is 0 and scaled so that its first is unchanged.
    """
    root = np.sqrt(scaled_linear_table(num_steps))
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    return root**2


TABLES = {"scaled_linear": scaled_linear_table(), "zero_terminal": zero_terminal_table()}


@contextlib.contextmanager
def jax_x64():
    """Enable 64-bit JAX for the duration of a test only."""
    import jax

    context = getattr(jax, "enable_x64", None)
    if context is None:  # older JAX
        from jax.experimental import enable_x64 as context
    with context(True):
        yield


def noisy(clean: np.ndarray, alpha_bar: float, rng: np.random.Generator) -> np.ndarray:
    """x_t = sqrt(ᾱ) x_0 + sqrt(1-ᾱ) ε."""
    eps = rng.standard_normal(clean.shape)
    return math.sqrt(alpha_bar) * clean + math.sqrt(1.0 - alpha_bar) * eps


# ----------------------------------------------------------------------------------------
# Brute-force posterior means, written independently of the vectorised code
# ----------------------------------------------------------------------------------------


def brute_empirical_mean(data: np.ndarray, x_t: np.ndarray, alpha_bar: float) -> np.ndarray:
    """E[x_0 | x_t] by Bayes' rule with an explicit loop over the training points.

    p(i | x_t) ∝ N(x_t; sqrt(ᾱ) y_i, (1-ᾱ) I), from the squared distances directly.
    """
    out = np.empty_like(x_t)
    for b, x in enumerate(x_t):
        log_lik = np.empty(data.shape[0])
        for i, y in enumerate(data):
            log_lik[i] = -np.sum((x - math.sqrt(alpha_bar) * y) ** 2) / (2 * (1 - alpha_bar))
        weights = np.exp(log_lik - logsumexp(log_lik))
        out[b] = sum(w * y for w, y in zip(weights, data, strict=True))
    return out


def brute_mixture_mean(gmm: GaussianMixture, x_t: np.ndarray, alpha_bar: float) -> np.ndarray:
    """E[x_0 | x_t] for the mixture: scipy log-densities and the precision form of conditioning.

    Given k, x_0 ~ N(μ, s²) and x_t | x_0 ~ N(sqrt(ᾱ) x_0, (1-ᾱ)), so the posterior of x_0
    has precision 1/s² + ᾱ/(1-ᾱ) and mean (μ/s² + sqrt(ᾱ) x_t/(1-ᾱ)) / precision.
    """
    out = np.empty_like(x_t)
    root = math.sqrt(alpha_bar)
    for b, x in enumerate(x_t):
        log_joint, cond_means = [], []
        for mu, s, w in zip(gmm.means, gmm.stds, gmm.weights, strict=True):
            cov = (alpha_bar * s**2 + 1 - alpha_bar) * np.eye(gmm.dim)
            log_joint.append(math.log(w) + multivariate_normal(root * mu, cov).logpdf(x))
            precision = 1 / s**2 + alpha_bar / (1 - alpha_bar)
            cond_means.append((mu / s**2 + root * x / (1 - alpha_bar)) / precision)
        resp = np.exp(np.array(log_joint) - logsumexp(log_joint))
        out[b] = resp @ np.array(cond_means)
    return out


# ----------------------------------------------------------------------------------------
# Data and denoisers
# ----------------------------------------------------------------------------------------


def test_digits_data():
    data = digits_data()
    assert data.shape == (1797, 64) and data.dtype == np.float64
    assert data.min() == -1.0 and data.max() == 1.0
    assert np.all(np.isin(data * 8 + 8, np.arange(17)))  # the 17 original levels
    data[0, 0] = 5.0  # a copy: the cached data are untouched
    assert digits_data()[0, 0] != 5.0


def test_import_is_cheap():
    """Importing diffsched and its models loads neither scipy nor scikit-learn."""
    code = (
        "import sys, diffsched, diffsched.exact.models\n"
        "print(sorted(m for m in ('scipy', 'sklearn') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# Tolerances: the vectorised logits expand |x - sqrt(ᾱ) y|² and drop |x|², so each carries a
# rounding error of ~ eps |y|² / (1-ᾱ) (|y|² <= 64 for digits); a logit error δ moves the
# weights by at most δ/4 relative and the mean by that times a gap between images (~1).
# Observed errors are 15-300 times below this bound (e.g. 4e-11 vs 1.4e-8 at ᾱ = 1 - 1e-6).
ALPHA_BARS = [0.0, 0.02, 0.3, 0.9, 0.999, 1 - 1e-6]


def empirical_tolerance(alpha_bar: float) -> float:
    return 1e-13 + np.finfo(np.float64).eps * 64 / (1 - alpha_bar)


@pytest.mark.parametrize("alpha_bar", ALPHA_BARS)
def test_empirical_posterior_mean_matches_brute_force(alpha_bar):
    rng = np.random.default_rng(0)
    data = digits_data()[:300]
    denoiser = EmpiricalDenoiser(data)
    # Noisy training images, pure noise, and a point halfway between two close images (mixed
    # weights even when ᾱ is close to 1).
    dists = np.sum((data[:, None] - data[None]) ** 2, axis=2) + np.eye(len(data)) * 1e9
    i, j = np.unravel_index(np.argmin(dists), dists.shape)
    x_t = np.stack(
        [
            noisy(data[3], alpha_bar, rng),
            noisy(data[77], alpha_bar, rng),
            rng.standard_normal(64),
            math.sqrt(alpha_bar) * (data[i] + data[j]) / 2 + 1e-3 * (1 - alpha_bar),
        ]
    )
    expected = brute_empirical_mean(data, x_t, alpha_bar)
    got = denoiser.posterior_mean(x_t, alpha_bar)
    np.testing.assert_allclose(got, expected, rtol=0, atol=empirical_tolerance(alpha_bar))
    # image-shaped input gives image-shaped output, same values
    images = denoiser.posterior_mean(x_t.reshape(4, 1, 8, 8), alpha_bar)
    assert images.shape == (4, 1, 8, 8)
    np.testing.assert_array_equal(images.reshape(4, 64), got)
    if alpha_bar == 0.0:  # uniform weights: the data mean
        np.testing.assert_allclose(got, np.broadcast_to(data.mean(0), got.shape), atol=1e-14)


def test_empirical_full_digits_data():
    """The full 1797-image set through make_denoiser, against brute force at one ᾱ."""
    rng = np.random.default_rng(1)
    denoiser = make_denoiser("digits")
    data = digits_data()
    x_t = noisy(data[[5, 900]], 0.5, rng)
    np.testing.assert_allclose(
        denoiser.posterior_mean(x_t, 0.5), brute_empirical_mean(data, x_t, 0.5), atol=1e-12
    )


@pytest.mark.parametrize("alpha_bar", ALPHA_BARS)
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_mixture_posterior_mean_matches_brute_force(alpha_bar, dim):
    rng = np.random.default_rng(2)
    gmm = GaussianMixture(n_components=5, dim=dim, seed=3)
    clean = gmm.sample(6, rng)
    between = (gmm.means[:2] + gmm.means[1:3]) / 2  # between clusters: mixed responsibilities
    x_t = np.concatenate([noisy(clean, alpha_bar, rng), math.sqrt(alpha_bar) * between])
    expected = brute_mixture_mean(gmm, x_t, alpha_bar)
    np.testing.assert_allclose(gmm.posterior_mean(x_t, alpha_bar), expected, rtol=1e-12, atol=1e-13)
    if alpha_bar == 0.0:
        np.testing.assert_allclose(expected, np.broadcast_to(gmm.weights @ gmm.means, x_t.shape))


def brute_full_mixture_mean(gmm: GaussianMixture, x_t: np.ndarray, alpha_bar: float) -> np.ndarray:
    """E[x_0 | x_t] with full covariances, by dense Gaussian conditioning: given k,
    x_t ~ N(sqrt(ᾱ) μ, C), C = ᾱ Σ + (1-ᾱ) I, and
    E[x_0 | x_t, k] = μ + sqrt(ᾱ) Σ C⁻¹ (x_t - sqrt(ᾱ) μ)."""
    out = np.empty_like(x_t)
    root = math.sqrt(alpha_bar)
    for b, x in enumerate(x_t):
        log_joint, cond_means = [], []
        for mu, s, u, w in zip(gmm.means, gmm.stds, gmm.rotations, gmm.weights, strict=True):
            sigma = u @ np.diag(s**2) @ u.T
            cov = alpha_bar * sigma + (1 - alpha_bar) * np.eye(gmm.dim)
            log_joint.append(math.log(w) + multivariate_normal(root * mu, cov).logpdf(x))
            cond_means.append(mu + root * sigma @ np.linalg.solve(cov, x - root * mu))
        resp = np.exp(np.array(log_joint) - logsumexp(log_joint))
        out[b] = resp @ np.array(cond_means)
    return out


@pytest.mark.parametrize("alpha_bar", [0.0, 0.02, 0.3, 0.9, 0.999])
@pytest.mark.parametrize("dim", [1, 3, 8])
def test_full_covariance_mixture_posterior_mean_matches_dense_conditioning(alpha_bar, dim):
    rng = np.random.default_rng(5)
    gmm = GaussianMixture(n_components=4, dim=dim, seed=2, covariance="full",
                          std_range=(0.05, 0.6))  # fmt: skip
    clean = gmm.sample(5, rng)
    between = (gmm.means[:2] + gmm.means[1:3]) / 2
    x_t = np.concatenate([noisy(clean, alpha_bar, rng), math.sqrt(alpha_bar) * between])
    expected = brute_full_mixture_mean(gmm, x_t, alpha_bar)
    np.testing.assert_allclose(gmm.posterior_mean(x_t, alpha_bar), expected, rtol=1e-10, atol=1e-12)
    import jax
    import jax.numpy as jnp
    import torch

    got = gmm.posterior_mean(torch.from_numpy(x_t), alpha_bar).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    with jax_x64():
        got = np.asarray(jax.jit(lambda x: gmm.posterior_mean(x, alpha_bar))(jnp.asarray(x_t)))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_full_covariance_mixture_parameters():
    iso = GaussianMixture(dim=5, seed=4)
    full = GaussianMixture(dim=5, seed=4, covariance="full")
    assert full != iso and iso.rotations is None
    # the isotropic draws come first and stay as they were
    np.testing.assert_array_equal(full.means, iso.means)
    np.testing.assert_array_equal(full.weights, iso.weights)
    assert full.stds.shape == (8, 5) and full.rotations.shape == (8, 5, 5)
    assert np.all((full.stds >= 0.05) & (full.stds <= 0.3))
    eye = np.einsum("kji,kjl->kil", full.rotations, full.rotations)
    np.testing.assert_allclose(eye, np.broadcast_to(np.eye(5), eye.shape), atol=1e-12)
    with pytest.raises(ValueError):
        full.rotations[0, 0, 0] = 1.0  # read-only
    samples = full.sample(200_000, np.random.default_rng(0))
    mean, cov = full.moments()
    # 200k draws: the sample mean's standard error is below 0.005, the covariance's 0.01
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.025)
    np.testing.assert_allclose(np.cov(samples.T), cov, atol=0.05)
    with pytest.raises(ValueError, match="covariance must be"):
        GaussianMixture(covariance="diagonal")


def test_mixture_posterior_mean_monte_carlo():
    """Self-normalised importance sampling: E[x_0 | x_t] ≈ Σ x0_i p(x_t|x0_i) / Σ p(x_t|x0_i).

    With x0_i ~ mixture (N = 400k), the delta-method standard error of the ratio estimate is
    sqrt(Σ w_i² (x0_i - m)²) / Σ w_i; we require agreement within 5 standard errors (the
    normal tail beyond 5 SE is 6e-7) and check the standard error itself is small (< 0.01),
    so the test has power.
    """
    rng = np.random.default_rng(4)
    gmm = GaussianMixture()
    alpha_bar = 0.5
    x_t = np.concatenate([noisy(gmm.sample(3, rng), alpha_bar, rng), np.zeros((1, 2))])
    x0 = gmm.sample(400_000, rng)
    exact = gmm.posterior_mean(x_t, alpha_bar)
    for b, x in enumerate(x_t):
        log_w = -np.sum((x - math.sqrt(alpha_bar) * x0) ** 2, axis=1) / (2 * (1 - alpha_bar))
        w = np.exp(log_w - log_w.max())
        estimate = w @ x0 / w.sum()
        std_err = np.sqrt((w**2) @ (x0 - estimate) ** 2) / w.sum()
        assert np.all(std_err < 0.01)
        assert np.all(np.abs(estimate - exact[b]) < 5 * std_err), (estimate, exact[b], std_err)


def test_mixture_parameters():
    gmm = GaussianMixture()
    assert gmm == GaussianMixture() and hash(gmm) == hash(GaussianMixture())
    np.testing.assert_array_equal(gmm.means, GaussianMixture().means)
    assert gmm != GaussianMixture(seed=1)
    assert not np.allclose(gmm.means, GaussianMixture(seed=1).means)
    assert gmm.means.shape == (8, 2) and gmm.stds.shape == (8,) and gmm.weights.shape == (8,)
    assert np.all((gmm.stds >= 0.05) & (gmm.stds <= 0.3))
    assert math.isclose(gmm.weights.sum(), 1.0) and np.all(gmm.weights > 0.02)
    gaps = np.sqrt(np.sum((gmm.means[:, None] - gmm.means[None]) ** 2, axis=2))
    assert np.min(gaps + np.eye(8) * 10) > 4 * gmm.stds.max()  # visible clusters
    with pytest.raises(ValueError):
        gmm.means[0, 0] = 1.0  # read-only
    samples = gmm.sample(50_000, np.random.default_rng(0))
    assert samples.shape == (50_000, 2) and np.abs(samples).max() < 3.3
    np.testing.assert_allclose(samples.mean(0), gmm.weights @ gmm.means, atol=0.03)
    np.testing.assert_array_equal(samples, gmm.sample(50_000, np.random.default_rng(0)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_components": 0}, "n_components"),
        ({"dim": 2.5}, "dim"),
        ({"seed": -1}, "seed"),
        ({"mean_scale": -1.0}, "mean_scale"),
        ({"std_range": (0.3, 0.1)}, "std_range"),
    ],
)
def test_mixture_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_denoisers_reject_bad_input():
    gmm, emp = GaussianMixture(), EmpiricalDenoiser(np.zeros((3, 4)))
    x = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"alpha_bar must be in \[0, 1\), got 1.0"):
        gmm.posterior_mean(x, 1.0)
    with pytest.raises(ValueError, match="alpha_bar must be in"):
        gmm.posterior_mean(x, -0.1)
    with pytest.raises(ValueError, match="alpha_bar must be a real scalar"):
        gmm.posterior_mean(x, np.full(2, 0.5))
    import torch

    with pytest.raises(ValueError, match="alpha_bar must be 0-d"):
        gmm.posterior_mean(torch.zeros(2, 2), torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="4 values per sample"):
        emp.posterior_mean(np.zeros((2, 3)), 0.5)
    with pytest.raises(ValueError, match="batch axis"):
        emp.posterior_mean(np.zeros(()), 0.5)
    with pytest.raises(ValueError, match="floating dtype"):
        emp.posterior_mean(np.zeros((2, 4), dtype=np.int64), 0.5)
    with pytest.raises(ValueError, match="NumPy, PyTorch or JAX array"):
        emp.posterior_mean([[0.0] * 4], 0.5)
    with pytest.raises(ValueError, match="shape"):
        EmpiricalDenoiser(np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        EmpiricalDenoiser(np.array([[np.nan]]))
    with pytest.raises(ValueError, match=r"rng must be a numpy\.random\.Generator"):
        gmm.sample(3, 0)


# ----------------------------------------------------------------------------------------
# The model: ᾱ(t) and prediction types
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("table_name", TABLES)
def test_alpha_bar_exact_at_integers(table_name):
    table = TABLES[table_name]
    like64, like32 = np.zeros((1, 2)), np.zeros((1, 2), dtype=np.float32)
    model = model_for(GaussianMixture(), table, "noise")
    for t in range(T):
        assert float(model.alpha_bar(t, like64)) == table[t]
        assert model.alpha_bar(np.float64(t), like32) == np.float32(table[t])
    import torch

    t_torch = torch.tensor(T - 2)  # int64 0-d tensor
    assert float(model.alpha_bar(t_torch, torch.zeros(1, 2, dtype=torch.float64))) == table[-2]
    assert float(alpha_bar_at(table, 7, like64)) == table[7]
    like_torch = torch.zeros(1, dtype=torch.float32)
    assert float(alpha_bar_at(table, torch.tensor(7), like_torch)) == np.float32(table[7])


@pytest.mark.parametrize("table_name", TABLES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_alpha_bar_monotone_and_log_sigma_linear(table_name, dtype):
    table = TABLES[table_name]
    model = model_for(GaussianMixture(), table, "noise")
    like = np.zeros((1, 2), dtype=dtype)
    grid = np.linspace(0, T - 1, 20 * (T - 1) + 1)
    values = np.array([float(model.alpha_bar(t, like)) for t in grid])
    slack = 4 * np.finfo(dtype).eps * values
    assert np.all(np.diff(values) <= slack[:-1])  # non-increasing (up to rounding)
    if dtype == np.float32:
        return
    # log σ at t + f is (1-f) log σ_t + f log σ_{t+1} (intervals with ᾱ > 0 at both ends)

    def log_sigma(a):
        return 0.5 * np.log((1 - a) / a)

    starts = np.flatnonzero(table[1:] > 0)
    for f in (0.25, 0.5, 0.75):
        got = np.array([float(model.alpha_bar(t + f, like)) for t in starts])
        expected = (1 - f) * log_sigma(table[starts]) + f * log_sigma(table[starts + 1])
        np.testing.assert_allclose(log_sigma(got), expected, rtol=1e-12, atol=1e-12)


def test_alpha_bar_zero_terminal_snr():
    """ᾱ_{T-1} = 0: exact at T-1, 0 on (T-2, T-1) (log σ = +inf there), exact at T-2."""
    table = TABLES["zero_terminal"]
    assert table[-1] == 0.0 and table[-2] > 0
    model = model_for(GaussianMixture(), table, "noise")
    like = np.zeros((1, 2))
    assert float(model.alpha_bar(T - 1, like)) == 0.0
    assert float(model.alpha_bar(T - 2, like)) == table[-2]
    for t in (T - 2 + 1e-9, T - 1.5, T - 1 - 1e-9):
        assert float(model.alpha_bar(t, like)) == 0.0


def test_alpha_bar_rejects_bad_input():
    table = TABLES["scaled_linear"]
    like = np.zeros((1, 2))
    with pytest.raises(ValueError, match=r"timestep must be in \[0, 999\], got 999.5"):
        alpha_bar_at(table, 999.5, like)
    with pytest.raises(ValueError, match="timestep must be in"):
        alpha_bar_at(table, -1, like)
    with pytest.raises(ValueError, match="one-element"):
        import torch

        alpha_bar_at(table, torch.tensor([1.0, 2.0]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="non-increasing"):
        alpha_bar_at(table[::-1], 3, like)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        alpha_bar_at(np.array([1.0, 0.5]), 0, like)
    with pytest.raises(ValueError, match="1-D"):
        alpha_bar_at(np.zeros((2, 2)), 0, like)


TIMESTEPS = [0, 1, 17, 17.25, 500.5, 998, 998.9, 999]


@pytest.mark.parametrize("name", ["digits", "gmm"])
@pytest.mark.parametrize("table_name", TABLES)
def test_prediction_types_are_consistent(name, table_name):
    table = TABLES[table_name]
    models_by_type = {p: make_model(name, table, p) for p in models.PREDICTION_TYPES}
    rng = np.random.default_rng(5)
    x = rng.standard_normal(sample_shape(name, 3))
    for t in TIMESTEPS:
        x0, eps, v = (models_by_type[p](x, t) for p in ("sample", "noise", "angular_velocity"))
        a = float(models_by_type["noise"].alpha_bar(t, x))
        root, comp = math.sqrt(a), math.sqrt(1 - a)
        np.testing.assert_allclose(x0, models_by_type["sample"].denoiser.posterior_mean(x, a))
        # standard VP relations between (x_t, x_0, ε, v)
        np.testing.assert_allclose(root * x - comp * v, x0, atol=1e-12)  # x_0 from v
        np.testing.assert_allclose(comp * x + root * v, eps, atol=1e-12)  # ε from v
        np.testing.assert_allclose(root * x0 + comp * eps, x, atol=1e-12)  # x_t from x_0, ε
        if a > 0:
            np.testing.assert_allclose((x - comp * eps) / root, x0, atol=1e-11 / root)
        else:  # pure noise: ε = x_t, x_0 = data mean, v = -x_0
            np.testing.assert_array_equal(eps, x)
            np.testing.assert_allclose(v, -x0)


def test_model_attributes_and_validation():
    table = TABLES["scaled_linear"]
    model = make_model("gmm", table, "angular_velocity", dim=3, seed=2)
    assert model.denoiser == GaussianMixture(dim=3, seed=2)
    assert model.prediction_type == "angular_velocity"
    np.testing.assert_array_equal(model.alphas_cumprod, table)
    assert model(np.zeros((4, 3)), 3).shape == (4, 3)
    assert sample_shape("gmm", 4, dim=3) == (4, 3)
    assert sample_shape("digits", 4) == (4, 1, 8, 8)
    assert make_model("digits", table, "noise").denoiser.dim == 64
    with pytest.raises(ValueError, match=r"\('noise', 'angular_velocity', 'sample'\)"):
        make_model("gmm", table, "epsilon")
    with pytest.raises(ValueError, match=r"\('digits', 'gmm'\)"):
        make_model("mnist", table, "noise")
    with pytest.raises(ValueError, match="keyword arguments"):
        make_model("digits", table, "noise", dim=3)
    with pytest.raises(ValueError, match="keyword arguments"):
        sample_shape("gmm", 2, colour=True)
    with pytest.raises(ValueError, match="num_samples"):
        sample_shape("gmm", -1)
    with pytest.raises(ValueError, match="posterior_mean"):
        model_for(object(), table, "noise")


# ----------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------


def backend_arrays(x: np.ndarray, backend: str, dtype: str):
    if backend == "numpy":
        return x.astype(dtype)
    if backend == "torch":
        import torch

        return torch.asarray(x.copy(), dtype=getattr(torch, dtype))
    import jax.numpy as jnp

    return jnp.asarray(x, dtype=getattr(jnp, dtype))


def as_numpy(y) -> np.ndarray:
    return np.asarray(y.cpu() if hasattr(y, "cpu") else y, dtype=np.float64)


@pytest.mark.parametrize("name", ["digits", "gmm"])
@pytest.mark.parametrize("prediction_type", models.PREDICTION_TYPES)
def test_backends_agree(name, prediction_type):
    import jax
    import torch

    model = make_model(name, TABLES["zero_terminal"], prediction_type)
    x = np.random.default_rng(6).standard_normal(sample_shape(name, 3))
    for t in (0, 17.25, 500, 998.5, 999):
        expected = model(x, t)
        got_torch = model(backend_arrays(x, "torch", "float64"), torch.tensor(t))
        assert got_torch.dtype == torch.float64
        np.testing.assert_allclose(as_numpy(got_torch), expected, rtol=0, atol=1e-10)
        with jax_x64():
            got_jax = model(backend_arrays(x, "jax", "float64"), jax.numpy.asarray(t))
            assert got_jax.dtype == jax.numpy.float64
            np.testing.assert_allclose(as_numpy(got_jax), expected, rtol=0, atol=1e-10)
    # float32 on every backend: same dtype out, close to float64 at moderate noise
    for backend in ("numpy", "torch", "jax"):
        for t in (0, 250.5, 999):
            got = model(backend_arrays(x, backend, "float32"), t)
            assert str(got.dtype).endswith("float32")
            assert np.all(np.isfinite(as_numpy(got)))
            if t == 250.5:
                np.testing.assert_allclose(as_numpy(got), model(x, t), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["digits", "gmm"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_jax_jit_with_traced_timestep(name, dtype):
    import jax
    import jax.numpy as jnp

    model = make_model(name, TABLES["zero_terminal"], "angular_velocity")
    x_np = np.random.default_rng(7).standard_normal(sample_shape(name, 2))
    with jax_x64():
        x = jnp.asarray(x_np, dtype=getattr(jnp, dtype))
        jitted = jax.jit(model)
        for t in (0.0, 17.0, 17.25, 998.5, 999.0):
            eager = as_numpy(model(x, t))
            traced = as_numpy(jitted(x, jnp.asarray(t, dtype=getattr(jnp, dtype))))
            tol = 1e-12 if dtype == "float64" else 1e-5
            np.testing.assert_allclose(traced, eager, rtol=0, atol=tol)
        if hasattr(jitted, "_cache_size"):  # one trace: the timestep really is traced
            assert jitted._cache_size() == 1
        # nothing traced leaked into the model's caches: eager and new-shape traces still work
        model(x, 3)
        jitted(jnp.concatenate([x, x]), jnp.asarray(3.5, dtype=x.dtype))
