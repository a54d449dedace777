"""Every address is checked before anything connects: a malformed one is the user's input (one line, exit 2), and
where nothing answers the command says so in one line within 5 s (exit 1), instead of Ray's 30 s to 2 min waits.

The commands run in-process through the real entry point, with no cluster: unreachable is a closed local port (a
socket bound, then closed). What would run after the check (the Jobs client's token lookup, a search's config) is
replaced by a sentinel, so a case the check lets through fails the test instead of going on.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import sys
import threading
import time

import pytest

from peft_search.cluster import addresses, jobs
from peft_search.cluster.addresses import AddressError, unreachable
from peft_search.cluster.jobs import Jobs, dashboard_endpoint
from peft_search.cluster.runtime import ClusterError, cluster_endpoint
from peft_search.search import cli
from peft_search.search.cli import configs

JOB_COMMANDS = [["status", "raysubmit_x"], ["logs", "raysubmit_x"], ["stop", "raysubmit_x"], ["submit"]]
JOIN_COMMANDS = [["run"], ["resume", "/nonexistent/search"]]
BUDGET_S = 5.0


class _WentOn(BaseException):  # past the entry point's last-resort handler (Exception)
    """The check let the address through to what comes after it."""


@pytest.fixture(autouse=True)
def _stop_after_the_check(monkeypatch):
    def refuse(*args, **kwargs):
        raise _WentOn

    monkeypatch.setattr(jobs, "auth_headers", refuse)  # the first thing Jobs does once the address is checked
    for name in ("load_config", "load_saved_config"):  # run_config's, once the address is checked
        monkeypatch.setattr(configs, name, refuse)
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answer(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and stderr of ``peft-search ARGV``, which must answer within the budget in one line."""
    t0 = time.monotonic()
    code = cli.main(list(argv))
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert took < BUDGET_S, f"{argv} took {took:.1f} s"
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("peft-search: error: "), err
    return code, err


