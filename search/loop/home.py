"""Where a search lives: its results directory (or a local staging copy of one on an object store), claimed
before Ray starts (never an earlier search's, never a directory of other files), and the inputs and run facts
written there."""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_search.search.errors import ConfigError
from peft_search.search.inputs import data
from peft_search.search.loop.prepare import Prepared
from peft_search.search.loop.recovery.resume import check_resumable
from peft_search.search.redact import redact
from peft_search.search.results import storage
from peft_search.search.results.layout import CONFIG_FILE, DRIVER_FILES, TUNE_DIR, ResultsDir
from peft_search.search.settings.schema import SearchConfig
from peft_search.search.versions import package_version


@dataclass(frozen=True)
class SearchHome:
    """The search's directory on this machine, and its object-store URI when it has one."""

    results: ResultsDir
    uri: str | None = None

    @property
    def tune_path(self) -> str:
        """Ray Tune's experiment directory (``tune/``): on the store itself when there is one."""
        return storage.join(self.uri, TUNE_DIR) if self.uri else str(self.results.tune_path)

    @property
    def storage_path(self) -> str:
        """Tune's ``storage_path``: the experiment ``tune`` is created under it."""
        return self.uri or str(self.results.path)

    def mirror(self) -> storage.Mirror | None:
        """Uploads the driver's files to the store after every trial (Tune writes its own there directly)."""
        return storage.Mirror(self.results.path, self.uri, list(DRIVER_FILES)) if self.uri else None

    def upload(self) -> None:
        if self.uri is not None:
            storage.upload(self.results.path, self.uri)


def claim(cfg: SearchConfig, resume: bool) -> SearchHome:
    """The search's home, checked, with nothing written (a new search: an empty or new directory; resumed: this
    same search). A search on an object store is checked against the store here and staged by ``stage``."""
    local, uri = cfg.search_dir(), cfg.results_uri()
    if uri is not None:
        if not resume and storage.exists(uri, CONFIG_FILE):
            raise ConfigError(
                f"results_dir: {storage.redacted(uri)} already holds a search; pass --name NEW or --results-dir URI "
                "to start another, or `peft-search resume` to finish that one"
            )
    elif resume:
        check_resumable(redact(cfg.model_dump(mode="json")), local)
    else:
        check_search_dir(local)
    return SearchHome(ResultsDir(local), uri)


def stage(cfg: SearchConfig, home: SearchHome, resume: bool) -> None:
    """A search on an object store: its local staging copy (fresh, or the store's files for a resumed search),
    made once the search's lock is held; a resumed one is then checked as a local one is in ``claim``."""
    if home.uri is None:
        return
    _stage(home.uri, home.results.path, resume)
    if resume:
        check_resumable(redact(cfg.model_dump(mode="json")), home.results.path)


def check_search_dir(search_dir: Path) -> None:
    """Never overwrite an earlier search, nor take over a directory of other files; fail before Ray starts."""
    for parent in [search_dir, *search_dir.parents]:
        if parent.exists():
            break
    if not parent.is_dir():
        raise ConfigError(f"results_dir: {parent} is not a directory; pass another --results-dir")
    if parent == search_dir and (search_dir / CONFIG_FILE).exists():
        raise ConfigError(
            f"results_dir: {search_dir} already holds a search; pass --name NEW or --results-dir DIR to start "
            "another, or move the old results away"
        )
    if parent == search_dir and any(search_dir.iterdir()):
        raise ConfigError(
            f"results_dir: {search_dir} holds other files and is not a peft-search results directory; "
            "pass --name NEW or --results-dir DIR"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"results_dir: cannot write to {parent}; pass another --results-dir")


def _stage(uri: str, staging: Path, resume: bool) -> None:
    """The local staging copy of a search on an object store: fresh for a new search (refused if the store
    already holds one there), the store's files for a resumed one."""
    held = storage.exists(uri, CONFIG_FILE)
    if not resume and held:
        raise ConfigError(
            f"results_dir: {storage.redacted(uri)} already holds a search; pass --name NEW or --results-dir URI to "
            "start another, or `peft-search resume` to finish that one"
        )
    if staging.exists():
        shutil.rmtree(staging)  # only ever a copy: the store is the search's home
    if resume and held:
        storage.download(uri, staging)


def write_inputs(cfg: SearchConfig, prep: Prepared, results: ResultsDir) -> None:
    """The resolved config (credentials masked), the exact train and held-out splits, and the tokenizer that
    tokenized them, saved as it tokenized them (``model_max_length``, truncation and padding sides) so an export
    carries it."""
    results.write_config(redact(cfg.model_dump(mode="json")))
    results.write_splits(prep.splits.train, prep.splits.eval)
    if prep.tokenizer is not None:
        data.save_tokenizer(
            prep.tokenizer, cfg.model.task, cfg.training.max_seq_length, results.tokenizer_path
        )


def run_facts(
    cfg: SearchConfig, prep: Prepared, resources: dict[str, float], concurrency: int
) -> dict[str, Any]:
    """``run.json``: what ran, on what, with which versions (credentials masked)."""

    packages = ("peft-search", "ray", "torch", "transformers", "peft", "bitsandbytes", "optuna")
    versions = {pkg: package_version(pkg) for pkg in packages}
    facts = {
        "name": cfg.name,
        "model": cfg.model.name_or_path,
        "model_type": prep.facts.model_type,
        "task": cfg.model.task,
        "dataset": cfg.dataset.source,
        "label_names": prep.splits.label_names,
        "train_examples": len(prep.splits.train),
        "eval_examples": len(prep.splits.eval),
        "train_steps": prep.steps,
        "objectives": [o.model_dump() for o in cfg.objectives],
        "sampler": cfg.search.sampler,
        "num_trials": cfg.search.num_trials,
        "early_stopping": {**cfg.search.early_stopping.model_dump(), "rungs": list(prep.rungs)},
        "repeats": cfg.search.repeats.model_dump() if cfg.search.repeats else None,
        "race": cfg.search.race.model_dump() if cfg.search.race else None,
        "concurrency": concurrency,
        # search.packing as it ran: the most trials a group trains (1: each alone), and what auto measured
        "packing": {"members": prep.settings.packing, "speedup": prep.settings.packing_speedup},
        "cluster_resources": {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory")},
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "target_sets": dict(prep.space_context.target_sets),
    }
    return redact(facts)


def record_run(
    cfg: SearchConfig,
    prep: Prepared,
    home: SearchHome,
    resources: dict[str, float],
    concurrency: int,
    resumed: bool,
) -> dict[str, Any]:
    """Write the inputs (a new search) and the run facts (a resumed one adds when it resumed); the facts."""
    if not resumed:
        write_inputs(cfg, prep, home.results)
    facts = run_facts(cfg, prep, resources, concurrency)
    if resumed:
        earlier = home.results.read_facts()
        facts["resumed"] = [*earlier.get("resumed", []), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())]
    home.results.write_facts(facts)
    return facts
