"""Checking explicit candidates against PEFT and the model before anything runs.

A misspelt key, an unknown PEFT type or a ``target_modules`` entry that matches no module is a mistake in the
config, reported at once with the field to fix; it must not surface minutes later as an ``infeasible`` trial.
What only injection can tell (PEFT refusing a layer type, a budget) stays a trial's outcome.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from peft_search import spaces
from peft_search.search.errors import ConfigError
from peft_search.search.inputs import adapterhub
from peft_search.search.settings.space_config import CandidateSpec

TASK_TYPES = {"sequence-classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}
"""PEFT's ``task_type`` for each ``model.task``."""


def measuring_lora(task: str) -> dict[str, object]:
    """The adapter the measurements before a search train (packing's gain, threads a trial, the heap's share):
    LoRA r 8 on every linear layer. What an adapter adds to a step is small beside its base model's forward and
    backward, so one representative stands for the search's trials."""
    return {
        "peft_type": "LORA",
        "task_type": TASK_TYPES[task],
        "r": 8,
        "lora_alpha": 16,
        "target_modules": "all-linear",
    }


def check_space_fits(space, base, facts, task: str) -> None:
    """Raise ``ConfigError`` where ``space`` (``SpaceConfig``) does not fit the model: a candidate PEFT cannot build
    on ``base`` (its meta-device model), or a rank above what ``facts`` (its ``ModelFacts``) allow."""
    check_candidates(space.candidates, [n for n, _ in base.named_modules()], facts.num_layers, task)
    check_ranks(space.ranks, facts.widest_rank)


def check_ranks(ranks: Sequence[int], widest_rank: int) -> None:
    """Raise ``ConfigError`` for a ``space.ranks`` value above every weight matrix's ``min(in, out)`` in this model
    (``widest_rank``; 0 when it has none): such a rank adds parameters and memory and nothing a lower one lacks."""
    over = sorted({r for r in ranks if r > widest_rank}) if widest_rank > 0 else []
    if over:
        raise ConfigError(
            f"space.ranks: {', '.join(map(str, over))} {'is' if len(over) == 1 else 'are'} more than any layer of "
            f"this model can use (its weight matrices' min(in, out) is at most {widest_rank}); use ranks up to "
            f"{widest_rank}"
        )


def check_candidates(
    candidates: Sequence[CandidateSpec], module_names: Sequence[str], num_layers: int, task: str
) -> None:
    """Raise ``ConfigError`` for the first candidate PEFT cannot build or whose targets miss this model.

    Args:
        candidates: ``space.candidates`` of the config.
        module_names: every module name of the model (``named_modules()`` of the meta-device model).
        num_layers: its number of transformer blocks (``layers_to_transform`` indexes them).
        task: ``model.task``.
    """
    for i, candidate in enumerate(candidates):
        field = f"space.candidates[{i}].peft_config"
        config = _peft_config(candidate.peft_config, field)
        _check_quantization(candidate, f"space.candidates[{i}].quantization")
        task_type = candidate.peft_config.get("task_type")
        if task_type is not None and task_type != TASK_TYPES[task]:
            raise ConfigError(
                f"{field}.task_type: {task_type!r} does not fit model.task {task}; use {TASK_TYPES[task]}"
            )
        # None leaves PEFT to pick its default targets for the architecture; 'all-linear' is PEFT's shorthand.
        targets = candidate.peft_config.get("target_modules") if hasattr(config, "target_modules") else None
        if targets is not None and not (isinstance(targets, str) and targets.lower() == "all-linear"):
            _check_targets(targets, module_names, f"{field}.target_modules")
        layers = candidate.peft_config.get("layers_to_transform")
        if layers is not None:
            indices = list(layers) if isinstance(layers, (list, tuple)) else [layers]
            outside = [n for n in indices if type(n) is not int or not 0 <= n < num_layers]
            if outside:
                raise ConfigError(
                    f"{field}.layers_to_transform: {outside} outside this model's layers 0..{num_layers - 1}; "
                    "fix the indices"
                )


