"""A file appears whole or not at all: written beside its target, fsynced, then renamed over it.

A reader (or the next run after a kill, SIGKILL and power cuts included) sees the old file or the
new one, never half of one. A kill mid-write leaves only a hidden `.NAME.*.tmp`, which the next
write of NAME removes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable


def write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """Calls `write(binary_file)` on a temporary file beside `path`, then renames it to `path`."""
    with open_atomically(path) as f:
        write(f)


@contextmanager
def open_atomically(path: Path, text: bool = False) -> Iterator[IO]:
    """A temporary file beside `path` that becomes `path` when the block ends without an exception
    (and is removed when it raises): for outputs written piece by piece, like streamed predictions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed write of the same file
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # makes the rename itself durable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is atomic there all the same
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
