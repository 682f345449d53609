"""`miniplm teacher-logits`: what the teacher predicts at every position of a token set's rows (its
top-k or top-p tokens, or tokens drawn from it, with their log-probs: training/logit_modes.py),
stored once for offline distillation (the teacher never sits in training memory).

One part per `teacher_logits:` entry (`teacher-logits/NAME`), one shard per shard of its token set:
`teacher-logits/NAME/shard-NNNNN.arrow` holds, row for row, what the teacher predicts at each
position of `tokens/TOKENS/shard-NNNNN.arrow` (miniplm/training/logit_files.py). Within a shard the
rows go through the teacher in fixed batches; every `checkpoint_every` batches the results so far
are saved to the shard's scratch folder, so a worker killed at any point resumes at the first batch
not saved and writes the same bytes an uninterrupted run writes (on CPU; a sampled set draws with
a generator seeded by the job's seed, the set, the shard and the batch).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from miniplm import outputs
from miniplm.batch_checkpoints import BatchCheckpoints
from miniplm.compute import record
from miniplm.corpus import tokenize
from miniplm.corpus.instance_rows import PAD
from miniplm.corpus.tokens import row_blocks
from miniplm.draws import derived_seed
from miniplm.entry_stage import EntryStage
from miniplm.errors import ConfigError, StageError
from miniplm.files import atomic_write_json, file_lock
from miniplm.inputs import Input, Model
from miniplm.lookups import teacher_model, token_set_named, tokenizer_name
from miniplm.models.loading import check_same_tokenizer, load_tokenizer, pick_device, resolve_model
from miniplm.records import rerun
from miniplm.rundir import RunDir, shard_name
from miniplm.schema.hashing import hashable_dump
from miniplm.schema.job import JobConfig
from miniplm.schema.teacher_logits import TeacherLogitsSet
from miniplm.stage import Part, StageRun
from miniplm.training.logit_files import LogitsLayout, count_rows, write_logits

NAME = "teacher-logits"
STATS = ("rows", "tokens", "bytes", "flops")


def part_for(entry: TeacherLogitsSet) -> Part:
    return STAGE.part_for(entry)


def _tokens(entry: TeacherLogitsSet):
    return outputs.tokens(entry.tokens, why=f"teacher-logits {entry.name!r} reads token set {entry.tokens!r}")


@dataclass
class LogitsContext:
    """The teacher a set is computed with, and the token rows it reads."""

    teacher: str  # the model to load
    dtype: str
    vocab: int  # the tokenizer's size: the log-probs cover these ids
    token_files: list[Path]
    seq_len: int


def check_teacher_tokenizer(job: JobConfig, teacher: str, token_set: str, where: str, *, strict: bool = True) -> None:
    """Distillation compares the two models' distributions over the same next token: refuse a
    teacher whose tokenizer is not the token set's, naming both, before any model loads. Not
    `strict`: a tokenizer that cannot be read yet (a hub id offline) is left for the stage to check."""
    student = tokenizer_name(job, token_set_named(job, token_set))
    if student == teacher:
        return
    try:
        tok_t, tok_s = load_tokenizer(teacher), load_tokenizer(student)
    except OSError:
        if strict:
            raise
        return
    try:
        check_same_tokenizer(
            teacher,
            student,
            tok_t,
            tok_s,
            role="student's tokenizer",
            advice="Distill a teacher that shares the student's tokenizer (cross-tokenizer "
            "distillation, such as ULD or DSKD, is not supported).",
        )
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _environment(teacher, device: str, rows_per_batch: int) -> str:
    """What decides the exact floating-point results besides the inputs."""
    import torch

    model = teacher.model
    return (
        f"{torch.device(device).type}, torch {torch.__version__}, teacher {model.dtype} "
        f"{model.config._attn_implementation}, {rows_per_batch} rows per batch"
    )


def logits_shard(run: StageRun, teacher, index: int, token_file: Path, bar: tqdm) -> dict:
    """Compute (resuming where a killed worker stopped) and write one shard; its stats."""
    import torch

    entry: TeacherLogitsSet = run.part.item
    seq_len = run.context.seq_len
    blocks = row_blocks(token_file)
    rows = np.concatenate(blocks) if blocks else np.zeros((0, seq_len + 1), dtype=np.int32)
    layout = layout_of(entry, seq_len, teacher.vocab)
    per_batch = max(1, entry.batch_tokens // seq_len)
    starts = range(0, len(rows), per_batch)
    scratch = run.rd.work(run.name) / shard_name(index, "")
    checkpoints = BatchCheckpoints(scratch, _environment(teacher, str(teacher.device), per_batch))
    done, saved = checkpoints.saved()
    bar.update(min(done * per_batch, len(rows)) * seq_len)

    def computed() -> Iterator[pa.Table]:
        for b in range(done, len(starts)):
            batch = torch.from_numpy(rows[starts[b] : starts[b] + per_batch, :-1].astype(np.int64))
            hidden = teacher.hidden(batch)
            # draws seeded by (job seed, set, shard, batch): a resumed shard draws what it would have
            generator = torch.Generator(teacher.device).manual_seed(derived_seed(run.job.seed, entry.name, index, b))
            kept = teacher.keep(
                hidden.reshape(-1, hidden.shape[-1]), entry.mode, entry.top_k, entry.temperature, entry.top_p, generator
            )
            shape = (len(batch), seq_len)
            bar.update(batch.numel())
            yield layout.table(
                kept.ids.reshape(*shape, -1).numpy(),
                kept.logp.reshape(*shape, -1).numpy(),
                None if kept.rest is None else kept.rest.reshape(shape).numpy(),
                None if kept.counts is None else kept.counts.reshape(shape).numpy(),
            )

    checkpoints.keep(
        computed(),
        done,
        len(starts),
        entry.checkpoint_every,
        lambda first, last, tables: saved.append(checkpoints.save_table(first, last, pa.concat_tables(tables))),
    )
    out = run.rd.teacher_logits(entry.name) / shard_name(index, ".arrow")
    # from the files this process found and saved, not whatever the scratch folder holds now: another
    # process on the same set may have removed or replaced them
    size = write_logits(out, layout, _read_back(saved, run))
    check_rows(out, len(rows), run)
    # a padded instance row's PAD targets are stored (the teacher read PAD as token 0, as the student
    # does) but never predicted: `tokens` counts the positions training reads
    stats = {
        "rows": len(rows),
        "tokens": int((rows[:, 1:] != PAD).sum()),
        "bytes": size,
        "flops": len(rows) * seq_len * teacher.flops_per_token((seq_len + 1) / 2),
    }
    atomic_write_json(out.with_suffix(".json"), stats)
    shutil.rmtree(scratch, ignore_errors=True)
    return stats


def _kept_words(counts: dict) -> str:
    k, mode = counts["top_k"], counts.get("mode", "top_k")
    words = {"top_k": f"top-{k}", "top_p": f"top-p (at most {k})", "sampled": f"{k} draws"}[mode]
    return f"{words} in {counts.get('logprob_dtype', 'float16')}"


def layout_of(entry: TeacherLogitsSet, seq_len: int, vocab: int) -> LogitsLayout:
    return LogitsLayout(seq_len, entry.top_k, vocab, entry.temperature, entry.logprob_dtype, entry.mode, entry.top_p)


def _read_back(saved: list[Path], run: StageRun) -> Iterator[pa.Table]:
    for f in saved:
        try:
            yield pq.read_table(f)
        except FileNotFoundError:
            raise StageError(
                f"{f}: removed while this process was writing its shard (by another process on "
                f"{run.name}?); run `{_redo(run)}` again"
            ) from None


def _redo(run: StageRun) -> str:
    return rerun(run.rd.stage_state(run.name), run.name)


def check_rows(path: Path, expected: int, run: StageRun) -> None:
    """A shard must hold a row for every row of its token shard: one short of them (written from
    checkpoints another process removed) is deleted, never marked done."""
    written = count_rows(path) if path.exists() else 0
    if written != expected:
        path.unlink(missing_ok=True)
        raise StageError(
            f"{path}: {written:,} rows written where its token shard has {expected:,} (another "
            f"process on {run.name}?); run `{_redo(run)}` again"
        )


class TeacherLogits(EntryStage):
    """One part per teacher_logits set; its shards are its token set's shards."""

    name = NAME
    summary = "store the teacher's top-k, top-p or sampled log-probs for a token set (offline KD)"
    description = (
        "For each set in the job's `teacher_logits:` list, run the teacher over every row of its token set "
        "and write, per position, the tokens its mode keeps (top_k, top_p or sampled), their log-probs "
        "and (top_k, top_p) the log of the remaining mass, ids packed and log-probs optionally in 8 bits, "
        "to RUN_DIR/teacher-logits/NAME/shard-*.arrow, aligned with the token set's shards and rows. "
        "Students with kd: {source: offline, logits: NAME} read them instead of running the teacher. "
        "Resumes inside a shard after a kill."
    )
    sections = ("seed",)  # plus the set, its token set's hash and the teacher's fingerprint
    section = "teacher_logits"
    only = "logits set"
    none = "teacher-logits: the job lists no sets (teacher_logits: [{name: ..., tokens: ...}])"

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        """Its settings, its token set's rows and the teacher by content."""
        entry: TeacherLogitsSet = part.item
        teacher, dtype = teacher_model(job, entry.teacher)
        return [
            json.dumps(hashable_dump(entry), sort_keys=True),
            _tokens(entry),
            Model("teacher", resolve_model(teacher)),
            dtype,
        ]

    def spends_compute(self, entry: str) -> bool:
        return True

    def check(self, job: JobConfig) -> None:
        """Names that differ, a token set of the job and a teacher for each set; a set whose teacher
        has another tokenizer than its token set fails when the job loads."""
        super().check(job)
        token_sets = {t.name for t in job.tokenize}
        for t in job.teacher_logits:
            if t.tokens not in token_sets:
                raise ConfigError(
                    f"teacher_logits.{t.name}.tokens: no token set {t.tokens!r} in the job's tokenize list"
                )
            if t.teacher == "teacher" and job.teacher is None:
                raise ConfigError(f"teacher_logits.{t.name}: teacher is the job's teacher, and the job has none")
        for entry in job.teacher_logits:
            check_teacher_tokenizer(
                job, teacher_model(job, entry.teacher)[0], entry.tokens, f"teacher_logits.{entry.name}", strict=False
            )

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str] | None:
        token_set = token_set_named(job, part.item.tokens)
        return tokenize.STAGE.planned_shards(job, rd, tokenize.part_for(token_set))

    def setup(self, run: StageRun) -> LogitsContext:
        entry: TeacherLogitsSet = run.part.item
        job, rd = run.job, run.rd
        tokens = _tokens(entry)
        if rd.stage_state(tokens.stage).get("state") != "done":
            raise StageError(f"{rd.root}: {tokens.why}; run `miniplm tokenize` first")
        teacher, dtype = teacher_model(job, entry.teacher)
        check_teacher_tokenizer(job, teacher, entry.tokens, f"teacher_logits.{entry.name}")
        token_set = token_set_named(job, entry.tokens)
        tokenizer = load_tokenizer(tokenizer_name(job, token_set))
        if entry.top_k > len(tokenizer):
            raise ConfigError(
                f"teacher_logits.{entry.name}.top_k: {entry.top_k} is more than the vocabulary "
                f"({len(tokenizer)} tokens)"
            )
        return LogitsContext(
            teacher, dtype, len(tokenizer), sorted(rd.tokens(entry.tokens).glob("shard-*.arrow")), token_set.seq_len
        )

    def outputs(self, run: StageRun) -> list[Path]:
        return [run.rd.teacher_logits(run.part.item.name)]

    def shards(self, run: StageRun) -> list[str]:
        return [shard_name(i, "") for i in range(len(run.context.token_files))]

    def run_shards(self, run: StageRun, todo: list[int]) -> None:
        from miniplm.training.teacher import Teacher

        entry: TeacherLogitsSet = run.part.item
        ctx: LogitsContext = run.context
        files = ctx.token_files
        teacher = Teacher(ctx.teacher, ctx.vocab, ctx.dtype, pick_device(entry.device))
        seq_len = ctx.seq_len
        total = sum(len(block) for i in todo for block in row_blocks(files[i])) * seq_len
        with tqdm(
            total=total,
            desc=run.name.replace("/", " "),
            unit="tok",
            unit_scale=True,
            disable=not run.show_progress,
            dynamic_ncols=True,
        ) as bar:
            for i in todo:
                # one process per shard: a second process on the set waits, then skips what the first wrote
                with file_lock(run.rd.work(run.name) / shard_name(i, ".lock")):
                    if run.rd.stage_state(run.name).get("state") == "done":
                        break  # a late worker: the others finished the part meanwhile
                    if run.is_done(shard_name(i, "")):
                        continue
                    logits_shard(run, teacher, i, files[i], bar)
                    run.mark_done(shard_name(i, ""))

    def finish(self, run: StageRun) -> dict:
        entry: TeacherLogitsSet = run.part.item
        out = run.rd.teacher_logits(entry.name)
        per_shard = [json.loads((out / shard_name(i, ".json")).read_text()) for i in range(len(self.shards(run)))]
        for i, token_file in enumerate(run.context.token_files):
            check_rows(out / shard_name(i, ".arrow"), sum(len(block) for block in row_blocks(token_file)), run)
        counts = {key: sum(s[key] for s in per_shard) for key in STATS}
        counts["flops"] = record(teacher=counts["flops"])
        counts["bytes_per_token"] = counts["bytes"] / max(counts["tokens"], 1)
        return {
            **counts,
            "shards": len(per_shard),
            "top_k": entry.top_k,
            "mode": entry.mode,
            "logprob_dtype": entry.logprob_dtype,
            "token_set": entry.tokens,
        }

    def describe_entry(self, job: JobConfig, name: str, counts: dict) -> list[str]:
        return [
            f"teacher-logits {name}: {_kept_words(counts)} at {counts['tokens']:,} positions "
            f"({counts['rows']:,} rows of {counts['token_set']!r}), {counts['bytes_per_token']:.0f} "
            f"bytes per token ({counts['bytes'] / 1e6:,.1f} MB), {counts['flops']['total']:.3g} teacher FLOPs; "
            f"in {job.run_dir}/teacher-logits/{name}"
        ]


STAGE = TeacherLogits()
