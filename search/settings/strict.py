"""The base of every config model: frozen, typed, strict about keys and numbers."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Strict(BaseModel):
    # No NaN or infinity anywhere: a range up to .inf passes every ordering check and fails deep inside Optuna.
    # A field's docstring is its description (the config reference, docs/config.md, is built from them).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """A boolean where a number belongs (``num_trials: true``; pydantic would read it as 1) is refused, and so is
        an integer past 64 bits (torch and the tokenizers overflow on it). Runs after a field's own before-validators,
        so those that give ``off``/``true`` a meaning still do."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _numbers_only(field.annotation):
            raise ValueError("a boolean where a number belongs; write the number")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            raise ValueError(
                f"{value:.3g} is past what any library here counts to (2^63); write a smaller number"
            )
        return value


def _numbers_only(annotation: Any) -> bool:
    """Whether a field of this type takes numbers (int, float) and nothing a boolean could mean: no bool, no
    model or container, no Any (optional, literal strings and text may sit beside the numbers)."""
    members, numeric = [annotation], False
    while members:
        tp = members.pop()
        origin = typing.get_origin(tp)
        if origin is Annotated:
            members.append(typing.get_args(tp)[0])
        elif origin in (Union, types.UnionType):
            members.extend(typing.get_args(tp))
        elif origin is Literal:
            if any(isinstance(a, bool) for a in typing.get_args(tp)):
                return False
        elif tp in (int, float):
            numeric = True
        elif tp not in (str, type(None)):
            return False
    return numeric


TYPED = "typed"
"""Validation context key: the config was typed by a user (a YAML file, ``--set``), where a size must say its unit;
Python callers and a search's own saved config.yaml pass plain numbers too."""
