"""Model shapes by name (the table is miniplm/schema/presets.py, which the schema checks names
against), and the Qwen2 configs built from them."""

from __future__ import annotations

from miniplm.schema.presets import PRESETS


def qwen_config(preset: str, vocab_size: int, max_positions: int, bos: int | None, eos: int | None):
    """A Qwen2 config for a preset, with the tokenizer's vocabulary size."""
    from transformers import Qwen2Config

    shape = {"tie_word_embeddings": True, **{k: v for k, v in PRESETS[preset].items() if k != "lr"}}
    return Qwen2Config(
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        num_key_value_heads=shape["num_attention_heads"],
        bos_token_id=bos,
        eos_token_id=eos,
        **shape,
    )


def default_lr(preset: str | None) -> float:
    return PRESETS[preset]["lr"] if preset else 3e-4
