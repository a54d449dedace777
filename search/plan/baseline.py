"""The memory a CPU trial holds before its model: Python and the libraries it imports, measured on this machine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from peft_search.search.verbosity import cache_root

RUNTIME_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "ray")


def cache_file(name: str) -> Path:
    """A file of figures measured once per machine: in ``PEFT_SEARCH_CACHE``, else ``$XDG_CACHE_HOME/peft-search`` or
    ``~/.cache/peft-search``."""
    return cache_root() / name


def read_cache(name: str) -> dict[str, Any]:
    """A cache file's figures by key (empty when it is missing or unreadable)."""
    try:
        cached = json.loads(cache_file(name).read_text())
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def write_cache(name: str, key: str, value: Any) -> None:
    """Add one figure to a cache file, replacing it whole (a reader never sees half a file)."""
    path = cache_file(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**read_cache(name), key: value}, indent=1))
        tmp.replace(path)
    except OSError:  # a read-only home: measured again next time
        pass


class RuntimeBaseline:
    """Resident memory of a fresh worker-like process (Python, torch, transformers, PEFT, bitsandbytes, Ray Train
    imported): what a CPU trial holds before its model.

    Measured on this machine in a subprocess (seconds of imports, run while the plan does) once per Python and
    library versions, then read from the cache (``PEFT_SEARCH_CACHE``, else ``$XDG_CACHE_HOME/peft-search`` or
    ``~/.cache/peft-search``)."""

    _CODE = (
        "import torch, transformers, peft, bitsandbytes, ray.train, psutil;"
        "print(psutil.Process().memory_info().rss)"
    )

    def __init__(self) -> None:
        import subprocess
        import sys

        self._key = self.environment_key()
        self._cached = self._read_cache().get(self._key)
        self._process = None
        if self._cached is None:
            self._process = subprocess.Popen(
                [sys.executable, "-c", self._CODE],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )

    @staticmethod
    def environment_key() -> str:
        """What the baseline depends on: the Python environment (its prefix: ``.venv/bin/python`` and
        ``.venv/bin/python3``, which ``peft-search`` runs, are one), Python's version and the versions of the
        libraries a trial imports."""
        import platform
        import sys
        from importlib.metadata import PackageNotFoundError, version

        def installed(name: str) -> str:
            try:
                return version(name)
            except PackageNotFoundError:
                return "-"

        libraries = " ".join(f"{name}=={installed(name)}" for name in RUNTIME_LIBRARIES)
        return f"{sys.prefix} (Python {platform.python_version()}, {platform.machine()}): {libraries}"

    CACHE = "runtime-baseline.json"

    def _read_cache(self) -> dict[str, int]:
        return read_cache(self.CACHE)

    def _write_cache(self, nbytes: int) -> None:
        write_cache(self.CACHE, self._key, nbytes)

    @property
    def measured(self) -> bool:
        """Whether this plan measured the baseline (rather than reading it from the cache)."""
        return self._process is not None

    def bytes(self) -> int:
        import subprocess

        if self._process is None:
            return int(self._cached or 0)
        try:
            out, _ = self._process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            return 0
        lines = out.strip().splitlines()
        if self._process.returncode != 0 or not lines:
            return 0
        self._cached = int(lines[-1])
        self._write_cache(self._cached)
        return self._cached
