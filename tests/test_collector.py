"""Python's cycle collector stays off the objects that loading the libraries makes
(`digits_lightning/collector.py`), and works as usual on what comes after."""

from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter: count the collector's passes while a block makes many long-lived objects
# (as an import does) and afterwards, and whether garbage made afterwards is still freed.
PROGRAM = """
import contextlib, gc, sys, weakref
from digits_lightning.collector import libraries_loading

passes = []
gc.callbacks.append(lambda phase, info: phase == "start" and passes.append(info["generation"]))
with libraries_loading() if sys.argv[1] == "paused" else contextlib.nullcontext():
    kept = [[i] for i in range(300_000)]
    inside = len(passes)
frozen = gc.get_freeze_count()
enabled = gc.isenabled()

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a cycle: only the collector frees it
gone = weakref.ref(a)
del a, b
gc.collect()
print(inside, frozen, enabled, gone() is None)
"""


def run(mode: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_no_collection_while_the_libraries_load_and_what_they_made_is_set_aside():
    inside, frozen, enabled, freed = run("paused")
    assert int(inside) == 0  # no pass over the objects while they were being made
    assert int(frozen) >= 300_000  # and none of them is walked by a later pass
    assert enabled == "True" and freed == "True"  # the collector still frees the command's own cycles


def test_without_it_the_collector_walks_them_over_and_over():
    inside, frozen, _, _ = run("plain")
    assert int(inside) > 100 and int(frozen) == 0  # the baseline the block above is measured against


def test_the_command_line_loads_its_libraries_with_the_collector_paused():
    program = (
        "import gc, sys; sys.argv = ['digits_lightning', '--help'];"
        "import digits_lightning.__main__ as m;"
        "m.exit_now = lambda code: print('frozen', gc.get_freeze_count(), file=sys.stderr);"
        "m.run()"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    frozen = [line for line in done.stderr.splitlines() if line.startswith("frozen ")]
    assert frozen and int(frozen[-1].split()[1]) > 100_000, done.stderr[-2000:]  # torch's and Lightning's objects
