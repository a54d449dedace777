"""Where a search runs: starting or joining Ray, and planning resources."""

from cluster.runtime import connect, plan_concurrency, shutdown

__all__ = ["connect", "plan_concurrency", "shutdown"]
