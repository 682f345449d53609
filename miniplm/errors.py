"""The error types every layer raises; the command line turns each into an exit code and one line."""

from __future__ import annotations


class ConfigError(ValueError):
    """A job file (or an override) that cannot work. The message names the key and the file. Exit code 2."""


class StageError(RuntimeError):
    """A stage that cannot go on (bad input under on_error: fail, a missing earlier stage, ...);
    the message says where. Exit code 1."""


class LaunchError(RuntimeError):
    """A launcher could not submit or query work (sbatch or squeue failed); the message has their output."""
