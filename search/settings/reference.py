"""The config reference, written from the schema itself: every key, its type, its default and its field docstring.

    python -m peft_search.search.settings.reference > docs/config.md

A test keeps docs/config.md equal to this output, so the reference cannot drift from the code.
"""

from __future__ import annotations

import re
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from peft_search.search.settings.schema import SearchConfig


def markdown() -> str:
    """The whole reference page."""
    parts = [
        "# Search config reference",
        "",
        "Generated from the schema (`search/settings/schema.py`, its `space` and `search` sections in `space_config.py` and `search_section.py`) by",
        "`python -m peft_search.search.settings.reference`; each description is the field's docstring. A config is validated once, before anything runs; a mistake gets",
        "one line naming the key and the fix. Unknown keys are refused.",
        "",
    ]
    for path, model in _sections(SearchConfig, ""):
        parts += [f"## `{path}`" if path else "## Top level", ""]
        if model.__doc__ and model is not SearchConfig and not model.__doc__.startswith(model.__name__ + "("):
            parts += [" ".join(model.__doc__.split()), ""]
        parts += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            parts.append(
                f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {_text(field.description or '')} |"
            )
        parts.append("")
    return "\n".join(parts)


def _sections(model: type[BaseModel], path: str):
    yield path, model
    for name, field in model.model_fields.items():
        for sub in _models(field.annotation):
            yield from _sections(
                sub, f"{path}.{name}".lstrip(".") + ("[]" if _is_list(field.annotation) else "")
            )


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def _type(annotation: Any) -> str:
    text = re.sub(r"\b(typing|search\.settings\.\w+)\.", "", str(annotation))
    text = re.sub(r"<class '([\w.]+)'>", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return _text(text.replace("NoneType", "None"))


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump() for v in value]
    return f"`{value!r}`" if value is not None else "`None`"


def _text(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


if __name__ == "__main__":
    print(markdown())
