"""The flow-matching schedulers against diffusers 0.42.1: FlowMatchEuler, FlowMatchHeun and
FlowMatchLCM over a grid of options and step counts, the published configs of SD3, FLUX.1,
LTX-Video, Wan 2.1 and Sana, image-to-image, configs and errors.

Every option value is covered at least once (not every product), each at a few step counts
from 1 to 1000; see ``sigma_parity`` for how the loops are driven. Stochastic loops get the
same noise on both sides (diffusers' ``randn_tensor`` draws replaced by ours).
"""

from __future__ import annotations

import ast
import inspect
import json
import warnings
from pathlib import Path

import diffusers
import numpy as np
import oracle
import pytest
import sigma_parity
import torch

import diffsched as ds
from diffsched.core.options import STEP_TIME, diffusers_options, specs
from diffsched.interop import config as config_module
from diffsched.interop import peer
from diffsched.methods.flow_match import FlowMatchEuler, FlowMatchHeun, FlowMatchLCM
from diffsched.schedules import shifts

FLOW_CLASSES = (FlowMatchEuler, FlowMatchHeun, FlowMatchLCM)
FIXTURES = Path(__file__).parent / "fixtures"
DYN = {"use_dynamic_shifting": True}
LTX = {
    "use_dynamic_shifting": True,
    "base_shift": 0.95,
    "max_shift": 2.05,
    "base_image_seq_len": 1024,
    "max_image_seq_len": 4096,
    "shift_terminal": 0.1,
}
CHURN = {"s_churn": 1.0, "s_tmin": 0.2, "s_tmax": 0.9, "s_noise": 1.003}


def _calculate_shift():
    """diffusers' own ``calculate_shift`` (FLUX pipeline), read from its source: importing
    the pipeline module needs transformers, which the tests do not install."""
    path = Path(diffusers.__file__).parent / "pipelines" / "flux" / "pipeline_flux.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    node = next(
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "calculate_shift"
    )
    namespace: dict = {}
    exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
    return namespace["calculate_shift"]


calculate_shift = _calculate_shift()

# (scheduler, step counts, init options given to both init and diffusers' set_timesteps)
E, H, L = FlowMatchEuler, FlowMatchHeun, FlowMatchLCM
EULER_CASES = [
    (E(), (1, 2, 10, 50, 1000), {}),
    (E(shift=3.0), (1, 4, 28), {}),  # SD3
    (E(shift=0.5), (3, 17), {}),
    (E(shift=7.5, num_train_steps=500), (2, 20), {}),
    (E(**DYN), (1, 8, 28), {"mu": 0.5}),
    (E(**DYN), (3, 28), {"mu": 1.15}),
    (E(**DYN), (5, 50), {"mu": 2.3}),
    (E(**DYN, shift=3.0), (6,), {"mu": -0.4}),  # the static shift is not used
    (E(**DYN, time_shift_type="linear"), (1, 9, 30), {"mu": 0.7}),
    (E(**DYN, time_shift_type="linear"), (12,), {"mu": 2.0}),
    (E(shift=3.0, shift_terminal=0.05), (2, 25), {}),
    (E(**LTX), (2, 40), {"mu": 1.9}),
    (E(shift=3.0, invert_sigmas=True), (1, 7, 30), {}),
    (E(**DYN, invert_sigmas=True), (10,), {"mu": 1.0}),
    (E(shift=3.0, use_karras_sigmas=True), (2, 12, 40), {}),
    (E(**DYN, use_karras_sigmas=True), (15,), {"mu": 1.1}),
    (E(shift=3.0, use_exponential_sigmas=True), (2, 15), {}),
    (E(shift=3.0, use_beta_sigmas=True), (2, 15), {}),
    (E(shift=2.0, shift_terminal=0.2, use_karras_sigmas=True), (10,), {}),
    (E(stochastic_sampling=True), (1, 6, 30), {}),
    (E(shift=3.0, stochastic_sampling=True, use_exponential_sigmas=True), (9,), {}),
    (E(**DYN, stochastic_sampling=True), (12,), {"mu": 0.9}),
    (E(shift=3.0), (10, 28), {"strength": 0.6}),
    (E(shift=3.0), (7,), {"strength": 0.3}),  # the flow cut: int(7 - 2.1) = 4 steps skipped
    (E(**DYN), (20,), {"mu": 1.2, "strength": 0.75}),
]
HEUN_CASES = [
    (H(), (1, 2, 10, 50), {}),
    (H(shift=3.0), (1, 5, 28, 1000), {}),
    (H(shift=0.7, num_train_steps=500), (3, 12), {}),
    (H(shift=3.0, **CHURN), (1, 4, 20), {}),
    (H(s_churn=30.0), (6,), {}),  # γ capped at sqrt(2) - 1
    (H(shift=3.0), (10, 25), {"strength": 0.6}),
    (H(shift=3.0, s_churn=2.0), (10,), {"strength": 0.45}),
]
LCM_CASES = [
    (L(), (1, 2, 4, 8), {}),
    (L(shift=3.0), (4, 30), {}),
    (L(**DYN), (4, 12), {"mu": 1.4}),
    (L(**DYN, time_shift_type="linear"), (6,), {"mu": 0.8}),
    (L(**LTX), (8,), {"mu": 2.0}),
    (L(shift=3.0, use_karras_sigmas=True), (6,), {}),
    (L(shift=3.0, use_exponential_sigmas=True), (6,), {}),
    (L(shift=3.0, use_beta_sigmas=True), (6,), {}),
    (L(shift=3.0, invert_sigmas=True), (5,), {}),
    (L(shift=3.0), (8,), {"strength": 0.5}),
    (L(shift=1.5, num_train_steps=700), (5,), {}),
]


