"""Process-wide settings that keep small training steps cheap."""

from __future__ import annotations

import os

import torch

_NVML = "PYTORCH_NVML_BASED_CUDA_CHECK"


def skip_nvml_check_without_gpu() -> bool:
    """Use the plain CUDA check when NVML finds no GPU; returns True if it switched.

    Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` so that asking whether CUDA is
    available does not initialise the driver before DataLoader workers fork. With that
    flag a CUDA build of torch loads NVML on *every* ``torch.cuda.is_available()``,
    which every torch optimizer's ``step`` reaches through
    ``torch.accelerator.current_accelerator(check_available=True)``: 0.13-0.7 ms per
    step on this 2-core machine (6 us without the flag), against a 1.4 ms step of a
    small MLP. Without a GPU there is no driver to protect, so the flag only costs
    time; with one it is left alone.
    """
    if os.environ.get(_NVML) != "1" or not torch.backends.cuda.is_built():
        return False
    if torch.cuda.is_available():  # NVML sees a GPU: keep Lightning's fork-safe check
        return False
    os.environ[_NVML] = "0"
    return True
