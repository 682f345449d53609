"""Continuations of token prompts: Hugging Face `generate` in batches (CPU or GPU), or vLLM (GPU).

Both take the same prompts (token ids, the prefix token included) and return,
per prompt, `samples` continuations as (token ids, finish reason), the EOS
that ended a continuation not included. The draw is seeded:
- hf: `torch.manual_seed(seed)` right before one `model.generate` call on the
  left-padded batch, so a batch is exactly what a plain `generate` call with
  the same seed and settings writes;
- vllm: one seed per prompt (SamplingParams.seed), so a prompt's samples do
  not depend on what else is in the batch.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

from miniplm.errors import ConfigError
from miniplm.generation.prompts import context_length, new_token_limit
from miniplm.schema.generate import GenerateConfig

Continuation = tuple[list[int], str]  # (new tokens, "eos" or "length")


class Backend(Protocol):
    name: str
    config: object  # the model's Hugging Face config, for FLOP counts

    def environment(self) -> str:
        """What decides the exact samples besides the prompts, the settings and the seed."""

    def generate(self, prompts: list[list[int]], seeds: list[int], batch_seed: int) -> list[list[Continuation]]: ...


def pick_backend(requested: str, device: str) -> str:
    """hf, vllm or server; a ConfigError when vllm is asked for where it cannot run."""
    has_vllm = importlib.util.find_spec("vllm") is not None
    if requested == "auto":
        return "vllm" if has_vllm and device.startswith("cuda") else "hf"
    if requested == "vllm" and not has_vllm:
        raise ConfigError("generate.backend: vllm is not installed (pip install vllm), or use backend: hf")
    if requested == "vllm" and not device.startswith("cuda"):
        raise ConfigError(f"generate.backend: vllm needs a GPU, and the device is {device!r}; use backend: hf")
    return requested


def _cut(tokens: list[int], eos: int | None) -> Continuation:
    """New tokens up to the first EOS (not included), and why generation stopped."""
    if eos is not None and eos in tokens:
        return tokens[: tokens.index(eos)], "eos"
    return tokens, "length"


class HFBackend:
    name = "hf"

    def __init__(
        self, model_name: str, dtype: str, device: str, entry: GenerateConfig, eos: int | None, pad: int | None
    ):
        from miniplm.models.loading import load_model

        self.model = load_model(model_name, dtype, device)
        self.config = self.model.config
        self.device, self.entry, self.eos = device, entry, eos
        self.pad = pad if pad is not None else (eos if eos is not None else 0)

    def environment(self) -> str:
        import torch

        return (
            f"hf, {torch.device(self.device).type}, torch {torch.__version__}, {self.model.dtype}, "
            f"{self.config._attn_implementation}"
        )

    def generate(self, prompts: list[list[int]], seeds: list[int], batch_seed: int) -> list[list[Continuation]]:
        import torch

        e = self.entry
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's last prompt token is at the same position
            input_ids[i, width - len(p) :] = torch.tensor(p)
            attention_mask[i, width - len(p) :] = 1
        max_new = new_token_limit(e.max_new_tokens, context_length(self.config), width)  # positions are per batch
        settings = dict(
            do_sample=e.temperature > 0,
            max_new_tokens=max_new,
            num_return_sequences=e.samples,
            top_k=e.top_k,
            top_p=e.top_p,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
        )
        if e.temperature > 0:
            settings["temperature"] = e.temperature
        torch.manual_seed(batch_seed)
        out = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device), **settings
        )
        new = out[:, width:].tolist()
        return [[_cut(new[i * e.samples + s], self.eos) for s in range(e.samples)] for i in range(len(prompts))]


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_name: str, dtype: str, entry: GenerateConfig, eos: int | None):
        from transformers import AutoConfig
        from vllm import LLM

        from miniplm.models.loading import resolve_model

        path = resolve_model(model_name)
        self.config = AutoConfig.from_pretrained(path)
        self.llm = LLM(model=path, dtype="auto" if dtype == "auto" else dtype, skip_tokenizer_init=True)
        self.entry, self.eos = entry, eos

    def environment(self) -> str:
        import vllm

        return f"vllm {vllm.__version__}, cuda"

    def generate(self, prompts: list[list[int]], seeds: list[int], batch_seed: int) -> list[list[Continuation]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        e = self.entry
        params = [
            SamplingParams(
                n=e.samples,
                temperature=e.temperature,
                top_p=e.top_p,
                top_k=e.top_k or -1,
                max_tokens=new_token_limit(e.max_new_tokens, context_length(self.config), len(p)),
                seed=seed,
                stop_token_ids=[self.eos] if self.eos is not None else None,
            )
            for p, seed in zip(prompts, seeds)
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [[_cut(list(c.token_ids), self.eos) for c in out.outputs] for out in outputs]
