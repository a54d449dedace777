"""Spare cores, the trial's side (``resources.spare_cores``): once the search has no trial left to start, the CPU
trials still running on a local Ray instance take the cores the finished ones left idle, at their next step.

The driver (``search.loop.spare``) writes each running trial's new thread count to Ray's key-value store; the trial
reads its key after every optimizer step and before its final evaluation, and only ever widens. Without this the
last trial of a search of one-thread trials trains alone on one core while the others idle (about 20 s of a
3-minute search on 2 cores, benchmarks/RESULTS.md). The price: a widened trial's arithmetic (the order its sums
are reduced in) depends on when it widened, so two runs of one config and seed can differ in the last bits; set
``resources.spare_cores: false`` where that matters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NAMESPACE = "peft-search-threads"


def threads_key(search: str, trial_id: str) -> bytes:
    """The key holding a running trial's thread count (one search per local instance; its name keeps it apart)."""
    return f"{search}/{trial_id}".encode()


def ray_reader(key: bytes) -> Callable[[], bytes | None]:
    """Reads ``key`` from the Ray instance this process belongs to."""
    from ray.experimental import internal_kv

    return lambda: internal_kv._internal_kv_get(key, namespace=NAMESPACE)


class SpareCores:
    """Called with the steps done after each optimizer step (``StepCallback``) and before the final evaluation:
    takes the threads the driver granted (``read``: None where the search grants none)."""

    def __init__(self, read: Callable[[], bytes | None] | None) -> None:
        self.read = read
        self.started = torch.get_num_threads()
        self.widened: list[tuple[int, int]] = []
        """(step, threads) each time the trial widened."""

    def __call__(self, step: int) -> None:
        granted = self.read() if self.read is not None else None
        if not granted:
            return
        threads = int(granted)
        if threads > torch.get_num_threads():
            torch.set_num_threads(threads)
            self.widened.append((step, threads))

    def label(self) -> str:
        """The trials table's ``cpu_threads``: ``1``, or ``1, then 2 after step 17`` (its 18th step on two)."""
        text = str(self.started)
        for step, threads in self.widened:
            text += f", then {threads} after step {step}"
        return text


__all__ = ["NAMESPACE", "SpareCores", "ray_reader", "threads_key"]
