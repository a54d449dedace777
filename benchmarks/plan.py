"""How fast ``peft-search plan`` answers, and how close its memory estimate is to what trials measured.

    python -m benchmarks.plan                                  # 18 configs on Llama-3.2-3B's config.json, 2 cores
    python -m benchmarks.plan --layers 28 56                   # the same on 28 and 56 decoder blocks
    python -m benchmarks.plan --results RESULTS_DIR/NAME       # + the estimate-vs-measured table of a finished run

The 3B plan needs only the model's ``config.json`` (written here with Llama-3.2-3B's published shape: 28 blocks,
hidden 3072, 24 heads, 8 KV heads, vocabulary 128,256): 18 PEFT configs across every family the space has, on a
causal-LM task at batch 4 x 512 tokens on a GPU, as a user plans before renting one. The small plan is the default
config's (MiniLM, 6 blocks) with 9 sampled configs. Each plan runs in a fresh process (what a user's
``peft-search plan`` pays, imports included) and in this one (``plan_s``: planning only, after the libraries
are imported), both with ``--jobs`` processes planning side by side (0, the CLI's default: one per CPU); the table
also gives the time per candidate, and a last line the seconds a fresh Python takes to import what a plan needs,
the floor under the command's wall time. A CPU plan (the small one) measures the memory a worker process holds
before its model once per environment, then reads it from a cache: ``plan_s`` here includes that measurement,
``cli_wall_s`` reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import machine, table, write_result
from peft_search.search.plan.pool import available_cpus

LLAMA_3B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 3072,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 24,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL = [*ATTN, "gate_proj", "up_proj", "down_proj"]
CAUSAL = {"task_type": "CAUSAL_LM"}
CANDIDATES: list[tuple[str, str, dict[str, Any]]] = [
    ("lora-r16", "none", {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ATTN}),
    ("qlora-r16-all", "nf4", {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ALL}),
    (
        "rslora-r8-top",
        "none",
        {
            "peft_type": "LORA",
            "r": 8,
            "use_rslora": True,
            "target_modules": ALL,
            "layers_to_transform": "top-half",
        },
    ),
    ("dora-r8", "none", {"peft_type": "LORA", "r": 8, "use_dora": True, "target_modules": ATTN}),
    (
        "lora-int8",
        "int8",
        {"peft_type": "LORA", "r": 8, "target_modules": ATTN, "layers_to_transform": "every-other"},
    ),
    (
        "adalora",
        "none",
        {"peft_type": "ADALORA", "init_r": 12, "target_r": 8, "total_step": 100, "target_modules": ATTN},
    ),
    (
        "ia3",
        "none",
        {
            "peft_type": "IA3",
            "target_modules": ["k_proj", "v_proj", "down_proj"],
            "feedforward_modules": ["down_proj"],
        },
    ),
    ("loha", "none", {"peft_type": "LOHA", "r": 8, "alpha": 16, "target_modules": ATTN}),
    ("lokr", "none", {"peft_type": "LOKR", "r": 8, "alpha": 16, "target_modules": ATTN}),
    ("vera", "none", {"peft_type": "VERA", "r": 256, "target_modules": ["q_proj", "v_proj"]}),
    (
        "boft",
        "none",
        {
            "peft_type": "BOFT",
            "boft_block_size": 8,
            "boft_n_butterfly_factor": 1,
            "target_modules": ["q_proj", "v_proj"],
        },
    ),
    (
        "oft",
        "none",
        {"peft_type": "OFT", "r": 0, "oft_block_size": 32, "target_modules": ["q_proj", "v_proj"]},
    ),
    (
        "fourierft",
        "none",
        {"peft_type": "FOURIERFT", "n_frequency": 1000, "target_modules": ["q_proj", "v_proj"]},
    ),
    (
        "vblora",
        "none",
        {"peft_type": "VBLORA", "r": 4, "num_vectors": 256, "vector_length": 256, "target_modules": ATTN},
    ),
    (
        "ln-tuning",
        "none",
        {"peft_type": "LN_TUNING", "target_modules": ["input_layernorm", "post_attention_layernorm"]},
    ),
    ("prompt-tuning", "none", {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 16}),
    ("prefix-tuning", "none", {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 16}),
    ("p-tuning", "none", {"peft_type": "P_TUNING", "num_virtual_tokens": 16, "encoder_hidden_size": 256}),
]


def _placed(config: dict[str, Any], layers: int) -> dict[str, Any]:
    """``layers_to_transform`` named as the space names it, as indices for a model of ``layers`` blocks."""
    where = config.get("layers_to_transform")
    if where == "top-half":
        return {**config, "layers_to_transform": list(range(layers // 2, layers))}
    if where == "every-other":
        return {**config, "layers_to_transform": list(range(0, layers, 2))}
    return config


def big_config(model_dir: Path, layers: int) -> dict[str, Any]:
    """A causal-LM plan of the 18 candidates on Llama-3.2-3B's shape (``layers`` decoder blocks)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({**LLAMA_3B, "num_hidden_layers": layers}))
    # plan checks the data as run does (a few rows: the plan's figures do not depend on them).
    rows = [{"prompt": f"question {i} :", "answer": f"answer {i % 4}"} for i in range(24)]
    (model_dir / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "name": f"plan-3b-{layers}",
        "model": {"name_or_path": str(model_dir), "task": "causal-lm"},
        "dataset": {"source": str(model_dir / "qa.jsonl"), "train_size": 16, "eval_size": 8},
        "space": {
            "methods": [],
            "candidates": [
                {"name": n, "quantization": q, "peft_config": {**CAUSAL, **_placed(c, layers)}}
                for n, q, c in CANDIDATES
            ],
        },
        "training": {"batch_size": 4, "max_seq_length": 512, "precision": "bf16"},
        "resources": {"gpus_per_worker": 1},
    }


