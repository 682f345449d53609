"""Pretraining one model with DeepSpeed on packed token rows.

The data order is a pure function of (seed, step) (training/data.py), and a
checkpoint holds the DeepSpeed state (weights, optimizer, ZeRO partitions),
the step and the RNG states, so a run killed at any point and started again
continues from its last checkpoint with the same losses it would have had.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from miniplm.config import JobConfig, StudentConfig
from miniplm.corpus.tokens import TokenRows
from miniplm.errors import ConfigError
from miniplm.files import atomic_write_text
from miniplm.logs import library_output
from miniplm.models.flops import forward_flops_per_token, matmul_rate
from miniplm.models.loading import attention_implementation
from miniplm.models.presets import default_lr, qwen_config
from miniplm.rundir import RunDir
from miniplm.training.data import RowPlan, to_tensor


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from `peak` to `peak * min_ratio` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def deepspeed_config(student: StudentConfig, accumulation: int, bf16: bool) -> dict:
    zero: dict[str, Any] = {"stage": student.zero_stage}
    if student.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": student.micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": student.clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        # we pass torch's AdamW: no C++ optimizer to build, and offload still works
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31,
    }
    return deep_merge(config, student.deepspeed)


def build_model(student: StudentConfig, tokenizer, seq_len: int, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    if student.preset:
        config = qwen_config(student.preset, len(tokenizer), max(seq_len, 2048), tokenizer.bos_token_id,
                             tokenizer.eos_token_id)
    else:
        config = AutoConfig.from_pretrained(student.config)
        config.vocab_size = len(tokenizer)
    attn = attention_implementation() if dtype == torch.bfloat16 else "sdpa"
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    if student.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _all_mean(value: torch.Tensor, world: int) -> float:
    if world > 1:
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.SUM)
        value = value / world
    return float(value)


def _loss(engine, batch: torch.Tensor) -> torch.Tensor:
    logits = engine(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


TERMS = ("ce_loss", "kd_loss")  # what a distilled student's loss is made of, in its metrics and counts


def _plain_loss(engine, batch: torch.Tensor, rows) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pretraining without a teacher: the cross-entropy, and no other terms to report."""
    return _loss(engine, batch), {}


@torch.no_grad()
def heldout_loss(engine, rows: TokenRows, n_rows: int, rank: int, world: int, micro: int, device: str) -> float:
    """Mean token loss over the first `n_rows` held-out rows, split among ranks."""
    engine.eval()
    mine = list(range(rank, min(n_rows, len(rows)), world))
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for start in range(0, len(mine), micro):
        batch = to_tensor(rows, mine[start : start + micro], device)
        total[0] += float(_loss(engine, batch)) * batch[:, 1:].numel()
        total[1] += batch[:, 1:].numel()
    if world > 1:
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    engine.train()
    return float(total[0] / total[1]) if total[1] else float("nan")


class Metrics:
    """metrics.jsonl (rank 0), and TensorBoard / W&B when asked for."""

    def __init__(self, path: Path, resume_step: int, student: StudentConfig, active: bool):
        self.path, self.active = path, active
        self.writers: list[Any] = []
        if not active:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # drop lines past the checkpoint we resume from: they will be written again
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        try:
            if student.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writers.append(("tb", SummaryWriter(str(path.parent / "tensorboard"))))
            if student.wandb:
                import wandb

                self.writers.append(("wandb", wandb.init(project="miniplm", name=student.name, resume="allow")))
        except ImportError as e:
            raise ConfigError(f"students.{student.name}: tensorboard/wandb logging needs its package "
                              f"(pip install tensorboard / wandb): {e}") from None

    def log(self, record: dict) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        for kind, writer in self.writers:
            if kind == "tb":
                for key, value in numbers.items():
                    writer.add_scalar(key, value, record["step"])
            else:
                writer.log(numbers, step=record["step"])


