"""Shared fixtures, and a summary of the largest differences seen against the oracles."""

from __future__ import annotations

import oracle
import pytest

from diffsched.exact.threads import small_matrices

SCHEDULER_ORDER = ("DDIM", "PNDM", "LCM")


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    """The suite multiplies small matrices only: one BLAS / OpenMP thread, so that a busy
    machine does not make the pools spin (see diffsched.exact.threads)."""
    with small_matrices():
        yield


@pytest.fixture(autouse=True, scope="session")
def _dpm2_ancestral_exact_split():
    """Every comparison with diffusers' DPM2 ancestral runs on the exact σ_down (see
    :func:`oracle.exact_ancestral_split`: diffusers' own value is CPU-dependent)."""
    with oracle.well_conditioned_dpm2_ancestral():
        yield


@pytest.fixture
def model():
    """The non-trivial test model: tanh of a fixed random linear map, plus a t term."""
    return oracle.linear_tanh_model()


def pytest_sessionfinish(session):
    """Under pytest-xdist, a worker hands its records to the controller (whose summary
    prints them)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["max_rel"] = [[label, name, value] for (label, name), value
                                   in oracle.MAX_REL.items()]  # fmt: skip


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """The controller merges each worker's records (pytest-xdist)."""
    for label, name, value in getattr(node, "workeroutput", {}).get("max_rel", []):
        oracle.record(label, name, value)


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
