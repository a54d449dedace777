"""The base of every config model: frozen, typed, strict about keys and numbers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # No NaN or infinity anywhere: a range up to .inf passes every ordering check and fails deep inside Optuna.
    # A field's docstring is its description (the config reference, docs/config.md, is built from them).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True)


TYPED = "typed"
"""Validation context key: the config was typed by a user (a YAML file, ``--set``), where a size must say its unit;
Python callers and a search's own saved config.yaml pass plain numbers too."""
