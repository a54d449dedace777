"""Racing tied configs over new seeds (F-Race, irace): which of several configs one training run cannot tell
apart is really better.

Each round trains every config still in the race once more with one new seed, the same for all (a paired block):
round ``r``'s run of config ``X`` is the row with ``repeat_of == X`` and ``seed == base_seed + r``, so seed repeats
already in the table count as rounds and nothing is trained twice. The state is replayed from the trials table
alone, so a resumed search and ``best`` see the same race. After each round the configs left are tested
(Friedman's test, then the leader against each by one-sided paired t-tests, Holm-corrected; two left: the t-test
alone) and the worse dropped; the race stops when one is left, when the cheapest is shown within ``margin`` of every
other (no other's one-sided upper bound on its paired lead reaches ``margin``), after ``max_rounds``, or when the next
round would overrun the budget. A race stopped undecided leaves its pick to the configs whose mean is within
``margin`` of the leader's (``RaceState.close``): not shown worse, but estimated so, they are not picked for being
cheap. Pure: pandas, numpy, scipy, statsmodels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from peft_search.search.results.records import RACE_ROUND_KEY, REPEAT_OF_KEY, TrialResult
from peft_search.search.results.repeats import run_again

OVER = ("complete", "failed", "infeasible", "stopped_early")
"""A run in one of these states is done: it counts toward its round; only a complete one gives an accuracy."""
CONSTANT = 1e-9
"""Paired differences spread less than this are constant (accuracies are fractions of the held-out rows, so any
real spread is far larger; below it is floating-point noise, on which a t-test reports nonsense)."""


@dataclass(frozen=True)
class Elimination:
    """A config dropped from the race."""

    trial_id: str
    round: int
    """The round after which it was dropped."""
    p_value: float
    """One-sided paired t-test of the leader against it (Holm-adjusted where several were tested)."""
    gap: float
    """The leader's mean accuracy minus this config's, over the blocks tested."""


@dataclass(frozen=True)
class RaceState:
    """The race as the trials table holds it (``race_state`` replays it)."""

    entrants: tuple[str, ...]
    seeds: tuple[int, ...]
    """The seed of each block so far: ``base_seed`` for the originals, then ``base_seed + r`` per round."""
    accuracy: dict[str, tuple[float, ...]]
    """Per entrant, its accuracy per seed in ``seeds`` order while it raced (NaN where its run failed)."""
    left: tuple[str, ...]
    eliminations: tuple[Elimination, ...]
    rounds: int
    """Complete rounds."""
    stop: str | None
    """``one left``, ``within margin``, ``budget spent``, ``max rounds``, or None while the race goes on."""
    detail: str
    """One line on the state, for people."""
    spent_s: float
    """Training seconds of the counted rounds' runs (seed repeats among them too)."""
    budget_s: float
    leader: str | None
    """The config left with the highest mean accuracy over the blocks where every config left has one."""
    pick: str | None
    """What the race settled on: the one left, or the cheapest within the margin of every other; None while it
    goes on, and when it ran out of rounds or budget undecided."""
    close: tuple[str, ...]
    """The configs to pick from: those left, less (when the race stopped undecided) those whose mean accuracy over
    the shared blocks is more than ``margin`` below the leader's: not shown worse, but estimated so."""

    def to_json(self) -> dict[str, Any]:
        """A plain dict for ``best --format json`` (NaN as null)."""
        return {
            "entrants": list(self.entrants),
            "rounds": self.rounds,
            "seeds": list(self.seeds),
            "accuracy": {k: [_plain(v) for v in vs] for k, vs in self.accuracy.items()},
            "left": list(self.left),
            "eliminations": [
                {"trial_id": e.trial_id, "round": e.round, "p_value": _plain(e.p_value), "gap": _plain(e.gap)}
                for e in self.eliminations
            ],
            "stop": self.stop,
            "leader": self.leader,
            "pick": self.pick,
            "close": list(self.close),
            "detail": self.detail,
            "spent_s": self.spent_s,
            "budget_s": self.budget_s,
        }