@pytest.mark.parametrize(
    ("sched", "n", "options"), oracle.grid(EULER_CASES + HEUN_CASES + LCM_CASES)
)
def test_parity_float64(sched, n, options):
    sigma_parity.check(sched, n, **options)


def test_grid_covers_every_option():
    """Every option of every class takes a non-default value somewhere in the grid."""
    for cls, cases in ((E, EULER_CASES), (H, HEUN_CASES), (L, LCM_CASES)):
        seen = {
            name
            for sched, _, _ in cases
            for name in specs(cls)
            if getattr(sched, name) != getattr(cls(), name)
        }
        fixed = {"prediction_type", "scale_factors"}  # one value only
        # ours alone (no diffusers key): no diffusers run to hold them to (tests/test_grids.py)
        fixed |= {n for n, (_, spec) in specs(cls).items() if spec.diffusers_key is None}
        # base_image_seq_len etc. change the grid only through image_seq_len= (tested below)
        through_seq_len = {"base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len"}
        missing = set(specs(cls)) - seen - fixed - through_seq_len
        assert not missing, (cls.__name__, missing)
        assert any("strength" in o for _, _, o in cases)


@pytest.mark.parametrize(
    ("sched", "n", "options"),
    [
        (E(shift=3.0), 20, {}),
        (E(**DYN, stochastic_sampling=True), 12, {"mu": 1.0}),
        (H(shift=3.0, **CHURN), 10, {}),
        (L(shift=3.0), 6, {}),
    ],
)
def test_parity_float32(sched, n, options):
    """Against diffusers' own float32 tables and loop."""
    sigma_parity.check(sched, n, dtype=torch.float32, **options)


