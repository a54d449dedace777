"""``training:`` beyond the search's own settings: any field of transformers' ``TrainingArguments``, fixed or searched.

A trial trains with ``transformers.Trainer`` (``search.worker.training``), so every ``TrainingArguments`` field a
user sets in their own fine-tuning runs may be set here (``max_grad_norm: 1.0``, ``lr_scheduler_type: cosine``,
``optim: paged_adamw_8bit``, ``gradient_accumulation_steps: 2``) and any of them may be searched the way
``learning_rate`` is:

- a scalar fixes it for every trial (so does a list or mapping for a field that takes one, e.g.
  ``lr_scheduler_kwargs: {min_lr: 1.0e-6}``);
- ``[low, high]`` (two numbers, for a numeric field) is a range: integers uniformly, floats log-uniformly when
  ``low > 0`` (as ``learning_rate``), uniformly otherwise; ``{low: , high: , log: }`` says which;
- any other list, or ``{choices: [...]}``, is a set of choices.

Names are checked against the dataclass's own fields (with a did-you-mean), values against its type annotations,
and the fields the search itself controls are refused with the setting to use instead. Validated once, at load.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from peft_search.spaces import Choice, Domain, Range

_EVALUATION = "the search evaluates on the held-out rows, at the end and at early stopping's rungs (search.early_stopping)"
_SAVING = (
    "each trial saves its adapter once trained (train/ in the results directory); training.checkpoint_every keeps "
    "mid-trial checkpoints"
)
_DISTRIBUTION = "resources.num_workers decides how a trial is spread over workers (DDP)"
_SEED = "search.seed sets it for every trial (search.repeats draws new ones)"
_TRACKING = "use the tracking: section (Ray Tune's MLflow, W&B and TensorBoard logger callbacks)"
_HUB = "export with `peft-search best --export DIR` and push that"

CONTROLLED: dict[str, str] = {
    "output_dir": _SAVING,
    "overwrite_output_dir": _SAVING,
    "save_strategy": _SAVING,
    "save_steps": _SAVING,
    "save_total_limit": _SAVING,
    "save_only_model": _SAVING,
    "save_on_each_node": _SAVING,
    "save_safetensors": _SAVING,
    "enable_jit_checkpoint": _SAVING,
    "resume_from_checkpoint": _SAVING,
    "seed": _SEED,
    "data_seed": _SEED,
    "per_device_train_batch_size": "set training.batch_size (rows per optimizer step, split across workers and "
    "gradient_accumulation_steps)",
    "per_device_eval_batch_size": "set training.eval_batch_size",
    "num_train_epochs": "set training.epochs",
    "warmup_steps": "set training.warmup_ratio (a share of the steps)",
    "warmup_ratio": "set training.warmup_ratio",
    "group_by_length": "set training.train_sampling_strategy: group_by_length",
    "auto_find_batch_size": "training.batch_size is part of what the trials compare; set it",
    "report_to": _TRACKING,
    "run_name": _TRACKING,
    "project": _TRACKING,
    "eval_strategy": _EVALUATION,
    "eval_steps": _EVALUATION,
    "eval_delay": _EVALUATION,
    "eval_on_start": _EVALUATION,
    "do_eval": _EVALUATION,
    "do_train": "every trial trains",
    "do_predict": _EVALUATION,
    "load_best_model_at_end": _EVALUATION,
    "metric_for_best_model": _EVALUATION,
    "greater_is_better": _EVALUATION,
    "use_cpu": "resources.gpus_per_worker decides the device",
    "no_cuda": "resources.gpus_per_worker decides the device",
    "fsdp": _DISTRIBUTION,
    "fsdp_config": _DISTRIBUTION,
    "deepspeed": _DISTRIBUTION,
    "ddp_backend": _DISTRIBUTION,
    "local_rank": _DISTRIBUTION,
    "parallelism_config": _DISTRIBUTION,
    "accelerator_config": _DISTRIBUTION,
    "remove_unused_columns": "the search's collator builds each batch from its own tokenized rows",
    "label_names": "the search's collator builds each batch from its own tokenized rows",
}
"""Fields of ``TrainingArguments`` the search sets itself, and what to set instead."""

_HUB_PREFIX = "hub_"


@dataclasses.dataclass(frozen=True)
class Arguments:
    """The ``TrainingArguments`` fields a config sets: fixed for every trial, or searched (name -> domain)."""

    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    searched: Mapping[str, Domain] = dataclasses.field(default_factory=dict)

    def values(self, name: str, default: Any) -> list[Any]:
        """Every value a trial may get for ``name`` (an integer range: each integer in it)."""
        if name in self.fixed:
            return [self.fixed[name]]
        domain = self.searched.get(name)
        if isinstance(domain, Choice):
            return list(domain.values)
        if isinstance(domain, Range):
            if domain.integer:
                return list(range(int(domain.low), int(domain.high) + 1))
            return [domain.low, domain.high]
        return [default]


@functools.cache
def argument_types() -> dict[str, Any]:
    """``TrainingArguments``' fields and their annotations (imports transformers)."""
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(TrainingArguments) if f.init}


