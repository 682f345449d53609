"""Globs and folder walks through symbolic links: each real folder once, however the links loop."""

import os

import pytest

from miniplm.config import InputSpec, expand_input
from miniplm.paths import glob_paths, walk_files


def _tree_with_two_loops(root):
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "one.jsonl").write_text("{}\n")
    (root / "a" / "b" / "two.jsonl").write_text("{}\n")
    os.symlink(root / "a", root / "a" / "b" / "up")  # a/b/up -> a
    os.symlink(root / "a" / "b", root / "a" / "b" / "here")  # a/b/here -> a/b
    return root / "a"


@pytest.mark.timeout(30)  # glob.glob follows such loops until paths are too long: minutes with two
def test_a_double_star_glob_through_symlink_loops_finds_each_file_once(tmp_path):
    top = _tree_with_two_loops(tmp_path)
    spec = InputSpec(path=str(top / "**" / "*.jsonl"), format="jsonl")
    assert expand_input(spec) == [str(top / "b" / "two.jsonl"), str(top / "one.jsonl")]
    folder = InputSpec(path=str(top), format="jsonl")
    assert expand_input(folder) == [str(top / "b" / "two.jsonl"), str(top / "one.jsonl")]


def test_glob_paths_matches_glob_where_there_is_no_loop(tmp_path, monkeypatch):
    import glob

    work = tmp_path / "work"
    for name in (
        "work/x/y/z.txt",
        "work/x/a.txt",
        "work/x/.hidden/h.txt",
        "work/x/.h.txt",
        "work/top.txt",
        "work/x/y/w.md",
        "outside/o.txt",
        "outside/deeper/d.md",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    os.symlink(tmp_path / "outside", work / "x" / "linked")  # a link to a folder, no loop: followed
    monkeypatch.chdir(work)
    for pattern in ("**/*.txt", "x/**/*.txt", "x/*/**/*", str(work / "**" / "*.md"), "*.txt", "x/**", "**"):
        assert glob_paths(pattern) == sorted(glob.glob(pattern, recursive=True)), pattern
    assert walk_files("x") == [
        "x/.h.txt",
        "x/.hidden/h.txt",
        "x/a.txt",
        "x/linked/deeper/d.md",
        "x/linked/o.txt",
        "x/y/w.md",
        "x/y/z.txt",
    ]
