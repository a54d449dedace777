"""Every number a user types, read one way in YAML and on the command line: sizes (``8GB``, ``512MiB``), counts
(``100000``, ``100k``, ``1.5M``) and fractions (``0.9``). Each reader raises ``ValueError`` with a message that says
what to write instead; the caller names the field."""

from __future__ import annotations

import math
import re

_UNITS = {
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
_COUNT_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}
_NUMBER = r"\s*([0-9][0-9_]*\.?[0-9]*|\.[0-9]+)\s*"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_bytes(value: int | float | str, *, unit_required: bool = True) -> int:
    """``8GB``, ``512MiB``, ``1024B``. A bare number is refused where the user typed it (``unit_required``: YAML,
    the command line), since ``8`` would be 8 bytes and never what was meant; Python callers may pass bytes."""
    example = "write e.g. 8GiB, 8GB or 512MiB"
    text = str(value) if _is_number(value) else value
    match = re.fullmatch(_NUMBER + r"([a-zA-Z]*)\s*", text) if isinstance(text, str) else None
    if not match or (match.group(2) and match.group(2).lower() not in _UNITS):
        if isinstance(text, str) and re.fullmatch(r"\s*-" + _NUMBER + r"[a-zA-Z]*\s*", text):
            raise ValueError(f"{value!r} is negative; a size is at least 1B ({example})")
        raise ValueError(f"cannot read {value!r} as a size; {example}")
    number, unit = match.group(1).replace("_", ""), match.group(2).lower()
    if not unit and unit_required:
        raise ValueError(f"{number} has no unit; write e.g. {number}GiB or {number}GB ({number}B for bytes)")
    size = float(number) * _UNITS[unit or "b"]
    if not math.isfinite(size) or size >= 2**63:
        raise ValueError(f"{value!r} is too large a size; {example}")
    return int(size)


def format_bytes(n: int) -> str:
    """A size as it is read back by ``parse_bytes``, exactly: ``8GiB``, ``8GB``, else bytes (``1000001B``)."""
    for unit in ("TiB", "GiB", "MiB", "TB", "GB", "MB", "KiB", "kB"):
        scale = _UNITS[unit.lower()]
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def parse_count(value: int | float | str, *, minimum: int = 0) -> int:
    """A whole number: ``100000``, ``100_000``, ``100k``, ``1.5M``, ``2B`` (at least ``minimum``)."""
    example = "write e.g. 100000, 100k or 1.5M"
    if _is_number(value):
        number = float(value)
    elif isinstance(value, str):
        # 100000, 100_000, 1e6 (as Python writes it), 100k, 1.5M, 2B
        match = re.fullmatch(
            r"\s*\+?([0-9][0-9_]*\.?[0-9]*(?:[eE]\+?[0-9]+)?|\.[0-9]+)\s*([a-zA-Z]?)\s*", value
        )
        if not match or match.group(2).lower() not in _COUNT_SUFFIXES:
            negative = value.strip().startswith("-")
            raise ValueError(
                f"{value.strip()} is negative; a count is at least {minimum}"
                if negative
                else f"cannot read {value!r} as a count; {example}"
            )
        number = float(match.group(1).replace("_", "")) * _COUNT_SUFFIXES[match.group(2).lower()]
    else:
        raise ValueError(f"cannot read {value!r} as a count; {example}")
    if math.isfinite(number) and number >= 2**63 or number == math.inf:
        raise ValueError(f"{str(value)[:40]} is too large a count")
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{value} is not a whole number")
    if number < minimum:
        raise ValueError(f"{value} is too small: at least {minimum}")
    return int(number)


def parse_fraction(value: int | float | str) -> float:
    """A fraction between 0 and 1: ``0.9`` or ``90%``; a bare percentage gets its fraction suggested (``90``: did
    you mean 0.9?)."""
    text, scale = (value.strip(), 1.0) if isinstance(value, str) else (value, 1.0)
    if isinstance(text, str) and text.endswith("%"):
        text, scale = text[:-1], 0.01
    try:
        number = float(text) * scale if isinstance(text, str) or _is_number(text) else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"cannot read {value!r} as a fraction; write a number between 0 and 1, e.g. 0.9")
    if not 0 <= number <= 1:
        hint = f"; did you mean {number / 100:g}?" if 1 < number <= 100 else ""
        raise ValueError(f"{value} is not a fraction between 0 and 1{hint}")
    return number
