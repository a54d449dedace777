"""Packed trials, measured at the worker: LoRA-family configs trained alone, one after another, against the same
configs trained in packed groups (``search.worker.packing.run_group``), on the default task, in one process.

    python -m benchmarks.packing                        # 16 configs, groups of 4, 30 steps, unquantized
    python -m benchmarks.packing --configs 8 --group 4 --quantization int8

Two measurements:

1. Is the device full at the trial's batch? A forward and backward of the default model with one LoRA adapter at
   batch 16, 32 and 64 (seconds per row): packing K trials only pays if a K-times fuller step costs less than K
   steps. The same at batch 64 with four adapters through PEFT's mixed-adapter-batch forward: the routing's cost.
On a GPU (when one is there, it is used) the same two measurements say whether packing pays there.

2. The configs alone and packed: wall time, training time, each config's held-out accuracy both ways (with
   dropout the two runs are different draws, so accuracies agree within noise, not exactly), peak memory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from benchmarks.common import machine, table, write_result

TARGETS = (["query", "value"], ["query", "key", "value", "attention.output.dense"])
RANKS = (4, 8, 16)


def configs(n: int, quantization: str):
    """``n`` LoRA-family configs (LoRA and rsLoRA; ranks 4/8/16; two target sets; learning rates 5e-4 to 5e-3)."""
    from peft_search.search.settings.trial import TrialConfig

    out = []
    for i in range(n):
        rs = i % 4 == 3
        peft_config = {
            "peft_type": "LORA",
            "task_type": "SEQ_CLS",
            "r": RANKS[i % 3],
            "lora_alpha": 2 * RANKS[i % 3],
            "lora_dropout": 0.05,
            "target_modules": TARGETS[i % 2],
            "use_rslora": rs,
        }
        rate = 5e-4 * (10 ** ((i % 5) / 4))
        out.append(
            TrialConfig("rslora" if rs else "lora", quantization, peft_config, rate, candidate=f"c{i}")
        )
    return out


def step_cost(
    model_path: str, batches=(16, 32, 64), seq: int = 64, reps: int = 4, device=None
) -> list[dict[str, Any]]:
    """Seconds per forward and backward of the default model with LoRA, by batch size (and mixed, 4 adapters)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from peft_search.search.worker.packed_trainer import AdapterRouter

    def model(k: int):
        torch.manual_seed(0)
        base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=5)
        peft_model = None
        for i in range(k):
            config = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"])
            if peft_model is None:
                peft_model = get_peft_model(base, config, adapter_name=f"a{i}")
            else:
                peft_model.add_adapter(f"a{i}", config)
        peft_model.base_model.set_requires_grad([f"a{i}" for i in range(k)], True)
        return peft_model.train().to(device or "cpu")

    def timed(m, batch: int, names=None) -> float:
        x = torch.randint(1000, 20000, (batch, seq), device=device)
        y = torch.randint(0, 5, (batch,), device=device)
        router = AdapterRouter(m) if names else None
        times = []
        for rep in range(reps + 1):
            t = time.perf_counter()
            if router is not None:
                router.names = names
            loss = torch.nn.functional.cross_entropy(
                m(input_ids=x, attention_mask=torch.ones_like(x)).logits, y
            )
            loss.backward()
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize()
            if rep:  # the first is warm-up
                times.append(time.perf_counter() - t)
        if router is not None:
            router.remove()
        return sum(times) / len(times)

    one = model(1)
    rows = []
    for b in batches:
        s = timed(one, b)
        rows.append({"case": f"1 adapter, batch {b}", "step_s": s, "ms_per_row": 1000 * s / b})
    four = model(4)
    names = [f"a{i}" for i in range(4) for _ in range(batches[-1] // 4)]
    s = timed(four, batches[-1], names)
    rows.append(
        {"case": f"4 adapters mixed, batch {batches[-1]}", "step_s": s, "ms_per_row": 1000 * s / batches[-1]}
    )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from peft_search.search.loop.prepare import prepare
    from peft_search.search.settings.loading import default_config_path, load_config
    from peft_search.search.worker.packing import run_group
    from peft_search.search.worker.training import run_trial

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=16)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(
        default_config_path(),
        {"training.max_steps": args.steps, "results_dir": tempfile.mkdtemp(prefix="packing-")},
    )
    prep = prepare(cfg)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    steps = step_cost(prep.settings.model_path, device=device)
    print(table(steps, ["case", "step_s", "ms_per_row"]), flush=True)

    trials = configs(args.configs, args.quantization)
    t0 = time.perf_counter()
    packed: dict[str, dict] = {}
    for start in range(0, len(trials), args.group):
        group = [(t.candidate, t) for t in trials[start : start + args.group]]
        for trial_id, (metrics, adapter) in run_group(group, prep.settings, prep.data, device=device).items():
            packed[trial_id] = metrics
            if adapter is not None:
                adapter.cleanup()
    packed_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    alone: dict[str, dict] = {}
    for trial in trials:
        metrics, adapter = run_trial(trial, prep.settings, prep.data, device=device)
        alone[trial.candidate] = metrics
        if adapter is not None:
            adapter.cleanup()
    alone_s = time.perf_counter() - t1
    rows = [
        {
            "config": t.candidate,
            "method": t.method,
            "r": t.peft_config["r"],
            "targets": len(t.peft_config["target_modules"]),
            "lr": t.learning_rate,
            "acc_alone": alone[t.candidate]["accuracy"],
            "acc_packed": packed[t.candidate]["accuracy"],
        }
        for t in trials
    ]
    summary = {
        "configs": len(trials),
        "group": args.group,
        "steps": args.steps,
        "quantization": args.quantization,
        "alone_wall_s": alone_s,
        "packed_wall_s": packed_s,
        "speedup": alone_s / packed_s,
        "alone_train_s": sum(m["train_time_s"] for m in alone.values()),
        "packed_train_s": sum(m["group_train_time_s"] for m in packed.values()) / args.group,
        "alone_peak_mib": max(m["peak_memory_bytes"] for m in alone.values()) / 2**20,
        "packed_group_peak_mib": max(m["group_peak_memory_bytes"] for m in packed.values()) / 2**20,
        "mean_acc_alone": sum(r["acc_alone"] for r in rows) / len(rows),
        "mean_acc_packed": sum(r["acc_packed"] for r in rows) / len(rows),
    }
    print(table(rows, list(rows[0])))
    print(table([summary], list(summary)))
    result = {"machine": machine(), "step_cost": steps, "configs": rows, "summary": summary, "argv": argv}
    print(f"written to {write_result('packing', result, args.out)}")
    return result


if __name__ == "__main__":
    main()
