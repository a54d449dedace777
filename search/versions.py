"""Installed distributions' versions: ``peft-search --version``, ``peft_search.__version__`` and the run facts."""

from __future__ import annotations


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (``peft-search``, ``torch``, ...); None when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
