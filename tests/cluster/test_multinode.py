"""Multi-node acceptance on a simulated cluster (``ray.cluster_utils.Cluster``: a head and worker nodes, each its
own raylet on this machine), with the search's driver joining it by address, as ``peft-search run --address``.

The head has no CPUs, so every trial runs on a worker node. The driver runs in a subprocess (like the CLI on the
head), so this test process never connects to Ray and never disturbs the session's ``ray_local``. Teardown shuts
the cluster down and kills exactly the processes it started.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NODE = {"num_cpus": 1, "object_store_memory": 96 * 1024**2}
DRIVER = """
import json, sys
from search.driver import run_search
from tests.helpers import tiny_config
args = json.loads(sys.argv[1])
run_search(tiny_config(args.pop("model"), args.pop("data"), **args.pop("overrides")), address=args["address"])
"""


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

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


def _start_driver(address: str, model: str, data: str, **overrides) -> subprocess.Popen:
    args = {"address": address, "model": model, "data": data, "overrides": overrides}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(driver: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = driver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        out, _ = driver.communicate()
        pytest.fail(f"the search did not finish in {timeout}s:\n{out[-4000:]}")
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
        assert Path(path).is_relative_to(search_dir / "train")
        assert (Path(path) / "adapter_model.safetensors").is_file()
    nodes = _node_ids(search_dir)
    assert set(nodes) == set(trials["trial_id"])
    # The head has no CPUs and each worker node one: two trials at once means one on each node.
    assert set(nodes.values()) == {a.node_id, b.node_id}


def _wait_running(search_dir: Path, driver: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, driver.communicate()[0][-4000:]
        with contextlib.suppress(FileNotFoundError, OSError, ValueError):
            trials = pd.read_parquet(search_dir / "trials.parquet")
            running = trials[trials["status"] == "running"]
            if len(running):
                return running["trial_id"].iloc[0]
        time.sleep(0.2)
    pytest.fail("no trial started")


@pytest.mark.parametrize("max_failures", [1, 0], ids=["retries-on", "retries-off"])
def test_losing_a_node_mid_trial(cluster, tiny_bert, classification_csv, tmp_path, max_failures):
    """The only worker node dies while the first trial runs there; a fresh node joins after it.

    With ``resources.max_failures: 1`` Tune restarts the trial (from scratch) on the new node and it completes; with
    0 it is recorded failed with the node's loss as its error, and the search goes on to the next trial.
    """
    doomed = cluster.add_node(**NODE)
    search_dir = tmp_path / "lose-node"
    driver = _start_driver(
        cluster.address,
        tiny_bert,
        classification_csv,
        name="lose-node",
        results_dir=str(tmp_path),
        space={"methods": ["lora"]},
        search={"num_trials": 2, "seed": 0, "max_concurrent": 1},
        training={"max_steps": 200},
        resources={"cpus_per_worker": 1, "max_failures": max_failures},
    )
    first = _wait_running(search_dir, driver)
    cluster.remove_node(doomed, allow_graceful=False)
    spare = cluster.add_node(**NODE)
    out = _finish(driver)

    trials = pd.read_parquet(search_dir / "trials.parquet").set_index("trial_id")
    assert len(trials) == 2, out[-4000:]
    second = next(t for t in trials.index if t != first)
    nodes = _node_ids(search_dir)
    assert trials.loc[second, "status"] == "complete" and nodes[second] == spare.node_id
    if max_failures:
        assert trials.loc[first, "status"] == "complete", trials.loc[first, "error"]
        assert nodes[first] == spare.node_id
    else:
        assert trials.loc[first, "status"] == "failed"
        # Ray's word for the loss, e.g. "ActorUnavailableError: The actor ... is unavailable: ... Socket closed".
        error = trials.loc[first, "error"]
        assert "Actor" in error or "node" in error.lower(), error
        assert first not in nodes  # it never reported
