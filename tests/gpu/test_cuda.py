"""On a CUDA GPU: what the CPU tests cannot reach. benchmarks/gpu/run.sh runs them (pytest -m gpu);
without a GPU they are skipped, and say so.

Collectives under nccl, DeepSpeed's bf16 set-up, the fused kernels (the vocabulary projection, and
liger-kernel's fused linear JSD for distillation) against the torch reference,
packed scoring under flex_attention / flash-attn against padded batches and the float64
computation, liger-kernel's layers, and no host synchronisation in the scoring and training passes.
"""

import copy

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEVICE = "cuda:0"


@pytest.fixture(scope="module")
def nccl():
    from miniplm.training.launch import init_distributed

    init_distributed()
    assert torch.distributed.get_backend() == "nccl"


def test_every_collective_runs_under_nccl(nccl):
    from miniplm import distributed

    assert distributed.collective_device().type == "cuda"
    assert distributed.broadcast_flag(True) is True
    assert distributed.all_sum([1.5, 2.0]) == [1.5, 2.0]
    assert distributed.all_mean(torch.tensor(3.0, device=DEVICE)) == 3.0
    distributed.barrier()
    with pytest.raises(Exception, match="device type cpu"):  # what `miniplm train` did before
        torch.distributed.broadcast(torch.tensor([1]), src=0)


class _Vocab:
    def __init__(self, size):
        self.size, self.bos_token_id, self.eos_token_id = size, 0, 1

    def __len__(self):
        return self.size


def test_deepspeed_trains_bf16_with_fp32_master_weights_and_fp32_accumulation(nccl):
    import deepspeed

    from miniplm.config import StudentConfig
    from miniplm.training.engine import build_model, deepspeed_config, objective

    student = StudentConfig(name="s", preset="tiny-4l", tokens="t", steps=8, micro_batch=4, batch_tokens=8 * 64)
    model = build_model(student, _Vocab(512), 64, torch.bfloat16, DEVICE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    engine, _, _, _ = deepspeed.initialize(
        model=objective(student, model, DEVICE), optimizer=optimizer, config=deepspeed_config(student, 4, 2, True)
    )
    assert type(engine.optimizer).__name__ == "BF16_Optimizer"
    assert engine.get_data_types() == (torch.bfloat16, torch.float32)
    assert all(p.dtype == torch.bfloat16 for p in engine.module.parameters())
    assert all(p.dtype == torch.float32 for p in engine.optimizer.fp32_groups_flat_partition)
    assert engine.optimizer.optimizer.defaults["fused"] is True
    rows = torch.randint(2, 512, (4, 65), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
    losses = []
    for _ in range(16):  # 8 optimizer steps of 2 micro-batches
        loss = engine(rows)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5


def test_datasheet_peak_of_this_card():
    from miniplm.models.flops import datasheet_peak

    name = torch.cuda.get_device_name()
    if "H100 80GB HBM3" in name or "H200" in name:
        assert datasheet_peak(DEVICE) == 989e12
    assert datasheet_peak("cpu") is None


@pytest.mark.parametrize("kernel", ["cce", "liger"])
def test_fused_projection_matches_the_torch_path(kernel):
    from miniplm.models.kernels import installed
    from miniplm.models.linear_ce import Head, mean_nll, token_logprobs

    if not installed({"cce": "cut_cross_entropy", "liger": "liger_kernel"}[kernel]):
        pytest.skip(f"{kernel} is not installed")
    gen = torch.Generator(DEVICE).manual_seed(0)
    h = (torch.randn(2048, 256, device=DEVICE, generator=gen) / 4).bfloat16().requires_grad_()
    w = (torch.randn(32000, 256, device=DEVICE, generator=gen) / 4).bfloat16().requires_grad_()
    y = torch.randint(0, 32000, (2048,), device=DEVICE, generator=gen)
    exact = torch.log_softmax(h.double() @ w.double().t(), -1).gather(1, y[:, None]).squeeze(1)
    with torch.no_grad():
        chunked = token_logprobs(h, y, Head(w, None), "torch")
        fused = token_logprobs(h, y, Head(w, None), kernel)
    assert (chunked.double() - exact).abs().max() < 1e-3  # float32 logits from bf16 inputs
    assert (fused.double() - exact).abs().max() < 1e-2
    grads = {}
    for name in ("torch", kernel):
        loss = mean_nll(h, y, Head(w, None), name)
        grads[name] = (loss.detach(), *torch.autograd.grad(loss, [h, w]))
    assert torch.allclose(grads["torch"][0], grads[kernel][0], rtol=1e-3)
    for a, b in zip(grads["torch"][1:], grads[kernel][1:]):
        assert torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0) > 0.999


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_liger_fused_kd_matches_the_chunked_torch_path(loss, temperature):
    from miniplm.models.kernels import installed
    from miniplm.models.linear_ce import Head
    from miniplm.training.kd_losses import KDLoss, OnlineTeacher, distill_losses, liger_distill_losses

    if not installed("liger_kernel"):
        pytest.skip("liger-kernel is not installed")
    gen = torch.Generator(DEVICE).manual_seed(0)
    randn = lambda *shape: (torch.randn(*shape, device=DEVICE, generator=gen) / 4).bfloat16()  # noqa: E731
    h, w = randn(1024, 128).requires_grad_(), randn(4096, 128).requires_grad_()
    teacher = OnlineTeacher(randn(1024, 192), Head(randn(4096, 192), None), 4096)
    y = torch.randint(0, 4096, (1024,), device=DEVICE, generator=gen)
    kd = KDLoss(loss, temperature)
    results = {}
    for name, fn in (("torch", distill_losses), ("liger", liger_distill_losses)):
        total, ce, kd_term = fn(h, y, Head(w, None), kd, teacher, 0.5)
        results[name] = (total.detach().float(), ce.float(), kd_term.float(), *torch.autograd.grad(total, [h, w]))
    for a, b in zip(results["torch"][:3], results["liger"][:3]):
        assert torch.allclose(a, b, rtol=2e-2, atol=1e-3), (
            loss,
            temperature,
            results["torch"][:3],
            results["liger"][:3],
        )
    for a, b in zip(results["torch"][3:], results["liger"][3:]):
        assert torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0) > 0.99