def _check_quantization(candidate: CandidateSpec, field: str) -> None:
    """A candidate on a quantization level its method does not train on, refused before anything runs with the
    reason (``spaces``' registration says it: no bitsandbytes layer in PEFT, LyCORIS on 4-bit, ...)."""
    method = spaces.method_for_peft_type(candidate.peft_config["peft_type"])
    if method not in spaces.registered_methods():
        return  # a PEFT type the space does not sample: PEFT itself judges it when the trial builds
    space = spaces.get_method(method)
    allowed = [q for q in spaces.QUANTIZATION_LEVELS if q in space.quantization]
    if candidate.quantization not in allowed:
        why = f" ({space.quantization_why})" if space.quantization_why else ""
        raise ConfigError(
            f"{field}: {method} trains on {' or '.join(allowed)} bases only{why}; use {allowed[-1]}"
        )


def _peft_config(peft_config: dict[str, Any], field: str):
    """PEFT's own config object, or the reason PEFT gives for refusing it, as a config error."""
    from peft import get_peft_config
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    peft_type = peft_config["peft_type"]
    if adapterhub.is_adapterhub(peft_config):
        hint = spaces.install_hint(spaces.method_for_peft_type(peft_type))
        if hint is not None:
            raise ConfigError(f"{field}.peft_type: {hint}")
    elif peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        known = ", ".join(sorted(str(getattr(t, "value", t)) for t in PEFT_TYPE_TO_CONFIG_MAPPING))
        raise ConfigError(f"{field}.peft_type: unknown PEFT type {peft_type!r}; choose from {known}")
    try:
        if adapterhub.is_adapterhub(peft_config):
            return adapterhub.adapterhub_config(peft_config)
        return get_peft_config(dict(peft_config))
    except TypeError as err:
        unexpected = re.search(r"unexpected keyword argument '([^']+)'", str(err))
        if unexpected:
            raise ConfigError(
                f"{field}.{unexpected.group(1)}: unknown key for {peft_type}; remove it or check its spelling"
            ) from None
        raise ConfigError(f"{field}: PEFT refuses it ({_first_line(err)}); fix the config") from None
    except (ValueError, KeyError) as err:
        raise ConfigError(f"{field}: PEFT refuses it ({_first_line(err)}); fix the config") from None


def _check_targets(targets: Any, module_names: Sequence[str], field: str) -> None:
    """PEFT's matching rules: a string is a regex matched against the whole module name; a list entry matches a
    module whose name is the entry or ends with ``.entry``."""
    if not isinstance(targets, str) and not (
        isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) and t for t in targets)
    ):
        raise ConfigError(
            f"{field}: write a list of module names, a regex string or all-linear (got {targets!r}); "
            f"{_examples(module_names)}"
        )
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as err:
            raise ConfigError(f"{field}: {targets!r} is not a valid regular expression ({err})") from None
        if not any(pattern.fullmatch(name) for name in module_names):
            raise ConfigError(
                f"{field}: regex {targets!r} matches no module of this model; {_examples(module_names)}"
            )
        return
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in module_names)]
    if missing:
        raise ConfigError(
            f"{field}: {sorted(missing)} match no module of this model; {_examples(module_names)}"
        )


def _examples(module_names: Sequence[str]) -> str:
    """A few real module-name endings to copy from (the last part of each name, most common first)."""
    leaves: dict[str, int] = {}
    for name in module_names:
        leaf = name.rsplit(".", 1)[-1]
        if name and not leaf.isdigit():
            leaves[leaf] = leaves.get(leaf, 0) + 1
    common = sorted(leaves, key=lambda k: -leaves[k])[:12]
    return f"module names end in e.g. {', '.join(common)}"


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def normal_peft_config(peft_config: Mapping[str, Any]) -> dict[str, Any]:
    """A PEFT config dict with PEFT's defaults filled in and sets as sorted lists, so that two spellings of one
    config compare equal (``spaces.sampling.describe_candidate`` matches candidates to the space with it)."""
    import peft

    if adapterhub.is_adapterhub(peft_config):
        full = {**adapterhub.adapterhub_config(peft_config).to_dict(), **dict(peft_config)}
    else:
        full = peft.get_peft_config(dict(peft_config)).to_dict()
    return {
        k: sorted(v) if isinstance(v, (set, frozenset)) else v
        for k, v in full.items()
        if k not in ("peft_version", "base_model_name_or_path", "revision", "inference_mode")
    }


def describe_candidates(space: spaces.DefineByRun) -> spaces.DefineByRun:
    """The space with each explicit candidate's own values of the sampled parameters attached (enqueued with it)."""
    described = tuple(
        replace(c, params=spaces.describe_candidate(c, space, normal_peft_config))
        for c in space.spec.candidates
    )
    return replace(space, spec=replace(space.spec, candidates=described))
