"""The self-contained HTML report: one file, plotly.js embedded once, no network requests, all text escaped.

The data is computed once (``reports.data``); this module lays it out: charts, picker, tables, run facts.
"""

from __future__ import annotations

import errno
import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from peft_search.reports import charts
from peft_search.reports.choice import auto_rule, prefer_metric, rule_text
from peft_search.reports.data import ReportData, report_data
from peft_search.reports.importance import Importances, importances
from peft_search.reports.page import PAGE
from peft_search.reports.race import read_race
from peft_search.reports.table import estimate_error
from peft_search.search.results.layout import REPORT_FILE, ResultsDir, replacing
from peft_search.search.results.lock import progress_note
from peft_search.search.results.metrics import Objective, get_metric
from peft_search.search.results.noise import ALPHA, TEST
from peft_search.search.results.race import RaceState
from peft_search.search.results.records import metric_columns
from peft_search.search.results.repeats import fold_repeats

__all__ = ["REPORT_FILE", "build_report", "write_report"]


def _json_for_script(value: Any) -> str:
    """JSON that is safe inside a <script> element (no `</script>` or comment openers can close it)."""
    return (
        json.dumps(value, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _metric_cell(name: str, value: Any) -> str:
    if _missing(value):
        return '<td data-v="">-</td>'
    return f'<td data-v="{float(value)}">{html.escape(get_metric(name).format(value))}</td>'


def _cell(column: str, value: Any) -> str:
    if _missing(value):
        return '<td data-v="">-</td>'
    if isinstance(value, float):
        fmt = ".3g" if column == "learning_rate" else ".1f"
        return f'<td data-v="{value}">{format(value, fmt)}</td>'
    cls = ' class="cfg"' if column in ("peft_config", "error") else ""
    return f"<td{cls}>{html.escape(str(value))}</td>"


_LEADING = [("trial_id", "trial"), ("status", "status"), ("method", "method"), ("quantization", "quant")]
_TRAILING = [
    ("learning_rate", "lr"),
    ("wall_time_s", "wall s"),
    ("peft_config", "PEFT config"),
    ("error", "error"),
]


def _curve_cell(trial_id: str, curves: Sequence[str]) -> str:
    if trial_id not in curves:
        return "<td>-</td>"
    tid = html.escape(trial_id)
    return f'<td><a href="#curves" class="curve-link" data-trial="{tid}">curve</a></td>'


def trials_table(trials: pd.DataFrame, curves: Sequence[str] = ()) -> str:
    """Every trial, with every registry metric the table has (headed by its label), sortable and filterable;
    a trial with a learning curve in the report links to it (``curves``: their trial ids)."""
    names = metric_columns(list(trials.columns))
    labels = (
        [label for _, label in _LEADING]
        + [get_metric(n).label for n in names]
        + [label for _, label in _TRAILING]
        + ["learning curve"]
    )
    head = "".join(f'<th data-col="{i}">{html.escape(label)}</th>' for i, label in enumerate(labels))
    rows = []
    for row in trials.to_dict("records"):
        cells = "".join(_cell(c, row.get(c)) for c, _ in _LEADING)
        cells += "".join(_metric_cell(n, row.get(n)) for n in names)
        cells += "".join(_cell(c, row.get(c)) for c, _ in _TRAILING)
        cells += _curve_cell(str(row.get("trial_id")), curves)
        rows.append(f'<tr class="status-{html.escape(str(row.get("status")))}">{cells}</tr>')
    return f'<table id="trials" class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def methods_table(summary: pd.DataFrame) -> str:
    """The per-method summary, its metric columns (``best_accuracy``) headed by label, shown by their format."""

    def split(column: str) -> tuple[str, str]:
        kind, _, name = column.partition("_")
        return (kind, name) if kind in ("best", "cheapest") and name != "trial" else ("", column)

    def heading(column: str) -> str:
        kind, name = split(column)
        if kind:
            return f"{'best' if kind == 'best' else 'its'} {get_metric(name).label}"
        return "cheapest near the best" if column == "cheapest_trial" else column

    def text(column: str, value: Any) -> str:
        kind, name = split(column)
        return get_metric(name).format(value) if kind and not _missing(value) else str(value)

    head = "".join(f"<th>{html.escape(heading(c))}</th>" for c in summary.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(text(c, v))}</td>" for c, v in row.items()) + "</tr>"
        for row in summary.to_dict("records")
    )
    return f'<table id="methods" class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def picker_id(objective: Objective) -> str:
    """``max-peak_memory_bytes`` for a minimised metric (its limit is a maximum), ``min-accuracy`` for a maximised."""
    return f"{'max' if objective.mode == 'min' else 'min'}-{objective.metric}"


def picker(data: ReportData) -> tuple[str, dict[str, Any]]:
    """One limit per objective (bytes entered in MiB), and the data the page's script ranks."""
    inputs, spec = [], []
    for o in data.objectives:
        metric, bound = o.spec, "max" if o.mode == "min" else "min"
        mib = metric.unit == "bytes"
        extra = ' max="1"' if metric.unit == "fraction" else ""
        label = f"{bound} {metric.label}" + (" (MiB)" if mib else "")
        inputs.append(
            f'<label>{html.escape(label)} <input id="{picker_id(o)}" type="number" min="0"{extra} step="any"></label>'
        )
        spec.append({"id": picker_id(o), "mode": o.mode, "scale": 2**20 if mib else 1})
    cost = prefer_metric(None, data.objectives)
    first = data.objectives[0]
    inputs.append(
        '<label>tolerance <select id="tolerance"><option value="auto" selected>auto</option>'
        '<option value="0">0</option></select></label>'
    )
    trials = [
        {
            "trial_id": str(r["trial_id"]),
            "cost": float(r[cost]) if cost in r and pd.notna(r[cost]) else None,
            "method": str(r.get("method")),
            "quantization": str(r.get("quantization")),
            "values": [float(r[o.metric]) for o in data.objectives],
            "text": "  ".join(f"{o.spec.label} {o.spec.format(r[o.metric])}" for o in data.objectives),
            "peft_config": str(r.get("peft_config")),
        }
        for r in data.complete.to_dict("records")
    ]
    paired = first.metric == "accuracy" and bool(data.pvalues)
    return "\n".join(inputs), {
        "objectives": spec,
        "trials": trials,
        "pvalues": data.pvalues if paired else {},
        "alpha": ALPHA,
        "prefer_mode": get_metric(cost).direction,
        "test": TEST,
    }


def picker_rule(data: ReportData) -> str:
    """The picker's rule in words: ``best``'s, tolerance auto unless the page is set to 0."""
    head, ties = rule_text(data.objectives)
    cost = get_metric(prefer_metric(None, data.objectives))
    if data.objectives[0].metric == "accuracy" and data.pvalues:
        auto = html.escape(auto_rule(cost, ALPHA))
    else:
        auto = "tolerance auto falls back to 0 here (no per-row held-out predictions)"
    return f"{auto}; tolerance 0: the {html.escape(head + ties)}, then the earlier trial id"


def _trial_counts(trials: pd.DataFrame) -> str:
    """``12 (9 complete, 2 stopped_early, 1 failed)``."""
    if "status" not in trials or trials.empty:
        return str(len(trials))
    counts = trials["status"].value_counts()
    order = ["complete", *sorted(set(counts.index) - {"complete"})]
    return f"{len(trials)} (" + ", ".join(f"{int(counts.get(k, 0))} {k}" for k in order) + ")"


def _early_stopping_fact(facts: dict, trials: pd.DataFrame) -> str:
    """The rule and its rungs, and the training time the stopped trials did not spend."""
    es = facts.get("early_stopping") or {}
    if es.get("rule", "none") == "none":
        return "none"
    ranked = f", ranked on {', '.join(es['objectives'])}" if es.get("objectives") else ""
    line = f"{es['rule']} (rungs at steps {es.get('rungs')}, reduction factor {es.get('reduction_factor')}{ranked})"
    if "stopped_at_step" in trials and "status" in trials:
        stopped = trials[trials["status"] == "stopped_early"]
        steps = facts.get("train_steps")
        if len(stopped) and steps:
            saved = float((1 - stopped["stopped_at_step"].astype(float) / steps).sum())
            line += f"; {len(stopped)} stopped early, {saved:.1f} trials' worth of training steps saved"
    return line


def _repeats_fact(facts: dict, trials: pd.DataFrame) -> str:
    """``top 3 x 3 seeds: 9 repeat runs; each repeated config shows its mean over its runs``."""
    r = facts.get("repeats")
    if not r:
        return "none"
    runs = int(trials["repeat_of"].notna().sum()) if "repeat_of" in trials else 0
    return (
        f"top {r['top']} x {r['seeds']} seeds: {runs} repeat runs; a repeated config's point is its mean over its "
        "runs, its error bar the 95 % t-interval of that mean"
    )


def _race_fact(facts: dict) -> str:
    """``budget 0.25 of the search's compute, alpha 0.05, margin 0.01, at most 5 rounds`` (the race itself below)."""
    r = facts.get("race")
    if not r:
        return "none"
    return (
        f"budget {r['budget']:g} of the search's compute, alpha {r['alpha']:g}, margin {r['margin']:g}, at most "
        f"{r['max_rounds']} rounds (the race section has it)"
    )


def _names(objectives: Sequence[Objective]) -> str:
    labels = [o.spec.label for o in objectives]
    return " and ".join([", ".join(labels[:-1]), labels[-1]]) if len(labels) > 1 else labels[0]


def _facts(facts: dict[str, Any], data: ReportData) -> str:
    complete = data.complete
    rows = {
        "search": facts.get("name"),
        "base model": facts.get("model"),
        "task": facts.get("task"),
        "dataset": facts.get("dataset"),
        "splits": f"{facts.get('train_examples', '?')} train / {facts.get('eval_examples', '?')} held out",
        "labels": ", ".join(map(str, facts.get("label_names", []))),
        "objectives": ", ".join(f"{o.metric} ({o.mode})" for o in data.objectives),
        "sampler": facts.get("sampler"),
        "trials": _trial_counts(data.trials),
        "early stopping": _early_stopping_fact(facts, data.trials),
        "seed repeats": _repeats_fact(facts, data.trials),
        "race": _race_fact(facts),
        "concurrency": facts.get("concurrency"),
        "hardware": hardware_text(facts.get("cluster_resources", {})),
        "platform": facts.get("platform"),
        "wall time": f"{facts['wall_time_s']:.0f} s"
        if "wall_time_s" in facts
        else facts.get("progress", "running"),
        "total train time": f"{complete['train_time_s'].sum():.0f} s" if "train_time_s" in complete else "-",
        "versions": ", ".join(f"{k} {v}" for k, v in facts.get("versions", {}).items()),
    }
    return "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items()
    )


