"""One Tune trial: trained in place when it has one worker, as a Ray Train run when it has several.

A multi-worker trial is a Ray Train ``TorchTrainer`` (the Train V2 pattern: the Tune function builds it). A
single-worker trial runs inside the Tune trial's own actor, which holds the worker's CPUs and GPUs: no trainer,
controller or worker actors to start per trial, and with ``reuse_actors`` the imports happen once per actor. Both
paths report the same metrics and save the adapter to the same place (``train/train-TRIAL/checkpoint_000000``).
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from peft_search.search.errors import InfeasibleTrialError
from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.results.records import STATUS_KEY
from peft_search.search.settings.trial import TrialConfig, TrialSettings
from peft_search.search.worker.environment import quiet_libraries, return_freed_memory
from peft_search.search.worker.infeasible import penalty_result
from peft_search.search.worker.memory import release_accelerator_memory
from peft_search.search.worker.packed import PackedResources, packs, train_packed
from peft_search.search.worker.placement import worker_resources
from peft_search.search.worker.spare import SpareCores, ray_reader, threads_key
from peft_search.search.worker.steps import stored_result, trial_device
from peft_search.search.worker.training import checkpoint_step, run_trial


def trial_driver(config: dict[str, Any], *, settings: TrialSettings, data: TokenizedSplits) -> None:
    """Ray Tune function: train the sampled config and report its result (or why it cannot run) to Tune."""
    import ray.tune

    trial = TrialConfig.from_mapping(config)
    trial_id = ray.tune.get_context().get_trial_id()
    try:
        if packs(trial, settings):
            result = train_packed(trial, settings, data, trial_id)
        elif settings.resources.num_workers == 1:
            result = train_in_place(trial, settings, data, trial_id)
        else:
            result = _train_distributed(trial, settings, data, trial_id)
    except InfeasibleTrialError as err:
        # Completes with the worst outcome so the sampler learns to avoid it (see search.worker.infeasible).
        result = penalty_result(str(err))
    if result is not None:
        ray.tune.report(result)


def trial_resources(settings: TrialSettings):
    """What the Tune trial itself holds: the worker's share when it trains in place, next to nothing otherwise.

    A multi-worker trial's function only launches the Ray Train run, so it holds no CPU and the workers get them;
    so does a packed trial's, whose group's task holds the worker's share (``PackedResources``: per config).
    """
    if settings.packing > 1:
        return PackedResources(settings, worker_resources(settings))
    if settings.resources.num_workers == 1:
        return worker_resources(settings)
    return {"CPU": 0, "memory": 64 * 1024**2}


def train_in_place(
    trial: TrialConfig, settings: TrialSettings, data: TokenizedSplits, trial_id: str
) -> dict[str, Any]:
    """A one-worker trial in the calling process (the Tune trial's actor, which holds the worker's resources).

    The adapter goes where Ray Train would have put it (``stored_result``). The actor may be reused
    for the next trial: memory freed here goes back to the OS so that trial's peak starts from a clean baseline.
    """
    started_at, t0 = time.time(), time.perf_counter()
    quiet_libraries()
    device = trial_device(settings)
    import ray.tune

    # Blocks until Tune has the result; when the scheduler stops the trial, Tune ends this thread here.
    on_rung = ray.tune.report if settings.rungs else None
    on_checkpoint = _report_checkpoint if settings.training.checkpoint_every is not None else None
    stopped = False
    resume = _restored_checkpoint(trial_id)
    spare = None
    if device.type == "cpu":  # the driver turns spare_cores off where it cannot apply
        granted = settings.resources.spare_cores
        spare = SpareCores(ray_reader(threads_key(settings.config.name, trial_id)) if granted else None)
    try:
        metrics, adapter_dir = run_trial(
            trial,
            settings,
            data,
            device=device,
            on_rung=on_rung,
            on_checkpoint=on_checkpoint,
            resume_from=resume.name if resume else None,
            widen=spare,
        )
    except SystemExit:  # stopped at a rung: Tune's report ends the thread so
        stopped = True  # (leaving this block drops the traceback, and the model with its frames)
    finally:
        if resume is not None:
            resume.cleanup()
        return_freed_memory()
    if stopped:
        release_accelerator_memory()
        raise SystemExit(0)
    assert adapter_dir is not None  # rank 0 always saves
    t1 = time.perf_counter()
    result = stored_result(metrics, adapter_dir, settings, trial_id)
    if spare is not None:
        result["cpu_threads"] = spare.label()
    # Where the trial's time went, for benchmarks/overhead.py (Tune's result.json keeps every reported key).
    timing = {
        "trial_started_at": started_at,
        "trial_total_s": time.perf_counter() - t0,
        "save_time_s": time.perf_counter() - t1,
    }
    return {**result, **timing}


def _report_checkpoint(step: int, path: str) -> None:
    """A mid-trial checkpoint to Tune, which keeps it with the trial (and hands it back when the trial restarts)."""
    import ray.tune

    ray.tune.report(
        {STATUS_KEY: "running", "checkpoint_step": step}, checkpoint=ray.tune.Checkpoint.from_directory(path)
    )


def _restored_checkpoint(trial_id: str) -> tempfile.TemporaryDirectory | None:
    """The latest mid-trial checkpoint of a trial Tune restarted, copied to a local directory (said in one line)."""
    import ray.tune

    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is None:
        return None
    local = tempfile.TemporaryDirectory(prefix="resume-")
    checkpoint.to_directory(local.name)
    print(
        f"[peft-search] trial {trial_id} resumes from its checkpoint at step {checkpoint_step(local.name)}",
        flush=True,
    )
    return local


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function (multi-worker trials)."""
    import ray.train
    import ray.train.torch

    quiet_libraries()
    ctx = ray.train.get_context()
    metrics, adapter_dir = run_trial(
        config["trial"],
        config["settings"],
        config["data"],
        device=ray.train.torch.get_device(),
        world_size=ctx.get_world_size(),
        rank=ctx.get_world_rank(),
    )
    checkpoint = ray.train.Checkpoint.from_directory(adapter_dir.name) if adapter_dir is not None else None
    ray.train.report(metrics, checkpoint=checkpoint)
    if adapter_dir is not None:
        adapter_dir.cleanup()


