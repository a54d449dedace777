"""peft-search from Python: run or plan a search, load what a search found, pick the adapter to ship.

    import peft_search

    results = peft_search.run("my-search.yaml", overrides={"search.num_trials": 20})
    results.trials                                   # pandas DataFrame, one row per trial (docs/results.md)
    results.front()                                  # the complete trials on the Pareto front
    choice = results.best(max_params=200_000, max_memory="2GiB")  # the rule of `peft-search best`
    choice.trial["peft_config"], choice.reason
    peft_search.plan("my-search.yaml")               # exact trainable parameters, adapter size, memory estimate
    peft_search.load("results/my-search")            # a finished or running search's results

A config is a YAML path, a mapping shaped like the YAML file, or ``None`` for the bundled default search;
``overrides`` sets dotted keys as ``--set`` does. Bad input raises ``ConfigError`` (a ``ValueError``) whose message
names the field and the fix, before anything runs.
"""

from peft_search.api import (
    ConfigError,
    Results,
    __version__,
    config,
    evaluate,
    load,
    plan,
    run,
)

__all__ = ["ConfigError", "Results", "__version__", "config", "evaluate", "load", "plan", "run"]
