"""`miniplm generate`: the teacher writes a corpus from prompts (sequence-level KD, SeqKD).

For each entry of the job's `generate:` list, each prompt shard becomes
RUN_DIR/generated/NAME/shard-NNNNN.parquet: per prompt, `samples` continuations
with the document columns (`id`, `text`, `source`) and `prompt_id`, `prompt`,
`prompt_tokens`, `new_tokens`, `finish_reason`, so `tokenize` (input:
generated/NAME) reads it like any corpus. Every sequence starts with the
token score reads documents after (BOS, or EOS where there is none).

Within a shard, prompts are sorted by length and packed into batches of at
most `batch_tokens` padded tokens; batch b of shard k is drawn after seeding
with `batch_seed(seed, name, k, b)`. The plan is a pure function of the
prompts, so a worker killed mid-shard resumes at the first batch not
checkpointed and writes the rows an uninterrupted run writes, and any number
of workers write what one writes (for a given backend and device).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from miniplm import compute, outputs
from miniplm.batch_checkpoints import BatchCheckpoints
from miniplm.draws import derived_seed
from miniplm.entry_stage import EntryStage
from miniplm.errors import ConfigError
from miniplm.files import atomic_path, atomic_write_json
from miniplm.generation import prompts as P
from miniplm.inputs import Files, Input, Model, Tokenizer
from miniplm.lookups import source_model
from miniplm.models.flops import forward_flops_per_token
from miniplm.models.loading import load_tokenizer, pick_device, resolve_model
from miniplm.progress import TokenRate
from miniplm.rundir import RunDir, shard_name
from miniplm.schema.base import ModelSpec
from miniplm.schema.generate import GenerateConfig, PromptFile
from miniplm.schema.hashing import hashable_dump
from miniplm.schema.job import JobConfig
from miniplm.scoring.windows import Window, plan_batches, prefix_token
from miniplm.stage import Part, StageRun

NAME = "generate"
FINISH_REASONS = ("eos", "length")
STATS = ("prompts", "rows", "prompt_tokens", "new_tokens", "flops", "prompts_too_long")


def part_for(entry: GenerateConfig) -> Part:
    return STAGE.part_for(entry)


def batch_seed(seed: int, name: str, shard: int, batch: int) -> int:
    """The torch seed set right before batch `batch` of shard `shard` is generated (hf backend)."""
    return derived_seed(seed, name, shard, batch)


def prompt_seed(seed: int, name: str, prompt_id: str) -> int:
    """The per-prompt seed (vllm backend)."""
    return derived_seed(seed, name, prompt_id)


def generation_flops(config, input_tokens: int, new_tokens: int) -> float:
    """Forward FLOPs of writing `new_tokens` after `input_tokens` with a KV cache: every position but the
    last token's is read once, position i attending to i earlier ones (padding not counted)."""
    n = input_tokens + new_tokens - 1
    return n * forward_flops_per_token(config, (n + 1) / 2) if n > 0 else 0.0


