"""`miniplm prune`: a Minitron-style student cut out of the teacher, into RUN_DIR/models/NAME/.

For each entry of the job's `prune:` list: the calibration text (a split's
first documents, EOS-joined and cut into rows) runs once through the model
to rank attention heads, MLP neurons and embedding channels
(models/importance.py); those are pruned to the target shape
(models/pruning.py); when the target has fewer layers, each layer of the
width-pruned model is skipped in turn on the calibration text and the layers
whose absence raises the loss least are dropped. The result is a
save_pretrained folder with the model's tokenizer and `pruning.json` (what
was kept, the calibration losses); `students[].init: NAME` starts a student
from it.
"""

from __future__ import annotations

import html
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from miniplm import compute, outputs
from miniplm.entry_stage import EntryStage
from miniplm.errors import ConfigError, StageError
from miniplm.files import atomic_write_json, follow_umask, move_into
from miniplm.inputs import Input, Model
from miniplm.lookups import source_model
from miniplm.models.flops import forward_flops_per_token
from miniplm.models.loading import load_model, load_tokenizer, pick_device, resolve_model
from miniplm.models.text_tokens import token_ids
from miniplm.rundir import RunDir
from miniplm.schema.base import ModelSpec
from miniplm.schema.hashing import hashable_dump
from miniplm.schema.job import JobConfig
from miniplm.schema.prune import PruneConfig
from miniplm.stage import Part, StageRun

NAME = "prune"
SHARD = "model"
RECORD = "pruning.json"


def part_for(entry: PruneConfig) -> Part:
    return STAGE.part_for(entry)


@dataclass
class PruneContext:
    """The model an entry cuts, its tokenizer and the shape it is cut to."""

    model: ModelSpec
    tokenizer: Any
    shape: Any


def calibration_rows(rd: RunDir, entry: PruneConfig, tokenizer) -> list[list[int]]:
    """The split's first `docs` documents, each followed by EOS, joined and cut into rows of max_length tokens
    (the last one shorter)."""
    cal = entry.calibration
    texts: list[str] = []
    for shard in rd.doc_shards(cal.split):
        texts += pq.read_table(shard, columns=["text"])["text"].to_pylist()[: cal.docs - len(texts)]
        if len(texts) >= cal.docs:
            break
    eos = tokenizer.eos_token_id
    stream = [t for ids in token_ids(tokenizer, texts) for t in (*ids, eos)]
    rows = [stream[i : i + cal.max_length] for i in range(0, len(stream), cal.max_length)]
    return [r for r in rows if len(r) >= 2]


