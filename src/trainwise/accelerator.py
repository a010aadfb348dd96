"""What the `accelerator` config group decides at run time: GPU or not, precision, memory layout, and the
process-wide device settings that go with them."""

from __future__ import annotations

import os

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def on_gpu(accel) -> bool:
    import torch

    return torch.cuda.is_available() and str(accel.accelerator) in ("auto", "gpu", "cuda")


def precision(accel) -> str:
    """accelerator.precision for Lightning; auto: bf16 autocast on GPU, fp32 on CPU."""
    wanted = str(accel.precision)
    if wanted != "auto":
        return wanted
    return "bf16-mixed" if on_gpu(accel) else "32-true"


def channels_last(accel) -> bool:
    wanted = str(accel.get("channels_last", "auto"))
    return on_gpu(accel) if wanted == "auto" else wanted == "True"


def peak_memory_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def skip_nvml_without_driver() -> bool:
    """Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, so that CUDA checks ask the NVIDIA driver's NVML
    library instead of initialising CUDA (which would break forked DataLoader workers). Where that library does not
    exist (a machine without an NVIDIA driver), torch tries to load it again on every check and then falls back to
    the CUDA runtime anyway. torch's Adam/AdamW check on every optimizer step: about 0.3 ms a step, 5-8% of a
    small CPU model's step on 2 cores. Without the library the variable changes no answer, so it is removed.
    Returns whether it was removed."""
    if os.environ.get(NVML_CHECK) != "1":
        return False
    import ctypes

    try:
        ctypes.CDLL("libnvidia-ml.so.1")  # the name torch loads
    except OSError:
        del os.environ[NVML_CHECK]
        return True
    return False
