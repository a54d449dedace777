"""The commands that read a results directory (or an export): ``best``, ``evaluate``, ``report``, ``show``,
``repair``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _fetched(results_dir: str) -> tuple[Path | str, str | None]:
    """A results directory to read: itself, or for an object-store URI a fresh local copy of its files."""
    from peft_search.search.results import storage

    if not storage.is_uri(results_dir):
        return results_dir, None
    import tempfile

    # Not the driver's staging copy: a search may be running from it on this machine.
    local = Path(tempfile.mkdtemp(prefix="peft-search-read-")) / storage.staging_dir(results_dir).name
    return storage.download(results_dir, local), results_dir


def _limits(args: argparse.Namespace) -> list:
    """``best``'s limits: the named flags, then every ``--limit METRIC<=VALUE``; bad input is a ConfigError."""
    from peft_search.reports.choice import named_limits, parse_limit
    from peft_search.search.errors import ConfigError
    from peft_search.search.settings.sizes import parse_bytes

    def size(text: str) -> int:
        # On the command line a size says its unit: a bare 8 would be 8 bytes, never what was meant.
        if text.strip().replace(".", "", 1).isdigit():
            raise ValueError(f"{text!r} has no unit; write e.g. {text.strip()}GiB or {text.strip()}GB")
        return parse_bytes(text)

    memory = None
    if args.max_memory is not None:
        try:
            memory = float(size(args.max_memory))
        except ValueError as err:
            raise ConfigError(f"--max-memory: {err}") from None
    limits = named_limits(args.max_params, memory, args.min_accuracy)
    for text in args.limit:
        try:
            limits.append(parse_limit(text, parse_bytes=size))
        except ValueError as err:
            raise ConfigError(f"--limit: {err}") from None
    return limits


def _tolerance(args: argparse.Namespace) -> tuple:
    """``--tolerance`` and ``--prefer``, checked before anything is read."""
    from peft_search.reports.choice import PREFER_ALIASES, parse_tolerance
    from peft_search.search.errors import ConfigError
    from peft_search.search.results.metrics import get_metric

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


def best(args: argparse.Namespace) -> int:
    import json

    from peft_search.reports.best import best_command, choice_json, describe
    from peft_search.search.results import storage

    limits = _limits(args)
    tolerance, prefer = _tolerance(args)
    local, uri = _fetched(args.results_dir)
    fetch = None
    if uri is not None:
        # The adapter is a checkpoint Tune wrote to the store: fetched next to the local copy first.
        def fetch(adapter_path: str) -> Path:
            return storage.fetch_adapter(
                adapter_path, uri, Path(local) / "adapters" / Path(adapter_path).name
            )

    choice, objectives = best_command(local, limits=limits, tolerance=tolerance, prefer=prefer)
    exported = None
    if choice.trial is not None and args.export is not None:
        from peft_search.search.shipping.export import export_trial

        trial = choice.trial.to_dict()
        if fetch is not None:
            trial = {**trial, "adapter_path": str(fetch(trial["adapter_path"]))}
        exported = export_trial(local, trial, args.export)
    if args.format == "json":
        out = choice_json(choice, objectives, limits)
        if exported is not None:
            out["export"] = str(exported)
        print(json.dumps(out, indent=2, default=str))
    else:
        print(describe(choice, objectives))
        from peft_search.search.results.layout import ResultsDir
        from peft_search.search.results.lock import progress_note

        note = progress_note(local, "wall_time_s" in ResultsDir(local).read_facts())
        if note is not None:
            print(f"[peft-search] the search is {note}")
        if exported is not None:
            import json

            library = json.loads((Path(exported) / "peft_search.json").read_text()).get("library", "peft")
            fmt = "AdapterHub's load_adapter" if library == "adapters" else "PEFT"
            print(
                f"Exported to {exported}: the adapter ({fmt}), its tokenizer, peft_search.json (labels, "
                "quantization, the recorded evaluation), reproduce.yaml, README.md with a loading snippet; "
                f"`peft-search evaluate {exported}` re-scores it"
            )
    return 0 if choice.trial is not None else 1


def evaluate(args: argparse.Namespace) -> int:
    import json

    from peft_search.search.errors import ConfigError
    from peft_search.search.shipping.evaluate import evaluate_export

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


def report(args: argparse.Namespace) -> int:
    from peft_search.reports.html import REPORT_FILE, write_report
    from peft_search.search.results import storage

    local, uri = _fetched(args.results_dir)
    path = write_report(local, args.output)
    if uri is not None and args.output is None:
        storage.upload(Path(local), uri, [REPORT_FILE])
        path = f"{storage.redacted(uri)}/{REPORT_FILE}"
    print(f"[peft-search] report: {path}")
    return 0


def show(args: argparse.Namespace) -> int:
    import json

    from peft_search.reports.table import load_trials, summary_table, trial_records
    from peft_search.search.results.layout import ResultsDir
    from peft_search.search.results.lock import progress_note

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
    from peft_search.search.loop.recovery import repair

    print(f"[peft-search] {repair(args.results_dir, force=args.force)}")
    return 0
