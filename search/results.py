"""The results table: one row per trial, rewritten atomically as trials finish so it can be read mid-search."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from reports.table import TRIALS_FILE
from search.infeasible import INFEASIBLE_KEY
from search.redact import redact_text
from search.rungs import RUNG_KEY

_METRICS = (
    "accuracy",
    "eval_loss",
    "trainable_params",
    "total_params",
    "peak_memory_bytes",
    "peak_memory_kind",
    "est_peak_memory_bytes",
    "train_time_s",
    "eval_time_s",
    "rung_eval_time_s",
    "eval_rows",
    "load_time_s",
    "train_steps",
    "samples_per_s",
    "tokens_per_s",
    "adapter_bytes",
    "world_size",
    "device",
    "node_id",
    "cpu_allocator",
)


def classify_error(error: BaseException | None) -> tuple[str, str]:
    """``(status, one-line message)`` for a trial's error: ``infeasible`` when the config itself cannot run."""
    if error is None:
        return "failed", "trial stopped without a result"
    seen: list[BaseException] = []
    node: BaseException | None = error
    while node is not None and node not in seen:
        seen.append(node)
        node = getattr(node, "cause", None) or node.__cause__
    infeasible = any("InfeasibleTrialError" in {c.__name__ for c in type(e).__mro__} for e in seen)
    root = seen[-1]
    lines = [ln.strip() for ln in str(root).strip().splitlines() if ln.strip()]
    message = lines[-1] if lines else type(root).__name__
    if not message.startswith(type(root).__name__) and ":" not in message[:40]:
        message = f"{type(root).__name__}: {message}"
    # Error text can quote a config value or an environment variable: never a credential in the table.
    return ("infeasible" if infeasible else "failed"), redact_text(message)[:500]


def _trial_error(trial) -> BaseException | None:
    """The trial's exception. At callback time Tune has written it to the trial's local staging directory only."""
    import cloudpickle

    path = trial.pickled_error_file
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            return cloudpickle.load(f)
    path = trial.error_file
    if path and os.path.exists(path):
        return RuntimeError(Path(path).read_text())
    return None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


class TrialTable(tune.Callback):
    """A Tune callback that records every trial's config, status, metrics and adapter path."""

    def __init__(
        self, search_dir: Path, num_trials: int, echo: bool = True, on_write: Callable[[], None] | None = None
    ):
        self.path = Path(search_dir) / TRIALS_FILE
        self.rows: dict[str, dict[str, Any]] = {}
        self.num_trials = num_trials
        self.echo = echo
        self.on_write = on_write  # e.g. mirroring the table to an object store

    def setup(self, **info):
        """Keep the rows of an earlier run of this search (a resumed one): its finished trials stay in the table."""
        if self.path.exists() and not self.rows:
            earlier = pd.read_parquet(self.path)
            self.rows = {
                row["trial_id"]: {k: v for k, v in row.items() if not _missing(v)}
                for row in earlier.to_dict("records")
            }

    def on_trial_start(self, iteration, trials, trial, **info):
        row = self._record(trial, "running")
        if self.echo:
            print(
                f"[peft-search] trial {trial.trial_id} started: {row['method']} ({row['quantization']}) "
                f"{row['peft_config']}",
                flush=True,
            )

    def on_trial_complete(self, iteration, trials, trial, **info):
        infeasible = (trial.last_result or {}).get(INFEASIBLE_KEY)
        if infeasible:
            # Completed for the sampler's sake only (search.infeasible): a config that cannot run.
            row = self._record(trial, "infeasible", str(infeasible))
            if self.echo:
                print(
                    f"[peft-search] trial {len(self._done())}/{self.num_trials} infeasible: {row['method']} "
                    f"({row['quantization']}): {infeasible}",
                    flush=True,
                )
            return
        rung = (trial.last_result or {}).get(RUNG_KEY)
        if rung is not None:
            # Ended by the early-stopping scheduler at a rung: its metrics are part-way, so it stays off the fronts.
            result = trial.last_result
            note = (
                f"stopped early at step {rung}: dominated there (accuracy {result.get('accuracy', float('nan')):.3f} "
                f"on {result.get('eval_rows')} held-out rows)"
            )
            row = self._record(trial, "stopped", note)
            if self.echo:
                print(
                    f"[peft-search] trial {len(self._done())}/{self.num_trials} stopped: {row['method']} "
                    f"({row['quantization']}) {note}",
                    flush=True,
                )
            return
        row = self._record(trial, "complete")
        if self.echo:
            print(
                f"[peft-search] trial {len(self._done())}/{self.num_trials} complete: {row['method']} "
                f"({row['quantization']}) accuracy={row.get('accuracy', float('nan')):.3f} "
                f"trainable={int(row.get('trainable_params') or 0):,} "
                f"train={row.get('train_time_s', 0):.1f}s",
                flush=True,
            )

    def on_trial_error(self, iteration, trials, trial, **info):
        status, message = classify_error(_trial_error(trial))
        row = self._record(trial, status, message)
        if self.echo:
            print(
                f"[peft-search] trial {len(self._done())}/{self.num_trials} {status}: {row['method']} "
                f"({row['quantization']}): {message}",
                flush=True,
            )

    def _done(self) -> list[dict[str, Any]]:
        return [r for r in self.rows.values() if r["status"] != "running"]

    def _record(self, trial, status: str, error: str = "") -> dict[str, Any]:
        config, result = trial.config, trial.last_result or {}
        row: dict[str, Any] = {
            "trial_id": trial.trial_id,
            "status": status,
            "method": config.get("method"),
            "candidate": config.get("candidate"),
            "quantization": config.get("quantization"),
            "learning_rate": config.get("learning_rate"),
            "peft_type": (config.get("peft_config") or {}).get("peft_type"),
            "peft_config": json.dumps(config.get("peft_config"), sort_keys=True),
            "error": error,
            "wall_time_s": result.get("time_total_s"),
            "adapter_path": result.get("checkpoint_path") if status == "complete" else None,
        }
        if status in ("complete", "stopped"):
            row.update({k: result.get(k) for k in _METRICS})
        if status == "stopped":
            row["stopped_at_step"] = result.get(RUNG_KEY)
        self.rows[trial.trial_id] = row
        self.write()
        return row

    def write(self) -> None:
        frame = pd.DataFrame(list(self.rows.values()))
        tmp = self.path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, self.path)
        if self.on_write is not None:
            self.on_write()
