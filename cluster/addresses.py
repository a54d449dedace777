"""A cluster's address, checked before anything connects to it: its form (Ray's clients take almost any string and
fail late, with a traceback), and whether anything answers there at all (they wait half a minute or more to say not).
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from urllib.parse import urlsplit

PROBE_SECONDS = 3.0
"""How long a cluster's address has to accept a TCP connection, name lookup included, before it counts as
unreachable: a command that cannot reach its cluster says so well inside 5 s. Ray waits 30 s on an unreachable Ray
Client address (``ray://``), and two minutes on a GCS one before it exits the process."""


class AddressError(ValueError):
    """An address that cannot be one (no scheme, no host, a port that is not a number): the user's input, in one
    line naming it and the form it needs. Raised before anything connects; the CLI reports it as a usage error."""


def unreachable(host: str, port: int, timeout: float = PROBE_SECONDS) -> str | None:
    """Why nothing accepts a TCP connection at ``host:port`` within ``timeout`` seconds, or None when something
    does: a probe before the address is handed to Ray, whose own clients wait far longer to give up."""
    deadline = time.monotonic() + timeout
    try:
        found = _lookup(host, port, timeout)
    except socket.gaierror:
        return f"no host named {host!r} is known"
    except TimeoutError:
        return f"looking up {host!r} took over {timeout:g} s"
    why = f"no address found for {host!r}"
    for family, kind, proto, _, where in found:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"no answer within {timeout:g} s"
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.settimeout(left)
                probe.connect(where)
            return None
        except TimeoutError:
            why = f"no answer within {timeout:g} s"
        except ConnectionRefusedError:
            why = "connection refused"
        except OSError as err:
            why = (err.strerror or str(err)).lower()
    return why


def _lookup(host: str, port: int, timeout: float) -> list:
    """``getaddrinfo``, which has no timeout of its own, given at most ``timeout`` seconds (a resolver that does not
    answer is left to finish in a daemon thread)."""
    found: dict = {}

    def look() -> None:
        try:
            found["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as err:
            found["error"] = err

    thread = threading.Thread(target=look, name="peft-search-address-lookup", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(host)
    if "error" in found:
        raise found["error"]
    return found["addresses"]


def host_port(address: str, label: str, default_port: int | None) -> tuple[str | None, int | None]:
    """The host and port of ``SCHEME://HOST[:PORT][/PATH]`` or ``HOST[:PORT]``; ``AddressError`` for a port that is
    not a number from 1 to 65535."""
    try:
        parts = urlsplit(address if "://" in address else f"//{address}")
    except ValueError as err:  # an unclosed IPv6 bracket ("[::1")
        example = "http://[::1]:8265" if address.startswith(("http://", "https://")) else "[::1]:6379"
        raise AddressError(
            f"{label}: not an address ({err}); write an IPv6 host in brackets, {example}"
        ) from None
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise AddressError(f"{label}: {parts.netloc.rpartition(':')[2]!r} is not a port number (1 to 65535)")
    return parts.hostname, port or default_port


def plugin_scheme(scheme: str, hook: str) -> bool:
    """Whether ``scheme://`` names an installed module that defines ``hook``: Ray hands such an address to it (its
    plugin mechanism, e.g. ``anyscale://``); Ray's own import of any other module fails with a traceback."""
    try:
        if not scheme.isidentifier() or importlib.util.find_spec(scheme) is None:
            return False
        return hasattr(importlib.import_module(scheme), hook)
    except Exception:  # whatever a module named by the user raises on import, it is not a plugin
        return False


def port_note(address: str, port: int) -> str:
    """The port probed, for a message about ``address``, where the address leaves it implied."""
    return "" if address.rstrip("/").endswith(f":{port}") else f" on port {port}"
