"""The commands that load a model: ``evaluate`` (an exported adapter, re-scored) and ``best --export`` (the chosen
adapter, written to stand on its own)."""

from __future__ import annotations

import argparse
import json

from peft_search.search.cli import results
from peft_search.search.errors import ConfigError
from peft_search.search.shipping.evaluate import evaluate_export
from peft_search.search.shipping.export import check_export_dir, export_trial


def best(args: argparse.Namespace) -> int:
    """``best --export DIR``: ``best``, then its pick exported."""
    check_export_dir(args.export)
    return results.best(args, export=export_trial)


def evaluate(args: argparse.Namespace) -> int:
    columns = {}
    for item in args.columns:
        kind, sep, column = item.partition("=")
        if not sep or kind not in ("text", "label", "prompt", "answer") or not column:
            raise ConfigError(f"--columns {item}: write KIND=COLUMN with KIND text, label, prompt or answer")
        columns[kind] = column
    score = evaluate_export(
        args.export_dir,
        args.data,
        subset=args.subset,
        split=args.split,
        columns=columns,
        batch_size=args.batch_size,
    )
    if args.format == "json":
        print(json.dumps(score.json(), indent=2))
        return 0
    m = score.evaluation.metrics()
    print(
        f"accuracy {m['accuracy']:.4f} (95% CI {m['accuracy_ci_low']:.4f}-{m['accuracy_ci_high']:.4f}), "
        f"loss {m['eval_loss']:.4f} on {score.rows}"
    )
    if score.recorded_accuracy is not None:
        verdict = "reproduced" if score.reproduced else "DIFFERS"
        print(f"recorded by the search: {score.recorded_accuracy:.4f} ({verdict})")
    return 0
