"""Training with DeepSpeed on CPU: resume after SIGKILL, several processes, and the exported model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.training.runs import copy_run, kill_when, tokenized_run
from tests.training.runs import metrics as read_metrics

STEPS = 30


@pytest.fixture(scope="module")
def tokenized(tiny_models, tmp_path_factory):
    """A prepared and tokenized run directory to copy: 'main' rows to train on, 'held' for held-out loss."""
    student = {
        "name": "s",
        "preset": "tiny",
        "tokens": "main",
        "heldout": "held",
        "steps": STEPS,
        "batch_tokens": 512,
        "micro_batch": 4,
        "warmup_steps": 3,
        "eval_every": 6,
        "eval_rows": 32,
        "checkpoint_every": 4,
        "log_rows": True,
    }
    return tokenized_run(tmp_path_factory.mktemp("train"), tiny_models["teacher"], {"students": [student]})


def _copy(tokenized, name: str) -> Path:
    return copy_run(tokenized, name)


def _train(job_path: Path, *launcher: str) -> subprocess.CompletedProcess:
    cmd = (
        [*launcher, "-m", "miniplm", "train", str(job_path), "-q"]
        if launcher
        else [sys.executable, "-m", "miniplm", "train", str(job_path), "-q"]
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(_extensions(job_path))}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _extensions(job_path: Path) -> Path:
    """Where a run's C++ ops would be built: training builds none (a build killed midway hangs later starts)."""
    return job_path.with_name(job_path.stem + "-torch-extensions")


def _metrics(job_path: Path) -> dict[int, dict]:
    return read_metrics(job_path, "s")


def _assert_same_curve(got: dict[int, dict], clean: dict[int, dict], **tolerance) -> None:
    """Every step logged, each with the uninterrupted run's rows and (within tolerance) loss."""
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step]["rows"] == clean[step]["rows"]
        assert got[step]["loss"] == pytest.approx(clean[step]["loss"], **tolerance)


def _trained(path: Path) -> tuple[Path, dict[int, dict]]:
    """Train the job at `path` to the end in one go: the job and its metrics."""
    result = _train(path)
    assert result.returncode == 0, result.stderr[-3000:]
    return path, _metrics(path)


@pytest.fixture(scope="module")
def uninterrupted(tokenized):
    return _trained(_copy(tokenized, "clean"))


