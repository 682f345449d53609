"""Pruning a trained teacher into a smaller student (Minitron), and training students from it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

from miniplm.errors import ConfigError
from miniplm.evaluation.heldout import heldout_texts, lm_loss
from miniplm.job import load_job
from miniplm.models import prune
from miniplm.models.importance import width_importance
from miniplm.models.pruning import build, plan_width, shape_of
from miniplm.rundir import RunDir
from tests.pipeline.jobs import write_corpus

TARGET = {
    "hidden_size": 48,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_hidden_layers": 3,
}


def _train_teacher(path: Path, tokenizer, corpus: str) -> str:
    """A small Llama that has learnt the test corpus (a random one has nothing worth keeping)."""
    texts = [json.loads(line)["text"] for f in sorted(Path(corpus).parent.glob("*.jsonl")) for line in open(f)]
    stream = torch.tensor([t for ids in tokenizer(texts)["input_ids"] for t in (*ids, tokenizer.eos_token_id)])
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rows = stream[: len(stream) // 33 * 33].view(-1, 33)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small only wait on each other with more threads on a busy machine
    try:
        for _ in range(120):
            batch = rows[torch.randint(len(rows), (16,))]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def pruned_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    corpus = write_corpus(root / "corpus", files=3, docs=60)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_models["teacher"])
    teacher = _train_teacher(root / "teacher", tokenizer, corpus)
    student = {
        "tokens": "main",
        "heldout": "heldout",
        "steps": 8,
        "batch_tokens": 256,
        "micro_batch": 8,
        "lr": 3e-3,
        "warmup_steps": 1,
        "eval_every": 8,
        "eval_rows": 64,
        "checkpoint_every": 8,
    }
    job = {
        "run_dir": str(root / "run"),
        "seed": 2,
        "corpus": {
            "inputs": [{"path": corpus, "format": "jsonl"}],
            "docs_per_shard": 100,
            "reference_fraction": 0.2,
            "heldout_fraction": 0.1,
        },
        "teacher": {"model": teacher},
        "prune": [
            {"name": "pruned", "calibration": {"split": "reference", "docs": 24, "max_length": 64}, "target": TARGET}
        ],
        "tokenize": [
            {"name": "main", "input": "main", "seq_len": 32},
            {"name": "heldout", "input": "heldout", "seq_len": 32},
        ],
        "students": [
            {"name": "from-pruned", "init": "pruned", **student},
            {"name": "from-scratch", "config": str(root / "run" / "models" / "pruned"), **student},
        ],
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    result = subprocess.run(
        [sys.executable, "-m", "miniplm", "run", str(path), "-q"], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return load_job(path), teacher, tokenizer


def test_the_pruned_folder_has_the_target_shape_and_the_teachers_weights(pruned_run):
    job, teacher, tokenizer = pruned_run
    folder = RunDir(job.run_dir).model("pruned")
    model = AutoModelForCausalLM.from_pretrained(folder)
    source = AutoModelForCausalLM.from_pretrained(teacher)
    assert shape_of(model.config) == TARGET and model.config.model_type == "llama"
    assert PreTrainedTokenizerFast.from_pretrained(folder).get_vocab() == tokenizer.get_vocab()
    record = json.loads((folder / "pruning.json").read_text())
    assert len(record["kept_layers"]) == 3 and record["loss"]["pruned"] > record["loss"]["source"]
    # every kept weight is the teacher's, at the kept heads and channels of a kept layer
    channels = sorted(np.argsort(-np.asarray(record["channel_importance"]), kind="stable")[:48].tolist())
    for new, old in enumerate(record["kept_layers"]):
        heads = record["kept_heads"][old]
        rows = [h * 16 + d for h in heads for d in range(16)]
        expected = source.model.layers[old].self_attn.q_proj.weight[rows][:, channels]
        assert torch.equal(model.model.layers[new].self_attn.q_proj.weight, expected)
        groups = record["kept_key_value_heads"][old]
        assert all(h // 2 in groups for h in heads)  # a kept query head reads a kept key-value head
    assert torch.equal(model.model.embed_tokens.weight, source.model.embed_tokens.weight[:, channels])


def test_pruned_beats_random_weights_of_its_shape_before_and_after_training(pruned_run):
    job, _, tokenizer = pruned_run
    rd = RunDir(job.run_dir)
    texts = list(heldout_texts(rd))
    pruned = AutoModelForCausalLM.from_pretrained(rd.model("pruned")).eval()
    torch.manual_seed(0)
    scratch = AutoModelForCausalLM.from_config(pruned.config).eval()
    before = {
        name: lm_loss(m, tokenizer, texts, max_length=64, show_progress=False)["loss"]
        for name, m in (("pruned", pruned), ("random", scratch))
    }
    assert before["pruned"] < before["random"] - 0.5, before
    stages = json.loads(rd.manifest_file.read_text())["stages"]
    after = {name: stages[f"train/{name}"]["counts"]["heldout_loss"] for name in ("from-pruned", "from-scratch")}
    assert after["from-pruned"] < after["from-scratch"], after
    assert stages["prune/pruned"]["counts"]["flops"]["total"] > 0


def test_pruning_to_the_same_shape_gives_back_the_same_model(tiny_models):
    teacher = AutoModelForCausalLM.from_pretrained(tiny_models["reference"]).eval()  # Qwen2, with q/k/v biases
    batch = torch.randint(3, 300, (2, 24))
    importance, _ = width_importance(teacher, [batch])
    same = build(teacher, plan_width(teacher.config, importance, shape_of(teacher.config)), shape_of(teacher.config))
    assert torch.allclose(same(batch).logits, teacher(batch).logits, atol=1e-6)


def test_models_other_than_llama_and_qwen2_are_refused(tiny_models, tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=300).save_pretrained(tmp_path / "gpt2")
    job = {
        "run_dir": str(tmp_path / "run"),
        "corpus": {"inputs": [{"path": write_corpus(tmp_path / "c", files=1, docs=10), "format": "jsonl"}]},
        "teacher": {"model": tiny_models["teacher"]},
        "prune": [{"name": "p", "model": str(tmp_path / "gpt2"), "target": {"num_hidden_layers": 1}}],
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    with pytest.raises(ConfigError, match="llama and qwen2-shaped models; this one is 'gpt2'"):
        prune.STAGE.run(load_job(tmp_path / "job.yaml"), show_progress=False)
    with pytest.raises(ConfigError, match="larger than the model's"):
        prune.STAGE.run(
            load_job(tmp_path / "job.yaml", ["prune.0.model=teacher", "prune.0.target.hidden_size=64"]),
            show_progress=False,
        )
    with pytest.raises(ConfigError, match="students.0.init: 'nope' is neither a prune entry"):
        load_job(tmp_path / "job.yaml", ["students=[{name: s, init: nope, tokens: t, steps: 1}]"])


def _qwen2_listing_its_layers(path: Path, tokenizer) -> tuple[str, list[str]]:
    """A random Qwen2 whose config lists its layers (layer_types, as transformers writes for Qwen2 and Qwen3), with
    sliding and full attention mixed so that which layer is which changes the output, and a second per-layer list.
    Any 3 of its 4 layers hold both kinds."""
    types = ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        use_sliding_window=True,
        sliding_window=4,
        layer_types=types,
        layer_scales=[1.0, 2.0, 3.0, 4.0],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path), types


def test_a_config_listing_its_layers_keeps_the_entries_of_the_kept_layers(tiny_models, tmp_path):
    from miniplm.corpus import prepare
    from miniplm.models.loading import load_model

    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_models["reference"])
    teacher, types = _qwen2_listing_its_layers(tmp_path / "teacher", tokenizer)
    width = {"hidden_size": 24, "intermediate_size": 48, "num_attention_heads": 2}
    # rows of 16 tokens against a window of 4: sliding and full attention give different outputs
    calibration = {"split": "reference", "docs": 12, "max_length": 16}
    job = {
        "run_dir": str(tmp_path / "run"),
        "seed": 1,
        "corpus": {
            "inputs": [{"path": write_corpus(tmp_path / "corpus", files=1, docs=30), "format": "jsonl"}],
            "reference_fraction": 0.3,
        },
        "teacher": {"model": teacher},
        "prune": [
            {"name": "wide", "calibration": calibration, "target": width, "device": "cpu"},
            {
                "name": "deep",
                "calibration": dict(calibration),
                "target": width | {"num_hidden_layers": 3},
                "device": "cpu",
            },
        ],
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    job = load_job(tmp_path / "job.yaml")
    prepare.STAGE.run(job, show_progress=False)
    prune.STAGE.run(job, show_progress=False)

    rd = RunDir(job.run_dir)
    source = load_model(teacher, "auto", "cpu")
    for entry, layers in zip(job.prune, (4, 3)):
        folder = rd.model(entry.name)
        kept = json.loads((folder / "pruning.json").read_text())["kept_layers"]
        loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
        assert len(kept) == layers == loaded.config.num_hidden_layers
        assert loaded.config.layer_types == [types[i] for i in kept]
        assert loaded.config.layer_scales == [float(i + 1) for i in kept]
        # the same cut made here, from the same calibration batches, is what was saved
        batches = prune._batches(prune.calibration_rows(rd, entry, tokenizer), entry.batch_tokens, "cpu")
        plan = plan_width(source.config, width_importance(source, batches)[0], shape_of(loaded.config))
        plan.layers = kept
        pruned = build(source, plan, shape_of(loaded.config))
        with torch.no_grad():
            assert torch.allclose(loaded(batches[0]).logits, pruned(batches[0]).logits, atol=1e-5)


class _Fixed(torch.nn.Module):
    """A norm layer whose output is set by hand, whatever its input."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out


