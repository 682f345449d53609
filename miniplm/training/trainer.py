"""Pretraining one model with DeepSpeed on packed token rows.

The data order is a pure function of (seed, step) (training/data.py), and a
checkpoint holds the DeepSpeed state (weights, optimizer, ZeRO partitions),
the step and the RNG states, so a run killed at any point and started again
continues from its last checkpoint with the same losses it would have had.
`prepare` and `train_step` are the whole of what a step runs; the benchmark
times them as they are.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from miniplm import distributed
from miniplm.compute import record
from miniplm.corpus.instance_rows import PAD
from miniplm.corpus.tokens import TokenRows
from miniplm.files import follow_umask, move_into
from miniplm.logs import library_output
from miniplm.lookups import init_model
from miniplm.models.flops import ModelFlops, datasheet_peak, matmul_rate
from miniplm.models.presets import default_lr
from miniplm.replicas import training_seed
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.schema.students import StudentConfig
from miniplm.training import micro_batches
from miniplm.training.data import RowPlan, to_tensor
from miniplm.training.engine import build_model, deepspeed_config, load_tensors_only, objective, speed_up
from miniplm.training.metrics import Metrics
from miniplm.training.micro_batches import MicroBatch
from miniplm.training.objective import lm_state_dict

if TYPE_CHECKING:
    from miniplm.training.distill import Distillation


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from `peak` to `peak * min_ratio` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class Prepared:
    """A student ready to train: DeepSpeed's engine and optimizer, and what its figures need."""

    engine: Any
    optimizer: torch.optim.Optimizer
    micro: MicroBatch
    rows_per_step: int
    counted: ModelFlops
    peak_lr: float


def prepare(
    student: StudentConfig,
    tokenizer,
    seq_len: int,
    device: str,
    *,
    init: str | None = None,
    distill: Distillation | None = None,
    record: Path | None = None,
) -> Prepared:
    """The model, its micro-batch, its speed-ups and the DeepSpeed engine, on every rank alike.
    `record`: where an `auto` micro-batch is kept for later starts."""
    import deepspeed

    world, bf16 = distributed.world_size(), device.startswith("cuda")
    rows_per_step, share = micro_batches.rows_per_step(student, seq_len, world)
    model = build_model(student, tokenizer, seq_len, torch.bfloat16 if bf16 else torch.float32, device, init)
    loss = objective(student, model, device, distill)
    fits = None
    auto = micro_batches.is_auto(student)
    if bf16 and auto:
        model.to(torch.bfloat16)  # as DeepSpeed would next: the passes measured are the training's
        reserve = micro_batches.optimizer_state_bytes(sum(p.numel() for p in model.parameters()), student, world)
        fits = micro_batches.gpu_probe(loss, len(tokenizer), seq_len, device, reserve)
    micro = micro_batches.choose(student, seq_len, world, record, fits)
    if micro.rows != (least := distributed.all_min(micro.rows)):  # every rank runs the same passes
        micro = MicroBatch(least, share // least, micro.how + f"; {least} rows, the least over ranks")
    if auto and record is not None and distributed.rank() == 0 and not micro_batches.recorded(record, seq_len, share):
        micro_batches.keep(record, micro, seq_len, share)
    speed_up(model, loss, student)
    peak_lr = student.lr or default_lr(student.preset)
    # fused: one kernel for the whole update on the GPU (not for optimizer states offloaded to the CPU)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=peak_lr,
        betas=student.betas,
        eps=student.eps,
        weight_decay=student.weight_decay,
        fused=bf16 and not student.offload_optimizer,
    )
    with library_output():
        engine, optimizer, _, _ = deepspeed.initialize(
            model=loss, optimizer=optimizer, config=deepspeed_config(student, micro.rows, micro.accumulation, bf16)
        )
    return Prepared(engine, optimizer, micro, rows_per_step, ModelFlops.of(model), peak_lr)


