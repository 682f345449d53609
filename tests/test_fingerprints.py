"""Content fingerprints: the hash of the bytes, remembered by the file's identity, never trusted
for a file that changed since."""

import os
import time

import pytest
import xxhash

from miniplm import fingerprints
from miniplm.fingerprints import fingerprint, folder_fingerprint


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIPLM_CACHE", str(tmp_path / "cache"))


def _old(path, seconds=60):
    """Make a file look written a while ago (the cache does not trust a file written just now)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def _no_reading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(fingerprints, "hash_bytes", refuse)


def test_the_fingerprint_is_the_hash_of_the_bytes_and_is_remembered(tmp_path, monkeypatch):
    data = os.urandom(3 * fingerprints.READ_BYTES + 123)  # several reads, the last one short
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    _old(path)
    assert fingerprint(path) == xxhash.xxh3_128_hexdigest(data)
    with monkeypatch.context() as m:
        _no_reading(m)
        assert fingerprint(path) == xxhash.xxh3_128_hexdigest(data)  # from the cache
        assert fingerprint(tmp_path / "." / "big.bin") == xxhash.xxh3_128_hexdigest(data)  # by real path

    # rewritten in place with the same size, and the modification time put back: still noticed
    # (the inode change time moves on any write)
    stat = path.stat()
    with open(path, "r+b") as f:
        f.write(b"X")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint(path) == xxhash.xxh3_128_hexdigest(b"X" + data[1:])


def test_a_file_written_just_now_is_not_remembered(tmp_path, monkeypatch):
    path = tmp_path / "fresh.txt"
    path.write_text("just written")
    fingerprint(path)
    assert fingerprints.cached(path) is None  # a second write in the same clock tick could go unseen
    _old(path)
    fingerprint(path)
    assert fingerprints.cached(path) == xxhash.xxh3_128_hexdigest(b"just written")


def test_pipes_and_unreadable_files_are_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    assert fingerprint(tmp_path / "pipe") == fingerprints.NOT_A_FILE  # reading it would block, or consume it
    assert fingerprint(tmp_path / "gone").startswith("unreadable")


def test_a_folder_fingerprint_follows_every_file(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 1000)
    before = folder_fingerprint(model)
    assert folder_fingerprint(model) == before
    (model / "model.safetensors").write_bytes(b"\1" + b"\0" * 999)  # same size, other weights
    assert folder_fingerprint(model) != before
    (model / "model.safetensors").write_bytes(b"\0" * 1000)
    assert folder_fingerprint(model) == before
    (model / "tokenizer.json").write_text("{}")
    assert folder_fingerprint(model) != before


def test_workers_start_hashing_at_different_files(tmp_path, monkeypatch):
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"f{i}"))
        (tmp_path / f"f{i}").write_text(str(i))
    order = []
    real = fingerprints.hash_bytes
    monkeypatch.setattr(fingerprints, "hash_bytes", lambda p, progress=None: order.append(p) or real(p))
    found = fingerprints.fingerprints(paths, start=2)
    assert list(found) == paths and order == [os.path.realpath(p) for p in paths[2:] + paths[:2]]


def test_a_tokenizer_is_fingerprinted_by_its_own_files_not_the_weights_beside_it(tmp_path):
    from miniplm.fingerprints import tokenizer_files, tokenizer_fingerprint

    model = tmp_path / "model"
    model.mkdir()
    for name, text in [
        ("model.safetensors", "w1"),
        ("config.json", '{"model_type": "llama"}'),
        ("generation_config.json", "{}"),
        ("tokenizer.json", "{}"),
        ("merges.txt", "a b"),
        ("tokenizer_config.json", '{"tokenizer_class": "PreTrainedTokenizerFast"}'),
    ]:
        (model / name).write_text(text)
    assert [os.path.basename(p) for p in tokenizer_files(model)] == [
        "merges.txt",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    before = tokenizer_fingerprint(str(model))
    (model / "model.safetensors").write_text("w2")
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": 8}')
    assert tokenizer_fingerprint(str(model)) == before
    (model / "merges.txt").write_text("a c")
    assert tokenizer_fingerprint(str(model)) != before

    # without the class named, AutoTokenizer picks it by the model type in config.json
    (model / "tokenizer_config.json").write_text("{}")
    assert "config.json" in [os.path.basename(p) for p in tokenizer_files(model)]
    assert tokenizer_fingerprint("org/name") == "org/name"  # a hub id: its name
