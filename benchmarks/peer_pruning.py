"""``peft-search run`` with early stopping against the peer with pruning, on configs drawn from the default space.

    python -m benchmarks.peer --pruning                 # 18 configs: each method x quantization level of the space

18 fixed configs from the default config's space (one per method and quantization level it allows, each with its
sampled rank, targets, layers and learning rate: some are hopeless), the default task's split, MiniLM, 30 steps:

- **peer**: ``Trainer.hyperparameter_search(backend="optuna")`` as a user would write it with pruning: an Optuna
  ``GridSampler`` over the configs and ``MedianPruner``, the Trainer evaluating the held-out rows every third of the
  steps (``eval_strategy="steps"``), so Optuna prunes at steps 10 and 20; bitsandbytes bases are loaded with
  ``BitsAndBytesConfig`` (the task head and pooler left unquantized) and ``prepare_model_for_kbit_training``, as
  PEFT's docs do; its recommendation is the
  study's best trial (accuracy);
- **peft-search**: ``peft-search run`` with the same configs as candidates, the default config's objectives and
  ``search.early_stopping: asha`` (rungs at a third of the steps, on 100 held-out rows), the rest as the default
  config says (``cpus_per_worker: auto``); its recommendation is ``peft-search best``'s pick.

Reported: each arm's wall (process start to exit), the training rows it ran (steps trained x batch, over all
trials), each recommendation's held-out accuracy, and McNemar's exact test (statsmodels, as ``best`` uses) between
the two recommendations' per-row correctness on the 300 held-out rows. ``--set KEY=VALUE`` changes peft-search's
config (``--set search.early_stopping.objectives=[accuracy]``: rungs ranked on accuracy alone, as the peer's pruner).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import machine, table, write_result
from benchmarks.peer import timed


def draw_configs(cfg, seed: int = 0, count: int = 18) -> list[dict[str, Any]]:
    """One config per method and quantization level the space allows (17 in the default space), then further draws
    up to ``count``, sampled from the space (ranks, targets, layers, learning rates) by Optuna's ``RandomSampler``:
    the search's own candidates format."""
    import optuna

    from peft_search.search.loop.prepare import prepare
    from peft_search.spaces.sampling import DefineByRun, SpaceSpec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prep = prepare(cfg)
    spec = prep.space_spec
    space = DefineByRun(SpaceSpec(spec.methods, spec.quantization, spec.learning_rate), prep.space_context)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    found: dict[tuple[str, str], dict[str, Any]] = {}
    extra: list[dict[str, Any]] = []  # after every pair is covered, the next draws, up to ``count``
    for _ in range(2000):
        drawn = space(study.ask())
        key = (drawn["method"], drawn["quantization"])
        config = {
            "name": f"{drawn['method']}-{drawn['quantization']}",
            "quantization": drawn["quantization"],
            "learning_rate": float(drawn["learning_rate"]),
            "peft_config": dict(drawn["peft_config"]),
        }
        if key not in found:
            found[key] = config
        elif len(found) + len(extra) < count:
            extra.append({**config, "name": f"{config['name']}-{len(extra) + 2}"})
    return [found[k] for k in sorted(found)] + extra[: max(0, count - len(found))]


