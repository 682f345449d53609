"""What the DeepSpeed engine runs: a causal LM's body, then the mean next-token loss taken straight
from its last hidden states, so that no [rows, seq, vocab] logits tensor is ever built."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from miniplm.corpus.instance_rows import PAD
from miniplm.models.kernels import LinearCE
from miniplm.models.linear_ce import head_of, mean_nll

if TYPE_CHECKING:
    from miniplm.training.distill import Distillation


class NextTokenLoss(torch.nn.Module):
    """`forward(rows)` with rows of seq_len + 1 tokens: the mean loss of predicting tokens 1..seq_len
    (those that are not PAD).

    The Hugging Face model is `self.lm` (export it with `self.lm.save_pretrained`). Under ZeRO-3
    the output embedding is registered as used here, so DeepSpeed gathers it for this forward."""

    def __init__(
        self, lm: torch.nn.Module, kernel: LinearCE = "torch", zero3: bool = False, distill: Distillation | None = None
    ):
        super().__init__()
        self.lm = lm
        self.kernel = kernel
        self.distill = distill  # a plain object: the teacher stays outside DeepSpeed
        self.terms: dict[str, torch.Tensor] = {}  # the last training forward's CE and KD terms
        if zero3:
            import deepspeed

            deepspeed.zero.register_external_parameter(self, lm.get_output_embeddings().weight)

    def forward(self, rows: torch.Tensor, indices: np.ndarray | None = None) -> torch.Tensor:
        """With `indices` (the rows' places in their token set) and a distillation, the distillation
        loss (1 - weight) * CE + weight * KD, its terms kept in `self.terms`; else the mean CE."""
        # A PAD target (a padded instance row, a held-out batch's filler row) is not predicted; a PAD
        # input is read as token 0, after every real one, so under causal attention it changes nothing.
        hidden = self.lm.base_model(input_ids=rows[:, :-1].clamp(min=0), use_cache=False).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1])
        if self.distill is not None and indices is not None:
            loss, ce, kd = self.distill.losses(hidden, rows, indices, head_of(self.lm))
            self.terms = {"ce_loss": ce.detach(), "kd_loss": kd.detach()}
            return loss
        return mean_nll(hidden, rows[:, 1:].reshape(-1), head_of(self.lm), self.kernel, ignore_index=PAD)


def lm_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Hugging Face model's own names for a NextTokenLoss state dict."""
    return {k.removeprefix("lm."): v for k, v in state.items()}
