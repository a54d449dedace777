"""What a CPU trial's heap allocator keeps beyond the tensors the plan counts, measured on this machine.

The plan counts every tensor a training step holds; the process's resident memory is more, by what the C heap keeps
of memory already freed: glibc's ``malloc`` keeps freed blocks in its arenas (a step's transient tensors, and the
fp32 weights a quantized base model replaced), where jemalloc hands most of them back. How much, depends on the
allocator, its options, the threads and the tensor sizes, so it is measured: a short trial (LoRA, 3 steps, the
search's model, batch and sequence length) at each quantization level of the search, in a fresh process with the
trials' allocator and threads and as a reused trial process runs it (in a thread, after a first trial), gives the
share of the traced step kept on top (unquantized) and what a quantized load keeps on top of that. Cached per
machine (``PEFT_SEARCH_CACHE``) like the runtime baseline; GPU trials have none (their estimate is the CUDA caching
allocator's own peak).

Measured by ``search.worker.heap``; modelled and cached here, where the plan reads it.
"""

from __future__ import annotations

import dataclasses
import json
import os

from peft_search.search.plan.baseline import RuntimeBaseline, read_cache

HEAP_CACHE = "heap-model.json"
"""The cache file (``search.plan.baseline.cache_file``) of measured heap models."""


@dataclasses.dataclass(frozen=True)
class HeapModel:
    """What the heap keeps beyond the plan's tensors: ``step_share`` of the traced training step, plus, for a quantized
    base model, ``after_load[level]`` bytes; and what scoring the held-out split adds to the base model, the runtime
    and the adapter's weights at each level, ``evaluation[level]`` bytes (on CPU bitsandbytes' 8-bit layers score
    through an int8 product that needs more than the dequantised one they train with: where few blocks train,
    scoring decides the trial's peak)."""

    allocator: str
    threads: int
    step_share: float
    after_load: dict[str, int] = dataclasses.field(default_factory=dict)
    evaluation: dict[str, int] = dataclasses.field(default_factory=dict)

    def step_bytes(self, step_bytes: int) -> int:
        """What it keeps of a training step that holds ``step_bytes`` at its peak."""
        return int(self.step_share * step_bytes)

    def load_bytes(self, quantization: str) -> int:
        """What it keeps after loading the base model at a quantization level."""
        return int(self.after_load.get(quantization, 0))

    def kept_bytes(self, step_bytes: int, quantization: str) -> int:
        return self.step_bytes(step_bytes) + self.load_bytes(quantization)

    def eval_bytes(self, quantization: str) -> int:
        """What scoring the held-out split adds to the base model at a quantization level, the runtime and the adapter's
        weights."""
        return int(self.evaluation.get(quantization, 0))

    def describe(self) -> str:
        loads = ", ".join(f"{level} +{b / 2**20:.0f} MiB" for level, b in self.after_load.items() if b)
        scoring = ", ".join(f"{level} +{b / 2**20:.0f} MiB" for level, b in self.evaluation.items())
        return (
            f"{self.allocator}, {self.threads} thread(s): {self.step_share:.2f}x a training step's tensors"
            + (f"; after a quantized load {loads}" if loads else "")
            + (f"; scoring the held-out rows {scoring}" if scoring else "")
        )


def allocator_name(env: dict[str, str] | None) -> str:
    """The trials' heap allocator from the environment they start with (``search.worker.environment.allocator_label``
    names the running process's the same way): ``system``, ``jemalloc`` or ``jemalloc (MALLOC_CONF)``."""
    env = env or {}
    if "jemalloc" not in env.get("LD_PRELOAD", ""):
        return "system"
    options = (env.get("MALLOC_CONF") or os.environ.get("MALLOC_CONF", "")).strip()
    return f"jemalloc ({options})" if options else "jemalloc"


MEASURED_AS = "reused-thread, top-block scoring"
"""How the measurement runs its trials (``search.worker.heap.measure``); a model measured another way is measured
again."""


def cache_key(cfg, model_path: str, allocator: str, threads: int) -> str:
    """What a heap model depends on: how it was measured, the libraries, the allocator and its threads, the model and
    the step's shape (``cfg``: the search's config; ``model_path``: its model resolved)."""
    t = cfg.training
    return json.dumps(
        [
            MEASURED_AS,
            RuntimeBaseline.environment_key(),
            allocator,
            model_path,
            cfg.model.revision,
            cfg.model.task,
            t.batch_size // cfg.resources.num_workers,
            t.max_seq_length,
            t.precision,
            t.gradient_checkpointing,
            t.eval_batch_size,
            cfg.dataset.eval_size,
            threads,
        ]
    )


def cached_heap(cfg, model_path: str, allocator: str, threads: int | None) -> HeapModel | None:
    """The cached model for this search's shape, allocator and threads (``threads`` None: the one measured at the
    most threads, as ``plan`` takes it before ``cpus_per_worker: auto`` is decided)."""
    cache = read_cache(HEAP_CACHE)
    if threads is None:
        shape = json.loads(cache_key(cfg, model_path, allocator, 0))[:-1]
        measured = [json.loads(k) for k in cache if json.loads(k)[:-1] == shape]
        if not measured:
            return None
        threads = max(k[-1] for k in measured)
    found = cache.get(cache_key(cfg, model_path, allocator, threads))
    if not isinstance(found, dict):
        return None
    try:
        return HeapModel(**found)
    except TypeError:
        return None


def fit(measured: dict[str, dict[str, int]], allocator: str, threads: int) -> HeapModel:
    """The model from each level's measured excess (peak minus the plan's estimate without the heap's share) and
    traced step: the unquantized level's excess is the step's share; a quantized level keeps what it measured beyond
    that share of its own step. Each level's ``evaluation`` as measured (``search.worker.heap._scoring_bytes``)."""
    base = measured["none"]
    share = round(max(0.0, base["excess"] / base["step"]), 3) if base["step"] > 0 else 0.0
    after = {
        level: max(0, int(m["excess"] - share * m["step"]))
        for level, m in measured.items()
        if level != "none"
    }
    scoring = {level: max(0, int(m["evaluation"])) for level, m in measured.items() if "evaluation" in m}
    return HeapModel(allocator, threads, share, after, scoring)
