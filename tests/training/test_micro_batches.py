"""How micro-batches are sized: rows as asked, a token budget, or measured to fit, and kept."""

import json

import pytest

from miniplm.config import StudentConfig
from miniplm.errors import ConfigError
from miniplm.training import micro_batches
from miniplm.training.micro_batches import AUTO_CPU_TOKENS, MicroBatch, choose, keep


def _student(**settings) -> StudentConfig:
    return StudentConfig(name="s", preset="tiny", tokens="t", steps=1, **settings)


def test_rows_as_asked_must_divide_each_processs_share():
    # 96 rows of 64 tokens a step, 48 per process over two
    assert choose(_student(batch_tokens=96 * 64, micro_batch=8), 64, 2) == MicroBatch(8, 6, "8 rows as asked")
    with pytest.raises(ConfigError, match="micro_batch 5 must divide each process's 48 rows"):
        choose(_student(batch_tokens=96 * 64, micro_batch=5), 64, 2)


def test_a_token_budget_takes_the_largest_row_count_within_it_that_divides_the_share():
    student = _student(batch_tokens=96 * 64, micro_batch_tokens=1000)  # 15 rows at most; 48 per process
    assert choose(student, 64, 2).rows == 12
    assert choose(student, 64, 2).accumulation == 4
    assert choose(_student(batch_tokens=96 * 64, micro_batch_tokens=10**6), 64, 1).rows == 96
    with pytest.raises(ConfigError, match="less than one row of 64 tokens"):
        choose(_student(batch_tokens=96 * 64, micro_batch_tokens=63), 64, 1)


def test_a_global_batch_that_is_not_whole_rows_over_processes_is_refused():
    with pytest.raises(ConfigError, match="batch_tokens 1000 must be a multiple of seq_len"):
        choose(_student(batch_tokens=1000), 64, 1)
    with pytest.raises(ConfigError, match=r"x processes \(4\)"):
        choose(_student(batch_tokens=6 * 64), 64, 4)


def test_auto_is_the_default_and_on_a_cpu_takes_the_largest_within_its_cap():
    student = _student(batch_tokens=2**16)  # neither micro_batch nor micro_batch_tokens
    got = choose(student, 128, 1)  # 512 rows; the cap allows 64
    assert (got.rows, got.accumulation) == (AUTO_CPU_TOKENS // 128, 512 * 128 // AUTO_CPU_TOKENS)


def test_auto_measures_from_the_smallest_up_and_stops_at_the_first_that_does_not_fit():
    tried = []

    def fits(rows: int) -> bool:
        tried.append(rows)
        return rows * 64 <= 3000  # what this pretend GPU holds

    got = choose(_student(batch_tokens=96 * 64), 64, 1, fits=fits)
    assert got.rows == 32 and got.accumulation == 3  # 32 x 64 = 2048 fits; 48 x 64 = 3072 does not
    assert tried == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48]
    with pytest.raises(ConfigError, match="one row of 64 tokens does not fit"):
        choose(_student(batch_tokens=96 * 64), 64, 1, fits=lambda rows: False)


def test_auto_never_tries_past_its_token_ceiling():
    tried = []
    choose(_student(batch_tokens=2**20), 1024, 1, fits=lambda rows: tried.append(rows) or True)
    assert max(tried) * 1024 == micro_batches.AUTO_MAX_TOKENS


def test_a_recorded_choice_is_kept_for_the_same_shapes_and_measured_again_for_others(tmp_path):
    record = tmp_path / "train" / micro_batches.RECORD
    keep(record, MicroBatch(16, 6, "auto: measured"), 64, 96)
    assert json.loads(record.read_text())["rows"] == 16

    def never(rows):
        raise AssertionError("a recorded choice is not measured again")

    assert choose(_student(batch_tokens=96 * 64), 64, 1, record, fits=never) == MicroBatch(16, 6, "auto: measured")
    # another global batch: the record is for other shapes
    assert choose(_student(batch_tokens=48 * 64), 64, 1, record, fits=lambda rows: rows <= 4).rows == 4


def test_the_optimizer_state_estimate_follows_zero_stage_ranks_and_offload():
    n = 1000
    assert micro_batches.optimizer_state_bytes(n, _student(zero_stage=0), 2) == 16 * n
    assert micro_batches.optimizer_state_bytes(n, _student(zero_stage=1), 2) == 6 * n + 4 * n
    assert micro_batches.optimizer_state_bytes(n, _student(zero_stage=2), 2) == 6 * n + 2 * n
    assert micro_batches.optimizer_state_bytes(n, _student(zero_stage=1, offload_optimizer=True), 2) == 4 * n


def test_settings_that_cannot_go_together_are_refused_at_load():
    with pytest.raises(ValueError, match="micro_batch .rows. or micro_batch_tokens, not both"):
        _student(micro_batch=4, micro_batch_tokens=512)
    with pytest.raises(ValueError, match="expected a number, not a boolean"):
        _student(micro_batch_tokens=True)
    with pytest.raises(ValueError, match="cuda_graphs replays the compiled step"):
        _student(cuda_graphs=True)
    with pytest.raises(ValueError, match="compile: step with zero_stage 3 is not supported"):
        _student(compile=True, zero_stage=3)
    assert _student(compile=True).compile == "step" and _student(compile=False).compile == "off"


def test_only_auto_is_measured_and_recorded():
    assert micro_batches.is_auto(_student()) and micro_batches.is_auto(_student(micro_batch_tokens="auto"))
    assert not micro_batches.is_auto(_student(micro_batch=4))
    assert not micro_batches.is_auto(_student(micro_batch_tokens=4096))