def test_kill_9_mid_run_resumes_with_the_same_losses_and_rows(tokenized, uninterrupted):
    _, clean = uninterrupted
    path = _copy(tokenized, "killed")
    metrics = Path(yaml.safe_load(path.read_text())["run_dir"]) / "train" / "s" / "metrics.jsonl"
    kill_when(["train", str(path)], lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 10)
    logged = len(metrics.read_text().splitlines())
    assert 10 <= logged < STEPS, f"the kill landed after step {logged}"

    result = _train(path)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = _metrics(path)
    _assert_same_curve(resumed, clean, abs=1e-5)
    # every row exactly once per epoch, interruption or not
    n_rows = int(
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"from miniplm.corpus.tokens import TokenRows; "
                f"print(len(TokenRows('{metrics.parents[2] / 'tokens' / 'main'}')))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    order = [r for step in range(1, STEPS + 1) for r in resumed[step]["rows"]]
    assert len(order) > n_rows, "the run should cover more than one epoch"
    assert sorted(order[:n_rows]) == list(range(n_rows))


def test_killed_after_its_last_checkpoint_the_rerun_reports_the_final_losses(tokenized, uninterrupted):
    """A kill between the final checkpoint and the stage's close: the rerun resumes at the last step,
    trains nothing and reports the losses that step logged (it used to report none, and crash)."""
    clean_path, clean = uninterrupted
    path = _copy(tokenized, "killed-at-end")
    run_dir = Path(yaml.safe_load(path.read_text())["run_dir"])
    latest = run_dir / "train" / "s" / "checkpoints" / "latest"
    kill_when(["train", str(path)], lambda: latest.exists() and latest.read_text().strip() == f"step-{STEPS:08d}")
    state = json.loads((run_dir / "manifest.json").read_text())["stages"]["train/s"]
    assert state["state"] == "running", "the kill landed after the stage closed"

    result = _train(path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads((run_dir / "manifest.json").read_text())["stages"]["train/s"]["counts"]
    final = json.loads((Path(yaml.safe_load(clean_path.read_text())["run_dir"]) / "manifest.json").read_text())
    assert counts["step"] == STEPS and len(_metrics(path)) == STEPS
    assert counts["loss"] == pytest.approx(clean[STEPS]["loss"], abs=1e-5)
    assert counts["heldout_loss"] == pytest.approx(final["stages"]["train/s"]["counts"]["heldout_loss"], abs=1e-5)


def test_two_processes_follow_the_same_loss_curve_as_one(tokenized, uninterrupted):
    _, clean = uninterrupted
    path = _copy(tokenized, "two")
    result = _train(
        path,
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29600 + os.getpid() % 300),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not _extensions(path).exists(), "a process group start built a C++ op"
    two = _metrics(path)
    _assert_same_curve(two, clean, rel=1e-4)
    assert two[STEPS]["heldout_loss"] == pytest.approx(clean[STEPS]["heldout_loss"], rel=1e-4)


def test_exported_model_reloads_and_gives_the_reported_heldout_loss(tokenized, uninterrupted):
    from transformers import AutoModelForCausalLM

    from miniplm.corpus.tokens import TokenRows
    from miniplm.models.loading import load_tokenizer

    path, clean = uninterrupted
    run_dir = Path(yaml.safe_load(path.read_text())["run_dir"])
    model = AutoModelForCausalLM.from_pretrained(run_dir / "models" / "s").eval()
    assert model.config.model_type == "qwen2"
    # (AutoTokenizer in transformers 5 would return a Qwen2Tokenizer with an extra <|endoftext|>)
    assert len(load_tokenizer(str(run_dir / "models" / "s"))) == model.config.vocab_size == 300
    rows = TokenRows(run_dir / "tokens" / "held")
    # the trainer evaluates the first eval_rows (32) rows, or all when the split is smaller; its size
    # varies with the temporary path, which the generated document ids hash
    batch = torch.from_numpy(np.stack([rows[i] for i in range(min(32, len(rows)))]).astype(np.int64))
    with torch.no_grad():
        logits = model(batch[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    assert float(loss) == pytest.approx(clean[STEPS]["heldout_loss"], abs=1e-5)
    state = json.loads((run_dir / "manifest.json").read_text())["stages"]["train/s"]
    assert state["state"] == "done" and state["counts"]["step"] == STEPS


@pytest.mark.parametrize("zero_stage, offload", [(3, False), (2, True)])
def test_other_zero_stages_train_and_export(tokenized, zero_stage, offload):
    root, job = tokenized
    path = _copy(tokenized, f"zero{zero_stage}")
    job = yaml.safe_load(path.read_text())
    job["students"][0].update(
        steps=3,
        zero_stage=zero_stage,
        offload_optimizer=offload,
        gradient_checkpointing=offload,
        deepspeed={"zero_optimization": {"stage3_gather_16bit_weights_on_model_save": True}},
    )
    path.write_text(yaml.safe_dump(job))
    result = _train(path)
    assert result.returncode == 0, result.stderr[-3000:]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(Path(job["run_dir"]) / "models" / "s")
    assert sum(p.numel() for p in model.parameters()) > 10_000
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert _metrics(path)[3]["loss"] < _metrics(path)[1]["loss"] + 1.0


def test_training_script_rendered_for_slurm_runs_two_processes(tokenized, uninterrupted, tmp_path):
    """The script `miniplm slurm` renders for a training step, under a stand-in srun that starts its one
    task per node: torchrun there starts two processes."""
    from miniplm.job import load_job
    from miniplm.pipeline.plan import step_named
    from miniplm.pipeline.slurm import render
    from miniplm.rundir import RunDir

    _, clean = uninterrupted
    path = _copy(tokenized, "srun")
    job = load_job(path, ["slurm.stages.train.procs_per_node=2"])
    script = tmp_path / "train.sbatch"
    script.write_text(render(job, RunDir(job.run_dir), step_named(job, "train/s"), path, [], 1))
    assert "--nproc-per-node=2" in script.read_text() and "--standalone" in script.read_text()
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "srun").write_text(
        '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done  # srun\'s own options\nexec "$@"\n'
    )
    (shim / "srun").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PATH=f"{shim}:{env['PATH']}", SLURM_JOB_ID="7", SLURM_CPUS_PER_TASK="2")
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (Path(job.run_dir) / "slurm" / "exit" / "train-s-7").read_text() == "0\n"
    two = _metrics(path)
    assert sorted(two) == list(range(1, STEPS + 1))
    assert all(two[s]["loss"] == pytest.approx(clean[s]["loss"], rel=1e-4) for s in two)


def _new_settings(tokenized, name: str) -> Path:
    """A copy whose student sizes its micro-batches by tokens (auto: on a CPU, all 8 rows of a step in
    one pass, where the plain run takes 2 passes of 4) and compiles its body and loss as one graph."""
    path = _copy(tokenized, name)
    job = yaml.safe_load(path.read_text())
    job["students"][0].pop("micro_batch")
    job["students"][0].update(micro_batch_tokens="auto", compile="step")
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture(scope="module")
def compiled(tokenized):
    return _trained(_new_settings(tokenized, "compiled"))


def test_a_compiled_step_on_token_sized_micro_batches_follows_the_eager_row_sized_curve(uninterrupted, compiled):
    _, clean = uninterrupted
    path, new = compiled
    assert {clean[s]["micro_batch_rows"] for s in clean} == {4}
    assert {new[s]["micro_batch_rows"] for s in new} == {8}
    record = Path(yaml.safe_load(path.read_text())["run_dir"]) / "train" / "s" / "micro_batch.json"
    assert json.loads(record.read_text())["rows"] == 8
    _assert_same_curve(new, clean, rel=1e-4)
    assert new[STEPS]["heldout_loss"] == pytest.approx(clean[STEPS]["heldout_loss"], rel=1e-4)


def test_kill_9_under_the_new_settings_resumes_with_the_same_losses(tokenized, compiled):
    _, clean = compiled
    path = _new_settings(tokenized, "compiled-killed")
    metrics = Path(yaml.safe_load(path.read_text())["run_dir"]) / "train" / "s" / "metrics.jsonl"
    kill_when(["train", str(path)], lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 10)
    assert 10 <= len(metrics.read_text().splitlines()) < STEPS
    result = _train(path)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_curve(_metrics(path), clean, abs=1e-5)
