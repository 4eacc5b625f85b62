"""The adapter's diffusers API surface that diffusers' own scheduler tests exercise
(benchmarks/diffusers_own_tests.py): the step output as a mapping, ``save_config``, and the
state before ``set_timesteps`` (diffusers' classes set up the loop over every training step
in ``__init__``), each compared with diffusers' own class of the same config."""

from __future__ import annotations

import json
import tempfile
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffsched as ds  # noqa: E402
from diffsched.diffusers import DiffusersScheduler, SchedulerOutput  # noqa: E402
from diffsched.interop import peer  # noqa: E402

SD = dict(beta_schedule="quadratic", beta_start=0.00085, beta_end=0.012)


def twin(sched):
    """diffusers' own class of the same config."""
    config = sched.to_config()
    cls = getattr(diffusers, config["_class_name"])
    return cls.from_config({k: v for k, v in config.items() if not k.startswith("_diffsched")})


def test_step_output_is_a_mapping_like_diffusers():
    adapter, theirs = DiffusersScheduler(ds.DDIM(**SD)), twin(ds.DDIM(**SD))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for s in (adapter, theirs):
        s.set_timesteps(5)
    t = theirs.timesteps[0]
    ours, want = adapter.step(0.1 * x, t, x), theirs.step(0.1 * x, t, x)
    assert list(ours.keys()) == list(want.keys()) == ["prev_sample", "pred_original_sample"]
    rel = float(
        (ours["prev_sample"] - want["prev_sample"]).abs().max() / want["prev_sample"].abs().max()
    )
    assert rel < 1e-6, rel  # observed 4e-8 (diffusers' float32 ᾱ table)
    assert torch.equal(ours.values()[1], ours.pred_original_sample)
    assert [k for k, _ in ours.items()] == list(ours.keys())
    assert len(ours.to_tuple()) == 2 and ours[0] is ours.prev_sample
    with pytest.raises(KeyError):
        ours["sample"]
    # a field that is None is not a key (diffusers' BaseOutput)
    out = SchedulerOutput(x)
    assert list(out.keys()) == ["prev_sample"] and out.to_tuple() == (x,) and len(out) == 2


def test_save_config_loads_in_diffusers_and_back(tmp_path):
    sched = ds.DPMSolverMultistep(**SD, solver_order=3, use_karras_sigmas=True)
    DiffusersScheduler(sched).save_config(tmp_path)
    theirs = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path)
    assert theirs.config.solver_order == 3 and theirs.config.use_karras_sigmas is True
    assert ds.from_config(tmp_path) == sched
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "DPMSolverMultistepScheduler"
    with pytest.raises(NotImplementedError, match="push_to_hub"):
        DiffusersScheduler(sched).save_config(tmp_path, push_to_hub=True)


@pytest.mark.parametrize(
    "sched",
    [ds.Euler(**SD), ds.LMS(**SD), ds.DDIM(**SD)],
    ids=lambda s: type(s).__name__,
)
def test_before_set_timesteps_as_diffusers(sched):
    """timesteps, init_noise_sigma, scale_model_input and step before set_timesteps: the
    loop over every training step, as diffusers' __init__ sets it up."""
    adapter, theirs = DiffusersScheduler(sched), twin(sched)
    assert adapter.timesteps.dtype == theirs.timesteps.dtype
    assert torch.equal(adapter.timesteps, theirs.timesteps)
    ours_sigma, their_sigma = adapter.init_noise_sigma, theirs.init_noise_sigma
    assert type(ours_sigma) is type(their_sigma)  # a tensor for Euler and LMS, a float for DDIM
    assert float(ours_sigma) == pytest.approx(float(their_sigma), rel=1e-6)
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = theirs.timesteps[0]
    got, want = adapter.scale_model_input(x, t), theirs.scale_model_input(x, t)
    assert torch.allclose(got, want, rtol=1e-6, atol=0)  # observed ~1e-8 (float32 σ)
    if isinstance(sched, ds.DDIM):  # diffusers' DDIM needs set_timesteps before step
        return
    ours = adapter.step(0.1 * x, t, x).prev_sample
    want = theirs.step(0.1 * x, t, x).prev_sample
    assert adapter.num_inference_steps == sched.num_train_steps
    rel = float((ours - want).abs().max() / want.abs().max())
    assert rel < 1e-5, rel  # observed ~1e-7 (diffusers' float32 σ table)


def test_init_noise_sigma_after_set_timesteps_type():
    for sched, kind in ((ds.Heun(**SD), torch.Tensor), (ds.DPMSolverMultistep(**SD), float)):
        adapter, theirs = DiffusersScheduler(sched), twin(sched)
        adapter.set_timesteps(6)
        theirs.set_timesteps(6)
        assert isinstance(adapter.init_noise_sigma, kind)
        assert isinstance(theirs.init_noise_sigma, kind)
        assert np.isclose(float(adapter.init_noise_sigma), float(theirs.init_noise_sigma))


def test_swap_drops_values_this_class_cannot_take():
    """diffusers' test_compatibles: a config saved by one class loaded into another. Euler's
    null sigma_min / sigma_max (EDM has no null) and DDPM's variance_type "fixed_small"
    (DPM-Solver reads only the learned ones) give this class's default, with a warning, as
    diffusers drops the keys another class left at its default (_use_default_values)."""
    euler = diffusers.EulerDiscreteScheduler().config  # sigma_min in _use_default_values
    theirs = diffusers.EDMEulerScheduler.from_config(euler)
    edm = ds.EDMEuler.from_config(dict(euler))
    assert (edm.sigma_min, edm.sigma_max) == (theirs.config.sigma_min, theirs.config.sigma_max)
    saved = DiffusersScheduler(ds.Euler()).config  # ours: every key, null sigma_min
    assert saved["sigma_min"] is None and "_use_default_values" not in saved
    with pytest.warns(UserWarning, match=r"\['sigma_max', 'sigma_min'\]"):
        edm = ds.EDMEuler.from_config(dict(saved))
    assert (edm.sigma_min, edm.sigma_max) == (theirs.config.sigma_min, theirs.config.sigma_max)
    ddpm = diffusers.DDPMScheduler(variance_type="fixed_small").config
    with pytest.warns(UserWarning, match="variance_type"):
        ours = ds.DPMSolverMultistep.from_config(dict(ddpm))
    assert ours.variance_type is None
    their_dpm = diffusers.DPMSolverMultistepScheduler.from_config(ddpm)
    adapter = DiffusersScheduler(ours)
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for s in (adapter, their_dpm):
        s.set_timesteps(5)
    t = their_dpm.timesteps[0]
    got = adapter.step(0.1 * x, t, x).prev_sample
    want = their_dpm.step(0.1 * x, t, x).prev_sample
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6  # observed ~1e-8
    # the class's own config keeps its check
    with pytest.raises(ValueError, match="variance_type"):
        ds.DPMSolverMultistep.from_config({**ddpm, "_class_name": "DPMSolverMultistepScheduler"})


