"""Preparing a search, once, before Ray starts: the model and data checked against the config and tokenized, the
space resolved against the model's modules, and the settings every trial receives. Bad input fails here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_search import spaces
from peft_search.search.errors import ConfigError
from peft_search.search.inputs import data
from peft_search.search.inputs.candidates import check_space_fits, describe_candidates
from peft_search.search.inputs.data import Splits, TokenizedSplits
from peft_search.search.inputs.modeling import ModelFacts, meta_model, model_facts
from peft_search.search.loop.rungs import rung_steps
from peft_search.search.loop.warm_start import check_warm_start
from peft_search.search.results import storage
from peft_search.search.results.layout import TRAIN_DIR
from peft_search.search.settings.schema import SearchConfig
from peft_search.search.settings.space import space_context, space_spec
from peft_search.search.settings.trial import TrialSettings, total_steps
from peft_search.search.worker.faults import faults_from_env


@dataclass(frozen=True)
class Prepared:
    """Everything computed once per search before Ray starts."""

    settings: TrialSettings
    facts: ModelFacts
    splits: Splits
    data: TokenizedSplits
    space_context: spaces.SpaceContext
    space_spec: spaces.SpaceSpec
    warm_start: Path | None = None
    """The previous search whose finished trials seed the study (``search.warm_start``), checked."""
    tokenizer: Any = None
    """The tokenizer the data was tokenized with; saved beside the splits (``data/tokenizer``) for exports."""

    @property
    def steps(self) -> int:
        return self.settings.steps

    @property
    def rungs(self) -> tuple[int, ...]:
        return self.settings.rungs


def prepare(cfg: SearchConfig) -> Prepared:
    """Validate the model and data against the config and tokenize once. Raises ``ConfigError`` early."""

    warm_start = check_warm_start(cfg)
    model_path = _model_path(cfg)
    splits = _splits(cfg)
    tokenizer, base = _tokenizer_and_meta_model(cfg, model_path, len(splits.label_names))
    facts = model_facts(base)
    check_space_fits(cfg.space, base, facts, cfg.model.task)
    data = _tokenized(cfg, splits, tokenizer)
    t = cfg.training
    steps = total_steps(len(data.train), t.batch_size, None if t.epochs else t.max_steps, t.epochs)
    settings = TrialSettings(
        config=cfg,
        model_path=model_path,
        steps=steps,
        rungs=tuple(early_stopping_rungs(cfg, steps)),
        adapters_path=adapters_path(cfg),
        packing=cfg.members_per_group(),
        faults=faults_from_env(),  # chaos tests only (search.worker.faults); empty normally
    )
    space = describe_candidates(spaces.DefineByRun(space_spec(cfg), space_context(cfg, facts, steps)))
    return Prepared(settings, facts, splits, data, space.ctx, space.spec, warm_start, tokenizer)


def adapters_path(cfg: SearchConfig) -> str:
    """Where trials save their adapters: ``train/`` in the search's directory, or on its object store."""
    uri = cfg.results_uri()
    if uri is not None:
        return storage.join(uri, TRAIN_DIR)
    return str(cfg.search_dir() / TRAIN_DIR)


def early_stopping_rungs(cfg: SearchConfig, steps: int) -> list[int]:
    """The rung steps of the ``search.early_stopping`` setting; an error when none falls inside a trial."""

    es = cfg.search.early_stopping
    if es.rule == "none":
        return []
    rungs = rung_steps(steps, es.grace_steps, es.reduction_factor)
    if not rungs:
        raise ConfigError(
            f"search.early_stopping.grace_steps: {es.grace_steps} is not below the trials' {steps} training "
            f"steps; lower it (or leave it unset for steps / reduction_factor)"
        )
    return rungs


def _model_path(cfg: SearchConfig) -> str:
    model_path = cfg.model.resolved_path()
    if not Path(model_path).exists() and (
        model_path.startswith((".", "/", "~")) or model_path.count("/") > 1
    ):
        raise ConfigError(
            f"model.name_or_path: no directory at {model_path}; give a model directory or a hub id"
        )
    if Path(model_path).is_dir() and not (Path(model_path) / "config.json").is_file():
        raise ConfigError(
            f"model.name_or_path: {model_path} has no config.json; give a Hugging Face model directory"
        )
    return model_path


def _splits(cfg: SearchConfig) -> Splits:
    try:
        return data.split_dataset(cfg.dataset, cfg.model.task)
    except data.DatasetError as err:
        raise ConfigError(str(err)) from None


def _tokenizer_and_meta_model(cfg: SearchConfig, model_path: str, num_labels: int):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, revision=cfg.model.revision)
        base = meta_model(model_path, cfg.model.task, max(num_labels, 2), cfg.model.revision)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"model.name_or_path: cannot load {cfg.model.name_or_path!r} ({first})") from None
    return tokenizer, base


def _tokenized(cfg: SearchConfig, splits: Splits, tokenizer) -> TokenizedSplits:
    try:
        return data.tokenize(splits, tokenizer, cfg.model.task, cfg.training.max_seq_length)
    except data.DatasetError as err:
        raise ConfigError(str(err)) from None
