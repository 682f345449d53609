"""A training's figures per step: metrics.jsonl (rank 0), and TensorBoard / W&B when asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from miniplm.errors import ConfigError
from miniplm.files import atomic_write_text
from miniplm.schema.students import StudentConfig


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
