"""Replay Optuna samplers against a tabular benchmark: many searches in seconds, no training.

    python -m benchmarks.sampler_replay                                   # every sampler, N = 9 10 15 20 30, 100 repeats
    python -m benchmarks.sampler_replay --samplers random tpe --repeats 20 --trials 15
    python -m benchmarks.sampler_replay --table benchmarks/tables/OTHER.parquet

Each replayed search is a real Optuna study over the project's real define-by-run space (``spaces.DefineByRun``,
rebuilt from the table's metadata, explicit candidates enqueued first with their parameters, exactly as
``peft-search run`` does). Each config the sampler proposes is answered from the table, never trained:

- an explicit candidate by its own row;
- a sampled config by the **nearest stored config of the same method**: the fewest parameters that differ (each
  categorical knob counts 1, quantization included) plus the learning-rate distance on a log scale as a share of
  the space's range; ties go to the earlier row. The table is a uniform random sample of the space, so most
  proposals have no exact twin; the figures say how far the answers were (``mean_distance``, ``exact``).

The answer's outcome is told to the study as the search would tell it: its objective values (complete), the worst
values (infeasible), or FAIL (failed). A search of N trials is its own study (samplers whose settings depend on the
search size get the right ones), with seeds 1000..1000+R-1: not the seeds the table was built with (its chunks are
random searches with seeds 0, 1, ...), or a random replay would propose exactly the stored configs.

Figures per sampler and N, mean and 95 % interval (t) over the repeats:

- normalised hypervolume: the hypervolume of the front of the distinct rows the search reached, over that of the
  whole table's front, one reference point (accuracy 0, 1.1 x the table's largest costs);
- budget-pick regret: under each of three trainable-parameter budgets (the table's quartiles), the table's best
  accuracy within the budget minus the accuracy of what ``peft-search best --where trainable_params<=B`` picks
  from the search's trials (its default rule: tolerance auto, McNemar on the stored per-row predictions); a search
  with no trial inside a budget picks nothing and loses the whole best accuracy. Averaged over the budgets.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import machine, table, write_result

DEFAULT_TABLE = Path(__file__).parent / "tables" / "bbcnews-minilm.parquet"
SEED_OFFSET = 1000
TRIALS = (9, 10, 15, 20, 30)  # 9: the default search's own num_trials


def samplers() -> dict[str, Callable[[int, int], Any]]:
    """Name -> (seed, number of trials) -> an Optuna sampler. ``tpe`` is what ``search.sampler: tpe`` runs."""
    import optuna

    from peft_search.search.loop.tuning import make_sampler
    from peft_search.search.settings.schema import SearchSettings

    def tpe(startup: int | None) -> Callable[[int, int], Any]:
        return lambda seed, n: make_sampler("tpe", seed, n, startup)

    default = SearchSettings()
    return {
        # What a search gets with search.sampler and search.n_startup_trials left unset.
        "default": lambda seed, n: make_sampler(default.sampler, seed, n, default.n_startup_trials),
        "random": lambda seed, n: optuna.samplers.RandomSampler(seed=seed),
        "tpe": tpe(None),  # multivariate, grouped, constant liar, Optuna's 10 start-up trials
        "tpe-startup-5": tpe(5),
        "tpe-startup-3": tpe(3),
        "tpe-multivariate": lambda seed, n: optuna.samplers.TPESampler(
            seed=seed, multivariate=True, constant_liar=True
        ),
        "tpe-independent": lambda seed, n: optuna.samplers.TPESampler(seed=seed),
        "nsga2": lambda seed, n: make_sampler("nsga2", seed, n),
        "gp": lambda seed, n: optuna.samplers.GPSampler(seed=seed),
    }


def auto_sampler() -> Callable[[int, int], Any] | str:
    """OptunaHub's AutoSampler, or why it is not available here."""
    try:
        import optunahub
    except ImportError:
        return "optunahub is not installed"
    try:
        module = optunahub.load_module("samplers/auto_sampler")
    except Exception as err:  # noqa: BLE001 - any failure to fetch the module is reported, not raised
        detail = " ".join(str(err).split())[-200:]
        return f"optunahub.load_module('samplers/auto_sampler') failed: {type(err).__name__}: {detail}"
    return lambda seed, n: module.AutoSampler(seed=seed)