def hardware_text(resources: dict[str, Any]) -> str:
    """Ray's cluster resources in words: ``2 CPUs, 21.5 GiB memory, 1 GPU (NVIDIA H100)``."""
    parts = []
    for key, word in (("CPU", "CPU"), ("GPU", "GPU")):
        n = resources.get(key)
        if n:
            parts.append(f"{n:g} {word}{'s' if float(n) != 1 else ''}")
    if resources.get("memory"):
        parts.append(f"{get_metric('peak_memory_bytes').format(float(resources['memory']))} memory")
    accelerators = sorted(
        k.removeprefix("accelerator_type:") for k in resources if k.startswith("accelerator_type:")
    )
    if accelerators:
        parts.append(", ".join(accelerators))
    return ", ".join(parts) or "-"


def _estimate_line(complete: pd.DataFrame) -> str:
    errors = [e for e in (estimate_error(r) for r in complete.to_dict("records")) if e is not None]
    if not errors:
        return "No memory estimates recorded."
    return (
        f"Memory estimate vs measured peak: mean error {sum(errors) / len(errors):+.0%}, "
        f"worst {max(errors, key=abs):+.0%} over {len(errors)} trials"
    )


def race_section(race: RaceState | None, trials: pd.DataFrame) -> str:
    """The race of tied configs (``search.race``): each config's accuracy per seed, and when it was dropped."""
    if race is None:
        return ""
    if len(race.entrants) < 2:
        return "<h2>Race</h2><p>No config tied with the most accurate one: nothing to race.</p>"
    by_id = {str(t["trial_id"]): t for _, t in trials.iterrows()}
    dropped = {e.trial_id: e for e in race.eliminations}
    head = "".join(f"<th>seed {int(s)}</th>" for s in race.seeds)
    rows = []
    for trial_id in race.entrants:
        t = by_id.get(trial_id, {})
        name = f"{trial_id} ({t.get('method', '?')}, {t.get('quantization', '?')})"
        cells = "".join(
            f"<td>{'' if a is None else f'{a:.4f}'}</td>" for a in race.accuracy.get(trial_id, ())
        )
        e = dropped.get(trial_id)
        fate = (
            f"dropped after round {e.round}: {100 * e.gap:.1f} points below the leader, p = {e.p_value:.3g}"
            if e is not None
            else "left"
        )
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}<td>{html.escape(fate)}</td></tr>")
    return (
        "<h2>Race</h2>"
        f"<p>{html.escape(race.detail)}</p>"
        f'<table class="race"><tr><th>config</th>{head}<th>in the race</th></tr>{"".join(rows)}</table>'
    )


