"""Shared fixtures, and a summary of the largest differences seen against the oracles."""

from __future__ import annotations

import oracle
import pytest

SCHEDULER_ORDER = ("DDIM", "PNDM", "LCM")


@pytest.fixture
def model():
    """The non-trivial test model: tanh of a fixed random linear map, plus a t term."""
    return oracle.linear_tanh_model()


def pytest_terminal_summary(terminalreporter):
    """One line per comparison kind, e.g. ``PARITY max rel diff: DDIM 3e-15 PNDM ...``."""
    if not oracle.MAX_REL:
        return
    labels = sorted({label for label, _ in oracle.MAX_REL})
    for label in labels:
        names = [n for n in SCHEDULER_ORDER if (label, n) in oracle.MAX_REL]
        names += sorted(n for lab, n in oracle.MAX_REL if lab == label and n not in names)
        parts = " ".join(f"{n} {oracle.MAX_REL[(label, n)]:.1e}" for n in names)
        terminalreporter.write_line(f"{label} max rel diff: {parts}")
