"""A command's config, read and validated before anything heavy is imported (``run``, ``resume``, ``plan``,
``submit``): a mistake is one line within a second, not after torch and Ray have loaded."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from peft_search.cluster.addresses import AddressError
from peft_search.cluster.runtime import check_cluster_address
from peft_search.search.errors import ConfigError
from peft_search.search.loop.recovery.resume import load_saved_config
from peft_search.search.results.lock import refuse_if_running
from peft_search.search.settings.loading import default_config_path, load_config
from peft_search.search.settings.schema import SearchConfig


def set_overrides(args: argparse.Namespace) -> dict:
    """``--set KEY.PATH=VALUE`` (repeatable), each value read as YAML; validated with the file, like its keys."""

    overrides = {}
    for text in getattr(args, "set", None) or []:
        key, eq, raw = text.partition("=")
        if not eq or not key.strip() or not all(part.strip() for part in key.split(".")):
            raise ConfigError(
                f"--set: {text!r} is not KEY.PATH=VALUE; write e.g. --set training.max_steps=50"
            )
        try:
            overrides[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: {raw!r} is not a YAML value; quote it") from None
    return overrides


def run_config(args: argparse.Namespace) -> tuple[SearchConfig, bool]:
    """``run``'s config (the file or the bundled default, ``--set`` and the named flags over it), or for
    ``resume`` and ``run --resume`` the one the search was started with; and whether it resumes. ``--address``
    is checked first: a malformed one, or a cluster that does not answer, is one line within seconds."""
    try:
        check_cluster_address(args.address)
    except AddressError as err:
        raise ConfigError(str(err)) from None
    overrides = set_overrides(args)
    if args.num_trials is not None:
        overrides["search.num_trials"] = args.num_trials
    if args.results_dir is not None:
        overrides["results_dir"] = args.results_dir
    if args.name is not None:
        overrides["name"] = args.name
    if getattr(args, "results_dir_to_resume", None):
        cfg = load_saved_config(args.results_dir_to_resume)
    else:
        cfg = load_config(Path(args.config) if args.config else default_config_path(), overrides)
    if cfg.results_uri() is None:
        refuse_if_running(cfg.search_dir())
    return cfg, bool(getattr(args, "resume", False) or getattr(args, "results_dir_to_resume", None))


def plan_config(args: argparse.Namespace) -> SearchConfig:
    """``plan``'s config, ``--set`` over it."""
    return load_config(args.config, set_overrides(args))
