"""Packed trials, measured at the worker: LoRA-family configs trained alone, one after another, against the same
configs trained in packed groups (``search.worker.packed.group.run_group``), on the default task, in one process.

    python -m benchmarks.packing                        # 16 configs, groups of 4, 30 steps, unquantized
    python -m benchmarks.packing --configs 8 --group 4 --quantization int8
    python -m benchmarks.packing --step-cost llama-1b   # the step cost on Llama-3.2-1B's shape (random weights)

On a machine without the search's data and model packages (a lent GPU: ``benchmarks/gpu_session.sh``), the task
travels: ``--export-inputs DIR`` writes the prepared default task (tokenized splits, settings, the model in fp16)
here, ``--inputs DIR`` runs from it there; neither Ray, Optuna, datasets nor the data packages are needed to run.

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
import dataclasses
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

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


STEP_SHAPES = {
    # name: (batches, sequence length, LoRA targets); "default" is the default task's model.
    "default": ((16, 32, 64), 64, ["query", "value"]),
    "llama-1b": ((8, 16, 32), 512, ["q_proj", "v_proj"]),
    "llama-tiny": ((2, 4, 8), 32, ["q_proj", "v_proj"]),  # the smoke test's
}


def _step_base(shape: str, model_path: str, device):
    """The base model a step is timed on: the default task's, or a Llama shape from config with random weights; in
    bf16 on a GPU, fp32 on CPU (whatever dtype the weights were saved in)."""
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    dtype = torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    if shape == "default":
        return AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=5, dtype=dtype)
    from benchmarks.llama_throughput import SHAPES

    config = LlamaConfig(**SHAPES[shape.removeprefix("llama-")], num_labels=5, pad_token_id=0)
    return LlamaForSequenceClassification(config).to(dtype)


def step_cost(model_path: str, shape: str = "default", reps: int = 4, device=None) -> list[dict[str, Any]]:
    """Seconds per forward and backward of a model with LoRA, by batch size (and mixed, 4 adapters)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from peft_search.search.worker.packed.router import AdapterRouter

    batches, seq, targets = STEP_SHAPES[shape]

    def model(k: int, targets=targets):
        torch.manual_seed(0)
        base = _step_base(shape, model_path, device)
        peft_model = None
        for i in range(k):
            config = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=targets)
            if peft_model is None:
                peft_model = get_peft_model(base, config, adapter_name=f"a{i}")
            else:
                peft_model.add_adapter(f"a{i}", config)
        peft_model.base_model.set_requires_grad([f"a{i}" for i in range(k)], True)
        return peft_model.train().to(device or "cpu")

    def timed(m, batch: int, names=None, routing: str = "router") -> float:
        vocab = m.get_base_model().config.vocab_size
        x = torch.randint(vocab // 20, vocab // 2, (batch, seq), device=device)
        y = torch.randint(0, 5, (batch,), device=device)
        router = AdapterRouter(m) if names and routing == "router" else None
        hooks = _peft_routing(m, names) if names and routing == "peft" else []
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
            m.zero_grad(set_to_none=True)
        if router is not None:
            router.remove()
        for hook in hooks:
            hook.remove()
        return sum(times) / len(times)

    from benchmarks.llama_throughput import peak_flops

    peak = peak_flops()

    def row(m, case: str, batch: int, s: float) -> dict[str, Any]:
        # Model FLOPs as benchmarks.llama_throughput counts them: 4 per frozen matmul weight, 6 per trainable
        # parameter, attention 12 x layers x hidden x sequence; per token, over the step's tokens.
        config = m.get_base_model().config
        frozen = sum(
            mod.weight.numel()
            for mod in m.modules()
            if isinstance(mod, torch.nn.Linear) and not mod.weight.requires_grad
        )
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        per_token = 4 * frozen + 6 * trainable + 12 * config.num_hidden_layers * config.hidden_size * seq
        tflops = per_token * batch * seq / s / 1e12
        return {
            "shape": shape,
            "case": case,
            "step_s": s,
            "ms_per_row": 1000 * s / batch,
            "model_tflops": tflops,
            "mfu": tflops * 1e12 / peak if peak else None,
        }

    one = model(1)
    rows = [row(one, f"1 adapter, batch {b}", b, timed(one, b)) for b in batches]
    one = None
    batch = batches[-1]
    names = [f"a{i}" for i in range(4) for _ in range(batch // 4)]
    four = model(4)
    rows.append(row(four, f"4 adapters mixed, batch {batch}", batch, timed(four, batch, names)))
    # Every linear layer adapted, where routing costs most: the router against PEFT's own per-row routing.
    one = model(1, "all-linear")
    rows.append(row(one, f"all linear: 1 adapter, batch {batch}", batch, timed(one, batch)))
    one = four = None
    four = model(4, "all-linear")
    for routing in ("router", "peft"):
        s = timed(four, batch, names, routing)
        rows.append(row(four, f"all linear: 4 adapters mixed ({routing}), batch {batch}", batch, s))
    return rows


def _peft_routing(m, names: list[str]) -> list:
    """PEFT's own mixed-adapter-batch forward in training (the ``adapter_names`` pre-forward hooks it registers at
    inference): each adapter's rows gathered and scattered by index, what ``AdapterRouter`` replaced."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    def hook(module, args, kwargs):
        return args, {**kwargs, "adapter_names": names}

    return [
        module.register_forward_pre_hook(hook, with_kwargs=True)
        for module in m.modules()
        if isinstance(module, (LoraLayer, AuxiliaryTrainingWrapper))
    ]


def export_inputs(prep, out: str) -> Path:
    """The prepared task (settings, tokenized splits) and its model (fp16 safetensors: half the bytes to carry) in
    ``out``, for ``--inputs`` on a machine without the data and model packages."""
    import torch
    from transformers import AutoModel

    root = Path(out)
    model = AutoModel.from_pretrained(prep.settings.model_path)  # the encoder as shipped: no task head
    model.to(torch.float16).save_pretrained(root / "model")
    (root / "inputs.pkl").write_bytes(pickle.dumps((prep.settings, prep.data)))
    return root


def load_inputs(path: str, precision: str | None):
    """What ``export_inputs`` wrote: settings (their model now the exported copy; ``precision`` overriding the
    config's ``training.precision``) and the tokenized splits."""
    root = Path(path).resolve()
    settings, data = pickle.loads((root / "inputs.pkl").read_bytes())
    config = settings.config
    if precision is not None:
        training = config.training.model_copy(update={"precision": precision})
        config = config.model_copy(update={"training": training})
    return dataclasses.replace(settings, config=config, model_path=str(root / "model")), data


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from peft_search.search.worker.packed.auto import measure_packing
    from peft_search.search.worker.packed.group import run_group
    from peft_search.search.worker.packed.plan import packing_size
    from peft_search.search.worker.training import run_trial

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=16)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], help="training.precision (default: the config's)"
    )
    parser.add_argument(
        "--step-cost",
        action="append",
        choices=sorted(STEP_SHAPES),
        help="a shape to time the step of (repeatable; default: the default task's model)",
    )
    parser.add_argument("--step-cost-only", action="store_true", help="time the steps, not the configs")
    parser.add_argument("--export-inputs", metavar="DIR", help="write the prepared task here, and stop")
    parser.add_argument(
        "--inputs", metavar="DIR", help="run from a task --export-inputs wrote (its steps are the export's)"
    )
    parser.add_argument(
        "--set", action="append", default=[], help="KEY.PATH=VALUE in the default search's config"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if args.inputs:
        settings, data = load_inputs(args.inputs, args.precision)
    else:
        from peft_search.search.loop.prepare import prepare
        from peft_search.search.settings.loading import default_config_path, load_config

        overrides: dict[str, Any] = {
            "training.max_steps": args.steps,
            "results_dir": tempfile.mkdtemp(prefix="packing-"),
        }
        if args.precision:
            overrides["training.precision"] = args.precision
        for text in args.set:
            key, _, value = text.partition("=")
            overrides[key] = yaml.safe_load(value)
        prep = prepare(load_config(default_config_path(), overrides))
        if args.export_inputs:
            print(f"written to {export_inputs(prep, args.export_inputs)}")
            return {}
        settings, data = prep.settings, prep.data
    steps = [
        row
        for shape in args.step_cost or ["default"]
        for row in step_cost(settings.model_path, shape, device=device)
    ]
    print(table(steps, ["shape", "case", "step_s", "ms_per_row", "model_tflops", "mfu"]), flush=True)
    # What search.packing: auto would measure and decide here (from PACKING_PAYS and PACKING_GROWS).
    auto = measure_packing(
        dataclasses.replace(settings, packing=args.group), data, args.quantization, device=device
    )
    figures = ", ".join(f"{s:.2f}x with {k} adapters" for k, s in sorted(auto.items()))
    print(
        f"search.packing auto's measure: a row trains {figures} as fast packed; it packs up to "
        f"{packing_size(auto)} a group (1: each alone)",
        flush=True,
    )
    if args.step_cost_only:
        result = {"machine": machine(), "step_cost": steps, "auto_packing_speedup": auto, "argv": argv}
        print(f"written to {write_result('packing_step_cost', result, args.out)}")
        return result

    trials = configs(args.configs, args.quantization)
    t0 = time.perf_counter()
    packed: dict[str, dict] = {}
    for start in range(0, len(trials), args.group):
        group = [(t.candidate, t) for t in trials[start : start + args.group]]
        for trial_id, (metrics, adapter) in run_group(group, settings, data, device=device).items():
            packed[trial_id] = metrics
            if adapter is not None:
                adapter.cleanup()
    packed_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    alone: dict[str, dict] = {}
    for trial in trials:
        metrics, adapter = run_trial(trial, settings, data, device=device)
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
        "steps": settings.steps,
        "quantization": args.quantization,
        "auto_packing_speedup": auto,
        "alone_wall_s": alone_s,
        "packed_wall_s": packed_s,
        "speedup": alone_s / packed_s,
        "alone_train_s": sum(m["train_time_s"] for m in alone.values()),
        "packed_train_s": sum(m["group_train_time_s"] for m in packed.values()) / args.group,
        "alone_peak_mib": max(m["peak_memory_bytes"] for m in alone.values()) / 2**20,
        "packed_group_peak_mib": max(m["group_peak_memory_bytes"] for m in packed.values()) / 2**20,
        "packed_group_est_mib": max(m["est_group_peak_memory_bytes"] for m in packed.values()) / 2**20,
        "group_est_errors_pct": sorted(
            {
                round(100 * (m["est_group_peak_memory_bytes"] / m["group_peak_memory_bytes"] - 1), 1)
                for m in packed.values()
            }
        ),
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
