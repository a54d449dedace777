"""``peft-search best``: the trial to ship under limits, and an export that PEFT loads and a search reproduces."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from reports.choice import Choice, Limit, Tolerance, choose_best, limits_json
from reports.table import load_trials, record_json
from search.results.layout import CONFIG_FILE, ResultsDir
from search.results.metrics import Objective, get_metric, metrics
from search.results.noise import TEST

EXPORT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _metric_line(trial: Any, names: Sequence[str]) -> str:
    parts = []
    for name in names:
        text = get_metric(name).format(trial.get(name))
        if name == "peak_memory_bytes" and isinstance(trial.get("peak_memory_kind"), str):
            text += f" ({trial['peak_memory_kind']})"
        parts.append(f"{get_metric(name).label} {text}")
    return "   ".join(parts)


def _who(t: Any, objectives: Sequence[Objective]) -> str:
    return f"trial {t['trial_id']} ({t['method']}, {t['quantization']}): {_metric_line(t, [o.metric for o in objectives])}"


def describe(choice: Choice, objectives: Sequence[Objective]) -> str:
    """The pick for a terminal: the trial, the most accurate one and how sure their difference is, the rule."""
    if choice.trial is None:
        return f"No trial chosen: {choice.reason}."
    t = choice.trial
    names = [o.metric for o in objectives]
    others = [m.name for m in metrics() if m.summary and m.name not in names and m.name in t.index]
    lr = t.get("learning_rate")
    lines = [
        f"Best trial: {t['trial_id']} ({t['method']}, quantization {t['quantization']})",
        f"  {_metric_line(t, names)}",
        *([f"  {_metric_line(t, others)}"] if others else []),
        f"  learning rate {lr:.3g}" if isinstance(lr, float) and lr == lr else "  learning rate -",
        f"  PEFT config: {t['peft_config']}",
    ]
    top = choice.most_accurate
    if top is not None and top["trial_id"] != t["trial_id"]:
        sure = (
            f"p = {choice.p_value:.3g} ({TEST} on the paired held-out rows): not significantly better"
            if choice.p_value is not None
            else "no paired test (no per-row predictions)"
        )
        lines.append(f"  best on the objectives alone: {_who(top, objectives)}; {sure}")
        tied = [i for i in choice.indistinguishable if i not in (str(t["trial_id"]), str(top["trial_id"]))]
        if tied:
            lines.append(f"  also tied with it: {', '.join(tied)}")
    elif len(choice.indistinguishable) > 1:
        lines.append(f"  tied with it under the rule: {', '.join(choice.indistinguishable[1:])}")
    lines.append(f"  why: {choice.reason}")
    return "\n".join(lines)


def choice_json(choice: Choice, objectives: Sequence[Objective], limits: Sequence[Limit]) -> dict[str, Any]:
    """``best --format json``: the pick and the most accurate trial (typed records, or null), the p-value between
    them, the trials that tie with the most accurate, the rule, and what it was chosen by."""
    as_record = lambda t: None if t is None else record_json(t.to_dict())  # noqa: E731
    return {
        "pick": as_record(choice.trial),
        "most_accurate": as_record(choice.most_accurate),
        "p_value": choice.p_value,
        "indistinguishable": list(choice.indistinguishable),
        "rule": choice.rule,
        "reason": choice.reason,
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in objectives],
        "limits": limits_json(limits),
    }


def export(search_dir: str | Path, trial: Any, out_dir: str | Path) -> Path:
    """Copy the trial's adapter and write what reproduces it. Refuses to overwrite a non-empty directory."""
    search_dir, out = Path(search_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--export {out}: the directory is not empty; choose a new one")
    source = Path(trial["adapter_path"])
    out.mkdir(parents=True, exist_ok=True)
    for name in EXPORT_FILES:
        shutil.copy2(source / name, out / name)
    config = yaml.safe_load((search_dir / CONFIG_FILE).read_text())
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
    (out / "trial.json").write_text(json.dumps(record_json(dict(trial)), indent=2, default=str))
    model = config["model"]["name_or_path"]
    scores = _metric_line(trial, [m.name for m in metrics() if m.summary and m.name in trial])
    (out / "README.md").write_text(
        f"# Adapter from trial {trial['trial_id']}\n\n"
        f"{trial['method']} on `{model}` (quantization {trial['quantization']}): {scores}.\n\n"
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
    limits: Sequence[Limit] = (),
    tolerance: Tolerance = "auto",
    prefer: str | None = None,
    export_dir: str | Path | None = None,
    fetch_adapter: Callable[[str], Path] | None = None,
) -> tuple[Choice, tuple[Objective, ...], Path | None]:
    """Choose by the search's own objectives; export the choice when asked.

    ``fetch_adapter`` maps a trial's ``adapter_path`` to a local directory (for results on an object store).
    Returns the choice, the objectives it was ranked by, and where it was exported (None when not).
    """
    trials = load_trials(search_dir)
    objectives = trials.attrs["objectives"]
    correct = ResultsDir(search_dir).correct_by_trial()
    choice = choose_best(trials, objectives, limits, tolerance=tolerance, prefer=prefer, correct=correct)
    out = None
    if choice.trial is not None and export_dir is not None:
        trial = choice.trial.to_dict()
        if fetch_adapter is not None:
            trial = {**trial, "adapter_path": str(fetch_adapter(trial["adapter_path"]))}
        out = export(search_dir, trial, export_dir)
    return choice, objectives, out
