"""The report page's HTML skeleton, style and script (``str.format`` fields; literal braces doubled).

The script reads the JSON block ``picker-data`` (the objectives and the complete trials' values) and ranks as
``reports.choice.choose_best`` does; the trials table sorts on its cells' ``data-v`` values.
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
h1 {{ font-size: 1.5rem; }} h2 {{ font-size: 1.2rem; margin-top: 2rem; }}
table.data, table.facts {{ border-collapse: collapse; font-size: 0.85rem; }}
table.data th, table.data td, table.facts th, table.facts td {{ border: 1px solid #ddd; padding: 3px 6px; text-align: left; }}
table.data th {{ background: #f3f3f3; cursor: pointer; position: sticky; top: 0; }}
td.cfg {{ font-family: monospace; font-size: 0.75rem; min-width: 22rem; max-width: 40rem; word-break: break-all; }}
tr.status-failed {{ background: #fde8e8; }} tr.status-infeasible {{ background: #fff4d6; }}
tr.status-stopped_early {{ background: #eef2f7; }}
.chart {{ margin: 1rem 0; }} .how-to-read {{ color: #555; margin: 0.2rem 0; }} #picker label {{ margin-right: 1rem; }} #choice {{ font-family: monospace; white-space: pre-wrap; }}
</style>
<script>{plotlyjs}</script>
</head><body>
<h1>{title}</h1>
<h2>Run facts</h2><table class="facts">{facts}</table>
<h2>Budget picker</h2>
<div id="picker">
{picker_inputs}
<p id="choice"></p>
<p>Same rule as <code>peft-search best</code>: {rule}.</p>
</div>
{race}<h2>Pareto fronts ({front_count} non-dominated trials over {objective_names})</h2>
{charts}
<p>{importance_note}</p>
<h2>Per method</h2>{summary}
<p>The cheapest near the best: the trial best on the second objective among those within one point (a fraction)
or 1 % (any other metric) of the method's best first objective.</p>
<p>{estimate}</p>
<h2>All trials</h2>
<p><label>filter <input id="filter" type="search" placeholder="method, status, error..."></label>
<span id="shown"></span></p>
{table}
<script type="application/json" id="picker-data">{data}</script>
<script>
(function () {{
  const picker = JSON.parse(document.getElementById("picker-data").textContent);
  const objectives = picker.objectives;
  const limit = (o) => {{ const v = document.getElementById(o.id).value; return v === "" ? null : Number(v) * o.scale; }};
  function choose() {{
    const limits = objectives.map(limit);
    const ok = picker.trials.filter((t) => objectives.every((o, i) => limits[i] === null ||
      (o.mode === "min" ? t.values[i] <= limits[i] : t.values[i] >= limits[i])));
    ok.sort((a, b) => {{
      for (let i = 0; i < objectives.length; i++) {{
        const d = (a.values[i] - b.values[i]) * (objectives[i].mode === "max" ? -1 : 1);
        if (d) return d;
      }}
      return a.trial_id < b.trial_id ? -1 : a.trial_id > b.trial_id ? 1 : 0;
    }});
    const out = document.getElementById("choice");
    if (!ok.length) {{ out.textContent = "No complete trial meets these limits."; out.dataset.trial = ""; return; }}
    // tolerance auto: the trials the paired test cannot tell from the best one, then the cheapest of them.
    const top = ok[0], tests = picker.pvalues[top.trial_id];
    let tied = [top];
    if (document.getElementById("tolerance").value === "auto" && tests)
      tied = ok.filter((t) => (tests[t.trial_id] ?? 0) >= picker.alpha);
    const sign = picker.prefer_mode === "max" ? -1 : 1;
    const t = tied.slice().sort((a, b) => ((a.cost ?? Infinity) - (b.cost ?? Infinity)) * sign ||
      ok.indexOf(a) - ok.indexOf(b))[0];
    out.dataset.trial = t.trial_id;
    out.dataset.top = top.trial_id;
    let text = "Pick: trial " + t.trial_id + " (" + t.method + ", " + t.quantization + ")  " + t.text;
    if (t !== top) text += "\\nBest on the objectives alone: trial " + top.trial_id + "  " + top.text +
      "\\n  p = " + tests[t.trial_id].toPrecision(3) + " (" + picker.test + "): not significantly better; " +
      tied.length + " trials tie with it";
    out.textContent = text + "\\n" + t.peft_config;
  }}
  document.getElementById("tolerance").addEventListener("change", choose);
  objectives.forEach((o) => document.getElementById(o.id).addEventListener("input", choose));
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
  // A trial's "curve" link shows its learning curve (hidden in the legend unless it is on the front).
  table.addEventListener("click", (e) => {{
    const link = e.target.closest("a.curve-link"); if (!link) return;
    const plot = document.getElementById("curves-plot"); if (!plot || !plot.data) return;
    const idx = plot.data.map((t, i) => (t.meta === link.dataset.trial ? i : -1)).filter((i) => i >= 0);
    if (idx.length) Plotly.restyle(plot, {{visible: true}}, idx);
  }});
}})();
</script>
</body></html>
"""
