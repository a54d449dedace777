"""One trial, wherever it runs: load, inject, train, evaluate, save the adapter, report. Knows nothing of Optuna."""
