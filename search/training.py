"""The trial's work on each Ray Train worker: load, inject, train, evaluate, save the adapter, report.

Knows nothing of Optuna or of how trials are chosen and stopped: it receives a plain config and reports metrics
(through ``ray.train.report`` on a Ray Train worker, ``ray.tune.report`` in a Tune actor, where early stopping's
part-way results at rungs go too).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from search import faults
from search.batches import train_loader
from search.data import TokenizedSplits
from search.evaluation import evaluate
from search.metrics import PeakMemory, release_accelerator_memory
from search.modeling import InfeasibleTrialError, inject_adapter, load_base_model
from search.rungs import RUNG_KEY

FINITE_CHECK_EVERY = 16
"""Training steps between host reads of the on-device non-finite-loss flag."""


def total_steps(
    n_train: int, batch_size: int, world_size: int, max_steps: int | None, epochs: float | None
) -> int:
    if epochs is not None:
        return max(1, math.ceil(epochs * math.ceil(n_train / batch_size)))  # batch_size is global
    return int(max_steps or 1)


def _quiet_libraries() -> None:
    """Keep worker logs to what matters: a new task head and weight-loading progress bars are expected."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt: inputs will be cast.*")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function."""
    import ray.train
    import ray.train.torch

    _quiet_libraries()
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    metrics, adapter_dir = run_trial(
        config["trial"],
        config["settings"],
        config["data"],
        device=device,
        world_size=ctx.get_world_size(),
        rank=ctx.get_world_rank(),
    )
    checkpoint = ray.train.Checkpoint.from_directory(adapter_dir.name) if adapter_dir is not None else None
    ray.train.report(metrics, checkpoint=checkpoint)
    if adapter_dir is not None:
        adapter_dir.cleanup()


def train_single_worker(
    trial: dict[str, Any], settings: dict[str, Any], data: TokenizedSplits, trial_id: str
) -> dict[str, Any]:
    """A one-worker trial in the calling process (the Tune trial's actor, which holds the worker's resources).

    The adapter goes where Ray Train would have put it, and its path travels in the metrics as ``checkpoint_path``,
    the key Ray's ``TuneReportCallback`` uses, so the results table reads both paths alike. The actor may be reused
    for the next trial: memory freed here goes back to the OS so that trial's peak starts from a clean baseline.
    """
    started_at, t0 = time.time(), time.perf_counter()
    _quiet_libraries()
    gpus = settings["gpus_per_worker"]
    # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPUs; on CPU, torch uses exactly the cores the trial holds.
    device = torch.device("cuda", 0) if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")
    torch.set_num_threads(max(1, int(settings["cpus_per_worker"])))
    on_rung = None
    if settings.get("rungs"):
        import ray.tune

        # Blocks until Tune has the result; when the scheduler stops the trial, Tune ends this thread here.
        on_rung = ray.tune.report
    stopped = False
    try:
        metrics, adapter_dir = run_trial(trial, settings, data, device=device, on_rung=on_rung)
    except SystemExit:  # stopped at a rung: Tune's report ends the thread so
        stopped = True  # (leaving this block drops the traceback, and the model with its frames)
    finally:
        _return_freed_memory()
    if stopped:
        release_accelerator_memory()
        raise SystemExit(0)
    assert adapter_dir is not None  # rank 0 always saves
    t1 = time.perf_counter()
    with adapter_dir:
        if "://" in settings["storage_path"]:  # an object store: a path inside its filesystem, as Ray Train's
            from search import storage

            target = storage.put_dir(
                adapter_dir.name, settings["storage_path"], f"train-{trial_id}/checkpoint_000000"
            )
        else:
            target = Path(settings["storage_path"]) / f"train-{trial_id}" / "checkpoint_000000"
            if target.exists():  # a trial restarted by a resumed search
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(adapter_dir.name, target)
    # Where the trial's time went, for benchmarks/overhead.py (Tune's result.json keeps every reported key).
    timing = {
        "trial_started_at": started_at,
        "trial_total_s": time.perf_counter() - t0,
        "save_time_s": time.perf_counter() - t1,
        "worker_pid": os.getpid(),
    }
    return {**metrics, **timing, "checkpoint_path": str(target)}


def _return_freed_memory() -> None:
    """Give freed heap back to the OS (glibc keeps it otherwise), so a reused actor's resident set shrinks."""
    import contextlib
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL(name).malloc_trim(0)


