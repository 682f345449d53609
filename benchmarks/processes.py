"""What the multi-process benchmarks share: each task in a process of its own, and its peak memory."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path


def peak_memory() -> int:
    """This process's peak resident memory in bytes (VmHWM: unlike ru_maxrss, not inherited from the
    parent across fork and exec, which would report the benchmark's own peak for every task)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_tasks(commands: list[list[str]], parallel: int) -> tuple[float, list[dict]]:
    """Run the commands, `parallel` at a time; each prints a JSON object as its last line.
    (wall seconds for all of them, each one's object)."""
    start, results, running, todo = time.perf_counter(), [], [], list(commands)
    while todo or running:
        while todo and len(running) < parallel:
            running.append(subprocess.Popen(todo.pop(0), stdout=subprocess.PIPE, text=True))
        done = running.pop(0)
        out, _ = done.communicate()
        if done.returncode:
            raise SystemExit(f"{' '.join(done.args)} failed")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return time.perf_counter() - start, results