@dataclass
class Table:
    """A tabular benchmark: its rows, per-row held-out correctness, objectives and space."""

    rows: pd.DataFrame
    correct: dict[str, list[bool]]
    objectives: list[Any]
    space: Any
    meta: dict[str, Any]
    _by_method: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Table:
        from peft_search.search.results.metrics import Objective

        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        rows = pd.read_parquet(path).reset_index(drop=True)
        rows["params"] = rows["params"].map(json.loads)
        rows["trial_id"] = rows["key"]
        correct: dict[str, list[bool]] = {}
        if meta.get("predictions"):
            pred = pd.read_parquet(path.parent / meta["predictions"]).sort_values(["key", "row"])
            correct = {k: g["correct"].astype(bool).tolist() for k, g in pred.groupby("key", sort=False)}
        objectives = [Objective(o["metric"], o["mode"]) for o in meta["config"]["objectives"]]
        return cls(rows, correct, objectives, load_space(meta["space"]), meta)

    def __post_init__(self) -> None:
        sampled = self.rows[self.rows["candidate"] == "sampled"]
        for method, group in sampled.groupby("method", sort=False):
            self._by_method[str(method)] = list(group.index)

    def answer(self, config: dict[str, Any], params: dict[str, Any]) -> tuple[int, float]:
        """The row that answers a proposed config, and its distance (0: the same config up to the learning rate's
        exact value)."""
        if config["candidate"] != "sampled":
            match = self.rows.index[self.rows["candidate"] == config["candidate"]]
            return int(match[0]), 0.0
        lo, hi = self.space.spec.learning_rate
        span = math.log(hi / lo) or 1.0
        pool = self._by_method.get(config["method"]) or list(
            self.rows.index[self.rows["candidate"] == "sampled"]
        )
        best, best_d = pool[0], math.inf
        for i in pool:
            stored = self.rows.at[i, "params"]
            d = sum(stored.get(k) != v for k, v in params.items() if k != "learning_rate")
            d += abs(math.log(config["learning_rate"] / float(self.rows.at[i, "learning_rate"]))) / span
            if d < best_d:
                best, best_d = i, d
        return int(best), float(best_d)


def load_space(meta: dict[str, Any]):
    """``spaces.DefineByRun`` from the table's metadata (what ``benchmarks.build_table.space_meta`` wrote)."""
    from peft_search import spaces

    ctx = dict(meta["context"])
    for key in ("targets", "layers", "ranks", "alpha_ratios", "dropouts", "virtual_tokens"):
        ctx[key] = tuple(ctx[key])
    spec = dict(meta["spec"])
    candidates = tuple(spaces.Candidate(**c) for c in spec.pop("candidates"))
    spec = spaces.SpaceSpec(
        methods=tuple(spec["methods"]),
        quantization=tuple(spec["quantization"]),
        learning_rate=tuple(spec["learning_rate"]),
        candidates=candidates,
    )
    return spaces.DefineByRun(spec, spaces.SpaceContext(**ctx))


def replay(tab: Table, make_sampler: Callable[[int, int], Any], seed: int, n: int) -> list[tuple[int, float]]:
    """One search of ``n`` trials against the table; the (row, distance) answering each trial, in order."""
    import warnings

    import optuna

    from peft_search import spaces
    from peft_search.search.results.metrics import WORST_COST

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    warnings.simplefilter("ignore", FutureWarning)
    study = optuna.create_study(
        sampler=make_sampler(seed, n),
        directions=["maximize" if o.mode == "max" else "minimize" for o in tab.objectives],
    )
    spaces.enqueue_candidates(study, tab.space.spec)
    answers = []
    for _ in range(n):
        trial = study.ask()
        config = tab.space(trial)
        i, d = tab.answer(config, trial.params)
        answers.append((i, d))
        row = tab.rows.loc[i]
        if row["status"] == "complete":
            study.tell(trial, [float(row[o.metric]) for o in tab.objectives])
        elif row["status"] == "infeasible":
            study.tell(trial, [0.0 if o.mode == "max" else WORST_COST for o in tab.objectives])
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return answers


