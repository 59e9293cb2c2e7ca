"""One line naming the machine a benchmark ran on, printed first by every benchmark."""

from __future__ import annotations

import os
import platform

import torch

from digits_lightning.devices import native_bf16


def describe() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    precision = "bf16-mixed" if native_bf16("auto") else "32-true"  # what `fit` chooses here
    return (
        f"hardware: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {gpu};"
        f" torch {torch.__version__}, python {platform.python_version()}; fit's default precision {precision}"
    )
