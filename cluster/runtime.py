"""Starting Ray on this machine (the embedded default) or joining a cluster, with token auth left on."""

from __future__ import annotations

import os

from peft_search.cluster.watchdog import start_watchdog


class ClusterError(RuntimeError):
    """Ray could not be started or joined; the message says what to do."""


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
    # No tokenizer thread pools fighting Ray for cores in the workers.
    env = {"TOKENIZERS_PARALLELISM": "false", **(env_vars or {})}
    kwargs: dict = {"runtime_env": {"env_vars": env}, "log_to_driver": True}
    try:
        if address is None:
            # "local": always a new instance on this machine, never one a `ray start` left running here.
            ray.init(
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                object_store_memory=object_store_memory,
                **kwargs,
            )
            _watch_this_driver()
        else:
            ray.init(address=address, **kwargs)
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
    return ray.cluster_resources()


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


_RESOURCE_UNITS = 10_000  # Ray's resource granularity (ray._raylet.RESOURCE_UNIT_SCALING)


def _fits(total: float, per_trial: float) -> int:
    """How many ``per_trial`` shares fit in ``total``, in Ray's fixed-point units."""
    return round(total * _RESOURCE_UNITS) // max(1, round(per_trial * _RESOURCE_UNITS))