@pytest.mark.parametrize(
    ("sched", "n"),
    [(E(shift=3.0, stochastic_sampling=True), 8), (H(shift=3.0, **CHURN), 6), (L(shift=3.0), 4)],
    ids=lambda x: type(x).__name__ if not isinstance(x, int) else str(x),
)
def test_stochastic_with_diffusers_own_draws(sched, n):
    """diffusers draws its noise itself (its randn_tensor, a seeded generator); the draws
    are recorded and given to our steps, call by call."""
    from unittest import mock

    config = sched.to_config()
    module = peer.module_of(config)
    d = peer.scheduler({k: v for k, v in config.items() if k != "_diffsched"})
    with peer._double_tables(module):
        d.set_timesteps(n)
    peer._double_grids(d)
    draws: dict[int, torch.Tensor] = {}
    current = [0]
    original = module.randn_tensor

    def recording(*args, **kwargs):
        draws[current[0]] = original(*args, **kwargs)
        return draws[current[0]]

    model = oracle.linear_tanh_model()
    start = oracle.start_sample()
    generator = torch.Generator().manual_seed(11)
    x = start
    # float64 tables (diffusers' step "upcasts" the sample to float32, even a float64 one)
    with peer._double_tables(module), mock.patch.object(module, "randn_tensor", recording):
        for i, t in enumerate(d.timesteps):
            current[0] = i
            x = d.step(model(x, t), t, x, generator=generator, **config.get("_diffsched", {}))
            x = x.prev_sample
    assert draws and all(z.dtype == torch.float64 for z in draws.values())
    state, ts = sched.init(n, start)
    y = start
    for i, t in enumerate(ts):
        z = draws.get(i, torch.zeros_like(start))  # Heun's calls without churn draw nothing
        state, y = sched.step(state, y, model(y, t), noise=z)
    oracle.check(y, x, "PARITY diffusers' own noise", type(sched).__name__, sigma_parity.F64_BOUND)


# -- the grid: bit-identical timesteps, custom grids, image_seq_len ---------------------------


def _diffusers(sched, float64=False):
    config = {k: v for k, v in sched.to_config().items() if k != "_diffsched"}
    return peer.scheduler(config, float64=float64)


@pytest.mark.parametrize(
    ("sched", "options"),
    [
        (E(shift=1.7, num_train_steps=500), {}),
        (E(shift=5.0), {}),
        (E(**DYN, time_shift_type="linear"), {"mu": 1.7}),
        (E(**LTX), {"mu": 2.2}),
        (E(shift=3.0, use_karras_sigmas=True), {}),
        (E(shift=3.0, use_beta_sigmas=True), {}),
        (E(shift=3.0, invert_sigmas=True), {}),
        (H(shift=3.7), {}),
        (L(shift=2.5, use_exponential_sigmas=True), {}),
    ],
)
def test_timesteps_are_diffusers_float32_timesteps(sched, options):
    """The levels are rounded as diffusers rounds them: the timesteps are equal to the bit."""
    d = _diffusers(sched)
    for n in (2, 7, 28, 333):
        d.set_timesteps(n, **options)
        _, ts = sched.init(n, np.zeros(3), **options)
        assert ts.tolist() == d.timesteps.double().tolist(), n


@pytest.mark.parametrize("cls", [E, L])
@pytest.mark.parametrize(
    ("config", "custom"),
    [
        ({"shift": 3.0}, {"sigmas": list(np.linspace(1.0, 1 / 13, 13))}),  # the FLUX pipeline
        ({**DYN}, {"sigmas": list(np.linspace(1.0, 1 / 13, 13)), "mu": 1.1}),
        (LTX, {"sigmas": list(np.linspace(1.0, 1 / 13, 13)), "mu": 2.0}),
        ({"shift": 3.0, "use_karras_sigmas": True}, {"sigmas": [1.0, 0.9, 0.6, 0.4, 0.2, 0.1]}),
        ({"shift": 3.0}, {"timesteps": [1000.0, 900.5, 700.0, 420.0, 100.0, 20.0]}),
        ({**DYN}, {"timesteps": [999.0, 800.0, 600.0, 300.0], "mu": 0.6}),
        (
            {"shift": 2.0},
            {"sigmas": [1.0, 0.75, 0.5, 0.25], "timesteps": [990.0, 740.0, 510.0, 240.0]},
        ),
    ],
)
def test_custom_grids(cls, config, custom):
    """Custom ``sigmas=`` (N levels, shifted, final 0 appended) and ``timesteps=``, as
    diffusers' set_timesteps takes them, with num_steps None or N; timesteps to the bit."""
    sched = cls(**config)
    n = len(custom.get("sigmas", custom.get("timesteps")))
    # the harness draws noise for 8 calls when num_steps is None: stochastic loops pass N
    for num_steps in (None, n) if sched.deterministic else (n,):
        sigma_parity.check(
            sched, num_steps, **custom, label="PARITY custom grid", name=cls.__name__
        )
    d = _diffusers(sched)
    d.set_timesteps(**custom)
    _, ts = sched.init(None, np.zeros(3), **custom)
    assert ts.tolist() == d.timesteps.double().tolist()


