"""What the chosen device can do, asked before the trainer exists."""

from __future__ import annotations

import os

import torch


def native_bf16(accelerator) -> bool:
    """Whether the device `--trainer.accelerator` picks computes bfloat16 natively: a CUDA GPU that
    does (Ampere and newer), or a CPU with AVX-512 BF16 or AMX. Elsewhere bf16 is emulated, and slower."""
    name = accelerator.lower() if isinstance(accelerator, str) else ""
    if name in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if name == "cpu" or (name == "auto" and not torch.backends.mps.is_available()):
        probes = [getattr(torch.cpu, probe, None) for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(probe() for probe in probes if probe is not None)
    return False


def skip_nvml_probe_without_gpu() -> None:
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 to keep forking safe on GPU machines. Without
    a GPU there is nothing to protect, and the setting makes torch load NVML again in every Adam
    step (~0.5 ms: a fifth of a dense-model step on a laptop CPU)."""
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and not torch.cuda.is_available():
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]