def plan(shard: P.PromptShard, entry: GenerateConfig) -> list[list[Window]]:
    """Batches of prompt indices, longest first, at most batch_tokens padded tokens (prompt + new tokens,
    per sequence, `samples` sequences per prompt)."""
    windows = [Window(i, 0, 1 + len(t) + entry.max_new_tokens, 0) for i, t in enumerate(shard.tokens)]
    return plan_batches(windows, max(entry.batch_tokens // entry.samples, 1))


def generate_shard(run: StageRun, backend, shard: P.PromptShard, progress: TokenRate) -> tuple[pa.Table, dict]:
    entry: GenerateConfig = run.part.item
    prefix = run.context.prefix
    batches = plan(shard, entry)
    checkpoints = BatchCheckpoints(run.rd.work(run.name) / shard_name(shard.index, ""), backend.environment())
    done, results = checkpoints.load()
    progress.update(len({doc for doc, _ in results}))

    def generated() -> Iterator[list[dict]]:
        for b in range(done, len(batches)):
            batch = [w.doc for w in batches[b]]
            seeds = [prompt_seed(run.job.seed, entry.name, shard.ids[i]) for i in batch]
            written = backend.generate(
                [[prefix, *shard.tokens[i]] for i in batch], seeds, batch_seed(run.job.seed, entry.name, shard.index, b)
            )
            progress.update(len(batch), sum(len(t) for s in written for t, _ in s))
            yield [
                {"doc": i, "start": k, "tokens": tokens, "finish": finish}
                for i, samples in zip(batch, written)
                for k, (tokens, finish) in enumerate(samples)
            ]

    checkpoints.keep(
        generated(),
        done,
        len(batches),
        entry.checkpoint_every,
        lambda first, last, rows: checkpoints.save_rows(first, last, rows, results),
    )
    return _assemble(run, backend, shard, results)


def _assemble(run: StageRun, backend, shard: P.PromptShard, results: dict) -> tuple[pa.Table, dict]:
    entry: GenerateConfig = run.part.item
    tokenizer = run.context.tokenizer
    columns: dict[str, list] = {
        k: []
        for k in (
            "id",
            "text",
            "source",
            "prompt_id",
            "prompt_source",
            "prompt",
            "prompt_tokens",
            "new_tokens",
            "finish_reason",
        )
    }
    stats: dict[str, Any] = dict.fromkeys(STATS, 0) | {"finish_reasons": dict.fromkeys(FINISH_REASONS, 0)}
    served = backend.name == "server"
    if served:
        stats |= {"server_prompt_tokens": 0, "requests_failed": {}}
    for i, prompt in enumerate(shard.tokens):
        prompt_text = tokenizer.decode(prompt, skip_special_tokens=True)
        for k in range(entry.samples):
            row = results[(i, k)]
            if "failed" in row:  # refused by the server: counted by reason, never a silent gap
                stats["requests_failed"][row["failed"]] = stats["requests_failed"].get(row["failed"], 0) + 1
                continue
            finish = row["finish"]
            if served:  # the server's text, and its token counts
                n_new, eos_read = row["new_tokens"], 0
                text = prompt_text + row["text"] if entry.include_prompt else row["text"]
                stats["server_prompt_tokens"] += row["server_prompt_tokens"]
            else:
                new = list(row["tokens"])
                n_new, eos_read = len(new), finish == "eos"
                text = tokenizer.decode(prompt + new if entry.include_prompt else new, skip_special_tokens=True)
            columns["id"].append(f"{entry.name}-{shard.ids[i]}-{k}")
            columns["text"].append(text)
            columns["source"].append(entry.name)
            columns["prompt_id"].append(shard.ids[i])
            columns["prompt_source"].append(shard.sources[i])
            columns["prompt"].append(prompt_text)
            columns["prompt_tokens"].append(len(prompt))
            columns["new_tokens"].append(n_new)
            columns["finish_reason"].append(finish)
            stats["rows"] += 1
            stats["new_tokens"] += n_new
            stats["finish_reasons"][finish] += 1
            stats["flops"] += generation_flops(backend.config, 1 + len(prompt), n_new + eos_read)
        stats["prompts"] += 1
        stats["prompt_tokens"] += len(prompt)
    stats["prompts_too_long"] = shard.too_long
    types = {"prompt_tokens": pa.int32(), "new_tokens": pa.int32()}
    table = pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in columns.items()})
    return table, stats


@dataclass
class GenerateContext:
    """The model an entry generates with, loaded as its hooks need it."""

    model: ModelSpec
    tokenizer: Any
    prefix: int  # the token every prompt is read after
    device: Any
    backend: str  # hf, vllm or server
    sources: list[tuple[Path, int]] | None = None  # per generated shard, its prompt shard and rows to read


