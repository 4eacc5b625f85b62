"""Reading and writing the small files diffsched keeps (configs, grids): reads refuse what
is not a regular file of sane size; writes replace the old file atomically."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

MAX_BYTES = 10 << 20  # a config or a grid is a few kB; 10 MB is far beyond any real one


def read_text(path: Any, what: str = "file", max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of ``path``: a regular file of at most ``max_bytes``, or a clear
    ValueError naming the path (a FIFO or a device would block or never end)."""
    path = Path(path)
    try:  # non-blocking: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a folder, not a file") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # a folder opens read-only on POSIX
        os.close(fd)
        kind = "is a folder, not a file" if stat.S_ISDIR(info.st_mode) else "is not a regular file"
        raise ValueError(f"{what} {path} {kind}")
    with os.fdopen(fd, "rb") as f:
        if info.st_size > max_bytes:
            raise ValueError(
                f"{what} {path} has {info.st_size} bytes, more than the {max_bytes} a {what} "
                "may have"
            )
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ValueError(f"{what} {path} is larger than the {max_bytes} bytes a {what} may have")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text: {err}") from None


def write_atomic(path: Any, text: str) -> Path:
    """Writes ``text`` to ``path`` through a temporary file in the same folder and a rename:
    a failure leaves the previous file whole."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o644
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:  # named by the file asked for, not by the temporary one
        raise OSError(err.errno, err.strerror, str(path)) from None
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
