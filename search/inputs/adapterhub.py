"""AdapterHub's ``adapters`` library (the ``adapters`` extra): bottleneck adapters (Pfeiffer, Houlsby, parallel) and
Compacter, built, trained, counted and saved as the search treats a PEFT adapter.

A sampled config keeps PEFT's ``adapter_config.json`` shape: ``peft_type`` names the AdapterHub config class
(``SEQ_BN`` -> ``SeqBnConfig``, ...), ``task_type`` the head, and every other key is that class's own argument
(``reduction_factor``, ``non_linearity``, ``leave_out``, ``phm_dim``), so ``adapters.SeqBnConfig(**rest)`` is the
config a user writes. ``AdapterHubModel`` holds the model with its adapter and answers the few ``PeftModel`` calls
the worker makes (trainable parameter counts, the base model, saving). As with PEFT's ``modules_to_save``, a
classifier's head trains with the adapter; AdapterHub saves and loads it with the adapter.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from peft_search.search.errors import InfeasibleTrialError

CONFIG_CLASSES = {
    "SEQ_BN": "SeqBnConfig",
    "DOUBLE_SEQ_BN": "DoubleSeqBnConfig",
    "PAR_BN": "ParBnConfig",
    "COMPACTER": "CompacterConfig",
}
ADAPTER_NAME = "peft_search"
"""The adapter's name inside the model (and in the saved ``adapter_config.json``)."""
HEADS = ("classifier", "score")
"""The task heads that train with the adapter (PEFT's ``modules_to_save`` for sequence classification)."""


def is_adapterhub(peft_config: dict[str, Any]) -> bool:
    return str(peft_config.get("peft_type", "")).upper() in CONFIG_CLASSES


def adapterhub_config(peft_config: dict[str, Any]):
    """AdapterHub's own config object for the sampled dict (``TypeError`` names an unknown key)."""
    import adapters

    cls = getattr(adapters, CONFIG_CLASSES[str(peft_config["peft_type"]).upper()])
    return cls(**{k: v for k, v in peft_config.items() if k not in ("peft_type", "task_type")})


class AdapterHubModel(nn.Module):
    """The base model with its AdapterHub adapter active and training: the ``PeftModel`` calls the worker makes."""

    # A classifier's loss is the mean over its rows: the Trainer must not pass num_items_in_batch (as for PEFT
    # models, search.worker.trainer.build_trainer).
    accepts_loss_kwargs = False

    def __init__(self, model: nn.Module, peft_config: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.peft_config = dict(peft_config)

    @property
    def config(self):
        return self.model.config

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        return self.model

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str) -> None:
        """``save_adapter``: the adapter and the task head, as AdapterHub's ``load_adapter`` reads them."""
        self.model.save_adapter(directory, ADAPTER_NAME, use_safetensors=True)


def inject(model: nn.Module, peft_config: dict[str, Any]) -> AdapterHubModel:
    """The model with the sampled AdapterHub adapter added and trainable (and a classifier's head), the rest
    frozen. ``InfeasibleTrialError`` when the library refuses the config for this model."""
    import adapters

    try:
        config = adapterhub_config(peft_config)
        with quiet():
            adapters.init(model)
            model.add_adapter(ADAPTER_NAME, config=config)
            model.train_adapter(ADAPTER_NAME)
    # The library refuses some shapes with an assert (Compacter: the bottleneck must divide by phm_dim).
    except (ValueError, TypeError, NotImplementedError, KeyError, AttributeError, AssertionError) as err:
        raise InfeasibleTrialError(f"{type(err).__name__}: {err}") from err
    if peft_config.get("task_type") == "SEQ_CLS":
        for name, parameter in model.named_parameters():
            if name.split(".")[0] in HEADS:
                parameter.requires_grad_(True)
    return AdapterHubModel(model, peft_config)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The library's warnings off: adding or loading an adapter runs the model before the adapter is active, and
    says so each time (not the user's concern)."""
    library_log = logging.getLogger("adapters")
    level = library_log.level
    library_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        library_log.setLevel(level)


def adapter_files(directory: str | Path) -> list[Path]:
    """The weight files of a saved adapter (its size on disk: what ships)."""
    return [p for p in Path(directory).iterdir() if p.suffix in (".safetensors", ".bin")]
