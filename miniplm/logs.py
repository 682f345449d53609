"""Other libraries' messages go to the run's log file, not the terminal.

DeepSpeed announces its accelerator and the ops it builds, lm-eval and
datasets talk while loading tasks, and compilers print their command lines:
useful when something breaks, noise otherwise. Once `configure` has named a
log file (the CLI does, unless --verbose), their log records and Python
warnings are written there, and `library_output` sends whatever is printed
inside its block (fd-level, so subprocesses and C++ extensions too) to the
same file. Without `configure` (miniplm used as a library) nothing is moved.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

LIBRARIES = (
    "DeepSpeed",
    "lm-eval",
    "lm_eval",
    "datasets",
    "transformers",
    "accelerate",
    "torch",
    "evaluate",
    "sqlitedict",
    "py.warnings",
)

_log_file: Path | None = None
_handler: logging.Handler | None = None


def configure(log_file: Path | None) -> None:
    """Route other libraries' output to `log_file` from now on (None: leave it on the terminal)."""
    global _log_file, _handler
    _log_file = log_file
    if log_file is None:
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    _handler = logging.FileHandler(log_file, encoding="utf-8", delay=True)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logging.captureWarnings(True)
    # their own progress bars (loading and writing weights, dataset splits): read when they are imported
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _point_loggers()


def _point_loggers() -> None:
    """Libraries add their own terminal handlers when imported: replace them with the file's."""
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        logger.handlers[:] = [_handler]
        logger.propagate = False


@contextlib.contextmanager
def library_output() -> Iterator[None]:
    """Inside the block, stdout and stderr go to the log file (when one is configured)."""
    if _log_file is None:
        yield
        return
    _log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(_log_file, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])
        _point_loggers()
