"""The registry of searchable PEFT method families.

Each family lives in its own module and registers one `MethodSpace`. A space samples a plain dict shaped like
PEFT's `adapter_config.json` (``peft_type`` plus keyword arguments); ``peft.get_peft_config`` turns it into the
real config, so a user can paste a sampled config into their own code unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

QUANTIZATION_LEVELS: tuple[str, ...] = ("none", "int8", "nf4", "fp4")
"""`none` keeps the base model in fp32/bf16; the others load it through bitsandbytes."""

LAYER_CHOICES: tuple[str, ...] = ("all", "top-half", "every-other")
TARGET_CHOICES: tuple[str, ...] = ("attention", "attention+mlp", "all-linear")


@dataclass(frozen=True)
class SpaceContext:
    """What a method space may know: facts about the model and the user's knobs. Never the model itself."""

    task_type: str
    """PEFT task type: ``SEQ_CLS`` or ``CAUSAL_LM``."""
    num_layers: int
    target_sets: Mapping[str, list[str]]
    """Named target set -> PEFT ``target_modules`` list, resolved against the model's module names."""
    mlp_targets: Mapping[str, list[str]]
    """Named target set -> the entries of its ``target_modules`` that hit MLP layers (IA3's feed-forward)."""
    norm_targets: list[str]
    """``target_modules`` for the model's normalisation layers (LN tuning)."""
    targets: Sequence[str] = TARGET_CHOICES
    layers: Sequence[str] = LAYER_CHOICES
    ranks: Sequence[int] = (4, 8, 16)
    alpha_ratios: Sequence[float] = (1.0, 2.0)
    dropouts: Sequence[float] = (0.0, 0.1)
    virtual_tokens: Sequence[int] = (8, 16)
    total_steps: int = 100
    quantization: str = "none"
    """The quantization level already chosen for this trial, for knobs that only some levels support."""


Sampler = Callable[["optuna.Trial", SpaceContext], dict[str, Any]]


@dataclass(frozen=True)
class MethodSpace:
    """One searchable PEFT method family."""

    name: str
    peft_type: str
    sample: Sampler
    quantization: frozenset[str]
    """Quantization levels this method can train on; other combinations are excluded from the space."""
    description: str = ""
    quantization_why: str = ""
    """Why the other quantization levels are excluded, said when a candidate asks for one."""
    library: str = "peft"
    """The library that builds the adapter: ``peft``, or ``adapters`` (AdapterHub, an optional extra)."""
    family: str = ""
    """The family the report groups it in (its own name unless set)."""


EXTRAS = {"adapters": "adapters"}
"""Optional library -> the ``peft-search`` extra that installs it."""
_REGISTRY: dict[str, MethodSpace] = {}


def register(
    name: str,
    *,
    peft_type: str,
    quantization: Sequence[str] = QUANTIZATION_LEVELS,
    description: str = "",
    quantization_why: str = "",
    library: str = "peft",
    family: str = "",
) -> Callable[[Sampler], Sampler]:
    """Register a sampler as the method family ``name``. Registering a name twice is an error."""

    unknown = set(quantization) - set(QUANTIZATION_LEVELS)
    if unknown:
        raise ValueError(f"method {name!r}: unknown quantization levels {sorted(unknown)}")

    def decorator(fn: Sampler) -> Sampler:
        if name in _REGISTRY:
            raise ValueError(f"PEFT method family {name!r} is already registered")
        _REGISTRY[name] = MethodSpace(
            name,
            peft_type,
            fn,
            frozenset(quantization),
            description,
            quantization_why,
            library,
            family or name,
        )
        return fn

    return decorator


def library_installed(library: str) -> bool:
    """Whether an adapter library can be imported here (found, not imported: the config loader stays fast)."""
    import importlib.util
    import sys

    if sys.modules.get(library) is not None:  # imported already (a lazy module may have no __spec__)
        return True
    return importlib.util.find_spec(library) is not None


def install_hint(name: str) -> str | None:
    """For a method registered but not installed here: the one line that says how to install it."""
    space = _REGISTRY.get(name)
    if space is None or library_installed(space.library):
        return None
    extra = EXTRAS.get(space.library, space.library)
    return (
        f"method {name!r} needs the {space.library!r} library, not installed here; "
        f'pip install "peft-search[{extra}]"'
    )


def get_method(name: str) -> MethodSpace:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(registered_methods()))
        raise KeyError(f"unknown PEFT method {name!r}; known: {known}") from None


def registered_methods() -> dict[str, MethodSpace]:
    """The method families this environment can train: those of an optional library only where it is installed."""
    return {n: s for n, s in _REGISTRY.items() if s.library == "peft" or library_installed(s.library)}


def family_of(method: str) -> str:
    """The family a method is shown in (installed here or not: a report may read another machine's search)."""
    space = _REGISTRY.get(method)
    return space.family if space is not None else method


def method_for_peft_type(peft_type: str) -> str:
    """The family name that owns a PEFT type (LoRA variants all belong to ``lora``)."""
    for space in _REGISTRY.values():
        if space.peft_type == peft_type.upper():
            return space.name
    return peft_type.lower()
