"""What every benchmark shares: where results go, the machine they ran on, a plain-text table."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """The facts a figure depends on: cores, load at the start, accelerator."""
    import torch

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_result(name: str, result: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    out = Path(out_dir) if out_dir else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=float))
    return path


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def start_ray(config_path: str, overrides: dict[str, Any], num_cpus: int | None) -> bool:
    """Start Ray once for several searches, with the workers' environment a search would give them (jemalloc on
    CPU, ``resources.cpu_allocator``); a search that finds Ray running cannot set it. True when this started it."""
    import ray

    from peft_search.cluster import connect, worker_env
    from peft_search.search.settings.loading import load_config

    if ray.is_initialized():
        return False  # someone else's Ray, left running
    r = load_config(config_path, overrides).resources
    connect(num_cpus=num_cpus, env_vars=worker_env(r.cpu_allocator, r.gpus_per_worker))
    return True