class Generate(EntryStage):
    """One part per generate entry (`generate/NAME`); its shards are its prompt shards."""

    name = NAME
    summary = "the teacher writes a corpus from prompts (sequence-level KD)"
    description = (
        "For each entry of the job's `generate:` list, continue every prompt (each document's first "
        "prompt_tokens tokens of a split, or the prompts of a file) with the teacher and write "
        "RUN_DIR/generated/NAME/shard-*.parquet (id, text, source, prompt_id, prompt_tokens, new_tokens, "
        "finish_reason). Seeded; resumes inside a shard after a kill."
    )
    sections = ("seed",)  # plus the entry, its model and its prompts
    section = "generate"
    only = "generated corpus"
    none = "generate: the job lists no corpora to generate (generate: [{name: ...}])"

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        """Its settings, its model (and the backend that runs it) and its prompts: a file's content, or a
        prepared split."""
        from miniplm.generation.backends import pick_backend

        entry: GenerateConfig = part.item
        spec = source_model(job, entry)
        prompts: Input
        if isinstance(entry.prompts, PromptFile):
            prompts = Files(f"generate.{entry.name}.prompts", (P.readable_prompt_file(entry.prompts),))
        else:
            prompts = outputs.documents(
                entry.prompts, why=f"generate {entry.name!r} takes its prompts from the {entry.prompts} split"
            )
        backend = pick_backend(entry.backend, pick_device(entry.device))
        # behind a server, the weights are the server's (named in the settings); here only the tokenizer
        read = Tokenizer if backend == "server" else Model
        return [
            json.dumps(hashable_dump(entry), sort_keys=True),
            spec.model_dump_json(),
            backend,
            prompts,
            read("model", resolve_model(spec.model)),
        ]

    def spends_compute(self, entry: str) -> bool:
        return True

    def check(self, job: JobConfig) -> None:
        """Names that differ, and a teacher for the entries that write with it."""
        super().check(job)
        for g in job.generate:
            if g.model == "teacher" and job.teacher is None:
                raise ConfigError(f"generate: {g.name!r} writes with the teacher, and the job has no teacher")

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str] | None:
        entry: GenerateConfig = part.item
        if rd.stage_state(part.name).get("state") == "done":
            return [p.stem for p in sorted(rd.generated(entry.name).glob("shard-*.parquet"))]
        if isinstance(entry.prompts, PromptFile):
            folder = P.prompt_folder(rd, part.name)
            return [p.stem for p in P.file_prompt_shards(folder)] if (folder / "stats.json").exists() else None
        if rd.stage_state("prepare").get("state") != "done":
            return None
        return [shard_name(k, "") for k in range(len(P.split_plan(rd, entry.prompts, entry.limit)))]

    def setup(self, run: StageRun) -> GenerateContext:
        from miniplm.generation.backends import pick_backend

        entry: GenerateConfig = run.part.item
        spec = source_model(run.job, entry)
        if isinstance(entry.prompts, PromptFile):
            P.readable_prompt_file(entry.prompts)
        tokenizer = load_tokenizer(spec.model)
        tokenizer.model_max_length = sys.maxsize  # prompts are cut here, not by the tokenizer
        device = pick_device(entry.device)
        backend = pick_backend(entry.backend, device)
        if backend == "server":  # a wrong URL, key or model name stops here, before any shard
            from miniplm.server.client import ServerClient

            ServerClient(entry.server).check()
        return GenerateContext(spec, tokenizer, prefix_token(tokenizer, spec.model), device, backend)

    def outputs(self, run: StageRun) -> list[Path]:
        return [run.rd.generated(run.part.item.name)]

    def global_step(self, run: StageRun) -> None:
        entry: GenerateConfig = run.part.item
        if isinstance(entry.prompts, PromptFile):
            P.write_file_prompts(run.job, entry, P.prompt_folder(run.rd, run.name))

    def _sources(self, run: StageRun) -> list[tuple[Path, int]]:
        """Per generated shard, the prompt (or document) shard it reads and how many of its rows."""
        ctx: GenerateContext = run.context
        if ctx.sources is None:  # file prompts are written by the global step, so not known before it
            entry: GenerateConfig = run.part.item
            if isinstance(entry.prompts, PromptFile):
                files = P.file_prompt_shards(P.prompt_folder(run.rd, run.name))
                ctx.sources = [(f, pq.read_metadata(f).num_rows) for f in files]
            else:
                ctx.sources = P.split_plan(run.rd, entry.prompts, entry.limit)
        return ctx.sources

    def shards(self, run: StageRun) -> list[str]:
        return [shard_name(k, "") for k in range(len(self._sources(run)))]

    def run_shards(self, run: StageRun, todo: list[int]) -> None:
        from miniplm.generation import served
        from miniplm.generation.backends import HFBackend, VLLMBackend

        entry: GenerateConfig = run.part.item
        ctx: GenerateContext = run.context
        rd, tokenizer, spec = run.rd, ctx.tokenizer, ctx.model
        sources = self._sources(run)
        if ctx.backend == "server":
            from transformers import AutoConfig

            backend = served.ServerBackend(entry, tokenizer, AutoConfig.from_pretrained(resolve_model(spec.model)))
        elif ctx.backend == "vllm":
            backend = VLLMBackend(spec.model, spec.dtype, entry, tokenizer.eos_token_id)
        else:
            backend = HFBackend(
                spec.model, spec.dtype, ctx.device, entry, tokenizer.eos_token_id, tokenizer.pad_token_id
            )
        bar = tqdm(
            total=sum(sources[i][1] for i in todo),
            desc=run.name.replace("/", " "),
            unit="prompt",
            disable=not run.show_progress,
            dynamic_ncols=True,
        )
        with bar:
            progress = TokenRate(bar)
            for k in todo:
                if rd.stage_state(run.name).get("state") == "done":
                    break  # a late worker: the others finished meanwhile
                shard = P.read_prompts(*sources[k], entry, tokenizer, k, P.context_length(backend.config))
                if ctx.backend == "server":
                    table, stats = _assemble(run, backend, shard, served.generate_shard(run, backend, shard, progress))
                else:
                    table, stats = generate_shard(run, backend, shard, progress)
                with atomic_path(rd.generated_shard(entry.name, k)) as tmp:
                    pq.write_table(table, tmp, compression="zstd")
                atomic_write_json(rd.generated(entry.name) / shard_name(k, ".json"), stats)
                run.mark_done(shard_name(k, ""))
                shutil.rmtree(rd.work(run.name) / shard_name(k, ""), ignore_errors=True)

    def finish(self, run: StageRun) -> dict:
        from miniplm.generation.report import write_report

        entry: GenerateConfig = run.part.item
        out = run.rd.generated(entry.name)
        per_shard = [json.loads(p.read_text()) for p in sorted(out.glob("shard-*.json"))]
        counts: dict[str, Any] = {key: sum(s.get(key, 0) for s in per_shard) for key in STATS}
        counts["finish_reasons"] = {r: sum(s["finish_reasons"][r] for s in per_shard) for r in FINISH_REASONS}
        if entry.backend == "server":
            counts["server_prompt_tokens"] = sum(s["server_prompt_tokens"] for s in per_shard)
            counts["requests_failed"] = dict(sum((Counter(s["requests_failed"]) for s in per_shard), Counter()))
        counts["shards"] = len(per_shard)
        if isinstance(entry.prompts, PromptFile):
            read = P.file_prompt_stats(P.prompt_folder(run.rd, run.name))
            too_long = counts["prompts_too_long"]  # read = prompts + rejected, these among the rejected
            rejected = read["prompts_rejected"] | ({"too_long": too_long} if too_long else {})
            counts |= read | {"prompts": read["prompts"] - too_long, "prompts_rejected": rejected}
        counts["repetition"] = write_report(run.job, run.rd, entry)
        counts["flops"] = compute.record(generation=counts["flops"])
        return counts

    def describe_entry(self, job: JobConfig, name: str, c: dict) -> list[str]:
        reasons = ", ".join(f"{n:,} {r}" for r, n in c["finish_reasons"].items())
        lines = [
            f"generate {name}: {c['rows']:,} texts from {c['prompts']:,} prompts, {c['new_tokens']:,} "
            f"new tokens (stopped: {reasons}), {c['flops']['total']:.3g} FLOPs; in {job.run_dir}/generated/{name}"
        ]
        if c.get("prompts_too_long"):
            lines.append(
                f"generate {name}: {c['prompts_too_long']:,} prompts skipped, too long for the "
                "model's context (counted as rejected: too_long)"
            )
        for reason, n in c.get("requests_failed", {}).items():
            lines.append(f"generate {name}: {n:,} requests refused by the server, no text written ({reason})")
        return lines

    def warnings(self, job: JobConfig, result: dict[str, dict | None]) -> list[str]:
        """An entry that wrote no text (a token set made from it would be empty), and requests a server
        refused (their rows are missing)."""
        found = []
        for part, c in result.items():
            name = part.removeprefix(f"{NAME}/")
            if c is not None and c.get("requests_failed"):
                reasons = "; ".join(f"{n:,} x {r}" for r, n in c["requests_failed"].items())
                found.append(f"generate {name}: the server refused requests, their rows are missing: {reasons}")
            if c is None or c["rows"]:
                continue
            too_long = c.get("prompts_too_long")
            skipped = f"; {too_long:,} skipped, too long for the model's context" if too_long else ""
            found.append(
                f"generate {name}: no text was generated ({c['prompts']:,} prompts{skipped}): anything "
                f"made from generated/{name} would be empty; check its prompts"
            )
        return found

    def report(self, job: JobConfig, rd: RunDir) -> None:
        from miniplm.generation.report import write_report

        for entry in job.generate:
            if rd.stage_state(part_for(entry).name).get("state") == "done":
                write_report(job, rd, entry)


STAGE = Generate()
