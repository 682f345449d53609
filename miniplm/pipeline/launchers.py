"""The launchers whose submissions `miniplm status` reads (the in-process runner keeps none)."""

from __future__ import annotations

from miniplm.pipeline.launcher import Launcher
from miniplm.pipeline.slurm import SLURM

LAUNCHERS: list[Launcher] = [SLURM]


def register(launcher: Launcher) -> Launcher:
    if any(existing.name == launcher.name for existing in LAUNCHERS):
        raise ValueError(f"a launcher named {launcher.name!r} is registered already")
    LAUNCHERS.append(launcher)
    return launcher


def unregister(name: str) -> None:
    LAUNCHERS[:] = [launcher for launcher in LAUNCHERS if launcher.name != name]
