"""Candidates planned side by side: each is an independent trace on the meta device, bound by Python's own speed
(dispatch through PyTorch's Python meta kernels), so a second core halves a plan's time while a thread would not.

The base model is built once, in the parent; the workers are forked from it, so they start with it and with every
library the parent imported (torch, transformers, PEFT and bitsandbytes take seconds to import). Forking is done
only on Linux: macOS and Windows start workers by spawning, which would pay those imports again in each.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

_JOB: Callable[[int], Any] | None = None
"""The work of the current map, for the forked workers (they inherit it; nothing is pickled but the index)."""


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, as ``taskset`` or a container limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_jobs(jobs: int | None) -> int:
    """``jobs``: a count, or ``None``/0 for every CPU this process may use."""
    if jobs is not None and jobs < 0:
        raise ValueError(f"jobs: {jobs} is negative; give a count of processes, or 0 for every CPU")
    return jobs or available_cpus()


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # the traces are single-threaded Python; the workers share the machine's cores


def _run(index: int) -> Any:
    assert _JOB is not None
    return _JOB(index)


def map_forked(job: Callable[[int], T], count: int, jobs: int) -> Sequence[T]:
    """``[job(0), ..., job(count - 1)]`` in order, over up to ``jobs`` forked processes (in this one where there is
    one job, one item, or no fork). ``job``'s results must pickle; an exception in a worker is raised here."""
    workers = min(jobs, count)
    if workers <= 1 or not sys.platform.startswith("linux"):
        return [job(i) for i in range(count)]
    global _JOB
    _JOB = job
    try:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_one_thread)
        try:
            # One item at a time: candidates differ in cost by 10x (BOFT against prompt tuning).
            return pool.map(_run, range(count), chunksize=1)
        finally:
            # The workers are told to end and exit on their own. Not terminate() (Pool's `with`): its SIGTERM meets,
            # in a parent that runs Ray, Ray's own handler (it logs a stack trace), which in a forked child, where
            # the parent's other threads are gone with any lock they held, can hang for good, and the join with it.
            pool.close()
            pool.join()
    finally:
        _JOB = None