def parse_arguments(raw: Mapping[str, Any], own: tuple[str, ...] = ()) -> Arguments:
    """The ``TrainingArguments`` fields of a ``training:`` section (``raw``: its keys beyond the search's ``own``).

    Raises ``ValueError("training.NAME: ...")``: one line naming the field and the fix.
    """
    if not raw:
        return Arguments()
    types_ = argument_types()
    fixed: dict[str, Any] = {}
    searched: dict[str, Domain] = {}
    for name, value in raw.items():
        plain = isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name)
        where = f"training.{name}" if plain else f"training[{str(name)!r}]"  # an empty or odd key, quoted
        if not isinstance(name, str):
            raise ValueError(f"{where}: not a field of transformers.TrainingArguments (field names are text)")
        if name in CONTROLLED or name.startswith(_HUB_PREFIX) or name == "push_to_hub":
            reason = CONTROLLED.get(name, _HUB)
            raise ValueError(f"{where}: set by the search; {reason}")
        if name not in types_:
            close = difflib.get_close_matches(name, [*types_, *own], n=1, cutoff=0.75)
            hint = (
                f"; did you mean {close[0]}?"
                if close
                else "; see transformers.TrainingArguments for the fields"
            )
            raise ValueError(f"{where}: not a field of transformers.TrainingArguments{hint}")
        domain = _domain(where, value, types_[name])
        if domain is None:
            fixed[name] = _checked(where, value, types_[name])
        else:
            searched[name] = domain
    return Arguments(fixed, searched)


def _domain(where: str, value: Any, hint: Any) -> Domain | None:
    """The search domain ``value`` writes for a field of type ``hint``, or None when it is one fixed value."""
    if isinstance(value, Mapping) and not _accepts(hint, value):
        if set(value) == {"choices"}:
            return _choices(where, value["choices"], hint)
        if {"low", "high"} <= set(value) <= {"low", "high", "log"}:
            return _range(where, value["low"], value["high"], hint, value.get("log"))
        raise ValueError(
            f"{where}: write a value, [low, high], a list of choices, {{low, high, log}} or {{choices: [...]}} "
            f"(got keys {', '.join(map(str, value))})"
        )
    if isinstance(value, list) and not _accepts(hint, value):
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if len(value) == 2 and numeric and _numeric(hint):
            return _range(where, value[0], value[1], hint, None)
        return _choices(where, value, hint)
    return None


def _range(where: str, low: Any, high: Any, hint: Any, log: Any) -> Range:
    low, high = _checked(where, low, hint), _checked(where, high, hint)
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)):
        raise ValueError(f"{where}: a range needs numbers, got [{low!r}, {high!r}]")
    if not low <= high:
        raise ValueError(f"{where}: a range needs low <= high, got [{low}, {high}]")
    integer = _integer(hint)
    log = bool(low > 0 and not integer) if log is None else bool(log)
    if log and low <= 0:
        raise ValueError(f"{where}: a log-scaled range needs low > 0, got {low}")
    return Range(low, high, log=log, integer=integer)


def _choices(where: str, values: Any, hint: Any) -> Choice:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: choices must be a non-empty list, got {values!r}")
    checked = tuple(_checked(where, v, hint) for v in values)
    if any(isinstance(v, (list, dict)) for v in checked):
        raise ValueError(f"{where}: each choice must be one value (a number, text or true/false)")
    return Choice(checked)


def _checked(where: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type (pydantic, lax: YAML's ``1e-4`` text is a float), or one line why not."""
    from pydantic import TypeAdapter, ValidationError

    try:
        out = TypeAdapter(hint).validate_python(value)
    except ValidationError as err:
        raise ValueError(
            f"{where}: {value!r} is not a {_describe(hint)} ({err.errors()[0]['msg']})"
        ) from None
    if isinstance(out, enum.Enum):
        out = out.value
    names = _enum_values(hint)
    if names and isinstance(out, str) and out not in names:
        close = difflib.get_close_matches(out, names, n=1, cutoff=0.6)
        hint_text = f"; did you mean {close[0]}?" if close else f"; choose from {', '.join(names)}"
        raise ValueError(f"{where}: unknown value {out!r}{hint_text}")
    return out


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _enum_values(hint: Any) -> list[str]:
    for member in _members(hint):
        if isinstance(member, type) and issubclass(member, enum.Enum):
            return [str(m.value) for m in member]
    return []


def _accepts(hint: Any, value: Any) -> bool:
    """Whether the field itself takes a list or mapping (then such a value is fixed, not a search domain)."""
    kind = list if isinstance(value, list) else dict
    for member in _members(hint):
        origin = typing.get_origin(member) or member
        if origin is kind or (kind is dict and origin is Mapping):
            return True
    return False


def _numeric(hint: Any) -> bool:
    return any(m in (int, float) for m in _members(hint))


def _integer(hint: Any) -> bool:
    members = _members(hint)
    return int in members and float not in members


def _describe(hint: Any) -> str:
    names = [getattr(m, "__name__", str(m)) for m in _members(hint) if m is not type(None)]
    return " or ".join(names) + (" or null" if type(None) in _members(hint) else "")
