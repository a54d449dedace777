"""Starting Ray on this machine (the embedded default) or joining a cluster, with token auth left on."""

from __future__ import annotations

import os

from peft_search.cluster.addresses import AddressError, host_port, plugin_scheme, port_note, unreachable
from peft_search.cluster.watchdog import start_watchdog

_JOIN_FORMS = "auto, ray://HEAD:10001 (Ray Client) or HEAD:6379 (the head's GCS)"


class ClusterError(RuntimeError):
    """Ray could not be started or joined; the message says what to do."""


def _joined(address: str | None) -> tuple[str | None, str]:
    """The address ``ray.init(address)`` joins, and how to name it in a message: ``auto`` joins ``RAY_ADDRESS``
    when that is set, and only otherwise looks for a cluster on this machine."""
    if address == "auto" and os.environ.get("RAY_ADDRESS"):
        env = os.environ["RAY_ADDRESS"]
        return (None if env == "auto" else env), f"RAY_ADDRESS={env} (which --address auto joins)"
    return (None if address == "auto" else address), f"--address {address}"


def cluster_endpoint(address: str | None) -> tuple[str, int] | None:
    """Where ``connect(address)`` will connect, as ``(host, port)``; None where Ray finds the cluster itself (no
    address, ``local``, ``auto`` without ``RAY_ADDRESS``) or a plugin module does. ``AddressError`` for an address
    ``ray.init`` cannot join, before anything starts."""
    address, label = _joined(address)
    if address is None or address == "local":
        return None
    if "://" in address:
        scheme = address.partition("://")[0]
        if scheme in ("http", "https"):
            raise AddressError(
                f"{label}: that is a dashboard address, for `peft-search submit`; to join a cluster give "
                f"{_JOIN_FORMS}"
            )
        if scheme != "ray":
            if plugin_scheme(scheme, "ClientBuilder"):
                return None
            raise AddressError(f"{label}: Ray knows no {scheme + '://'!r} addresses; give {_JOIN_FORMS}")
    # A Ray Client address without a port goes to gRPC's default port, 443.
    host, port = host_port(address, label, 443 if address.startswith("ray://") else None)
    if not host:
        raise AddressError(f"{label}: no host in it; give {_JOIN_FORMS}")
    if port is None:
        raise AddressError(f"{label}: no port in it; give {host}:6379 (the head's GCS) or ray://{host}:10001")
    return host, port


def check_cluster_address(address: str | None) -> None:
    """Refuse, in one line and before Ray starts, an address ``connect`` could not join: ``AddressError`` for one
    that cannot be an address, ``ClusterError`` where nothing answers within ``addresses.PROBE_SECONDS``."""
    endpoint = cluster_endpoint(address)
    if endpoint is None:
        return
    why = unreachable(*endpoint)
    if why is not None:
        joined, label = _joined(address)
        raise ClusterError(
            f"{label}: no Ray cluster answered ({why}{port_note(joined or '', endpoint[1])}); is the cluster up? "
            f"give {_JOIN_FORMS}"
        )


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int | None = None,
    env_vars: dict[str, str] | None = None,
) -> dict[str, float]:
    """Start a local Ray instance (no ``address``) or connect to a running cluster; returns its resources.

    Current Ray enables token authentication by default: a new local instance creates its token itself; joining a
    cluster needs the cluster's token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``).
    """
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    check_cluster_address(address)
    # No tokenizer thread pools fighting Ray for cores in the workers.
    env = {"TOKENIZERS_PARALLELISM": "false", **(env_vars or {})}
    kwargs: dict = {"runtime_env": {"env_vars": env}, "log_to_driver": True}
    global _joined_info
    try:
        if address is None:
            # "local": always a new instance on this machine, never one a `ray start` left running here.
            context = ray.init(
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                object_store_memory=object_store_memory,
                **kwargs,
            )
            _watch_this_driver()
        else:
            context = ray.init(address=address, **kwargs)
    except ConnectionError as err:
        raise ClusterError(
            f"--address {address}: no Ray cluster answered ({err}); check the address"
        ) from None
    except Exception as err:  # Ray raises AuthenticationError (and others) without a shared base
        if "auth" in type(err).__name__.lower() or "token" in str(err).lower():
            raise ClusterError(
                f"--address {address}: the cluster wants its auth token; set RAY_AUTH_TOKEN or copy the head's "
                "~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
            ) from None
        raise
    _joined_info = (address, getattr(context, "dashboard_url", "") or "")
    return ray.cluster_resources()


_joined_info: tuple[str | None, str] | None = None


