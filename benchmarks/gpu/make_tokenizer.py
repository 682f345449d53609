#!/usr/bin/env python3
"""A byte-level BPE tokenizer trained on the bundled corpus, saved as a Hugging Face tokenizer folder.

    python benchmarks/gpu/make_tokenizer.py runs/demo-gpu/tokenizer [--vocab 8192]
    python benchmarks/gpu/make_tokenizer.py DIR --texts corpus/teacher.jsonl   # from other text

The GPU demo's teacher is trained from scratch (a machine without a network
has no pretrained model to load), so it needs a tokenizer: this one, built in
seconds from data/sample/ (or the JSON lines' `text` of --texts) with the
`tokenizers` library. Same corpus, same tokenizer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--texts", type=Path, nargs="+", help="JSON lines files to train on instead of data/sample/")
    parser.add_argument("--max-chars", type=int, default=None, help="--texts: train on the first this many characters")
    args = parser.parse_args()
    if (args.out / "tokenizer.json").exists():
        print(f"{args.out}: already there")
        return
    if args.texts:
        texts, chars = [], 0
        for line in (line for f in args.texts for line in f.open()):
            texts.append(json.loads(line)["text"])
            chars += len(texts[-1])
            if args.max_chars and chars >= args.max_chars:
                break
    else:
        files = sorted(SAMPLE.glob("*.parquet"))
        texts = [t for f in files for t in pq.read_table(f, columns=["text"])["text"].to_pylist()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab,
        special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    wrapped.save_pretrained(args.out)
    print(f"{args.out}: {len(wrapped)} tokens, from {len(texts)} documents")


if __name__ == "__main__":
    main()
