"""Resuming a search whose driver died (SIGKILL, reboot, lost head node): Ray Tune's own experiment state
restores the trials and the Optuna searcher; this module checks that the directory holds *this* search (and finds
the config it was started with).

What survives a kill: finished trials (Tune's experiment state, the trials table, the Optuna storage) are kept and
never run again; trials that were running restart (from their last checkpoint when they have one); the searcher
continues from its saved state, so the search ends with the number of trials it was asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from peft_search.search.errors import ConfigError
from peft_search.search.redact import redact
from peft_search.search.results import storage
from peft_search.search.results.layout import CONFIG_FILE
from peft_search.search.settings.loading import parse_config


def check_resumable(config: dict[str, Any], search_dir: Path) -> None:
    """Refuse to resume anything but the same search: ``config`` is the (redacted) dump ``run`` would write."""
    saved_file = search_dir / CONFIG_FILE
    if not saved_file.exists():
        raise ConfigError(
            f"results_dir: no search to resume at {search_dir}; drop --resume to start it, or pass the results "
            "directory of the search to resume"
        )
    saved = with_defaults(yaml.safe_load(saved_file.read_text()))
    refuse_renamed(saved.get("name"), config.get("name"), search_dir)
    # The directory is the search's identity: results_dir and name only say where it lives.
    changed = [f for f in differences(saved, config) if f not in ("results_dir", "name")]
    if changed:
        raise ConfigError(
            f"{changed[0]}: differs from the search saved in {search_dir} ({len(changed)} field(s) changed: "
            f"{', '.join(changed[:4])}); resume with the saved config (peft-search resume {search_dir}) or "
            "start a new search with --name NEW"
        )


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """The saved dump read by this version's schema: a field added since (with its default) is no change."""
    try:
        return redact(parse_config(saved).model_dump(mode="json"))
    except ConfigError:  # compared as written: the differences then name what no longer reads
        return saved


def refuse_renamed(saved: str | None, name: str | None, search_dir: str | Path) -> None:
    """A search moves freely, but its name is its Optuna study's: resumed under another, it would start a new study."""
    if saved is not None and saved != name:
        raise ConfigError(
            f"name: {search_dir} holds the search {saved!r}, renamed since; to resume it, rename the directory "
            f"back to {saved} (under any parent directory); show, best and report read it as it is"
        )


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted fields where two config dumps differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [prefix or "config"]


def load_saved_config(search_dir: str | Path):
    """The config a results directory was started with, pointed at that directory wherever it now lives."""
    if "://" in str(search_dir):  # on an object store: RESULTS_URI/NAME
        uri = str(search_dir)
        if not storage.exists(uri, CONFIG_FILE):
            raise ConfigError(f"RESULTS_DIR: {storage.redacted(uri)} holds no peft-search search")
        fs, path = storage.filesystem(uri)
        with fs.open_input_stream(f"{path}/{CONFIG_FILE}") as f:
            raw = yaml.safe_load(f.read().decode())
        parent, _, name = storage.join(uri).partition("?")[0].rpartition("/")
        query = storage.join(uri).partition("?")[2]
        raw["results_dir"], raw["name"] = parent + (f"?{query}" if query else ""), name
        return parse_config(raw)
    search_dir = Path(search_dir).expanduser().resolve()
    path = search_dir / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"RESULTS_DIR: {search_dir} holds no peft-search search ({CONFIG_FILE} missing)")
    raw = yaml.safe_load(path.read_text())
    refuse_renamed(raw.get("name"), search_dir.name, search_dir)  # said now, before anything heavy loads
    raw["results_dir"], raw["name"] = str(search_dir.parent), search_dir.name
    return parse_config(raw)