def test_another_class_keys_stay_in_the_config_as_diffusers():
    """diffusers' test_compatibles: a config goes through another class and back unchanged.
    diffusers registers the keys a class lacks to its config (its hidden_dict); so does the
    adapter given the config it was made from (and its from_config): DPMSolverSDE's
    noise_sampler_seed through Euler."""
    sde = DiffusersScheduler(ds.DPMSolverSDE(noise_sampler_seed=3, **SD))
    theirs = diffusers.EulerDiscreteScheduler.from_config(sde.config)
    euler = DiffusersScheduler(ds.Euler.from_config(dict(sde.config)), sde.config)
    assert theirs.config["noise_sampler_seed"] == euler.config["noise_sampler_seed"] == 3
    assert euler.wrapped == ds.Euler(**SD)  # the key is carried, not read
    back = DiffusersScheduler(ds.DPMSolverSDE.from_config(dict(euler.config)), euler.config)
    theirs_only = {
        k: v
        for k, v in euler.config.items()
        if not k.startswith("_diffsched") and k != "_use_default_values"
    }
    assert dict(back.config) == {**theirs_only, **dict(sde.config)}
    assert back.wrapped == sde.wrapped
    # the class method, a pipeline's register_to_config and save_pretrained keep them too
    with pytest.warns(UserWarning, match="noise_sampler_seed"):  # not a key of Euler's
        loaded = DiffusersScheduler.from_config(
            {**sde.config, "_class_name": "EulerDiscreteScheduler"}
        )
    assert loaded.config["noise_sampler_seed"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a kept key is not reported again
        loaded.register_to_config(steps_offset=1)
    assert loaded.config["noise_sampler_seed"] == 3 and loaded.wrapped.timesteps_offset == 1
    loaded.register_to_config(noise_sampler_seed=None)  # a new value is read again
    assert loaded.config["noise_sampler_seed"] is None
    # our own options travel with the class that wrote them only
    brownian = DiffusersScheduler(ds.EulerAncestral(noise_type="brownian"))
    assert "_diffsched_options" in brownian.config
    plain = DiffusersScheduler(ds.UniPC.from_config(dict(brownian.config)), brownian.config)
    assert "_diffsched_options" not in plain.config
    with pytest.raises(TypeError, match="config: expected a diffusers config"):
        DiffusersScheduler(ds.Euler(), config=[("a", 1)])


def test_keys_another_class_defaulted_take_this_class_default_again():
    """diffusers' test_compatibles, UniPC through EDM Euler and back: UniPC's null
    sigma_min is not EDM's, which takes its own default (0.002) and lists the key in its
    in-memory ``_use_default_values``; back in UniPC the key takes UniPC's default (None),
    as in diffusers. The list is diffusers' bookkeeping: never saved."""
    unipc = DiffusersScheduler(ds.UniPC())
    with pytest.warns(UserWarning, match="sigma_m"):
        edm = DiffusersScheduler(ds.EDMEuler.from_config(dict(unipc.config)), unipc.config)
    assert edm.config["sigma_min"] == 0.002
    assert {"sigma_min", "sigma_max"} <= set(edm.config["_use_default_values"])
    back = DiffusersScheduler(ds.UniPC.from_config(dict(edm.config)), edm.config)
    assert back.wrapped == unipc.wrapped and back.config["sigma_min"] is None
    theirs = diffusers.UniPCMultistepScheduler.from_config(
        diffusers.EDMEulerScheduler.from_config(diffusers.UniPCMultistepScheduler().config).config
    )
    assert theirs.config["sigma_min"] is None
    # a key set later is no longer at its default; the list is not written
    edm.register_to_config(sigma_min=0.01)
    assert edm.wrapped.sigma_min == 0.01 and "sigma_min" not in edm.config["_use_default_values"]
    with tempfile.TemporaryDirectory() as folder:
        edm.save_pretrained(folder)
        with open(f"{folder}/scheduler_config.json") as f:
            assert "_use_default_values" not in json.load(f)
    assert "_use_default_values" not in DiffusersScheduler(ds.Euler()).config


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(ds.DDPM(**SD), "DDPMScheduler"), (ds.LCM(**SD), "LCMScheduler"),
     (ds.TCD(**SD), "TCDScheduler"), (ds.DDPMParallel(**SD), "DDPMParallelScheduler")],
)  # fmt: skip
def test_previous_timestep_as_diffusers(ours, theirs):
    """diffusers' DDPM, LCM and TCD have ``previous_timestep`` (their tests and step use
    it): the loop's next timestep, -1 after the last; t - 1 before set_timesteps."""
    adapter, twin_ = DiffusersScheduler(ours), twin(ours)
    assert type(twin_).__name__ == theirs
    t = torch.tensor(500)
    assert int(adapter.previous_timestep(t)) == int(twin_.previous_timestep(t)) == 499
    for s in (adapter, twin_):
        s.set_timesteps(4)
    got = [int(adapter.previous_timestep(t)) for t in adapter.timesteps]
    assert got == [int(twin_.previous_timestep(t)) for t in twin_.timesteps]
    assert got[-1] == -1
    with pytest.raises(ValueError, match="not one of this loop's timesteps"):
        adapter.previous_timestep(torch.tensor(3))


def test_custom_timesteps_of_ddpm_and_previous_timestep():
    adapter = DiffusersScheduler(ds.DDPM(**SD))
    adapter.set_timesteps(timesteps=[100, 87, 50, 1, 0])
    assert [int(adapter.previous_timestep(t)) for t in adapter.timesteps] == [87, 50, 1, 0, -1]


