"""Bumblebee's own scheduler tests, run against our classes on every backend.

The mission's seed is Bumblebee's ``Bumblebee.Scheduler`` behaviour; its test suite
(``test/bumblebee/diffusion/{ddim,pndm,lcm}_scheduler_test.exs`` at elixir-nx/bumblebee
``d0774e8``) records, for each configuration, the timesteps and the final sample of a
loop on a fixed toy: the sample ``iota(8, 8, 4) / 256`` in float32 and the "model"
``sample * t / (t + 1)``. The numbers below are those recorded values (facts, copied as
numbers), compared the way Bumblebee compares them (``Nx.all_close`` with atol = rtol =
1e-4, on ``sample[[1..3, 1..3, 1..2]]``, whose ranges are inclusive, and on the sum).
Their invalid-input tests are here too, by the condition they name (our messages are our
own).
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest
import torch
from test_models import jax_x64

import diffsched as ds

BACKENDS = ("numpy", "torch", "jax")

# (constructor, options, steps, sample[1:4, 1:4, 1:3], sum)
DDIM_CASES = {
    "default": (
        {},
        [
            [[0.0648, 0.0666], [0.0718, 0.0736], [0.0788, 0.0806]],
            [[0.1209, 0.1226], [0.1279, 0.1296], [0.1349, 0.1367]],
            [[0.1770, 0.1787], [0.1840, 0.1857], [0.1910, 0.1927]],
        ],
        57.1861,
    ),
    "quadratic": (
        {"beta_schedule": "quadratic"},
        [
            [[0.0675, 0.0693], [0.0747, 0.0766], [0.0820, 0.0839]],
            [[0.1258, 0.1276], [0.1331, 0.1349], [0.1404, 0.1422]],
            [[0.1841, 0.1860], [0.1914, 0.1932], [0.1987, 0.2005]],
        ],
        59.5049,
    ),
    "squared_cosine": (
        {"beta_schedule": "squared_cosine"},
        [
            [[0.0684, 0.0702], [0.0757, 0.0776], [0.0831, 0.0850]],
            [[0.1275, 0.1293], [0.1349, 0.1367], [0.1422, 0.1441]],
            [[0.1866, 0.1884], [0.1940, 0.1958], [0.2014, 0.2032]],
        ],
        60.2983,
    ),
    "beta range": (
        {"beta_start": 0.001, "beta_end": 0.02},
        [
            [[0.0653, 0.0670], [0.0723, 0.0741], [0.0794, 0.0812]],
            [[0.1217, 0.1235], [0.1288, 0.1306], [0.1359, 0.1376]],
            [[0.1782, 0.1800], [0.1853, 0.1870], [0.1923, 0.1941]],
        ],
        57.5869,
    ),
    "angular_velocity": (
        {"prediction_type": "angular_velocity"},
        [
            [[0.0198, 0.0203], [0.0219, 0.0225], [0.0241, 0.0246]],
            [[0.0369, 0.0375], [0.0391, 0.0396], [0.0412, 0.0417]],
            [[0.0540, 0.0546], [0.0562, 0.0567], [0.0583, 0.0589]],
        ],
        17.4644,
    ),
}

PNDM_CASES = {
    "default": (
        {},
        [
            [[0.0747, 0.0767], [0.0827, 0.0848], [0.0908, 0.0928]],
            [[0.1393, 0.1413], [0.1473, 0.1493], [0.1554, 0.1574]],
            [[0.2038, 0.2058], [0.2119, 0.2139], [0.2200, 0.2220]],
        ],
        65.8717,
    ),
    "reduced warmup": (
        {"reduce_warmup": True},
        [
            [[0.0745, 0.0765], [0.0826, 0.0846], [0.0906, 0.0926]],
            [[0.1390, 0.1410], [0.1470, 0.1490], [0.1551, 0.1571]],
            [[0.2034, 0.2054], [0.2115, 0.2135], [0.2195, 0.2215]],
        ],
        65.7333,
    ),
    "quadratic": (
        {"beta_schedule": "quadratic"},
        [
            [[0.0742, 0.0762], [0.0822, 0.0842], [0.0902, 0.0922]],
            [[0.1384, 0.1404], [0.1464, 0.1484], [0.1544, 0.1564]],
            [[0.2025, 0.2045], [0.2105, 0.2125], [0.2186, 0.2206]],
        ],
        65.4468,
    ),
    "squared_cosine": (
        {"beta_schedule": "squared_cosine"},
        [
            [[0.0740, 0.0760], [0.0820, 0.0840], [0.0900, 0.0920]],
            [[0.1380, 0.1400], [0.1460, 0.1480], [0.1540, 0.1560]],
            [[0.2021, 0.2041], [0.2101, 0.2121], [0.2181, 0.2201]],
        ],
        65.2970,
    ),
    "beta range": (
        {"beta_start": 0.001, "beta_end": 0.02},
        [
            [[0.0752, 0.0773], [0.0834, 0.0854], [0.0915, 0.0935]],
            [[0.1403, 0.1423], [0.1484, 0.1505], [0.1566, 0.1586]],
            [[0.2054, 0.2074], [0.2135, 0.2156], [0.2217, 0.2237]],
        ],
        66.3751,
    ),
    "angular_velocity": (
        {"prediction_type": "angular_velocity"},
        [
            [[0.0254, 0.0261], [0.0281, 0.0288], [0.0309, 0.0316]],
            [[0.0474, 0.0481], [0.0501, 0.0508], [0.0529, 0.0535]],
            [[0.0693, 0.0700], [0.0721, 0.0728], [0.0748, 0.0755]],
        ],
        22.4076,
    ),
}

# Bumblebee runs LCM for one step only: later steps draw noise from its own PRNG.
LCM_CASES = {
    "default": (
        {},
        [
            [[0.0071, 0.0072], [0.0078, 0.0080], [0.0086, 0.0088]],
            [[0.0131, 0.0133], [0.0139, 0.0141], [0.0147, 0.0149]],
            [[0.0192, 0.0194], [0.0200, 0.0202], [0.0208, 0.0210]],
        ],
        6.2203,
    ),
    "linear": (
        {"beta_schedule": "linear"},
        [
            [[0.0065, 0.0067], [0.0072, 0.0074], [0.0079, 0.0081]],
            [[0.0121, 0.0123], [0.0128, 0.0130], [0.0135, 0.0137]],
            [[0.0178, 0.0179], [0.0185, 0.0186], [0.0192, 0.0193]],
        ],
        5.7404,
    ),
    "squared_cosine": (
        {"beta_schedule": "squared_cosine"},
        [
            [[2.9326, 3.0118], [3.2498, 3.3290], [3.5667, 3.6462]],
            [[5.4692, 5.5484], [5.7860, 5.8653], [6.1035, 6.1827]],
            [[8.0054, 8.0846], [8.3229, 8.4021], [8.6397, 8.7190]],
        ],
        2587.1404,
    ),
    "beta range": (
        {"beta_start": 0.001, "beta_end": 0.02},
        [
            [[0.0114, 0.0117], [0.0126, 0.0129], [0.0138, 0.0141]],
            [[0.0212, 0.0215], [0.0224, 0.0227], [0.0237, 0.0240]],
            [[0.0310, 0.0313], [0.0323, 0.0326], [0.0335, 0.0338]],
        ],
        10.0290,
    ),
    "angular_velocity": (
        {"prediction_type": "angular_velocity"},
        [
            [[-0.1342, -0.1378], [-0.1487, -0.1523], [-0.1632, -0.1668]],
            [[-0.2502, -0.2539], [-0.2647, -0.2684], [-0.2792, -0.2829]],
            [[-0.3663, -0.3699], [-0.3808, -0.3844], [-0.3953, -0.3989]],
        ],
        -118.3716,
    ),
}

CASES = [
    *((ds.DDIM, name, 10, *case) for name, case in DDIM_CASES.items()),
    *((ds.PNDM, name, 10, *case) for name, case in PNDM_CASES.items()),
    *((ds.LCM, name, 1, *case) for name, case in LCM_CASES.items()),
]


# One case is run in float64: a one-step LCM on the squared-cosine schedule starts at
# alpha_bar_999 ~ 1e-9 (betas clipped at 0.999), where x_0 = (x - sqrt(1 - alpha_bar) eps) /
# sqrt(alpha_bar) cancels x against 0.999 x: the float32 rounding of the toy's inputs alone
# moves the result by ~1e-4 relative (1.1e-4 NumPy, 0.8e-4 PyTorch, 1.5e-4 JAX against the
# float64 loop), the size of the tolerance. The recorded values agree with the float64 loop.
FLOAT64 = {(ds.LCM, "squared_cosine")}


def _dummy_sample(backend: str, dtype=np.float32):
    """Bumblebee's ``dummy_sample``: ``iota({8, 8, 4}) / 256`` (float32 there)."""
    x = (np.arange(256, dtype=np.float64).reshape(8, 8, 4) / 256).astype(dtype)
    if backend == "torch":
        return torch.from_numpy(x)
    if backend == "jax":
        return jax.numpy.asarray(x)
    return x


