"""Pretraining one model with DeepSpeed on packed token rows.

The data order is a pure function of (seed, step) (training/data.py), and a
checkpoint holds the DeepSpeed state (weights, optimizer, ZeRO partitions),
the step and the RNG states, so a run killed at any point and started again
continues from its last checkpoint with the same losses it would have had.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from miniplm import distributed
from miniplm.compute import record
from miniplm.corpus.instance_rows import PAD
from miniplm.corpus.tokens import TokenRows
from miniplm.errors import ConfigError, StageError
from miniplm.files import atomic_write_text, follow_umask, move_into
from miniplm.logs import library_output
from miniplm.lookups import init_model
from miniplm.models.flops import ModelFlops, datasheet_peak, matmul_rate
from miniplm.models.kernels import apply_liger_layers, attention_implementation, compile_layers, linear_ce_kernel
from miniplm.models.presets import default_lr, qwen_config
from miniplm.replicas import training_seed
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.schema.students import StudentConfig
from miniplm.training.data import RowPlan, to_tensor
from miniplm.training.objective import NextTokenLoss, lm_state_dict

if TYPE_CHECKING:
    from miniplm.training.distill import Distillation


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
    if bf16 and student.zero_stage >= 1:
        # bf16 weights for the passes, float32 master weights in the optimizer (DeepSpeed's), and
        # gradients accumulated over micro-batches in float32: in bf16, small gradients added to a
        # large sum vanish. DeepSpeed offers float32 accumulation with ZeRO only; stage 0 keeps bf16.
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return deep_merge(config, student.deepspeed)


def build_model(
    student: StudentConfig, tokenizer, seq_len: int, dtype: torch.dtype, device: str = "cpu", init: str | None = None
):
    """The student's Hugging Face model in float32 (DeepSpeed casts it to bf16 and keeps float32
    master weights): random weights of its preset or config, or the weights in `init`; with
    liger-kernel's fused layers and compiled decoder layers where asked for."""
    from transformers import AutoConfig, AutoModelForCausalLM

    attn = attention_implementation(dtype, device, choice=student.kernels)
    if init is not None:
        model = AutoModelForCausalLM.from_pretrained(
            init, attn_implementation=attn, dtype=torch.float32, device_map=device
        )
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            raise ConfigError(
                f"students.{student.name}: init {init!r} embeds {model.config.vocab_size} tokens, and "
                f"its token set's tokenizer has {len(tokenizer)}"
            )
    else:
        if student.preset:
            config = qwen_config(
                student.preset, len(tokenizer), max(seq_len, 2048), tokenizer.bos_token_id, tokenizer.eos_token_id
            )
        else:
            config = AutoConfig.from_pretrained(student.config)
            config.vocab_size = len(tokenizer)
        with torch.device(device):  # initialised where it trains: a 1B model takes seconds on a GPU, minutes on a CPU
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    if student.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if student.compile:
        # torch.compile fuses these layers itself; liger's Triton kernels inside compiled graphs
        # crashed with an illegal memory access on an H200 (torch 2.11, triton 3.6)
        compile_layers(model)
    else:
        apply_liger_layers(model, device, student.kernels)
    return model


