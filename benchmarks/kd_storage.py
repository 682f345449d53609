"""What each offline-KD storage mode keeps of the teacher, and what it costs on disk: the bundled
teacher (SmolLM2-135M, 49,152 tokens) over rows of the bundled corpus, each mode's files written
and read back as training reads them. Run through `python benchmarks/kd_bench.py --storage`.

Per mode: bytes per token as written for SmolLM2's vocabulary and for Qwen's 151,936 (the same
kept tokens, ids at 16 and 18 bits); the teacher's mass on the tokens kept; KL(P || P^) in nats a
token, P the teacher's full distribution and P^ what the stored values rebuild (the kept tokens'
probabilities, the remaining mass spread evenly over the others: none for sampled tokens, which
are an estimate, not a rebuild); and the storage error alone, KL between the exact and the stored
values over the k + 1 outcomes (sampled: the mean absolute error of the stored log-probs).
"""

from __future__ import annotations

import glob
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from miniplm.models.loading import load_tokenizer
from miniplm.training.logit_files import LogitsLayout, TeacherLogitRows, write_logits
from miniplm.training.logit_modes import keep
from miniplm.training.teacher import Teacher

# name -> (mode, k, p, dtype)
MODES = {
    "top-32 float16": ("top_k", 32, None, "float16"),
    "top-32 uint8": ("top_k", 32, None, "uint8"),
    "top-p 0.95 (<= 32) uint8": ("top_p", 32, 0.95, "uint8"),
    "top-p 0.99 (<= 64) uint8": ("top_p", 64, 0.99, "uint8"),
    "sampled 12 uint8": ("sampled", 12, None, "uint8"),
    "sampled 32 uint8": ("sampled", 32, None, "uint8"),
}
QWEN_VOCAB = 151_936


def corpus_rows(tokenizer, n_rows: int, seq_len: int) -> torch.Tensor:
    """Rows of seq_len + 1 tokens packed from the bundled corpus's documents, each followed by EOS."""
    ids: list[int] = []
    for path in sorted(glob.glob("data/sample/*.parquet")):
        for text in pq.read_table(path, columns=["text"])["text"].to_pylist():
            ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
            if len(ids) >= n_rows * (seq_len + 1) * 3:
                break
    rng = np.random.default_rng(0)  # rows from all three sources, not the first document's
    rows = np.array(ids[: len(ids) // (seq_len + 1) * (seq_len + 1)]).reshape(-1, seq_len + 1)
    return torch.from_numpy(rows[np.sort(rng.choice(len(rows), n_rows, replace=False))])


def storage(n_rows: int, seq_len: int, json_path: str | None) -> None:
    tokenizer = load_tokenizer("smollm2-135m")
    vocab = len(tokenizer)
    teacher = Teacher("smollm2-135m", vocab, "float32", "cpu")
    rows = corpus_rows(tokenizer, n_rows, seq_len)
    hidden = torch.cat([teacher.hidden(rows[i : i + 8, :-1]) for i in range(0, n_rows, 8)]).reshape(-1, 576)
    positions = hidden.shape[0]

    def teacher_logp(start: int, end: int) -> torch.Tensor:
        return torch.log_softmax(teacher.logits(hidden[start:end]).double(), dim=-1)

    print(f"SmolLM2-135M over {n_rows} rows of {seq_len} tokens of the bundled corpus ({positions} positions)")
    print(f"{'mode':<26} {'B/tok 49k':>9} {'B/tok 152k':>10} {'mass kept':>9} {'KL(P||P^)':>10} {'storage error':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (mode, k, p, dtype) in MODES.items():
            generator = torch.Generator().manual_seed(0)
            parts = []
            for s in range(0, positions, seq_len * 8):
                kept = keep(teacher_logp(s, s + seq_len * 8).float(), mode, k, p, generator)
                parts.append(kept)
            sizes = {}
            for v in (vocab, QWEN_VOCAB):
                layout = LogitsLayout(seq_len, k, v, 1.0, dtype, mode, p)
                shape = (-1, seq_len)
                tables = [
                    layout.table(
                        x.ids.reshape(*shape, k).numpy(),
                        x.logp.reshape(*shape, k).numpy(),
                        None if x.rest is None else x.rest.reshape(shape).numpy(),
                        None if x.counts is None else x.counts.reshape(shape).numpy(),
                    )
                    for x in parts
                ]
                folder = Path(tmp) / f"{mode}-{k}-{dtype}-{v}"
                sizes[v] = write_logits(folder / "shard-00000.arrow", layout, tables) / positions
            stored = TeacherLogitRows(folder).batch(np.arange(n_rows), "cpu")
            figures = _compare(stored, teacher_logp, positions, mode, torch.cat([x.logp for x in parts]))
            kl = f"{figures['kl']:.4f}" if figures["kl"] is not None else "estimate"
            print(
                f"{name:<26} {sizes[vocab]:>9.1f} {sizes[QWEN_VOCAB]:>10.1f} {figures['mass']:>9.3f} {kl:>10} "
                f"{figures['error']:>14.2e}",
                flush=True,
            )
            if json_path:
                with open(json_path, "a") as f:
                    record = {"bench": "kd-storage", "mode": name, "bytes_per_token_49k": sizes[vocab]}
                    f.write(json.dumps(record | {"bytes_per_token_152k": sizes[QWEN_VOCAB], **figures}) + "\n")


def _compare(stored, teacher_logp, positions: int, mode: str, exact_logp: torch.Tensor) -> dict:
    """Mass kept, KL(P || P^) and the storage error, over all positions (a chunk of them at a time)."""
    mass, kl, error = 0.0, 0.0, 0.0
    valid = stored.valid if stored.valid is not None else torch.ones_like(stored.ids, dtype=torch.bool)
    for s in range(0, positions, 512):
        lp = teacher_logp(s, s + 512)
        ids, got, ok = stored.ids[s : s + 512], stored.logp[s : s + 512].double(), valid[s : s + 512]
        # by index where a slot is in use: top-p's unused slots repeat a kept id, and a scatter of
        # them would overwrite that id's entry
        where = (torch.arange(len(ids))[:, None].expand_as(ids)[ok], ids[ok])
        distinct = torch.zeros_like(lp, dtype=torch.bool).index_put_(where, torch.tensor(True))
        mass += float((lp.exp() * distinct).sum())
        want = exact_logp[s : s + 512].double()
        if mode == "sampled":
            error += float((got - want).abs()[ok].sum() / ids.shape[1])
            continue
        rest = stored.rest[s : s + 512].double()
        others = lp.shape[1] - ok.sum(1)
        rebuilt = (rest - others.double().log())[:, None].expand_as(lp).clone()
        rebuilt.index_put_(where, got[ok])
        kl += float((lp.exp() * (lp - rebuilt)).sum())
        exact = torch.cat(
            [want.masked_fill(~ok, -torch.inf), lp.masked_fill(distinct, -torch.inf).logsumexp(1, True)], 1
        )
        stored_k1 = torch.cat([got.masked_fill(~ok, -torch.inf), rest[:, None]], 1)
        error += float(torch.where(exact > -torch.inf, exact.exp() * (exact - stored_k1), 0).sum())
    return {
        "mass": mass / positions,
        "kl": None if mode == "sampled" else kl / positions,
        "error": error / positions,
    }
