"""Where a search runs: starting or joining Ray, and planning resources."""

from cluster.runtime import allocator_preload, connect, plan_concurrency, shutdown

__all__ = ["allocator_preload", "connect", "plan_concurrency", "shutdown"]
