"""What a stage writes that another stage reads, named once: its manifest entry and its folders.

The stage that writes an output and every stage that reads it take the name from here, so an
entry or a folder is never spelled twice. A stage's `reads` lists these `Upstream`s; the chains
`miniplm slurm` submits and the compute charged to each student are derived from them.
"""

from __future__ import annotations

from miniplm.inputs import Upstream
from miniplm.schema.proxy import SELECTED

GENERATED = "generated/"  # a token set's input naming a generated corpus: generated/NAME
PROXY_SCORES = "proxy/scores"
PROXY_SELECTED = SELECTED  # the proxy's own selection, when it runs beside the LM scores


def documents(split: str, why: str = "") -> Upstream:
    """A split of the prepared documents (main, reference, heldout)."""
    return Upstream("prepare", (f"docs/{split}",), why=why)


def scores(why: str = "") -> Upstream:
    return Upstream("score", ("scores",), why=why)


def proxy_scores(why: str = "") -> Upstream:
    """The proxy's score shards: the LM scores of its sample, its own for the rest."""
    return Upstream("proxy", (PROXY_SCORES,), why=why)


def ranked(why: str = "") -> Upstream:
    """rank's sorted runs of the score shards."""
    return Upstream("rank", ("ranked",), why=why)


def selection(folder: str, why: str = "") -> Upstream:
    """A folder select writes: the selected documents, a random control (selected-random, ...), or
    the proxy's selection beside the LM's (select-proxy's)."""
    return Upstream("select-proxy" if folder == PROXY_SELECTED else "select", (folder,), why=why)


def generated(name: str, why: str = "") -> Upstream:
    return Upstream(f"generate/{name}", (f"{GENERATED}{name}",), why=why)


def pruned(name: str, why: str = "") -> Upstream:
    return Upstream(f"prune/{name}", (f"models/{name}",), why=why)


def tokens(name: str, why: str = "") -> Upstream:
    """A token set's rows."""
    return Upstream(f"tokenize/{name}", (f"tokens/{name}",), why=why)


def teacher_logits(name: str, why: str = "") -> Upstream:
    return Upstream(f"teacher-logits/{name}", (f"teacher-logits/{name}",), why=why)


def trained(name: str, why: str = "") -> Upstream:
    """A model trained in the run (a student, or `reference`)."""
    return Upstream(f"train/{name}", (f"models/{name}",), why=why)


def document_input(name: str, why: str = "") -> Upstream:
    """The documents a token set's `input:` names: a split, a selection folder or a generated corpus."""
    if name.startswith(GENERATED):
        return generated(name.removeprefix(GENERATED), why)
    if name.startswith("selected"):
        return selection(name, why)
    return documents(name, why)


def unscored(up: Upstream) -> bool:
    """Whether an output needed none of its stage's scoring work: select's random controls draw
    documents from the prepared split without reading a score."""
    return up.stage == "select" and all(f != "selected" for f in up.folders)
