"""``resources.cpus_per_worker: auto``: before a CPU search, how many threads each trial trains with, measured.

On a node of C cores, one trial on all C threads, two on C/2 each, four on C/4 ... train different numbers of rows a
second: a small model's step does not spread over many threads (each operation waits at its threads' barrier), so
several trials side by side can train more rows than one on every core. ``decide_threads`` measures each shape on
one node with the search's own model, micro-batch and sequence length (``k`` Ray tasks of C/k CPUs, packed on one
node, started together, each timing training steps of a LoRA adapter), keeps the shape that trains the most rows a
second, and caches the figures per machine (``PEFT_SEARCH_CACHE``), as ``search.packing: auto`` does.
"""

from __future__ import annotations

import json
import time
from typing import Any

from peft_search.search.inputs.candidates import measuring_lora
from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.inputs.modeling import inject_adapter
from peft_search.search.plan.baseline import RuntimeBaseline, read_cache, write_cache
from peft_search.search.settings.trial import TrialSettings
from peft_search.search.worker.environment import import_training_libraries, quiet_libraries
from peft_search.search.worker.steps import load_base
from peft_search.search.worker.trainer import CountingCollator

THREADS_CACHE = "threads-speed.json"
"""The cache file (``search.plan.baseline.cache_file``) of ``decide_threads``' figures."""

MAX_TRIALS_MEASURED = 8
"""The most trials side by side a measurement tries (each holds the model and its own data)."""

TIMED_STEPS = 6
"""Training steps each measuring task times, after one untimed step."""

BETTER_BY = 1.05
"""A shape with more trials side by side is taken only where it trains this much faster than the one before
(what two measurements of one shape differ by on a busy machine): one trial on every core otherwise."""


def thread_shapes(node_cpus: int) -> list[int]:
    """Threads per trial to measure on a node of ``node_cpus`` cores: all of them, half, a quarter ... while the
    trials side by side stay at most ``MAX_TRIALS_MEASURED``."""
    shapes, threads = [], max(1, int(node_cpus))
    while threads >= 1 and node_cpus // threads <= MAX_TRIALS_MEASURED:
        shapes.append(threads)
        if threads == 1 or threads % 2:
            break
        threads //= 2
    return shapes


def choose_threads(rows_per_s: dict[int, float]) -> int:
    """The threads per trial to run at: from all cores down, a smaller share is taken while it trains at least
    ``BETTER_BY`` times the rows a second of the last one taken."""
    shapes = sorted(rows_per_s, reverse=True)
    chosen = shapes[0]
    for threads in shapes[1:]:
        if rows_per_s[threads] >= BETTER_BY * rows_per_s[chosen]:
            chosen = threads
        else:
            break
    return chosen


def decide_threads(
    settings: TrialSettings, data: TokenizedSplits, node_cpus: int, node: str, echo: bool = True
) -> TrialSettings:
    """The settings with ``cpus_per_worker`` set to the measured (or cached) best threads per trial on a node of
    ``node_cpus`` cores (``node``: its name in the cache key); all of them when the measurement fails."""
    shapes = thread_shapes(node_cpus)
    key = json.dumps(
        [
            RuntimeBaseline.environment_key(),
            node,
            node_cpus,
            settings.model_path,
            settings.revision,
            settings.task,
            settings.training.precision,
            settings.micro_batch_size(),
            settings.training.max_seq_length,
            shapes,
        ]
    )
    cached = read_cache(THREADS_CACHE).get(key)
    started = time.monotonic()
    if isinstance(cached, dict) and cached:
        rows_per_s = {int(k): float(v) for k, v in cached.items()}
    else:
        if echo and len(shapes) > 1:  # the first search of this machine and shape waits on it: say so
            tried = ", ".join(f"{node_cpus // t} x {t}" for t in shapes)
            print(
                f"[peft-search] cpus_per_worker (auto): measuring rows trained a second on {node_cpus} cores at "
                f"{tried} threads (once per machine, model and batch shape)",
                flush=True,
            )
        try:
            rows_per_s = {} if len(shapes) == 1 else measure_threads(settings, data, node_cpus, shapes)
        except Exception as err:  # noqa: BLE001 - whatever stopped the measurement, the search goes on
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            if echo:
                print(
                    f"[peft-search] cpus_per_worker (auto): not measured ({reason[:300]}): each trial trains on "
                    f"all {node_cpus} cores, one at a time",
                    flush=True,
                )
            return with_threads(settings, node_cpus)
        if rows_per_s:
            write_cache(THREADS_CACHE, key, rows_per_s)
    threads = choose_threads(rows_per_s) if rows_per_s else node_cpus
    if echo:
        print(f"[peft-search] {threads_line(rows_per_s, threads, node_cpus, cached, started)}", flush=True)
    return with_threads(settings, threads)


