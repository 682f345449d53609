"""Text to token ids, the one way every stage reads documents, prompts and held-out text.

A Hugging Face tokenizer turns special-token strings found in the text (`<|im_end|>`,
`<|endoftext|>`) into the special ids themselves by default: a document quoting a
chat transcript would then carry a real EOS or BOS, a forged document boundary in
scoring, packing and training. Here text is always tokenized as text; the only
special ids in a token stream are the ones miniplm adds.
"""

from __future__ import annotations

from typing import Any, Sequence


def encode_texts(tokenizer, texts: Sequence[str], **kwargs: Any):
    """The tokenizer's encoding of `texts` (a batch), without added special tokens and with
    special-token strings in the text split as plain text; `kwargs` go to the tokenizer
    (return_offsets_mapping, ...)."""
    return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True, **kwargs)


def token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Each text's token ids (see encode_texts)."""
    return encode_texts(tokenizer, texts)["input_ids"] if len(texts) else []