@dataclass
class Scorer:
    """Hypervolume and budget-pick regret of a set of table rows."""

    tab: Table
    tolerance: Any = "auto"
    """``best``'s ``--tolerance``: ``auto`` (its default), or 0 for the plain ranking."""
    reference: np.ndarray = field(init=False)
    full: float = field(init=False)
    budgets: list[float] = field(init=False)
    best_within: list[float] = field(init=False)

    def __post_init__(self) -> None:
        from peft_search.reports.fronts import completed

        done = completed(self.tab.rows, self.tab.objectives)
        points = self._points(done)
        self.reference = np.append([0.0], points[:, 1:].max(axis=0) * 1.1)
        self.full = self._hv(points)
        params = done["trainable_params"].astype(float)
        self.budgets = [float(params.quantile(q)) for q in (0.25, 0.5, 0.75)]
        self.best_within = [float(done.loc[params <= b, "accuracy"].max()) for b in self.budgets]

    def _points(self, done: pd.DataFrame) -> np.ndarray:
        cols = []
        for o in self.tab.objectives:
            v = done[o.metric].astype(float).to_numpy()
            cols.append(-v if o.mode == "max" else v)
        return np.column_stack(cols) if cols else np.empty((0, 0))

    def _hv(self, points: np.ndarray) -> float:
        from peft_search.search.results.pareto import hypervolume

        # Accuracy is maximised: its reference is 0, i.e. -0 in the minimised form.
        return hypervolume(points, self.reference)

    def hypervolume(self, rows: Sequence[int]) -> float:
        from peft_search.reports.fronts import completed

        done = completed(self.tab.rows.loc[sorted(set(rows))], self.tab.objectives)
        return self._hv(self._points(done)) / self.full if len(done) else 0.0

    def regret(self, rows: Sequence[int]) -> float:
        return float(np.mean(self.lost(rows)))

    def picks(self, rows: Sequence[int], budget: float) -> bool:
        """Whether any complete trial of ``rows`` fits the parameter budget."""
        from peft_search.reports.fronts import completed

        done = completed(self.tab.rows.loc[sorted(set(rows))], self.tab.objectives)
        return bool((done["trainable_params"].astype(float) <= budget).any())

    def lost(self, rows: Sequence[int]) -> list[float]:
        """Per budget, the accuracy the pick loses against the table's best within it (all of it: no pick)."""
        from peft_search.reports.choice import Limit, choose_best

        trials = self.tab.rows.loc[sorted(set(rows))]
        lost = []
        for budget, best in zip(self.budgets, self.best_within, strict=True):
            choice = choose_best(
                trials,
                self.tab.objectives,
                [Limit("trainable_params", "<=", budget)],
                tolerance=self.tolerance,
                correct=self.tab.correct,
            )
            picked = 0.0 if choice.trial is None else float(choice.trial["accuracy"])
            lost.append(best - picked if choice.trial is not None else best)
        return lost


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its 95 % t interval."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2 or float(x.std()) == 0.0:
        return mean, mean, mean
    low, high = stats.t.interval(0.95, len(x) - 1, loc=mean, scale=stats.sem(x))
    return mean, float(low), float(high)


