"""Multi-node acceptance on a simulated cluster (``ray.cluster_utils.Cluster``: a head and worker nodes, each its
own raylet on this machine), with the search's driver joining it by address, as ``peft-search run --address``.

The head has no CPUs, so every trial runs on a worker node. The driver runs in a subprocess (like the CLI on the
head), so this test process never connects to Ray and never disturbs the session's ``ray_local``. Teardown shuts
the cluster down and kills exactly the processes it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests import ROOT

# alone: a worker group restarted on a new node waits on that node's workers, which a machine loaded by other
# tests can delay past Ray Train's start timeout; CI runs these after the parallel part of the slow lane.
pytestmark = [pytest.mark.slow, pytest.mark.alone]

REPO = ROOT
NODE = {"num_cpus": 1, "object_store_memory": 96 * 1024**2}
DRIVER = """
import json, sys
from peft_search.search.loop.driver import run_search
from tests.helpers import tiny_config
args = json.loads(sys.argv[1])
run_search(tiny_config(args.pop("model"), args.pop("data"), **args.pop("overrides")), address=args["address"])
"""


@pytest.fixture
def cluster(monkeypatch):
    from ray.cluster_utils import Cluster

    # A worker group restarted after a lost node may wait for a new node on a busy 2-core machine longer than
    # Ray Train's default 60 s; the nodes' processes inherit this environment.
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "240")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    c = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 0, "object_store_memory": 96 * 1024**2},
    )
    yield c
    c.shutdown()
    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for proc in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(started, timeout=10)


def _start_driver(address: str, model: str, data: str, env=None, **overrides) -> subprocess.Popen:
    """The search's driver in its own process; its output (Ray's worker logs included) goes to ``driver.log``."""
    args = {"address": address, "model": model, "data": data, "overrides": overrides}
    log = Path(overrides["results_dir"]) / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(args)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    driver.log = log  # type: ignore[attr-defined]
    return driver


def _finish(driver: subprocess.Popen, timeout: float = 480) -> str:
    try:
        driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait()
        pytest.fail(f"the search did not finish in {timeout}s:\n{driver.log.read_text()[-4000:]}")
    out = driver.log.read_text()
    assert driver.returncode == 0, out[-4000:]
    return out


def _node_ids(search_dir: Path) -> dict[str, str]:
    """Each finished trial's node, from the metrics it reported (Tune keeps every key in result.json)."""
    nodes = {}
    for result in (search_dir / "tune").glob("trial-*/result.json"):
        lines = result.read_text().splitlines()
        if lines:
            last = json.loads(lines[-1])
            nodes[last["trial_id"]] = last["node_id"]
    return nodes


def test_search_spreads_over_nodes_into_one_results_dir(cluster, tiny_bert, classification_csv, tmp_path):
    a = cluster.add_node(**NODE)
    b = cluster.add_node(**NODE)
    driver = _start_driver(
        cluster.address,
        tiny_bert,
        classification_csv,
        name="spread",
        results_dir=str(tmp_path),
        space={"methods": ["lora", "ia3", "bitfit"]},
        search={"num_trials": 4, "seed": 0},  # no max_concurrent: planned from the cluster's 2 CPUs
        training={"max_steps": 20},
        resources={"cpus_per_worker": 1},
    )
    _finish(driver)
    search_dir = tmp_path / "spread"
    assert json.loads((search_dir / "run.json").read_text())["concurrency"] == 2
    trials = pd.read_parquet(search_dir / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "complete").all(), trials[["status", "error"]]
    for path in trials["adapter_path"]:
        assert Path(path).parts[0] == "train"  # recorded relative to the search
        assert (search_dir / path / "adapter_model.safetensors").is_file()
    nodes = _node_ids(search_dir)
    assert set(nodes) == set(trials["trial_id"])
    # The head has no CPUs and each worker node one: two trials at once means one on each node.
    assert set(nodes.values()) == {a.node_id, b.node_id}