def _key(backend: str):
    if backend == "jax":
        return jax.random.key(0)
    return 0


def _loop(
    scheduler, num_steps: int, backend: str, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Bumblebee's ``scheduler_loop``: the model is ``sample * t / (t + 1)``."""
    sample = _dummy_sample(backend, dtype)
    state, timesteps = scheduler.init(num_steps, sample, _key(backend))
    for i in range(len(timesteps)):
        t = timesteps[i]
        prediction = sample * t / (t + 1)
        state, sample = scheduler.step(state, sample, prediction)
    return np.asarray(sample), np.asarray(timesteps)


def _all_close(actual, expected, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """``Nx.all_close``: |a - b| <= atol + rtol |b| everywhere.

    The recorded values are rounded to 4 decimals; the largest use of the tolerance here
    is 0.49 of it (that rounding), the backends' own float32 differences ~1e-6 of it.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    ratio = np.abs(actual - expected) / (atol + rtol * np.abs(expected))
    assert np.all(ratio <= 1), (actual, expected, ratio.max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("cls", "name", "steps", "options", "block", "total"),
    CASES,
    ids=[f"{c[0].__name__}-{c[1]}" for c in CASES],
)
def test_bumblebee_loop(cls, name, steps, options, block, total, backend):
    dtype = np.float64 if (cls, name) in FLOAT64 else np.float32
    with jax_x64() if dtype == np.float64 else contextlib.nullcontext():
        sample, _ = _loop(cls(**options), steps, backend, dtype)
    assert sample.dtype == dtype, "the template's dtype is the loop's"
    _all_close(sample[1:4, 1:4, 1:3], block)
    _all_close(sample.sum(dtype=np.float64), total)


@pytest.mark.parametrize(
    ("scheduler", "steps", "expected"),
    [
        (ds.DDIM(), 10, [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        (ds.PNDM(), 4, [750, 625, 625, 500, 500, 375, 375, 250, 250, 125, 125, 0, 0]),
        (
            ds.PNDM(),
            10,
            [
                *(900, 850, 850, 800, 800, 750, 750, 700, 700, 650, 650, 600, 600),
                *(500, 400, 300, 200, 100, 0),
            ],
        ),
        (ds.PNDM(reduce_warmup=True), 2, [500, 0, 0]),
        (ds.PNDM(reduce_warmup=True), 4, [750, 500, 500, 250, 0]),
        (ds.PNDM(reduce_warmup=True), 10, [900, 800, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        (ds.LCM(), 10, [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        (ds.LCM(), 3, [999, 679, 339]),
        (ds.LCM(), 1, [999]),
    ],
    ids=lambda v: repr(v)[:40] if not isinstance(v, list) else str(len(v)),
)
def test_bumblebee_timesteps(scheduler, steps, expected):
    _, timesteps = scheduler.init(steps, np.zeros((8, 8, 4), np.float32), 0)
    np.testing.assert_array_equal(np.asarray(timesteps), expected)


def test_bumblebee_lcm_timesteps_decrease():
    _, timesteps = ds.LCM().init(4, np.zeros((1, 32, 32, 4), np.float32), 0)
    assert np.all(np.diff(np.asarray(timesteps)) < 0)


@pytest.mark.parametrize(
    ("scheduler", "steps", "kwargs", "match"),
    [
        (ds.PNDM(), 2, {}, r"at least 4 steps, got: 2"),
        (ds.LCM(), 1001, {}, r"at most num_train_steps=1000, got: 1001"),
        (ds.LCM(), 50, {"strength": 0.5}, r"num_original_steps \* strength.*50 \* 0\.5"),
        (ds.LCM(), 51, {}, r"at most num_original_steps=50, got: 51"),
    ],
)
def test_bumblebee_invalid_inputs(scheduler, steps, kwargs, match):
    template = np.zeros((1, 32, 32, 4), np.float32)
    with pytest.raises(ValueError, match=match):
        scheduler.init(steps, template, 0, **kwargs)
