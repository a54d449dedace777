"""The config's ``search`` section: how many trials, the sampler, early stopping, packing, seed repeats and the
race of tied configs (``search.settings.schema`` holds the rest, as ``space_config`` holds ``space``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from peft_search.search.settings.strict import Strict as _Strict


class EarlyStopping(_Strict):
    """Stop clearly hopeless trials part-way: asynchronous successive halving (ASHA) ranked on every objective (or on
    those ``objectives`` names).

    At each rung (``grace_steps``, then x ``reduction_factor``, ...) a trial is evaluated on ``eval_size`` held-out
    rows and stopped when a trial there dominates it and it falls outside the rung's best ``1 / reduction_factor``
    by Pareto rank (``search.loop.rungs``). A trial on the rung's front is never stopped: cheap configs stay in.
    """

    rule: Literal["none", "asha"] = "none"
    """``none`` or ``asha``."""
    grace_steps: int | None = Field(None, ge=1)
    """The first rung, in training steps; ``steps / reduction_factor`` when unset."""
    reduction_factor: float = Field(3.0, gt=1)
    """Rungs are this factor apart, and about ``1 / reduction_factor`` of the dominated trials go on at each."""
    eval_size: int = Field(100, ge=1)
    """Held-out rows evaluated at each rung (the final evaluation uses the whole held-out split)."""
    noise_margin: float = Field(2.0, ge=0)
    """At a rung, a trial dominates another on accuracy (measured on ``eval_size`` rows) only by more than this
    many standard errors of the difference; a tie within noise stops nothing. 0 compares the values as they are."""
    objectives: list[str] | None = Field(None, min_length=1)
    """The objectives a rung ranks trials on, by metric name (a subset of the search's ``objectives``); unset: all of
    them, so a cheap config on the rung's front goes on. ``[accuracy]`` ranks as a one-metric ASHA (Tune's
    ``ASHAScheduler``, Optuna's pruners) does: more trials stop, cheap and less accurate ones among them."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"rule": value} if isinstance(value, str) else value


class Repeats(_Strict):
    """After the search, train the front's best configs again with new seeds (training seed and data order), as
    ordinary trials linked to their original; tables, ``best`` and the report then use each config's mean over its
    runs and the interval of that mean."""

    top: int = Field(3, ge=1)
    """How many configs of the final Pareto front to repeat, best first by the first objective."""
    seeds: int = Field(3, ge=1)
    """New seeds per config (each config then has ``seeds + 1`` runs)."""


class Race(_Strict):
    """After the search (and ``repeats``), race the configs the held-out rows cannot tell from the most accurate one
    (``best --tolerance auto``'s tie) over new seeds: each round gives every config still in the race one more run with
    the same new seed (training seed and data order), drops those significantly worse than the leader (Friedman with
    Holm-corrected paired t-tests; a paired t-test for two), and stops when one is left, when the cheapest one left
    is shown within ``margin`` of every other, after ``max_rounds``, or when ``budget`` is spent. ``best`` then picks
    the cheapest config left."""

    budget: float = Field(0.25, gt=0)
    """The race's compute, as a share of the search's own (its trials' training time): 0.25 is a quarter more."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """Significance level of the drops and of the within-margin check (confidence 1 - alpha)."""
    margin: float = Field(0.01, ge=0, lt=1)
    """Accuracy the cheapest config may be shown to lose against the leader and still settle the race (0.01: 1
    point)."""
    max_rounds: int = Field(5, ge=1)
    """Rounds at most (each config then has up to ``max_rounds + 1`` runs)."""


class SearchSettings(_Strict):
    num_trials: int = Field(10, ge=1, le=100_000)
    """Trials in all, explicit candidates included."""
    max_concurrent: int | None = Field(None, ge=1)
    """Trials at once; derived from the cluster's resources when unset (times the packed group's size with
    ``packing``: a packed trial's own function holds no CPU)."""
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    """Optuna's sampler: ``tpe`` (multivariate, grouped, constant liar), ``nsga2`` or ``random``. Up to its start-up
    trials TPE samples exactly as ``random`` does; benchmarks/RESULTS.md (replay) has why ``tpe`` is the default."""
    n_startup_trials: int | None = Field(None, ge=0)
    """Random trials before TPE starts modelling (Optuna's default, 10, when unset)."""
    seed: int = 0
    """Seed of the sampler and of every trial's training."""
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    """``asha`` (or a mapping: rule, grace_steps, reduction_factor, eval_size) stops dominated trials at rungs."""
    repeats: Repeats | None = None
    """Opt-in seed repeats of the front's best configs, e.g. ``{top: 3, seeds: 3}`` (off when unset)."""
    race: Race | None = None
    """Opt-in race of the configs tied with the most accurate one over new seeds, e.g. ``{budget: 0.25, alpha:
    0.05, margin: 0.01, max_rounds: 5}`` or ``{}`` for those defaults (off when unset)."""
    packing: Literal["off", "auto"] | int = "off"
    """Packed trials: LoRA-family trials that share the quantization level and training arguments train K at a
    time through one base model (``search.worker.packed``), each still its own trial. ``auto``: the search
    first measures on the workers' device whether a packed step of 4 pays, and packs only where it does: up to 4 at
    a time, or 8 or 16 where those measure faster again; fewer where ``budget.max_memory`` refuses the group; an
    integer: at most that many, without measuring;
    ``off`` (or 1): every trial alone. A member stopped or done frees its slot for the next trial, which joins the
    group while it trains. Packed trials keep no mid-trial checkpoints."""
    warm_start: str | None = None
    """A previous search's directory (RESULTS_DIR/NAME; same model, data, space and training): its finished trials
    join the new Optuna study before it samples, so the sampler starts from what that search learned."""

    @field_validator("packing", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` / ``on`` as false / true."""
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("packing")
    @classmethod
    def _members(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 1:
            raise ValueError(
                f"a packed group has at least 1 member, not {value}; use off, auto or a number >= 1"
            )
        return value
