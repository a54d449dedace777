"""One Tune trial: trained in place when it has one worker, as a Ray Train run when it has several.

A multi-worker trial is a Ray Train ``TorchTrainer`` (the Train V2 pattern: the Tune function builds it). A
single-worker trial runs inside the Tune trial's own actor, which holds the worker's CPUs and GPUs: no trainer,
controller or worker actors to start per trial, and with ``reuse_actors`` the imports happen once per actor. Both
paths report the same metrics and save the adapter to the same place (``train/train-TRIAL/checkpoint_000000``).
"""

from __future__ import annotations

from typing import Any

from search.infeasible import penalty_result
from search.modeling import InfeasibleTrialError
from search.training import train_loop_per_worker


def trial_driver(config: dict[str, Any], *, settings: dict[str, Any], data) -> None:
    """Ray Tune function: launch the trial's Ray Train run and let ``TuneReportCallback`` relay its report."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = {k: config[k] for k in ("candidate", "method", "quantization", "peft_config", "learning_rate")}
    trial_id = ray.tune.get_context().get_trial_id()
    if settings["num_workers"] == 1:
        _train_in_place(trial, settings, data, trial_id)
        return
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"trial": trial, "settings": settings, "data": data},
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings["num_workers"],
            use_gpu=settings["gpus_per_worker"] > 0,
            resources_per_worker=_worker_resources(settings),
        ),
        run_config=ray.train.RunConfig(
            # Stable name (the trial id, no timestamp) so Ray can restore the run.
            name=f"train-{trial_id}",
            storage_path=settings["storage_path"],
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
        if not isinstance(cause, InfeasibleTrialError):
            raise
        # Completes with the worst outcome so the sampler learns to avoid it (see search.infeasible).
        ray.tune.report(penalty_result(str(cause)))


def trial_resources(settings: dict[str, Any]) -> dict[str, float]:
    """What the Tune trial itself holds: the worker's share when it trains in place, next to nothing otherwise.

    A multi-worker trial's function only launches the Ray Train run, so it holds no CPU and the workers get them.
    """
    if settings["num_workers"] == 1:
        return _worker_resources(settings)
    return {"CPU": 0, "memory": 64 * 1024**2}


def _train_in_place(trial: dict[str, Any], settings: dict[str, Any], data, trial_id: str) -> None:
    """Run the trial in this (Tune) actor and report its metrics and adapter path to Tune."""
    import ray.tune

    from search.training import train_single_worker

    try:
        metrics = train_single_worker(trial, settings, data, trial_id)
    except InfeasibleTrialError as err:
        ray.tune.report(penalty_result(str(err)))
        return
    ray.tune.report(metrics)


def _worker_resources(settings: dict[str, Any]) -> dict[str, float]:
    resources = {"CPU": float(settings["cpus_per_worker"])}
    if settings["gpus_per_worker"] > 0:
        resources["GPU"] = float(settings["gpus_per_worker"])
    return resources


def _worker_cause(err: BaseException) -> BaseException | None:
    """The exception a worker raised, unwrapped from Ray's error types."""
    failures = getattr(err, "worker_failures", None) or {}
    for failure in failures.values():
        cause = getattr(failure, "cause", None) or failure
        inner = getattr(cause, "as_instanceof_cause", None)
        return cause if inner is None else cause.as_instanceof_cause()
    return None
