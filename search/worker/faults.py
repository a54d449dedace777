"""Fault injection for chaos tests: make named candidates fail in a chosen way inside the real worker.

``PEFT_SEARCH_INJECT_FAULTS="cand-a=raise,cand-b=oom,cand-c=exit"`` in the driver's environment makes those explicit
candidates, once their model is loaded: raise an exception; hit a real out-of-memory error (an allocation no
allocator can serve, on the trial's own device); or end the worker process abruptly with ``os._exit``. ``KIND@N``
(``cand-c=exit@20``) does it after optimizer step N instead (once that step's checkpoint, if one is due, is saved),
and only in a trial that did not resume from a checkpoint (its retry gets through). Only these three fixed kinds exist: nothing from the environment is executed.
Unset (the normal case), nothing happens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

FAULTS_ENV = "PEFT_SEARCH_INJECT_FAULTS"
KINDS = ("raise", "oom", "exit")


def faults_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``candidate name -> fault kind`` from ``PEFT_SEARCH_INJECT_FAULTS``; a malformed entry is an error."""
    text = (os.environ if environ is None else environ).get(FAULTS_ENV, "").strip()
    faults = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, _, kind = entry.partition("=")
        kind_only, _, step = kind.partition("@")
        if kind_only not in KINDS or (step and not step.isdigit()):
            raise ValueError(
                f"{FAULTS_ENV}: {entry!r} is not NAME=KIND or NAME=KIND@STEP with KIND one of {', '.join(KINDS)}"
            )
        faults[name] = kind
    return faults


def fault_step(faults: Mapping[str, str] | None, candidate: str | None) -> int | None:
    """The optimizer step after which the candidate's fault fires (``KIND@N``), or None."""
    _, _, step = (faults or {}).get(candidate or "", "").partition("@")
    return int(step) if step else None


def inject(
    faults: Mapping[str, str] | None, candidate: str | None, device: torch.device, *, at_step: bool = False
) -> None:
    """The candidate's fault, at load (``KIND``) or, with ``at_step``, at its step (``KIND@N``)."""
    kind, _, step = (faults or {}).get(candidate or "", "").partition("@")
    if bool(step) != at_step:
        return
    if kind == "raise":
        raise RuntimeError(f"injected fault in candidate {candidate!r}")
    if kind == "oom":
        # 2**62 bytes: the allocator itself refuses (CPU: RuntimeError; CUDA: torch.OutOfMemoryError).
        torch.empty(2**62, dtype=torch.uint8, device=device)
    if kind == "exit":
        os._exit(17)