@pytest.mark.parametrize(
    ("ours", "name"),
    [(ds.DDPM(), "DDPMScheduler"), (ds.Euler(), "EulerDiscreteScheduler"),
     (ds.CMStochasticIterative(), "CMStochasticIterativeScheduler"),
     (ds.DPMSolverMultistep(), "DPMSolverMultistepScheduler")],
)  # fmt: skip
def test_steps_with_a_custom_grid_refused_where_diffusers_refuses(ours, name):
    timesteps = [900, 500, 100] if name != "CMStochasticIterativeScheduler" else [22, 10, 0]
    with pytest.raises(ValueError):
        getattr(diffusers, name)().set_timesteps(3, timesteps=timesteps)
    with pytest.raises(ValueError, match="pass num_inference_steps or timesteps, not both"):
        DiffusersScheduler(ours).set_timesteps(3, timesteps=timesteps)
    DiffusersScheduler(ours).set_timesteps(timesteps=timesteps)  # alone, as diffusers
    both = DiffusersScheduler(ds.UniPC())  # diffusers' UniPC takes both
    both.set_timesteps(3, timesteps=[900, 500, 100])
    assert both.timesteps.tolist() == [900, 500, 100]


@pytest.mark.parametrize("ours", [ds.LCM(), ds.TCD(), ds.TCD(eta=0.0)], ids=repr)
def test_lcm_and_tcd_custom_timesteps_as_diffusers(ours):
    """``set_timesteps(timesteps=[...])`` (init's ``timesteps=``): diffusers' loop over
    custom training timesteps, the same draws from the same generator."""
    import warnings

    adapter, theirs = DiffusersScheduler(ours), twin(ours)
    custom = [999, 759, 500, 87, 1]  # three of them off the distillation schedule
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers warns about those three
        theirs.set_timesteps(timesteps=custom)
    adapter.set_timesteps(timesteps=custom)
    assert adapter.timesteps.tolist() == theirs.timesteps.tolist() == custom
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    outs = []
    for s, kwargs in ((adapter, {}), (theirs, {"eta": getattr(ours, "eta", 0.3)})):
        if isinstance(s, diffusers.LCMScheduler):
            kwargs = {}
        x, gen = start.clone(), torch.Generator().manual_seed(3)
        for t in s.timesteps:  # diffusers' TCD takes eta in step
            x = s.step(0.1 * x + 0.01, t, x, generator=gen, **kwargs).prev_sample
        outs.append(x)
    rel = float((outs[0] - outs[1]).abs().max() / outs[1].abs().max())
    assert rel < 1e-5  # observed 3e-7 (diffusers' float32 ᾱ)
    for bad in ([100, 87, 50, 51, 0], [1000], [3, -1]):
        with pytest.raises(ValueError, match="timesteps must be"):
            ours.init(None, np.zeros(2), 0, timesteps=bad)
    with pytest.raises(ValueError, match="custom timesteps take no strength"):
        ours.init(None, np.zeros(2), 0, timesteps=custom, strength=0.5)


@pytest.mark.parametrize(
    ("name", "config"),
    [("DDIMScheduler", {}), ("DDIMScheduler", {"clip_sample": True}),
     ("DDIMScheduler", {"prediction_type": "v_prediction"}),
     ("DDIMScheduler", {"set_alpha_to_one": False}),
     ("DDIMScheduler", {"thresholding": True, "prediction_type": "sample"}),
     ("DDIMParallelScheduler", {}), ("DDIMInverseScheduler", {}),
     ("DDIMInverseScheduler", {"set_alpha_to_one": False, "prediction_type": "v_prediction"})],
)  # fmt: skip
def test_ddim_steps_from_a_timestep_off_the_loop_as_diffusers(name, config):
    """diffusers' DDIM step reads only t and N (t -> t - T // N; the inverse: up to t from
    t - T // N): a step from a timestep that is not one of the loop's is that one step
    (``step_at``), not an error, with the same draw from the same generator; the loop's
    own position is unchanged."""
    theirs = getattr(diffusers, name)(**config)
    adapter = DiffusersScheduler.from_config({**dict(theirs.config), "_class_name": name})
    gen = torch.Generator().manual_seed(0)
    # diffusers' inverse step takes neither eta nor a generator
    kws = [{}] if name == "DDIMInverseScheduler" else [{"eta": 0.0}, {"eta": 0.5}]

    def seeded(kw: dict) -> dict:
        return {**kw, "generator": torch.Generator().manual_seed(1)} if kw else kw

    for n in (10, 50):
        theirs.set_timesteps(n)
        adapter.set_timesteps(n)
        for t in (1, 10, 49, 500, 999, int(theirs.timesteps[3])):
            x = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
            for kw in kws:
                a = theirs.step(0.1 * x, t, x, **seeded(kw))
                b = adapter.step(0.1 * x, t, x, **seeded(kw))
                for field in ("prev_sample", "pred_original_sample"):
                    got, want = getattr(b, field), getattr(a, field)
                    rel = float((got - want).abs().max() / want.abs().max())
                    assert rel < 5e-5, (t, kw, rel)  # observed 2.5e-6 (float32 ᾱ)
    # the loop itself: an off-loop step in between changes nothing of it
    adapter.set_timesteps(5)
    x = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64)
    plain, mixed = x.clone(), x.clone()
    for t in adapter.timesteps:
        plain = adapter.step(0.1 * plain, t, plain).prev_sample
    for t in adapter.timesteps:
        adapter.step(0.1 * x, 3, x)
        mixed = adapter.step(0.1 * mixed, t, mixed).prev_sample
    assert torch.equal(plain, mixed)


def test_ddim_next_has_no_step_off_the_loop():
    adapter = DiffusersScheduler(ds.DDIM(prev_timestep="next"))
    adapter.set_timesteps(5)
    x = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="no step from a timestep off the loop"):
        adapter.step(x, 3, x)
    with pytest.raises(ValueError, match="timestep must be an integer"):
        ds.DDIM().step_at(1000, 10)


