"""One trial, wherever it runs: load, inject, train, evaluate, save the adapter, report. Knows nothing of Optuna."""

from peft_search.search.worker.environment import quiet_bitsandbytes

# bitsandbytes logs a missing optional kernel when it is imported: filtered before anything in a trial's process
# imports it (Ray forwards a worker's log to the driver's terminal).
quiet_bitsandbytes()
