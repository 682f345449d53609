import pyarrow as pa
import pyarrow.parquet as pq

from miniplm.corpus.parquet import ShardWriter, iter_batches


def test_iter_batches_holds_one_row_group_at_a_time(tmp_path):
    path = tmp_path / "big.parquet"
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())]), compression="none") as w:
        for g in range(40):  # 40 row groups of 1 MB of text each
            w.write_table(pa.table({"text": [f"{g:02d}" + "x" * 10_000] * 100}))
    peak = 0
    texts = []
    for batch in iter_batches(pq.ParquetFile(path), batch_size=32):
        peak = max(peak, pa.total_allocated_bytes())
        texts.append(batch.column(0)[0].as_py()[:2])
    assert len(texts) == 40 * 4  # 100 rows in batches of 32, per row group
    assert texts[::4] == [f"{g:02d}" for g in range(40)]
    assert peak < 8 << 20, f"{peak / 2**20:.1f} MB allocated while reading a 40 MB file"


def test_shard_writer_cuts_exact_shards(tmp_path):
    schema = pa.schema([("id", pa.string()), ("n", pa.int64())])
    writer = ShardWriter(schema, lambda i: tmp_path / f"shard-{i:05d}.parquet", rows_per_shard=7)
    rows = [str(i) for i in range(30)]
    for start in range(0, 30, 4):  # appends that straddle shard boundaries
        chunk = rows[start : start + 4]
        writer.write(pa.table({"n": [int(r) for r in chunk], "id": chunk}))  # column order differs
    assert not list(tmp_path.glob("shard-00004*"))  # the short last shard waits for close()
    writer.close()
    shards = sorted(tmp_path.glob("*.parquet"))
    assert [pq.read_metadata(s).num_rows for s in shards] == [7, 7, 7, 7, 2]
    assert sum((pq.read_table(s)["id"].to_pylist() for s in shards), []) == rows
    assert writer.shards_written == 5 and not list(tmp_path.glob(".*"))
