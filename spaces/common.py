"""Sampling helpers shared by the method modules: the knobs that several PEFT families have in common."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peft_search.spaces.registry import SpaceContext

if TYPE_CHECKING:
    import optuna


def layers_to_transform(choice: str, num_layers: int) -> list[int] | None:
    """PEFT's ``layers_to_transform`` for a named placement (None means every layer)."""
    if choice == "all":
        return None
    if choice == "top-half":
        return list(range(num_layers // 2, num_layers))
    if choice == "every-other":
        return list(range(0, num_layers, 2))
    raise ValueError(f"unknown layer placement {choice!r}")


def suggest_targets(trial: optuna.Trial, ctx: SpaceContext, prefix: str) -> tuple[str, list[str]]:
    name = trial.suggest_categorical(f"{prefix}.targets", list(ctx.targets))
    return name, list(ctx.target_sets[name])


def suggest_layers(trial: optuna.Trial, ctx: SpaceContext, prefix: str) -> dict[str, Any]:
    """``layers_to_transform`` as PEFT spells it; omitted when every layer gets an adapter."""
    choice = trial.suggest_categorical(f"{prefix}.layers", list(ctx.layers))
    layers = layers_to_transform(choice, ctx.num_layers)
    return {} if layers is None else {"layers_to_transform": layers}


def suggest_rank(trial: optuna.Trial, ctx: SpaceContext, prefix: str) -> int:
    return int(trial.suggest_categorical(f"{prefix}.r", list(ctx.ranks)))


def suggest_alpha(trial: optuna.Trial, ctx: SpaceContext, prefix: str, r: int) -> float:
    ratio = trial.suggest_categorical(f"{prefix}.alpha_ratio", list(ctx.alpha_ratios))
    return float(r * ratio)


def suggest_dropout(trial: optuna.Trial, ctx: SpaceContext, prefix: str) -> float:
    return float(trial.suggest_categorical(f"{prefix}.dropout", list(ctx.dropouts)))


def suggest_virtual_tokens(trial: optuna.Trial, ctx: SpaceContext, prefix: str) -> int:
    return int(trial.suggest_categorical(f"{prefix}.num_virtual_tokens", list(ctx.virtual_tokens)))


def base(ctx: SpaceContext, peft_type: str) -> dict[str, Any]:
    return {"peft_type": peft_type, "task_type": ctx.task_type}


REDUCTION_FACTORS = (8, 16, 32)
"""Bottleneck adapters' hidden size over their bottleneck's (AdapterHub's ``reduction_factor``)."""
NON_LINEARITIES = ("relu", "swish")


def suggest_bottleneck(
    trial: optuna.Trial, ctx: SpaceContext, prefix: str, adapter_type: str
) -> dict[str, Any]:
    """An AdapterHub bottleneck adapter's config (``adapter_type`` names its config class): reduction factor,
    non-linearity, and the layers it leaves out (``leave_out``: the placement's complement)."""
    choice = trial.suggest_categorical(f"{prefix}.layers", list(ctx.layers))
    layers = layers_to_transform(choice, ctx.num_layers)
    config: dict[str, Any] = {
        "peft_type": adapter_type,
        "task_type": ctx.task_type,
        "reduction_factor": int(
            trial.suggest_categorical(f"{prefix}.reduction_factor", list(REDUCTION_FACTORS))
        ),
        "non_linearity": trial.suggest_categorical(f"{prefix}.non_linearity", list(NON_LINEARITIES)),
    }
    if layers is not None:
        config["leave_out"] = [i for i in range(ctx.num_layers) if i not in layers]
    return config
