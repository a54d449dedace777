"""Every command against generated bad input (hypothesis): one line, exit code 2, no traceback, nothing written.

Each example is one command line: the command's arguments drawn from values that are fine on their own, with one
of them (a positional or an option) replaced by a bad value of its kind: wrong types, negatives, zero, huge
numbers, missing and unreadable paths, directories for files, files for directories, malformed URLs, unknown
metrics. The real entry point runs in-process; ``cluster.connect`` is a sentinel, so a bad value that gets as far as
starting Ray fails the test instead of starting a cluster.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peft_search.search import cli
from peft_search.search.verbosity import LOG_ENV
from tests.helpers import synthetic_search
from tests.tiny import tiny_bert, topics_csv


class _RayWouldStart(BaseException):
    """Validation let the command through to starting Ray (past the entry point's last resort, Exception)."""


def _world(root: Path) -> dict[str, list[str]]:
    """The files the commands read (a good config, a finished search, broken ones of each) and the values, good
    and bad, each kind of argument takes."""
    model = tiny_bert(root / "bert")
    data = topics_csv(root / "topics.csv")
    good = {
        "name": "tiny",
        "model": {"name_or_path": model},
        "dataset": {"source": data, "train_per_class": 8, "eval_size": 12},
        "space": {"methods": ["lora"], "targets": ["attention"], "ranks": [2]},
        "training": {"max_steps": 1, "batch_size": 4, "max_seq_length": 24},
        "results_dir": str(root / "results"),
    }
    configs = root / "configs"
    configs.mkdir()

    def config(name: str, text: str | bytes) -> str:
        path = configs / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def changed(file: str, **sections) -> str:
        raw = json.loads(json.dumps(good))
        for key, value in sections.items():
            raw[key] = {**raw[key], **value} if isinstance(value, dict) and key in raw else value
        return config(file, yaml.safe_dump(raw))

    search = synthetic_search(root, 6)
    (root / "empty").mkdir()
    (root / "corrupt").mkdir()
    (root / "corrupt" / "trials.parquet").write_bytes(b"PAR1 not really")
    (root / "export-bad").mkdir()
    (root / "export-bad" / "peft_search.json").write_text("{not json")
    (root / "a-file.txt").write_text("text\n")
    (root / "taken").mkdir()
    (root / "taken" / "something").write_text("x")
    missing, a_file, a_dir = str(root / "missing"), str(root / "a-file.txt"), str(root / "empty")
    good_config = changed("good.yaml")
    values = {
        "config.good": [good_config],
        "local-config.good": [good_config],
        "config.bad": [
            missing,
            a_dir,
            config("binary.yaml", b"\x00\xff\xfe\x00garbage"),
            config("empty.yaml", ""),
            config("list.yaml", "- a\n- b\n"),
            config("syntax.yaml", "name: [unclosed\n"),
            changed("unknown-key.yaml", modle={"name_or_path": "x"}),
            changed("bare-size.yaml", budget={"max_memory": 8}),
            changed("bad-name.yaml", name="has space"),
            changed("negative-steps.yaml", training={"max_steps": -1}),
        ],
        # Data the config names is read where the search runs: here for run and plan, on the cluster for submit.
        "local-config.bad": [
            changed("missing-data.yaml", dataset={"source": missing + ".csv"}),
            changed("too-few-rows.yaml", dataset={"eval_size": 10**6}),
        ],
        "results.good": [str(search)],
        "results.bad": [missing, a_file, a_dir, str(root / "corrupt"), str(search / "trials.parquet")],
        "export.bad": [missing, a_file, a_dir, str(root / "export-bad")],
        "count.good": ["1", "2", "3"],
        "count.bad": ["0", "-3", "abc", "1.5", "", "nan", "1e400", "9" * 40],
        "count0.good": ["0", "1"],
        "count0.bad": ["-1", "x", "2.5", "9" * 40],
        "labels.good": ["3"],
        "labels.bad": ["0", "1", "-2", "x", "1e9"],
        "samples.good": ["0", "2"],
        "samples.bad": ["-1", "x", "2.5", "1e9"],
        "fraction.good": ["0.5", "0"],
        "fraction.bad": ["90", "-0.1", "x", "1e30", "nan", "inf", ""],
        "params.good": ["100k", "1000000"],
        "params.bad": ["-5", "10x", "0", "1.5", "nan"],
        "size.good": ["8GiB", "64GB"],
        "size.bad": ["8", "-3GB", "8XB", "", "9" * 400 + "GB", "inf"],
        "limit.good": ["accuracy>=0.1", "peak_memory_bytes<=64GiB", "trainable_params<=1M"],
        "limit.bad": ["nonsense", "accuracy>>3", "unknown_metric<=3", "peak_memory_bytes<=8", "accuracy>=90"],
        "tolerance.good": ["auto", "0", "0.01"],
        "tolerance.bad": ["x", "-1", "nan", "inf", "1.5"],
        "prefer.good": ["params", "memory"],
        "prefer.bad": ["unknown", ""],
        "format.good": ["table", "json"],
        "format.bad": ["xml", ""],
        "export-to.bad": [str(root / "taken"), a_file + "/sub"],
        "output.bad": [str(root / "nowhere") + "/", a_file + "/report.html"],
        "name.bad": ["has space", "../up", "a/b"],
        "set.good": ["search.seed=3"],
        "set.bad": [
            "noequals",
            "unknown.key=3",
            "training.max_steps=abc",
            "budget.max_memory=8",
            "=3",
            "training=3",
        ],
        "ray-address.bad": [
            "not a url",
            "http://127.0.0.1:8265",
            "ray://",
            "ray://host:notaport",
            "bad//x:1",
        ],
        "dashboard.bad": ["not-a-url", "HOST:8265", "http://", "http://host:notaport", "ftp://x"],
        "results-dir.bad": [a_file],
        "data.bad": [missing + ".csv", a_dir],
        "columns.bad": ["noequals", "weird=col"],
        "job.good": ["raysubmit_123"],
    }
    values["local-config.bad"] += values["config.bad"]
    return values


# Each command: its positionals and options, as (argument, kind); a kind with no ".bad" values is never the bad one.
COMMANDS: dict[str, list[tuple[str | None, str]]] = {
    "run": [
        (None, "local-config"),
        ("--num-trials", "count"),
        ("--num-cpus", "count"),
        ("--results-dir", "results-dir"),
        ("--name", "name"),
        ("--set", "set"),
        ("--address", "ray-address"),
    ],
    "resume": [(None, "results"), ("--num-cpus", "count"), ("--address", "ray-address")],
    "plan": [
        (None, "local-config"),
        ("--samples", "samples"),
        ("--num-labels", "labels"),
        ("--jobs", "count0"),
        ("--set", "set"),
        ("--format", "format"),
    ],
    "best": [
        (None, "results"),
        ("--max-params", "params"),
        ("--max-memory", "size"),
        ("--min-accuracy", "fraction"),
        ("--limit", "limit"),
        ("--tolerance", "tolerance"),
        ("--prefer", "prefer"),
        ("--format", "format"),
        ("--export", "export-to"),
    ],
    "evaluate": [
        (None, "export"),
        ("--data", "data"),
        ("--batch-size", "count"),
        ("--columns", "columns"),
        ("--format", "format"),
    ],
    "report": [(None, "results"), ("--output", "output")],
    "show": [(None, "results"), ("--format", "format")],
    "repair": [(None, "results")],
    "submit": [(None, "config"), ("--address", "dashboard"), ("--num-trials", "count"), ("--set", "set")],
    "status": [(None, "job"), ("--address", "dashboard")],
    "logs": [(None, "job"), ("--address", "dashboard")],
    "stop": [(None, "job"), ("--address", "dashboard")],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("every-input")
    return root, _world(root)


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    from peft_search.search.loop import driver

    def refuse(*args, **kwargs):
        raise _RayWouldStart

    monkeypatch.setattr(driver, "connect", refuse)
    # The entry point names its log file and routes warnings there, once per process as a command would.
    monkeypatch.delenv(LOG_ENV, raising=False)
    yield
    logging.captureWarnings(False)


@st.composite
def command_lines(draw, values: dict[str, list[str]]) -> tuple[str, list[str], str]:
    """A command line with exactly one bad argument: (command, argv, what was bad)."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    slots = COMMANDS[command]
    bad_slots = [i for i, (_, kind) in enumerate(slots) if values.get(f"{kind}.bad")]
    bad = draw(st.sampled_from(bad_slots))
    argv = [command]
    for i, (option, kind) in enumerate(slots):
        if i == bad:
            value = draw(st.sampled_from(values[f"{kind}.bad"]))
        elif option is None:
            value = draw(st.sampled_from(values.get(f"{kind}.good") or values[f"{kind}.bad"]))
        elif values.get(f"{kind}.good") and draw(st.booleans()):
            value = draw(st.sampled_from(values[f"{kind}.good"]))
        else:
            continue
        # An option's value joined to it (--max-memory=8GiB) or as the next argument (--max-memory 8GiB), where a
        # value such as -3GB must still reach the option's own check.
        joined = option is not None and draw(st.booleans())
        argv += [value] if option is None else [f"{option}={value}"] if joined else [option, value]
    return command, argv, f"{slots[bad][0] or slots[bad][1]}={argv}"


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@settings(
    max_examples=int(os.environ.get("PEFT_SEARCH_INPUT_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_one_bad_argument_is_one_line_and_exit_2(world, capsys, data):
    root, values = world
    command, argv, what = data.draw(command_lines(values))
    before = _snapshot(root)
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse's own refusals exit from parse_args, as the console script would
        code = exit.code
    out, err = capsys.readouterr()
    assert code == 2, f"{what}: exit {code}\n{err}"
    assert "Traceback" not in err + out, what
    lines = err.strip().splitlines()
    assert lines and "error:" in lines[-1], f"{what}: {err!r}"
    assert "expected one argument" not in lines[-1], f"{what}: the value was read as an option: {err!r}"
    if not lines[-1].startswith(
        f"peft-search {command}: error: argument"
    ):  # argparse's own: usage, then one line
        assert len(lines) == 1, f"{what}: not one line: {err!r}"
    assert _snapshot(root) == before, f"{what}: wrote into the inputs"


def test_every_negative_value_reaches_its_option_as_the_next_argument(world, capsys):
    """``--max-memory -3GB`` (the value as the next argument, as most users type it) gets the option's own
    refusal, not argparse's "expected one argument", which reads a value that is not a plain number as an option."""
    root, values = world
    cases = [
        (command, option, value)
        for command, slots in sorted(COMMANDS.items())
        for option, kind in slots
        if option is not None
        for value in values.get(f"{kind}.bad", [])
        if value[:1] == "-" and value[1:2].isdigit()
    ]
    assert {option for _, option, _ in cases} >= {"--max-memory", "--max-params", "--tolerance", "--num-cpus"}
    for command, option, value in cases:
        # A positional without a good value (evaluate's export): argparse refuses the option's value first.
        positional = [
            (values.get(f"{k}.good") or values[f"{k}.bad"])[0] for o, k in COMMANDS[command] if o is None
        ]
        argv = [command, *positional, option, value]
        try:
            code = cli.main(argv)
        except SystemExit as exit:
            code = exit.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err, argv
        assert option in err[-1] and "expected one argument" not in err[-1], f"{argv}: {err[-1]}"
