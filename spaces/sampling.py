"""The define-by-run search space handed to Ray Tune's ``OptunaSearch``.

A trial first picks an explicit candidate or the sampled space; in the sampled space it picks a method family,
then a quantization level among those the family can train on (so impossible pairs are never proposed), then the
family's own knobs. Parameter names are prefixed by family so Optuna sees a proper conditional space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from spaces.registry import SpaceContext, get_method, method_for_peft_type

if TYPE_CHECKING:
    import optuna

SAMPLED = "sampled"
CANDIDATE_ATTR = "peft_search.candidate"


@dataclass(frozen=True)
class Candidate:
    """An explicit configuration the user wants tried as is."""

    name: str
    peft_config: dict[str, Any]
    quantization: str = "none"
    learning_rate: float | None = None


@dataclass(frozen=True)
class SpaceSpec:
    methods: Sequence[str]
    quantization: Sequence[str]
    learning_rate: tuple[float, float]
    candidates: Sequence[Candidate] = field(default_factory=tuple)


def feasible_quantization(method: str, levels: Sequence[str]) -> list[str]:
    allowed = get_method(method).quantization
    return [q for q in levels if q in allowed]


@dataclass(frozen=True)
class DefineByRun:
    """The space as Optuna's define-by-run function. A plain object, so Tune can checkpoint its searcher."""

    spec: SpaceSpec
    ctx: SpaceContext

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        spec = self.spec
        methods = [m for m in spec.methods if feasible_quantization(m, spec.quantization)]
        lo, hi = spec.learning_rate
        names = [c.name for c in spec.candidates]
        # Explicit candidates run once each, as enqueued trials; the sampler never re-proposes them,
        # unless there is nothing else to search.
        enqueued = trial.user_attrs.get(CANDIDATE_ATTR)
        if enqueued in names or (names and not methods):
            cand = spec.candidates[names.index(trial.suggest_categorical("candidate", names))]
            lr = cand.learning_rate or trial.suggest_float("learning_rate", lo, hi, log=True)
            return {
                "candidate": cand.name,
                "method": method_for_peft_type(cand.peft_config["peft_type"]),
                "quantization": cand.quantization,
                "peft_config": dict(cand.peft_config),
                "learning_rate": lr,
            }
        method = trial.suggest_categorical("method", methods)
        levels = feasible_quantization(method, spec.quantization)
        quant = trial.suggest_categorical(f"{method}.quantization", levels) if len(levels) > 1 else levels[0]
        peft_config = get_method(method).sample(trial, replace(self.ctx, quantization=quant))
        return {
            "candidate": SAMPLED,
            "method": method,
            "quantization": quant,
            "peft_config": peft_config,
            "learning_rate": trial.suggest_float("learning_rate", lo, hi, log=True),
        }


def enqueue_candidates(study: optuna.Study, spec: SpaceSpec) -> None:
    """Queue every explicit candidate to run once, first (again only if it never ran in this study)."""
    for cand in spec.candidates:
        study.enqueue_trial(
            {"candidate": cand.name}, user_attrs={CANDIDATE_ATTR: cand.name}, skip_if_exists=True
        )
