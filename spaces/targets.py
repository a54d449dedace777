"""Resolve named target sets (attention, attention+mlp, all-linear) against a model's real module names.

The result is a PEFT ``target_modules`` list of the shortest module-name suffixes that select exactly the wanted
layers, e.g. ``["attention.output.dense", "key", "query", "value"]`` for BERT attention, so the sampled config
reads like one a person would write and works with PEFT's ``layers_to_transform``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_LAYER_INDEX = re.compile(r"^\d+$")
_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)
_HEAD_NAMES = ("classifier", "score", "lm_head", "qa_outputs")


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def _in_block(name: str) -> bool:
    return any(_LAYER_INDEX.match(part) for part in name.split("."))


def minimal_suffixes(wanted: Iterable[str], universe: Sequence[str]) -> list[str]:
    """Shortest index-free suffixes whose matches within ``universe`` are exactly ``wanted``.

    A module that no index-free suffix isolates is listed by its full name (PEFT matches those exactly).
    """
    wanted_set = set(wanted)
    suffixes: set[str] = set()
    for name in sorted(wanted_set):
        if any(_matches(name, s) for s in suffixes):
            continue
        parts = name.split(".")
        chosen = name
        for k in range(1, len(parts) + 1):
            tail = parts[-k:]
            if _LAYER_INDEX.match(tail[0]):
                break
            candidate = ".".join(tail)
            if all(u in wanted_set for u in universe if _matches(u, candidate)):
                chosen = candidate
                break
        suffixes.add(chosen)
    return sorted(suffixes)


def resolve_target_sets(
    linear_modules: Sequence[str],
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Map each named target set to a ``target_modules`` list, and to the entries of it that hit MLP layers.

    Args:
        linear_modules: full names of the model's linear layers (``model.named_modules()``), task heads included;
            heads are never targeted (PEFT trains them through ``modules_to_save``).

    Returns:
        ``(target_sets, mlp_targets)``; a set that matches nothing in this model is left out.
    """
    universe = [m for m in linear_modules if m.split(".")[-1] not in _HEAD_NAMES]
    blocks = [m for m in universe if _in_block(m)]
    attention = [m for m in blocks if _ATTENTION.search(m)]
    mlp = [m for m in blocks if m not in attention]
    wanted = {"attention": attention, "attention+mlp": blocks, "all-linear": universe}
    target_sets: dict[str, list[str]] = {}
    mlp_targets: dict[str, list[str]] = {}
    for name, modules in wanted.items():
        if not modules:
            continue
        suffixes = minimal_suffixes(modules, universe)
        target_sets[name] = suffixes
        mlp_targets[name] = [s for s in suffixes if any(_matches(m, s) for m in mlp)]
    return target_sets, mlp_targets


def norm_suffixes(norm_modules: Sequence[str]) -> list[str]:
    """``target_modules`` for LN tuning: every normalisation layer of the model."""
    return minimal_suffixes(norm_modules, norm_modules)
