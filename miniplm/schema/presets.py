"""Model shapes by name: the paper's Qwen students and reference, and tiny ones for CPU tests.

The schema checks preset names against this table; miniplm/models/presets.py builds the models."""

from __future__ import annotations

from typing import Any

# MiniPLM's shapes (Qwen architecture); lr is the paper's peak learning rate.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, lr=1e-3),
    "tiny-4l": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4, lr=1e-3),
    "qwen-104m": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8, lr=6e-4),
    "qwen-200m": dict(hidden_size=768, intermediate_size=2112, num_hidden_layers=12, num_attention_heads=12, lr=6e-4),
    "qwen-500m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16, lr=3e-4),
    # untied: with a 152k vocabulary the output embedding is what takes it from 0.93B to 1.2B
    "qwen-1.2b": dict(
        hidden_size=1536,
        intermediate_size=4224,
        num_hidden_layers=24,
        num_attention_heads=16,
        head_dim=96,
        tie_word_embeddings=False,
        lr=2.5e-4,
    ),
}