def time_plan(config_path: Path, samples: int, jobs: int = 0) -> tuple[float, list[dict[str, Any]]]:
    """Seconds of ``plan_search`` in this process (``jobs`` processes, 0: one per CPU, as the CLI), and its rows."""
    from peft_search.search.plan.planning import plan_search
    from peft_search.search.settings.loading import load_config

    cfg = load_config(config_path)
    t0 = time.perf_counter()
    rows = plan_search(cfg, samples=samples, seed=cfg.search.seed, jobs=jobs)
    return time.perf_counter() - t0, rows


def time_cli(config_path: Path, samples: int, jobs: int = 0) -> float:
    """Wall seconds of ``peft-search plan`` in a fresh process, as a user runs it."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "peft_search", "plan", str(config_path), "--samples", str(samples)]
        + ["--jobs", str(jobs)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


IMPORTS = "import torch, transformers, peft, bitsandbytes, scipy.stats; import transformers.models.llama.modeling_llama"
"""What any plan imports before it plans (the libraries, a model class, the statistics of its note)."""


def time_imports() -> float:
    """Wall seconds of a fresh Python importing what ``peft-search plan`` needs: the floor under its wall time,
    which no planning code can lower."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True, capture_output=True)
    return time.perf_counter() - t0


def estimate_errors(search_dir: Path) -> list[dict[str, Any]]:
    """Each complete trial's estimate against its measured peak (``est / measured - 1``)."""
    import pandas as pd

    trials = pd.read_parquet(search_dir / "trials.parquet")
    done = trials[trials["status"] == "complete"]
    return [
        {
            "trial": r["trial_id"],
            "method": r["method"],
            "quantization": r["quantization"],
            "measured_MiB": r["peak_memory_bytes"] / 2**20,
            "estimate_MiB": r["est_peak_memory_bytes"] / 2**20,
            "error": r["est_peak_memory_bytes"] / r["peak_memory_bytes"] - 1,
            "kind": r.get("peak_memory_kind"),
            "allocator": r.get("cpu_allocator"),
        }
        for r in done.to_dict("records")
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from peft_search.search.settings.loading import default_config_path

    plans = []
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp:
        # A CPU plan measures the runtime baseline on its first run on a machine, then reads it from the cache:
        # here the in-process plan measures it, the fresh-process one (a user's next plan) reads it.
        os.environ["PEFT_SEARCH_CACHE"] = str(Path(tmp) / "cache")
        small = Path(default_config_path())
        cases = [("small (default config, 9 sampled)", small, 9)]
        for layers in args.layers:
            path = Path(tmp) / f"3b-{layers}.yaml"
            path.write_text(yaml.safe_dump(big_config(Path(tmp) / f"llama-{layers}", layers)))
            cases.append((f"Llama-3.2-3B shape, {layers} blocks, 18 configs", path, 0))
        for name, path, samples in cases:
            seconds, rows = time_plan(path, samples, args.jobs)
            cli = time_cli(path, samples, args.jobs) if args.cli else None
            plans.append(
                {
                    "plan": name,
                    "candidates": len(rows),
                    "jobs": args.jobs or available_cpus(),
                    "plan_s": seconds,
                    "per_candidate_s": seconds / max(len(rows), 1),
                    "cli_wall_s": cli,
                    "rows": rows,
                }
            )
    result: dict[str, Any] = {
        "benchmark": "plan",
        "machine": machine(),
        "plans": plans,
        "imports_s": time_imports() if args.cli else None,
    }
    if args.results:
        result["estimate_vs_measured"] = estimate_errors(Path(args.results))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[28], help="decoder blocks of the 3B shape")
    parser.add_argument("--results", default=None, help="a finished search's directory: its estimate errors")
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="skip the fresh-process timing")
    parser.add_argument(
        "--jobs", type=int, default=0, help="processes planning side by side (0: one per CPU)"
    )
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    result = run(args)
    path = write_result("plan", result, args.out_dir)
    print(table(result["plans"], ["plan", "candidates", "jobs", "plan_s", "per_candidate_s", "cli_wall_s"]))
    if result["imports_s"] is not None:
        print(f"a fresh Python importing what a plan needs ({IMPORTS}): {result['imports_s']:.2f} s")
    if "estimate_vs_measured" in result:
        print(
            table(
                result["estimate_vs_measured"],
                ["trial", "method", "quantization", "measured_MiB", "estimate_MiB", "error", "allocator"],
            )
        )
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    main()
