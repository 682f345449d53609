# What benchmarks/gpu/run.sh and evidence.sh share, sourced by both with their arguments after they
# set repo, only (the steps run by default, ",step,step,"), help_lines (their header) and results
# (the name of their OUT folder): the options (--cpu, --out DIR, --steps A,B, --help), a clean OUT
# (logs/, steps.jsonl, started.txt) and work folder; `step`, which runs one step under a time limit
# and records it; then the interpreter: the machine's own on a GPU machine, or on this one a venv
# with what the GPU image holds (made once and kept); the wheel folder installed into $work/site;
# PYTHONPATH, the offline switches and OUT/card.txt set.

mode=gpu
out=""
script=$(basename "$0")
while (($#)); do
    case $1 in
        --cpu) mode=cpu ;;
        --out) out=$2; shift ;;
        --steps) only=",$2,"; shift ;;
        -h | --help) sed -n "${help_lines}p" "$0"; exit 0 ;;
        *) echo "$script: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
out=$(mkdir -p "${out:-runs/$results-$mode}" && cd "${out:-runs/$results-$mode}" && pwd)
work=${MINIPLM_GPU_WORK:-/tmp/miniplm-$results-$mode}   # installed packages and run directories: not sent back
rm -rf "$work" "$out/logs" "$out"/*.jsonl "$out/table.md" "$out/report"
mkdir -p "$work" "$out/logs"
: >"$out/steps.jsonl"
date -u +%Y-%m-%dT%H:%M:%SZ >"$out/started.txt"
wheels=$repo/.whl/gpu

step() { # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    [[ $name == install || $only == *,$name,* ]] || return 0
    local start rc seconds
    start=$(date +%s.%N)
    echo "== $name (at most $limit s)"
    timeout --kill-after=15 "$limit" "$@" >"$out/logs/$name.log" 2>&1
    rc=$?
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    printf '{"step": "%s", "rc": %d, "seconds": %s, "limit": %d}\n' "$name" "$rc" "$seconds" "$limit" >>"$out/steps.jsonl"
    echo "   exit $rc after $seconds s"
    tail -n 2 "$out/logs/$name.log" | cut -c1-200 | sed 's/^/   | /'
}

if [[ $mode == cpu ]]; then
    # What the GPU machine's image holds (Python, torch, transformers 5.17 and the rest), on this
    # machine's Python with the CPU build of torch; made once and kept between runs.
    image=${MINIPLM_GPU_IMAGE:-/tmp/miniplm-gpu-image}
    image_packages=(torch==2.13.0 transformers==5.17.0 tokenizers accelerate pyarrow pandas numpy tqdm jinja2
        matplotlib pyyaml xxhash safetensors scipy psutil pytest pytest-timeout)
    if [[ ! -x $image/bin/python || $(cat "$image/.packages" 2>/dev/null) != "${image_packages[*]}" ]]; then
        echo "== image: a venv with the GPU image's packages at $image (once; a few minutes)"
        rm -rf "$image"
        python3 -m venv "$image" && "$image/bin/python" -m pip install -q "${image_packages[@]}" \
            >"$out/logs/image.log" 2>&1 || { echo "could not build $image; see $out/logs/image.log" >&2; exit 1; }
        echo "${image_packages[*]}" >"$image/.packages"
    fi
    py=$image/bin/python
    carried=$( (git ls-files -co --exclude-standard -z | xargs -0 cat; find "$wheels" -type f -exec cat {} +) | wc -c)
    echo "== a device call would carry $((carried >> 20)) MiB (the working tree and .whl/gpu/; at most 64)"
    ((carried < 64 << 20)) || echo "   over the 64 MiB a device call carries" >&2
else
    py=${PYTHON:-python3}
fi
[[ -d $wheels ]] || echo "$script: no $wheels; run benchmarks/gpu/build_wheels.sh on a machine with a network first" >&2

site=$work/site
step install 40 "$py" -m pip install --no-index --no-deps --find-links "$wheels" --target "$site" \
    -r benchmarks/gpu/requirements.txt
export PYTHONPATH=$repo:$site
export TORCH_EXTENSIONS_DIR=$work/torch_extensions HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$py" -c "import torch, transformers
card = torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU (no GPU)'
print(f'{card}; torch {torch.__version__}, transformers {transformers.__version__}')" >"$out/card.txt" 2>&1
echo "== on $(cat "$out/card.txt")"

