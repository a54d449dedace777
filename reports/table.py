"""The trials table of a results directory, and its plain-text summary for the terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

TRIALS_FILE = "trials.parquet"


def load_trials(search_dir: str | Path) -> pd.DataFrame:
    """One row per trial, as the search wrote it."""
    path = Path(search_dir) / TRIALS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{search_dir}: no {TRIALS_FILE}; is this a peft-search results directory?")
    return pd.read_parquet(path)


def human(n: float | None, unit: str = "") -> str:
    if n is None or pd.isna(n):
        return "-"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def estimate_error(row) -> float | None:
    """Relative error of the planned peak memory against the measured one (positive: over-estimate)."""
    est, measured = row.get("est_peak_memory_bytes"), row.get("peak_memory_bytes")
    if est is None or measured is None or pd.isna(est) or pd.isna(measured) or not measured:
        return None
    return float(est) / float(measured) - 1.0


def _num(value, fmt: str) -> str:
    return "-" if value is None or pd.isna(value) else format(value, fmt)


def summary_table(trials: pd.DataFrame) -> str:
    """Fixed-width table of trials, best accuracy first, failures last with their error."""
    if trials.empty:
        return "(no trials)"
    order = trials.assign(_done=trials["status"].eq("complete"))
    if "accuracy" in order:
        order = order.sort_values(["_done", "accuracy"], ascending=[False, False], na_position="last")
    header = f"{'trial':<14}{'status':<11}{'method':<14}{'quant':<6}{'acc':>6}{'trainable':>11}{'peak mem':>10}{'est err':>8}{'train s':>9}  config"
    lines = [header, "-" * len(header)]
    for _, row in order.iterrows():
        mem_kind = (
            ""
            if pd.isna(row.get("peak_memory_kind"))
            else ("R" if row["peak_memory_kind"] == "cpu_rss" else "G")
        )
        cfg = json.loads(row["peft_config"]) if isinstance(row.get("peft_config"), str) else {}
        brief = ", ".join(
            f"{k}={v}"
            for k, v in cfg.items()
            if k
            in (
                "r",
                "init_r",
                "num_virtual_tokens",
                "target_modules",
                "use_dora",
                "use_rslora",
                "layers_to_transform",
            )
        )
        lines.append(
            f"{str(row['trial_id'])[:13]:<14}{row['status']:<11}{str(row['method'])[:13]:<14}{str(row['quantization']):<6}"
            f"{_num(row.get('accuracy'), '.3f'):>6}"
            f"{human(row.get('trainable_params')):>11}{human(row.get('peak_memory_bytes'), 'B') + mem_kind:>10}"
            f"{_num(estimate_error(row), '+.0%'):>8}"
            f"{_num(row.get('train_time_s'), '.1f'):>9}  "
            f"{row['error'] if row['status'] != 'complete' else brief}"
        )
    kinds = set(trials.get("peak_memory_kind", pd.Series(dtype=object)).dropna())
    legend = {
        "cpu_rss": "R = peak resident memory of the CPU worker",
        "gpu_allocated": "G = GPU allocator peak",
    }
    if kinds:
        lines.append("peak mem: " + "; ".join(legend.get(k, k) for k in sorted(kinds)))
    return "\n".join(lines)
