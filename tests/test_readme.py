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
    # DDIM clips x̂_0 to [-1, 1] by default and its last step lands on x̂_0 (ᾱ = 1)
    assert np.abs(sample).max() <= 1.0 + 1e-12
    assert not np.allclose(sample, np.random.default_rng(1).standard_normal((2, 4, 16, 16)))
    assert capsys.readouterr().out.startswith("(2, 4, 16, 16)")


def test_quick_start_commands_match_ci():
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install ".[cli]" && diffsched sample' in text
    assert 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest' in text
    assert "torch==2.13.0" in ci and '-e ".[test]"' in ci and "python -m pytest" in ci
