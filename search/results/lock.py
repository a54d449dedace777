"""One writer per search directory: a run, resume or repair holds an OS file lock (``filelock``) for as long as it
runs.

The lock and a note of its holder (host, pid, start time, command) sit beside the search's directory, in the
results directory (``.NAME.lock``, ``.NAME.lock.json``), so clearing or staging the search's own directory never
touches them. The OS releases the lock when its process dies, however it dies; the note is removed only by a clean
release, so a note found by the next holder names a run that died holding the lock, and that is said, not ignored.
Read-only commands read the note and never take the lock, nor does ``report``: it only replaces
``report.html`` whole, as a running search does (the search's own, written last, stays).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from peft_search.search.errors import ConfigError
from peft_search.search.redact import redact_text


def _paths(search_dir: Path) -> tuple[Path, Path]:
    base = search_dir.parent / f".{search_dir.name}.lock"
    return base, base.with_name(base.name + ".json")


def read_holder(search_dir: str | Path) -> dict[str, Any] | None:
    """The note of the run holding (or last holding, if it died) the search's lock; None when there is none."""
    _, note = _paths(Path(search_dir))
    try:
        return json.loads(note.read_text())
    except (OSError, ValueError):
        return None


def running_holder(search_dir: str | Path) -> dict[str, Any] | None:
    """The run writing the search now, if any: a note whose process is alive (when it is on this host)."""
    holder = read_holder(search_dir)
    if holder is None:
        return None
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except (OSError, ValueError, KeyError):
            return None  # died holding it: the OS has released the lock
    return holder


def progress_note(search_dir: str | Path, finished: bool) -> str | None:
    """What a reader of a search should know of its state: None when it ``finished``, else whether a run is
    writing it now (and which) or it stopped unfinished (and how to finish it)."""
    if finished:
        return None
    holder = running_holder(search_dir)
    if holder is not None:
        return f"still running: {describe(holder)}; what is shown are the trials finished so far"
    return f"unfinished, and no run is writing it: `peft-search resume {search_dir}` finishes it"


def describe(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} (`{holder.get('command')}`, since {started})"


def refuse_if_running(search_dir: str | Path) -> None:
    """Fail at once, before anything heavy loads, when a live run on this host is writing ``search_dir``
    (``SearchLock.acquire`` stays the check that counts; this one only answers sooner)."""
    holder = running_holder(search_dir)
    if holder is not None and holder.get("host") == socket.gethostname():  # elsewhere, only the lock can tell
        raise _busy(Path(search_dir), holder)


RUN_ADVICE = "or pass --name NEW to start another search"


def _busy(search_dir: Path, holder: dict[str, Any] | None, advice: str = RUN_ADVICE) -> ConfigError:
    who = describe(holder) if holder else "another process"
    return ConfigError(
        f"results_dir: {search_dir} is being written by {who}; wait for it to end (`peft-search show "
        f"{search_dir}` shows its trials), {advice}"
    )


class SearchLock:
    """Held by the run or resume writing ``search_dir``; ``acquire`` fails at once if another run holds it."""

    def __init__(self, search_dir: str | Path) -> None:
        from filelock import FileLock

        self.search_dir = Path(search_dir)
        lock, self.note = _paths(self.search_dir)
        self.lock = FileLock(str(lock), timeout=0, is_singleton=False)
        self._made: list[Path] = []

    @property
    def held(self) -> bool:
        return self.lock.is_locked

    def acquire(self, command: str, advice: str = RUN_ADVICE) -> str | None:
        """Take the lock for ``command``; returns a line to print when it takes over from a run that died
        holding it. Raises ``ConfigError`` (one line naming the holder, then ``advice``: what to do) when a live
        run holds it."""
        from filelock import Timeout

        try:
            missing = [p for p in [self.search_dir.parent, *self.search_dir.parent.parents] if not p.exists()]
            self.search_dir.parent.mkdir(parents=True, exist_ok=True)
            self._made = missing  # removed again if the run ends before writing anything
            self.lock.acquire()
        except Timeout:
            raise _busy(self.search_dir, read_holder(self.search_dir), advice) from None
        except OSError as err:  # (after Timeout, which is one)
            raise ConfigError(
                f"results_dir: cannot write to {self.search_dir.parent} ({err.strerror}); pass another --results-dir"
            ) from None
        dead = read_holder(self.search_dir)
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "command": command,
        }
        tmp = self.note.with_name(self.note.name + ".tmp")
        tmp.write_text(json.dumps(holder))
        os.replace(tmp, self.note)
        if dead is not None:
            return f"took over the lock of {self.search_dir} from {describe(dead)}, which ended without releasing it"
        return None

    def release(self) -> None:
        if not self.held:
            return
        with contextlib.suppress(OSError):
            self.note.unlink()
        self.lock.release()
        if not self.search_dir.exists():  # refused before writing anything: leave nothing behind either
            with contextlib.suppress(OSError):
                Path(self.lock.lock_file).unlink()
                for made in self._made:  # the directories it made for the lock, innermost first, if empty
                    made.rmdir()


def command_line() -> str:
    """How this process was started, for the holder's note (``peft-search run my.yaml``)."""

    args = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    return redact_text(" ".join(args))[:200]
