"""Timing and memory helpers shared by the benchmark scripts (imported as ``_measure`` when a
script runs as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import resource
import time

import torch


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Wall seconds of one call of ``fn``, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_rss_kib() -> int:
    """Peak resident set of this process in KiB.

    Linux's VmHWM belongs to the address space and so starts afresh at exec; ``ru_maxrss``
    would carry over the parent's peak into a child process.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def resident_kib() -> int:
    """Current resident set of this process in KiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // 1024
