"""Builders for report tests: typed trial records, and the pieces of a rendered page."""

from __future__ import annotations

from peft_search.search.results.records import TrialResult


def record(
    trial_id: str,
    status: str = "complete",
    method: str = "lora",
    *,
    repeat_of: str | None = None,
    seed: int | None = None,
    **metrics: float,
) -> TrialResult:
    """A trial with a real PEFT-shaped config; ``metrics`` keyed by registry names."""
    return TrialResult(
        trial_id=trial_id,
        status=status,
        method=method,
        quantization="none",
        learning_rate=1e-3,
        peft_config={"peft_type": method.upper(), "task_type": "SEQ_CLS", "r": 8},
        candidate="sampled",
        optuna_trial=int(trial_id[1:]) if trial_id[1:].isdigit() else None,  # t3 -> 3
        error="" if status == "complete" else "RuntimeError: boom",
        metrics=metrics if status == "complete" else {},
        info={"peak_memory_kind": "cpu_rss"} if "peak_memory_bytes" in metrics else {},
        wall_time_s=10.0,
        repeat_of=repeat_of,
        seed=seed,
    )


def figure_json(page: str, chart_id: str) -> str:
    """The plotly call of one chart section of a page (its data and layout, as JSON text)."""
    start = page.index(f'<section class="chart" id="{chart_id}">')
    return page[start : page.index("</section>", start)]