def race_state(
    trials: pd.DataFrame,
    entrants: Sequence[str],
    *,
    base_seed: int,
    alpha: float,
    margin: float,
    max_rounds: int,
    budget: float,
    cheapest_first: Sequence[str],
    labels: Mapping[str, str] | None = None,
) -> RaceState:
    """The race among ``entrants`` (complete original trials) replayed from the table, round by round.

    ``budget`` is a share of the search's own training time (its complete and failed originals); ``cheapest_first``
    orders the entrants by the user's cost; ``labels`` names them in ``detail`` (their trial ids otherwise). Tests
    use only the blocks where every config left has an accuracy.
    """
    names = tuple(str(e) for e in entrants)
    rank = {str(c): i for i, c in enumerate(cheapest_first)}
    if len(set(names)) != len(names) or set(rank) != set(names) or len(rank) != len(cheapest_first):
        raise ValueError(
            f"cheapest_first {list(cheapest_first)} must order the entrants {list(names)} once each"
        )
    runs = _runs(trials, names, base_seed)
    missing = [c for c in names if (c, 0) not in runs]
    if missing:
        raise ValueError(f"entrants {missing} are not complete original trials of this table")
    accuracy = {c: [runs[c, 0][0]] for c in names}
    times = {c: [runs[c, 0][1]] for c in names}
    seeds, left, drops, spent = [base_seed], list(names), [], 0.0
    budget_s = budget * _search_seconds(trials)
    race = _Race(accuracy, times, rank, alpha, margin, labels or {})
    stop = race.stop(left, 0, spent, budget_s, max_rounds)
    while stop is None and all((c, len(seeds)) in runs for c in left):
        r = len(seeds)
        seeds.append(base_seed + r)
        for c in left:
            acc, seconds = runs[c, r]
            accuracy[c].append(acc)
            times[c].append(seconds)
            spent += 0.0 if math.isnan(seconds) else seconds
        dropped = race.eliminate(left, r)
        drops += dropped
        left = [c for c in left if c not in {e.trial_id for e in dropped}]
        stop = race.stop(left, r, spent, budget_s, max_rounds)
    rounds = len(seeds) - 1
    leader = race.leader(left)
    pick = left[0] if stop == "one left" else race.cheapest(left) if stop == "within margin" else None
    close = race.close(left) if stop in ("max rounds", "budget spent") else tuple(left)
    return RaceState(
        entrants=names,
        seeds=tuple(seeds),
        accuracy={c: tuple(v) for c, v in accuracy.items()},
        left=tuple(left),
        eliminations=tuple(drops),
        rounds=rounds,
        stop=stop,
        # The whole race once it stopped; while it goes on, what the last round did.
        detail=race.detail(
            left, drops if stop else [e for e in drops if e.round == rounds], stop, rounds, seeds, max_rounds
        ),
        spent_s=spent,
        budget_s=budget_s,
        leader=leader,
        pick=pick,
        close=close,
    )


def next_round(trials: pd.DataFrame, state: RaceState, base_seed: int) -> list[dict]:
    """Tune configs of round ``state.rounds + 1``, built as seed repeats are (``search.results.repeats.run_again``):
    every config left, with the shared new seed, less those already in the table at that seed (in any state)."""
    if state.stop is not None:
        return []
    round_ = state.rounds + 1
    seed = base_seed + round_
    table = _table(trials)
    have = set(zip(table["repeat_of"], table["seed"], strict=True))
    configs = []
    for c in state.left:
        if (c, seed) in have:
            continue
        at = table["original"] & table["trial_id"].eq(c) & table["status"].eq("complete")
        row = trials[at.to_numpy()].iloc[0]
        configs.append(run_again(TrialResult.from_row(row.to_dict()), seed, **{RACE_ROUND_KEY: round_}))
    return configs


