"""`peft-search submit / status / logs / stop` against a real Ray head (`ray start`) on loopback, token auth on.

The head runs in its own session with its own temp dir, ports and token; the CLI runs as a subprocess whose HOME
holds the token in ``~/.ray/auth_token`` and nothing else, as on a user's laptop. Teardown kills exactly what the
head started (its session, and anything running from its temp dir); never ``ray stop``, which would end every Ray
on this machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from peft_search.cluster.jobs import PACKAGE, entrypoint, runtime_env
from peft_search.search.cli import build_parser
from tests import ROOT
from tests.helpers import tiny_config

REPO = ROOT


@dataclass
class Head:
    address: str
    token: str
    home: Path
    """A HOME whose ``.ray/auth_token`` is the head's token."""
    root: Path


def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # On a cluster, the Python that runs Ray is the `python` on its PATH (the job's entrypoint says `python`): so
    # here, this environment's, whether or not the tests were started from an activated one.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def _started_by(proc: psutil.Process, session: int, root: str) -> bool:
    try:
        return (
            os.getsid(proc.pid) == session or root in " ".join(proc.cmdline()) or proc.cwd().startswith(root)
        )
    except (psutil.Error, OSError):
        return False


def _kill_head(head: subprocess.Popen, root: Path) -> None:
    """The head's session and anything running from its temp dir (job drivers start sessions of their own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(timeout=5)
    left = [p for p in psutil.process_iter() if p.pid != os.getpid() and _started_by(p, head.pid, str(root))]
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=10)


@pytest.fixture(scope="module")
def head():
    # A short root: Ray's socket paths under it must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="psj-", dir="/tmp"))
    token = secrets.token_hex(16)
    (root / "home" / ".ray").mkdir(parents=True)
    (root / "home" / ".ray" / "auth_token").write_text(token)
    (root / "head_token").write_text(token)
    gcs, dashboard, client, agent, agent_grpc, runtime_env_agent, metrics = _free_ports(7)
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        f"--port={gcs}",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env_agent}",
        f"--metrics-export-port={metrics}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--node-ip-address=127.0.0.1",
        f"--object-store-memory={128 * 1024**2}",
        f"--temp-dir={root / 'ray'}",
        "--disable-usage-stats",
    ]
    log = (root / "head.log").open("w")
    env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(root / "head_token"))
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"ray start exited: {(root / 'head.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the head's dashboard did not answer in 120 s"
            with contextlib.suppress(requests.RequestException):
                r = requests.get(
                    f"{address}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=2
                )
                if r.status_code == 200:
                    break
            time.sleep(0.5)
        yield Head(address, token, root / "home", root)
    finally:
        _kill_head(proc, root)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def cli(head: Head, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "peft_search", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_clean_env(HOME=str(head.home), **env),
        timeout=300,
    )


def api(head: Head, path: str):
    """The Jobs REST API read directly, with the token, to check what the CLI did."""
    r = requests.get(f"{head.address}{path}", headers={"Authorization": f"Bearer {head.token}"}, timeout=10)
    r.raise_for_status()
    return r.json()


def job_ids(head: Head) -> set[str]:
    return {job["submission_id"] for job in api(head, "/api/jobs/")}


@pytest.fixture(scope="module")
def config_file(tiny_bert, classification_csv, tmp_path_factory):
    """A 3-trial tiny search; the tests pass --num-trials 2 and --name to check that overrides reach the job."""
    tmp = tmp_path_factory.mktemp("job")
    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp / "results"),
        space={"methods": ["ia3", "bitfit"]},
        search={"num_trials": 3, "sampler": "random", "seed": 0},
        training={"max_steps": 3},
        resources={"cpus_per_worker": 1},
    )
    path = tmp / "search.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path, Path(cfg.results_dir)


@pytest.mark.slow
def test_a_submitted_search_runs_on_the_cluster(head, config_file):
    import pandas as pd

    path, results = config_file
    submitted = cli(
        head, "submit", str(path), "--address", head.address, "--num-trials", "2", "--name", "on-ray"
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert re.fullmatch(r"raysubmit_\w+", job_id), submitted.stdout
    assert f"peft-search logs {job_id} --follow" in submitted.stderr

    followed = cli(head, "logs", job_id, "--follow", "--address", head.address)
    assert followed.returncode == 0, followed.stdout[-3000:] + followed.stderr[-3000:]
    assert "--address auto --num-trials 2 --name on-ray" in followed.stdout
    assert "2/2 trials complete" in followed.stdout
    assert f"job {job_id} SUCCEEDED" in followed.stderr

    # The address may come from RAY_ADDRESS, as for `ray job`.
    status = cli(head, "status", job_id, RAY_ADDRESS=head.address)
    assert status.returncode == 0 and status.stdout.startswith(f"{job_id}: SUCCEEDED"), status.stderr
    logs = cli(head, "logs", job_id, "--address", head.address)
    assert logs.returncode == 0 and "[peft-search] search 'on-ray': 2 trials" in logs.stdout

    search_dir = results / "on-ray"
    trials = pd.read_parquet(search_dir / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "complete").all()
    assert (search_dir / "report.html").stat().st_size > 0
    assert yaml.safe_load((search_dir / "config.yaml").read_text())["name"] == "on-ray"
    # The config went in a working_dir package and the project's one package as a py_module.
    env = api(head, f"/api/jobs/{job_id}")["runtime_env"]
    assert env["working_dir"].startswith("gcs://") and len(env["py_modules"]) == 1


@pytest.mark.slow
def test_stop_ends_a_running_search(head, config_file):
    path, _ = config_file
    submitted = cli(head, "submit", str(path), "--address", head.address, "--name", "stopped")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    stopped = cli(head, "stop", job_id, "--address", head.address)
    assert stopped.returncode == 0 and f"stop requested for job {job_id}" in stopped.stdout, stopped.stderr
    followed = cli(head, "logs", job_id, "--follow", "--address", head.address)
    assert followed.returncode == 1 and f"job {job_id} STOPPED" in followed.stderr
    again = cli(head, "stop", job_id, "--address", head.address)
    assert again.returncode == 0 and "had already ended: STOPPED" in again.stdout


@pytest.mark.slow
def test_a_bad_config_exits_2_and_submits_nothing(head, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {name_or_path: m}\ndataset: {source: d.csv}\nspace: {methods: [lorra]}\n")
    before = job_ids(head)
    out = cli(head, "submit", str(bad), "--address", head.address)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("peft-search: error: space.methods"), out.stderr
    assert out.stderr.count("\n") == 1
    assert job_ids(head) == before


@pytest.mark.slow
def test_a_missing_or_wrong_token_is_one_line_naming_the_fix(head, config_file, tmp_path):
    path, _ = config_file
    before = job_ids(head)
    # HOME without ~/.ray/auth_token: no token anywhere.
    missing = subprocess.run(
        [sys.executable, "-m", "peft_search", "submit", str(path), "--address", head.address],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_clean_env(HOME=str(tmp_path)),
        timeout=120,
    )
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1, missing.stderr
    assert "wants its auth token and none was found" in missing.stderr
    assert "~/.ray/auth_token" in missing.stderr and "ray get-auth-token" in missing.stderr
    wrong = cli(head, "submit", str(path), "--address", head.address, RAY_AUTH_TOKEN="not-the-token")
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert "refused the auth token from RAY_AUTH_TOKEN" in wrong.stderr
    assert job_ids(head) == before


@pytest.mark.slow
def test_unknown_job_and_unreachable_cluster(head):
    unknown = cli(head, "status", "raysubmit_nosuchjob", "--address", head.address)
    assert unknown.returncode == 1 and "no job 'raysubmit_nosuchjob'" in unknown.stderr
    (port,) = _free_ports(1)
    nobody = cli(head, "status", "raysubmit_x", "--address", f"http://127.0.0.1:{port}")
    assert nobody.returncode == 1 and "no Ray dashboard answered" in nobody.stderr
    assert nobody.stderr.count("\n") == 1


def test_the_entrypoint_is_a_valid_run_command(tmp_path):
    command = entrypoint("search.yaml", ["--num-trials", "2", "--results-dir", "/mnt/shared results"])
    assert command.startswith("python -m peft_search run search.yaml --address auto")
    args = build_parser().parse_args(shlex.split(command)[3:])
    assert (args.command, args.address, args.num_trials, args.results_dir) == (
        "run",
        "auto",
        2,
        "/mnt/shared results",
    )
    shipped = runtime_env(tmp_path / "job", package_root=tmp_path / "package")
    assert shipped["working_dir"] == str(tmp_path / "job")
    assert [Path(d).name for d in shipped["py_modules"]] == [PACKAGE]
    # From a checkout the folders are mapped into the package, not inside it: what ships is laid out as installed.
    (shipped_dir,) = shipped["py_modules"]
    assert (Path(shipped_dir) / "search" / "cli" / "__init__.py").is_file() and (
        Path(shipped_dir) / "__main__.py"
    ).is_file()
    assert (Path(shipped_dir) / "search" / "configs" / "bbcnews-minilm.yaml").is_file()
    assert "py_modules" not in runtime_env(tmp_path / "job")
