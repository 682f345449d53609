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
        self.masks = causal_only(lm.config)
        self._ce, self._hidden = self.ce, self.hidden  # compiled by compile_step
        if zero3:
            import deepspeed

            deepspeed.zero.register_external_parameter(self, lm.get_output_embeddings().weight)

    def forward(self, rows: torch.Tensor, indices: np.ndarray | None = None) -> torch.Tensor:
        """With `indices` (the rows' places in their token set) and a distillation, the distillation
        loss (1 - weight) * CE + weight * KD, its terms kept in `self.terms`; else the mean CE."""
        if self.distill is not None and indices is not None:
            loss, ce, kd = self.distill.losses(self._hidden(rows), rows, indices, head_of(self.lm))
            self.terms = {"ce_loss": ce.detach(), "kd_loss": kd.detach()}
            return loss
        return self._ce(rows)

    def hidden(self, rows: torch.Tensor) -> torch.Tensor:
        """The last hidden states of the rows' inputs, [positions, hidden]."""
        # A PAD target (a padded instance row, a held-out batch's filler row) is not predicted; a PAD
        # input is read as token 0, after every real one, so under causal attention it changes nothing.
        inputs = {"input_ids": rows[:, :-1].clamp(min=0), "use_cache": False}
        if self.masks is not None:
            inputs["attention_mask"] = self.masks
        hidden = self.lm.base_model(**inputs).last_hidden_state
        return hidden.reshape(-1, hidden.shape[-1])

    def ce(self, rows: torch.Tensor) -> torch.Tensor:
        """The mean next-token loss of the rows."""
        return mean_nll(self.hidden(rows), rows[:, 1:].reshape(-1), head_of(self.lm), self.kernel, ignore_index=PAD)

    def compile_step(self, cuda_graphs: bool = False) -> None:
        """Compile the body and the loss as one graph: `fullgraph` makes anything that would wait for
        the host (a data-dependent shape, a `.item()`) an error instead of a silent break. With
        `cuda_graphs`, the compiled step is replayed as CUDA graphs. With a distillation only the
        body is compiled: its loss reads stored log-probs by row index, or runs the teacher."""
        mode = "reduce-overhead" if cuda_graphs else None
        self._ce = torch.compile(self.ce, fullgraph=True, dynamic=False, mode=mode)
        self._hidden = torch.compile(self.hidden, fullgraph=True, dynamic=False, mode=mode)


def causal_only(config) -> dict[str, None] | None:
    """What tells a Hugging Face model that its rows need no attention mask beyond causal: its
    mask for each kind of layer given as none (sdpa and flash-attn then attend causally). Without
    it, transformers asks the device whether the positions hold packed sequences, a wait for the
    host every pass; miniplm's rows never reset their positions. Only for models whose layers all
    attend in full (a sliding window needs its mask) and that take masks by layer kind."""
    kinds = getattr(config, "layer_types", None)
    if kinds and all(kind == "full_attention" for kind in kinds):
        return {"full_attention": None}
    return None


def lm_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Hugging Face model's own names for a NextTokenLoss state dict."""
    return {k.removeprefix("lm."): v for k, v in state.items()}
