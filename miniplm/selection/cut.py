"""The selection's cut over the whole corpus, from the rank tasks' sorted runs, in bounded memory.

`decide` (selection/strategies.py) walks one ranking of every unit in one process. The cut makes the
same decisions from the runs rank wrote (selection/rank.py), holding one record batch per run:

1. the noise floor, exactly, from the runs' sorted teacher log-probs, read a value at a time by
   binary searches (selection/order_stats.py);
2. one merge of the runs in rank order (key, highest first, then id: one record batch of each run in
   memory), fed in batches to the same
   walk as `decide`'s, carrying what it spent: each source's spending, for the source cap, and what
   is left of the budget. A unit that does not fit when its turn comes passes it on: the first
   such unit is the boundary, everything in the running before it is kept, and after it only units
   that still fit are kept (the few `extras`). Without a source cap the merge stops as soon as the
   budget is spent;
3. each random control: the pool's smallest draws while their tokens fit in what the selection
   kept. A histogram of the draws' tokens finds the bin the cut falls in, and that bin's units,
   sorted, the exact unit.

The cut is a few numbers and ids (selection/cut.json): the floor, per source the first unit over
its cap, the boundary, the extras, and per control the first draw left out. Each select task then
decides its own units from their score rows and the cut alone (`apply`), which gives exactly the
decisions of `decide` on the whole corpus (tests/selection/test_cut.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from miniplm.draws import uniform_by_id
from miniplm.files import atomic_write_json
from miniplm.rundir import RunDir
from miniplm.schema.select import RandomControl, SelectConfig
from miniplm.selection.noise_floor import noise_floor_sorted
from miniplm.selection.order_stats import SortedFile
from miniplm.selection.rank import draw_column
from miniplm.selection.strategies import (
    budget,
    cap_allowance,
    control_pool,
    control_seed,
    fill,
    keys_per_unit,
    needs_ids,
    reason_labels,
    unit_key,
    unit_numbers,
)

DRAW_BINS = 1 << 16
CONTROL_BATCHES = 32  # record batches a control's pass reads at once
MERGE_COLUMNS = ["key", "id", "source", "length", "teacher"]


@dataclass
class Cut:
    floor: dict  # NoiseFloor.as_dict()
    budget: int
    by_tokens: bool
    caps: dict[str, list] = field(default_factory=dict)  # source -> [key, id] of its first unit over the cap
    boundary: list | None = None  # [key, id] of the first unit that did not fit; None: everything fit
    extras: list[str] = field(default_factory=list)  # ids kept after the boundary
    controls: dict[str, list | None] = field(default_factory=dict)  # control column -> [draw, id] left out first
    kept_units: int = 0
    kept_length: int = 0
    in_memory: bool = False  # decided by `decide` over every score row (perplexity's middle band)

    @property
    def threshold(self) -> float | None:
        return self.floor["threshold"]

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "Cut":
        return cls(**json.loads(path.read_text()))


# ---------------------------------------------------------------------------------------------- the merge
def batches(path: Path) -> pa.ipc.RecordBatchFileReader:
    """A run's record batches, each read from the file when asked for (nothing mapped or cached)."""
    return pa.ipc.open_file(pa.OSFile(str(path)))


class _Run:
    """One run's units still in the running, read a record batch at a time."""

    def __init__(self, path: Path, running: int):
        self.file = batches(path)
        self.left = running  # rows of the run still to read: those in the running come first
        self.batch = 0
        self.rows: pl.DataFrame | None = None
        self.negkey = np.zeros(0)
        self._read()

    def _read(self) -> None:
        self.rows = None
        while self.left > 0 and self.batch < self.file.num_record_batches:
            batch = self.file.get_batch(self.batch).select(MERGE_COLUMNS)
            self.batch += 1
            rows = pl.from_arrow(batch).head(self.left)
            self.left -= rows.height
            if rows.height:
                self.rows = rows
                self.negkey = -rows["key"].to_numpy()
                return

    def last(self) -> tuple[float, str]:
        return (float(self.negkey[-1]), self.rows["id"][-1])

    def take(self, upto: tuple[float, str]) -> pl.DataFrame:
        """Its rows ranked no later than `upto` (negated key, id)."""
        below = int(np.searchsorted(self.negkey, upto[0], side="left"))
        tied = int(np.searchsorted(self.negkey, upto[0], side="right"))
        if tied > below:
            below += int(np.searchsorted(self.rows["id"].slice(below, tied - below).to_numpy(), upto[1], "right"))
        out = self.rows.head(below)
        self.rows, self.negkey = self.rows.slice(below), self.negkey[below:]
        if not self.rows.height:
            self._read()
        return out


def merged(rd: RunDir, totals: list[dict]):
    """Every unit in the running, of every run, in rank order: batches of at least a run's record batch."""
    active = [r for i, t in enumerate(totals) if (r := _Run(rd.ranked_run(i), t["running"])).rows is not None]
    while active:
        upto = min(r.last() for r in active)
        batch = pl.concat([r.take(upto) for r in active])
        yield batch.sort(["key", "id"], descending=[True, False], maintain_order=True)
        active = [r for r in active if r.rows is not None]


