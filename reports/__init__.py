"""What a search found: reads a results directory (finished or running). Never imports ray or torch."""

from peft_search.reports.table import load_trials, summary_table

__all__ = ["load_trials", "summary_table"]
