"""How a search runs, in rooms that each import only the rooms below them (pyproject's import-linter contracts):

- ``cli``: the command line; wires the rooms together.
- ``loop``: the search loop: prepare, launch Ray Tune with Optuna, collect trials, finish (resume, early stopping).
- ``worker``: one trial: load, inject, train, evaluate, save the adapter, report.
- ``plan``: what a candidate costs before it trains (parameter counts, adapter size, peak memory).
- ``inputs``: the model and the data a search runs on (loading, inspecting, splitting, tokenizing, injecting).
- ``settings``: the config's schema and validation, and what a trial receives.
- ``results``: the metric registry, the trial record, the results directory's layout, object storage.
- ``errors``, ``redact``: what every room shares.
"""
