"""The ``tracking`` section of the config: MLflow, Weights & Biases and TensorBoard, each optional.

Credentials are never configuration: each tracker reads its own from the environment (``MLFLOW_TRACKING_TOKEN``,
``WANDB_API_KEY``); a URI that carries one is refused. The callbacks are built in ``search.loop.tracking``.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field, field_validator

from peft_search.search.settings.strict import Strict as _Strict


def _on(value: Any) -> Any:
    """``mlflow: true`` (or an empty mapping) turns a tracker on with its defaults; ``false`` leaves it off."""
    if value is True:
        return {}
    return None if value is False else value


def _installed(module: str, extra: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{what} is not installed here; pip install 'peft-search[{extra}]'")


class MLflowTracking(_Strict):
    tracking_uri: str | None = None
    """Where runs go: an MLflow server (``http://...``, token in ``MLFLOW_TRACKING_TOKEN``) or a database
    (``sqlite:///...``); by default ``sqlite:///`` ``mlflow.db`` in the search's results directory (MLflow's
    plain-file store is retired)."""
    experiment_name: str | None = None
    """The MLflow experiment; the search's ``name`` when unset."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Tags set on every trial's run."""

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        if value is not None:
            parts = urlsplit(value)
            if "@" in parts.netloc or "token" in parts.query.lower() or "password" in parts.query.lower():
                raise ValueError(
                    "credentials in the URI; give them in the environment (MLFLOW_TRACKING_TOKEN, ...)"
                )
        return value


class WandbTracking(_Strict):
    project: str | None = None
    """The W&B project; the search's ``name`` when unset."""
    group: str | None = None
    """Groups the trials' runs; the search's ``name`` when unset."""
    mode: Literal["online", "offline"] | None = None
    """``offline`` writes runs under the results directory (``wandb sync`` uploads them later); by default
    ``online`` when ``WANDB_API_KEY`` is set, else ``offline``. The key is only ever read from the environment."""
    tags: list[str] = Field(default_factory=list)
    """Tags set on every trial's run."""


class Tracking(_Strict):
    """Experiment tracking through Ray Tune's logger callbacks: each trial is a run, with its config as parameters,
    its reported metrics, and its learning curve by step. Credentials come from the environment only."""

    mlflow: MLflowTracking | None = None
    """``true`` or a mapping (tracking_uri, experiment_name, tags); needs ``peft-search[mlflow]``."""
    wandb: WandbTracking | None = None
    """``true`` or a mapping (project, group, mode, tags); needs ``peft-search[wandb]``."""
    tensorboard: bool = False
    """TensorBoard event files in each trial's directory under ``tune/`` (``tensorboard --logdir``)."""

    @field_validator("mlflow", "wandb", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        return _on(value)

    @field_validator("mlflow")
    @classmethod
    def _mlflow_installed(cls, value: MLflowTracking | None) -> MLflowTracking | None:
        if value is not None:
            _installed("mlflow", "mlflow", "MLflow")
        return value

    @field_validator("wandb")
    @classmethod
    def _wandb_installed(cls, value: WandbTracking | None) -> WandbTracking | None:
        if value is not None:
            _installed("wandb", "wandb", "Weights & Biases (wandb)")
        return value

    @field_validator("tensorboard")
    @classmethod
    def _tensorboard_installed(cls, value: bool) -> bool:
        if value:
            _installed("tensorboardX", "tensorboard", "tensorboardX")
        return value
