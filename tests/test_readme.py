"""The README's usage example runs as written and does what it says."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_usage_example_runs(capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    sample = namespace["sample"]
    assert sample.shape == (2, 4, 16, 16)
    noise = np.random.default_rng(1).standard_normal((2, 4, 16, 16))
    assert not np.allclose(sample, noise)
    # the loop written out is what ds.sample runs, init_noise_scale included (Karras σ's
    # with linspace spacing start at σ_max, so the scale is not 1 here)
    ds, sched, model = namespace["ds"], namespace["sched"], namespace["model"]
    assert sched.init_noise_scale(25) < 1.0
    np.testing.assert_array_equal(sample, ds.sample(model, sched, noise, 25))
    assert capsys.readouterr().out.startswith("(2, 4, 16, 16)")


def test_quick_start_commands_match_ci():
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install ".[cli]" && diffsched sample' in text
    assert '\npip install -e ".[test]" && python -m pytest\n' in text
    assert '-e ".[test]"' in ci and "python -m pytest" in ci


def test_every_extra_pins_the_cpu_wheel_of_torch():
    """No extra can resolve another torch (a CUDA build of several GB on a CPU machine)."""
    import tomllib

    project = tomllib.loads((README.parent / "pyproject.toml").read_text(encoding="utf-8"))
    extras = project["project"]["optional-dependencies"]
    torch_reqs = [r for reqs in extras.values() for r in reqs
                  if re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] == "torch"]  # fmt: skip
    assert torch_reqs and all(r == "torch==2.13.0" for r in torch_reqs), torch_reqs
    assert {"torch", "test"} <= {name for name, reqs in extras.items() if "torch==2.13.0" in reqs}