def test_consistency_sigma_to_t_as_diffusers():
    adapter = DiffusersScheduler(ds.CMStochasticIterative())
    theirs = diffusers.CMStochasticIterativeScheduler()
    for sigma in (80.0, 0.002, np.array([1.0, 2.0]), 0.0):
        np.testing.assert_allclose(adapter.sigma_to_t(sigma), theirs.sigma_to_t(sigma), rtol=1e-15)
    # float32 in: diffusers computes in float32, ours in float64 (1 ulp of float32 apart)
    sigma = torch.tensor([0.5, 3.0])
    got = adapter.sigma_to_t(sigma)
    np.testing.assert_allclose(got, theirs.sigma_to_t(sigma.numpy()), rtol=1e-6)
    adapter.set_timesteps(4)  # its first timestep is c_noise(σ_max)
    assert float(adapter.timesteps[0]) == pytest.approx(float(adapter.sigma_to_t(80.0)), 1e-6)


def test_init_noise_sigma_before_set_timesteps_without_a_training_loop():
    """DPM-Solver's 1000-step loop visits a level twice (no program): its init_noise_sigma
    does not depend on the steps, 1.0 as diffusers' __init__ sets; EDM-Euler's does."""
    # (PNDM with steps_offset=1: its T-step loop reaches past the table, and its
    # Runge-Kutta warm-up needs 4 steps to build any loop at all)
    for sched in (ds.DPMSolverMultistep(**SD), ds.UniPC(**SD), ds.PNDM(**SD, timesteps_offset=1)):
        assert DiffusersScheduler(sched).init_noise_sigma == twin(sched).init_noise_sigma == 1.0


def test_num_inference_steps_counts_the_grid_where_diffusers_does():
    """DPM-Solver's inverse grid over all 1000 training steps drops a duplicate timestep:
    diffusers' num_inference_steps is then the grid's length (999), as ours."""
    sched = ds.DPMSolverMultistepInverse(beta_schedule="linear")
    adapter, theirs = DiffusersScheduler(sched), twin(sched)
    adapter.set_timesteps(1000)
    theirs.set_timesteps(1000)
    assert torch.equal(adapter.timesteps, theirs.timesteps.to(adapter.timesteps.dtype))
    assert adapter.num_inference_steps == theirs.num_inference_steps == 999
    heun = DiffusersScheduler(ds.Heun())  # two calls a step: the steps asked
    heun.set_timesteps(5)
    assert heun.num_inference_steps == 5 and len(heun.timesteps) == 9


def test_scale_model_input_takes_extra_arguments_as_diffusers_sasolver():
    adapter = DiffusersScheduler(ds.SASolver(**SD))
    adapter.set_timesteps(4)
    x = torch.ones(1, 2, 2, 2)
    got = adapter.scale_model_input(x, adapter.timesteps[0], generator=torch.manual_seed(0))
    assert got is x


@pytest.mark.parametrize("reduce_warmup", [False, True])
def test_pndm_phases_as_diffusers(reduce_warmup):
    """PNDM's prk_timesteps / plms_timesteps and step_prk / step_plms (diffusers' own
    tests drive its loop through them): the same timesteps and the same final sample."""
    sched = ds.PNDM(beta_schedule="linear", reduce_warmup=reduce_warmup)
    adapter, theirs = DiffusersScheduler(sched), twin(sched)
    outs = []
    for s in (adapter, theirs):
        s.set_timesteps(10)
        x = torch.linspace(-1, 1, 32, dtype=torch.float64).reshape(2, 1, 4, 4)
        for t in s.prk_timesteps:
            x = s.step_prk(0.3 * x + 0.01 * float(t) / 1000, t, x).prev_sample
        for t in s.plms_timesteps:
            x = s.step_plms(0.3 * x + 0.01 * float(t) / 1000, t, x).prev_sample
        outs.append(x)
    assert torch.equal(adapter.prk_timesteps, torch.as_tensor(theirs.prk_timesteps).long())
    assert len(adapter.prk_timesteps) == (0 if reduce_warmup else 12)
    rel = float((outs[0] - outs[1]).abs().max() / outs[1].abs().max())
    assert rel < 1e-6, rel  # observed ~1e-8 (diffusers' float32 ᾱ table)
    with pytest.raises(AttributeError, match="step_prk"):
        DiffusersScheduler(ds.DDIM()).step_prk(x, 0, x)
    assert not hasattr(DiffusersScheduler(ds.DDIM()), "prk_timesteps")


def test_log_linear_with_custom_timesteps_as_diffusers():
    """diffusers' test_custom_timesteps: with interpolation_type="log_linear" its σ's are
    N + 1 levels even in log σ whatever the custom timesteps (ours interpolated them
    linearly in t before): the custom loop equals the N-step loop, and diffusers'."""
    sched = ds.Euler(beta_schedule="linear", interpolation_type="log_linear")
    theirs = twin(sched)
    theirs.set_timesteps(10)
    ts = tuple(theirs.timesteps.tolist())
    ours_n = sched.program(10)
    ours_custom = sched.program(10, timesteps=ts)
    np.testing.assert_array_equal(ours_n.coefs, ours_custom.coefs)
    adapter = DiffusersScheduler(sched)
    x = torch.linspace(-1, 1, 32, dtype=torch.float64).reshape(2, 1, 4, 4)
    outs = []
    for s, kw in ((adapter, {"timesteps": list(ts)}), (twin(sched), {"timesteps": list(ts)})):
        s.set_timesteps(**kw)
        y = x * s.init_noise_sigma
        g = torch.Generator().manual_seed(0)
        for t in s.timesteps:
            m = 0.5 * s.scale_model_input(y, t)
            y = s.step(m, t, y, generator=g).prev_sample
        outs.append(y)
    rel = float((outs[0] - outs[1]).abs().max() / outs[1].abs().max())
    assert rel < 1e-5, rel  # observed ~1e-7 (diffusers' float32 σ table)


@pytest.mark.parametrize(
    ("sched", "cause"),
    [
        (ds.DDPM(rescale_betas_zero_snr=True), "cannot give x_0 at zero signal-to-noise"),
        (ds.EulerAncestral(rescale_betas_zero_snr=True), "zero-SNR clamp"),
    ],
)
def test_refused_training_loop_still_lists_its_timesteps(sched, cause):
    """Before set_timesteps diffusers' classes list the loop over every training step; where
    ours refuses that loop (a zero-SNR ε-model's first call; diffusers' clamp), the adapter
    lists its timesteps as diffusers' do and a step says why (it returned None, and the
    caller's ``timesteps[-1]`` failed with a TypeError: diffusers' own test_rescale_betas_
    zero_snr)."""
    adapter = DiffusersScheduler(sched)
    theirs = twin(sched)
    np.testing.assert_array_equal(adapter.timesteps.numpy(), theirs.timesteps.numpy())
    x = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match=cause):
        adapter.step(x, adapter.timesteps[-1], x)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"])
