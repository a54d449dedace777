"""A trial's cost before it trains: planned from the model's config alone, and checked against the budget."""

from __future__ import annotations

from peft_search.search.errors import InfeasibleTrialError
from peft_search.search.plan.planning import Plan, meta_model, plan_candidate
from peft_search.search.settings.schema import Budget
from peft_search.search.settings.trial import TrialConfig, TrialSettings


def plan_trial(
    trial: TrialConfig, settings: TrialSettings, num_labels: int, runtime_bytes: int = 0, device: str = "cpu"
) -> Plan:
    """The trial's cost from the model's config alone (meta device), before any weights are loaded."""
    base = meta_model(settings.model_path, settings.task, max(num_labels, 2), settings.revision)
    t = settings.training
    accumulation = {**t.arguments().fixed, **trial.training}.get("gradient_accumulation_steps", 1)
    return plan_candidate(
        base,
        trial.peft_config,
        quantization=trial.quantization,
        batch_size=settings.micro_batch_size(int(accumulation)),
        seq_len=t.max_seq_length,
        precision=t.precision,
        gradient_checkpointing=t.gradient_checkpointing,
        runtime_bytes=runtime_bytes,
        device=device,
        heap=settings.heap,
    )


def check_budget(plan: Plan, budget: Budget) -> None:
    """Over-budget candidates are infeasible: they are recorded, never trained."""
    cap = budget.max_trainable_params
    if cap is not None and plan.trainable_params > cap:
        raise InfeasibleTrialError(
            f"over budget: {plan.trainable_params:,} trainable parameters > budget.max_trainable_params {cap:,}"
        )
    cap = budget.max_memory
    if cap is not None and plan.est_peak_memory_bytes > cap:
        raise InfeasibleTrialError(
            f"over budget: estimated peak memory {plan.est_peak_memory_bytes:,} B > budget.max_memory {cap:,} B"
        )
