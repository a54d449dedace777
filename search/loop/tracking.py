"""Experiment tracking (``tracking:``) through Ray Tune's own logger callbacks: MLflow, Weights & Biases, TensorBoard.

Each trial is one run: its config as parameters, every result it reports (rungs and the final one) as metrics, and,
added here, its learning curve (``CURVE_KEY``: the training loss, learning rate and gradient norm by optimizer
step) as step-indexed metrics once the trial ends, so the tracker draws the same curves as the report.
Credentials are never configured here: MLflow and W&B read theirs from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.tune.logger import TBXLoggerCallback

from peft_search.search.results.records import CURVE_KEY, PREDICTIONS_KEY
from peft_search.search.settings.schema import SearchConfig

MLFLOW_DB = "mlflow.db"
"""The default MLflow store in the search's results directory."""
CURVE_METRICS = {"loss": "train_loss", "learning_rate": "train_learning_rate", "grad_norm": "train_grad_norm"}
"""A learning curve's series -> the step-indexed metric a tracker records it as."""
_NOT_METRICS = (PREDICTIONS_KEY, CURVE_KEY)
"""Per-row and per-step lists: the curve is logged by step, the held-out rows stay in the results directory."""


def tracking_callbacks(cfg: SearchConfig, search_dir: Path) -> list:
    """The Tune callbacks ``cfg.tracking`` asks for."""
    t = cfg.tracking
    callbacks: list = []
    if t.mlflow is not None:
        uri = t.mlflow.tracking_uri or f"sqlite:///{Path(search_dir).resolve() / MLFLOW_DB}"
        callbacks.append(
            _curve_mlflow_logger()(
                tracking_uri=uri,
                experiment_name=t.mlflow.experiment_name or cfg.name,
                tags=dict(t.mlflow.tags),
            )
        )
    if t.wandb is not None:
        callbacks.append(_wandb(cfg, search_dir))
    if t.tensorboard:
        callbacks.append(CurveTBXLogger())
    return callbacks


def _points(result: dict[str, Any]) -> list[tuple[int, dict[str, float]]]:
    """``(step, {metric: value})`` for each point of the result's learning curve."""
    curve = result.get(CURVE_KEY) or {}
    steps = curve.get("step") or []
    return [
        (int(step), {CURVE_METRICS[k]: float(curve[k][i]) for k in CURVE_METRICS if k in curve})
        for i, step in enumerate(steps)
    ]


def _scalars(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in _NOT_METRICS}


def _curve_mlflow_logger() -> type:
    """Tune's MLflow logger, with each trial's learning curve logged by step (defined where tracking asks for it:
    importing Ray's MLflow integration imports MLflow, a second of every search's start otherwise)."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class CurveMLflowLogger(MLflowLoggerCallback):
        def log_trial_result(self, iteration: int, trial, result: dict):
            super().log_trial_result(iteration, trial, _scalars(result))
            run_id = self._trial_runs[trial]
            for step, metrics in _points(result):
                self.mlflow_util.log_metrics(run_id=run_id, metrics_to_log=metrics, step=step)

    return CurveMLflowLogger


class CurveTBXLogger(TBXLoggerCallback):
    """Tune's TensorBoard logger, with each trial's learning curve as step-indexed scalars."""

    def log_trial_result(self, iteration: int, trial, result: dict):
        super().log_trial_result(iteration, trial, _scalars(result))
        writer = self._trial_writer.get(trial)
        if writer is None:
            return
        for step, metrics in _points(result):
            for name, value in metrics.items():
                writer.add_scalar(f"curve/{name}", value, global_step=step)
        writer.flush()


def _wandb(cfg: SearchConfig, search_dir: Path):
    from ray.air.integrations.wandb import WandbLoggerCallback

    w = cfg.tracking.wandb
    assert w is not None
    mode = w.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return WandbLoggerCallback(
        project=w.project or cfg.name,
        group=w.group or cfg.name,
        excludes=list(_NOT_METRICS),
        log_config=False,
        mode=mode,
        tags=list(w.tags),
        dir=str(Path(search_dir).resolve()),
    )
