"""The teacher in distillation: one frozen copy per process (bfloat16 on GPU, float32 on CPU), its
final hidden states for a batch of token rows, its logits over the student's vocabulary, and its
log-probabilities as the teacher-logits stage keeps them.

A teacher's output layer may be wider than its tokenizer (Qwen pads 151,646 tokens to 151,936):
the padding ids are never in the data, so the teacher's distribution is taken over the tokenizer's
ids, the student's whole vocabulary.
"""

from __future__ import annotations

import torch

from miniplm.errors import ConfigError
from miniplm.models.flops import forward_flops_per_token
from miniplm.models.linear_ce import chunk_rows, head_logits, head_of
from miniplm.models.loading import load_model
from miniplm.training.kd_losses import OnlineTeacher
from miniplm.training.logit_modes import Kept, keep


class Teacher:
    def __init__(self, name: str, vocab: int, dtype: str = "auto", device: str = "auto"):
        self.name = name
        self.model = load_model(name, dtype, device)
        width = self.model.get_output_embeddings().weight.shape[0]
        if width < vocab:
            raise ConfigError(
                f"teacher {name!r}: its output layer has {width} tokens, fewer than the tokenizer's {vocab}"
            )
        self.vocab = vocab
        self.head = head_of(self.model).first(vocab)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states [rows, positions, d] of rows of tokens. A PAD input (right padding of an
        instance row, negative) is read as token 0, as the student reads it: after every real token,
        under causal attention it changes no real position, and nothing is predicted from it."""
        # use_cache=False: a key/value cache would only cost memory
        ids = input_ids.to(self.device).clamp(min=0)
        return self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [positions, vocab] over the student's vocabulary, for hidden states [positions, d]."""
        return head_logits(hidden, self.head)

    def side(self, input_ids: torch.Tensor) -> OnlineTeacher:
        """The teacher's side of the KD loss for a batch of rows: its hidden states, flattened to positions."""
        hidden = self.hidden(input_ids)
        return OnlineTeacher(hidden.reshape(-1, hidden.shape[-1]), self.head, self.vocab)

    @torch.no_grad()
    def keep(
        self, hidden: torch.Tensor, mode: str, k: int, temperature: float, p: float | None = None, generator=None
    ) -> Kept:
        """What a teacher_logits set of `mode` keeps (training/logit_modes.py) of softmax(logits /
        temperature) at each position of `hidden` ([positions, d]), a chunk of positions at a time;
        on the CPU. `generator` draws the samples of mode sampled (on the teacher's device)."""
        parts, chunk = [], chunk_rows(self.vocab)
        for s in range(0, hidden.shape[0], chunk):
            lp = torch.log_softmax(self.logits(hidden[s : s + chunk]) / temperature, dim=-1)
            parts.append(keep(lp, mode, k, p, generator))
        joined = {f: [getattr(part, f) for part in parts] for f in ("ids", "logp", "rest", "counts")}
        return Kept(*(torch.cat(v).cpu() if v[0] is not None else None for v in joined.values()))

    def flops_per_token(self, mean_context: float) -> float:
        """Forward FLOPs per token (every matmul, the vocabulary projection included)."""
        return forward_flops_per_token(self.model.config, mean_context)