def test_loop_before_set_timesteps_is_the_plain_training_loop(name):
    """diffusers' Euler classes list every training σ before set_timesteps, whatever the
    config's σ grid, spacing or offset (their __init__ applies none): the adapter the same
    (it applied Karras σ's there: diffusers' test_karras_sigmas), its step included."""
    config = {
        "num_train_timesteps": 1100, "timestep_spacing": "leading", "steps_offset": 1,
        **({"use_karras_sigmas": True, "sigma_min": 0.02, "sigma_max": 700.0}
           if name == "EulerDiscreteScheduler" else {}),
    }  # fmt: skip
    adapter = DiffusersScheduler(ds.from_config({"_class_name": name, **config}))
    theirs = peer.diffusers_class(name)(**config)
    np.testing.assert_array_equal(adapter.timesteps.numpy(), theirs.timesteps.numpy())
    # diffusers' float32 ᾱ product loses digits at the smallest σ (1.9e-6 seen at σ = 0.015)
    np.testing.assert_allclose(adapter.sigmas.numpy(), theirs.sigmas.numpy(), rtol=1e-4, atol=2e-5)
    assert float(adapter.init_noise_sigma) == pytest.approx(float(theirs.init_noise_sigma), 1e-6)
    x = torch.linspace(-1, 1, 32, dtype=torch.float32).reshape(2, 1, 4, 4)
    for t in (theirs.timesteps[-1], theirs.timesteps[500]):
        outs = [
            s.step(0.3 * x, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
            for s in (DiffusersScheduler(adapter.wrapped), peer.diffusers_class(name)(**config))
        ]
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "sigmas"),
    [
        ("FlowMapEulerDiscreteScheduler", [0.9, 0.7, 0.4, 0.1]),  # N levels, 0 appended
        ("FlowMatchEulerDiscreteScheduler", [0.9, 0.7, 0.4, 0.1]),
        ("LTXEulerAncestralRFScheduler", [0.9, 0.7, 0.4, 0.1]),
        ("EulerDiscreteScheduler", [14.6, 5.0, 1.0, 0.1, 0.0]),  # N + 1 levels
    ],
)
def test_custom_sigmas_count_steps_as_the_class(name, sigmas):
    """``set_timesteps(sigmas=...)`` without N: the class's own count of a custom grid
    (``custom_steps``); FlowMapEuler's N levels were read as N + 1 (diffusers' own
    test_set_timesteps_custom_sigmas: "num_steps=3 disagrees with the custom grid")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = {"_class_name": name, **({"shift": 3.0} if "Flow" in name else {})}
        adapter = DiffusersScheduler(ds.from_config(config))
        theirs = peer.diffusers_class(name).from_config(adapter.config)
        for s in (adapter, theirs):
            s.set_timesteps(sigmas=sigmas)
    assert adapter.num_inference_steps == theirs.num_inference_steps
    np.testing.assert_allclose(adapter.timesteps.double().numpy(),
                               theirs.timesteps.double().numpy(), rtol=1e-5)  # fmt: skip


def test_return_dict_false_gives_the_tuple_of_diffusers_class():
    """``step(..., return_dict=False)`` has the length of diffusers' own class's tuple: one
    for the multistep solvers and the flow classes (``prev, = step(...)``: diffusers' own
    FlowMapEuler test), two where diffusers adds x̂_0. Every class whose adapter runs the
    common step is compared, on the first call of a 4-step loop."""
    x = torch.linspace(-1, 1, 32, dtype=torch.float32).reshape(2, 1, 4, 4)
    checked = 0
    for name, cls in ds.SCHEDULERS.items():
        if name is None or cls.ADAPTIVE or cls.CALLS_PER_STEP != 1:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = peer.diffusers_class(name)()
            adapter = DiffusersScheduler(cls())
            try:
                theirs.set_timesteps(4)
                adapter.set_timesteps(4)
                t = theirs.timesteps[0]
                want = theirs.step(0.1 * x, t, x, return_dict=False)
            except (TypeError, ValueError, KeyError, AttributeError, IndexError,
                    NotImplementedError):  # fmt: skip
                continue  # a class stepped by its own protocol (pipelines tested elsewhere)
            got = adapter.step(0.1 * x, t, x, return_dict=False)
        assert len(got) == len(want), name
        checked += 1
    assert checked >= 20, checked


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.8])
def test_tcd_step_gives_diffusers_pred_noised_sample(gamma):
    """TCD's step returns x_s = sqrt(ᾱ_s) x̂_0 + sqrt(1 - ᾱ_s) ε̂ as ``pred_noised_sample``
    (diffusers' TCDSchedulerOutput; the adapter gave x̂_0 under another name), also second
    in the tuple: equal to diffusers' to float32 rounding (3.2e-7 relative seen)."""
    sched = ds.TCD(eta=gamma)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    runs = []
    for s in (twin(sched), DiffusersScheduler(sched)):
        s.set_timesteps(4)
        x, g, outs = x0.clone(), torch.Generator().manual_seed(1), []
        for t in s.timesteps:
            out = s.step(torch.tanh(x), t, x, eta=gamma, generator=g)
            outs.append(out.pred_noised_sample)
            x = out.prev_sample
        runs.append(outs)
    for theirs, ours in zip(*runs, strict=True):
        assert float((ours - theirs).abs().max()) <= 5e-6 * float(theirs.abs().max())
    adapter = DiffusersScheduler(sched)
    adapter.set_timesteps(4)
    t = adapter.timesteps[0]
    pair = adapter.step(torch.tanh(x0), t, x0, eta=gamma, return_dict=False)
    adapter.set_timesteps(4)
    named = adapter.step(torch.tanh(x0), t, x0, eta=gamma)
    if gamma == 0.0:  # (with γ > 0 the two calls draw differently)
        assert torch.equal(pair[1], named.pred_noised_sample)


def test_sasolver_without_noise_still_draws_as_diffusers():
    """diffusers' SA-Solver draws its noise at every call, τ = 0 (no noise) included: the
    pipeline's generator must be where diffusers leaves it (found by the adapter's random
    config comparison)."""
    same_draws_as_diffusers(ds.SASolver(**SD, tau=0.0), 5, tol=1e-5)


def same_draws_as_diffusers(sched, steps: int, tol: float, **step_options) -> None:
    """The adapter and diffusers' class of ``sched`` in a pipeline's loop, one generator
    each (seed 0): the same final sample within ``tol``, the generators in the same state."""
    x0 = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    flow = isinstance(sched, ds.FlowMatchHeun)  # (no input scaling in diffusers' flow class)
    finals, after = [], []
    for scheduler in (DiffusersScheduler(sched), twin(sched)):
        scheduler.set_timesteps(steps)
        g = torch.Generator().manual_seed(0)
        x = x0 * (1.0 if flow else scheduler.init_noise_sigma)
        for t in scheduler.timesteps:
            inp = x if flow else scheduler.scale_model_input(x, t)
            x = scheduler.step(torch.tanh(inp), t, x, generator=g, **step_options).prev_sample
        finals.append(x)
        after.append(torch.randn(3, generator=g))
    assert torch.equal(after[0], after[1])
    torch.testing.assert_close(finals[0], finals[1], rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "sched",
    [
        ds.FlowMatchHeun(s_churn=1.0),  # its second call draws again (and discards it)
        ds.Euler(**SD, s_churn=1.0, s_noise=0.0),  # γ > 0 draws, however scaled
        ds.Euler(**SD, s_churn=1.0, prediction_type="sample"),  # a last step churn misses
        ds.EDMEuler(s_churn=2.0, s_tmin=0.5, s_tmax=20.0),
        # v with continuous timesteps on a log-linear grid (one level more: N + 1 calls),
        # a window that leaves the last call unchurned (found by the differential test,
        # seed 20261218: an ε probe of the draws visited the N-call discrete grid)
        ds.Euler(
            **SD,
            s_churn=1.3,
            s_tmin=0.15,
            prediction_type="angular_velocity",
            timestep_type="continuous",
            interpolation_type="log_linear",
        ),
    ],
    ids=["flow-heun", "euler-s_noise-0", "euler-sample", "edm-window", "euler-v-continuous"],
)
def test_churn_draws_as_diffusers(sched):
    """diffusers' churned steps draw wherever γ > 0 (Karras et al. 2022, Alg. 2), whether
    or not the noise reaches the result: the generator ends where diffusers leaves it."""
    options = {k: getattr(sched, k) for k in ("s_churn", "s_tmin", "s_tmax", "s_noise")}
    same_draws_as_diffusers(sched, 6, tol=1e-4, **options)


@pytest.mark.parametrize(
    "sched",
    [
        ds.DDPM(**SD),
        ds.DDIM(beta_schedule="squared_cosine"),
        ds.LCM(),
        ds.TCD(),
        ds.DDPMParallel(rescale_betas_zero_snr=True, prediction_type="angular_velocity"),
        ds.DDIMParallel(),
        ds.CogVideoXDDIM(),  # its SNR-shifted table (snr_shift_scale 3)
        ds.CogVideoXDPM(snr_shift_scale=1.0),
    ],
    ids=lambda s: type(s).__name__,
)
def test_get_velocity_as_diffusers(sched):
    """The v-prediction training target (training scripts call it on the scheduler), before
    and after set_timesteps, at any training timesteps: diffusers' (float64 tables)."""
    config = sched.to_config()
    theirs, ours = peer.scheduler(config, float64=True), DiffusersScheduler(sched)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 500, sched.num_train_steps - 1])
    for _ in range(2):
        torch.testing.assert_close(ours.get_velocity(x, z, t), theirs.get_velocity(x, z, t),
                                   rtol=1e-12, atol=1e-12)  # fmt: skip
        ours.set_timesteps(7)
        theirs.set_timesteps(7)


