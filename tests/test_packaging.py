"""What pyproject.toml promises: the optional kernel libraries' lowest versions have what miniplm calls."""

import inspect
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _requirement(extra: str, name: str) -> Requirement:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["optional-dependencies"][extra] if Requirement(r).name == name]
    assert len(found) == 1, f"{name} in .[{extra}]"
    return found[0]


def test_liger_kernel_floor_has_the_fused_kd_arguments_training_passes():
    """`return_soft_hard_loss` (the CE and KD terms reported apart) first appears in liger-kernel
    0.6.4: a looser floor lets pip install a version that raises at the first KD step."""
    spec = _requirement("gpu", "liger-kernel").specifier
    floors = [Version(s.version) for s in spec if s.operator in (">=", "==", "~=")]
    assert floors and min(floors) >= Version("0.6.4")
    assert not spec.contains("0.6.3") and spec.contains("0.6.4")
    pinned = re.search(r'"liger-kernel==([\d.]+)"', (REPO / "scripts" / "setup.sh").read_text())
    assert pinned and spec.contains(pinned.group(1))  # the version the tests run satisfies it


def test_the_installed_liger_kernel_takes_every_argument_miniplm_passes():
    pytest.importorskip("liger_kernel.chunked_loss")
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    source = inspect.getsource(__import__("miniplm.training.kd_losses", fromlist=["x"]))
    call = re.search(r"LigerFusedLinearJSDLoss\((.*?)\)\n", source, re.S).group(1)
    passed = set(re.findall(r"(\w+)=", call))
    assert {"return_soft_hard_loss", "ignore_index", "compiled"} <= passed
    assert passed <= set(inspect.signature(LigerFusedLinearJSDLoss.__init__).parameters)