def render(
    data: ReportData,
    facts: dict[str, Any],
    importance: Importances | None = None,
    race: RaceState | None = None,
) -> str:
    """The page for precomputed data (``reports.data.report_data``), the run facts and the race, if any."""
    from plotly.offline import get_plotlyjs

    figures = charts.figures(data)
    if importance is not None and importance.values:
        figures.append(("importance", charts.importance_figure(importance.values, importance.n_trials)))
    divs = "\n".join(
        f'<section class="chart" id="{cid}">'
        + f'<p class="how-to-read">{html.escape(charts.how_to_read(cid, data))}</p>'
        + fig.to_html(
            full_html=False, include_plotlyjs=False, config={"displaylogo": False}, div_id=f"{cid}-plot"
        )
        + "</section>"
        for cid, fig in figures
    )
    inputs, picker_data = picker(data)
    title = html.escape(f"peft-search report: {facts.get('name', '')}")
    return PAGE.format(
        title=title,
        plotlyjs=get_plotlyjs(),
        facts=_facts(facts, data),
        picker_inputs=inputs,
        rule=picker_rule(data),
        race=race_section(race, data.trials),
        front_count=len(data.front),
        objective_names=html.escape(_names(data.objectives)),
        charts=divs,
        importance_note=html.escape(importance.note) if importance is not None and importance.note else "",
        summary=methods_table(data.methods),
        estimate=html.escape(_estimate_line(data.complete)),
        table=trials_table(data.trials, list(data.curves)),
        data=_json_for_script(picker_data),
    )