def run_trial(
    trial: dict[str, Any],
    settings: dict[str, Any],
    data: TokenizedSplits,
    *,
    device: torch.device,
    world_size: int = 1,
    rank: int = 0,
    on_rung: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], tempfile.TemporaryDirectory | None]:
    """Train and evaluate one adapter; returns its metrics and (on rank 0) a directory holding the adapter.

    With ``on_rung``, at each of ``settings["rungs"]`` (training steps) the adapter is evaluated on the first
    ``settings["rung_eval_size"]`` held-out rows and ``on_rung`` gets a part-way result (``RUNG_KEY`` set) with
    every metric an objective may name, so a scheduler can compare trials there and stop this one.
    """
    _import_training_libraries(settings["task"], trial["quantization"])
    peak = PeakMemory(device)
    peak.start()
    estimate = plan_trial(
        trial, settings, data.num_labels, runtime_bytes=peak.baseline_bytes(), device=device.type
    )
    check_budget(estimate, settings)
    torch.manual_seed(settings["seed"])
    t0 = time.perf_counter()
    base = load_base_model(
        settings["model_path"],
        settings["task"],
        num_labels=data.num_labels,
        quantization=trial["quantization"],
        device=device,
        precision=settings["precision"],
        pad_token_id=data.pad_token_id,
        revision=settings.get("revision"),
        gradient_checkpointing=settings["gradient_checkpointing"],
    )
    model = inject_adapter(base, trial["peft_config"])
    trainable, total = model.get_nb_trainable_parameters()
    load_s = time.perf_counter() - t0
    faults.inject(settings.get("faults"), trial.get("candidate"), device)

    train_model = model
    if world_size > 1:
        import ray.train.torch

        train_model = ray.train.torch.prepare_model(model, move_to_device=False)
    steps = total_steps(
        len(data.train), settings["batch_size"], world_size, settings["max_steps"], settings["epochs"]
    )
    rung_s = 0.0  # rung evaluations and their reports: not training time
    t1 = time.perf_counter()

    def at_rung(step: int, samples: int, tokens: int) -> None:
        nonlocal rung_s
        t = time.perf_counter()
        trained_s = t - t1 - rung_s
        partial = evaluate(
            model,
            dataclasses.replace(data, eval=data.eval[: settings["rung_eval_size"]]),
            settings["task"],
            settings["eval_batch_size"],
            device,
        )
        train_model.train()
        assert on_rung is not None
        on_rung(
            {
                **partial,
                RUNG_KEY: step,
                "trainable_params": int(trainable),
                "total_params": int(total),
                "peak_memory_bytes": peak.peak_bytes(),
                "est_peak_memory_bytes": estimate.est_peak_memory_bytes,
                "peak_memory_kind": peak.kind,
                "adapter_bytes": estimate.adapter_bytes,
                "train_time_s": trained_s,
                "train_steps": step,
                "rung_eval_time_s": rung_s + time.perf_counter() - t,
                "eval_rows": len(data.eval[: settings["rung_eval_size"]]),
                "samples_per_s": samples * world_size / trained_s if trained_s > 0 else 0.0,
                "tokens_per_s": tokens * world_size / trained_s if trained_s > 0 else 0.0,
                "load_time_s": load_s,
            }
        )
        rung_s += time.perf_counter() - t

    rungs = [r for r in settings.get("rungs") or () if r < steps] if on_rung is not None else []
    samples, tokens = _train(
        train_model, model, data, trial, settings, steps, device, world_size, rank, rungs, at_rung
    )
    train_s = time.perf_counter() - t1 - rung_s

    t2 = time.perf_counter()
    evaluation = evaluate(model, data, settings["task"], settings["eval_batch_size"], device)
    eval_s = time.perf_counter() - t2

    adapter_dir, adapter_bytes = None, 0
    if rank == 0:
        adapter_dir = tempfile.TemporaryDirectory(prefix="adapter-")
        model.save_pretrained(adapter_dir.name)
        # The adapter's weights file: what ships, and what ``peft-search plan`` predicts.
        adapter_bytes = (Path(adapter_dir.name) / "adapter_model.safetensors").stat().st_size
    metrics = {
        **evaluation,
        "trainable_params": int(trainable),
        "total_params": int(total),
        "peak_memory_bytes": peak.peak_bytes(),
        "est_peak_memory_bytes": estimate.est_peak_memory_bytes,
        "peak_memory_kind": peak.kind,
        "train_time_s": train_s,
        "eval_time_s": eval_s,
        "rung_eval_time_s": rung_s,
        "eval_rows": len(data.eval),
        "load_time_s": load_s,
        "train_steps": steps,
        "samples_per_s": samples * world_size / train_s if train_s > 0 else 0.0,
        "tokens_per_s": tokens * world_size / train_s if train_s > 0 else 0.0,
        "adapter_bytes": adapter_bytes,
        "world_size": world_size,
        "device": str(device.type),
        "node_id": _node_id(),
        "cpu_allocator": heap_allocator(),
    }
    model = base = train_model = None  # free the weights before the next trial (the rung closure shares them)
    release_accelerator_memory()
    return metrics, adapter_dir


