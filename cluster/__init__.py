"""Where a search runs: starting or joining Ray, and planning resources."""

from peft_search.cluster.runtime import (
    allocator_preload,
    connect,
    plan_concurrency,
    ray_line,
    shutdown,
    started_here,
    unplaceable,
    worker_env,
)

__all__ = [
    "allocator_preload",
    "connect",
    "plan_concurrency",
    "ray_line",
    "shutdown",
    "started_here",
    "unplaceable",
    "worker_env",
]
