"""``peft-search`` driver processes for ``benchmarks.chaos``: start one in a session of its own, wait for it or kill
it with everything it started, or have it kill itself half-way through a sync of Tune's experiment state.

A driver is started with ``start_new_session``, so its pid is its session's id: Ray's GCS, raylet and workers join
that session, and ``kill_tree`` finds them by it even after the driver itself is gone (a driver that SIGKILLs
itself leaves them running). Nothing outside that session is touched.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
CUT_MARK = "[chaos] experiment sync"
"""How a driver cut in a sync says on stderr, before it kills itself, which files it copied."""


@dataclass
class Driver:
    """One ``peft-search`` process, leader of its own session, and its log files."""

    label: str
    proc: subprocess.Popen
    err: Path
    started: float = field(default_factory=time.monotonic)


def start(args: list[str], logs: Path, label: str, kill_at: str | None = None, seed: int = 0) -> Driver:
    """``python -m peft_search ARGS``, or with ``kill_at`` (``sync:N:K``) through ``python -m benchmarks.chaos
    driver``; stdout and stderr go to ``logs/LABEL.out`` and ``logs/LABEL.err``."""
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "peft_search", *args]
    if kill_at is not None:
        command = [sys.executable, "-m", "benchmarks.chaos", "driver", "--kill-at", kill_at]
        command += ["--seed", str(seed), "--", *args]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    err = logs / f"{label}.err"
    with open(logs / f"{label}.out", "w") as out, open(err, "w") as errors:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": path},
            stdout=out,
            stderr=errors,
            start_new_session=True,
        )
    return Driver(label, proc, err)


def kill_tree(driver: subprocess.Popen) -> int:
    """SIGKILL a driver and everything it started, as tests/search/test_resume.py does (its children), plus what
    is left in its session once it died. Returns how many processes other than the driver it killed."""
    family = set()
    if driver.returncode is None:  # not reaped yet: the pid is still the driver's (a zombie at worst)
        family.add(driver.pid)
        with contextlib.suppress(psutil.Error):
            family |= {p.pid for p in psutil.Process(driver.pid).children(recursive=True)}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(proc.pid) == driver.pid:
                family.add(proc.pid)
    killed = []
    for member in family:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(member)
            proc.kill()
            killed.append(proc)
    driver.wait(timeout=30)
    psutil.wait_procs(killed, timeout=30)
    return len([p for p in killed if p.pid != driver.pid])


def tail(path: Path, lines: int = 8) -> list[str]:
    """The last non-empty lines of a log."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return [ln for ln in text.splitlines() if ln.strip()][-lines:]


def watch(
    driver: Driver,
    search_dir: Path,
    *,
    kill_after: float | None = None,
    from_first_trial: bool = False,
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Wait for the driver to exit, or kill its tree ``kill_after`` seconds after it started (or, with
    ``from_first_trial``, after its search's first trial started: the trials table appears then). Whatever it
    left running is killed either way; a driver past ``timeout_s`` is killed and said so (``rc`` "timeout")."""
    first = None if from_first_trial else driver.started
    out: dict[str, Any] = {"label": driver.label, "killed": False}
    while True:
        now, rc = time.monotonic(), driver.proc.poll()
        if first is None and (search_dir / "trials.parquet").exists():
            first = now
            out["first_trial_s"] = now - driver.started
        if rc is not None:
            left = kill_tree(driver.proc)
            return {**out, "rc": rc, "wall_s": now - driver.started, "left_running": left}
        if kill_after is not None and first is not None and now >= first + kill_after:
            kill_tree(driver.proc)
            return {**out, "rc": None, "killed": True, "at_s": now - first, "wall_s": now - driver.started}
        if now - driver.started > timeout_s:
            kill_tree(driver.proc)
            return {**out, "rc": "timeout", "wall_s": now - driver.started}
        time.sleep(0.25)


def cut_experiment_sync(n: int, k: int, seed: int) -> None:
    """Make this process's N-th upload of Tune's experiment state (its driver staging dir to ``tune/``) copy only
    K of its files, one by one in a shuffled order with plain copies, then SIGKILL this process.

    Tune's syncer looks ``_upload_to_fs_path`` up in ``ray.train._internal.storage`` at each sync
    (``_FilesystemSyncer._sync_up_command``), so replacing the module's name reaches it. In the driver only the
    experiment sync (``_ExperimentCheckpointManager.sync_up_experiment_state``) uploads this way: trials upload
    their own files from their own processes."""
    from ray.train._internal import storage

    upload = storage._upload_to_fs_path
    seen = 0

    def cut(local_path: str, fs, fs_path: str, exclude: list[str] | None = None) -> None:
        nonlocal seen
        experiment = Path(local_path).name == "driver_artifacts" and Path(fs_path).name == "tune"
        if not experiment or fs.type_name != "local":
            return upload(local_path, fs, fs_path, exclude)
        seen += 1
        if seen < n:
            return upload(local_path, fs, fs_path, exclude)
        files = sorted(p for p in Path(local_path).rglob("*") if p.is_file())
        random.Random(seed).shuffle(files)
        for source in files[:k]:
            target = Path(fs_path) / source.relative_to(local_path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        copied = ", ".join(str(p.relative_to(local_path)) for p in files[:k])
        print(
            f"{CUT_MARK} {n}: copied {min(k, len(files))} of {len(files)} files ({copied}), then SIGKILL",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGKILL)

    storage._upload_to_fs_path = cut


def driver(argv: list[str]) -> int:
    """``--kill-at sync:N:K [--seed S] -- PEFT-SEARCH ARGS``: the peft-search CLI with Tune's N-th sync cut."""
    at = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos driver")
    parser.add_argument("--kill-at", required=True, metavar="sync:N:K")
    parser.add_argument("--seed", type=int, default=0, help="the order the K files are copied in")
    args = parser.parse_args(argv[:at])
    kind, n, k = (args.kill_at.split(":") + ["", ""])[:3]
    if kind != "sync" or not (n.isdigit() and k.isdigit()):
        parser.error(f"--kill-at {args.kill_at!r}: write sync:N:K")
    cut_experiment_sync(int(n), int(k), args.seed)
    from peft_search.search.cli import main

    return main(argv[at + 1 :])