def test_get_velocity_only_where_diffusers_has_it():
    assert not hasattr(DiffusersScheduler(ds.PNDM()), "get_velocity")
    assert not hasattr(DiffusersScheduler(ds.DPMSolverMultistep()), "get_velocity")
    # diffusers' Euler reads ᾱ at the index of the timestep in its loop: not reproduced
    assert not hasattr(DiffusersScheduler(ds.Euler()), "get_velocity")


@pytest.mark.parametrize(
    "config",
    [
        {"_class_name": "DDPMScheduler", "steps_offset": 1, "num_train_timesteps": 500},
        {"_class_name": "DDPMParallelScheduler", "steps_offset": 1, "timestep_spacing": "trailing"},
        {"_class_name": "DDIMScheduler", "timestep_spacing": "trailing", "steps_offset": 1},
        {"_class_name": "LCMScheduler"},  # its T steps exceed original_inference_steps
        {"_class_name": "TCDScheduler", "original_inference_steps": 20},
    ],
    ids=lambda c: c["_class_name"],
)
def test_timesteps_before_set_timesteps_are_every_training_step(config):
    """diffusers' DDPM, DDIM, LCM, TCD (and the parallel DDPM / DDIM) list T - 1 .. 0 in
    __init__ whatever their spacing, offset or original steps (the adapter listed none where
    the config's own T-step loop does not run); DDPM steps there, t -> t - 1, as diffusers'."""
    name = config["_class_name"]
    kwargs = {k: v for k, v in config.items() if k != "_class_name"}
    adapter = DiffusersScheduler(ds.from_config(config))
    theirs = peer.diffusers_class(name)(**kwargs)
    assert torch.equal(adapter.timesteps, theirs.timesteps)
    if name.startswith("DDPM"):
        x = torch.linspace(-1, 1, 32).reshape(2, 1, 4, 4)
        for t in (theirs.timesteps[0], theirs.timesteps[300], theirs.timesteps[-1]):
            outs = [
                s.step(0.3 * x, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
                for s in (DiffusersScheduler(adapter.wrapped), peer.diffusers_class(name)(**kwargs))
            ]
            torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_edm_euler_before_set_timesteps_ramps_over_t_plus_one_levels():
    """diffusers' EDMEulerScheduler.__init__ ramps over T + 1 levels (1001 timesteps, 1002
    σ's with the final one): the adapter's loop before set_timesteps the same, its step
    included; and a timestep off the loop is refused with a short message."""
    sched = ds.EDMEuler(sigma_schedule="exponential", prediction_type="angular_velocity")
    adapter, theirs = DiffusersScheduler(sched), twin(sched)
    assert len(adapter.timesteps) == len(theirs.timesteps) == 1001
    torch.testing.assert_close(adapter.timesteps, theirs.timesteps, rtol=0, atol=1e-6)
    torch.testing.assert_close(adapter.sigmas, theirs.sigmas, rtol=1e-6, atol=1e-7)
    x = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    for k in (0, 500, 1000):
        outs = [s.step(0.3 * x, s.timesteps[k], x).prev_sample
                for s in (DiffusersScheduler(sched), twin(sched))]  # fmt: skip
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(1001 in all\)") as err:
        adapter.step(x, torch.tensor(0.123), x)
    assert len(str(err.value)) < 400


@pytest.mark.parametrize(
    "sched",
    [ds.DPMSolverMultistep(), ds.DPMSolverSinglestep(), ds.DEIS(), ds.UniPC(**SD)],
    ids=lambda s: type(s).__name__,
)
def test_add_noise_before_set_timesteps_is_the_level_of_the_timestep(sched):
    """A VP solver's add_noise before set_timesteps (a training input): sqrt(ᾱ_t) x_0 +
    sqrt(1 - ᾱ_t) ε at each timestep, though its loop over all 1000 training steps visits
    a level twice and does not run (it raised that), and though diffusers' classes there
    list their σ's reversed (the level of T - 1 - t: the documented departure)."""
    adapter, theirs = DiffusersScheduler(sched), twin(sched)
    x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([5, 194, 900])
    acp = torch.as_tensor(np.asarray(sched.alphas_cumprod))[t].reshape(-1, 1, 1)
    torch.testing.assert_close(adapter.add_noise(x, z, t), acp.sqrt() * x + (1 - acp).sqrt() * z)
    mirrored = torch.as_tensor(np.asarray(sched.alphas_cumprod))[999 - t].reshape(-1, 1, 1)
    torch.testing.assert_close(theirs.add_noise(x, z, t), mirrored.sqrt() * x
                               + (1 - mirrored).sqrt() * z, rtol=1e-5, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_flow_map_apply_shift_is_diffusers(shift):
    """FlowMapEuler's public ``apply_shift`` (AnyFlow's shift of a tensor of levels): equal
    to diffusers' in float32 and float64, and a non-tensor or integer tensor refused."""
    adapter = DiffusersScheduler(ds.FlowMapEuler(shift=shift))
    theirs = peer.diffusers_class("FlowMapEulerDiscreteScheduler")(shift=shift)
    for dtype in (torch.float32, torch.float64):
        levels = torch.linspace(0.0, 1.0, 17, dtype=dtype)
        got = adapter.apply_shift(levels)
        assert got.dtype == dtype
        torch.testing.assert_close(got, theirs.apply_shift(levels), rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        adapter.apply_shift([0.5])
    with pytest.raises(TypeError, match="floating-point"):
        adapter.apply_shift(torch.arange(3))


@pytest.mark.parametrize("bad", [float("nan"), "999", True])
def test_a_timestep_must_be_a_finite_number(bad):
    """``step`` at a NaN, a string or a bool timestep is refused by every adapter whose
    loop runs the common step or its own protocol. NaN matched no timestep and slipped
    through the nearest-timestep lookups (FlowMapEuler, DDPMWuerstchen; RePaint did not
    read the timestep at all); "999" was read as 999."""
    x = torch.linspace(-1, 1, 32, dtype=torch.float32).reshape(2, 1, 4, 4)
    checked = 0
    for name, cls in ds.SCHEDULERS.items():
        if name is None or cls.ADAPTIVE or cls.CALLS_PER_STEP != 1:
            continue
        adapter = DiffusersScheduler(cls())
        try:
            adapter.set_timesteps(4)
        except (TypeError, ValueError):
            continue
        t = bad if not isinstance(bad, float) else torch.tensor(bad)
        with pytest.raises((TypeError, ValueError, NotImplementedError)):
            adapter.step(0.1 * x, t, x)
        checked += 1
    assert checked > 30


@pytest.mark.parametrize("name", ["DPM2", "DPM2Ancestral", "DPMSolverSDE", "Heun"])
@pytest.mark.parametrize("begin", [False, True])
def test_add_noise_between_calls_is_diffusers(name, begin):
    """``add_noise`` at the next call's timestep after each step, as diffusers' inpainting
    pipelines blend the known region: the two-stage classes whose second call sits at an
    interpolated level noise to diffusers' ``sigmas`` entry of the call (the step's end
    level), with or without ``set_begin_index``. DPM2's and the SDE solver's adapters
    noised to the interpolated level (relative difference ~1)."""
    config = getattr(ds, name)().to_config()
    ours = DiffusersScheduler.from_config(config)
    theirs = peer.scheduler(config)
    x0 = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(1, 2, 4)
    z = torch.cos(torch.arange(8, dtype=torch.float64)).reshape(1, 2, 4)
    xs = []
    for sched in (ours, theirs):
        sched.set_timesteps(5)
        if begin:
            sched.set_begin_index(0)
        xs.append(x0 * float(sched.init_noise_sigma))
    stochastic = name == "DPM2Ancestral"
    for i in range(len(theirs.timesteps) - 1):
        for j, sched in enumerate((ours, theirs)):
            kw = {"generator": torch.Generator().manual_seed(i)} if stochastic else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                xs[j] = sched.step(0.1 * xs[j], sched.timesteps[i], xs[j], **kw).prev_sample
        got = ours.add_noise(x0, z, ours.timesteps[i + 1 : i + 2])
        want = theirs.add_noise(x0, z, theirs.timesteps[i + 1 : i + 2])
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["DPMSolverMultistepInverse", "DPMSolverMultistep", "UniPC"])
def test_add_noise_of_flow_prediction_on_vp_levels_is_diffusers(name):
    """A VP solver with ``prediction_type="flow"`` on VP levels (``use_flow_sigmas=False``):
    its model conversion gives no noise level, and the inverse DPM-Solver's add_noise was
    refused ("no noise level at model call k"); diffusers noises with the VP pair of its
    ``sigmas`` entry, and so does the adapter, at every call's timestep."""
    config = getattr(ds, name)(prediction_type="flow", use_karras_sigmas=True).to_config()
    ours = DiffusersScheduler.from_config(config)
    module = peer.module_of(config)
    with peer._double_tables(module):
        theirs = peer.scheduler(config)
        theirs.set_timesteps(6)
    ours.set_timesteps(6)
    x = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(2, 4)
    z = torch.sin(torch.arange(8, dtype=torch.float64)).reshape(2, 4)
    for i in range(len(ours.timesteps)):
        got = ours.add_noise(x, z, ours.timesteps[i : i + 1].repeat(2))
        with peer._double_tables(module):
            want = theirs.add_noise(x, z, theirs.timesteps[i : i + 1].repeat(2))
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "sched",
    [ds.Euler(**SD), ds.Heun(**SD), ds.DPM2Ancestral(**SD), ds.DPMSolverMultistep(**SD),
     ds.UniPC(**SD), ds.LCM(), ds.IPNDM(), ds.FlowMatchEuler(shift=3.0)],
    ids=lambda s: type(s).__name__,
)  # fmt: skip
def test_index_for_timestep_as_diffusers(sched):
    """diffusers' public ``index_for_timestep`` (a repeated timestep of Heun's loop: its
    second occurrence), on the loop's timesteps and on a list given; a timestep not
    listed is refused by name (diffusers' multistep solvers return the last index)."""
    config = sched.to_config()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peer.scheduler(config)
    ours = DiffusersScheduler(sched)
    ours.set_timesteps(7)
    theirs.set_timesteps(7)
    for t_ours, t_theirs in zip(ours.timesteps, theirs.timesteps, strict=True):
        assert ours.index_for_timestep(t_ours) == theirs.index_for_timestep(t_theirs)
        given = theirs.index_for_timestep(t_theirs, theirs.timesteps)
        assert ours.index_for_timestep(t_theirs, theirs.timesteps) == given
    with pytest.raises(ValueError, match="not one of"):
        ours.index_for_timestep(123.25)
    with pytest.raises(ValueError, match="1-D"):
        ours.index_for_timestep(ours.timesteps[0], ours.timesteps.reshape(1, -1))


def test_index_for_timestep_only_where_diffusers_has_it():
    assert not hasattr(DiffusersScheduler(ds.DDIM()), "index_for_timestep")
    assert not hasattr(DiffusersScheduler(ds.PNDM()), "index_for_timestep")
    assert hasattr(DiffusersScheduler(ds.SASolver()), "index_for_timestep")


@pytest.mark.parametrize("cls", ds.methods.ALL, ids=lambda c: c.__name__)
def test_num_inference_steps_before_set_timesteps_as_diffusers(cls):
    """diffusers' Heun, DPM-2 (both), LMS, iPNDM, the SDE solver and FlowMapEuler run
    set_timesteps(T) in __init__ (T steps counted); the others count none yet."""
    config = cls().to_config()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peer.scheduler(config)
    expected = getattr(theirs, "num_inference_steps", None)
    assert DiffusersScheduler(cls()).num_inference_steps == expected


@pytest.mark.parametrize(
    "name",
    [
        "DPMSolverMultistepScheduler",
        "LMSDiscreteScheduler",
        "UniPCMultistepScheduler",
        "PNDMScheduler",
        "HeunDiscreteScheduler",
    ],
)
def test_a_sample_cast_mid_loop_keeps_the_history(name):
    """A pipeline that casts its latents mid-loop (float64 to float32 at call 3): the
    solver's history goes along, cast, as diffusers' classes keep theirs (found by review:
    the loop restarted its warm-up there, 3e-3 to 0.2 off diffusers)."""
    sd = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    theirs = getattr(diffusers, name)(**sd)
    ours = DiffusersScheduler.from_config({**theirs.config, "_class_name": name})
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)  # fmt: skip
    finals = []
    for s in (theirs, ours):
        s.set_timesteps(6)
        x = start * s.init_noise_sigma
        for k, t in enumerate(s.timesteps):
            x = x.to(torch.float32) if k == 3 else x
            x = s.step(torch.tanh(s.scale_model_input(x, t)), t, x).prev_sample
        finals.append(x.double())
    assert float((finals[1] - finals[0]).norm() / finals[0].norm()) < 1e-5  # measured 2-5e-7


