"""Sizes written as text in configs and on the command line: ``8GB``, ``512MiB`` or a plain number of bytes."""

from __future__ import annotations

import math
import re

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(value: int | float | str) -> int:
    """``8GB``, ``512MiB`` or a plain number of bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"cannot read {value!r} as a size; write e.g. 8GB or 512MiB")
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read {value!r} as a size; write e.g. 8GB or 512MiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