def test_liger_fused_kd_on_padded_rows_with_heads_wider_than_the_tokenizer():
    """The paper's unit (padded instance rows: PAD targets) and Qwen's padded heads (wider than the
    tokenizer, the student's cut with Head.first): the fused path skips and compares what the chunked
    one does, on CUDA in bf16."""
    from miniplm.corpus.instance_rows import PAD
    from miniplm.models.kernels import installed
    from miniplm.models.linear_ce import Head
    from miniplm.training.kd_losses import KDLoss, OnlineTeacher, distill_losses, liger_distill_losses

    if not installed("liger_kernel"):
        pytest.skip("liger-kernel is not installed")
    gen = torch.Generator(DEVICE).manual_seed(1)
    randn = lambda *shape: (torch.randn(*shape, device=DEVICE, generator=gen) / 4).bfloat16()  # noqa: E731
    h, w = randn(1024, 128).requires_grad_(), randn(4096 + 64, 128).requires_grad_()
    teacher = OnlineTeacher(randn(1024, 192), Head(randn(4096 + 96, 192), None), 4096)
    y = torch.randint(0, 4096, (1024,), device=DEVICE, generator=gen)
    y[-200:] = PAD
    results = {}
    for name, fn in (("torch", distill_losses), ("liger", liger_distill_losses)):
        total, ce, kd_term = fn(h, y, Head(w, None).first(4096), KDLoss("forward_kl"), teacher, 0.5, ignore_index=PAD)
        results[name] = (total.detach().float(), ce.float(), kd_term.float(), *torch.autograd.grad(total, [h, w]))
    for a, b in zip(results["torch"][:3], results["liger"][:3]):
        assert torch.allclose(a, b, rtol=2e-2, atol=1e-3), (results["torch"][:3], results["liger"][:3])
    for name, (*_, grad_h, grad_w) in results.items():
        assert (grad_h[-200:] == 0).all() and (grad_w[4096:] == 0).all(), name
    for a, b in zip(results["torch"][3:], results["liger"][3:]):
        assert torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0) > 0.99


