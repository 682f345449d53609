"""Stored teacher log-probs, each mode and precision: written in pieces of any size, read back equal
(within the precision's error), one record batch of rows at a time, in the bytes stated."""

import numpy as np
import pytest
import torch

from miniplm.training.logit_files import BATCH_ROWS, LogitsLayout, TeacherLogitRows, write_logits
from miniplm.training.logit_modes import keep

ROWS, SEQ, VOCAB = 150, 12, 600  # 150 rows: two whole record batches and a short one


def _teacher(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(ROWS * SEQ, VOCAB, generator=g, dtype=torch.float64) * 3, dim=-1)


def _written(tmp_path, layout: LogitsLayout, logp: torch.Tensor):
    kept = keep(logp.float(), layout.mode, layout.top_k, layout.top_p, torch.Generator().manual_seed(1))
    shape = (ROWS, SEQ)
    pieces = [(0, 7), (7, 70), (70, 150)]  # arriving in sizes that do not match the record batches
    tables = [
        layout.table(
            kept.ids.reshape(*shape, -1)[a:b].numpy(),
            kept.logp.reshape(*shape, -1)[a:b].numpy(),
            None if kept.rest is None else kept.rest.reshape(shape)[a:b].numpy(),
            None if kept.counts is None else kept.counts.reshape(shape)[a:b].numpy(),
        )
        for a, b in pieces
    ]
    size = write_logits(tmp_path / "shard-00000.arrow", layout, tables)
    return kept, size, TeacherLogitRows(tmp_path)


ERROR = {"float32": 1e-6, "float16": 2e-3, "uint8": None}  # uint8: half a step of each position's scale


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
@pytest.mark.parametrize("mode", ["top_k", "top_p", "sampled"])
def test_every_mode_reads_back_what_was_kept(tmp_path, mode, dtype):
    layout = LogitsLayout(SEQ, 16, VOCAB, 1.0, dtype, mode, 0.8 if mode == "top_p" else None)
    kept, _, stored = _written(tmp_path, layout, _teacher())
    assert len(stored) == ROWS and stored.layout == layout
    batch = stored.batch(np.arange(ROWS), "cpu")
    valid = torch.ones_like(kept.ids, dtype=torch.bool) if kept.counts is None else batch.valid
    if mode == "top_p":
        assert torch.equal(valid.sum(1), kept.counts) and (kept.counts < 16).any() and (kept.counts > 1).any()
    assert torch.equal(batch.ids[valid], kept.ids[valid])
    got, want = batch.logp[valid].double(), kept.logp[valid].double()
    if dtype == "uint8":
        # the values span each position's range in 255 steps (and are renormalised where a rest is kept)
        span = (kept.logp.masked_fill(~valid, float("inf")).min(1).values - 0).abs()
        if kept.rest is not None:
            span = torch.maximum(span, kept.rest.abs())
        bound = (span / 255 / 2 + 0.01).repeat_interleave(valid.sum(1))
        assert ((got - want).abs() <= bound.double()).all()
    else:
        assert torch.allclose(got, want, rtol=ERROR[dtype], atol=ERROR[dtype])
    if mode == "sampled":
        assert batch.rest is None
    else:
        total = torch.logaddexp(torch.logsumexp(batch.logp, 1), batch.rest)
        assert torch.allclose(total, torch.zeros_like(total), atol=3e-3)  # each position's outcomes sum to 1


def test_bytes_per_token_are_what_the_layout_says(tmp_path):
    """top-16 of 600 tokens in uint8: 16 ids of 10 bits, 17 one-byte values and two float16 a position."""
    layout = LogitsLayout(SEQ, 16, VOCAB, 1.0, "uint8")
    _, size, _ = _written(tmp_path, layout, _teacher())
    per_token = size / (ROWS * SEQ)
    # framing: offsets per row, the schema and record batch headers (about 1 KB): much of 12-token rows
    assert 20 + 17 + 4 <= per_token < 20 + 17 + 4 + 2.5
    assert BATCH_ROWS == 64


def test_a_whole_vocabulary_keeps_no_remaining_mass(tmp_path):
    layout = LogitsLayout(SEQ, VOCAB, VOCAB, 1.0, "uint8")
    _, _, stored = _written(tmp_path, layout, _teacher())
    row = stored.stored(3)
    assert np.isneginf(row.rest).all()
    assert np.allclose(np.logaddexp.reduce(row.logp, axis=1), 0, atol=1e-4)


def test_a_set_in_the_earlier_format_is_refused_naming_the_fix(tmp_path):
    """Before ids were packed: uint16 id lists and a separate rest column, no format in the metadata."""
    import json

    import pyarrow as pa
    import pyarrow.ipc as ipc

    from miniplm.training.logit_files import METADATA_KEY

    old = {"seq_len": 2, "top_k": 1, "vocab": 10, "temperature": 1.0, "logprob_dtype": "float16"}
    schema = pa.schema([("ids", pa.list_(pa.uint16(), 2))], metadata={METADATA_KEY: json.dumps(old).encode()})
    with ipc.new_file(str(tmp_path / "shard-00000.arrow"), schema) as writer:
        writer.write_table(pa.table({"ids": pa.array([[1, 2]], pa.list_(pa.uint16(), 2))}, schema=schema))
    with pytest.raises(ValueError, match="earlier format .* teacher-logits --only NAME --force"):
        TeacherLogitRows(tmp_path)
