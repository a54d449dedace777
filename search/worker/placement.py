"""Where a trial runs and where its adapter goes: the resources one worker holds, and the adapter's copy in the
search's adapters directory (or object store), at the path Ray Train would have used."""

from __future__ import annotations

import shutil
from pathlib import Path

from peft_search.search.results import storage
from peft_search.search.settings.trial import TrialSettings

CHECKPOINT = "checkpoint_000000"


def worker_resources(settings: TrialSettings) -> dict[str, float]:
    """What one worker holds in Ray: its CPUs, and its GPU share when it has one."""
    r = settings.resources
    resources = {"CPU": float(r.cpus_per_worker)}
    if r.gpus_per_worker > 0:
        resources["GPU"] = float(r.gpus_per_worker)
    return resources


def store_adapter(local: str, adapters_path: str, name: str) -> str:
    """Copy the adapter to the search's adapters directory (or object store); its path there."""
    if "://" in adapters_path:  # an object store: a path inside its filesystem, as Ray Train's
        return storage.put_dir(local, adapters_path, name)
    target = Path(adapters_path) / name
    if target.exists():  # a trial restarted by a resumed search
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(local, target)
    return str(target)


__all__ = ["CHECKPOINT", "store_adapter", "worker_resources"]