def _batches(rows: list[list[int]], batch_tokens: int, device: str) -> list:
    import torch

    width = len(rows[0])
    per_batch = max(batch_tokens // width, 1)
    full = [r for r in rows if len(r) == width]
    out = [torch.tensor(full[i : i + per_batch], device=device) for i in range(0, len(full), per_batch)]
    return out + [torch.tensor([r], device=device) for r in rows if len(r) != width]


def target_for(config, entry: PruneConfig, where: str) -> dict[str, int]:
    from miniplm.models.pruning import kv_heads_for, target_shape

    wanted = entry.target.sizes()
    if wanted["num_attention_heads"] and not wanted["num_key_value_heads"]:
        wanted["num_key_value_heads"] = kv_heads_for(config, wanted["num_attention_heads"])
    return target_shape(config, wanted, where)


def prune_model(run: StageRun) -> dict:
    """Cut the model to the target shape and save it; the record of what was done."""
    import torch

    from miniplm.models.importance import layer_importance, lm_loss, width_importance
    from miniplm.models.pruning import build, drop_layers, plan_width, pruned_config, shape_of

    entry: PruneConfig = run.part.item
    ctx: PruneContext = run.context
    spec, tokenizer, shape = ctx.model, ctx.tokenizer, ctx.shape
    device = pick_device(entry.device)
    rows = calibration_rows(run.rd, entry, tokenizer)
    if not rows:
        raise StageError(f"prune {entry.name}: the {entry.calibration.split} split has no calibration text")
    batches = _batches(rows, entry.batch_tokens, device)
    tokens = sum(len(r) for r in rows)
    context = (entry.calibration.max_length + 1) / 2
    torch.manual_seed(run.job.seed)
    model = load_model(spec.model, spec.dtype, device)
    importance, source_loss = width_importance(model, batches)
    plan = plan_width(model.config, importance, shape)
    flops = tokens * forward_flops_per_token(model.config, context)
    layers = model.config.num_hidden_layers
    record: dict = {
        "source": spec.model,
        "source_shape": shape_of(model.config),
        "shape": shape,
        "calibration": {"split": entry.calibration.split, "rows": len(rows), "tokens": tokens},
        "loss": {"source": source_loss},
    }
    if shape["num_hidden_layers"] < layers:
        wide = build(model, plan, shape | {"num_hidden_layers": layers})
        record["loss"]["width_pruned"], dropped = layer_importance(wide, batches, run.show_progress)
        plan.layers = drop_layers(dropped, shape["num_hidden_layers"])
        record["loss_with_layer_skipped"] = dropped
        # the width-pruned model with one layer skipped; which one does not change its count
        wide_config = pruned_config(model.config, shape | {"num_hidden_layers": layers - 1}, list(range(1, layers)))
        flops += tokens * (
            forward_flops_per_token(wide.config, context) + layers * forward_flops_per_token(wide_config, context)
        )
        del wide
    pruned = build(model, plan, shape)
    record["loss"]["pruned"] = lm_loss(pruned, batches)
    # what pruning gives over training from scratch, before any training: a random model of the same shape
    from transformers import AutoModelForCausalLM

    record["loss"]["random_init"] = lm_loss(
        AutoModelForCausalLM.from_config(pruned.config, dtype=pruned.dtype).eval(), batches
    )
    flops += 2 * tokens * forward_flops_per_token(pruned.config, context)
    record |= {
        "kept_layers": plan.layers,
        "kept_heads": [h.tolist() for h in plan.heads],
        "kept_key_value_heads": [g.tolist() for g in plan.groups],
        "channel_importance": importance.channels.tolist(),
        "parameters_source": model.num_parameters(),
        "parameters": pruned.num_parameters(),
        "flops": flops,
    }
    _save(run.rd.model(entry.name), pruned, tokenizer, record)
    return record


def _save(out: Path, model, tokenizer, record: dict) -> None:
    """A save_pretrained folder with the tokenizer and the record (its files each appear whole; files
    of the folder it did not write stay)."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / RECORD, record)
    follow_umask(tmp)  # save_pretrained writes the weights 0600; teammates sharing the run must read them
    move_into(tmp, out)


class Prune(EntryStage):
    """One part per prune entry (`prune/NAME`), each one shard: the model."""

    name = NAME
    summary = "cut a smaller student out of the teacher (Minitron: heads, neurons, channels, then layers)"
    description = (
        "For each entry of the job's `prune:` list, rank the teacher's attention heads, MLP neurons and "
        "embedding channels by their activations on calibration text, keep the most important ones, drop "
        "the layers that matter least, and save RUN_DIR/models/NAME (Hugging Face folder with the "
        "tokenizer and pruning.json). Llama- and Qwen2-shaped models. students[].init: NAME trains from it."
    )
    sections = ("seed",)  # plus the entry, its model and the prepared documents
    section = "prune"
    only = "pruned model"
    none = "prune: the job lists no models to prune (prune: [{name: ..., target: {...}}])"
    waiting = "another worker is pruning it"
    unit = "models"

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        """Its settings, the model it cuts by content and the split it calibrates on."""
        entry: PruneConfig = part.item
        spec = source_model(job, entry)
        split = entry.calibration.split
        return [
            json.dumps(hashable_dump(entry), sort_keys=True),
            spec.model_dump_json(),
            outputs.documents(split, why=f"prune {entry.name!r} calibrates on the {split} split"),
            Model("model", resolve_model(spec.model)),
        ]

    def spends_compute(self, entry: str) -> bool:
        return True

    def check(self, job: JobConfig) -> None:
        """A teacher for the entries that prune it."""
        super().check(job)
        for p in job.prune:
            if p.model == "teacher" and job.teacher is None:
                raise ConfigError(f"prune: {p.name!r} prunes the teacher, and the job has no teacher")

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str]:
        return [SHARD]

    def setup(self, run: StageRun) -> PruneContext:
        from transformers import AutoConfig

        from miniplm.models.pruning import check_prunable

        entry: PruneConfig = run.part.item
        spec = source_model(run.job, entry)
        where = f"prune.{entry.name}: {spec.model}"
        config = AutoConfig.from_pretrained(resolve_model(spec.model))
        check_prunable(config, where)
        shape = target_for(config, entry, where)
        tokenizer = load_tokenizer(spec.model)
        tokenizer.model_max_length = sys.maxsize  # documents are cut into rows here
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"{where}: its tokenizer has no EOS token to join calibration documents with")
        return PruneContext(spec, tokenizer, shape)

    def outputs(self, run: StageRun) -> list[Path]:
        return [run.rd.model(run.part.item.name)]

    def shards(self, run: StageRun) -> list[str]:
        return [SHARD]

    def run_shard(self, run: StageRun, index: int) -> None:
        prune_model(run)

    def finish(self, run: StageRun) -> dict:
        entry: PruneConfig = run.part.item
        record = json.loads((run.rd.model(entry.name) / RECORD).read_text())
        write_report(run.rd, entry.name, record)
        counts = {k: record[k] for k in ("shape", "parameters_source", "parameters", "kept_layers", "loss")}
        return counts | {"flops": compute.record(calibration=record["flops"])}

    def describe_entry(self, job: JobConfig, name: str, c: dict) -> list[str]:
        shape = ", ".join(f"{k} {v}" for k, v in c["shape"].items())
        return [
            f"prune {name}: {c['parameters_source']:,} -> {c['parameters']:,} parameters ({shape}); "
            f"calibration loss {c['loss']['source']:.4f} -> {c['loss']['pruned']:.4f} (a random "
            f"model of this shape: {c['loss']['random_init']:.4f}); model in {job.run_dir}/models/{name}"
        ]

    def report(self, job: JobConfig, rd: RunDir) -> None:
        for entry in job.prune:
            if rd.stage_state(part_for(entry).name).get("state") == "done":
                write_report(rd, entry.name, json.loads((rd.model(entry.name) / RECORD).read_text()))


def write_report(rd: RunDir, name: str, record: dict) -> None:
    from miniplm.report.figures import html_table
    from miniplm.report.page import assemble, write_section

    rows = [[k, f"{record['source_shape'][k]:,}", f"{v:,}"] for k, v in record["shape"].items()]
    rows.append(["parameters", f"{record['parameters_source']:,}", f"{record['parameters']:,}"])
    losses = ", ".join(f"{html.escape(k.replace('_', ' '))} {v:.4f}" for k, v in record["loss"].items())
    parts = [
        f"<h2>Pruned model: {html.escape(name)}</h2>",
        f"<p>Cut out of {html.escape(record['source'])} on {record['calibration']['tokens']:,} calibration tokens "
        f"of the {html.escape(record['calibration']['split'])} split. Calibration loss per token: {losses}.</p>",
        html_table(["", "source", "pruned"], rows, "counts"),
        f"<p>Layers kept: {', '.join(map(str, record['kept_layers']))}.</p>",
    ]
    write_section(rd, 45, f"pruned-{name}", "\n".join(parts))
    assemble(rd)


STAGE = Prune()