def _train_distributed(
    trial: TrialConfig, settings: TrialSettings, data: TokenizedSplits, trial_id: str
) -> dict[str, Any] | None:
    """Launch the trial's Ray Train run; ``TuneReportCallback`` relays its report to Tune (so: None here)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    r = settings.resources
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"trial": trial, "settings": settings, "data": data},
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.num_workers,
            use_gpu=r.gpus_per_worker > 0,
            resources_per_worker=worker_resources(settings),
        ),
        run_config=ray.train.RunConfig(
            # Stable name (the trial id, no timestamp) so Ray can restore the run.
            name=f"train-{trial_id}",
            storage_path=settings.adapters_path,
            callbacks=[TuneReportCallback()],
            # No retries in Ray Train, a lost node included (which it otherwise retries without limit, as a
            # preemption): Tune restarts the whole trial up to resources.max_failures times, as for one worker.
            failure_config=ray.train.FailureConfig(max_failures=0, max_preemption_failures=0),
        ),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as err:
        cause = _worker_cause(err)
        if isinstance(cause, InfeasibleTrialError):
            raise cause from None
        raise
    return None


def _worker_cause(err: BaseException) -> BaseException | None:
    """The exception a worker raised, unwrapped from Ray's error types."""
    failures = getattr(err, "worker_failures", None) or {}
    for failure in failures.values():
        cause = getattr(failure, "cause", None) or failure
        inner = getattr(cause, "as_instanceof_cause", None)
        return cause if inner is None else cause.as_instanceof_cause()
    return None