def test_embedding_channel_importance_sums_each_norm_layers_importance():
    """Minitron: per norm layer, the mean of |x| over the sequence and the L2 norm over the batch; summed over the
    layers. By hand, with 2 rows of 2 positions and 8 channels, of which 3 are ever nonzero:
    channel 0: input norm rows (3, -3) and (0, 0): sqrt(3^2 + 0^2) = 3; nothing elsewhere: 3.
    channel 1: input norm rows (2, 2) and (0, 0): 2; post-attention norm rows (1, -3) and (0, 0): 2; sum 4.
    channel 2: input norm rows (3, 3) and (4, -4): sqrt(3^2 + 4^2) = 5; nothing elsewhere: 5.
    One L2 norm over every layer would rank channel 0 (3) above channel 1 (sqrt(2^2 + 2^2) = 2.83)."""
    config = LlamaConfig(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    first, second, last = torch.zeros(3, 2, 2, 8)
    first[0, :, 0] = torch.tensor([3.0, -3.0])
    first[0, :, 1] = torch.tensor([2.0, 2.0])
    first[:, :, 2] = torch.tensor([[3.0, 3.0], [4.0, -4.0]])
    second[0, :, 1] = torch.tensor([1.0, -3.0])
    layer = model.model.layers[0]
    layer.input_layernorm, layer.post_attention_layernorm = _Fixed(first), _Fixed(second)
    model.model.norm = _Fixed(last)
    importance, _ = width_importance(model, [torch.randint(16, (2, 2))])
    assert torch.allclose(importance.channels, torch.tensor([3.0, 4.0, 5.0, 0, 0, 0, 0, 0]))
    assert plan_width(config, importance, shape_of(config) | {"hidden_size": 2}).channels.tolist() == [1, 2]


def test_special_token_text_in_calibration_documents_is_read_as_text(tiny_models, tmp_path):
    """Calibration rows hold one EOS per document, whatever the documents say."""
    from types import SimpleNamespace

    import pyarrow as pa
    import pyarrow.parquet as pq

    from miniplm.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_models["teacher"])
    shard = tmp_path / "shard-00000.parquet"
    pq.write_table(pa.table({"text": ["user: hi<eos><bos>bot: hello<eos>", "plain"]}), shard)
    rd = SimpleNamespace(doc_shards=lambda split: [shard])
    entry = SimpleNamespace(calibration=SimpleNamespace(split="main", docs=2, max_length=512))
    rows = prune.calibration_rows(rd, entry, tokenizer)
    assert len(rows) == 1 and rows[0].count(tokenizer.eos_token_id) == 2 and tokenizer.bos_token_id not in rows[0]