def heap_allocator() -> str:
    """The heap allocator this process runs with: "jemalloc" when it is loaded, else "system"."""
    try:
        maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    except OSError:
        return "system"
    return "jemalloc" if "libjemalloc" in maps else "system"


def _node_id() -> str | None:
    """The Ray node this trial ran on (rank 0's for several workers): which machine, on a cluster."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _import_training_libraries(task: str, quantization: str) -> None:
    """Import what the trial will use before measuring its starting memory, so the baseline includes it."""
    from peft import get_peft_model  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: F401

    if quantization != "none":
        import bitsandbytes  # noqa: F401


def plan_trial(
    trial: dict[str, Any],
    settings: dict[str, Any],
    num_labels: int,
    runtime_bytes: int = 0,
    device: str = "cpu",
):
    """The trial's cost from the model's config alone (meta device), before any weights are loaded."""
    from search.planning import meta_model, plan_candidate

    base = meta_model(settings["model_path"], settings["task"], max(num_labels, 2), settings.get("revision"))
    return plan_candidate(
        base,
        trial["peft_config"],
        quantization=trial["quantization"],
        batch_size=settings["batch_size"],
        seq_len=settings["max_seq_length"],
        precision=settings["precision"],
        gradient_checkpointing=settings["gradient_checkpointing"],
        runtime_bytes=runtime_bytes,
        device=device,
    )


def check_budget(plan, settings: dict[str, Any]) -> None:
    """Over-budget candidates are infeasible: they are recorded, never trained."""
    cap = settings.get("max_trainable_params")
    if cap is not None and plan.trainable_params > cap:
        raise InfeasibleTrialError(
            f"over budget: {plan.trainable_params:,} trainable parameters > budget.max_trainable_params {cap:,}"
        )
    cap = settings.get("max_memory")
    if cap is not None and plan.est_peak_memory_bytes > cap:
        raise InfeasibleTrialError(
            f"over budget: estimated peak memory {plan.est_peak_memory_bytes:,} B > budget.max_memory {cap:,} B"
        )


def _train(
    train_model,
    peft_model,
    data,
    trial,
    settings,
    steps,
    device,
    world_size,
    rank,
    rungs=(),
    at_rung: Callable[[int, int, int], None] | None = None,
) -> tuple[int, int]:
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in train_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=trial["learning_rate"], weight_decay=settings["weight_decay"])
    scheduler = get_linear_schedule_with_warmup(optimizer, int(steps * settings["warmup_ratio"]), steps)
    loader = train_loader(data, settings, device, world_size, rank)
    adaptive = trial["peft_config"]["peft_type"].upper() == "ADALORA"
    train_model.train()
    step, samples, tokens = 0, 0, 0
    # Reading the loss on the host would stall the GPU every step: the check stays on the device and is read
    # every FINITE_CHECK_EVERY steps (and after the last), so a diverged trial still fails, a few steps later.
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    while step < steps:
        for batch in loader:
            tokens += int(batch["attention_mask"].sum())
            samples += batch["input_ids"].shape[0]
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss = train_model(**batch).loss
            nonfinite |= ~torch.isfinite(loss.detach())
            checkpoint = (step + 1) % FINITE_CHECK_EVERY == 0 or step + 1 >= steps
            if checkpoint and nonfinite.item():
                raise FloatingPointError(f"training loss became non-finite by step {step + 1}")
            loss.backward()
            optimizer.step()
            if adaptive:
                peft_model.base_model.update_and_allocate(step)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step >= steps:
                break
            if at_rung is not None and step in rungs:
                at_rung(step, samples, tokens)
    return samples, tokens
