import math

import numpy as np
import pytest

from miniplm.training.data import RowPlan
from miniplm.training.engine import deep_merge
from miniplm.training.launch import set_distributed_env
from miniplm.training.trainer import lr_at


def test_lr_warms_up_then_decays_to_a_tenth():
    lrs = [lr_at(s, 1.0, warmup=10, total=110, min_ratio=0.1) for s in range(130)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55)
    assert lrs[110] == pytest.approx(0.1) and lrs[129] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_every_row_once_per_epoch_and_steps_split_among_ranks():
    plan = RowPlan(n_rows=50, rows_per_step=8, seed=3)
    order = np.concatenate([plan.step_rows(s) for s in range(13)])  # 104 positions: two epochs and a bit
    assert sorted(order[:50]) == list(range(50)) and sorted(order[50:100]) == list(range(50))
    assert not np.array_equal(order[:50], order[50:100])  # each epoch has its own order
    for world, micro in ((1, 8), (2, 4), (2, 2), (4, 1)):
        shares = [np.concatenate(plan.micro_batches(5, r, world, micro)) for r in range(world)]
        assert sorted(np.concatenate(shares)) == sorted(plan.step_rows(5))
        assert all(len(mb) == micro for r in range(world) for mb in plan.micro_batches(5, r, world, micro))


def test_deepspeed_overrides_merge_deeply():
    base = {"zero_optimization": {"stage": 1, "overlap_comm": True}, "gradient_clipping": 1.0}
    merged = deep_merge(base, {"zero_optimization": {"stage": 2}, "wall_clock_breakdown": True})
    assert merged == {
        "zero_optimization": {"stage": 2, "overlap_comm": True},
        "gradient_clipping": 1.0,
        "wall_clock_breakdown": True,
    }
    assert base["zero_optimization"]["stage"] == 1


def test_ranks_come_from_torchrun_slurm_or_nothing():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"}
    assert set_distributed_env(env) == (3, 8, 1)
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu-node7",
    }
    assert set_distributed_env(env) == (5, 8, 1)
    assert env["MASTER_ADDR"] == "gpu-node7" and env["MASTER_PORT"] == str(29500 + 4242 % 1000)
    alone = {}
    assert set_distributed_env(alone) == (0, 1, 0) and alone["MASTER_ADDR"] == "127.0.0.1"
    assert 0 < int(alone["MASTER_PORT"]) < 65536


def test_presets_have_the_papers_shapes():
    from miniplm.models.presets import qwen_config

    sizes = {}
    for name in ("qwen-104m", "qwen-200m", "qwen-500m", "qwen-1.2b"):
        c = qwen_config(name, vocab_size=151936, max_positions=1024, bos=None, eos=None)
        head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        emb = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
        per_layer = (
            c.hidden_size * head * c.num_attention_heads * 2
            + c.hidden_size * head * c.num_key_value_heads * 2
            + 3 * c.hidden_size * c.intermediate_size
        )
        sizes[name] = (emb + c.num_hidden_layers * per_layer) / 1e6
    assert math.isclose(sizes["qwen-104m"], 104, rel_tol=0.05)
    assert math.isclose(sizes["qwen-200m"], 200, rel_tol=0.1)
    assert math.isclose(sizes["qwen-500m"], 500, rel_tol=0.1)
    assert math.isclose(sizes["qwen-1.2b"], 1200, rel_tol=0.1)


def test_a_student_from_any_hugging_face_config(tiny_models):
    import torch

    from miniplm.config import StudentConfig
    from miniplm.models.loading import load_tokenizer
    from miniplm.training.engine import build_model

    student = StudentConfig(
        name="llama", config=tiny_models["teacher"], tokens="t", steps=1, gradient_checkpointing=True
    )
    model = build_model(student, load_tokenizer(tiny_models["teacher"]), 64, torch.float32)
    assert model.config.model_type == "llama" and model.config.vocab_size == 300
    assert model.is_gradient_checkpointing
    with pytest.raises(ValueError, match="exactly one of preset, config"):
        StudentConfig(name="x", tokens="t", steps=1)
