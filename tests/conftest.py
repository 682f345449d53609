import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def write_job(tmp_path):
    """Write a job file under tmp_path and return its path; `inputs` and corpus keys as given."""

    def write(inputs, name="job.yaml", run_dir=None, seed=0, **corpus):
        job = {
            "run_dir": str(run_dir or tmp_path / "run"),
            "seed": seed,
            "corpus": {"inputs": inputs, **corpus},
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump(job, sort_keys=False))
        return path

    return write


def write_jsonl(path: Path, rows) -> Path:
    """rows: dicts (dumped as JSON) or raw bytes lines (written as they are)."""
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else json.dumps(row).encode() + b"\n")
    return path


TRAINING_TEXT = [
    "In the beginning God created the heaven and the earth.",
    "def add(a, b):\n    return a + b  # numbers 0123456789",
    "The quick brown fox jumps over the lazy dog. Ünïcödé café!",
    "import os\nfor path in os.listdir('.'):\n    print(path)",
] * 20


def _tokenizer(vocab_size: int, texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def _save_model(path: Path, tokenizer, arch: str, seed: int, **shape) -> str:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **shape,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Random-weight teacher (Llama) and reference (Qwen2) sharing a 300-token BPE, and a
    third model with a different tokenizer; saved as Hugging Face folders."""
    root = tmp_path_factory.mktemp("models")
    shared = _tokenizer(300, TRAINING_TEXT)
    other = _tokenizer(280, [t.upper() for t in TRAINING_TEXT])
    return {
        "teacher": _save_model(root / "teacher", shared, "llama", seed=1),
        "reference": _save_model(root / "reference", shared, "qwen2", seed=2),
        "other": _save_model(root / "other", other, "llama", seed=3),
    }
