"""The commands that read a results directory: ``best``, ``report``, ``show``, ``repair``. What loads a model
(``evaluate``, and ``best --export``) is ``search.cli.shipping``: these start without torch."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from peft_search.reports.best import best_command, choice_json, describe
from peft_search.reports.choice import PREFER_ALIASES, named_limits, parse_limit, parse_tolerance
from peft_search.reports.html import REPORT_FILE, write_report
from peft_search.reports.table import load_trials, summary_table, trial_records
from peft_search.search.errors import ConfigError
from peft_search.search.loop import recovery
from peft_search.search.numbers import parse_bytes
from peft_search.search.results import storage
from peft_search.search.results.layout import TRIALS_FILE, ResultsDir, own_adapter
from peft_search.search.results.lock import SearchLock, command_line, progress_note
from peft_search.search.results.metrics import get_metric


def _fetched(results_dir: str) -> tuple[Path | str, str | None]:
    """A results directory to read: itself, or for an object-store URI a fresh local copy of its files."""
    if not storage.is_uri(results_dir):
        return results_dir, None
    # Not the driver's staging copy: a search may be running from it on this machine.
    local = Path(tempfile.mkdtemp(prefix="peft-search-read-")) / storage.staging_dir(results_dir).name
    return storage.download(results_dir, local), results_dir


NO_CHOICE = 3
"""``best``'s exit code when no trial meets the limits: an answer, not a failure of the search (1) or of the input (2)."""


def _limits(args: argparse.Namespace) -> list:
    """``best``'s limits: the named flags, then every ``--limit METRIC<=VALUE``; bad input is a ConfigError."""

    memory = None
    if args.max_memory is not None:
        try:
            memory = float(parse_bytes(args.max_memory))  # a size says its unit: a bare 8 is refused
        except ValueError as err:
            raise ConfigError(f"--max-memory: {err}") from None
    limits = named_limits(args.max_params, memory, args.min_accuracy)
    for text in args.limit:
        try:
            limits.append(parse_limit(text))
        except ValueError as err:
            raise ConfigError(f"--limit: {err}") from None
    return limits


def _tolerance(args: argparse.Namespace) -> tuple:
    """``--tolerance`` and ``--prefer``, checked before anything is read."""
    try:
        tolerance = parse_tolerance(args.tolerance)
    except ValueError as err:
        raise ConfigError(f"--tolerance: {err}") from None
    if args.prefer is not None:
        try:
            get_metric(PREFER_ALIASES.get(args.prefer, args.prefer))
        except KeyError as err:
            raise ConfigError(f"--prefer: {err.args[0]}; or params, memory, size") from None
    return tolerance, args.prefer


def best(args: argparse.Namespace, export: Callable[[str, dict, str], Path] | None = None) -> int:
    """``best``; with ``--export``, the chosen adapter goes to ``export`` (``search.cli.shipping.best`` passes the
    exporter)."""
    if args.export is not None and export is None:
        raise ValueError("best --export needs an exporter: search.cli.shipping.best")
    limits = _limits(args)
    tolerance, prefer = _tolerance(args)
    local, uri = _fetched(args.results_dir)
    fetch = None
    if uri is not None:
        # The adapter is a checkpoint Tune wrote to the store: fetched next to the local copy first.
        def fetch(adapter_path: str) -> Path:
            own = own_adapter(adapter_path)
            if own is None:
                raise ConfigError(f"adapter_path: {adapter_path} is not one of the search's own adapters")
            return storage.fetch_adapter(uri, own, Path(local) / "adapters" / Path(own).name)

    choice, objectives = best_command(local, limits=limits, tolerance=tolerance, prefer=prefer)
    exported = None
    if choice.trial is not None and args.export is not None:
        trial = choice.trial.to_dict()
        if fetch is not None:
            trial = {**trial, "adapter_path": str(fetch(trial["adapter_path"]))}
        exported = export(local, trial, args.export)
    if args.format == "json":
        out = choice_json(choice, objectives, limits)
        if exported is not None:
            out["export"] = str(exported)
        print(json.dumps(out, indent=2, default=str))
    else:
        print(describe(choice, objectives))

        note = progress_note(local, "wall_time_s" in ResultsDir(local).read_facts())
        if note is not None:
            print(f"[peft-search] the search is {note}")
        if exported is not None:
            library = json.loads((Path(exported) / "peft_search.json").read_text()).get("library", "peft")
            fmt = "AdapterHub's load_adapter" if library == "adapters" else "PEFT"
            print(
                f"Exported to {exported}: the adapter ({fmt}), its tokenizer, peft_search.json (labels, "
                "quantization, the recorded evaluation), reproduce.yaml, README.md with a loading snippet; "
                f"`peft-search evaluate {exported}` re-scores it"
            )
    return 0 if choice.trial is not None else NO_CHOICE


def report(args: argparse.Namespace) -> int:
    local, uri = _fetched(args.results_dir)
    ResultsDir(local).require_search(TRIALS_FILE)  # what the page is made of
    path = write_report(local, args.output)
    if uri is not None and args.output is None:
        storage.upload(Path(local), uri, [REPORT_FILE])
        path = f"{storage.redacted(uri)}/{REPORT_FILE}"
    print(f"[peft-search] report: {path}")
    return 0


def show(args: argparse.Namespace) -> int:
    local = _fetched(args.results_dir)[0]
    trials = load_trials(local)
    print(
        json.dumps(trial_records(trials), indent=2, default=str)
        if args.format == "json"
        else summary_table(trials)
    )
    note = progress_note(local, "wall_time_s" in ResultsDir(local).read_facts())
    if note is not None and args.format != "json":
        print(f"[peft-search] the search is {note}")
    return 0


def repair(args: argparse.Namespace) -> int:
    """``repair``: rewrites the directory, so it holds the search's lock as a run does, and is refused while one
    runs (that run rewrites its table itself)."""
    if storage.is_uri(args.results_dir):
        raise ConfigError(
            f"RESULTS_DIR: repair rewrites a local directory; `peft-search resume "
            f"{storage.redacted(args.results_dir)}` repairs a search on an object store as it resumes it"
        )
    ResultsDir(args.results_dir).require_search()  # a wrong path gets no lock file beside it
    lock = SearchLock(args.results_dir)
    took_over = lock.acquire(
        command_line(), advice=f"then `peft-search repair {args.results_dir}` if it is still needed"
    )
    try:
        if took_over is not None:
            print(f"[peft-search] {took_over}")
        print(f"[peft-search] {recovery.repair(args.results_dir, force=args.force)}")
    finally:
        lock.release()
    return 0