def objective(
    student: StudentConfig, model: torch.nn.Module, device: str, distill: Distillation | None = None
) -> NextTokenLoss:
    """The module DeepSpeed trains: the model and its loss, with the fused kernel this machine has
    (and, for a distilled student, its distillation)."""
    zero3 = student.zero_stage == 3
    kernel = linear_ce_kernel(device, student.kernels, weight_in_backward=not zero3)
    return NextTokenLoss(model, kernel, zero3=zero3, distill=distill)


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
            raise ConfigError(
                f"students.{student.name}: tensorboard/wandb logging needs its package "
                f"(pip install tensorboard / wandb): {e}"
            ) from None

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

    rank, world = distributed.rank(), distributed.world_size()
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    bf16 = device.startswith("cuda")
    rows = TokenRows(rd.tokens(student.tokens))
    seq_len = rows.width - 1
    rows_per_step, leftover = divmod(student.batch_tokens, seq_len)
    if leftover or rows_per_step % (student.micro_batch * world):
        raise ConfigError(
            f"students.{student.name}: batch_tokens {student.batch_tokens} must be a multiple of "
            f"seq_len ({seq_len}) x micro_batch ({student.micro_batch}) x processes ({world})"
        )
    accumulation = rows_per_step // (student.micro_batch * world)
    seed = training_seed(job, student)
    plan = RowPlan(len(rows), rows_per_step, seed)
    heldout = TokenRows(rd.tokens(student.heldout)) if student.heldout else None

    torch.manual_seed(seed)
    model = build_model(
        student, tokenizer, seq_len, torch.bfloat16 if bf16 else torch.float32, device, init_model(job, student)
    )
    counted = ModelFlops.of(model)
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
    distill, teacher_flops_per_token = None, 0.0
    if student.kd is not None:
        from miniplm.training.distill import Distillation

        distill = Distillation.for_student(job, student, rd, len(tokenizer), device, len(rows), seq_len)
        teacher_flops_per_token = distill.teacher_flops_per_token(seq_len)
    with library_output():
        engine, optimizer, _, _ = deepspeed.initialize(
            model=objective(student, model, device, distill),
            optimizer=optimizer,
            config=deepspeed_config(student, accumulation, bf16),
        )
    work = rd.training(student.name)
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
    flops_per_token = 3 * counted.per_token((seq_len + 1) / 2) + teacher_flops_per_token
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
        lr = lr_at(step, peak_lr, student.warmup_steps, student.steps, student.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses: dict[str, list[torch.Tensor]] = {}
        for micro in plan.micro_batches(step, rank, world, student.micro_batch):
            loss = engine(to_tensor(rows, micro, device), micro)
            engine.backward(loss)
            engine.step()
            for key, value in {"loss": loss, **engine.module.terms}.items():
                losses.setdefault(key, []).append(value.detach())
        step += 1
        # the step's mean loss (and CE and KD terms) over ranks: waits for the step's last kernel
        means = {key: distributed.all_mean(torch.stack(v).mean()) for key, v in losses.items()}
        loss, terms = means.pop("loss"), means
        seconds = time.perf_counter() - started
        tokens_per_s = rows_per_step * seq_len / seconds
        last = {
            "step": step,
            "loss": loss,
            **terms,
            "lr": lr,
            "grad_norm": float(engine.get_global_grad_norm() or 0.0),
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * flops_per_token / peak_flops,
        }
        if datasheet:
            last["mfu_datasheet"] = tokens_per_s * flops_per_token / (datasheet * world)
        if heldout is not None and (step % student.eval_every == 0 or step == student.steps):
            last["heldout_loss"] = heldout_loss(
                engine, heldout, student.eval_rows, rank, world, student.micro_batch, device
            )
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
    tokens = student.steps * rows_per_step * seq_len
    flops = record(
        training=3 * student.steps * rows_per_step * counted.forward(seq_len),
        heldout=heldout_rows * counted.forward(seq_len),
        teacher=tokens * teacher_flops_per_token,
    )
    return (
        {k: last.get(k) for k in ("step", "loss", "heldout_loss")}
        | {k: last[k] for k in TERMS if k in last}
        | {"tokens": tokens, "seed": seed, "flops": flops}
    )


def _checkpoint_classes() -> list:
    """The classes besides tensors and plain containers that DeepSpeed's ZeRO checkpoints hold:
    plain records, safe to rebuild from a file."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_tensors_only(engine) -> None:
    """Make `engine` read checkpoint files as tensors and plain data only (torch's weights_only),
    never as arbitrary pickles that could run code: a run directory may be shared, and DeepSpeed
    itself unpickles everything. A file holding anything else is refused, named."""

    def load(path: str, map_location=None):
        try:
            with torch.serialization.safe_globals(_checkpoint_classes()):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[-1][:300]
            raise StageError(
                f"{path}: not a checkpoint miniplm wrote: it holds objects other than tensors and "
                f"DeepSpeed's state ({first}); it was not loaded. Move the checkpoint folder away to "
                "start over from the previous one, or redo the training with --force"
            ) from None

    engine.checkpoint_engine.load = load


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
