#!/usr/bin/env bash
# The GPU check in one call, for a bare GPU machine without a network (one H100 or H200):
#
#   bash benchmarks/gpu/build_wheels.sh     # here, once: what the GPU machine lacks, as wheels in .whl/gpu/
#   bash benchmarks/gpu/run.sh --out DIR    # there, with .whl/gpu/ carried along: about 10 minutes
#   bash benchmarks/gpu/run.sh --cpu        # here: the same steps, tiny, on the CPU, in a fresh venv that
#                                           # has only what the GPU image has, plus .whl/gpu/
#   bash benchmarks/gpu/run.sh --steps tests,train   # only these steps (install always runs)
#
# Steps, each with its own time limit; one that fails or runs out of time is reported in the
# table and the others still run:
#   install        the wheels: pip install --no-index --no-deps --target (the machine's packages stay)
#   tests          pytest -m gpu (tests/gpu/); with --cpu, the CPU tests of the same code paths
#   demo-teacher   a BPE tokenizer and a small teacher trained from scratch (jobs/demo-gpu-teacher.yaml)
#   demo           `miniplm run jobs/demo-gpu.yaml`: the pipeline end to end, in bf16 on a GPU
#   score          benchmarks/score_bench.py at the paper's shapes, the plain loop in the same run
#   train          benchmarks/train_bench.py for qwen-1.2b and qwen-200m through the trainer's code:
#                  today's settings, auto micro-batches, compiled layers / model / step, CUDA graphs,
#                  float8; plain torch in the same run
#   gap            benchmarks/loss_gap.py: qwen-200m on the demo's selected tokens for 200 steps, compiled,
#                  in bf16 and with float8 matmuls: float8's loss gap
#   kd             benchmarks/kd_bench.py: qwen-200m trained without KD, with a qwen-1.8b-shaped teacher
#                  in the loop and from stored top-32 log-probs, in the same run; eager, then compiled
# Then benchmarks/gpu/table.py prints one table (card, figure, ratio to naive, fraction of limit,
# target), also written to OUT/table.md. Logs are in OUT/logs/.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
only=",tests,demo-teacher,demo,score,train,"   # the steps run unless --steps names others
help_lines=2,25 results=gpu-check
source benchmarks/gpu/lib.sh "$@"
: >"$out/bench.jsonl"

demo=$work/demo
teacher_job=(jobs/demo-gpu-teacher.yaml "run_dir=$demo/teacher" "tokenize.0.tokenizer=$demo/tokenizer")
demo_job=(jobs/demo-gpu.yaml "run_dir=$demo/run" "teacher.model=$demo/teacher/models/teacher")
if [[ $mode == cpu ]]; then
    tests=(tests/gpu tests/test_distributed.py tests/models/test_linear_ce.py tests/scoring/test_packing.py)
    limits=(900 900 1200 900 900 900 600)
    small="students.0.batch_tokens=2048 students.0.micro_batch=8 students.0.steps=3"
    teacher_job+=(corpus.inputs.0.limit=30 tokenize.0.seq_len=128 students.0.preset=tiny $small)
    demo_job+=(corpus.inputs.0.limit=30 score.packing=packed score.max_length=256 score.batch_tokens=2048
        reference.train.preset=tiny reference.train.steps=3 reference.train.batch_tokens=2048
        reference.train.micro_batch=8 $small ${small//students.0/students.1} students.0.preset=tiny
        students.1.preset=tiny)
    score_args=(--shape tiny --docs 16 --batch-tokens 2048)
    train_args=(--preset tiny --steps 2 --seq-len 64 --micro 2 --batch-tokens 512)
    kd_args=(--student tiny --seq-len 64 --micro 2 --steps 2)
    gap_args=(--preset tiny --steps 6 --variants rows auto+step)
    vocab=1024
else
    tests=(-m gpu tests/gpu)
    limits=(240 100 120 130 540 240 300)
    score_args=(--shape qwen-1.8b ref-104m --compile)
    train_args=(--preset qwen-200m qwen-1.2b --steps 5)
    kd_args=(--student qwen-200m --teacher qwen-1.8b --steps 6)
    gap_args=(--preset qwen-200m --steps 200 --variants auto+step auto+step+float8)
    vocab=8192
fi

step tests "${limits[0]}" "$py" -m pytest -q -p no:cacheprovider "${tests[@]}"
step demo-teacher "${limits[1]}" bash -c "set -e
    '$py' benchmarks/gpu/make_tokenizer.py '$demo/tokenizer' --vocab $vocab
    for stage in prepare tokenize train; do '$py' -m miniplm \$stage ${teacher_job[*]} -q; done"
step demo "${limits[2]}" "$py" -m miniplm run "${demo_job[@]}" -q
step score "${limits[3]}" "$py" benchmarks/score_bench.py "${score_args[@]}" --json "$out/bench.jsonl"
step train "${limits[4]}" "$py" benchmarks/train_bench.py "${train_args[@]}" --json "$out/bench.jsonl"
step kd "${limits[5]}" bash -c "for mode in off step; do
    '$py' benchmarks/kd_bench.py ${kd_args[*]} --compile \$mode --json '$out/bench.jsonl' || exit; done"
step gap "${limits[6]}" "$py" benchmarks/loss_gap.py --tokens "$demo/run/tokens/selected" "${gap_args[@]}" \
    --json "$out/bench.jsonl"
cp "$demo/run/eval/comparison.md" "$out/demo-comparison.md" 2>/dev/null
python3 benchmarks/gpu/table.py "$out"
