"""The search space the settings describe, in the types of ``spaces`` (which knows nothing of the config)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft_search import spaces
from peft_search.search.errors import ConfigError
from peft_search.spaces.targets import norm_suffixes

if TYPE_CHECKING:
    from peft_search.search.settings.schema import SearchConfig


def space_context(cfg: SearchConfig, facts, steps: int) -> spaces.SpaceContext:
    """What the space may know about this model; fails early when a target set matches nothing in it."""

    target_sets, mlp_targets = spaces.resolve_target_sets(facts.linear_modules)
    if not target_sets and cfg.space.methods:
        raise ConfigError(
            f"space.targets: {cfg.model.name_or_path} has no nn.Linear layers to target (GPT-2's are Conv1D); "
            "search only space.candidates with explicit target_modules (space.methods: [])"
        )
    missing = [t for t in cfg.space.targets if t not in target_sets]
    if missing:
        raise ConfigError(
            f"space.targets: {missing} match no linear layer of {cfg.model.name_or_path}; "
            f"use {sorted(target_sets)}"
        )
    return spaces.SpaceContext(
        task_type="SEQ_CLS" if cfg.model.task == "sequence-classification" else "CAUSAL_LM",
        num_layers=facts.num_layers,
        target_sets=target_sets,
        mlp_targets=mlp_targets,
        norm_targets=norm_suffixes(facts.norm_modules),
        targets=tuple(cfg.space.targets),
        layers=tuple(cfg.space.layers),
        ranks=tuple(cfg.space.ranks),
        alpha_ratios=tuple(cfg.space.alpha_ratios),
        dropouts=tuple(cfg.space.dropouts),
        virtual_tokens=tuple(cfg.space.virtual_tokens),
        total_steps=steps,
    )


def space_spec(cfg: SearchConfig) -> spaces.SpaceSpec:
    return spaces.SpaceSpec(
        methods=tuple(cfg.space.methods),
        quantization=tuple(cfg.space.quantization),
        learning_rate=cfg.training.learning_rate,
        candidates=tuple(
            spaces.Candidate(c.name, dict(c.peft_config), c.quantization, c.learning_rate)
            for c in cfg.space.candidates
        ),
        training=dict(cfg.training.arguments().searched),
    )