@pytest.mark.parametrize("image_seq_len", [64, 256, 1024, 4096, 6930])
@pytest.mark.parametrize("config", [{**DYN}, LTX, {**DYN, "time_shift_type": "linear"}])
def test_image_seq_len_is_calculate_shift(config, image_seq_len):
    """init(image_seq_len=n) is set_timesteps(mu=calculate_shift(n, ...)) (FLUX pipeline)."""
    sched = E(**config)
    mu = calculate_shift(
        image_seq_len,
        sched.base_image_seq_len,
        sched.max_image_seq_len,
        sched.base_shift,
        sched.max_shift,
    )
    assert (
        shifts.mu_from_image_seq_len(
            image_seq_len,
            sched.base_image_seq_len,
            sched.max_image_seq_len,
            sched.base_shift,
            sched.max_shift,
        )
        == mu
    )
    if config.get("time_shift_type") == "linear" and mu <= 0:
        return
    d = _diffusers(sched)
    d.set_timesteps(28, mu=mu)
    _, ts = sched.init(28, np.zeros(3), image_seq_len=image_seq_len)
    assert ts.tolist() == d.timesteps.double().tolist()
    r = sigma_parity.compare(sched, 28, image_seq_len=image_seq_len, set_timesteps={"mu": mu})
    assert r < sigma_parity.F64_BOUND


def test_mu_and_image_seq_len_are_ignored_without_dynamic_shifting():
    """As in diffusers (the FLUX pipelines pass mu whatever the config)."""
    sched = E(shift=3.0)
    _, plain = sched.init(10, np.zeros(3))
    _, with_mu = sched.init(10, np.zeros(3), mu=2.0)
    _, with_len = sched.init(10, np.zeros(3), image_seq_len=4096)
    assert plain.tolist() == with_mu.tolist() == with_len.tolist()


# -- image-to-image ------------------------------------------------------------------------


def _img2img_diffusers(config, n, strength, clean, noise):
    """(first model input, timesteps) as the SD3 / FLUX img2img pipelines form them."""
    d = peer.scheduler(config)
    d.set_timesteps(n)
    t_start = int(max(n - min(n * strength, n), 0))
    timesteps = d.timesteps[t_start * d.order :]
    d.set_begin_index(t_start * d.order)
    return d.scale_noise(clean, timesteps[:1], noise), timesteps


@pytest.mark.parametrize(
    ("sched", "n", "strength"),
    [
        (E(shift=3.0), 28, 0.6),
        (E(shift=3.0), 10, 0.55),  # int(10 - 5.5) = 4 skipped (the VP pipelines skip 5)
        (E(shift=3.0), 4, 0.01),  # the flow cut keeps at least one step
        (E(stochastic_sampling=True), 12, 0.8),
        (H(shift=3.0), 10, 0.45),
        (H(shift=3.0, **CHURN), 9, 0.7),
        (L(shift=3.0), 8, 0.5),
        (E(shift=3.0), 5, 1.0),
    ],
)
def test_img2img_loop(sched, n, strength):
    """add_noise is diffusers' scale_noise at the first kept call, and the loop from it
    matches diffusers' from its own start."""
    clean = oracle.start_sample(seed=3)
    noise = oracle.start_sample(seed=4)
    config = sched.to_config()
    theirs_start, their_ts = _img2img_diffusers(
        {k: v for k, v in config.items() if k != "_diffsched"}, n, strength, clean, noise
    )
    state, ts = sched.init(n, clean, strength=strength)
    ours_start = sched.add_noise(state, clean, noise)
    assert ts.tolist() == their_ts.tolist()
    assert oracle.rel(ours_start, theirs_start) < 1e-15
    model = oracle.linear_tanh_model()
    noises = oracle.noise_list(3 * n + 3)
    x = ours_start
    for i, t in enumerate(ts):
        kwargs = {} if sched.deterministic else {"noise": noises[i]}
        state, x = sched.step(state, x, model(x, t), **kwargs)
    _, theirs = peer.run(config, model, theirs_start, n, noises=noises, strength=strength)
    oracle.check(x, theirs, "PARITY img2img", type(sched).__name__, sigma_parity.F64_BOUND)