@pytest.mark.parametrize("command", JOB_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(
    "address, says",
    [
        ("not-a-url", "a dashboard address needs its scheme: http://not-a-url:8265"),
        ("HOST:PORT", "a dashboard address needs its scheme: http://HEAD:8265"),
        ("head:8265", "a dashboard address needs its scheme: http://head:8265"),
        ("10.0.0.9:6379", "a dashboard address needs its scheme: http://10.0.0.9:8265"),
        ("http://", "no host in it"),
        ("http://host:notaport", "'notaport' is not a port number"),
        ("ftp://host", "'ftp://' is not a dashboard address"),
        (
            "http://[::1",
            "not an address (Invalid IPv6 URL); write an IPv6 host in brackets, http://[::1]:8265",
        ),
    ],
)
def test_a_malformed_dashboard_address_is_one_line_exit_2(capsys, command, address, says):
    code, err = answer(capsys, *command, "--address", address)
    assert code == 2 and f"--address {address}: {says}" in err


@pytest.mark.parametrize("command", JOB_COMMANDS, ids=lambda c: c[0])
def test_no_dashboard_answering_is_one_line_exit_1(capsys, closed_port, command):
    address = f"http://127.0.0.1:{closed_port}"
    code, err = answer(capsys, *command, "--address", address)
    assert code == 1
    assert f"no Ray dashboard answered at {address} (connection refused); is the cluster up?" in err


def test_the_address_in_ray_address_is_checked_as_given(capsys, closed_port, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed_port}")
    code, err = answer(capsys, "status", "raysubmit_x")
    assert code == 2 and f"RAY_ADDRESS=127.0.0.1:{closed_port}: a dashboard address needs its scheme" in err
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{closed_port}/")
    code, err = answer(capsys, "logs", "raysubmit_x")
    assert code == 1 and f"no Ray dashboard answered at http://127.0.0.1:{closed_port} " in err


@pytest.mark.parametrize(
    "address, says",
    [
        (
            "ray://127.0.0.1:{port}",
            "no Ray Client server answered at ray://127.0.0.1:{port} (connection refused)",
        ),
        ("http://no-such-host.invalid:8265", "(no host named 'no-such-host.invalid' is known)"),
    ],
)
def test_other_unreachable_dashboards(capsys, closed_port, address, says):
    address = address.format(port=closed_port)
    code, err = answer(capsys, "status", "raysubmit_x", "--address", address)
    assert code == 1 and says.format(port=closed_port) in err


@pytest.mark.parametrize("command", JOIN_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(
    "address, says",
    [
        ("not-a-url", "no port in it; give not-a-url:6379 (the head's GCS) or ray://not-a-url:10001"),
        ("HOST:PORT", "'PORT' is not a port number"),
        ("http://head:8265", "that is a dashboard address, for `peft-search submit`"),
        ("ray://", "no host in it"),
        ("ftp://head:1", "Ray knows no 'ftp://' addresses"),
        ("[::1", "not an address (Invalid IPv6 URL); write an IPv6 host in brackets, [::1]:6379"),
    ],
)
def test_a_malformed_cluster_address_is_one_line_exit_2(capsys, command, address, says):
    code, err = answer(capsys, *command, "--address", address)
    assert code == 2 and f"--address {address}: {says}" in err


@pytest.mark.parametrize("command", JOIN_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_no_cluster_answering_is_one_line_exit_1(capsys, closed_port, command, scheme):
    address = f"{scheme}127.0.0.1:{closed_port}"
    code, err = answer(capsys, *command, "--address", address)
    assert code == 1 and f"--address {address}: no Ray cluster answered (connection refused)" in err


def test_auto_is_checked_as_the_address_it_joins(capsys, closed_port, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed_port}")
    code, err = answer(capsys, "run", "--address", "auto")
    assert code == 1 and f"RAY_ADDRESS=127.0.0.1:{closed_port} (which --address auto joins): no Ray" in err
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    code, err = answer(capsys, "run", "--address", "auto")
    assert code == 2 and "that is a dashboard address" in err


def test_the_forms_ray_accepts_pass_and_name_their_port(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert (
        cluster_endpoint(None) is None
        and cluster_endpoint("auto") is None
        and cluster_endpoint("local") is None
    )
    assert cluster_endpoint("head:6379") == ("head", 6379)
    assert cluster_endpoint("ray://head") == ("head", 443)  # gRPC's default port, as Ray Client connects
    assert cluster_endpoint("ray://[::1]:10001") == ("::1", 10001)
    assert dashboard_endpoint("auto", "--address auto") is None  # Ray looks for the cluster on this machine
    assert dashboard_endpoint("https://head/prefix", "x") == ("head", 443)
    assert dashboard_endpoint("http://head", "x") == ("head", 80)
    assert dashboard_endpoint("ray://head:10001", "x") == ("head", 10001)


def test_a_plugin_scheme_is_left_to_its_module(tmp_path, monkeypatch):
    """Ray hands ``NAME://`` to an installed module NAME that defines its hook (as ``anyscale://``); a module
    without the hook is no plugin, and the address is refused before Ray's import of it fails."""
    (tmp_path / "myplugin.py").write_text("def get_job_submission_client_cluster_info(address, **kw): ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert dashboard_endpoint("myplugin://cluster", "x") is None
    with pytest.raises(AddressError, match="'json://' is not a dashboard address"):
        dashboard_endpoint("json://cluster", "x")
    with pytest.raises(AddressError, match="Ray knows no 'myplugin://' addresses"):
        cluster_endpoint("myplugin://cluster")  # ray.init wants a ClientBuilder there


def test_a_reachable_address_goes_on_to_rays_client(monkeypatch):
    """Something answers, but not a Ray dashboard: the probe lets it through, and Ray's client says what it found."""

    class NotADashboard(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    monkeypatch.setattr(jobs, "auth_headers", lambda: {})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotADashboard) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with pytest.raises(ClusterError, match="Version check returned 404"):
                Jobs(f"http://127.0.0.1:{server.server_address[1]}")
        finally:
            server.shutdown()


def test_the_probe(closed_port, monkeypatch):
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert unreachable("127.0.0.1", listening.getsockname()[1]) is None
    assert unreachable("127.0.0.1", closed_port) == "connection refused"

    def slow_lookup(*args, **kwargs):
        time.sleep(2)
        return []

    monkeypatch.setattr(addresses.socket, "getaddrinfo", slow_lookup)  # a resolver that does not answer
    t0 = time.monotonic()
    assert unreachable("head", 8265, timeout=0.3) == "looking up 'head' took over 0.3 s"
    assert time.monotonic() - t0 < 1


@pytest.mark.skipif(sys.platform != "linux", reason="Linux drops connections past a full accept queue")
def test_the_probe_gives_up_on_a_host_that_never_answers():
    """A listener whose accept queue is full drops new connections unanswered, as a firewalled host does."""
    with contextlib.ExitStack() as stack:
        full = stack.enter_context(socket.socket())
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        for _ in range(4):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        time.sleep(0.2)
        t0 = time.monotonic()
        assert unreachable("127.0.0.1", port, timeout=0.5) == "no answer within 0.5 s"
        assert time.monotonic() - t0 < 1.5
