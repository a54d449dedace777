"""A search on a Ray cluster as a Ray job: ``submit``, ``status``, ``logs``, ``stop``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from peft_search.cluster.addresses import AddressError
from peft_search.cluster.jobs import Jobs
from peft_search.search.cli.configs import set_overrides
from peft_search.search.errors import ConfigError
from peft_search.search.settings.loading import default_config_path, load_config

# `run`'s overrides, as (attribute, option, config key): `submit` checks them here and passes them on to `run`.
RUN_OVERRIDES = (
    ("num_trials", "--num-trials", "search.num_trials"),
    ("results_dir", "--results-dir", "results_dir"),
    ("name", "--name", "name"),
)


def _jobs(address: str | None) -> Jobs:
    """The cluster's Jobs API; an address that cannot be a dashboard's is the user's input (exit 2)."""
    try:
        return Jobs(address)
    except AddressError as err:
        raise ConfigError(str(err)) from None


def submit(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else default_config_path()
    given = [
        (opt, key, getattr(args, attr)) for attr, opt, key in RUN_OVERRIDES if getattr(args, attr) is not None
    ]
    sets = set_overrides(args)
    # Validate here first: a bad config fails in a second, before anything reaches the cluster.
    cfg = load_config(path, {**sets, **{key: value for _, key, value in given}})
    jobs = _jobs(args.address)
    job_id = jobs.submit(
        path,
        [str(part) for opt, _, value in given for part in (opt, value)]
        + [part for text in args.set for part in ("--set", text)],
        ship_project=args.ship_project,
        metadata={"peft_search_name": cfg.name, "results_dir": cfg.results_dir},
    )
    print(job_id, flush=True)
    note = f"[peft-search] submitted search {cfg.name!r} to {jobs.address}"
    print(f"{note}; follow it with `peft-search logs {job_id} --follow`", file=sys.stderr)
    if cfg.results_uri() is None and not Path(cfg.results_dir).expanduser().is_absolute():
        print(
            f"[peft-search] note: results_dir {cfg.results_dir!r} is relative, so the results land in the job's "
            "working directory on the head; pass --results-dir on shared storage to keep them",
            file=sys.stderr,
        )
    return _follow(jobs, job_id) if args.follow else 0


def _follow(jobs, job_id: str) -> int:
    try:
        status = jobs.follow(job_id, lambda chunk: print(chunk, end="", flush=True))
    except KeyboardInterrupt:
        print(
            f"\n[peft-search] stopped following; job {job_id} goes on (`peft-search stop {job_id}` ends it)",
            file=sys.stderr,
        )
        return 130
    print(f"[peft-search] job {job_id} {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def status(args: argparse.Namespace) -> int:
    info = _jobs(args.address).info(args.job_id)
    print(f"{args.job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    return 0


def logs(args: argparse.Namespace) -> int:
    jobs = _jobs(args.address)
    if args.follow:
        return _follow(jobs, args.job_id)
    print(jobs.logs(args.job_id), end="")
    return 0


def stop(args: argparse.Namespace) -> int:
    jobs = _jobs(args.address)
    if jobs.stop(args.job_id):
        print(f"[peft-search] stop requested for job {args.job_id}")
    else:
        print(f"[peft-search] job {args.job_id} had already ended: {jobs.info(args.job_id).status}")
    return 0
