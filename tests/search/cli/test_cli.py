"""The command line as a user meets it: help, bad configs (exit 2, one line, nothing written)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "peft_search", *args], capture_output=True, text=True, cwd=cwd
    )


def test_help_lists_commands():
    out = _cli("--help")
    assert out.returncode == 0 and "run" in out.stdout and "show" in out.stdout


def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "model": {"name_or_path": "m"},
                "dataset": {"source": "d.csv"},
                "space": {"methods": ["lora", "nope"]},
                "results_dir": str(tmp_path / "out"),
            }
        )
    )
    out = _cli("run", str(path))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "space.methods" in out.stderr and "unknown method 'nope'" in out.stderr
    assert not (tmp_path / "out").exists()


def test_missing_dataset_file_fails_before_ray(tmp_path, tiny_bert):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "model": {"name_or_path": tiny_bert},
                "dataset": {"source": str(tmp_path / "missing.csv")},
                "results_dir": str(tmp_path / "out"),
            }
        )
    )
    out = _cli("run", str(path))
    assert out.returncode == 2 and "dataset.source: no file at" in out.stderr
    assert "Ray" not in out.stdout + out.stderr.replace("dataset", "")
    assert not (tmp_path / "out").exists()


def test_a_reader_that_goes_away_ends_the_output_quietly(tmp_path):
    """`peft-search show DIR | head`: no traceback when the pipe closes early."""
    from peft_search.search.results.layout import ResultsDir
    from tests.reports.builders import record

    ResultsDir(tmp_path).write_trials(
        [record(f"t{i}", accuracy=0.5, trainable_params=10) for i in range(3000)]
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "peft_search", "show", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.readline()  # the header, then the reader goes away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err


def test_show_and_best_read_a_search_whose_every_trial_failed(tmp_path):
    from peft_search.search.results.layout import ResultsDir
    from tests.reports.builders import record

    ResultsDir(tmp_path).write_trials([record("t0", status="failed"), record("t1", status="infeasible")])
    shown = _cli("show", str(tmp_path))
    assert shown.returncode == 0 and "RuntimeError: boom" in shown.stdout, shown.stderr
    best = _cli("best", str(tmp_path))
    assert best.returncode == 3 and best.stdout.startswith(
        "No trial chosen: no complete trial meets no limits"
    )


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    out = _cli("--version")
    assert out.returncode == 0 and out.stdout == f"peft-search {version('peft-search')}\n"


def test_set_overrides_one_field_and_is_validated_like_the_file(tmp_path):
    from peft_search.search.settings.loading import default_config_path

    results = tmp_path / "out"
    base = [str(default_config_path()), "--set", f"results_dir={results}"]
    out = _cli("run", *base, "--set", "training.max_steps=0")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "training.max_steps: Input should be greater than or equal to 1" in out.stderr
    out = _cli("run", *base, "--set", "training.max_stepz=3")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert (
        "training.max_stepz: not a field of transformers.TrainingArguments; did you mean max_steps?"
        in out.stderr
    )
    out = _cli("run", *base, "--set", "training.max_steps")
    assert (
        "--set: 'training.max_steps' is not KEY.PATH=VALUE; write e.g. --set training.max_steps=50"
        in out.stderr
    )
    out = _cli("plan", str(default_config_path()), "--set", "space.methods=[lora, nope]")
    assert out.returncode == 2 and "space.methods: unknown method 'nope'" in out.stderr
    assert not results.exists()


def _complete(line: str, tmp_path) -> list[str]:
    """What the shell gets back when the user presses TAB at the end of ``line`` (argcomplete's protocol)."""
    out = tmp_path / "completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_SUPPRESS_SPACE": "1",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
    }
    done = subprocess.run([sys.executable, "-m", "peft_search"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out.read_text().split("\x0b") if out.read_text() else []


def test_shell_completion_of_commands_and_options(tmp_path):
    assert set(_complete("peft-search ", tmp_path)) >= {"run", "plan", "best", "evaluate", "report", "submit"}
    assert _complete("peft-search ev", tmp_path) == ["evaluate"]
    assert "--export" in _complete("peft-search best results/x --ex", tmp_path)
    (tmp_path / "my-search.yaml").write_text("name: x\n")
    assert "my-search.yaml" in _complete(f"peft-search plan {tmp_path}/my-", tmp_path)[0]
    script = _cli("completion", "bash")
    assert script.returncode == 0 and "complete " in script.stdout and "peft-search" in script.stdout


def test_the_command_exits_with_its_code_after_the_exit_handlers_and_threads(tmp_path):
    """``leave`` skips Python's teardown of the modules, not what the teardown does for a command: exit handlers
    run (Ray's shutdown is one) and buffered output is written; with a thread that is not a daemon still running,
    Python's own exit waits for it."""
    code = """
import atexit, sys, threading, time
from peft_search.search.cli import leave
atexit.register(lambda: print("handler ran", end=""))
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.5), print("thread done", end=" "))).start()
print("buffered", end=" ")
leave(3)
"""
    for case, said in (("alone", "buffered handler ran"), ("thread", "buffered thread done handler ran")):
        out = subprocess.run([sys.executable, "-c", code, case], capture_output=True, text=True)
        assert out.returncode == 3 and out.stdout == said, (case, out)


def test_the_hub_clients_retries_go_to_the_log_not_the_terminal(tmp_path, monkeypatch, capsys):
    """An unreachable hub: the Hub client warns twice a retry (ten tries for a model's config); the command's own
    line says what failed, the retries are in its log."""
    import logging

    from peft_search.search.cli import main
    from peft_search.search.verbosity import LOG_ENV, VERBOSE_ENV

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    monkeypatch.setenv(LOG_ENV, "")  # the command names its own log; restored afterwards
    hub = logging.getLogger("huggingface_hub.utils._http")
    monkeypatch.setattr(hub, "handlers", list(hub.handlers))
    monkeypatch.setattr(hub, "propagate", hub.propagate)
    assert main(["show", str(tmp_path / "nope")]) == 2
    capsys.readouterr()
    hub.warning("Retrying in 1s [Retry 1/5].")
    for handler in hub.handlers:
        handler.flush()
    assert capsys.readouterr().err == ""
    assert "Retrying in 1s [Retry 1/5]." in Path(os.environ[LOG_ENV]).read_text()


def test_plan_of_a_space_without_candidates_says_how_to_sample_it(
    tmp_path, tiny_bert, classification_csv, capsys
):
    from peft_search.search.cli import main

    raw = {
        "name": "p",
        "model": {"name_or_path": tiny_bert},
        "dataset": {"source": classification_csv, "train_per_class": 8, "eval_size": 12},
        "space": {"methods": ["lora"]},
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["plan", str(config)]) == 0
    assert (
        "no explicit candidates: --samples N plans N configs sampled from its space"
        in capsys.readouterr().out
    )
    assert main(["plan", str(config), "--samples", "1"]) == 0
    assert "no explicit candidates" not in capsys.readouterr().out
