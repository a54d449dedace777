"""How a search runs: config schema, CLI, the Tune driver, the trial (Ray Train loop), model and data loading."""
