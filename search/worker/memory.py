"""Measuring what a trial costs: peak memory (labelled by kind), adapter size on disk."""

from __future__ import annotations

import os
from pathlib import Path

import torch


class PeakMemory:
    """Peak memory over one trial.

    On a GPU: the caching allocator's peak over the trial minus its value at the start. On CPU: the peak resident
    set size of the worker process during the trial (its high-water mark is reset at the start where Linux allows).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "gpu_allocated" if device.type == "cuda" else "cpu_rss"
        self._start = 0

    def start(self) -> None:
        if self.kind == "gpu_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            _reset_rss_high_water_mark()

    def baseline_bytes(self) -> int:
        """Memory the trial starts from: the worker's resident set on CPU; zero on GPU (peaks are relative)."""
        return 0 if self.kind == "gpu_allocated" else _rss_now()

    def peak_bytes(self) -> int:
        if self.kind == "gpu_allocated":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - self._start)
        return _rss_high_water_mark()


def _reset_rss_high_water_mark() -> None:
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux, or not permitted: the peak then covers the worker's whole life


def _rss_now() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _rss_high_water_mark() -> int:
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def release_accelerator_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
