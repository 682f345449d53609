"""Requests to an OpenAI-compatible completions endpoint, many in flight, each answer journaled.

The `openai` client does the HTTP: timeouts, and retries with exponential backoff (honouring
Retry-After) on dropped connections, timeouts, 408, 409, 429 and 5xx. What it gives up on:
- one request refused outright (400, 413, 422: a prompt too long for the server's context, say):
  journaled as failed, with the reason, for good;
- one request still failing after its retries: journaled as failed with the last status, to be sent
  again by the next run, while the others go on (one bad request does not hold up a shard);
- the server unusable: the key or the model refused, or FAILING_IN_A_ROW requests failing after
  their retries with none answered between: a ServerError naming the URL and the last status stops
  the stage; what was answered stays in the journal, so the rerun sends only the rest.

The API key is read from the environment variable the job names, and never printed.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator

from miniplm.errors import ConfigError, StageError
from miniplm.schema.server import ServerConfig
from miniplm.server.journal import RequestJournal

NO_KEY = "none"  # what the client sends where the server needs no key (it insists on one)
REJECTED = (400, 413, 422)  # one request the server will never take; the others may go on
FAILING_IN_A_ROW = 3  # requests failing after their retries, none answered between: the server is down


class ServerError(StageError):
    """The server cannot serve this run; the message names the URL and what it last answered."""


def _api_key(cfg: ServerConfig) -> str:
    if cfg.api_key_env is None:
        return NO_KEY
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise ConfigError(f"server.api_key_env: the environment variable {cfg.api_key_env} is not set (or empty)")
    return key


def _short(text: Any, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _said(e: Any, limit: int = 300) -> str:
    """What the server said with an error status: its message, not the client's wrapping of the body."""
    body = e.body
    if isinstance(body, dict):
        return _short(body.get("message") or body.get("detail") or body, limit)
    return _short(body or e.message, limit)


class ServerClient:
    def __init__(self, cfg: ServerConfig):
        from openai import OpenAI

        self.cfg = cfg
        self.client = OpenAI(base_url=cfg.url, api_key=_api_key(cfg), max_retries=cfg.retries, timeout=cfg.timeout_s)

    def describe(self) -> str:
        """What decides the server's answers besides the prompts and settings (not its address)."""
        return f"server model {self.cfg.model!r}, prompts as {self.cfg.prompt}"

    def _failure(self, e: Exception) -> ServerError:
        """The error that stops the stage, for an exception the client gave up on."""
        import openai

        url, tries = self.cfg.url, f"after {self.cfg.retries} retries"
        if isinstance(e, openai.AuthenticationError | openai.PermissionDeniedError):
            held = f"the key in ${self.cfg.api_key_env}" if self.cfg.api_key_env else "no key (set server.api_key_env)"
            return ServerError(f"{url}: the server refused {held} (status {e.status_code})")
        if isinstance(e, openai.NotFoundError):
            return ServerError(
                f"{url}: status 404 ({_said(e)}): is server.model ({self.cfg.model!r}) served there, "
                "and is the URL the API's base (ending in /v1)?"
            )
        if isinstance(e, openai.APIStatusError):
            return ServerError(f"{url}: last status {e.status_code} {tries}: {_said(e)}")
        if isinstance(e, openai.APITimeoutError):
            return ServerError(f"{url}: no answer within timeout_s ({self.cfg.timeout_s:g} s) {tries}")
        return ServerError(f"{url}: cannot reach the server {tries}: {_short(e)}")

    def check(self) -> None:
        """Before any work: the server answers, takes the key, and serves the model the job names."""
        import openai

        try:
            served = [m.id for m in self.client.models.list().data]
        except openai.OpenAIError as e:
            raise self._failure(e) from None
        if self.cfg.model not in served:
            raise ServerError(
                f"{self.cfg.url} serves {', '.join(map(repr, served)) or 'no model'}, "
                f"not {self.cfg.model!r} (server.model)"
            )

    def complete(self, body: dict[str, Any]):
        """One completion (the openai client retries what can be retried), or a Failed answer; a
        ServerError when the key or the model is refused."""
        import openai

        try:
            return self.client.completions.create(model=self.cfg.model, **body)
        except openai.APIStatusError as e:
            if e.status_code in REJECTED:
                return Failed(f"status {e.status_code}: {_said(e, 200)}", final=True)
            failure = self._failure(e)
            if e.status_code in (401, 403, 404):
                raise failure from None
            return Failed(str(failure), final=False)
        except openai.OpenAIError as e:
            return Failed(str(self._failure(e)), final=False)

    def run(
        self,
        requests: Iterable[tuple[Any, dict[str, Any]]],
        parse: Callable[[Any, Any], dict],
        journal: RequestJournal,
    ) -> Iterator[tuple[Any, dict]]:
        """Send (key, body) requests, at most max_concurrency at once; as each is answered, journal
        `parse(key, completion)`, or `{"failed": reason}` (with `"again": true` where the next run should
        send it again), under its key and yield (key, entry). On a ServerError, the requests answered
        meanwhile are journaled before it is raised."""
        todo = iter(requests)
        with ThreadPoolExecutor(self.cfg.max_concurrency, thread_name_prefix="server") as pool:
            running: dict[Future, Any] = {}

            def fill() -> None:
                while len(running) < self.cfg.max_concurrency:
                    nxt = next(todo, None)
                    if nxt is None:
                        return
                    running[pool.submit(self.complete, nxt[1])] = nxt[0]

            error: BaseException | None = None
            in_a_row = 0
            fill()
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    key = running.pop(f)
                    try:
                        answer = f.result()
                        if isinstance(answer, Failed):
                            entry = {"failed": answer.reason} | ({} if answer.final else {"again": True})
                            in_a_row = 0 if answer.final else in_a_row + 1
                            if in_a_row >= FAILING_IN_A_ROW:
                                error = error or ServerError(answer.reason)
                        else:
                            entry, in_a_row = parse(key, answer), 0
                    except BaseException as e:  # noqa: BLE001 - journal what the others answered, then raise
                        error = error or e
                        continue
                    journal.add(key, entry)
                    yield key, entry
                if error is None:
                    fill()
            if error is not None:
                raise error


class Failed:
    """A request the server did not answer: refused for good (`final`), or failing after its retries."""

    def __init__(self, reason: str, final: bool):
        self.reason, self.final = reason, final


def unanswered(entries: dict, url: str, what: str) -> None:
    """Raise when requests failed after their retries: the shard is not done until they are answered,
    and the rerun sends only them."""
    again = [(key, e["failed"]) for key, e in entries.items() if e.get("again")]
    if again:
        named = ", ".join(map(str, [k for k, _ in again][:5])) + (", ..." if len(again) > 5 else "")
        raise ServerError(
            f"{url}: {len(again)} {what} failed after their retries ({named}); the last: {again[-1][1]}. "
            "Run the stage again to send them again"
        )
