"""One BLAS / OpenMP thread for the exact models' small matrix products.

The exact models multiply a (B, D) batch by a (D, K) table with D and K in the tens to the
low thousands: work that one core does in microseconds. OpenBLAS and OpenMP start their
default pool of one thread per core for such products, and those threads spin-wait for each
other: on a machine whose cores are busy with anything else, every product waits for a core
that is not free, and a run that takes 5 s idle takes 30-100 s (measured in
``benchmarks/busy_machine.py``). :func:`small_matrices` limits the pools to one thread for
the duration of a block, through ``threadpoolctl`` when it is installed (it is a dependency
of the ``cli`` and ``test`` extras), and does nothing otherwise.

It is entered by the exact models on every call, by the reference solvers, the tuner and the
command line; nesting is cheap (only the outermost block changes the pools).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

__all__ = ["small_matrices"]

_lock = threading.Lock()
_depth = 0
_limiters: list = []  # the limits in force, in the order set (restored in reverse)
_limited_key: tuple[bool, ...] | None = None
_controllers: dict[tuple[bool, ...], object] = {}  # per set of loaded libraries
# libraries that bring a thread pool of their own when imported (each may be loaded late)
_POOLED = ("numpy", "scipy.linalg", "torch", "sklearn", "jax")


def _limit_loaded_pools() -> None:
    """Limits the pools of the libraries loaded now, once per set of loaded libraries."""
    global _limited_key
    key = tuple(name in sys.modules for name in _POOLED)
    if key == _limited_key:
        return
    _limited_key = key
    controller = _controllers.get(key)
    if controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return
        controller = _controllers[key] = ThreadpoolController()  # finds the loaded pools
    _limiters.append(controller.limit(limits=1))


@contextlib.contextmanager
def small_matrices() -> Iterator[None]:
    """Runs the block with BLAS and OpenMP limited to one thread (see the module doc).

    Process-wide while a block of any thread runs, as thread pools are; the previous limits
    come back when the last block ends. A library loaded inside a block is limited at the
    next block entered.
    """
    global _depth, _limited_key
    with _lock:
        _depth += 1
        _limit_loaded_pools()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                while _limiters:
                    _limiters.pop().restore_original_limits()
                _limited_key = None
