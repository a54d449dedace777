"""``-v``: whether the user asked to see everything (library warnings, Ray's and Tune's own output), and where what
is not shown goes instead: the command's log file.

Set once by the CLI in the environment, so the trials Ray starts, on this machine or a cluster, see it too.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

VERBOSE_ENV = "PEFT_SEARCH_VERBOSE"
"""Set by ``-v``: nothing is filtered, in the driver or (passed through Ray) in the trials."""
LOG_ENV = "PEFT_SEARCH_LOG"
"""The command's log file: library warnings and Ray's own lines go there (trials on this machine append to it)."""


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def cache_root() -> Path:
    """What peft-search keeps per machine: ``PEFT_SEARCH_CACHE``, else ``$XDG_CACHE_HOME/peft-search`` or
    ``~/.cache/peft-search``."""
    return Path(
        os.environ.get("PEFT_SEARCH_CACHE")
        or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "peft-search")
    )


def start_log(command: str) -> Path:
    """This command's log file (``<cache>/logs/<time>-<command>-<pid>.log``, created at its first line), named in
    the environment for the processes it starts. Python warnings go there instead of the terminal unless ``-v``."""
    path = cache_root() / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{command}-{os.getpid()}.log"
    os.environ[LOG_ENV] = str(path)
    if not verbose():
        to_log(logging.getLogger("py.warnings"))
        logging.captureWarnings(True)
    return path


def to_log(logger: logging.Logger) -> None:
    """``logger``'s records go to the command's log file (``LOG_ENV``) instead of the terminal; nowhere when no
    log file is named or it cannot be written (a trial on another node)."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = False
    path = os.environ.get(LOG_ENV)
    try:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            handler: logging.Handler = logging.FileHandler(path, delay=True, encoding="utf-8")
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
            )
        else:
            handler = logging.NullHandler()
    except OSError:
        handler = logging.NullHandler()
    logger.addHandler(handler)


def log_line(text: str) -> Path | None:
    """Append ``text`` (a traceback) to the command's log file; the file, or None when it cannot be written."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return None
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {os.getpid()}\n{text}\n")
    except OSError:
        return None
    return Path(path)
