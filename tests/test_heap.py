"""The C heap keeps the memory a training step frees: the next step's activations reuse it instead
of faulting fresh pages in from the system (`digits_lightning/heap.py`)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Default-CNN training steps on a batch of 1024 (its first maps, 56 MB, are past the 32 MB up to which
# glibc's own adaptive threshold may keep a block), in a fresh interpreter with the setting made or
# not. Printed: whether it took, then the page faults of the median step of 9, once 5 steps have
# warmed the heap up (a step now and then faults a few thousand pages in for something else).
PROGRAM = """
import resource, statistics, sys
import torch
import torch.nn.functional as F
from digits_lightning.heap import keep_freed_memory
from digits_lightning.nets import ConvNet

took = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
net = ConvNet().to(memory_format=torch.channels_last)
opt = torch.optim.Adam(net.parameters())
x = torch.rand(1024, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (1024,))

def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    opt.step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

for _ in range(5):
    step()
print(took, statistics.median(step() for _ in range(9)))
"""


def faults_per_step(mode: str) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    took, faults = done.stdout.split()
    return took, float(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_training_step_reuses_the_memory_the_last_one_freed():
    _, plain = faults_per_step("plain")
    if plain < 5000:
        pytest.skip(f"this C library faults {plain:.0f} pages a step without the setting: nothing to show")
    took, kept = faults_per_step("keep")
    assert took == "True"
    # A step's activations are about 120 MB, 30,000 pages of 4 KiB: faulted in anew, or reused.
    assert kept < 500, f"{kept:.0f} page faults a step with the setting ({plain:.0f} without)"
