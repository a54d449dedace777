"""Training throughput of a trial (``search.worker.training``) against a plain ``transformers.Trainer`` + PEFT.

A trial trains with the Trainer too; this measures what the search adds around it (its collator and counting,
callbacks, planning, peak-memory watch) against the Trainer as a user would set it up by hand.

    python -m benchmarks.throughput                     # MiniLM on BBC News, LoRA r=8 on query/value, 30 steps
    python -m benchmarks.throughput --steps 60 --repeats 3
    python -m benchmarks.throughput --sampling group_by_length --set training.max_seq_length=256

Both train the same model, the same tokenized split, the same LoRA config, batch size, learning-rate schedule and
number of steps and the same sampling of batches (``--sampling``: random, or ``group_by_length``, where both use
transformers' ``LengthGroupedSampler``), in this one process with the same torch threads; the runs alternate
(ours, Trainer, ours, ...) so drift in the machine's load hits both. Samples/s is steps x batch size over the training loop's own time
(ours: ``train_time_s``; the Trainer: from ``on_train_begin`` to ``on_train_end``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import TYPE_CHECKING, Any

import yaml

from benchmarks.common import machine, table, write_result

if TYPE_CHECKING:
    from peft_search.search.settings.trial import TrialSettings

LORA = {
    "peft_type": "LORA",
    "task_type": "SEQ_CLS",
    "r": 8,
    "lora_alpha": 16,
    "target_modules": ["query", "value"],
}


def _ours(prep, settings: TrialSettings, lr: float) -> float:
    import torch

    from peft_search.search.settings.trial import TrialConfig
    from peft_search.search.worker.training import run_trial

    trial = TrialConfig(
        method="lora", quantization="none", peft_config=dict(LORA), learning_rate=lr, candidate="bench"
    )
    metrics, adapter_dir = run_trial(trial, settings, prep.data, device=torch.device("cpu"))
    if adapter_dir is not None:
        adapter_dir.cleanup()
    return metrics["samples_per_s"]


def _trainer(prep, settings: TrialSettings, lr: float) -> float:
    from peft import get_peft_config, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.end = time.perf_counter()

    path, t = settings.model_path, settings.training
    base = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=prep.data.num_labels, ignore_mismatched_sizes=True
    )
    model = get_peft_model(base, get_peft_config(dict(LORA)))
    rows = [
        {"input_ids": r["input_ids"], "attention_mask": [1] * len(r["input_ids"]), "labels": r["label"]}
        for r in prep.data.train
    ]
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=t.batch_size,
            max_steps=settings.steps,
            learning_rate=lr,
            warmup_steps=int(settings.steps * t.warmup_ratio),  # as search.worker.training
            lr_scheduler_type="linear",
            weight_decay=t.arguments().fixed.get("weight_decay", 0.0),
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=settings.seed,
            train_sampling_strategy=t.train_sampling_strategy,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=rows,
            data_collator=DataCollatorWithPadding(AutoTokenizer.from_pretrained(path)),
            callbacks=[clock],
        )
        trainer.train()
    return settings.steps * t.batch_size / (clock.end - clock.begin)


def padding_fraction(prep, settings: TrialSettings) -> float:
    """Share of the token slots in the trial's batches (one pass, as drawn) that are padding."""
    import torch

    from peft_search.search.settings.trial import TrialConfig
    from peft_search.search.worker.trainer import build_trainer, training_arguments

    trial = TrialConfig("lora", "none", dict(LORA), 1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        args = training_arguments(
            trial, settings, prep.data, output_dir=tmp, seed=settings.seed, device=torch.device("cpu")
        )
        loader = build_trainer(torch.nn.Linear(1, 1), args, prep.data, [])[0].get_train_dataloader()
    real = slots = 0
    for batch in loader:
        real += int(batch["attention_mask"].sum())
        slots += batch["attention_mask"].numel()
    return 1 - real / slots if slots else 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from peft_search.search.loop.prepare import prepare
    from peft_search.search.settings.loading import load_config
    from peft_search.search.worker.environment import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    overrides["training.max_steps"] = args.steps
    overrides["training.train_sampling_strategy"] = args.sampling
    cfg = load_config(args.config, overrides)
    prep = prepare(cfg)
    settings = prep.settings
    runs: dict[str, list[float]] = {"search.worker.training": [], "transformers.Trainer": []}
    for _ in range(args.repeats):
        runs["search.worker.training"].append(_ours(prep, settings, args.learning_rate))
        runs["transformers.Trainer"].append(_trainer(prep, settings, args.learning_rate))
    rows = [
        {"loop": name, "median_samples_per_s": statistics.median(v), "runs": [round(x, 2) for x in v]}
        for name, v in runs.items()
    ]
    ratio = rows[0]["median_samples_per_s"] / rows[1]["median_samples_per_s"]
    return {
        "benchmark": "throughput",
        "config": str(args.config),
        "overrides": overrides,
        "model": cfg.model.name_or_path,
        "dataset": cfg.dataset.source,
        "train_examples": len(prep.data.train),
        "batch_size": cfg.training.batch_size,
        "max_seq_length": cfg.training.max_seq_length,
        "steps": args.steps,
        "sampling": args.sampling,
        "padding_fraction": padding_fraction(prep, settings),
        "peft_config": LORA,
        "threads": args.threads,
        "machine": machine(),
        "loops": rows,
        "ours_over_trainer": ratio,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from peft_search.search.settings.loading import default_config_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(default_config_path()))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the trial's cpus_per_worker)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--sampling", choices=["random", "group_by_length"], default="random", help="train_sampling_strategy"
    )
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (dotted keys)")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    result = run(args)
    path = write_result("throughput", result, args.out_dir)
    print(table(result["loops"], ["loop", "median_samples_per_s", "runs"]))
    print(
        f"search.worker.training / Trainer = {result['ours_over_trainer']:.3f} ({args.sampling}; "
        f"{result['padding_fraction']:.1%} of the batches' token slots are padding); written to {path}"
    )
    return result


if __name__ == "__main__":
    main()
