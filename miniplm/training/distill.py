"""What distillation adds to a training step: the teacher's side of each micro-batch (the teacher run
on the rows, or what the teacher-logits stage stored for them: top-k or top-p log-probs, or tokens
drawn from the teacher; read in the same (seed, step) row order), and the loss
(1 - weight) * CE + weight * KD computed from the student's final hidden states a chunk of
positions at a time (miniplm/training/kd_losses.py).

The teacher is a frozen copy on every rank, outside DeepSpeed. The loss takes the student's final
hidden states and output layer as tensors (training/objective.py hands them over) and computes its
gradients in the forward pass.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from miniplm.corpus.instance_rows import PAD
from miniplm.errors import StageError
from miniplm.lookups import teacher_model
from miniplm.models.linear_ce import Head
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.schema.students import KDConfig, StudentConfig
from miniplm.training.kd_losses import (
    KDLoss,
    OnlineTeacher,
    SampledTeacher,
    TopKTeacher,
    distill_losses,
    liger_applies,
    liger_distill_losses,
)
from miniplm.training.logit_files import TeacherLogitRows
from miniplm.training.teacher import Teacher


class Distillation:
    """A student's KD: built once per training run, asked for each micro-batch's losses. The
    teacher's side is a Teacher (online) or stored rows (offline)."""

    def __init__(
        self, kd: KDConfig, vocab: int, device: str, teacher: Teacher | TeacherLogitRows, compiled: bool = False
    ):
        self.kd = KDLoss(kd.loss, kd.temperature, kd.beta)
        self.compiled = compiled  # the stored-teacher loss's chunks through torch.compile
        self.weight = kd.weight
        self.vocab = vocab
        self.device = device
        self.teacher = teacher if isinstance(teacher, Teacher) else None
        self.stored = teacher if isinstance(teacher, TeacherLogitRows) else None
        # liger-kernel's fused linear JSD on CUDA, when installed (its Triton kernels need a GPU)
        self.fused = device.startswith("cuda") and all(importlib.util.find_spec(m) for m in ("liger_kernel", "triton"))

    @classmethod
    def for_student(
        cls, job: JobConfig, student: StudentConfig, rd: RunDir, vocab: int, device: str, n_rows: int, seq_len: int
    ) -> "Distillation":
        """Load the teacher, or open the stored log-probs (checking that they cover the token set)."""
        kd = student.kd
        assert kd is not None
        if kd.source == "online":
            name, dtype = teacher_model(job, kd.teacher)
            return cls(kd, vocab, device, Teacher(name, vocab, dtype, device), student.compile != "off")
        folder = rd.teacher_logits(str(kd.logits))
        stored = TeacherLogitRows(folder)
        layout = stored.layout
        if (len(stored), layout.seq_len, layout.vocab) != (n_rows, seq_len, vocab):
            raise StageError(
                f"{folder}: {len(stored)} rows of {layout.seq_len} positions over {layout.vocab} tokens, "
                f"and token set {student.tokens!r} has {n_rows} rows of {seq_len} over {vocab}; run "
                f"`miniplm teacher-logits --only {kd.logits} --force`"
            )
        return cls(kd, vocab, device, stored, student.compile != "off")

    def teacher_flops_per_token(self, seq_len: int) -> float:
        """The teacher's forward FLOPs per trained token (none offline: the teacher-logits stage spent them)."""
        return self.teacher.flops_per_token((seq_len + 1) / 2) if self.teacher is not None else 0.0

    def _teacher_side(self, batch: torch.Tensor, rows: np.ndarray) -> OnlineTeacher | TopKTeacher | SampledTeacher:
        if self.teacher is not None:
            return self.teacher.side(batch[:, :-1])
        assert self.stored is not None
        stored = self.stored.batch(rows, self.device)
        if self.stored.layout.mode == "sampled":
            return SampledTeacher(stored.ids, stored.logp)
        # k = vocabulary: nothing is left over, and the loss is the full one
        rest = None if self.stored.layout.top_k == self.vocab else stored.rest
        return TopKTeacher(stored.ids, stored.logp, rest, stored.valid)

    def losses(
        self, hidden: torch.Tensor, batch: torch.Tensor, rows: np.ndarray, head: Head
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss to back-propagate for a micro-batch of token rows (`rows`: their indices in the
        token set), from the student's final hidden states [positions, d] and output layer; and its
        cross-entropy and KD terms, over the positions whose target is not PAD.

        Both models are compared over the tokenizer's tokens: an output layer wider than the
        tokenizer (a student pruned from Qwen keeps its 151,936 rows for 151,646 tokens) is cut to
        it, so the student's cross-entropy is over the same tokens as its KD term, and the rows no
        token maps to get no gradient."""
        teacher = self._teacher_side(batch, rows)
        args = (hidden, batch[:, 1:].reshape(-1), head.first(self.vocab), self.kd, teacher, self.weight)
        if self.fused and liger_applies(self.kd, args[2], teacher):
            return liger_distill_losses(*args, ignore_index=PAD)
        return distill_losses(*args, ignore_index=PAD, compiled=self.compiled and self.stored is not None)
