"""How many CPUs this process may use: a container or `taskset` may allow fewer than the host has."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """`os.sched_getaffinity` where there is one (Linux), else the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1
