#!/usr/bin/env bash
# Build the wheel folder the GPU machine installs from (it has no network): every package of
# benchmarks/gpu/requirements.txt for CPython 3.12 (the GPU machine) and 3.11 (this machine, for
# `run.sh --cpu`), into .whl/gpu/ (git-ignored; a device call carries it). Run it from any folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.whl/gpu
limit_mib=55
mkdir -p "$out"
mapfile -t packages < <(grep -v '^\s*#' benchmarks/gpu/requirements.txt | grep -v '^\s*$')
binary=()
for p in "${packages[@]}"; do [[ $p == deepspeed==* ]] || binary+=("$p"); done
for py in 3.12 3.11; do
    pip download --quiet --no-deps --only-binary=:all: --dest "$out" --python-version "$py" --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        "${binary[@]}"
done
# DeepSpeed publishes a source package only; with no ops prebuilt it builds into a pure-Python wheel.
deepspeed=$(printf '%s\n' "${packages[@]}" | grep '^deepspeed==')
if ! ls "$out"/deepspeed-"${deepspeed#deepspeed==}"-*.whl >/dev/null 2>&1; then
    python -c "import torch, setuptools" 2>/dev/null || { echo "build_wheels.sh: run it in the project's venv (scripts/setup.sh): building DeepSpeed's wheel needs torch and setuptools" >&2; exit 1; }
    DS_BUILD_OPS=0 pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$out" "$deepspeed"
fi
# datatrove's wheel is 17 MiB, 18 of them a URL blocklist miniplm never reads (it uses the Gopher
# filters): the wheel is rewritten without it, its RECORD line dropped with it.
python - "$out"/datatrove-*.whl <<'PY'
import sys, zipfile
from pathlib import Path

for wheel in map(Path, sys.argv[1:]):
    unused = lambda name: name.endswith("assets/url_filterblacklistsv0_3_0.tar.gz")
    with zipfile.ZipFile(wheel) as old:
        if not any(unused(n) for n in old.namelist()):
            continue
        slim = wheel.with_suffix(".slim")
        with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as new:
            for item in old.infolist():
                if unused(item.filename):
                    continue
                data = old.read(item)
                if item.filename.endswith(".dist-info/RECORD"):
                    data = b"".join(line for line in data.splitlines(True) if not unused(line.split(b",")[0].decode()))
                new.writestr(item, data)
    slim.replace(wheel)
PY
size=$(du -sm "$out" | cut -f1)
echo "$out: $(ls "$out" | wc -l) wheels, ${size} MiB"
if (( size > limit_mib )); then
    echo "build_wheels.sh: $out is over ${limit_mib} MiB; the working tree and carried files must stay under 64 MiB" >&2
    exit 1
fi