def started_here() -> bool:
    """Whether ``connect`` started the Ray instance this process uses (a local one, its CPUs this search's alone),
    rather than joining a cluster."""
    import ray

    return _joined_info is not None and _joined_info[0] in (None, "local") and ray.is_initialized()


def ray_line() -> str:
    """One line for what ``connect`` started or joined, its dashboard and the token notice, in place of Ray's own
    (which go to the command's log unless ``-v``)."""
    if _joined_info is None:
        return "Ray: not started"
    address, dashboard = _joined_info
    where = "a local instance on this machine" if address is None else f"the cluster at {address}"
    if dashboard and "://" not in dashboard:
        dashboard = f"http://{dashboard}"
    auth = os.environ.get("RAY_AUTH_MODE", "token").lower() != "disabled"
    notes = [f"dashboard {dashboard}"] if dashboard else []
    if auth:
        notes.append(
            "token authentication on: `ray get-auth-token` prints the token"
            if address is None
            else "token authentication on"
        )
    return f"Ray: {where}" + (f" ({'; '.join(notes)})" if notes else "")


_watchdog = None


def _watch_this_driver() -> None:
    """The local instance dies with this process, however it dies (``peft_search.cluster.watchdog``); once."""
    global _watchdog
    if _watchdog is None or _watchdog.poll() is not None:
        _watchdog = start_watchdog()


def allocator_preload(choice: str) -> str | None:
    """The library to preload into trial processes for ``resources.cpu_allocator``, or None for the system's.

    Raises ``ValueError`` naming the setting when jemalloc is asked for and missing (the search reports it as a
    config error before Ray starts).
    """
    import ctypes.util

    if choice in ("system", "auto"):  # auto: the system's, the fastest measured (benchmarks/RESULTS.md)
        return None
    found = ctypes.util.find_library("jemalloc")  # e.g. "libjemalloc.so.2", which the dynamic loader finds
    if found is None and choice == "jemalloc":
        raise ValueError(
            "resources.cpu_allocator: jemalloc is not installed on this machine; install it (apt install "
            "libjemalloc2) or set cpu_allocator: system"
        )
    return found


def worker_env(cpu_allocator: str, gpus_per_worker: float) -> dict[str, str] | None:
    """Environment for the workers Ray starts: CPU trials' heap allocator preloaded (GPU trials keep theirs), with
    the driver's own jemalloc options (``MALLOC_CONF``), so they reach a cluster's workers too."""
    preload = allocator_preload(cpu_allocator) if gpus_per_worker == 0 else None
    if not preload:
        return None
    options = os.environ.get("MALLOC_CONF")
    return {"LD_PRELOAD": preload, **({"MALLOC_CONF": options} if options else {})}


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def plan_concurrency(
    resources: dict[str, float],
    *,
    num_workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    requested: int | None = None,
) -> int:
    """Trials at once: what the cluster's CPUs and GPUs allow for this trial shape, unless set explicitly.

    Fractions count as Ray counts them (in units of 1/10,000): ``gpus_per_worker: 0.1`` fits 10 trials on a GPU,
    where plain float division (``1 // 0.1 == 9``) would find 9.
    """
    if requested is not None:
        return requested
    limits = [_fits(resources.get("CPU", os.cpu_count() or 1), num_workers * cpus_per_worker)]
    if gpus_per_worker > 0:
        limits.append(_fits(resources.get("GPU", 0), num_workers * gpus_per_worker))
    return max(1, min(limits))


def unplaceable(per_worker: dict[str, float], num_workers: int) -> tuple[str, float, float] | None:
    """The resource (``CPU``, ``GPU``) that keeps a trial of ``num_workers`` workers of ``per_worker`` from being
    placed on the Ray instance joined now, with the most of it one node has and all nodes together; None when it
    fits. Ray would keep such a trial pending for ever, waiting for a node no local instance can add."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for key, need in per_worker.items():
        if need <= 0:
            continue
        held = [float(n.get(key, 0.0)) for n in nodes]
        if sum(_fits(h, need) for h in held) < num_workers:
            return key, max(held, default=0.0), sum(held)
    return None


_RESOURCE_UNITS = 10_000  # Ray's resource granularity (ray._raylet.RESOURCE_UNIT_SCALING)


def _fits(total: float, per_trial: float) -> int:
    """How many ``per_trial`` shares fit in ``total``, in Ray's fixed-point units."""
    return round(total * _RESOURCE_UNITS) // max(1, round(per_trial * _RESOURCE_UNITS))
