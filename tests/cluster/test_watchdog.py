"""A search that started its own Ray leaves no Ray process running 10 s after its driver is SIGKILLed (Ray's
per-node agents outlive the driver on their own); the watchdog kills only what the driver started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from peft_search.cluster.watchdog import watch
from tests import ROOT

pytestmark = pytest.mark.slow


def test_the_watchdog_kills_what_the_driver_started_and_nothing_else():
    # A "driver" that starts a child and is killed; an unrelated process started beside it survives.
    driver = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"]
    )
    bystander = subprocess.Popen(["sleep", "60"])
    watcher = subprocess.Popen([sys.executable, "-m", "peft_search.cluster.watchdog", str(driver.pid)])
    time.sleep(2.5)  # the watchdog has seen the child
    (child,) = psutil.Process(driver.pid).children()
    driver.kill()
    driver.wait()
    watcher.wait(timeout=15)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert bystander.poll() is None
    bystander.kill()
    assert watch(2**22 + 12345) == 0  # no such driver: nothing to do


def test_no_ray_process_outlives_a_killed_search(tiny_bert, classification_csv, tmp_path):
    raw = {
        "name": "killed",
        "model": {"name_or_path": tiny_bert},
        "dataset": {"source": classification_csv, "train_per_class": 8, "eval_size": 12},
        "space": {"methods": ["lora"]},
        "search": {"num_trials": 2, "max_concurrent": 1},
        "training": {"max_steps": 400, "batch_size": 4, "max_seq_length": 24, "eval_batch_size": 8},
        "resources": {"cpus_per_worker": 1},
        "results_dir": str(tmp_path / "results"),
    }
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "peft_search", "run", str(config), "--num-cpus", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    tune = tmp_path / "results" / "killed" / "tune"
    deadline = time.monotonic() + 180
    while not list(tune.glob("trial-*")) and time.monotonic() < deadline:  # a trial is training
        time.sleep(0.5)
    time.sleep(3)
    started = psutil.Process(driver.pid).children(recursive=True)
    names = {p.name() for p in started if p.is_running()}
    assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} & names, names  # what used to outlive the driver
    driver.send_signal(signal.SIGKILL)  # the driver only: nothing gets to clean up
    driver.wait()
    time.sleep(10)
    alive = []
    for proc in started:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid} {proc.name()}")
    for proc in started:  # whatever the outcome, leave nothing for the next test
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert alive == []