def run(
    tab: Table, names: Sequence[str], trials: Sequence[int], repeats: int, repeats_by_name: dict[str, int]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    makers: dict[str, Any] = samplers()
    unavailable: dict[str, str] = {}
    if "auto" in names:
        auto = auto_sampler()
        if isinstance(auto, str):
            unavailable["auto"] = auto
        else:
            makers["auto"] = auto
    scorer, top = Scorer(tab), Scorer(tab, tolerance=0)
    summary = []
    for name in names:
        if name not in makers:
            continue
        for n in trials:
            t0 = time.perf_counter()
            hv, regret, regret0, no_pick, distinct, dist, exact = [], [], [], [], [], [], []
            for seed in range(SEED_OFFSET, SEED_OFFSET + repeats_by_name.get(name, repeats)):
                answers = replay(tab, makers[name], seed, n)
                rows = [i for i, _ in answers]
                hv.append(scorer.hypervolume(rows))
                lost = scorer.lost(rows)
                regret.append(float(np.mean(lost)))
                no_pick.append(float(np.mean([not scorer.picks(rows, b) for b in scorer.budgets])))
                regret0.append(top.regret(rows))
                distinct.append(len(set(rows)))
                dist.append(float(np.mean([d for _, d in answers])))
                exact.append(float(np.mean([d < 1 for _, d in answers])))
            mean_hv, hv_low, hv_high = interval(hv)
            mean_r, r_low, r_high = interval(regret)
            summary.append(
                {
                    "sampler": name,
                    "trials": n,
                    "repeats": len(hv),
                    "hv": mean_hv,
                    "hv_low": hv_low,
                    "hv_high": hv_high,
                    "regret": mean_r,
                    "regret_low": r_low,
                    "regret_high": r_high,
                    "regret_tolerance_0": float(np.mean(regret0)),
                    "no_pick": float(np.mean(no_pick)),
                    "distinct_rows": float(np.mean(distinct)),
                    "mean_distance": float(np.mean(dist)),
                    "exact": float(np.mean(exact)),
                    "seconds": round(time.perf_counter() - t0, 1),
                    "hv_runs": hv,
                    "regret_runs": regret,
                }
            )
            print(
                f"{name:>16} N={n:<3} hv {mean_hv:.3f} ({hv_low:.3f}, {hv_high:.3f})  regret {mean_r:.4f} "
                f"({r_low:.4f}, {r_high:.4f})  {summary[-1]['seconds']} s",
                flush=True,
            )
    _against(summary, "random")
    return summary, unavailable


def _against(summary: list[dict[str, Any]], baseline: str) -> None:
    """Each sampler against ``baseline`` at the same N: ratios of the means, and the paired difference (the same
    seeds: a TPE search and a random one share their random start) with its 95 % interval."""
    base = {s["trials"]: s for s in summary if s["sampler"] == baseline}
    for s in summary:
        b = base.get(s["trials"])
        if b is None:
            continue
        s["hv_ratio"] = s["hv"] / b["hv"] if b["hv"] else math.nan
        s["regret_ratio"] = s["regret"] / b["regret"] if b["regret"] else math.nan
        k = min(len(s["hv_runs"]), len(b["hv_runs"]))
        hv_d = np.subtract(s["hv_runs"][:k], b["hv_runs"][:k])
        r_d = np.subtract(s["regret_runs"][:k], b["regret_runs"][:k])
        s["hv_diff"], s["hv_diff_low"], s["hv_diff_high"] = interval(hv_d)
        s["regret_diff"], s["regret_diff_low"], s["regret_diff_high"] = interval(r_d)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=str(DEFAULT_TABLE))
    parser.add_argument("--samplers", nargs="+", default=[*samplers(), "auto"])
    parser.add_argument("--trials", nargs="+", type=int, default=list(TRIALS))
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument(
        "--gp-repeats", type=int, default=None, help="fewer repeats for the GP sampler (slow per trial)"
    )
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    tab = Table.load(args.table)
    by_name = {"gp": args.gp_repeats} if args.gp_repeats else {}
    summary, unavailable = run(tab, args.samplers, args.trials, args.repeats, by_name)
    scorer = Scorer(tab)
    result = {
        "benchmark": "sampler_replay",
        "command": "python -m benchmarks.sampler_replay " + " ".join(sys.argv[1:] if argv is None else argv),
        "table": str(args.table),
        "table_rows": len(tab.rows),
        "machine": machine(),
        "budgets": scorer.budgets,
        "best_within_budgets": scorer.best_within,
        "unavailable": unavailable,
        "summary": summary,
    }
    path = write_result(f"sampler_replay-{Path(args.table).stem}", result, args.out_dir)
    cols = ["sampler", "trials", "repeats", "hv", "hv_low", "hv_high", "regret", "regret_low", "regret_high"]
    print(table(summary, cols + ["hv_ratio", "regret_ratio", "no_pick", "distinct_rows", "exact", "seconds"]))
    for name, why in unavailable.items():
        print(f"{name}: not run ({why})")
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    main()
