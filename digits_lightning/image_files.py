"""Which files `predict` reads: a file, a folder searched recursively, or a glob, as a sorted list.

Every path a search turns up is kept, whatever it is: a file that is not an image, a dangling
symbolic link or a pipe gets a row with its error rather than vanishing from the results. Only
hidden files (`.name`, or inside a hidden folder) are left out, and the summary counts them.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np

from digits_lightning.errors import UserError
from digits_lightning.preprocess import ImageError, preprocess_file


class PredictionError(UserError):
    """Prediction cannot start; the message says what to do."""


def find_images(spec: str) -> tuple[list[str], int]:
    """The files `spec` names, sorted, and how many hidden files a folder search passed over."""
    path = Path(spec).expanduser()
    if path.is_file() or (path.is_symlink() and not path.exists()):
        return [str(path)], 0
    if path.is_dir():
        files, hidden = [], 0
        for f in sorted(path.rglob("*")):
            if f.is_dir() and not f.is_symlink():
                continue
            if any(part.startswith(".") for part in f.relative_to(path).parts):
                hidden += 1
            elif not f.is_dir():
                files.append(str(f))
        if not files:
            raise PredictionError(f"{spec}: the folder holds no files{f' (only {hidden} hidden ones)' if hidden else ''}")
        return files, hidden
    if glob.has_magic(spec):
        files = sorted(f for f in glob.glob(str(path), recursive=True) if not Path(f).is_dir())
        if not files:
            raise PredictionError(f"{spec}: the pattern matches no files. Check it, or quote it so the shell leaves it alone")
        return files, 0
    raise PredictionError(f"{spec}: no such file or folder. Pass an image, a folder of images or a glob to --data.predict_path")


def not_a_file(path: str) -> str | None:
    """Why `path` cannot be opened as a regular file (a dangling link, a pipe, a device), or None.

    Checked before anything opens it: opening a named pipe would wait for a writer for ever.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"it is a symbolic link to {os.readlink(path)}, which does not exist: fix or remove the link"
        return "the file no longer exists: it was moved or deleted while predicting"
    except OSError as err:
        return f"cannot read the file ({err.strerror or err}): check its permissions"
    if not stat.S_ISREG(mode):
        return "it is not a regular file (a pipe, socket or device): pass image files"
    return None


def read_digit(source: str | bytes, decode: Callable = preprocess_file) -> tuple[np.ndarray | None, str]:
    """One file (a path, or its bytes as uploaded) as the model's 28x28 uint8 input (`decode`: the
    digits' preprocessing by default), or None and the error of its row (`kind: message`): one file
    never stops a prediction run."""
    try:
        problem = None if isinstance(source, bytes) else not_a_file(source)
        if problem:
            return None, f"unreadable: {problem}"
        return decode(source), ""
    except ImageError as err:
        return None, f"{err.kind}: {err}"
    except Exception as err:  # the row says what happened
        return None, f"failed: {type(err).__name__}: {err}"
