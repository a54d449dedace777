"""Planning before spending: exact parameter counts, adapter size and a peak-memory estimate, without weights."""
