"""Python's cycle collector, kept off the objects that torch and Lightning make as they load.

Importing them makes about 450,000 objects (modules, classes, functions) that live as long as the
process. The collector runs whenever enough new objects pile up, so during the imports it runs
again and again, each full pass walking everything made so far (0.1-0.2 s a pass by the end):
about a third of the import time of every command, `--help` included, finding almost nothing to
free. Paused for the imports and then told to leave what they made alone for good (`gc.freeze`),
it runs as usual afterwards on what the command itself makes, and those passes stay short too
(`benchmarks/fit_phases.py` reports the start-up times). The few cycles of garbage the imports
leave behind (about 8 MB) are kept.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def libraries_loading() -> Iterator[None]:
    """Import inside this block: no collection while it runs; what it made is never walked again."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_on:
            gc.enable()
