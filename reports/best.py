"""``peft-search best``: the trial to ship under a budget, and an export that PEFT loads and a search reproduces."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from reports.fronts import Choice, choose_best
from reports.table import human, load_trials

EXPORT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def describe(choice: Choice) -> str:
    if choice.trial is None:
        return f"No trial chosen: {choice.reason}."
    t = choice.trial
    lines = [
        f"Best trial: {t['trial_id']} ({t['method']}, quantization {t['quantization']})",
        f"  accuracy {t['accuracy']:.4f}   trainable params {int(t['trainable_params']):,}   "
        f"peak memory {human(t['peak_memory_bytes'], 'B')} ({t.get('peak_memory_kind')})   "
        f"adapter {human(t.get('adapter_bytes'), 'B')}",
        f"  learning rate {t['learning_rate']:.3g}",
        f"  PEFT config: {t['peft_config']}",
        f"  why: {choice.reason}",
    ]
    return "\n".join(lines)


def export(search_dir: str | Path, trial: Any, out_dir: str | Path) -> Path:
    """Copy the trial's adapter and write what reproduces it. Refuses to overwrite a non-empty directory."""
    search_dir, out = Path(search_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--export {out}: the directory is not empty; choose a new one")
    source = Path(trial["adapter_path"])
    out.mkdir(parents=True, exist_ok=True)
    for name in EXPORT_FILES:
        shutil.copy2(source / name, out / name)
    config = yaml.safe_load((search_dir / "config.yaml").read_text())
    peft_config = json.loads(trial["peft_config"])
    config["name"] = f"{config['name']}-{trial['trial_id']}"
    config["space"] = {
        **config.get("space", {}),
        "candidates": [
            {
                "name": str(trial["trial_id"]),
                "quantization": trial["quantization"],
                "learning_rate": float(trial["learning_rate"]),
                "peft_config": peft_config,
            }
        ],
        "methods": [],
    }
    # One trial, trained to the end: rung evaluations would change nothing in it (tested), only cost time.
    config["search"] = {**config.get("search", {}), "num_trials": 1, "early_stopping": {"rule": "none"}}
    (out / "reproduce.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    record = {k: (v.item() if hasattr(v, "item") else v) for k, v in trial.items()}
    (out / "trial.json").write_text(json.dumps(record, indent=2, default=str))
    model = config["model"]["name_or_path"]
    (out / "README.md").write_text(
        f"# Adapter from trial {trial['trial_id']}\n\n"
        f"{trial['method']} on `{model}` (quantization {trial['quantization']}), held-out accuracy "
        f"{trial['accuracy']:.4f}.\n\n"
        "Load it with PEFT:\n\n```python\nfrom peft import PeftModel\n"
        'model = PeftModel.from_pretrained(base_model, "' + str(out) + '")\n```\n\n'
        "Train it again with the same settings:\n\n```bash\npeft-search run "
        + str(out / "reproduce.yaml")
        + "\n```\n"
    )
    return out


def best_command(
    search_dir: str | Path,
    *,
    max_params: float | None = None,
    max_memory: float | None = None,
    min_accuracy: float | None = None,
    export_dir: str | Path | None = None,
    fetch_adapter: Callable[[str], Path] | None = None,
) -> tuple[Choice, str]:
    """``fetch_adapter`` maps a trial's ``adapter_path`` to a local directory (for results on an object store)."""
    trials = load_trials(search_dir)
    choice = choose_best(trials, max_params=max_params, max_memory=max_memory, min_accuracy=min_accuracy)
    text = describe(choice)
    if choice.trial is not None and export_dir is not None:
        trial = choice.trial
        if fetch_adapter is not None:
            trial = {**trial, "adapter_path": str(fetch_adapter(trial["adapter_path"]))}
        out = export(search_dir, trial, export_dir)
        text += f"\nExported to {out} (adapter_config.json, adapter_model.safetensors, reproduce.yaml, trial.json)"
    return choice, text