def train_step(run: Prepared, rows: TokenRows, plan: RowPlan, step: int, lr: float, device: str) -> dict[str, Any]:
    """One optimizer step (0-based `step`) over this rank's micro-batches: the losses (and CE and KD
    terms) as tensors on the device, nothing waited for."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    losses: dict[str, list[torch.Tensor]] = {}
    rank, world = distributed.rank(), distributed.world_size()
    for micro in plan.micro_batches(step, rank, world, run.micro.rows):
        loss = run.engine(to_tensor(rows, micro, device), micro)
        run.engine.backward(loss)
        run.engine.step()
        for key, value in {"loss": loss, **run.engine.module.terms}.items():
            losses.setdefault(key, []).append(value.detach())
    return {key: torch.stack(v).mean() for key, v in losses.items()}


def heldout_batches(n_rows: int, rank: int, world: int, micro: int) -> list[list[int | None]]:
    """This rank's micro-batches of the first `n_rows` rows, None where it pads. Every rank gets the
    same number of full micro-batches: under ZeRO-3 each forward gathers the parameters from all
    ranks, and a rank with one forward fewer would leave the others waiting for ever."""
    per_rank = math.ceil(n_rows / world)
    mine: list[int | None] = list(range(rank, n_rows, world))
    mine += [None] * (math.ceil(per_rank / micro) * micro - len(mine))
    return [mine[start : start + micro] for start in range(0, len(mine), micro)]


TERMS = ("ce_loss", "kd_loss")  # what a distilled student's loss is made of, in its metrics and counts


@torch.no_grad()
def heldout_loss(engine, rows: TokenRows, n_rows: int, rank: int, world: int, micro: int, device: str) -> float:
    """Mean token loss over the first `n_rows` held-out rows, split among ranks."""
    engine.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # on the device: no wait per batch
    for indices in heldout_batches(min(n_rows, len(rows)), rank, world, micro):
        batch = to_tensor(rows, [0 if i is None else i for i in indices], device)
        batch[torch.tensor([i is None for i in indices], device=device)] = PAD  # filler: nothing predicted
        count = (batch[:, 1:] != PAD).sum()
        total[0] += engine(batch).double() * count
        total[1] += count
    loss_sum, count = distributed.all_sum(total)
    engine.train()
    return loss_sum / count if count else float("nan")


def train(job: JobConfig, student: StudentConfig, rd: RunDir, tokenizer, show_progress: bool) -> dict:
    rank, world = distributed.rank(), distributed.world_size()
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    bf16 = device.startswith("cuda")
    rows = TokenRows(rd.tokens(student.tokens))
    seq_len = rows.width - 1
    seed = training_seed(job, student)
    heldout = TokenRows(rd.tokens(student.heldout)) if student.heldout else None
    work = rd.training(student.name)

    torch.manual_seed(seed)
    distill, teacher_flops_per_token = None, 0.0
    if student.kd is not None:
        from miniplm.training.distill import Distillation

        distill = Distillation.for_student(job, student, rd, len(tokenizer), device, len(rows), seq_len)
        teacher_flops_per_token = distill.teacher_flops_per_token(seq_len)
    run = prepare(
        student,
        tokenizer,
        seq_len,
        device,
        init=init_model(job, student),
        distill=distill,
        record=work / micro_batches.RECORD,
    )
    engine, micro = run.engine, run.micro
    plan = RowPlan(len(rows), run.rows_per_step, seed)
    checkpoints = work / "checkpoints"
    step, last = 0, {}
    if (checkpoints / "latest").exists():
        load_tensors_only(engine)
        _, client = engine.load_checkpoint(str(checkpoints))
        step = client["step"]
        torch.set_rng_state(client["rng"])
        # what the checkpoint's step logged: a run killed after its last checkpoint reports it again
        last = client.get("last", {})

    # forward + backward of the student, and the teacher's forward when it runs in the loop
    flops_per_token = 3 * run.counted.per_token((seq_len + 1) / 2) + teacher_flops_per_token
    peak_flops = matmul_rate(torch.bfloat16 if bf16 else torch.float32, device) * world
    datasheet = datasheet_peak(device) if bf16 else None  # what other trainers' MFU is against
    metrics = Metrics(work / "metrics.jsonl", step, student, active=rank == 0)
    bar = tqdm(
        total=student.steps,
        initial=step,
        desc=f"train {student.name}",
        unit="step",
        disable=rank != 0 or not show_progress,
        dynamic_ncols=True,
    )
    while step < student.steps:
        started = time.perf_counter()
        lr = lr_at(step, run.peak_lr, student.warmup_steps, student.steps, student.min_lr_ratio)
        losses = train_step(run, rows, plan, step, lr, device)
        step += 1
        # the step's mean loss (and CE and KD terms) over ranks: waits for the step's last kernel
        means = {key: distributed.all_mean(value) for key, value in losses.items()}
        loss, terms = means.pop("loss"), means
        seconds = time.perf_counter() - started
        tokens_per_s = run.rows_per_step * seq_len / seconds
        last = {
            "step": step,
            "loss": loss,
            **terms,
            "lr": lr,
            "grad_norm": float(engine.get_global_grad_norm() or 0.0),
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * flops_per_token / peak_flops,
            "micro_batch_rows": micro.rows,
        }
        if datasheet:
            last["mfu_datasheet"] = tokens_per_s * flops_per_token / (datasheet * world)
            last["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        if heldout is not None and (step % student.eval_every == 0 or step == student.steps):
            last["heldout_loss"] = heldout_loss(engine, heldout, student.eval_rows, rank, world, micro.rows, device)
        if student.log_rows:
            last["rows"] = plan.step_rows(step - 1).tolist()
        metrics.log(last)
        bar.update()
        bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}", mfu=f"{last['mfu']:.1%}", refresh=False)
        if step % student.checkpoint_every == 0 or step == student.steps:
            engine.save_checkpoint(
                str(checkpoints),
                tag=f"step-{step:08d}",
                client_state={"step": step, "rng": torch.get_rng_state(), "last": last},
            )
            if rank == 0:  # keep the newest two: the last one may be cut short by a kill
                for old in sorted(checkpoints.glob("step-*"))[:-2]:
                    shutil.rmtree(old, ignore_errors=True)
    bar.close()
    _export(engine, student, tokenizer, rd, rank)
    evaluations = len([s for s in range(1, student.steps + 1) if s % student.eval_every == 0 or s == student.steps])
    heldout_rows = evaluations * min(student.eval_rows, len(heldout)) if heldout is not None else 0
    tokens = student.steps * run.rows_per_step * seq_len
    flops = record(
        training=3 * student.steps * run.rows_per_step * run.counted.forward(seq_len),
        heldout=heldout_rows * run.counted.forward(seq_len),
        teacher=tokens * teacher_flops_per_token,
    )
    return (
        {k: last.get(k) for k in ("step", "loss", "heldout_loss")}
        | {k: last[k] for k in TERMS if k in last}
        | {"tokens": tokens, "seed": seed, "flops": flops}
        | {"micro_batch": f"{micro.rows} rows, {micro.accumulation} a step"}
    )


def _export(engine, student: StudentConfig, tokenizer, rd: RunDir, rank: int) -> None:
    """The final weights as a plain Hugging Face folder with the tokenizer, written by rank 0. Other
    files in the folder (a user's notes) stay; each file written appears whole."""
    state = engine._zero3_consolidated_16bit_state_dict() if student.zero_stage == 3 else engine.module.state_dict()
    if rank != 0:
        return
    out = rd.model(student.name)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    engine.module.lm.save_pretrained(tmp, state_dict={k: v.float() for k, v in lm_state_dict(state).items()})
    tokenizer.save_pretrained(tmp)
    follow_umask(tmp)  # save_pretrained writes the weights 0600; teammates sharing the run must read them
    move_into(tmp, out)
