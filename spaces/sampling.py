"""The define-by-run search space handed to Ray Tune's ``OptunaSearch``.

A trial first picks an explicit candidate or the sampled space; in the sampled space it picks a method family,
then a quantization level among those the family can train on (so impossible pairs are never proposed), then the
family's own knobs. Parameter names are prefixed by family so Optuna sees a proper conditional space.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from peft_search.spaces.registry import SpaceContext, get_method, method_for_peft_type

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
    params: Mapping[str, Any] = field(default_factory=dict)
    """The sampled space's Optuna parameters that hold for this config (``describe_candidate``), recorded with
    the candidate's trial so the sampler learns from it; empty when it is not a point of the space."""


@dataclass(frozen=True)
class Choice:
    """A searched setting drawn from a list (Optuna's ``suggest_categorical``)."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Range:
    """A searched number drawn from ``[low, high]`` (``suggest_int`` or ``suggest_float``, log-scaled or not)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False


Domain = Choice | Range
TRAINING_PREFIX = "training."
"""Optuna parameter names of searched ``TrainingArguments`` fields: ``training.max_grad_norm``."""


def suggest(trial: optuna.Trial, name: str, domain: Domain) -> Any:
    """One value of a searched setting, as the Optuna parameter ``name``."""
    if isinstance(domain, Choice):
        return trial.suggest_categorical(name, list(domain.values))
    if domain.integer:
        return trial.suggest_int(name, int(domain.low), int(domain.high), log=domain.log)
    return trial.suggest_float(name, domain.low, domain.high, log=domain.log)


@dataclass(frozen=True)
class SpaceSpec:
    methods: Sequence[str]
    quantization: Sequence[str]
    learning_rate: tuple[float, float]
    candidates: Sequence[Candidate] = field(default_factory=tuple)
    training: Mapping[str, Domain] = field(default_factory=dict)
    """Searched ``TrainingArguments`` fields (name -> domain); every trial, candidates included, draws them."""


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
        methods = self.methods()
        lo, hi = spec.learning_rate
        names = [c.name for c in spec.candidates]
        # Explicit candidates run once each, as enqueued trials; the sampler never re-proposes them,
        # unless there is nothing else to search.
        enqueued = trial.user_attrs.get(CANDIDATE_ATTR)
        if enqueued in names or (names and not methods):
            cand = spec.candidates[names.index(trial.suggest_categorical("candidate", names))]
            if cand.params and enqueued == cand.name:
                # Its own values of the sampled space's parameters (enqueued with it), in the same distributions,
                # so the sampler models it with the trials it proposed.
                self.sample(_Only(trial, cand.params))
            lr = cand.learning_rate or trial.suggest_float("learning_rate", lo, hi, log=True)
            return {
                "candidate": cand.name,
                "method": method_for_peft_type(cand.peft_config["peft_type"]),
                "quantization": cand.quantization,
                "peft_config": dict(cand.peft_config),
                "learning_rate": lr,
                "training": self.training(trial),
            }
        return self.sample(trial)

    def training(self, trial: optuna.Trial) -> dict[str, Any]:
        """The searched ``TrainingArguments`` fields' values for this trial (empty when none is searched)."""
        return {n: suggest(trial, TRAINING_PREFIX + n, d) for n, d in sorted(self.spec.training.items())}

    def methods(self) -> list[str]:
        return [m for m in self.spec.methods if feasible_quantization(m, self.spec.quantization)]

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """A config of the sampled space (method, then quantization, then the family's knobs, learning rate)."""
        lo, hi = self.spec.learning_rate
        method = trial.suggest_categorical("method", self.methods())
        levels = feasible_quantization(method, self.spec.quantization)
        quant = trial.suggest_categorical(f"{method}.quantization", levels) if len(levels) > 1 else levels[0]
        peft_config = get_method(method).sample(trial, replace(self.ctx, quantization=quant))
        return {
            "candidate": SAMPLED,
            "method": method,
            "quantization": quant,
            "peft_config": peft_config,
            "learning_rate": trial.suggest_float("learning_rate", lo, hi, log=True),
            "training": self.training(trial),
        }


