"""What the `accelerator` config group decides at run time: GPU or not, precision, memory layout, and the
process-wide device settings that go with them."""

from __future__ import annotations

import os
import threading

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
    """The process's peak so far: on CPU over its whole life (ru_maxrss), so in an in-process sweep a later run
    inherits an earlier one's peak. A run's own peak: PeakMemory."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_mb() -> float:
    """This process's resident memory now (MiB)."""
    try:
        with open("/proc/self/statm") as statm:  # Linux: pages; no dependency, ~10 µs a read
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        pass
    try:
        import psutil
    except ImportError:  # neither /proc nor psutil: the lifetime peak is all there is
        return peak_memory_mb()
    return psutil.Process().memory_info().rss / 2**20


class PeakMemory:
    """The peak memory of one block of work, in MiB (`mb`, set when the block ends).

        with PeakMemory(cfg.accelerator) as peak:
            trainer.fit(...)
        peak.mb

    On GPU: torch's peak of allocated CUDA memory since the block started. On CPU: the largest resident size of the
    process sampled every `interval` seconds by a daemon thread, plus at the start and the end, so a short block
    still gets a sample. (The kernel's ru_maxrss is the whole process's lifetime peak: in an in-process sweep
    every run after the foundation's would report the foundation's peak.) Also start() / stop()."""

    def __init__(self, accel=None, interval: float = 0.05):
        import torch

        self.gpu = on_gpu(accel) if accel is not None else torch.cuda.is_available()
        self.interval = interval
        self.mb: float | None = None
        self._peak = 0.0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PeakMemory:
        if self.gpu:
            import torch

            torch.cuda.reset_peak_memory_stats()
            return self
        self._peak = rss_mb()
        self._done.clear()
        self._thread = threading.Thread(target=self._sample, name="trainwise-peak-memory", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            self._peak = max(self._peak, rss_mb())

    def stop(self) -> float:
        if self.gpu:
            import torch

            self.mb = torch.cuda.max_memory_allocated() / 2**20
            return self.mb
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.mb = max(self._peak, rss_mb())
        return self.mb

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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
