"""The self-contained HTML report: one file, plotly.js embedded once, no network requests, all text escaped."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from reports import charts
from reports.fronts import method_summary, pareto_front, reference_point
from reports.table import estimate_error, human, load_trials

REPORT_FILE = "report.html"
_TABLE_COLUMNS = [
    ("trial_id", "trial"),
    ("status", "status"),
    ("method", "method"),
    ("quantization", "quant"),
    ("accuracy", "accuracy"),
    ("eval_loss", "eval loss"),
    ("trainable_params", "trainable"),
    ("peak_memory_bytes", "peak memory"),
    ("est_peak_memory_bytes", "est. memory"),
    ("learning_rate", "lr"),
    ("train_time_s", "train s"),
    ("wall_time_s", "wall s"),
    ("samples_per_s", "samples/s"),
    ("adapter_bytes", "adapter"),
    ("peft_config", "PEFT config"),
    ("error", "error"),
]


def _json_for_script(value: Any) -> str:
    """JSON that is safe inside a <script> element (no `</script>` or comment openers can close it)."""
    return (
        json.dumps(value, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td data-v="">-</td>'
    if column in ("trainable_params", "peak_memory_bytes", "est_peak_memory_bytes", "adapter_bytes"):
        text = human(float(value), "" if column == "trainable_params" else "B")
        return f'<td data-v="{float(value)}">{html.escape(text)}</td>'
    if isinstance(value, float):
        fmt = ".3g" if column == "learning_rate" else ".4f" if column in ("accuracy", "eval_loss") else ".1f"
        return f'<td data-v="{value}">{format(value, fmt)}</td>'
    text = str(value)
    cls = ' class="cfg"' if column in ("peft_config", "error") else ""
    return f"<td{cls}>{html.escape(text)}</td>"


def _trials_table(trials: pd.DataFrame) -> str:
    head = "".join(
        f'<th data-col="{i}">{html.escape(label)}</th>' for i, (_, label) in enumerate(_TABLE_COLUMNS)
    )
    rows = []
    for _, row in trials.iterrows():
        cells = "".join(_cell(col, row.get(col)) for col, _ in _TABLE_COLUMNS)
        rows.append(f'<tr class="status-{html.escape(str(row.get("status")))}">{cells}</tr>')
    return f'<table id="trials" class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _simple_table(frame: pd.DataFrame, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(False)
    )
    return f'<table id="{table_id}" class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


# Infeasible configs complete in Optuna with this cost on every minimised metric (search.infeasible.WORST_COST),
# for the sampler's sake; they say nothing about what drives a trained adapter's metrics.
_INFEASIBLE_COST = 2.0**50


def _trial_counts(trials: pd.DataFrame) -> str:
    """``12 (9 complete, 2 stopped, 1 failed)``."""
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
    line = f"{es['rule']} (rungs at steps {es.get('rungs')}, reduction factor {es.get('reduction_factor')})"
    if "stopped_at_step" in trials and "status" in trials:
        stopped = trials[trials["status"] == "stopped"]
        steps = facts.get("train_steps")
        if len(stopped) and steps:
            saved = float((1 - stopped["stopped_at_step"].astype(float) / steps).sum())
            line += f"; {len(stopped)} stopped, {saved:.1f} trials' worth of training steps saved"
    return line


def _importances(search_dir: Path, facts: dict[str, Any]) -> tuple[dict[str, dict[str, float]], str, int]:
    """Optuna's parameter importances per objective, over the sampled trials (explicit candidates have no
    sampled parameters)."""
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study = optuna.load_study(study_name=facts["name"], storage=f"sqlite:///{search_dir / 'optuna.db'}")
        sampled = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE" and "method" in t.params and max(t.values) < _INFEASIBLE_COST
        ]
        if len(sampled) < 3:
            return (
                {},
                f"Parameter importance needs at least 3 complete sampled trials (has {len(sampled)}).",
                0,
            )
        objectives = facts.get("objectives") or [{"metric": "objective", "mode": "min"}]
        out = {}
        for i, o in enumerate(objectives):
            # Optuna's default evaluator rates what drives the target low: negate objectives to maximise.
            sign = -1.0 if o["mode"] == "max" else 1.0
            out[o["metric"]] = optuna.importance.get_param_importances(
                study, params=["method", "learning_rate"], target=lambda t, i=i, s=sign: s * t.values[i]
            )
        return out, "", len(sampled)
    except Exception as err:  # importance is a nicety: a report must render without it
        return {}, f"Parameter importance not available ({type(err).__name__}: {err}).", 0


def build_report(search_dir: str | Path) -> str:
    """The whole page as a string. Reads the results directory only."""
    from plotly.offline import get_plotlyjs

    search_dir = Path(search_dir)
    trials = load_trials(search_dir)
    facts_path = search_dir / "run.json"
    facts = json.loads(facts_path.read_text()) if facts_path.exists() else {"name": search_dir.name}
    ref = reference_point(trials)
    figures = [
        ("pareto-params", charts.pareto_scatter(trials, "trainable_params", log_x=True)),
        ("pareto-memory", charts.pareto_scatter(trials, "peak_memory_bytes")),
        ("three-objectives", charts.scatter_3d(trials)),
        ("hypervolume", charts.hypervolume_figure(trials, ref)),
        ("parallel", charts.parallel_coordinates(trials)),
    ]
    importances, importance_note, n_sampled = _importances(search_dir, facts)
    if importances:
        figures.append(("importance", charts.importance_figure(importances, n_sampled)))
    divs = "\n".join(
        f'<section class="chart" id="{cid}">'
        + fig.to_html(
            full_html=False, include_plotlyjs=False, config={"displaylogo": False}, div_id=f"{cid}-plot"
        )
        + "</section>"
        for cid, fig in figures
    )
    complete = trials[trials["status"] == "complete"] if "status" in trials else trials
    front = pareto_front(trials)
    picker_data = [
        {
            "trial_id": str(r["trial_id"]),
            "method": str(r["method"]),
            "quantization": str(r["quantization"]),
            "accuracy": float(r["accuracy"]),
            "trainable_params": float(r["trainable_params"]),
            "peak_memory_bytes": float(r["peak_memory_bytes"]),
            "peft_config": str(r["peft_config"]),
        }
        for _, r in complete.iterrows()
        if pd.notna(r.get("accuracy"))
        and pd.notna(r.get("trainable_params"))
        and pd.notna(r.get("peak_memory_bytes"))
    ]
    errors = [e for e in (estimate_error(r) for _, r in complete.iterrows()) if e is not None]
    est_line = (
        f"Memory estimate vs measured peak: mean error {sum(errors) / len(errors):+.0%}, "
        f"worst {max(errors, key=abs):+.0%} over {len(errors)} trials"
        if errors
        else "No memory estimates recorded."
    )
    fact_rows = {
        "search": facts.get("name"),
        "base model": facts.get("model"),
        "task": facts.get("task"),
        "dataset": facts.get("dataset"),
        "splits": f"{facts.get('train_examples', '?')} train / {facts.get('eval_examples', '?')} held out",
        "labels": ", ".join(map(str, facts.get("label_names", []))),
        "objectives": ", ".join(f"{o['metric']} ({o['mode']})" for o in facts.get("objectives", [])),
        "sampler": facts.get("sampler"),
        "trials": _trial_counts(trials),
        "early stopping": _early_stopping_fact(facts, trials),
        "concurrency": facts.get("concurrency"),
        "hardware": json.dumps(facts.get("cluster_resources", {})),
        "platform": facts.get("platform"),
        "wall time": f"{facts['wall_time_s']:.0f} s" if "wall_time_s" in facts else "running",
        "total train time": f"{complete['train_time_s'].sum():.0f} s" if "train_time_s" in complete else "-",
        "versions": ", ".join(f"{k} {v}" for k, v in facts.get("versions", {}).items()),
    }
    facts_html = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in fact_rows.items()
    )
    title = html.escape(f"peft-search report: {facts.get('name', search_dir.name)}")
    return _PAGE.format(
        title=title,
        plotlyjs=get_plotlyjs(),
        facts=facts_html,
        summary=_simple_table(method_summary(trials), "methods"),
        front_count=len(front),
        charts=divs,
        importance_note=html.escape(importance_note) if importance_note else "",
        estimate=html.escape(est_line),
        table=_trials_table(trials),
        data=_json_for_script(picker_data),
    )


def write_report(search_dir: str | Path, out: str | Path | None = None) -> Path:
    path = Path(out) if out else Path(search_dir) / REPORT_FILE
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(build_report(search_dir), encoding="utf-8")
    tmp.replace(path)
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
h1 {{ font-size: 1.5rem; }} h2 {{ font-size: 1.2rem; margin-top: 2rem; }}
table.data, table.facts {{ border-collapse: collapse; font-size: 0.85rem; }}
table.data th, table.data td, table.facts th, table.facts td {{ border: 1px solid #ddd; padding: 3px 6px; text-align: left; }}
table.data th {{ background: #f3f3f3; cursor: pointer; position: sticky; top: 0; }}
td.cfg {{ font-family: monospace; font-size: 0.75rem; max-width: 40rem; word-break: break-all; }}
tr.status-failed {{ background: #fde8e8; }} tr.status-infeasible {{ background: #fff4d6; }}
tr.status-stopped {{ background: #eef2f7; }}
.chart {{ margin: 1rem 0; }} #picker label {{ margin-right: 1rem; }} #choice {{ font-family: monospace; white-space: pre-wrap; }}
</style>
<script>{plotlyjs}</script>
</head><body>
<h1>{title}</h1>
<h2>Run facts</h2><table class="facts">{facts}</table>
<h2>Budget picker</h2>
<div id="picker">
<label>max peak memory (MiB) <input id="max-memory" type="number" min="0" step="any"></label>
<label>max trainable parameters <input id="max-params" type="number" min="0" step="any"></label>
<label>min accuracy <input id="min-accuracy" type="number" min="0" max="1" step="any"></label>
<p id="choice"></p>
<p>Same rule as <code>peft-search best</code>: the most accurate complete trial within the limits; ties go to fewer
trainable parameters, then lower peak memory, then the earlier trial id.</p>
</div>
<h2>Pareto fronts ({front_count} non-dominated trials over accuracy, trainable parameters and peak memory)</h2>
{charts}
<p>{importance_note}</p>
<h2>Per method</h2>{summary}
<p>{estimate}</p>
<h2>All trials</h2>
<p><label>filter <input id="filter" type="search" placeholder="method, status, error..."></label>
<span id="shown"></span></p>
{table}
<script type="application/json" id="trials-data">{data}</script>
<script>
(function () {{
  const trials = JSON.parse(document.getElementById("trials-data").textContent);
  const num = (id) => {{ const v = document.getElementById(id).value; return v === "" ? null : Number(v); }};
  function choose() {{
    const mem = num("max-memory"), params = num("max-params"), acc = num("min-accuracy");
    const ok = trials.filter((t) => (mem === null || t.peak_memory_bytes <= mem * 1048576) &&
      (params === null || t.trainable_params <= params) && (acc === null || t.accuracy >= acc));
    ok.sort((a, b) => (b.accuracy - a.accuracy) || (a.trainable_params - b.trainable_params) ||
      (a.peak_memory_bytes - b.peak_memory_bytes) || (a.trial_id < b.trial_id ? -1 : a.trial_id > b.trial_id ? 1 : 0));
    const out = document.getElementById("choice");
    if (!ok.length) {{ out.textContent = "No complete trial meets these limits."; out.dataset.trial = ""; return; }}
    const t = ok[0];
    out.dataset.trial = t.trial_id;
    out.textContent = "Best: trial " + t.trial_id + " (" + t.method + ", " + t.quantization + ")  accuracy " +
      t.accuracy.toFixed(4) + "  trainable " + Math.round(t.trainable_params).toLocaleString() + "  peak memory " +
      (t.peak_memory_bytes / 1048576).toFixed(0) + " MiB\\n" + t.peft_config;
  }}
  ["max-memory", "max-params", "min-accuracy"].forEach((id) => document.getElementById(id).addEventListener("input", choose));
  choose();
  const table = document.getElementById("trials");
  const body = table.tBodies[0];
  table.tHead.addEventListener("click", (e) => {{
    const th = e.target.closest("th"); if (!th) return;
    const col = Number(th.dataset.col), asc = th.dataset.dir !== "asc"; th.dataset.dir = asc ? "asc" : "desc";
    // Numeric cells sort by value, text cells by text; cells without a value always go last.
    const key = (tr) => {{ const td = tr.cells[col];
      if (td.dataset.v === undefined) return td.textContent;
      return td.dataset.v === "" ? null : Number(td.dataset.v); }};
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {{ const x = key(a), y = key(b);
      if (x === null || y === null) return (x === null) - (y === null);
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); }});
    rows.forEach((r) => body.appendChild(r));
  }});
  const filter = document.getElementById("filter");
  function applyFilter() {{
    const q = filter.value.toLowerCase(); let n = 0;
    Array.from(body.rows).forEach((r) => {{ const show = r.textContent.toLowerCase().includes(q); r.style.display = show ? "" : "none"; n += show; }});
    document.getElementById("shown").textContent = n + " of " + body.rows.length + " trials shown";
  }}
  filter.addEventListener("input", applyFilter); applyFilter();
}})();
</script>
</body></html>
"""
