#!/usr/bin/env bash
# One lent GPU's measurements for issue 21 (does packing pay on a GPU?) and issue 17 (bf16 LoRA step cost and MFU by
# micro-batch on Llama-3.2-1B's shape), as one command within the device tool's limits (15 minutes a session, 64 MiB
# carried, no network there; its image has torch, transformers, peft, accelerate, pandas, scipy, pyyaml, not the
# search's own services).
#
#   bash benchmarks/gpu_session.sh prepare     # here: the default task exported into .gpu/ (44 MiB, the model in
#                                              # fp16) and the few wheels the image lacks (pydantic, at this
#                                              # environment's versions: the settings are pickled)
#   device run: command "bash benchmarks/gpu_session.sh run", carry [".gpu"], timeout_s 540
#
# What comes back ($OUT): packing.json (the step cost of the default model and of the Llama shape, by batch and with
# 4 adapters mixed, the router against PEFT's per-row routing on every linear layer; what search.packing: auto
# measures for 4, 8 and 16 adapters and the size it picks; then 16 LoRA-family configs of the default task alone and
# packed in groups of 4, bf16) and log.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    rm -rf .gpu && mkdir -p .gpu/whl
    python -m benchmarks.packing --export-inputs .gpu/inputs --steps "${STEPS:-30}"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .gpu/whl $(python -c 'import importlib.metadata as m; print(*(f"{n}=={m.version(n)}" for n in
        ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions")))')
    du -sh .gpu
    ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    out="${OUT:-benchmarks/results}"
    mkdir -p "$out"
    nvidia-smi -L | tee "$out/log"
    python3 -m benchmarks.packing --inputs .gpu/inputs --precision bf16 --threads 8 \
      --step-cost default --step-cost llama-1b --out "$out" 2>&1 | grep -v -E "Loading weights|LOAD REPORT|MISSING|^Key|^-+\+|^$|Notes:|newly initialized" | tee -a "$out/log"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh prepare|run" >&2
    exit 2
    ;;
esac