# ---------------------------------------------------------------------------------------------- the walk
class _Walk:
    """decide's walk down the ranking, fed in consecutive batches."""

    def __init__(self, cfg: SelectConfig, cut: Cut):
        self.cut = cut
        self.left = cut.budget
        self.allowance = cap_allowance(cfg, cut.budget) if cfg.max_source_fraction is not None else None
        self.spent: dict[str, int] = {}

    def done(self) -> bool:
        """Nothing later can change a decision: the budget is spent and no source cap is counting."""
        return self.cut.boundary is not None and self.left == 0 and self.allowance is None

    def feed(self, batch: pl.DataFrame) -> None:
        cut = self.cut
        if cut.threshold is not None:
            batch = batch.filter(pl.col("teacher") >= cut.threshold)
        cost = batch["length"].to_numpy() if cut.by_tokens else np.ones(batch.height, dtype=np.int64)
        if self.allowance is not None:
            batch = batch.with_columns(cost=cost)
            carried = pl.col("source").replace_strict(self.spent, default=0, return_dtype=pl.Int64)
            spent = batch.select(pl.col("cost").cum_sum().over("source") + carried)["cost"].to_numpy()
            over = spent > self.allowance
            self._first_over(batch, over)
            for source, total in batch.group_by("source").agg(pl.col("cost").sum()).iter_rows():
                self.spent[source] = self.spent.get(source, 0) + total
            batch, cost = batch.filter(~over), cost[~over]
        start = 0
        if cut.boundary is None:
            spent = np.cumsum(cost)
            start = int(np.searchsorted(spent, self.left, side="right"))
            self._keep(batch.head(start), int(spent[start - 1]) if start else 0)
            if start == batch.height:
                return
            cut.boundary = [batch["key"][start], batch["id"][start]]
            start += 1
        if self.left:
            tail = batch.slice(start)
            taken = fill(cost[start:], self.left)
            kept = tail.filter(taken)
            cut.extras += kept["id"].to_list()
            self._keep(kept, int(cost[start:][taken].sum()))

    def _first_over(self, batch: pl.DataFrame, over: np.ndarray) -> None:
        """Each source's first unit over its cap, where this batch holds it."""
        firsts = batch.with_columns(over=over).filter("over").group_by("source", maintain_order=True).first()
        for source, key, unit in firsts.select("source", "key", "id").iter_rows():
            if self.cut.caps.get(source, [None, None])[1] is None:
                self.cut.caps[source] = [key, unit]

    def _keep(self, kept: pl.DataFrame, spent: int) -> None:
        self.left -= spent
        self.cut.kept_units += kept.height
        self.cut.kept_length += int(kept["length"].sum() or 0)


# ---------------------------------------------------------------------------------------------- controls
def _pool(rows: pl.DataFrame, control: RandomControl, threshold: float | None) -> pl.Series:
    if control.pool == "raw":
        return rows["raw_pool"]
    ok = rows["pre"] == 0
    return ok & (rows["teacher"] >= threshold) if threshold is not None else ok


def _control_reads(rd: RunDir, totals: list[dict], control: RandomControl, ids: bool):
    columns = [draw_column(control), *(["id"] if ids else []), "length", "raw_pool", "pre", "teacher"]
    for i in range(len(totals)):
        file = batches(rd.ranked_run(i))
        for start in range(0, file.num_record_batches, CONTROL_BATCHES):
            end = min(start + CONTROL_BATCHES, file.num_record_batches)
            chunk = [file.get_batch(b).select(columns) for b in range(start, end)]
            yield pl.from_arrow(pa.Table.from_batches(chunk))


def control_cut(rd: RunDir, totals: list[dict], control: RandomControl, threshold: float | None, spend: int):
    """[draw, id] of the control's first unit left out (None: its whole pool fits), found by a
    histogram of its pool's draws and then the sorted units of the one bin the cut falls in."""
    column = draw_column(control)
    tokens = np.zeros(DRAW_BINS)
    for rows in _control_reads(rd, totals, control, ids=False):
        rows = rows.filter(_pool(rows, control, threshold))
        bins = (rows[column].to_numpy() * DRAW_BINS).astype(np.int64)
        tokens += np.bincount(bins, weights=rows["length"].to_numpy(), minlength=DRAW_BINS)
    cumulative = np.cumsum(tokens)
    if cumulative[-1] <= spend:
        return None
    b = int(np.searchsorted(cumulative, spend, side="right"))  # the bin where the draws overflow
    before = int(round(cumulative[b - 1])) if b else 0
    parts = []
    for rows in _control_reads(rd, totals, control, ids=True):
        rows = rows.filter(_pool(rows, control, threshold))
        # as Python values: a filtered string column still points into the whole chunk's buffers
        parts += rows.filter((pl.col(column) * DRAW_BINS).cast(pl.Int64) == b).select(column, "id", "length").rows()
    inside = pl.DataFrame(parts, schema=[column, "id", "length"], orient="row").sort(column, "id")
    over = int(np.searchsorted(before + np.cumsum(inside["length"].to_numpy()), spend, side="right"))
    return [inside[column][over], inside["id"][over]]


