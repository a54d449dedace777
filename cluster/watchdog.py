"""A local Ray instance dies with the driver that started it, however the driver dies (SIGKILL included).

Ray ties its GCS and raylet to the driver, but its per-node agents (``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``, Ray 2.5x) outlive it: they notice that their raylet died, log it, and then fail to exit
(their ``sys.exit`` runs in a background task), holding about 200 MB and their ports until the next Ray start.
So a driver that starts a local instance also starts this watchdog, in a session of its own: it notes every
process the driver has started (pid and start time, each second) and, once the driver is gone, kills those still
running. A search that joined a cluster (``--address``) starts none: the cluster is left alone.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

INTERVAL_S = 1.0


def start_watchdog() -> subprocess.Popen:
    """Watch this process from a new session (so a signal to the driver's process group spares the watchdog)."""
    return subprocess.Popen(
        [sys.executable, "-m", "peft_search.cluster.watchdog", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def watch(driver_pid: int, interval_s: float = INTERVAL_S) -> int:
    """Note the driver's descendants until it ends, then kill the ones still running; returns how many."""
    import psutil

    me = os.getpid()
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return 0
    started: dict[int, float] = {}
    while True:
        try:
            if driver.status() == psutil.STATUS_ZOMBIE:
                break
            for child in driver.children(recursive=True):
                if child.pid != me:
                    with contextlib.suppress(psutil.Error):
                        started[child.pid] = child.create_time()
        except psutil.NoSuchProcess:
            break
        time.sleep(interval_s)
    left = []
    for pid, created in started.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == created:  # the same process, not a new one that reused its pid
                left.append(proc)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=5)
    return len(left)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