def _wait_running(search_dir: Path, driver: subprocess.Popen, node, marker: str, timeout: float = 120) -> str:
    """The trial recorded running, once it is training on ``node``.

    The trial being "running" in the table is not enough for a Ray Train trial: while its workers start, a lost
    node only makes Ray Train start them elsewhere (a startup failure, retried), with nothing lost. So for one
    worker: a process of the trial's Tune actor (``ImplicitFunc``) runs on the node; for several: a worker has
    logged (``-v``) that its Trainer starts training, i.e. the process group is up.
    """
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, driver.log.read_text()[-4000:]
        with contextlib.suppress(FileNotFoundError, OSError, ValueError):
            trials = pd.read_parquet(search_dir / "trials.parquet")
            running = trials[trials["status"] == "running"]
            started = marker in driver.log.read_text()
            with contextlib.suppress(psutil.Error):
                started |= any(marker in " ".join(p.cmdline()) for p in raylet.children(recursive=True))
            if len(running) and started:
                return running["trial_id"].iloc[0]
        time.sleep(0.1)
    pytest.fail(f"no trial got to {marker!r} on the node")


def _failures(search_dir: Path) -> dict[str, int]:
    """How often Tune restarted each trial (its saved experiment state)."""
    (state,) = (search_dir / "tune").glob("experiment_state-*.json")
    pairs = json.loads(state.read_text())["trial_data"]
    return {json.loads(t)["trial_id"]: json.loads(meta)["num_failures"] for t, meta in pairs}


@pytest.mark.parametrize(
    ("num_workers", "max_failures"),
    [(1, 1), (1, 0), (2, 1)],
    ids=["retries-on", "retries-off", "ddp-retries-on"],
)
def test_losing_a_node_mid_trial(cluster, tiny_bert, classification_csv, tmp_path, num_workers, max_failures):
    """The only worker node dies while the first trial runs there; a fresh node joins after it.

    With ``resources.max_failures: 1`` Tune restarts the trial (from scratch) on the new node and it completes; with
    0 it is recorded failed with the node's loss as its error, and the search goes on to the next trial. A 2-worker
    trial (Ray Train, whose own ``FailureConfig`` allows no retries) fails its Train run when its workers' node
    dies, and Tune restarts the whole trial the same way.
    """
    node = {**NODE, "num_cpus": num_workers}
    doomed = cluster.add_node(**node)
    search_dir = tmp_path / "lose-node"
    driver = _start_driver(
        cluster.address,
        tiny_bert,
        classification_csv,
        # -v: each Ray Train worker says when it starts training (the process group is up).
        env={"PEFT_SEARCH_VERBOSE": "1"} if num_workers > 1 else None,
        name="lose-node",
        results_dir=str(tmp_path),
        space={"methods": ["lora"]},
        # Without retries a second trial shows that the search goes on.
        search={"num_trials": 1 if max_failures else 2, "seed": 0, "max_concurrent": 1},
        # Long enough for the kill to land mid-training: a 2-worker trial's marker reaches the driver's log through
        # Ray's log monitor, up to a second or two late (200 DDP steps took 3 s and once ended before it; 800 leave
        # 10 s or more), and short enough that the restarted trial, which trains them all again, is not the test's
        # longest part (2000 steps made this case 194 s).
        training={"max_steps": 200 if num_workers == 1 else 800},
        resources={"num_workers": num_workers, "cpus_per_worker": 1, "max_failures": max_failures},
    )
    # A one-worker trial trains in its Tune actor (ImplicitFunc); a two-worker one in Ray Train workers.
    marker = "[peft-search] worker 0 of 2: training" if num_workers > 1 else "ImplicitFunc"
    first = _wait_running(search_dir, driver, doomed, marker)
    cluster.remove_node(doomed, allow_graceful=False)
    spare = cluster.add_node(**node)
    out = _finish(driver)

    trials = pd.read_parquet(search_dir / "trials.parquet").set_index("trial_id")
    nodes = _node_ids(search_dir)
    if max_failures:
        assert len(trials) == 1, out[-4000:]
        assert trials.loc[first, "status"] == "complete", trials.loc[first, "error"]
        assert nodes[first] == spare.node_id
        assert _failures(search_dir) == {first: 1}  # restarted once, by Tune
    else:
        assert len(trials) == 2, out[-4000:]
        second = next(t for t in trials.index if t != first)
        assert trials.loc[second, "status"] == "complete" and nodes[second] == spare.node_id
        assert trials.loc[first, "status"] == "failed"
        # Ray's word for the loss, e.g. "ActorUnavailableError: The actor ... is unavailable: ... Socket closed".
        error = trials.loc[first, "error"]
        assert "Actor" in error or "node" in error.lower(), error
        assert first not in nodes  # it never reported