# -- the published configs -------------------------------------------------------------------


def load(name: str) -> dict:
    with open(FIXTURES / name / "scheduler" / "scheduler_config.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture
def flow_registry(monkeypatch):
    """diffsched.from_config with the flow classes registered (the lead registers them in
    diffsched.methods.ALL; until then they are added to the registry here)."""
    original = config_module.registry
    monkeypatch.setattr(
        config_module,
        "registry",
        lambda: {**original(), **{cls.DIFFUSERS_CLASS: cls for cls in FLOW_CLASSES}},
    )


FLOW_FIXTURES = {
    "sd3_medium": E(shift=3.0),
    "flux1_dev": E(shift=3.0, use_dynamic_shifting=True),
    "flux1_schnell": E(),
    "ltx_video": E(**LTX),
}


@pytest.mark.parametrize("name", list(FLOW_FIXTURES))
def test_fixture_reads_as_expected(name, flow_registry):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every published key is an option
        assert ds.from_config(FIXTURES / name) == FLOW_FIXTURES[name]
        assert ds.from_config(load(name)) == FLOW_FIXTURES[name]


@pytest.mark.parametrize(
    "name",
    [
        "sd3_medium",
        "flux1_dev",
        "flux1_schnell",
        "ltx_video",
        "wan21_t2v_1.3b",
        "sana_1600m_1024px",
    ],
)
def test_fixture_keys_are_diffusers_init_keys(name):
    """Each published key is a keyword of its class's __init__ in diffusers 0.42.1."""
    config = load(name)
    params = inspect.signature(getattr(diffusers, config["_class_name"]).__init__).parameters
    assert set(k for k in config if not k.startswith("_")) <= set(params)


@pytest.mark.parametrize(
    ("name", "n", "image_seq_len"),
    [
        ("sd3_medium", 28, None),  # SD3: set_timesteps(N)
        ("flux1_dev", 28, 4096),  # 1024 x 1024: (1024 / 16)² tokens
        ("flux1_dev", 50, 1024),
        ("flux1_schnell", 4, 4096),
        ("ltx_video", 50, 21 * 15 * 22),  # 704 x 480, 161 frames
    ],
)
def test_fixture_loop_matches_diffusers(name, n, image_seq_len, flow_registry):
    """Each model's scheduler driven as its pipeline drives it: FLUX and LTX-Video pass
    sigmas = linspace(1, 1/N, N) and mu = calculate_shift(tokens, config...)."""
    config = load(name)
    sched = ds.from_config(config)
    if image_seq_len is None:
        ours, theirs = {}, {}
    else:
        sigmas = list(np.linspace(1.0, 1 / n, n))
        mu = calculate_shift(
            image_seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        ours = {"sigmas": sigmas, "image_seq_len": image_seq_len}
        theirs = {"sigmas": sigmas, "mu": mu}
    sigma_parity.check(
        sched,
        n,
        config=config,
        set_timesteps=theirs,
        **ours,
        label="CONFIG flow fixtures vs diffusers",
        name=name,
    )
    d = peer.scheduler(config, float64=False)
    d.set_timesteps(n, **theirs)
    assert sched.init(n, np.zeros(3), **ours)[1].tolist() == d.timesteps.double().tolist()


@pytest.mark.parametrize(
    ("name", "cls_name"),
    [("wan21_t2v_1.3b", "UniPC"), ("sana_1600m_1024px", "DPMSolverMultistep")],
)
def test_fixture_of_a_solver_with_flow_sigmas(name, cls_name):
    """Wan 2.1 (UniPC) and Sana (DPM-Solver++) sample flow models with flow sigmas."""
    cls = getattr(ds, cls_name, None)
    if cls is None:
        pytest.skip(f"diffsched has no {cls_name} yet")
    config = load(name)
    sched = ds.from_config(config)
    assert isinstance(sched, cls)
    sigma_parity.check(
        sched, 30, config=config, label="CONFIG flow fixtures vs diffusers", name=name
    )


# -- configs -----------------------------------------------------------------------------------

ROUND_TRIP = [
    E(),
    E(**LTX, invert_sigmas=True, time_shift_type="linear"),
    E(shift=3.0, use_beta_sigmas=True, stochastic_sampling=True, num_train_steps=500),
    H(shift=3.0, **CHURN),
    L(shift=2.0, use_karras_sigmas=True),
]


@pytest.mark.parametrize("sched", ROUND_TRIP, ids=lambda s: type(s).__name__)
def test_to_config_round_trips_and_diffusers_builds_it(sched, flow_registry):
    config = sched.to_config()
    assert config["_class_name"] == sched.DIFFUSERS_CLASS
    json.dumps(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds.from_config(config) == sched
    built = getattr(diffusers, config["_class_name"]).from_config(config)
    for _, key, _, _ in diffusers_options(type(sched)):
        assert built.config[key] == config[key], key
    if isinstance(sched, H):
        assert config["_diffsched"] == CHURN
    else:
        assert "_diffsched" not in config


@pytest.mark.parametrize("cls", FLOW_CLASSES)
def test_options_are_the_diffusers_class_keywords(cls):
    """The config options (and accepted inert keys) are exactly the diffusers __init__
    keywords; the step-time options are keywords of its step."""
    d = getattr(diffusers, cls.DIFFUSERS_CLASS)
    init = set(inspect.signature(d.__init__).parameters) - {"self"}
    ours = {key for _, key, _, _ in diffusers_options(cls)}
    assert ours | cls.INERT_KEYS == init
    step_time = {name for name, (_, spec) in specs(cls).items() if spec.diffusers_key == STEP_TIME}
    assert step_time <= set(inspect.signature(d.step).parameters)


def test_facts():
    assert (E.ORDER, E.CALLS_PER_STEP, H.ORDER, H.CALLS_PER_STEP, L.ORDER) == (1, 1, 2, 2, 1)
    for cls in FLOW_CLASSES:
        assert cls.PREDICTION_TYPES == ("flow",) and cls().prediction_type == "flow"
        assert not cls.TRAINING_TIMESTEPS
        doc = cls.__doc__
        assert cls.DIFFUSERS_CLASS in doc and "Not to be confused with" in doc
    assert E().deterministic and not E(stochastic_sampling=True).deterministic
    assert H().deterministic and not H(s_churn=0.5).deterministic
    assert not L().deterministic
    assert E().init_noise_scale(10) == 1.0
    _, ts = H(shift=3.0).init(4, np.zeros(2))
    assert len(ts) == 7 and ts[1] == ts[2]


def test_noise_levels():
    """(σ of the first call, σ of the final sample) for the exact flow reference."""
    assert E(shift=3.0).noise_levels(10) == (1.0, 0.0)
    sig = E(shift=3.0).tableau(10).start[1]
    assert sig == 1.0
    start, end = E(shift=3.0).noise_levels(10, strength=0.5)
    _, ts = E(shift=3.0).init(10, np.zeros(2), strength=0.5)
    assert start == pytest.approx(float(ts[0]) / 1000, rel=1e-6) and end == 0.0
    assert H(shift=3.0).noise_levels(5, strength=0.6)[0] == start_of(H(shift=3.0), 5, 0.6)
    assert L(**DYN).noise_levels(4, mu=1.0)[1] == 0.0
    with pytest.raises(ValueError, match="invert_sigmas"):
        E(invert_sigmas=True).noise_levels(10)


def start_of(sched, n, strength):
    state, _ = sched.init(n, np.zeros(1), strength=strength)
    return float(sched.add_noise(state, np.zeros(1), np.ones(1))[0])


# -- backends ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sched", "options"),
    [(E(**DYN, stochastic_sampling=True), {"mu": 0.8}), (H(shift=3.0, **CHURN), {}), (L(), {})],
    ids=lambda x: type(x).__name__ if not isinstance(x, dict) else "",
)
def test_numpy_torch_jax_agree(sched, options):
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 3, 4))
    w = rng.standard_normal((4, 4)) / 2
    noises = rng.standard_normal((40, 2, 3, 4))
    results = []
    for wrap in (np.asarray, torch.asarray, jnp.asarray):
        state, ts = sched.init(5, wrap(x0), **options)
        x = wrap(x0)
        for i, t in enumerate(ts):
            out = (x @ wrap(w)) * (1 + 1e-3 * float(t))
            kwargs = {} if sched.deterministic else {"noise": wrap(noises[i])}
            state, x = sched.step(state, x, out, **kwargs)
        results.append(np.asarray(x))
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-12, atol=1e-12)


