#!/usr/bin/env bash
# Evidence past toy scale, on one GPU in one call of at most 9 minutes (jobs/evidence-gpu.yaml):
#
#   bash benchmarks/gpu/evidence.sh --out DIR     # on the GPU machine, .whl/gpu/ carried along
#   bash benchmarks/gpu/evidence.sh --cpu         # here: the same steps, tiny, in a fresh venv from
#                                                 # the wheel folder (as run.sh --cpu)
#
# Steps, each under its own time limit, each writing its results to OUT as it finishes (a cut
# keeps what it had):
#   install     the wheels (benchmarks/gpu/lib.sh)
#   corpus      the machine's Python sources and docs, split by package into teacher, reference,
#               pool and held-out parts (benchmarks/gpu/evidence_corpus.py): OUT/parts.json
#   tokenizer   a byte-level BPE trained on the teacher's part
#   teacher     a qwen-200m shape trained from scratch on its part (jobs/evidence-gpu-lm.yaml)
#   reference   a tiny-4l shape on its part, a tenth of the teacher's steps
#   select      the pool prepared, scored by both, ranked, half its tokens kept by difference score, and
#               random controls of the same budget from the raw and the filtered pool: OUT/report/
#   students    three qwen-104m students on equal tokens (selected, random, random-filtered), two
#               seeds each (eval.seeds): OUT/run-manifest.json (each one's tokens and FLOPs)
#   eval        every model on the held-out packages, with the unigram floors: OUT/comparison.md
# Then benchmarks/gpu/evidence_table.py writes OUT/table.md (card, date, minutes, the parts' sizes,
# the comparison and whether the selected student beats both controls by more than the spread).
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
only=",corpus,tokenizer,teacher,reference,select,students,eval,"
help_lines=2,22 results=evidence
source benchmarks/gpu/lib.sh "$@"

ev=$work/evidence
if [[ $mode == cpu ]]; then
    corpus_mb=1.5 vocab=1024 teacher=(tiny-4l 6) reference=(tiny 2)
    sizes=(students.0.preset=tiny students.1.preset=tiny students.2.preset=tiny students.0.steps=3
        students.1.steps=3 students.2.steps=3 students.0.batch_tokens=4096 students.1.batch_tokens=4096
        students.2.batch_tokens=4096 eval.max_docs=20 score.batch_tokens=8192)
    lm_batch=(students.0.batch_tokens=4096)
    limits=(60 60 300 300 600 600 600)
else
    # 9 minutes in all, start-up included: sized without a GPU to try them on, so each step has its
    # own limit and writes what it has; the students see 2.6M tokens each, the teacher 13M
    corpus_mb=120 vocab=8192 teacher=(qwen-200m 100) reference=(tiny-4l 10)
    sizes=(students.0.steps=20 students.1.steps=20 students.2.steps=20)
    lm_batch=()
    limits=(30 30 110 30 70 130 50)
fi
lm() { # lm PART PRESET STEPS: train one of the two LMs on its part
    "$py" -m miniplm run jobs/evidence-gpu-lm.yaml "run_dir=$ev/$1" "corpus.inputs.0.path=$ev/corpus/$1.jsonl" \
        "tokenize.0.tokenizer=$ev/tokenizer" "students.0.preset=$2" "students.0.steps=$3" "${lm_batch[@]}" -q &&
        cp "$ev/$1/manifest.json" "$out/$1-manifest.json"
}
main=(jobs/evidence-gpu.yaml "run_dir=$ev/run" "corpus.inputs.0.path=$ev/corpus/pool.jsonl"
    "teacher.model=$ev/teacher/models/lm" "reference.model=$ev/reference/models/lm"
    "eval.corpora.0.path=$ev/corpus/heldout.jsonl" "${sizes[@]}")
stages() { # stages NAME...: run these stages of the main job, then keep its manifest
    for stage in "$@"; do "$py" -m miniplm "$stage" "${main[@]}" -q || return; done
    cp "$ev/run/manifest.json" "$out/run-manifest.json"
}

# the steps run under `timeout`, in a shell of their own that is handed these functions and settings
prelude="$(declare -f lm stages); $(declare -p py ev out main lm_batch)"
in_shell() { printf '%s; %s' "$prelude" "$1"; }

step corpus "${limits[0]}" bash -c "'$py' benchmarks/gpu/evidence_corpus.py '$ev/corpus' --max-mb $corpus_mb &&
    cp '$ev/corpus/parts.json' '$out/parts.json'"
step tokenizer "${limits[1]}" "$py" benchmarks/gpu/make_tokenizer.py "$ev/tokenizer" --vocab $vocab \
    --texts "$ev/corpus/teacher.jsonl" --max-chars 20000000
step teacher "${limits[2]}" bash -c "$(in_shell "lm teacher ${teacher[*]}")"
step reference "${limits[3]}" bash -c "$(in_shell "lm reference ${reference[*]}")"
step select "${limits[4]}" bash -c "$(in_shell "stages prepare score rank select && cp -r '$ev/run/report' '$out/'")"
step students "${limits[5]}" bash -c "$(in_shell "stages tokenize train")"
step eval "${limits[6]}" bash -c "$(in_shell "stages eval && cp '$ev/run/eval/comparison.md' '$ev/run/eval/results.json' '$out/' &&
    rm -rf '$out/report' && cp -r '$ev/run/report' '$out/'")"
date -u +%Y-%m-%dT%H:%M:%SZ >"$out/finished.txt"
"$py" benchmarks/gpu/evidence_table.py "$out"