def build_report(search_dir: str | Path) -> str:
    """The whole page as a string. Reads the results directory only; computes its data once."""
    results = ResultsDir(search_dir)
    trials, objectives = fold_repeats(results.read_trials()), results.objectives()
    facts = {"name": results.name, **results.read_facts()}
    facts["progress"] = progress_note(search_dir, "wall_time_s" in facts)
    data = report_data(trials, objectives, results.correct_by_trial())
    return render(data, facts, importances(results, trials, objectives), read_race(search_dir))


_REPORT_MARK = b"<title>peft-search report"
"""How a page this module wrote begins (``reports.page``'s title): the only file ``write_report`` replaces."""


def write_report(search_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the page atomically (a reader mid-search never sees half of it); by default into the search's
    directory as ``report.html``; ``out`` a directory (as with ``cp``): ``report.html`` in it."""
    path = Path(out) if out else Path(search_dir) / REPORT_FILE
    if path.is_dir():
        path = path / REPORT_FILE
    elif str(out or "").endswith(("/", os.sep)):
        raise FileNotFoundError(errno.ENOENT, "no such directory; create it first", str(out))
    elif path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file, not a directory; give another -o", str(path.parent))
    elif not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory; create it first", str(path.parent))
    if out and path.is_file() and _REPORT_MARK not in path.read_bytes()[:2048]:
        # -o replaces a report (one an earlier -o wrote), never a user's other file.
        raise FileExistsError(
            errno.EEXIST, "exists and is not a peft-search report; give another -o", str(path)
        )
    page = build_report(search_dir)
    with replacing(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
