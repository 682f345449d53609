"""What the DeepSpeed engine runs: a causal LM's body, then the mean next-token loss taken straight
from its last hidden states, so that no [rows, seq, vocab] logits tensor is ever built."""

from __future__ import annotations

import torch

from miniplm.corpus.instance_rows import PAD
from miniplm.models.kernels import LinearCE
from miniplm.models.linear_ce import head_of, mean_nll


class NextTokenLoss(torch.nn.Module):
    """`forward(rows)` with rows of seq_len + 1 tokens: the mean loss of predicting tokens 1..seq_len
    (those that are not PAD).

    The Hugging Face model is `self.lm` (export it with `self.lm.save_pretrained`). Under ZeRO-3
    the output embedding is registered as used here, so DeepSpeed gathers it for this forward."""

    def __init__(self, lm: torch.nn.Module, kernel: LinearCE = "torch", zero3: bool = False):
        super().__init__()
        self.lm = lm
        self.kernel = kernel
        if zero3:
            import deepspeed

            deepspeed.zero.register_external_parameter(self, lm.get_output_embeddings().weight)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        # A PAD target (a padded instance row, a held-out batch's filler row) is not predicted; a PAD
        # input is read as token 0, after every real one, so under causal attention it changes nothing.
        hidden = self.lm.base_model(input_ids=rows[:, :-1].clamp(min=0), use_cache=False).last_hidden_state
        targets = rows[:, 1:].reshape(-1)
        return mean_nll(hidden.reshape(-1, hidden.shape[-1]), targets, head_of(self.lm), self.kernel,
                        ignore_index=PAD)


def lm_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Hugging Face model's own names for a NextTokenLoss state dict."""
    return {k.removeprefix("lm."): v for k, v in state.items()}
