"""The base of every config model: frozen, typed, strict about keys and numbers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # No NaN or infinity anywhere: a range up to .inf passes every ordering check and fails deep inside Optuna.
    # A field's docstring is its description (the config reference, docs/config.md, is built from them).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True)
