"""The teacher's log-probabilities from a server (`score.teacher_server`), beside an in-process reference.

Each window is one completions request with `echo` and `logprobs`: the prompt is the window's
inputs and its last target, as token ids, and the answer's `token_logprobs` holds one entry per
prompt token, the first null (the OpenAI layout; vLLM and SGLang follow it), so it carries exactly
the log-probs the in-process scorer computes for that window. A server that takes only text, or
answers in another layout, is refused before any shard: llama-cpp-python's server takes only text,
drops a leading BOS from the echo and nulls the next token's entry, and without a BOS shifts every
entry by one position, so its numbers cannot be placed.

All of a shard's windows are sent from a background thread, `max_concurrency` at a time, in the
order of the batch plan, while the reference scores the batches in-process; each batch then waits
for its windows. Answers are journaled (server/journal.py): after a restart only the windows not
yet answered are sent.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from miniplm.schema.server import ServerConfig
from miniplm.scoring.windows import Window
from miniplm.server.client import Failed, ServerClient, ServerError
from miniplm.server.journal import RequestJournal


class ServedTeacher:
    def __init__(self, cfg: ServerConfig, prefix: int):
        self.cfg, self.prefix = cfg, prefix
        self.client = ServerClient(cfg)

    def describe(self) -> str:
        return f"teacher: {self.client.describe()}"

    def prompt(self, w: Window, sequences: Sequence[np.ndarray]) -> list[int]:
        """The window's inputs and its last target: [prefix] + tokens, positions start .. end."""
        seq = sequences[w.doc]
        head = [self.prefix] if w.start == 0 else []
        return head + seq[max(w.start - 1, 0) : w.end].tolist()

    def body(self, tokens: list[int]) -> dict[str, Any]:
        # max_tokens 1: servers differ on 0; the one token written is ignored
        body = {"prompt": tokens, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 0}
        return body | ({"extra_body": self.cfg.extra_body} if self.cfg.extra_body else {})

    def prompt_logprobs(self, completion: Any, want: int) -> list[float]:
        """The log-probs of prompt tokens 1 .. want - 1, checked to be in the OpenAI layout."""
        url = self.cfg.url
        logprobs = completion.choices[0].logprobs
        values = None if logprobs is None else logprobs.token_logprobs
        if values is None:
            raise ServerError(f"{url}: no prompt log-probs in the answer: the server must support echo with logprobs")
        written = completion.usage.completion_tokens if completion.usage is not None else 1
        if len(values) != want + written or values[0] is not None or any(v is None for v in values[1:want]):
            raise ServerError(
                f"{url}: the echoed log-probs are not one per prompt token ({len(values)} entries for a "
                f"prompt of {want} and {written} written): they cannot be placed on the tokens"
            )
        return [float(v) for v in values[1:want]]

    def check(self) -> None:
        """Before any shard: the server is reachable, serves the model, and scores token ids in the
        OpenAI layout (a three-token probe)."""
        self.client.check()
        needs = (
            "scoring sends prompts of token ids and reads their log-probs from the echo (vLLM and SGLang do; "
            "llama-cpp-python's server takes only text)"
        )
        answer = self.client.complete(self.body([self.prefix] * 3))
        if isinstance(answer, Failed):
            raise ServerError(f"{self.cfg.url} failed a three-token probe: {needs}. The answer: {answer.reason}")
        self.prompt_logprobs(answer, 3)

    def start(self, folder: Path, windows: Sequence[Window], sequences: Sequence[np.ndarray]) -> "_Pending":
        """Send every window the journal in `folder` lacks, in the background; `windows` in plan order."""
        return _Pending(self, folder, windows, sequences)


class _Pending:
    """A shard's windows on their way to the server; `take(batch)` waits for a batch's log-probs."""

    def __init__(self, teacher: ServedTeacher, folder: Path, windows: Sequence[Window], sequences):
        self.teacher, self.by_key = teacher, {(w.doc, w.start): w for w in windows}
        self.journal = RequestJournal(folder, teacher.client.describe())
        self.answers: dict = {key: e for key, e in self.journal.done.items() if not e.get("again")}
        self.error: BaseException | None = None
        self.ready, self.stopped = threading.Condition(), threading.Event()
        todo = (
            (key, teacher.body(teacher.prompt(w, sequences)))
            for key, w in self.by_key.items()
            if key not in self.answers and not self.stopped.is_set()
        )
        self.thread = threading.Thread(target=self._send, args=(todo,), name="teacher-server", daemon=True)
        self.thread.start()

    def _parse(self, key: Any, completion: Any) -> dict:
        """The scored tokens' log-probs of one window (those its `skip` leaves out are dropped)."""
        w = self.by_key[tuple(key)]
        return {"logprobs": self.teacher.prompt_logprobs(completion, w.length + 1)[w.skip :]}  # inputs + last target

    def _send(self, todo: Iterator) -> None:
        try:
            for key, entry in self.teacher.client.run(todo, self._parse, self.journal):
                with self.ready:
                    self.answers[key] = entry
                    self.ready.notify_all()
        except BaseException as e:  # noqa: BLE001 - handed to the thread waiting in take()
            with self.ready:
                self.error = e
                self.ready.notify_all()
        finally:
            self.journal.close()

    def take(self, batch: Sequence[Window]) -> tuple[torch.Tensor, ...]:
        keys = [(w.doc, w.start) for w in batch]
        with self.ready:
            self.ready.wait_for(lambda: self.error is not None or all(k in self.answers for k in keys))
            if self.error is not None and not all(k in self.answers for k in keys):
                raise self.error
        failed = next((self.answers[k] for k in keys if "failed" in self.answers[k]), None)
        if failed is not None:  # every window needs its score
            url, reason = self.teacher.cfg.url, failed["failed"]
            if failed.get("again"):
                raise ServerError(f"{url}: a window failed after its retries ({reason}); run the stage again")
            raise ServerError(f"{url} refused a window ({reason}); lower score.max_length?")
        return tuple(torch.tensor(self.answers[k]["logprobs"], dtype=torch.float64) for k in keys)

    def close(self) -> None:
        """Send nothing more, and wait for the requests in flight (their answers are journaled)."""
        self.stopped.set()
        self.thread.join()