def _tiny_qwen(dtype, attn, seed=0):
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn).eval()


def _sums(scorer, sequences, max_length=64, stride=8):
    from miniplm.scoring.windows import windows_for

    windows = [w for d, s in enumerate(sequences) for w in windows_for(d, len(s), max_length, stride)]
    batches = scorer.plan(windows)
    out = np.zeros(len(sequences))
    for batch, results in zip(batches, scorer.run(batches, sequences)):
        for w, lp in zip(batch, results["m"]):
            out[w.doc] += float(lp.double().sum())
    return out


def test_packed_scoring_matches_padded_batches_and_float64(tiny_models):
    """Packed streams under this card's packed kernel (flex_attention, or flash-attn in bf16 when
    installed) give what padded batches under sdpa give, and the float64 computation on the CPU."""
    from miniplm.models.kernels import attention_implementation
    from miniplm.scoring.logprobs import Scorer

    rng = np.random.default_rng(0)
    sequences = [rng.integers(3, 512, size=n) for n in [1, 5, 63, 64, 65, 130, 300, 17, 2, 90]]
    base = _tiny_qwen(torch.float32, "sdpa")
    for dtype, rtol in ((torch.float32, 1e-4), (torch.bfloat16, 1e-2)):
        weights = copy.deepcopy(base).to(dtype)  # the float64 reference uses the same rounded weights
        exact = _sums(Scorer({"m": copy.deepcopy(weights).double()}, 0, "cpu", batch_tokens=512), sequences)
        padded = _sums(Scorer({"m": copy.deepcopy(weights).to(DEVICE)}, 0, DEVICE, batch_tokens=512), sequences)
        packed_attn = attention_implementation(dtype, DEVICE, packed=True)
        packed_model = copy.deepcopy(weights)
        packed_model.set_attn_implementation(packed_attn)
        packed = _sums(Scorer({"m": packed_model.to(DEVICE)}, 0, DEVICE, packed=True, batch_tokens=512), sequences)
        np.testing.assert_allclose(padded, exact, rtol=rtol)
        np.testing.assert_allclose(packed, exact, rtol=rtol, err_msg=f"{packed_attn} {dtype}")


def test_liger_layers_keep_the_forward():
    from miniplm.models.kernels import apply_liger_layers, installed

    if not installed("liger_kernel"):
        pytest.skip("liger-kernel is not installed")
    model = _tiny_qwen(torch.float32, "sdpa").to(DEVICE)
    ids = torch.randint(0, 512, (2, 100), device=DEVICE)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert apply_liger_layers(model, DEVICE)
        after = model(input_ids=ids).logits
    assert (before - after).abs().max() < 1e-3
    assert model.model.norm._get_name() == "LigerRMSNorm"  # liger rebinds the instance's methods
    # this instance only: a model built afterwards (a CPU copy, say) keeps transformers' layers
    from transformers.models.qwen2 import modeling_qwen2

    assert modeling_qwen2.Qwen2RMSNorm.__module__ == modeling_qwen2.__name__
    assert modeling_qwen2.Qwen2MLP.__module__ == modeling_qwen2.__name__