class _Race:
    """The tests and stop rules over the accuracies so far (lists grow as ``race_state`` replays rounds)."""

    def __init__(
        self,
        accuracy: dict[str, list[float]],
        times: dict[str, list[float]],
        rank: dict[str, int],
        alpha: float,
        margin: float,
        labels: Mapping[str, str],
    ):
        self.accuracy, self.times, self.rank, self.alpha, self.margin = accuracy, times, rank, alpha, margin
        self.labels = labels

    def name(self, config: str | None) -> str:
        return self.labels.get(config, config) if config is not None else "-"

    def blocks(self, left: Sequence[str]) -> dict[str, np.ndarray]:
        """Per config left, its accuracies on the blocks where every config left has one."""
        matrix = np.array([self.accuracy[c] for c in left], dtype=float)
        keep = ~np.isnan(matrix).any(axis=0)
        return {c: row[keep] for c, row in zip(left, matrix, strict=True)}

    def cheapest(self, left: Sequence[str]) -> str:
        return min(left, key=self.rank.__getitem__)

    def leader(self, left: Sequence[str]) -> str | None:
        """The highest mean accuracy on the shared blocks; a tie goes to the cheaper config."""
        blocks = self.blocks(left)
        if not left or not len(next(iter(blocks.values()))):
            return None
        return max(left, key=lambda c: (float(blocks[c].mean()), -self.rank[c]))

    def close(self, left: Sequence[str]) -> tuple[str, ...]:
        """The configs left whose mean over the shared blocks is within ``margin`` of the leader's."""
        blocks = self.blocks(left)
        leader = self.leader(left)
        if leader is None:
            return tuple(left)
        top = float(blocks[leader].mean())
        return tuple(c for c in left if float(blocks[c].mean()) >= top - self.margin - CONSTANT)

    def eliminate(self, left: Sequence[str], round_: int) -> list[Elimination]:
        """The configs the leader beats at ``alpha`` (Friedman first with three or more; Holm across them)."""
        from scipy import stats
        from statsmodels.stats.multitest import multipletests

        blocks = self.blocks(left)
        leader = self.leader(left)
        if len(left) < 2 or leader is None or len(blocks[leader]) < 2:
            return []
        if len(left) >= 3:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all ties: scipy divides by zero, p is NaN
                p = float(stats.friedmanchisquare(*blocks.values()).pvalue)
            if not p < self.alpha:  # NaN too: no evidence that any differ
                return []
        others = [c for c in left if c != leader]
        raw = [_paired_p(blocks[leader], blocks[c]) for c in others]
        adjusted = multipletests(raw, alpha=self.alpha, method="holm")[1] if len(raw) > 1 else raw
        return [
            Elimination(c, round_, float(p), float(blocks[leader].mean() - blocks[c].mean()))
            for c, p in zip(others, adjusted, strict=True)
            if p < self.alpha
        ]

    def upper_bound(self, left: Sequence[str]) -> float:
        """How much better than the cheapest config left any other might be: the largest one-sided ``1 - alpha``
        upper confidence bound of another's mean paired lead over it (NaN when not shown: under two blocks, or a
        constant lead over two)."""
        from scipy import stats

        cheapest, blocks = self.cheapest(left), self.blocks(left)
        bounds = []
        for other in left:
            if other == cheapest:
                continue
            d = blocks[other] - blocks[cheapest]
            if len(d) < 2:
                return math.nan
            if np.ptp(d) <= CONSTANT:
                bounds.append(float(d.mean()) if len(d) >= 3 else math.nan)
                continue
            result = stats.ttest_1samp(d, 0.0, alternative="less")
            bounds.append(float(result.confidence_interval(confidence_level=1 - self.alpha).high))
        return max(bounds, default=math.nan)  # a NaN among them compares false: not shown

    def next_cost(self, left: Sequence[str]) -> float:
        """The next round's expected seconds: each config left at the mean of its runs so far."""
        return sum(_mean(self.times[c]) for c in left)

    def stop(
        self, left: Sequence[str], round_: int, spent: float, budget_s: float, max_rounds: int
    ) -> str | None:
        """The first stop rule that holds after ``round_`` (the margin needs a round: one run settles nothing)."""
        if len(left) <= 1:
            return "one left"
        if round_ >= 1 and self.upper_bound(left) < self.margin:  # no config left is shown `margin` better
            return "within margin"
        if round_ >= max_rounds:
            return "max rounds"
        if spent + self.next_cost(left) > budget_s:
            return "budget spent"
        return None

    def spread(self, left: Sequence[str]) -> float:
        """The leader's mean minus the lowest mean among the configs left, in points."""
        means = [b.mean() for b in self.blocks(left).values() if len(b)]
        return 100 * (max(means) - min(means)) if means else math.nan

    def detail(
        self,
        left: Sequence[str],
        dropped: Sequence[Elimination],
        stop: str | None,
        rounds: int,
        seeds: Sequence[int],
        max_rounds: int,
    ) -> str:
        leader = self.leader(left)
        parts = [
            f"{self.name(e.trial_id)} dropped after round {e.round}: {100 * e.gap:.1f} points below {self.name(leader)}, p = {e.p_value:.2g}"
            for e in dropped
        ]
        n = len(next(iter(self.blocks(left).values()), ()))
        if stop == "one left":
            parts.append(
                f"{self.name(left[0])} is the one left"
                if rounds
                else f"{self.name(left[0])} is the only entrant"
            )
        elif stop == "within margin":
            cheapest = self.cheapest(left)
            bound = f"{100 * (1 - self.alpha):g} % upper bound {100 * self.upper_bound(left):.1f} points"
            if cheapest == leader:
                parts.append(
                    f"{self.name(cheapest)}, the cheapest, leads over {_seeds(n)}; none better ({bound})"
                )
            else:
                parts.append(
                    f"{self.name(cheapest)} within {_points(self.margin)} of {self.name(leader)} over {_seeds(n)} "
                    f"({bound})"
                )
        elif stop in ("max rounds", "budget spent"):
            spent = f"max rounds ({max_rounds}) done" if stop == "max rounds" else "budget spent"
            parts.append(f"{spent} after {_seeds(len(seeds))}: still within {self.spread(left):.1f} points")
            close = self.close(left)
            if len(close) < len(left):
                parts.append(
                    f"{_listed([self.name(c) for c in left if c not in close])} more than {_points(self.margin)} "
                    f"below {self.name(leader)} on the mean, not picked"
                )
        else:
            parts.append(
                f"{len(left)} left within {self.spread(left):.1f} points over {_seeds(n)}; "
                f"round {rounds + 1} trains seed {seeds[-1] + 1}"
            )
        return "; ".join(parts)


