"""A tabular benchmark of real runs: many configs of a search space trained once each, stored for replay.

    python -m benchmarks.build_table                         # the default space and task: 4 chunks x 40 trials
    python -m benchmarks.build_table --chunks 6              # more rows: chunks 4 and 5 run, 0-3 are kept
    python -m benchmarks.build_table --export-only           # rewrite the table from the chunks already run

The table is built by the project's own runner: each chunk is a real search (``run_search``) with Optuna's
random sampler and its own seed, so the configs are independent uniform draws of the space (the learning rate
log-uniform), trained with the config's training settings exactly as a search trains them. The first chunk also
runs the config's explicit candidates once. Chunks live under ``--work`` (a plain results directory each); a
finished chunk is kept, an interrupted one is resumed (``peft-search resume``), so the table can be built in
pieces. Each finished chunk's trials are then exported to ``benchmarks/tables/NAME.parquet`` (one row per trial:
the Optuna parameters that proposed it, the resolved config, every metric, the status) and
``NAME.predictions.parquet`` (per trial, the held-out rows it got right), with ``NAME.json`` saying how and where
it was built. ``benchmarks.sampler_replay`` replays samplers against it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from benchmarks.common import machine, start_ray

TABLES_DIR = Path(__file__).parent / "tables"
_MACHINE_COLUMNS = ("trial_id", "adapter_path", "node_id")  # where a chunk ran, not what it measured


def chunk_overrides(chunk: int, trials: int, work: Path, base: dict[str, Any]) -> dict[str, Any]:
    overrides = {
        **base,
        "name": f"table-{chunk}",
        "results_dir": str(work),
        "search.sampler": "random",
        "search.seed": chunk,
        "search.num_trials": trials,
        "search.early_stopping": "none",
    }
    if chunk > 0:
        overrides["space.candidates"] = []  # the candidates run once, in the first chunk
    return overrides


def finished(search_dir: Path, trials: int) -> bool:
    from peft_search.search.results.layout import ResultsDir

    rd = ResultsDir(search_dir)
    if not rd.trials_path.exists():
        return False
    done = rd.read_trials()
    return int(done["status"].isin(["complete", "infeasible", "failed"]).sum()) >= trials


def build(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run (or resume) every chunk that is not finished; returns what each took."""
    from peft_search.cluster import shutdown
    from peft_search.search.loop.driver import run_search
    from peft_search.search.settings.loading import load_config

    base = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    work = Path(args.work)
    ours = start_ray(args.config, base, args.num_cpus)
    runs = []
    try:
        for chunk in range(args.chunks):
            overrides = chunk_overrides(chunk, args.trials, work, base)
            search_dir = work / overrides["name"]
            if finished(search_dir, args.trials):
                print(f"chunk {chunk}: finished, kept ({search_dir})", flush=True)
                continue
            cfg = load_config(args.config, overrides)
            resume = (search_dir / "config.yaml").exists()
            print(f"chunk {chunk}: {'resuming' if resume else 'running'} {args.trials} trials", flush=True)
            t0 = time.time()
            run_search(cfg, echo=False, resume=resume)
            runs.append(
                {
                    "chunk": chunk,
                    "seconds": round(time.time() - t0, 1),
                    "machine": machine(),
                    "resumed": resume,
                }
            )
            print(f"chunk {chunk}: done in {time.time() - t0:.0f} s", flush=True)
    finally:
        if ours:
            shutdown()
    return runs


def study_params(search_dir: Path) -> dict[int, dict[str, Any]]:
    """Optuna trial number -> the parameters that trial was given (what a sampler sees)."""
    import optuna

    from peft_search.search.results.layout import ResultsDir

    rd = ResultsDir(search_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=rd.read_config()["name"], storage=rd.optuna_url)
    return {t.number: dict(t.params) for t in study.get_trials(deepcopy=False)}


def space_meta(config: dict[str, Any]) -> dict[str, Any]:
    """The space the table samples, as plain data (``benchmarks.sampler_replay.load_space`` rebuilds it): the
    first chunk's config (its candidates included) resolved against the model, as a search resolves it."""
    import dataclasses

    from peft_search.search.loop.prepare import prepare
    from peft_search.search.settings.loading import parse_config

    prep = prepare(parse_config({**config, "search": {**config["search"], "warm_start": None}}))
    return {
        "spec": dataclasses.asdict(prep.space_spec),
        "context": dataclasses.asdict(prep.space_context),
    }


