"""A search as a Ray job: submit it to a cluster's Jobs API (the head's dashboard), then follow, inspect or stop it.

A job's driver runs on the cluster, so the machine that submitted it may disconnect. The job's runtime environment
carries the search config (a staging ``working_dir`` holding the YAML) and, unless told otherwise, this project's
own packages (``py_modules``), so the cluster runs the code that was submitted, not whatever version is installed
there. The heavy dependencies (ray, torch, transformers, peft) must already be on the cluster's nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from peft_search.cluster.addresses import AddressError, host_port, plugin_scheme, port_note, unreachable
from peft_search.cluster.runtime import ClusterError

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
PACKAGE = "peft_search"
"""The one top-level package the project installs (the repo's folders are its subpackages)."""
# Ray's Jobs client lets these override the address it is given; an explicit --address must win.
_ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_GET_TOKEN = "`ray get-auth-token` on the head prints it"
_FORM = "http://HEAD:8265 (or https://, or ray://HEAD:10001)"
# A Ray Client address without a port goes to gRPC's default port, as an http(s) one to the scheme's.
_DEFAULT_PORTS = {"http": 80, "https": 443, "ray": 443}


def default_address() -> str:
    """Where ``ray job`` looks: ``RAY_API_SERVER_ADDRESS``, then ``RAY_ADDRESS``, then the local dashboard."""
    return _named(None)[0]


def _named(address: str | None) -> tuple[str, str]:
    """The address the Jobs client is to use (``address``, else ``default_address()``'s), and how a message names
    it: as the option or variable it came from."""
    if address:
        return address, f"--address {address}"
    found = next((v for v in _ADDRESS_VARS if os.environ.get(v)), None)
    if found is None:
        return DEFAULT_ADDRESS, DEFAULT_ADDRESS
    return os.environ[found], f"{found}={os.environ[found]}"


def dashboard_endpoint(address: str, label: str) -> tuple[str, int] | None:
    """Where the Jobs client will connect for ``address``, as ``(host, port)``: ``http(s)://HOST[:PORT][/PATH]``, or
    a Ray Client address (``ray://HOST:10001``, which Ray's client asks for the dashboard's). None where Ray finds
    the cluster itself (``auto``: the one on this machine) or a plugin module does. ``AddressError``, naming the
    form it needs, for any other: a bare ``HOST:PORT`` is one, which Ray would take for the head's GCS and wait 40 s
    on when it is the dashboard's port."""
    if address == "auto":
        return None
    if "://" not in address:
        try:
            host, port = host_port(address, label, None)
        except AddressError:
            host, port = None, None
        # Ray's other ports (the GCS's, Ray Client's) are not the dashboard's.
        fixed = f"{host or 'HEAD'}:8265" if not host or port in (None, 6379, 10001) else address
        raise AddressError(f"{label}: a dashboard address needs its scheme: http://{fixed}")
    scheme = address.partition("://")[0]
    if scheme not in _DEFAULT_PORTS:
        if plugin_scheme(scheme, "get_job_submission_client_cluster_info"):
            return None
        raise AddressError(f"{label}: {scheme + '://'!r} is not a dashboard address; give one like {_FORM}")
    host, port = host_port(address, label, _DEFAULT_PORTS[scheme])
    if not host:
        raise AddressError(f"{label}: no host in it; give one like {_FORM}")
    return host, port


def _token_source() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    return "~/.ray/auth_token"


def auth_headers() -> dict[str, str]:
    """The ``Authorization`` header for a token-protected cluster, with the token found where Ray finds it.

    Ray's Jobs client attaches the token only when ``RAY_AUTH_MODE=token`` is set in the submitting process, so a
    laptop holding the cluster's token but not that variable is refused. Here Ray's own token loader looks the
    token up whatever the mode (``RAY_AUTH_TOKEN``, then ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``) and
    it is sent whenever one is found; a cluster without authentication ignores it. ``RAY_AUTH_MODE=disabled``
    sends nothing.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    loader = AuthenticationTokenLoader.instance()
    try:
        if not loader.has_token(ignore_auth_mode=True):
            return {}
        token = loader.get_raw_token(ignore_auth_mode=True)
    except AuthenticationError:  # Ray refuses to fall back when RAY_AUTH_TOKEN_PATH names an unreadable file
        raise ClusterError(
            f"{_token_source()}: no token can be read there; fix the path or unset RAY_AUTH_TOKEN_PATH"
        ) from None
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def _translated(address: str, headers: dict[str, str], job_id: str | None = None) -> Iterator[None]:
    """Turn the Jobs client's failures into one-line ``ClusterError`` messages that name the fix."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError:
        if headers:
            raise ClusterError(
                f"{address}: the cluster refused the auth token from {_token_source()}; use the head's token "
                f"({_GET_TOKEN})"
            ) from None
        raise ClusterError(
            f"{address}: the cluster wants its auth token and none was found here; copy the head's token to "
            f"~/.ray/auth_token or set RAY_AUTH_TOKEN ({_GET_TOKEN})"
        ) from None
    except ConnectionError:
        raise ClusterError(
            f"{address}: no Ray dashboard answered; give the head's dashboard address (http://HEAD:8265) "
            "with --address or RAY_ADDRESS"
        ) from None
    except RuntimeError as err:
        text = str(err)
        if job_id is not None and "404" in text:
            raise ClusterError(f"{address}: no job {job_id!r} on this cluster") from None
        raise ClusterError(f"{address}: {text.strip().splitlines()[0] if text.strip() else err!r}") from None


@contextlib.contextmanager
def _without(names: Sequence[str]) -> Iterator[None]:
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class Jobs:
    """The Jobs API of one cluster, with its errors turned into ``ClusterError``."""

    def __init__(self, address: str | None = None):
        """Check ``address`` (default: ``default_address()``) and that a dashboard answers there, in one line:
        ``AddressError`` for one that cannot be a dashboard's, ``ClusterError`` where nothing answers within
        ``addresses.PROBE_SECONDS``; then connect (Ray's client checks the cluster's version)."""
        address, label = _named(address)
        endpoint = dashboard_endpoint(address, label)
        self.address = address.rstrip("/")
        if endpoint is not None and (why := unreachable(*endpoint)) is not None:
            what = "Ray Client server" if self.address.startswith("ray://") else "Ray dashboard"
            raise ClusterError(
                f"no {what} answered at {self.address} ({why}{port_note(self.address, endpoint[1])}); is the "
                "cluster up? pass --address or set RAY_ADDRESS"
            )
        self._headers = auth_headers()
        from ray.job_submission import JobSubmissionClient

        with self._errors(), _without(_ADDRESS_VARS):
            self._client: JobSubmissionClient = JobSubmissionClient(self.address, headers=self._headers)

    def _errors(self, job_id: str | None = None):
        return _translated(self.address, self._headers, job_id)

    def submit(
        self,
        config: str | Path,
        run_args: Sequence[str] = (),
        *,
        ship_project: bool = True,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Submit ``python -m peft_search run CONFIG --address auto RUN_ARGS``; returns the job's submission id.

        The driver joins the cluster it runs on (``--address auto``) instead of starting a Ray of its own.
        """
        config = Path(config)
        with (
            tempfile.TemporaryDirectory(prefix="peft-search-job-") as staging,
            tempfile.TemporaryDirectory(prefix="peft-search-package-") as package,
        ):
            shutil.copy(config, Path(staging) / config.name)
            with self._errors():
                return self._client.submit_job(
                    entrypoint=entrypoint(config.name, run_args),
                    runtime_env=runtime_env(staging, package_root=Path(package) if ship_project else None),
                    metadata=metadata,
                )

    def info(self, job_id: str) -> JobDetails:
        with self._errors(job_id):
            return self._client.get_job_info(job_id)

    def logs(self, job_id: str) -> str:
        with self._errors(job_id):
            return self._client.get_job_logs(job_id)

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop; False when it had already ended."""
        with self._errors(job_id):
            return self._client.stop_job(job_id)

    def follow(self, job_id: str, write: Callable[[str], object]) -> str:
        """Stream the job's logs to ``write`` until it ends (``tail_job_logs``); returns its final status."""
        self.info(job_id)  # an unknown id fails here with a clear message, not inside the websocket

        async def tail() -> None:
            async for chunk in self._client.tail_job_logs(job_id):
                write(chunk)

        with self._errors(job_id):
            asyncio.run(tail())
        return str(self.info(job_id).status)


def entrypoint(config_name: str, run_args: Sequence[str] = ()) -> str:
    """The job's shell command: this project's own CLI, run from the job's working directory on the cluster."""
    return shlex.join(["python", "-m", "peft_search", "run", config_name, "--address", "auto", *run_args])


SUBPACKAGES = ("search", "spaces", "cluster", "reports")
"""The repository's folders, installed as ``peft_search.NAME`` (setuptools' package-dir mapping)."""


def package_dirs(dest: Path) -> list[str]:
    """This project's package as it installs, to ship: the installed directory itself, or, from a checkout (where
    the folders are mapped into the package, not inside it), a copy laid out as installed under ``dest``."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError(
            f"package {PACKAGE!r} not found here; install peft-search or run from its checkout"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    folders = {name: _location(f"{PACKAGE}.{name}") for name in SUBPACKAGES}
    if all(folder.parent == root for folder in folders.values()):
        return [str(root)]
    shipped = dest / PACKAGE
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(root, shipped, ignore=skip)
    for name, folder in folders.items():
        shutil.copytree(folder, shipped / name, ignore=skip)
    return [str(shipped)]


def _location(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError(f"package {name!r} not found here; install peft-search or run from its checkout")
    return Path(next(iter(spec.submodule_search_locations)))


def runtime_env(staging: str | Path, *, package_root: Path | None = None) -> dict:
    """The job's runtime environment: the config's staging directory, and with ``package_root`` (a directory to
    lay it out in, if needed) this project's package."""
    env: dict = {"working_dir": str(staging), "excludes": ["__pycache__", "*.pyc"]}
    if package_root is not None:
        env["py_modules"] = package_dirs(package_root)
    return env