def enqueue_candidates(study: optuna.Study, spec: SpaceSpec) -> None:
    """Queue every explicit candidate to run once, first (again only if no trial of this study ran it, warm-start
    trials included), with the sampled space's parameters that describe it."""
    queued = {t.user_attrs.get(CANDIDATE_ATTR) for t in study.get_trials(deepcopy=False)}
    for cand in spec.candidates:
        if cand.name not in queued:
            study.enqueue_trial(
                {"candidate": cand.name, **cand.params}, user_attrs={CANDIDATE_ATTR: cand.name}
            )


Normalise = Callable[[Mapping[str, Any]], dict[str, Any]]
"""A PEFT config dict -> the same config with every default filled in (two spellings of one config compare equal)."""


def describe_candidate(cand: Candidate, space: DefineByRun, normalise: Normalise) -> dict[str, Any]:
    """The sampled space's Optuna parameters that hold for an explicit candidate.

    Empty unless the candidate is a point the space could propose on method, quantization and learning rate. Then
    ``method``, its quantization, ``learning_rate`` (when the candidate fixes it) and every knob of the family whose
    choice gives exactly the candidate's PEFT config wherever that knob acts (rank 8, the attention targets, all
    layers). A knob that no choice reproduces (a dropout of 0.05 among 0.0 and 0.1) is left out, never rounded.
    """
    method = method_for_peft_type(cand.peft_config["peft_type"])
    lo, hi = space.spec.learning_rate
    lr = cand.learning_rate
    if method not in space.methods() or (lr is not None and not lo <= lr <= hi):
        return {}
    levels = feasible_quantization(method, space.spec.quantization)
    if cand.quantization not in levels:
        return {}
    fixed: dict[str, Any] = {"method": method}
    if len(levels) > 1:
        fixed[f"{method}.quantization"] = cand.quantization
    if lr is not None:
        fixed["learning_rate"] = lr
    target = normalise(cand.peft_config)

    def config(values: dict[str, Any]) -> dict[str, Any]:
        return normalise(space.sample(_Probe({**fixed, **values}))["peft_config"])

    knobs = _Probe(fixed)
    space.sample(knobs)
    choices = {
        n: c
        for n, c in knobs.asked.items()
        if n not in fixed and n != "learning_rate" and not n.startswith(TRAINING_PREFIX)
    }
    values = {n: c[0] for n, c in choices.items()}

    def agree(vals: dict[str, Any]) -> int:
        out = config(vals)
        return sum(out.get(k) == target.get(k) for k in set(out) | set(target))

    for _ in range(len(choices)):  # coordinate ascent: each knob to the choice closest to the candidate
        before = dict(values)
        for name, options in choices.items():
            values[name] = max(options, key=lambda c, n=name: (agree({**values, n: c}), c == values[n]))
        if values == before:
            break
    out = config(values)
    described = dict(fixed)
    for name, options in choices.items():
        acts_on = {
            k
            for other in options
            if other != values[name]
            for alt in [config({**values, name: other})]
            for k in set(out) | set(alt)
            if out.get(k) != alt.get(k)
        }
        if acts_on and all(out.get(k) == target.get(k) for k in acts_on):
            described[name] = values[name]
    return described


class _Probe:
    """A stand-in Optuna trial: answers each suggestion from ``values`` (else its first choice or its low end) and
    records what was asked."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values
        self.asked: dict[str, list[Any]] = {}
        self.user_attrs: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.asked[name] = list(choices)
        return self.values.get(name, choices[0])

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        self.asked[name] = [low, high]
        return self.values.get(name, low)

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        self.asked[name] = list(range(low, high + 1))
        return self.values.get(name, low)


class _Only:
    """The real trial for the named parameters (each answered by its enqueued value); any other suggestion gets a
    placeholder and is not recorded."""

    def __init__(self, trial: optuna.Trial, names: Mapping[str, Any]) -> None:
        self._trial, self._names, self._probe = trial, names, _Probe({})

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        if name in self._names:
            return self._trial.suggest_categorical(name, choices)
        return self._probe.suggest_categorical(name, choices)

    def suggest_float(self, name: str, low: float, high: float, **kw: Any) -> float:
        if name in self._names:
            return self._trial.suggest_float(name, low, high, **kw)
        return self._probe.suggest_float(name, low, high)

    def suggest_int(self, name: str, low: int, high: int, **kw: Any) -> int:
        if name in self._names:
            return self._trial.suggest_int(name, low, high, **kw)
        return self._probe.suggest_int(name, low, high)
