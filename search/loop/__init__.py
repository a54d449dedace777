"""The search loop: prepare once, launch Ray Tune with Optuna choosing trials, collect them, finish."""
