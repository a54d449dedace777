"""Measuring what a CPU trial's heap allocator keeps (``search.plan.heap``): short real trials at each quantization
level of the search, in a fresh process with the trials' allocator and threads, run as a reused Tune actor runs its
trials: each in a thread of its own, after a first trial (what a process keeps differs in its first trial and in a
thread: benchmarks/RESULTS.md, memory estimate).

    python -m peft_search.search.worker.heap JOB OUT      # the measuring process (JOB: pickled settings and data)
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peft_search.search.inputs.candidates import measuring_lora
from peft_search.search.inputs.modeling import SKIP_QUANTIZATION, meta_model
from peft_search.search.plan.baseline import write_cache
from peft_search.search.plan.depth import num_blocks
from peft_search.search.plan.heap import HEAP_CACHE, HeapModel, allocator_name, cache_key, cached_heap, fit
from peft_search.search.plan.memtrace import quantized_linear_names
from peft_search.search.settings.schema import Budget
from peft_search.search.settings.trial import TrialConfig
from peft_search.search.worker.costs import plan_trial
from peft_search.search.worker.environment import quiet_libraries, return_freed_memory
from peft_search.search.worker.memory import PeakMemory
from peft_search.search.worker.training import run_trial

CALIBRATION_STEPS = 3
"""Training steps of each measuring trial (a 30-step trial keeps the same, within 2 % of its peak: RESULTS.md)."""
MEASURE_TIMEOUT_S = 900
"""The most the measuring process may take (the search goes on without the heap's share after it)."""


def heap_model(
    settings, data, levels: list[str], env: dict[str, str] | None, echo: bool = True
) -> HeapModel | None:
    """The heap model of this search's CPU trials (cached, else measured in a fresh process with the trials'
    allocator ``env`` and threads), said in one line; None for GPU trials, or where the measurement fails (said)."""
    if settings.resources.gpus_per_worker > 0:
        return None
    allocator = allocator_name(env)
    threads = max(1, int(settings.resources.cpus_per_worker))
    levels = ["none", *sorted({q for q in levels if q != "none"})]
    model = cached_heap(settings.config, settings.model_path, allocator, threads)
    started = time.monotonic()
    where = "cached"
    if model is None or not set(levels) <= {"none", *model.after_load}:
        if echo:  # the first search of this machine and shape waits on it: say so
            print(
                f"[peft-search] memory estimate: measuring what the heap keeps in short trials, quantization "
                f"{', '.join(levels)} (once per machine, model and batch shape)",
                flush=True,
            )
        try:
            model = _measure_in_subprocess(settings, data, levels, env, threads, allocator)
        except RuntimeError as err:
            if echo:
                print(
                    f"[peft-search] memory estimate: the heap allocator's share not measured ({err})",
                    flush=True,
                )
            return None
        write_cache(
            HEAP_CACHE,
            cache_key(settings.config, settings.model_path, allocator, threads),
            dataclasses.asdict(model),
        )
        where = f"measured in {time.monotonic() - started:.0f} s"
    if echo:
        print(f"[peft-search] memory estimate: the heap keeps {model.describe()} ({where})", flush=True)
    return model


def _measure_in_subprocess(settings, data, levels, env, threads: int, allocator: str) -> HeapModel:
    with tempfile.TemporaryDirectory(prefix="heap-") as tmp:
        job, out = Path(tmp) / "job.pkl", Path(tmp) / "out.json"
        job.write_bytes(pickle.dumps((settings, data, levels, threads)))
        try:
            done = subprocess.run(
                [sys.executable, "-m", "peft_search.search.worker.heap", str(job), str(out)],
                env={**os.environ, **(env or {})},
                capture_output=True,
                text=True,
                timeout=MEASURE_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"took over {MEASURE_TIMEOUT_S} s") from None
        if done.returncode != 0 or not out.exists():
            last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise RuntimeError(last[:300])
        measured = json.loads(out.read_text())
    return fit(measured, allocator, threads)


def measure(settings, data, levels: list[str], threads: int) -> dict[str, dict[str, Any]]:
    """In this process (the trials' allocator and threads): per level, a LoRA trial (r 8 on every linear layer) of
    ``CALIBRATION_STEPS`` steps through the search's own trial code, scored on one evaluation batch; its measured
    peak beside the plan's estimate without any heap share, and the plan's traced step; then, in a second short trial
    with the adapter on the last block only, what scoring the whole held-out split adds (``_scoring_bytes``).

    As in a Tune actor, each trial runs in a thread of its own, and the memory freed is handed back between trials;
    an unquantized trial runs first and is not counted (a process's first trial keeps more than the later ones),
    the quantized levels follow, and the unquantized level is measured last."""
    import torch

    quiet_libraries()
    torch.set_num_threads(threads)
    config = settings.config.model_copy(update={"budget": Budget()})
    short = dataclasses.replace(
        settings, config=config, steps=CALIBRATION_STEPS, rungs=(), packing=1, heap=None, faults={}
    )
    rows = dataclasses.replace(data, eval=data.eval[: settings.training.eval_batch_size])
    lora = measuring_lora(settings.task)
    top = _top_block_lora(settings, lora)
    measured: dict[str, dict[str, Any]] = {}
    order = ["none", *(level for level in levels if level != "none"), "none"]
    for level in order:
        trial = TrialConfig("lora", level, dict(lora), 1e-4)
        metrics = _in_thread(lambda trial=trial: _short_trial(trial, short, rows, torch.device("cpu")))
        return_freed_memory()
        step = plan_trial(trial, short, rows.num_labels, 0, "cpu").activation_bytes
        measured[level] = {  # the first unquantized trial's figures are replaced by the last one's
            "excess": int(metrics["peak_memory_bytes"] - metrics["est_peak_memory_bytes"]),
            "step": int(step),
        }
        # The first trial's scoring run is a warm-up too, its figure replaced: without it int8's scoring measured
        # less and 8-bit trials that adapt few blocks fell outside 10 % (RESULTS.md, memory estimate).
        if top is not None:
            scoring = TrialConfig("lora", level, top, 1e-4)
            measured[level]["evaluation"] = _in_thread(
                lambda trial=scoring: _scoring_bytes(trial, short, data, torch.device("cpu"))
            )
            return_freed_memory()
    return measured


def _top_block_lora(settings, lora: dict[str, Any]) -> dict[str, Any] | None:
    """The measuring adapter on the model's last block only (None where its blocks are not known): a step too small
    to decide a trial's peak, so the peak is the final evaluation's."""
    base = meta_model(settings.model_path, settings.task, 2, settings.revision)
    blocks = num_blocks(base)
    if not blocks:
        return None
    # PEFT takes layers_to_transform with named targets only (not "all-linear"): every linear layer's name.
    targets = sorted({name.rsplit(".", 1)[-1] for name in quantized_linear_names(base, SKIP_QUANTIZATION)})
    return {**lora, "target_modules": targets, "layers_to_transform": [blocks - 1]}


def _scoring_bytes(trial: TrialConfig, settings, data, device) -> int:
    """What the final evaluation (every held-out row, in ``eval_batch_size`` batches, as a trial scores) adds to the
    base model, the runtime and the adapter's weights, in a short trial of ``trial`` (a small step): the resident
    set's high-water mark is reset when training has ended (run_trial's ``widen`` is called after each step and
    then before the evaluation), so the trial's measured peak is its evaluation's."""

    def reset(steps_done: int) -> None:
        if steps_done >= settings.steps:
            PeakMemory(device).start()

    metrics, adapter_dir = run_trial(trial, settings, data, device=device, widen=reset)
    if adapter_dir is not None:
        adapter_dir.cleanup()
    plan = plan_trial(trial, settings, data.num_labels, 0, "cpu")
    runtime = int(metrics["est_peak_memory_bytes"]) - plan.est_peak_memory_bytes
    return max(0, int(metrics["peak_memory_bytes"]) - runtime - plan.weight_bytes - plan.adapter_bytes)


def _short_trial(trial: TrialConfig, settings, rows, device) -> dict[str, Any]:
    metrics, adapter_dir = run_trial(trial, settings, rows, device=device)
    if adapter_dir is not None:
        adapter_dir.cleanup()
    return metrics


def _in_thread(work):
    """``work()``'s value, run in a new thread (as Tune runs a trial's function); its exception is raised here."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="heap-measurement") as pool:
        return pool.submit(work).result()


def main(argv: list[str]) -> None:
    job, out = Path(argv[0]), Path(argv[1])
    settings, data, levels, threads = pickle.loads(job.read_bytes())
    out.write_text(json.dumps(measure(settings, data, levels, threads)))


if __name__ == "__main__":
    main(sys.argv[1:])
