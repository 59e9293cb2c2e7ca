"""The one kind of error a user can fix: `main` prints it as one line and exits with status 2.

Anything else that escapes a command is a bug of ours (or of a library) and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

# Exit statuses, documented in docs/reliability.md.
EXIT_USER_ERROR = 2
EXIT_NOTHING_PREDICTED = 3


class UserError(Exception):
    """A mistake the user can fix; the message names the file or setting and says what to do."""

    exit_status = EXIT_USER_ERROR


def fail(err: UserError) -> NoReturn:
    """Ends the command for a user's mistake: the message as one line on stderr, the error's exit status."""
    sys.stderr.write(f"error: {' '.join(str(err).split())}\n")
    raise SystemExit(err.exit_status) from None


class SettingError(UserError, ValueError):
    """A setting out of its range. A `ValueError` too, so jsonargparse reports it as an invalid value."""


class CheckpointError(UserError):
    """A checkpoint the user named cannot be used; the message names the file and the fix."""


def user_error_in(err: BaseException) -> UserError | None:
    """The user's mistake behind `err`, where a library wrapped it (jsonargparse re-raises errors from
    the classes it instantiates as its own `ValueError`, with ours as the cause), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
