"""Which scores a selection reads: the teacher's and the reference's, or the proxy's.

With `proxy.use: instead` rank and select read the proxy's score shards (RUN_DIR/proxy/scores/,
the LM scores of the sample and the cheap model's of the rest) and write where they always do.
With `proxy.use: beside` they run twice: their usual part on the LM scores, and a part `NAME-proxy`
on the proxy's, into folders of its own (ranked-proxy/, selection-proxy/, selected-proxy/), with
no random controls (the usual part draws them). Either way the selection's code is the same: it
reads and writes through the run directory it is handed, here a view of RUN_DIR whose score and
selection folders are the proxy's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from miniplm import outputs
from miniplm.inputs import Upstream
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.schema.select import SelectConfig
from miniplm.stage import Part

PROXY = "proxy"
SUFFIX = "-proxy"


class ProxySelectionDir(RunDir):
    """RUN_DIR as a selection from the proxy's scores sees it. `own`: the beside part, whose sorted
    runs, decisions and selected documents are its own; otherwise (instead) only the scores differ."""

    def __init__(self, root: str | Path, own: bool):
        super().__init__(root)
        self.own = own

    @property
    def scores(self) -> Path:
        return self.root / outputs.PROXY_SCORES

    @property
    def selection(self) -> Path:
        return self.root / f"selection{SUFFIX}" if self.own else super().selection

    @property
    def ranked(self) -> Path:
        return self.root / f"ranked{SUFFIX}" if self.own else super().ranked

    def selected(self, folder: str = "selected") -> Path:
        if not self.own:
            return super().selected(folder)
        if folder != "selected":
            raise ValueError(f"the proxy's selection has no random control {folder!r}")
        return self.root / f"selected{SUFFIX}"


def parts(name: str, job: JobConfig) -> list[Part]:
    """A selection stage's parts: one, or with the proxy beside a second on its scores."""
    # the proxy's part is redone with its stage: `miniplm select --force` redoes both
    return [Part(name), *([Part(part_name(name), PROXY, f"miniplm {name}")] if job.proxy_use == "beside" else [])]


def part_name(name: str) -> str:
    """The manifest entry of a stage's part on the proxy's scores: `select-proxy`, beside `select` and not
    below it, so that the usual part's markers and scratch, cleared when it finishes, are not its."""
    return f"{name}{SUFFIX}"


def of_proxy(part: Part) -> bool:
    return part.item == PROXY


def run_dir(job: JobConfig, part: Part, root: Any = None) -> RunDir:
    """The run directory a part of rank or select reads and writes through."""
    root = job.run_dir if root is None else root
    if of_proxy(part):
        return ProxySelectionDir(root, own=True)
    if job.proxy_use == "instead":
        return ProxySelectionDir(root, own=False)
    return RunDir(root)


def scores(job: JobConfig, part: Part, why: str) -> Upstream:
    """The score shards a part of rank or select reads."""
    if of_proxy(part) or job.proxy_use == "instead":
        return outputs.proxy_scores(why)
    return outputs.scores(why)


def ranked(part: Part, why: str) -> Upstream:
    """rank's sorted runs, as the same part of select reads them."""
    up = outputs.ranked(why)
    return Upstream(part_name(up.stage), (f"{up.folders[0]}{SUFFIX}",), why) if of_proxy(part) else up


def select_config(job: JobConfig, part: Part) -> SelectConfig:
    """The selection settings a part runs with: the job's, without random controls on the proxy's
    side (the usual part draws them)."""
    return job.select.model_copy(update={"random_baseline": False}) if of_proxy(part) else job.select


def per_part(name: str, result: Any) -> list[tuple[str, Any]]:
    """A selection stage's result by part: [(NAME, counts)], or with the proxy beside, two (counts
    None for a part other workers are still finishing)."""
    key = part_name(name)
    if isinstance(result, dict) and key in result:
        return [(name, result[name]), (key, result[key])]
    return [(name, result)]
