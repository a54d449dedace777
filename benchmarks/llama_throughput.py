"""Tokens/s and model FLOP utilisation of LoRA and 4-bit QLoRA trials on a 1B-class Llama built from config.

    python -m benchmarks.llama_throughput                          # on a CUDA GPU: Llama-3.2-1B's shape
    python -m benchmarks.llama_throughput --size tiny --steps 3    # the smoke test's size (CPU is fine)

The model has Llama-3.2-1B's shape with random weights (speed does not depend on the values), saved in bf16 with
a word-level tokenizer; the data are prompts of random words truncated to ``--seq-len`` tokens with a one-token
answer. Each candidate trains in a fresh process with the search's own trial code, as a Ray worker would, through
``benchmarks.memory_estimate``, so the same runs give the memory estimate's error on this device too.

Tokens/s counts every non-padding token trained on, over the training loop's own time (``train_time_s``: the
first, slower steps included). Model FLOPs per token follow PaLM's accounting, with the base frozen: 2 per frozen
matmul weight forward and 2 backward (the gradient to the activations; no weight gradient), 6 per trainable
parameter, and attention's 12 x layers x hidden x sequence length. MFU divides the model FLOP/s by the device's
dense bf16 peak; the 4-bit dequantisation QLoRA does is work the model FLOPs do not count.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import machine, table, write_result

# Llama-3.2-1B's shape (1.24 B parameters with tied embeddings); "tiny" is for the smoke test.
SHAPES = {
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
        "max_position_embeddings": 4096,
    },
    "tiny": {  # widths of at least 64: bitsandbytes' CPU 4-bit path packs blocks of 64
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "tie_word_embeddings": True,
        "max_position_embeddings": 256,
    },
}
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, without sparsity.
PEAK_BF16 = {"H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.0e12, "H200": 989.4e12, "A100": 312.0e12}
ANSWERS = ["alpha", "beta", "gamma", "delta"]
WORDS = [f"w{i}" for i in range(400)]


def _targets(names: str) -> list[str] | str:
    return "all-linear" if names == "all-linear" else names.split(",")


def candidates() -> list[dict[str, Any]]:
    """LoRA and QLoRA at two ranks and two target sets, and one LLM.int8 config."""
    rows = []
    for quant, prefix in (("none", "lora"), ("nf4", "qlora")):
        for r, targets in ((8, "q_proj,v_proj"), (16, "all-linear")):
            rows.append((f"{prefix}-r{r}-{'qv' if ',' in targets else 'all'}", quant, r, targets))
    rows.append(("lora-int8-r8-qv", "int8", 8, "q_proj,v_proj"))
    return [
        {
            "name": name,
            "quantization": quant,
            "learning_rate": 1e-4,
            "peft_config": {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": r,
                "lora_alpha": 2 * r,
                "target_modules": _targets(targets),
            },
        }
        for name, quant, r, targets in rows
    ]


def build_model(path: Path, size: str, device: str) -> None:
    """A Llama of the given shape with random weights, saved in bf16 with a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + ANSWERS + ["topic", ":"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(path)
    config = LlamaConfig(**SHAPES[size], pad_token_id=0, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)


def write_data(path: Path, rows: int, seq_len: int) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(rows):
            prompt = " ".join(rng.choices(WORDS, k=seq_len)) + " topic :"
            f.write(json.dumps({"prompt": prompt, "answer": rng.choice(ANSWERS)}) + "\n")


def flops_per_token(model_path: Path, trainable: int, seq_len: float) -> float:
    """Model FLOPs of one trained token with a frozen base (see the module's docstring)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    frozen = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return 4 * frozen + 6 * trainable + attention


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from benchmarks.memory_estimate import measure
    from peft_search.search.settings.loading import load_config

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir, data = tmp / "llama", tmp / "qa.jsonl"
        build_model(model_dir, args.size, "cuda" if cuda else "cpu")
        write_data(data, args.train_size + args.eval_size, args.seq_len)
        config = {
            "name": f"llama-{args.size}-throughput",
            "model": {"name_or_path": str(model_dir), "task": "causal-lm"},
            "dataset": {
                "source": str(data),
                "prompt_column": "prompt",
                "answer_column": "answer",
                "train_size": args.train_size,
                "eval_size": args.eval_size,
            },
            "space": {"methods": [], "candidates": candidates()[: args.candidates]},
            "search": {"num_trials": args.candidates, "seed": 0},
            "training": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "eval_batch_size": args.batch_size,
                "max_seq_length": args.seq_len,
                "warmup_ratio": 0.0,
                "precision": "bf16" if cuda else "fp32",
                "gradient_checkpointing": args.gradient_checkpointing,
            },
            "resources": {"num_workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1 if cuda else 0},
            "results_dir": str(tmp / "results"),
        }
        (tmp / "search.yaml").write_text(yaml.safe_dump(config))
        cfg = load_config(tmp / "search.yaml")
        rows = measure(cfg)
        peak = peak_flops()
        for row in rows:
            if "tokens_per_s" not in row:
                continue
            seq = row["tokens_per_s"] / row["samples_per_s"]  # mean tokens per trained row
            row["model_flops_per_token"] = flops_per_token(model_dir, row["trainable_params"], seq)
            row["model_tflops_per_s"] = row["model_flops_per_token"] * row["tokens_per_s"] / 1e12
            row["mfu"] = row["model_tflops_per_s"] * 1e12 / peak if peak else None
    return {
        "benchmark": "llama_throughput",
        "command": "python -m benchmarks.llama_throughput " + " ".join(args.argv),
        "shape": SHAPES[args.size],
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "gradient_checkpointing": args.gradient_checkpointing,
        "precision": config["training"]["precision"],
        "peak_bf16_flops": peak,
        "machine": machine(),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--eval-size", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=len(candidates()), help="the first N candidates")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--out-dir", default=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    result = run(args)
    path = write_result("llama_throughput", result, args.out_dir)
    cols = ["method", "quantization", "tokens_per_s", "model_tflops_per_s", "mfu"]
    cols += ["measured_bytes", "estimated_bytes", "error_pct", "kind"]
    print(table(result["rows"], cols))
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    main()