# ---------------------------------------------------------------------------------------------- global step
def run_totals(rd: RunDir) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(rd.ranked.glob("run-*.json"))]


def compute(rd: RunDir, cfg: SelectConfig, seed: int) -> Cut:
    """The cut, from the runs under RUN_DIR/ranked/."""
    totals = run_totals(rd)
    spend, by_tokens = budget(cfg, sum(t["units"] for t in totals), sum(t["length"] for t in totals))
    teacher = [SortedFile(rd.ranked_run(i, ".npy")) for i in range(len(totals))]
    cut = Cut(noise_floor_sorted(cfg, teacher).as_dict(), spend, by_tokens)
    walk = _Walk(cfg, cut)
    for batch in merged(rd, totals):
        walk.feed(batch)
        if walk.done():
            break
    for control in cfg.random_controls:
        cut.controls[control.column] = control_cut(rd, totals, control, cut.threshold, cut.kept_length)
    return cut


def in_memory(decisions: pl.DataFrame, cfg: SelectConfig) -> Cut:
    """The record of a selection `decide` made over every score row (perplexity's middle band)."""
    from miniplm.selection.noise_floor import floor_of
    from miniplm.selection.strategies import length_column

    length = decisions[length_column(decisions)]
    spend, by_tokens = budget(cfg, decisions.height, int(length.sum() or 0))
    kept = decisions["kept"]
    cut = Cut(floor_of(decisions, cfg).as_dict(), spend, by_tokens, in_memory=True)
    cut.kept_units, cut.kept_length = int(kept.sum()), int(length.filter(kept).sum() or 0)
    return cut


def _before(key: pl.Expr, unit: pl.Expr, at: list) -> pl.Expr:
    """Ranked before `at` ([key, id]) in an order of key, then id."""
    return (key < at[0]) | ((key == at[0]) & (unit < at[1]))


def apply(scores: pl.DataFrame, cut: Cut, cfg: SelectConfig, seed: int) -> pl.DataFrame:
    """Rows of `scores` decided by the cut: what `decide` returns for them over the whole corpus,
    with a column per random control."""
    u = unit_numbers(scores, cfg)
    reason = u.pre.copy()
    if cut.threshold is not None:
        reason[(reason == 0) & (u.teacher < cut.threshold)] = 3
    running = np.flatnonzero(reason == 0)
    key = np.full(scores.height, np.nan)
    ids = scores["id"].gather(running) if needs_ids(cfg) else None
    key[running] = unit_key(cfg, seed, ids, u.score[running], u.teacher[running], u.loss[running]) + 0.0
    rows = pl.DataFrame({"negkey": -key, "id": scores["id"], "source": scores["source"], "running": reason == 0})
    capped = pl.lit(False)
    for source, at in cut.caps.items():
        if at[1] is not None:
            capped = capped | ((pl.col("source") == source) & ~_before(pl.col("negkey"), pl.col("id"), [-at[0], at[1]]))
    competing = pl.col("running") & ~capped
    within = (
        _before(pl.col("negkey"), pl.col("id"), [-cut.boundary[0], cut.boundary[1]])
        if cut.boundary is not None
        else pl.lit(True)
    )
    fate = rows.select(
        capped=pl.col("running") & capped,
        kept=competing & (within | pl.col("id").is_in(cut.extras)),
        competing=competing,
    )
    reason[fate["capped"].to_numpy()] = 4
    reason[(fate["competing"] & ~fate["kept"]).to_numpy()] = 5
    decisions = scores.with_columns(
        score=u.score,
        teacher_per_token=u.teacher,
        reference_loss=u.loss,
        key=key,
        kept=fate["kept"],
        reason=reason_labels(reason),
    )
    for control in cfg.random_controls:
        decisions = decisions.with_columns(control_column(decisions, cut, control, seed))
    return decisions


def control_column(decisions: pl.DataFrame, cut: Cut, control: RandomControl, seed: int) -> pl.Series:
    pool = control_pool(decisions, control.pool)
    at = cut.controls.get(control.column)
    if at is None:
        return pool.alias(control.column)
    draws = pl.DataFrame({"u": uniform_by_id(decisions["id"], control_seed(seed, control)), "id": decisions["id"]})
    drawn = draws.select(_before(pl.col("u"), pl.col("id"), at))["u"]
    return (pool & drawn).alias(control.column)


def exact_in_memory(cfg: SelectConfig) -> bool:
    """Whether the cut falls back to `decide` over every score row (a key of the whole pool)."""
    return not keys_per_unit(cfg)
