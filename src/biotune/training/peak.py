"""The peak memory one training run really used, measured in the process that trains it.

RAM: the kernel's high-water mark of this process's resident memory (``VmHWM``), reset before each
run by writing ``5`` to ``/proc/self/clear_refs`` (Linux ≥ 4.0), so each run reports its own peak.
Where the reset is refused (not Linux, some sandboxes) the mark is the process's peak so far, an
upper bound, and :func:`reset_peaks` says so by returning ``False``. Device: PyTorch's
``max_memory_allocated`` on CUDA, reset the same way; the allocator's cache is not counted.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

__all__ = ["reset_peaks", "ram_peak", "device_peak", "resident", "status_bytes"]


def reset_peaks(device: torch.device) -> bool:
    """Start a new peak for RAM and the device; ``False`` when the RAM mark could not be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``...) in bytes; 0 where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def resident() -> int:
    """This process's resident memory now, in bytes (0 when unknown)."""
    return status_bytes("VmRSS")


def ram_peak() -> int:
    """Peak resident memory of this process since the last reset, in bytes."""
    peak = status_bytes("VmHWM")
    if peak:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def device_peak(device: torch.device) -> int:
    """Peak device memory allocated by PyTorch since the last reset, in bytes (0 off CUDA)."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0
