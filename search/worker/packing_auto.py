"""``search.packing: auto``: before the search, whether packing pays on the workers' device and at which group size,
measured there (``search.worker.packing.measure_packing``) and cached per device, model and step shape."""

from __future__ import annotations

import dataclasses
import time

from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.plan.packable import AUTO_DOUBLINGS, PACKING_GROWS, PACKING_PAYS, packing_size
from peft_search.search.settings.trial import TrialSettings

SPEEDUP_CACHE = "packing-speedup.json"
"""The cache file (``search.plan.baseline.cache_file``) of ``decide_packing``'s figures."""


def decide_packing(
    settings: TrialSettings, data: TokenizedSplits, quantization: str, echo: bool = True
) -> TrialSettings:
    """``search.packing: auto``, before the search: measure on a worker (a Ray task with a worker's resources) how
    much cheaper a row trains packed than alone, for groups of ``settings.packing`` LoRA adapters and, where that
    pays, larger ones (``search.worker.packing.measure_packing``, at this quantization level), and return the
    settings that pack at the size ``packing_size`` takes (1, each trial alone, where the smallest does not reach
    ``PACKING_PAYS``, or the measurement fails: the search goes on). The figures are cached per device, model and
    step shape (``PEFT_SEARCH_CACHE``), so a machine measures a search's kind once."""
    import ray

    from peft_search.search.worker.placement import worker_resources

    resources = worker_resources(settings)
    task = ray.remote(_measure_packing).options(
        num_cpus=resources.get("CPU", 0), num_gpus=resources.get("GPU", 0), max_retries=0
    )
    started = time.monotonic()
    try:
        speedups, device, cached = ray.get(task.remote(settings, data, quantization))
    except Exception as err:  # noqa: BLE001 - whatever stopped the measurement, the search goes on unpacked
        if echo:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            print(
                f"[peft-search] packing (auto): not measured ({reason[:300]}): LoRA-family trials train each alone "
                "(as with off)",
                flush=True,
            )
        return dataclasses.replace(settings, packing=1)
    took = time.monotonic() - started
    members = packing_size(speedups)
    if echo:
        how = f"up to {members} a group" if members > 1 else "each alone (as with off)"
        where = "cached" if cached else f"measured in {took:.0f} s"
        sizes = sorted(speedups)
        figures = ", ".join(
            f"{speedups[k]:.2f}x" + (f" ({k} LoRA adapters a step)" if k == sizes[0] else f" ({k})")
            for k in sizes
        )
        print(
            f"[peft-search] packing (auto): a row trains {figures} as fast packed as alone on {device} ({where};"
            f" packs from {PACKING_PAYS:g}x, larger groups where {PACKING_GROWS:g}x faster again): LoRA-family"
            f" trials train {how}",
            flush=True,
        )
    # The figure of the size it packs at; unpacked, of the smallest measured (the one that did not pay).
    speedup = speedups[members] if members > 1 else speedups[min(speedups)]
    return dataclasses.replace(settings, packing=members, packing_speedup=speedup)


def _measure_packing(
    settings: TrialSettings, data: TokenizedSplits, quantization: str
) -> tuple[dict[int, float], str, bool]:
    """``decide_packing``'s task: the speedups by group size (read from the cache, else measured and cached), the
    device's name and whether they were cached."""
    import json

    import torch

    from peft_search.search.plan.baseline import RuntimeBaseline, read_cache, write_cache
    from peft_search.search.worker.environment import quiet_libraries
    from peft_search.search.worker.packing import measure_packing

    quiet_libraries()
    gpu = settings.resources.gpus_per_worker > 0 and torch.cuda.is_available()
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    torch.set_num_threads(max(1, int(settings.resources.cpus_per_worker)))
    name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    t = settings.training
    key = json.dumps(
        [
            RuntimeBaseline.environment_key(),
            name,
            settings.model_path,
            settings.revision,
            settings.task,
            quantization,
            t.precision,
            settings.micro_batch_size(),
            t.max_seq_length,
            settings.packing,
            AUTO_DOUBLINGS,
        ]
    )
    cached = read_cache(SPEEDUP_CACHE).get(key)
    if isinstance(cached, dict) and cached:  # JSON keys are text
        return {int(k): float(v) for k, v in cached.items()}, name, True
    speedups = measure_packing(settings, data, quantization, device=device)
    write_cache(SPEEDUP_CACHE, key, speedups)
    return speedups, name, False


__all__ = ["SPEEDUP_CACHE", "decide_packing"]