def train(job: JobConfig, student: StudentConfig, rd: RunDir, tokenizer, show_progress: bool) -> dict:
    import deepspeed

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    bf16 = device.startswith("cuda")
    rows = TokenRows(rd.tokens(student.tokens))
    seq_len = rows.width - 1
    rows_per_step, leftover = divmod(student.batch_tokens, seq_len)
    if leftover or rows_per_step % (student.micro_batch * world):
        raise ConfigError(f"students.{student.name}: batch_tokens {student.batch_tokens} must be a multiple of "
                          f"seq_len ({seq_len}) x micro_batch ({student.micro_batch}) x processes ({world})")
    accumulation = rows_per_step // (student.micro_batch * world)
    plan = RowPlan(len(rows), rows_per_step, job.seed)
    heldout = TokenRows(rd.tokens(student.heldout)) if student.heldout else None

    torch.manual_seed(job.seed)
    model = build_model(student, tokenizer, seq_len, torch.bfloat16 if bf16 else torch.float32)
    peak_lr = student.lr or default_lr(student.preset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=student.betas, eps=student.eps,
                                  weight_decay=student.weight_decay)
    with library_output():
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                       config=deepspeed_config(student, accumulation, bf16))
    work = rd.training(student.name)
    checkpoints = work / "checkpoints"
    step = 0
    if (checkpoints / "latest").exists():
        _, client = engine.load_checkpoint(str(checkpoints))
        step = client["step"]
        torch.set_rng_state(client["rng"])

    step_loss = _plain_loss
    teacher_flops_per_token = 0.0
    if student.kd is not None:
        from miniplm.training.distill import Distillation

        distill = Distillation.for_student(job, student, rd, len(tokenizer), device, len(rows), seq_len)
        step_loss, teacher_flops_per_token = distill.losses, distill.teacher_flops_per_token(seq_len)
    # forward + backward of the student, and the teacher's forward when it runs in the loop
    flops_per_token = 3 * forward_flops_per_token(model.config, (seq_len + 1) / 2) + teacher_flops_per_token
    peak_flops = matmul_rate(torch.bfloat16 if bf16 else torch.float32, device) * world
    metrics = Metrics(work / "metrics.jsonl", step, student, active=rank == 0)
    bar = tqdm(total=student.steps, initial=step, desc=f"train {student.name}", unit="step",
               disable=rank != 0 or not show_progress, dynamic_ncols=True)
    last: dict[str, Any] = {}
    while step < student.steps:
        started = time.perf_counter()
        lr = lr_at(step, peak_lr, student.warmup_steps, student.steps, student.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses: dict[str, list[torch.Tensor]] = {}
        for micro in plan.micro_batches(step, rank, world, student.micro_batch):
            loss, terms = step_loss(engine, to_tensor(rows, micro, device), micro)
            engine.backward(loss)
            engine.step()
            for key, value in {"loss": loss, **terms}.items():
                losses.setdefault(key, []).append(value.detach())
        step += 1
        seconds = time.perf_counter() - started
        tokens_per_s = rows_per_step * seq_len / seconds
        last = {"step": step, **{key: _all_mean(torch.stack(v).mean(), world) for key, v in losses.items()}, "lr": lr,
                "grad_norm": float(engine.get_global_grad_norm() or 0.0), "tokens_per_s": tokens_per_s,
                "mfu": tokens_per_s * flops_per_token / peak_flops}
        if heldout is not None and (step % student.eval_every == 0 or step == student.steps):
            last["heldout_loss"] = heldout_loss(engine, heldout, student.eval_rows, rank, world, student.micro_batch,
                                                device)
        if student.log_rows:
            last["rows"] = plan.step_rows(step - 1).tolist()
        metrics.log(last)
        bar.update()
        bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}", mfu=f"{last['mfu']:.1%}", refresh=False)
        if step % student.checkpoint_every == 0 or step == student.steps:
            engine.save_checkpoint(str(checkpoints), tag=f"step-{step:08d}",
                                   client_state={"step": step, "rng": torch.get_rng_state()})
            if rank == 0:  # keep the newest two: the last one may be cut short by a kill
                for old in sorted(checkpoints.glob("step-*"))[:-2]:
                    shutil.rmtree(old, ignore_errors=True)
    bar.close()
    _export(engine, student, tokenizer, rd, rank)
    tokens = student.steps * rows_per_step * seq_len
    return {k: last.get(k) for k in ("step", "loss", "heldout_loss")} | {k: last[k] for k in TERMS if k in last} | {
        "tokens": tokens, "flops": tokens * flops_per_token, "teacher_flops": tokens * teacher_flops_per_token}


def _export(engine, student: StudentConfig, tokenizer, rd: RunDir, rank: int) -> None:
    """The final weights as a plain Hugging Face folder with the tokenizer, written by rank 0."""
    state = engine._zero3_consolidated_16bit_state_dict() if student.zero_stage == 3 else engine.module.state_dict()
    if rank != 0:
        return
    out = rd.model(student.name)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    engine.module.save_pretrained(tmp, state_dict={k: v.float() for k, v in state.items()})
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
