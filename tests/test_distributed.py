"""Every collective miniplm issues itself puts its tensor on the device the process group serves.

nccl serves CUDA tensors only; gloo, which the CPU tests run, serves the CPU
too, so a flag built on the CPU passes every CPU test and fails on the first
GPU. Two halves make the CPU tests see that class of bug: the package is read
to check that only miniplm/distributed.py calls a collective, and each of its
functions runs under a backend that serves one device type other than the
CPU (tests/strict_backend.py), refusing anything else as nccl does.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "miniplm"

COLLECTIVES = {
    "broadcast",
    "all_reduce",
    "reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "gather",
    "gather_object",
    "scatter",
    "scatter_object_list",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "monitored_barrier",
    "send",
    "recv",
    "isend",
    "irecv",
    "batch_isend_irecv",
    "broadcast_object_list",
    "send_object_list",
    "recv_object_list",
    "all_reduce_coalesced",
    "all_gather_coalesced",
}
COMM_MODULES = ("torch.distributed", "deepspeed.comm")


def _comm_names(tree: ast.Module) -> set[str]:
    """The expressions that name torch.distributed or deepspeed.comm in a module."""
    names = set(COMM_MODULES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname for a in node.names if a.name in COMM_MODULES and a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "deepspeed"):
            names |= {a.asname or a.name for a in node.names if a.name in ("distributed", "comm")}
    return names


def collective_calls(path: Path) -> list[tuple[str, str]]:
    """(enclosing function, collective) for each collective a module calls."""
    tree = ast.parse(path.read_text())
    names = _comm_names(tree)
    found = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in COLLECTIVES
            and ast.unparse(node.func.value) in names
        ):
            found.append((function, node.func.attr))
        if isinstance(node, ast.ImportFrom) and node.module in COMM_MODULES:
            found.extend((function, a.name) for a in node.names if a.name in COLLECTIVES)
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "<module>")
    return found


def test_the_scan_finds_collectives_however_they_are_named(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import torch\nimport torch.distributed as dist\nfrom deepspeed import comm\n"
        "def a():\n    torch.distributed.broadcast(x, 0)\n"
        "def b():\n    from torch.distributed import all_reduce\n"
        "def c():\n    dist.barrier()\n    comm.all_gather(y)\n    threading.barrier()\n"
    )
    assert collective_calls(source) == [("a", "broadcast"), ("b", "all_reduce"), ("c", "barrier"), ("c", "all_gather")]


def test_only_miniplm_distributed_calls_collectives():
    elsewhere = {
        str(p.relative_to(REPO)): calls
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "distributed.py" or p.parent != PACKAGE
        if (calls := collective_calls(p))
    }
    assert elsewhere == {}, "collectives outside miniplm/distributed.py, which puts tensors where the backend serves"


@pytest.fixture(scope="module")
def strict_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("strict") / "ranks.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.strict_backend", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_collective_function_runs_under_a_backend_serving_one_other_device(strict_run):
    exercised = {key for key in strict_run[0] if key not in ("device", "cpu_tensor")}
    issuing = {function for function, _ in collective_calls(PACKAGE / "distributed.py")}
    assert issuing <= exercised, f"not run under the strict backend: {issuing - exercised}"
    for rank in strict_run:
        assert rank["device"] == "lazy"
        assert rank["broadcast_flag"] == [True, True]  # rank 0's True, then rank 1's True
        assert rank["all_sum"] == [[3.0, 20.0], [1.5]]
        assert rank["all_mean"] == pytest.approx(1.0)
        assert rank["all_min"] == 4
        assert rank["barrier"] is True


def test_the_strict_backend_refuses_a_cpu_tensor_as_nccl_does(strict_run):
    """What `miniplm train` did before: broadcast a flag built on the CPU."""
    for rank in strict_run:
        assert "No backend type associated with device type cpu" in rank["cpu_tensor"]