def run_peer(config_path: Path, out: Path) -> None:
    """The peer's search with pruning, in this (fresh) process."""
    import optuna
    import torch
    from peft import get_peft_config, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForSequenceClassification,
        BitsAndBytesConfig,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from peft_search.search.loop.prepare import prepare
    from peft_search.search.settings.loading import load_config
    from peft_search.search.worker.environment import quiet_libraries

    quiet_libraries()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(config_path)
    prep = prepare(cfg)
    settings, data = prep.settings, prep.data
    candidates = list(cfg.space.candidates)
    steps = settings.steps

    def rows(split):
        return [{"input_ids": r["input_ids"], "labels": r["label"]} for r in split]

    current: dict[str, Any] = {}

    def model_init(trial):
        index = 0 if trial is None else trial.suggest_categorical("config", list(range(len(candidates))))
        c = candidates[index]
        current.update(index=index, steps=0)
        torch.manual_seed(settings.seed)
        q = c.quantization
        kwargs: dict[str, Any] = {}
        skip = ["classifier", "pooler"]  # the new task head and BERT's pooler stay in fp32, as PEFT's docs do
        if q == "int8":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        elif q in ("nf4", "fp4"):
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=q,
                bnb_4bit_compute_dtype=torch.float32,
                llm_int8_skip_modules=skip,
            )
        base = AutoModelForSequenceClassification.from_pretrained(
            settings.model_path, num_labels=data.num_labels, ignore_mismatched_sizes=True, **kwargs
        )
        if q != "none":
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        model = get_peft_model(base, get_peft_config(dict(c.peft_config)))
        for m in model.modules():  # bitsandbytes 0.50's CPU inference repacking breaks training after an eval
            if getattr(m, "support_avx512bf16_for_cpu", False):
                m.support_avx512bf16_for_cpu = False
        current["model"] = model
        return model

    finals: dict[int, list[bool]] = {}

    def accuracy(prediction):
        correct = (prediction.predictions.argmax(-1) == prediction.label_ids).tolist()
        finals[current["index"]] = correct  # the last evaluation of the trial is its final one
        return {"accuracy": float(sum(correct) / len(correct))}

    class Steps(TrainerCallback):
        """Each trial's steps trained (a pruned trial's too) and AdaLoRA's rank allocation, as PEFT asks."""

        def on_optimizer_step(self, args, state, control, **kwargs):
            model = current.get("model")
            if model is not None and hasattr(model.base_model, "update_and_allocate"):
                model.base_model.update_and_allocate(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            current["steps"] = state.global_step
            trained[current["index"]] = state.global_step

    trained: dict[int, int] = {}
    t = cfg.training
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=t.batch_size,
            per_device_eval_batch_size=t.eval_batch_size,
            max_steps=steps,
            learning_rate=1e-3,  # each config's own, below
            warmup_steps=int(steps * t.warmup_ratio),
            lr_scheduler_type="linear",
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="steps",
            eval_steps=max(1, steps // 3),
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=settings.seed,
        )
        trainer = Trainer(
            model_init=model_init,
            args=args,
            train_dataset=rows(data.train),
            eval_dataset=rows(data.eval),
            data_collator=DataCollatorWithPadding(prep.tokenizer),
            compute_metrics=accuracy,
            callbacks=[Steps()],
        )

        def hp_space(trial):
            index = trial.suggest_categorical("config", list(range(len(candidates))))
            return {"learning_rate": float(candidates[index].learning_rate)}

        best = trainer.hyperparameter_search(
            hp_space=hp_space,
            backend="optuna",
            direction="maximize",
            n_trials=len(candidates),
            compute_objective=lambda metrics: metrics["eval_accuracy"],
            sampler=optuna.samplers.GridSampler({"config": list(range(len(candidates)))}, seed=settings.seed),
            pruner=optuna.pruners.MedianPruner(),
        )
    index = int(best.hyperparameters["config"]) if "config" in best.hyperparameters else None
    if index is None:  # the best run's params hold what hp_space returned: find it by its objective
        index = max(finals, key=lambda i: sum(finals[i]) if trained.get(i) == steps else -1)
    out.write_text(
        json.dumps(
            {
                "in_process_s": time.perf_counter() - started,
                "trained_steps": {candidates[i].name: s for i, s in trained.items()},
                "pick": candidates[index].name,
                "pick_correct": finals[index],
                "pick_accuracy": sum(finals[index]) / len(finals[index]),
            }
        )
    )


def run(args) -> dict[str, Any]:
    from peft_search.reports.best import best_command
    from peft_search.search.results.layout import ResultsDir
    from peft_search.search.results.noise import mcnemar_p
    from peft_search.search.settings.loading import default_config_path, load_config

    base = Path(args.config or default_config_path())
    configs = draw_configs(load_config(base), seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="peer-pruning-") as tmp:
        raw = yaml.safe_load(base.read_text())
        raw["name"] = "peer-pruning"
        raw["space"] = {**raw["space"], "candidates": configs}
        raw["search"] = {**raw.get("search", {}), "num_trials": len(configs), "early_stopping": "asha"}
        raw["training"] = {**raw.get("training", {}), "max_steps": args.steps}
        config_path = Path(tmp) / "search.yaml"
        config_path.write_text(yaml.safe_dump(raw))
        cfg = load_config(config_path)
        batch = cfg.training.batch_size
        peer_out, results = Path(tmp) / "peer.json", Path(tmp) / "results"
        order = ["peer", "peft-search"] if args.seed % 2 == 0 else ["peft-search", "peer"]
        walls: dict[str, float] = {}
        for arm in order:
            if arm == "peer":
                command = [sys.executable, "-m", "benchmarks.peer_pruning", str(config_path), str(peer_out)]
            else:
                command = [
                    sys.executable,
                    "-m",
                    "peft_search",
                    "run",
                    str(config_path),
                    "--results-dir",
                    str(results),
                    *(arg for setting in args.set for arg in ("--set", setting)),
                ]
            walls[arm] = timed(command)
        peer = json.loads(peer_out.read_text())
        search_dir = results / "peer-pruning"
        trials = ResultsDir(search_dir).read_trials()
        choice, _ = best_command(search_dir)
        correct = ResultsDir(search_dir).correct_by_trial()
        ours_pick = choice.trial
        ours_correct = correct[str(ours_pick["trial_id"])]
        steps_ours = [
            int(r["stopped_at_step"])
            if r.get("stopped_at_step") == r.get("stopped_at_step") and r.get("stopped_at_step")
            else int(r.get("train_steps") or 0)
            for r in trials.to_dict("records")
        ]
        most = choice.most_accurate
    summary = [
        {
            "arm": "peer (MedianPruner)",
            "wall_s": walls["peer"],
            "train_rows": sum(peer["trained_steps"].values()) * batch,
            "trials_to_the_end": sum(1 for s in peer["trained_steps"].values() if s >= args.steps),
            "pick": peer["pick"],
            "pick_accuracy": peer["pick_accuracy"],
        },
        {
            "arm": "peft-search (asha" + "".join(f", {setting}" for setting in args.set) + ")",
            "wall_s": walls["peft-search"],
            "train_rows": sum(steps_ours) * batch,
            "trials_to_the_end": sum(1 for s in steps_ours if s >= args.steps),
            "pick": ours_pick["candidate"],
            "pick_accuracy": float(ours_pick["accuracy"]),
        },
    ]
    return {
        "benchmark": "peer_pruning",
        "machine": machine(),
        "configs": [c["name"] for c in configs],
        "settings": list(args.set),
        "steps": args.steps,
        "batch_size": batch,
        "summary": summary,
        "speed_vs_peer": walls["peer"] / walls["peft-search"],
        "most_accurate_ours": None
        if most is None
        else {"candidate": most["candidate"], "accuracy": float(most["accuracy"])},
        "mcnemar_p_picks": mcnemar_p(peer["pick_correct"], ours_correct),
        "ours_minus_peer_accuracy": float(ours_pick["accuracy"]) - peer["pick_accuracy"],
    }


def main(args) -> dict[str, Any]:
    result = run(args)
    path = write_result("peer_pruning", result, args.out_dir)
    print(table(result["summary"], list(result["summary"][0])))
    print(
        f"speed against the peer: {result['speed_vs_peer']:.2f}x; picks' accuracy, ours minus the peer's: "
        f"{result['ours_minus_peer_accuracy']:+.3f} (McNemar exact p = {result['mcnemar_p_picks']:.3f}); "
        f"written to {path}"
    )
    return result


if __name__ == "__main__":
    run_peer(Path(sys.argv[1]), Path(sys.argv[2]))
