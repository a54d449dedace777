"""Loading a search config: one YAML file, parsed and validated once, with errors that name the field and the fix."""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from peft_search.search.errors import ConfigError
from peft_search.search.settings.schema import SearchConfig
from peft_search.search.settings.strict import TYPED

_UNION_MEMBER = re.compile(r"(float|int|str|bool|none|[a-z][a-z-]*\[.*\])")
"""How pydantic names the member of a union a value failed (``float``, ``literal['off','auto']``) in an error's
location: not a key of the config, so not said."""


def _loc_part(part: str | int) -> str:
    if isinstance(part, int):
        return f"[{part}]"
    if part == "[key]" or _UNION_MEMBER.fullmatch(part):  # "[key]": the key itself inside a dict
        return ""
    return f".{part}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part) else f"[{part!r}]"


def _fields_at(loc: tuple) -> list[str]:
    """The keys the schema has where ``loc`` points (the config's top level for ``()``)."""
    model: Any = SearchConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        inner = [a for a in typing.get_args(field.annotation) or (field.annotation,) if isinstance(a, type)]
        models = [a for a in inner if issubclass(a, BaseModel)]
        if not models:
            return []
        model = models[0]
    return list(model.model_fields)


def _first(errors: list[dict]) -> dict:
    """The error to say: a misspelt key before the "required" its right spelling then gets (``modle:``)."""
    for error in errors:
        if error["type"] == "extra_forbidden" and difflib.get_close_matches(
            str(error["loc"][-1]), _fields_at(error["loc"][:-1]), n=1
        ):
            return error
    return errors[0]


def _format(err: ValidationError) -> str:
    first = _first(err.errors())
    loc = "".join(_loc_part(p) for p in first["loc"]).lstrip(".")
    loc = f"config{loc}" if loc.startswith("[") else loc  # an odd top-level key
    msg = first["msg"].removeprefix("Value error, ")
    if not loc:  # whole-config checks name their own field
        return msg if re.match(r"^[a-z_.]+(\[('[^']*'|\d+)\])*: ", msg) else f"config: {msg}"
    if first["type"] == "extra_forbidden":
        near = difflib.get_close_matches(str(first["loc"][-1]), _fields_at(first["loc"][:-1]), n=1)
        msg = (
            f"unknown key; did you mean {near[0]}?"
            if near
            else "unknown key; remove it or check its spelling"
        )
    elif first["type"] == "missing":
        msg = "required; add it"
    elif first["type"] == "string_pattern_mismatch" and loc == "name":
        msg = (
            f"{first.get('input')!r} is not a name: letters, digits, '_', '.' and '-', starting with a letter or "
            "digit (no spaces or '/'), e.g. bbcnews-lora"
        )
    elif first["type"] == "invalid_key":
        msg = f"keys must be names, got {first.get('input')!r}"
    elif first["type"] == "literal_error":
        msg = f"{msg} (got {first.get('input')!r})"
    return f"{loc}: {msg}"


def parse_config(data: Any, *, typed: bool = False) -> SearchConfig:
    """Validate a raw config; ``typed``: a user wrote it (YAML, ``--set``), so sizes must say their unit."""
    if not isinstance(data, dict):
        raise ConfigError("config: the YAML file must hold a mapping of keys (name, model, dataset, ...)")
    try:
        return SearchConfig.model_validate(data, context={TYPED: typed})
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SearchConfig:
    """Read, merge ``overrides`` (dotted keys) and validate a YAML search config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: no file at {path}; pass the path of a YAML search config")
    try:
        # safe_load builds plain data only: a config is never code (``!!python/...`` tags are refused).
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_problem(path, err)) from None
    return parse_config(with_overrides(data, overrides) if isinstance(data, dict) else data, typed=True)


_SHORTHANDS = {"search.early_stopping": "rule"}
"""Sections a string may stand for, and the field it sets (``search.early_stopping: asha`` is ``{rule: asha}``)."""


def with_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of the raw config ``data`` with each dotted key of ``overrides`` set (``training.max_steps: 50``)."""
    import copy

    data = copy.deepcopy(data)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for depth, key in enumerate(parents):
            shorthand = _SHORTHANDS.get(".".join(parents[: depth + 1]))
            if shorthand and isinstance(node.get(key), str):  # ``early_stopping: asha`` takes its dotted keys
                node[key] = {shorthand: node[key]}
            if not isinstance(node.get(key), dict):
                if node.get(key) is not None:
                    raise ConfigError(
                        f"{dotted.rsplit('.', 1)[0]}: must be a mapping to take {dotted} (got {node[key]!r})"
                    )
                node[key] = {}
            node = node[key]
        node[leaf] = value
    return data


class _UniqueKeys(yaml.SafeLoader):
    """``safe_load``, except that a key written twice in one mapping is an error (PyYAML keeps the last one
    silently: a second ``name:`` would rename the search)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[str, int] = {}
        for (
            key_node,
            _,
        ) in node.value:  # the mapping's own keys (a ``<<`` merge may be overridden, as YAML says)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"{key!r} is written twice (lines {seen[key]} and {line}); keep one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(path: Path, err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark else ""
    problem = str(getattr(err, "problem", "") or "")
    tag = re.search(r"constructor for the tag '([^']*)'", problem)
    if tag:
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return f"config: {path}{where}: YAML tag {name!r} is not allowed (a config is plain data); remove it"
    if "is written twice" in problem:  # ``_UniqueKeys``: the problem says it all
        return f"config: {path}: {problem}"
    detail = f" ({problem})" if problem else ""
    return f"config: {path} is not valid YAML{where}{detail}; fix the syntax"


def default_config_path() -> Path:
    return Path(__file__).parent.parent / "configs" / "bbcnews-minilm.yaml"