def export(args: argparse.Namespace, runs: list[dict[str, Any]]) -> Path:
    """One table (and its predictions) from every finished chunk."""
    from peft_search.search.results.layout import ResultsDir
    from peft_search.search.results.records import OPTUNA_TRIAL_KEY

    work = Path(args.work)
    rows, predictions, chunks, config = [], [], [], None
    for chunk in range(args.chunks):
        search_dir = work / f"table-{chunk}"
        if not finished(search_dir, args.trials):
            continue
        rd = ResultsDir(search_dir)
        params = study_params(search_dir)
        trials = rd.read_trials()
        trials = trials[trials["status"].isin(["complete", "infeasible", "failed"])]
        config = config or rd.read_config()  # the first chunk's: it holds the candidates
        for row in trials.to_dict("records"):
            number = row.get(OPTUNA_TRIAL_KEY)
            key = f"{chunk}/{row['trial_id']}"
            rows.append(
                {
                    "key": key,
                    "chunk": chunk,
                    "params": json.dumps(
                        params.get(int(number), {}) if pd.notna(number) else {}, sort_keys=True
                    ),
                    **{k: v for k, v in row.items() if k not in _MACHINE_COLUMNS},
                }
            )
        pred = rd.read_predictions()
        if len(pred):
            pred = pred[pred["trial_id"].isin(trials["trial_id"])].copy()
            pred["key"] = f"{chunk}/" + pred["trial_id"].astype(str)
            predictions.append(pred[["key", "row", "label", "prediction", "correct"]])
        chunks.append({"chunk": chunk, "trials": len(trials), "facts": rd.read_facts()})
    if not rows:
        raise SystemExit(f"no finished chunk under {work}; run without --export-only first")
    out = Path(args.out_dir) if args.out_dir else TABLES_DIR
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    # Nested config columns (peft_config, ...) as JSON text, so the parquet is plain and any tool reads it.
    for col in table.columns:
        if table[col].map(lambda v: isinstance(v, (dict, list))).any():
            table[col] = table[col].map(lambda v: json.dumps(v, sort_keys=True) if v is not None else None)
    path = out / f"{args.name}.parquet"
    table.to_parquet(path, index=False)
    pred_path = out / f"{args.name}.predictions.parquet"
    if predictions:
        pd.concat(predictions, ignore_index=True).to_parquet(pred_path, index=False)
    space = space_meta(config)
    meta_path = out / f"{args.name}.json"
    previous = json.loads(meta_path.read_text()).get("runs", []) if meta_path.exists() else []
    meta = {
        "table": path.name,
        "predictions": pred_path.name if predictions else None,
        "command": "python -m benchmarks.build_table " + " ".join(args.argv),
        "config": config,
        "space": space,
        "rows": len(table),
        "by_status": table["status"].value_counts().to_dict(),
        "chunks": [{k: v for k, v in c.items() if k != "facts"} | {"run": c["facts"]} for c in chunks],
        "runs": previous + runs,
        "bytes": {p.name: p.stat().st_size for p in (path, pred_path) if p.exists()},
    }
    meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return path


def main(argv: list[str] | None = None) -> Path:
    import sys

    from peft_search.search.settings.loading import default_config_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(default_config_path()))
    parser.add_argument("--name", default="bbcnews-minilm", help="table name under benchmarks/tables/")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--trials", type=int, default=40, help="trials per chunk")
    parser.add_argument("--work", default=None, help="where the chunks' searches live (results/tables/NAME)")
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (dotted keys)")
    parser.add_argument(
        "--export-only", action="store_true", help="only rewrite the table from finished chunks"
    )
    parser.add_argument("--out-dir", default=None, help="where the table goes (benchmarks/tables/)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.work = args.work or f"results/tables/{args.name}"
    runs = [] if args.export_only else build(args)
    path = export(args, runs)
    print(f"table written to {path}")
    return path


if __name__ == "__main__":
    main()
