"""How many rows each forward pass takes, and so how many passes make the global batch.

A user asks for the global batch in tokens (`batch_tokens`); each device's
share of a step is cut into micro-batches, one forward and backward pass
each, their gradients accumulated. Three ways to size them:

- `micro_batch: N` rows, as asked (it must divide the device's share);
- `micro_batch_tokens: N`: the largest whole number of rows within N tokens
  that divides the share, so a small model is not starved at a few rows;
- `micro_batch_tokens: auto` (the default): on a GPU, the largest that fits
  its memory beside the optimizer's state, measured once by passes of growing
  size and recorded in the training folder, so a resumed run keeps it; on a
  CPU, the largest within AUTO_CPU_TOKENS.

The losses do not depend on the choice beyond float rounding: every micro-batch
of rows without padding has the same number of predicted tokens, so the mean of
their mean losses is the step's mean loss.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from miniplm.errors import ConfigError
from miniplm.files import atomic_write_text
from miniplm.schema.students import StudentConfig

AUTO_MAX_TOKENS = 65_536  # past this, bigger passes gain nothing measurable and cost memory
AUTO_CPU_TOKENS = 8_192
HEADROOM = 0.85  # of the GPU's memory a probe may use: what DeepSpeed's buffers and fragmentation leave
RECORD = "micro_batch.json"


@dataclass(frozen=True)
class MicroBatch:
    rows: int  # per device per forward pass
    accumulation: int  # forward passes per optimizer step on each device
    how: str  # how the size was chosen, in words (reported with the training's figures)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def rows_per_step(student: StudentConfig, seq_len: int, world: int) -> tuple[int, int]:
    """The global batch in rows, and each device's share of it."""
    rows, leftover = divmod(student.batch_tokens, seq_len)
    if leftover or rows == 0 or rows % world:
        raise ConfigError(
            f"students.{student.name}: batch_tokens {student.batch_tokens} must be a multiple of "
            f"seq_len ({seq_len}) x processes ({world})"
        )
    return rows, rows // world


def is_auto(student: StudentConfig) -> bool:
    """Whether the micro-batch is measured (`micro_batch_tokens: auto`, or nothing given)."""
    return student.micro_batch is None and student.micro_batch_tokens in (None, "auto")


def largest_within(share: int, limit_rows: int) -> int:
    """The largest divisor of `share` that is at most `limit_rows` (1 at least)."""
    return max(d for d in divisors(share) if d <= max(limit_rows, 1))


def choose(
    student: StudentConfig,
    seq_len: int,
    world: int,
    record: Path | None = None,
    fits: Callable[[int], bool] | None = None,
) -> MicroBatch:
    """The micro-batch for `student` on rows of `seq_len` + 1 tokens over `world` processes.

    For `auto`, `fits(rows)` says whether a pass of that many rows fits this device (None: a CPU,
    no measuring); `record` is the file that keeps the choice for a resumed run."""
    _, share = rows_per_step(student, seq_len, world)
    if student.micro_batch is not None:
        if share % student.micro_batch:
            raise ConfigError(
                f"students.{student.name}: micro_batch {student.micro_batch} must divide each process's "
                f"{share} rows a step (batch_tokens {student.batch_tokens} / seq_len {seq_len} / {world} processes)"
            )
        return MicroBatch(student.micro_batch, share // student.micro_batch, f"{student.micro_batch} rows as asked")
    if isinstance(student.micro_batch_tokens, int):
        if student.micro_batch_tokens < seq_len:
            raise ConfigError(
                f"students.{student.name}: micro_batch_tokens {student.micro_batch_tokens} is less than one "
                f"row of {seq_len} tokens"
            )
        rows = largest_within(share, student.micro_batch_tokens // seq_len)
        return MicroBatch(rows, share // rows, f"{rows * seq_len} tokens, within {student.micro_batch_tokens} asked")
    kept = recorded(record, seq_len, share)
    return kept if kept is not None else _measure(share, seq_len, fits)


def keep(record: Path, chosen: MicroBatch, seq_len: int, share: int) -> None:
    """Record an `auto` choice for later starts of the same training."""
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(asdict(chosen) | {"seq_len": seq_len, "share": share}, indent=1) + "\n")


def recorded(record: Path | None, seq_len: int, share: int) -> MicroBatch | None:
    """The choice an earlier start of this training made, if it was for these shapes."""
    if record is None or not record.exists():
        return None
    kept = json.loads(record.read_text())
    if (kept.get("seq_len"), kept.get("share")) != (seq_len, share):
        return None
    return MicroBatch(kept["rows"], kept["accumulation"], kept["how"])


def _measure(share: int, seq_len: int, fits: Callable[[int], bool] | None) -> MicroBatch:
    """The largest candidate that fits, trying them from the smallest up (a pass that does not fit
    would leave the allocator's memory cut up for the rest of the run: stop at the first)."""
    if fits is None:
        rows = largest_within(share, AUTO_CPU_TOKENS // seq_len)
        return MicroBatch(rows, share // rows, f"auto: {rows * seq_len} tokens (CPU: at most {AUTO_CPU_TOKENS})")
    candidates = [d for d in divisors(share) if d * seq_len <= max(AUTO_MAX_TOKENS, seq_len)]
    best = None
    for rows in candidates:
        if not fits(rows):
            break
        best = rows
    if best is None:
        raise ConfigError(
            f"one row of {seq_len} tokens does not fit this GPU's memory beside the model and its "
            "optimizer state: try gradient_checkpointing: true, zero_stage 2 or 3, or offload_optimizer: true"
        )
    return MicroBatch(best, share // best, f"auto: {best * seq_len} tokens, the largest that fits (measured)")


def optimizer_state_bytes(n_params: int, student: StudentConfig, world: int) -> int:
    """What DeepSpeed holds on each GPU beyond a bf16 model and its bf16 gradients: float32 master
    weights and Adam's two moments (split over ranks from ZeRO-1 on, on the CPU when offloaded),
    and float32 gradients accumulated over the micro-batches (split from ZeRO-2 on). An estimate:
    HEADROOM covers the buffers it leaves out."""
    share = world if student.zero_stage >= 1 else 1
    master_and_moments = 0 if student.offload_optimizer else 12 * n_params // share
    accumulated = 4 * n_params // (world if student.zero_stage >= 2 else 1)
    return master_and_moments + accumulated


def gpu_probe(module: torch.nn.Module, vocab: int, seq_len: int, device: str, reserve: int) -> Callable[[int], bool]:
    """`fits(rows)`: one forward and backward pass of `rows` random rows through `module` (the bf16
    model and its loss, eager), with `reserve` bytes held for the optimizer's state, peaking within
    HEADROOM of the GPU's memory. The gradients are dropped after each pass."""
    total = torch.cuda.get_device_properties(device).total_memory

    def fits(rows: int) -> bool:
        held = None
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            held = torch.empty(reserve, dtype=torch.uint8, device=device)
            batch = torch.randint(0, vocab, (rows, seq_len + 1), device=device)
            module(batch).backward()
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) <= HEADROOM * total
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            del held
            module.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    return fits