def test_a_sample_of_another_shape_mid_loop_is_refused_where_history_is_read():
    ours = DiffusersScheduler(ds.DPMSolverMultistep())
    ours.set_timesteps(6)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in ours.timesteps[:2]:
        x = ours.step(torch.tanh(x), t, x).prev_sample
    with pytest.raises(ValueError, match=r"shape changed mid-loop, from \(2, 4, 8, 8\) to"):
        ours.step(torch.tanh(x[:1]), ours.timesteps[2], x[:1])  # no silent warm-up restart


def test_from_config_builds_the_class_it_is_called_on():
    """As diffusers' ``from_config``: called on an adapter's class, that class is built from
    any config, diffusers' in-memory one (no _class_name) included; on DiffusersScheduler
    itself a config must name its class (found by review: the config's class won, and an
    in-memory config gave "unsupported scheduler class None")."""
    euler = ds.to_diffusers(ds.Euler(s_churn=1.0))
    ddim_class = type(ds.to_diffusers(ds.DDIM()))
    built = ddim_class.from_config(euler.config)  # Euler's own step options left behind
    assert type(built).__name__ == "DDIMScheduler" and isinstance(built.wrapped, ds.DDIM)
    again = type(euler).from_config(euler.config)
    assert isinstance(again.wrapped, ds.Euler) and again.wrapped.s_churn == 1.0
    in_memory = diffusers.DDIMScheduler(beta_schedule="scaled_linear").config
    assert "_class_name" not in in_memory
    built = type(euler).from_config(in_memory)
    assert isinstance(built.wrapped, ds.Euler) and built.wrapped.beta_schedule == "quadratic"
    with pytest.raises(ValueError, match="names no class"):
        DiffusersScheduler.from_config(in_memory)
    assert isinstance(DiffusersScheduler.from_config(euler.config).wrapped, ds.Euler)