def threads_line(
    rows_per_s: dict[int, float], threads: int, node_cpus: int, cached: Any, started: float
) -> str:
    """The one line a search says of its choice."""
    trials = max(1, node_cpus // threads)
    chose = f"{trials} trial(s) at a time, {threads} thread(s) each"
    if not rows_per_s:
        return f"cpus_per_worker (auto): {chose} (no other shape to measure on {node_cpus} core(s))"
    where = (
        "cached" if isinstance(cached, dict) and cached else f"measured in {time.monotonic() - started:.0f} s"
    )
    figures = ", ".join(
        f"{node_cpus // t} x {t} threads {rows_per_s[t]:.1f}" for t in sorted(rows_per_s, reverse=True)
    )
    return f"cpus_per_worker (auto): {chose}: rows trained a second on {node_cpus} cores: {figures} ({where})"


def with_threads(settings: TrialSettings, threads: int) -> TrialSettings:
    return settings.with_resources(cpus_per_worker=float(threads))


def measure_threads(
    settings: TrialSettings, data: TokenizedSplits, node_cpus: int, shapes: list[int]
) -> dict[int, float]:
    """Rows trained a second on one node, by threads per trial: for each shape, ``node_cpus // threads`` Ray tasks
    of ``threads`` CPUs in a placement group packed on one node, each loading the model and timing
    ``TIMED_STEPS`` steps once all are ready (a barrier actor), summed. Stops at the first shape that trains no
    faster than the one before."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    rows_per_s: dict[int, float] = {}
    for threads in shapes:
        trials = node_cpus // threads
        group = placement_group([{"CPU": threads}] * trials, strategy="STRICT_PACK")
        try:
            ray.get(group.ready(), timeout=120)
            gate = _gate(trials)
            task = ray.remote(_time_steps)
            runs = [
                task.options(
                    num_cpus=threads,
                    max_retries=0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        group, placement_group_bundle_index=i
                    ),
                ).remote(settings, data, threads, gate)
                for i in range(trials)
            ]
            rows_per_s[threads] = float(sum(ray.get(runs)))
        finally:
            remove_placement_group(group)
        if len(rows_per_s) > 1 and choose_threads(rows_per_s) != threads:
            break  # fewer threads each stopped paying
    return rows_per_s


def _gate(expected: int):
    """An actor that lets the measuring tasks of one shape start timing together."""
    import asyncio

    import ray

    @ray.remote(num_cpus=0)
    class Gate:
        def __init__(self) -> None:
            self.arrived = 0
            self.open = asyncio.Event()

        async def arrive(self) -> None:
            self.arrived += 1
            if self.arrived >= expected:
                self.open.set()
            await self.open.wait()

    return Gate.remote()


def _time_steps(settings: TrialSettings, data: TokenizedSplits, threads: int, gate) -> float:
    """One measuring task: a LoRA adapter (r 8, every linear layer) on the base model, AdamW, the search's
    micro-batches; one untimed step, then ``TIMED_STEPS`` timed once every task of the shape is ready. Rows a
    second."""
    import ray
    import torch

    quiet_libraries()
    torch.set_num_threads(threads)
    import_training_libraries("none")
    torch.manual_seed(settings.seed)
    lora = measuring_lora(settings.task)
    model = inject_adapter(load_base(settings, data, "none", torch.device("cpu")), lora)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    collate = CountingCollator(data.pad_token_id)
    size = settings.micro_batch_size()
    rows = len(data.train)

    def step(i: int) -> None:
        batch = collate([data.train[(i * size + j) % rows] for j in range(size)])
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)
    ray.get(gate.arrive.remote())
    t = time.perf_counter()
    for i in range(1, TIMED_STEPS + 1):
        step(i)
    return TIMED_STEPS * size / (time.perf_counter() - t)


__all__ = [
    "THREADS_CACHE",
    "choose_threads",
    "decide_threads",
    "measure_threads",
    "thread_shapes",
    "with_threads",
]