def _paired_p(leader: np.ndarray, other: np.ndarray) -> float:
    """One-sided paired t-test that the leader is better (scipy), 1 where it cannot speak: identical runs, or a
    constant lead over two blocks (zero spread: scipy's t is infinite, which two runs do not warrant). A constant
    lead over three or more blocks is left to scipy (infinite t, p = 0)."""
    from scipy import stats

    d = leader - other
    if np.ptp(d) <= CONSTANT and (abs(float(d.mean())) <= CONSTANT or len(d) < 3):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision-loss note on near-constant data
        p = float(stats.ttest_rel(leader, other, alternative="greater").pvalue)
    return p if not math.isnan(p) else 1.0


def _table(trials: pd.DataFrame) -> pd.DataFrame:
    """The columns the race reads, normalized: ids as text (None for an original), seeds as int or None."""
    trials = trials.reset_index(drop=True)
    n = len(trials)

    def column(name: str) -> pd.Series:
        return trials[name] if name in trials else pd.Series([None] * n, index=trials.index, dtype=object)

    repeat_of = column(REPEAT_OF_KEY).map(lambda v: None if pd.isna(v) else str(v))
    seed = pd.to_numeric(column("seed"), errors="coerce").map(lambda v: None if pd.isna(v) else int(v))
    return pd.DataFrame(
        {
            "trial_id": column("trial_id").astype(str),
            "status": column("status"),
            "repeat_of": repeat_of,
            "seed": seed,
            "original": repeat_of.isna() & pd.to_numeric(column(RACE_ROUND_KEY), errors="coerce").isna(),
            "accuracy": pd.to_numeric(column("accuracy"), errors="coerce"),
            "train_time_s": pd.to_numeric(column("train_time_s"), errors="coerce"),
        }
    )


def _runs(
    trials: pd.DataFrame, entrants: Sequence[str], base_seed: int
) -> dict[tuple[str, int], tuple[float, float]]:
    """``(config, block) -> (accuracy, train seconds)`` of every done run: block 0 the complete original, block
    ``r`` the run at ``base_seed + r`` (a complete one first, then the first in table order)."""
    table = _table(trials)
    out: dict[tuple[str, int], tuple[float, float]] = {}
    for row in table[table["original"] & table["status"].eq("complete")].itertuples():
        if row.trial_id in entrants and (row.trial_id, 0) not in out:
            out[row.trial_id, 0] = (row.accuracy, row.train_time_s)
    done = table[table["repeat_of"].isin(entrants) & table["status"].isin(OVER) & table["seed"].notna()]
    done = done.assign(first=done["status"].ne("complete")).sort_values("first", kind="stable")
    for row in done.itertuples():
        block = row.seed - base_seed
        if block >= 1 and (row.repeat_of, block) not in out:
            complete = row.status == "complete"
            out[row.repeat_of, block] = (row.accuracy if complete else math.nan, row.train_time_s)
    return out


def _search_seconds(trials: pd.DataFrame) -> float:
    """Training seconds of the search's own trials: complete and failed, neither repeats nor race runs."""
    table = _table(trials)
    own = table["original"] & table["status"].isin(("complete", "failed"))
    return float(table.loc[own, "train_time_s"].sum())


def _mean(values: Sequence[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return sum(known) / len(known) if known else 0.0


def _points(share: float) -> str:
    return f"{100 * share:g} point{'' if 100 * share == 1 else 's'}"


def _listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _seeds(n: int) -> str:
    return f"{n} seed{'' if n == 1 else 's'}"


def _plain(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