def test_no_host_synchronisation_in_the_scoring_and_training_passes():
    from miniplm.models.kernels import attention_implementation
    from miniplm.scoring.logprobs import Scorer
    from miniplm.scoring.windows import windows_for
    from miniplm.training.objective import NextTokenLoss

    rng = np.random.default_rng(1)
    sequences = [rng.integers(3, 512, size=n) for n in [40, 64, 7, 100]]
    windows = [w for d, s in enumerate(sequences) for w in windows_for(d, len(s), 64, 0)]
    # Packed batches and the torch projection: for padded ones transformers' mask builder asks
    # whether any position is padding (`padding_mask.all()`), and cut-cross-entropy and liger-kernel
    # count the positions to score (`nonzero()`, `.item()`): one wait per forward pass each, in
    # code miniplm does not control.
    for packed in (True,):
        model = _tiny_qwen(torch.bfloat16, attention_implementation(torch.bfloat16, DEVICE, packed)).to(DEVICE)
        scorer = Scorer({"m": model}, 0, DEVICE, packed=packed, batch_tokens=256, kernels="torch")
        batch = scorer.plan(windows)[0]
        scorer._logprobs("m", scorer.inputs(batch, sequences))  # warm-up: compiling may wait
        torch.cuda.set_sync_debug_mode("error")
        try:
            scorer._logprobs("m", scorer.inputs(batch, sequences))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    # the training pass, eager and compiled whole: transformers' question whether the rows hold packed
    # sequences is answered by the causal-only masks miniplm passes
    objective = NextTokenLoss(_tiny_qwen(torch.bfloat16, "sdpa").to(DEVICE).train(), kernel="torch")
    rows = torch.randint(0, 512, (4, 65), device=DEVICE)
    for compiled in (False, True):
        if compiled:
            objective.compile_step()
        objective(rows).backward()  # warm-up: compiling may wait
        torch.cuda.set_sync_debug_mode("error")
        try:
            objective(rows).backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)


def test_the_compiled_step_gives_the_eager_loss_and_gradients_in_bf16():
    from miniplm.training.objective import NextTokenLoss

    model = _tiny_qwen(torch.bfloat16, "sdpa").to(DEVICE)
    rows = torch.randint(0, 512, (4, 129), device=DEVICE)
    rows[0, 100:] = -1  # a padded instance row: PAD targets are not predicted
    results = []
    for compiled in (False, True):
        objective = NextTokenLoss(copy.deepcopy(model), kernel="torch")
        if compiled:
            objective.compile_step()
        loss = objective(rows)
        loss.backward()
        results.append((loss.float(), [p.grad.float() for p in objective.parameters()]))
    (eager, eager_grads), (fused, fused_grads) = results
    assert abs(float(eager - fused)) < 2e-3
    for a, b in zip(eager_grads, fused_grads):
        assert (a - b).norm() <= 0.02 * a.norm() + 1e-6


def test_auto_micro_batch_is_measured_on_the_gpu_and_recorded(nccl, tmp_path):
    from miniplm.config import StudentConfig
    from miniplm.training import micro_batches
    from miniplm.training.trainer import prepare

    student = StudentConfig(name="s", preset="tiny-4l", tokens="t", steps=1, batch_tokens=64 * 256)
    record = tmp_path / micro_batches.RECORD
    run = prepare(student, _Vocab(512), 256, DEVICE, record=record)
    assert run.micro.rows * run.micro.accumulation == 64 and "measured" in run.micro.how
    assert micro_batches.recorded(record, 256, 64) == run.micro


def test_float8_converts_the_decoder_layers_and_trains(nccl, tmp_path):
    pytest.importorskip("torchao", reason="float8 training needs torchao")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 matmuls need compute capability 8.9 or newer")
    from miniplm.config import StudentConfig
    from miniplm.corpus.tokens import TokenRows, write_rows
    from miniplm.training.data import RowPlan
    from miniplm.training.trainer import prepare, train_step

    student = StudentConfig(name="s", preset="tiny-4l", tokens="t", steps=1, batch_tokens=8 * 256, float8=True)
    run = prepare(student, _Vocab(512), 256, DEVICE)
    kinds = {type(m).__name__ for m in run.engine.module.lm.model.layers.modules()}
    assert "Float8Linear" in kinds and type(run.engine.module.lm.lm_head).__name__ == "Linear"
    write_rows(tmp_path / "shard-00000.arrow", np.random.default_rng(0).integers(2, 512, (64, 257)))
    rows = TokenRows(tmp_path)
    plan = RowPlan(len(rows), run.rows_per_step, seed=0)
    losses = [float(train_step(run, rows, plan, step, 3e-3, DEVICE)["loss"]) for step in range(6)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
