#!/usr/bin/env bash
# The teacher server the server-backend tests start on localhost: llama-cpp-python's OpenAI-compatible
# server, which runs the bundled SmolLM2-135M GGUF on the CPU. PyPI has only its source, so pip builds it
# once (about 4 minutes on 2 cores). Run after scripts/setup.sh; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate

VERSION=0.3.36
if [ "$(python -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null)" != "$VERSION" ] ||
    ! python -c "import llama_cpp.server.app" 2>/dev/null; then
    echo "building llama-cpp-python $VERSION and its server (about 4 minutes; log in .venv/llama-cpp.log)"
    # A portable AVX2 build: a native build on a CPU with AMX takes llama.cpp's AMX kernels, which crash
    # (SIGSEGV) where the kernel does not grant a process the AMX tile state. No multimodal library.
    export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF"
    python -m pip install --disable-pip-version-check "llama-cpp-python[server]==$VERSION" \
        >.venv/llama-cpp.log 2>&1 || { cat .venv/llama-cpp.log; exit 1; }
fi