# -- errors ------------------------------------------------------------------------------------

X = np.zeros((1, 2))


def test_dynamic_shifting_needs_mu_or_image_seq_len():
    for cls in (E, L):
        with pytest.raises(ValueError, match=r"pass mu= .* or image_seq_len="):
            cls(**DYN).init(10, X)
        with pytest.raises(ValueError, match="at most one of mu= and image_seq_len="):
            cls(**DYN).init(10, X, mu=1.0, image_seq_len=1024)
    with pytest.raises(TypeError, match="image_seq_len must be an integer"):
        E(**DYN).init(10, X, image_seq_len=1024.0)
    with pytest.raises(ValueError, match="image_seq_len must be at least 1"):
        E(**DYN).init(10, X, image_seq_len=0)
    with pytest.raises(ValueError, match="base_image_seq_len and max_image_seq_len to differ"):
        E(**DYN, base_image_seq_len=512, max_image_seq_len=512).init(10, X, image_seq_len=600)
    with pytest.raises(ValueError, match="mu must be finite"):
        E(**DYN).init(10, X, mu=float("nan"))
    with pytest.raises(ValueError, match="linear time shift needs mu > 0"):
        E(**DYN, time_shift_type="linear").init(10, X, mu=0.0)


def test_lcm_upscaling_is_not_supported(flow_registry):
    with pytest.raises(ValueError, match="scale_factors"):
        L(scale_factors=(1.5, 2.0))
    config = {"_class_name": "FlowMatchLCMScheduler", "scale_factors": [1.5, 2.0]}
    with pytest.raises(ValueError, match="scale_factors"):
        ds.from_config(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # upscale_mode alone does nothing: accepted quietly
        assert ds.from_config({**config, "scale_factors": None, "upscale_mode": "nearest"}) == L()


def test_option_errors():
    with pytest.raises(ValueError, match=r"prediction_type must be one of \('flow',\)"):
        E(prediction_type="noise")
    with pytest.raises(ValueError, match="diffusers' name for prediction_type='flow'"):
        H(prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="at most one of use_karras_sigmas"):
        E(use_karras_sigmas=True, use_beta_sigmas=True)
    with pytest.raises(ValueError, match="time_shift_type must be one of"):
        L(time_shift_type="cosine")
    with pytest.raises(ValueError, match="shift must lie in"):
        E(shift=0.0)
    with pytest.raises(ValueError, match="shift_terminal must lie in"):
        E(shift_terminal=1.0)
    with pytest.raises(TypeError, match="has no option"):
        E(s_churn=1.0)  # diffusers' Euler step takes it and ignores it: not an option here


def test_grid_errors():
    with pytest.raises(ValueError, match="disagrees with the custom grid, which gives 3"):
        E().init(4, X, sigmas=[1.0, 0.5, 0.2])
    with pytest.raises(ValueError, match="same length"):
        E().init(None, X, sigmas=[1.0, 0.5, 0.2], timesteps=[900.0, 400.0])
    with pytest.raises(ValueError, match="non-increasing"):
        E().init(None, X, sigmas=[0.5, 1.0])
    with pytest.raises(ValueError, match=r"sigmas must lie in \[0.0, 1.0\]"):
        L().init(None, X, sigmas=[1.5, 1.0])
    with pytest.raises(ValueError, match=r"shift_terminal=0.1 .* use more steps"):
        E(shift_terminal=0.1).init(1, X)
    with pytest.raises(ValueError, match="strength must be a number in"):
        H().init(4, X, strength=0.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        H().init(4, X, sigmas=[1.0, 0.5, 0.2, 0.1])  # diffusers' Heun has no custom grid
