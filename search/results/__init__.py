"""What a search produced and how it is stored: the metric registry, the trial record, the results directory.

Pure (no torch, no ray): the report reads through it."""
