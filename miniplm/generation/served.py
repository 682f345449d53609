"""Generation by a teacher behind an OpenAI-compatible server (`backend: server`).

One completion request per (prompt, sample), seeded with
`prompt_seed(seed, name, prompt_id) + sample` so an answer depends on nothing else in flight
(vLLM and llama.cpp honour a request's seed). Requests run `server.max_concurrency` at a time;
each answer is journaled as it arrives (server/journal.py), so a worker killed mid-shard, or a
server that went away and came back, costs only the requests that had not finished. Token counts
are the server's own (its `usage`); a request the server refuses is kept as failed, by reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from miniplm.draws import derived_seed
from miniplm.generation.prompts import PromptShard, context_length, new_token_limit
from miniplm.rundir import shard_name
from miniplm.schema.generate import GenerateConfig
from miniplm.server.client import ServerClient, ServerError, unanswered
from miniplm.server.journal import RequestJournal

if TYPE_CHECKING:
    from miniplm.progress import TokenRate
    from miniplm.stage import StageRun

FINISH = {"stop": "eos", "length": "length"}


class ServerBackend:
    name = "server"

    def __init__(self, entry: GenerateConfig, tokenizer: Any, config: Any):
        assert entry.server is not None
        self.entry, self.tokenizer, self.config = entry, tokenizer, config
        self.client = ServerClient(entry.server)

    def environment(self) -> str:
        return self.client.describe()

    def body(self, prompt: list[int], seed: int) -> dict[str, Any]:
        """The request for one continuation of `prompt` (token ids, the prefix token included)."""
        e = self.entry
        assert e.server is not None
        body: dict[str, Any] = {
            "prompt": prompt if e.server.prompt == "tokens" else self.tokenizer.decode(prompt),
            "max_tokens": new_token_limit(e.max_new_tokens, context_length(self.config), len(prompt)),
            "temperature": e.temperature,
            "top_p": e.top_p,
            "seed": seed,
            "n": 1,
        }
        # top_k is not in OpenAI's API; vLLM, SGLang and llama.cpp take it
        extra = e.server.extra_body | ({"top_k": e.top_k} if e.top_k else {})
        return body | ({"extra_body": extra} if extra else {})

    def parse(self, key: Any, completion: Any) -> dict:
        """A journal entry: the continuation's text, why it stopped, and the server's token counts."""
        choice, usage = completion.choices[0], completion.usage
        if usage is None:
            raise ServerError(f"{self.entry.server.url}: the answer has no usage (token counts)")
        return {
            "text": choice.text,
            "finish": FINISH.get(choice.finish_reason, "length"),
            "new_tokens": usage.completion_tokens,
            "server_prompt_tokens": usage.prompt_tokens,
        }


def sample_seed(seed: int, name: str, prompt_id: str, sample: int) -> int:
    """The seed of one request: sample k of a prompt."""
    return derived_seed(seed, name, prompt_id, sample)


def generate_shard(run: StageRun, backend: ServerBackend, shard: PromptShard, progress: TokenRate) -> dict:
    """Every (prompt, sample) of the shard, answered: {(i, k): journal entry}."""
    entry: GenerateConfig = run.part.item
    prefix = run.context.prefix
    folder = run.rd.work(run.name) / shard_name(shard.index, "") / "requests"
    with RequestJournal(folder, backend.environment()) as journal:
        results: dict = {key: e for key, e in journal.done.items() if not e.get("again")}
        left = {i: entry.samples for i in range(len(shard.tokens))}
        for i, _ in results:
            left[i] -= 1
        progress.update(sum(n == 0 for n in left.values()))
        todo = (
            ((i, k), backend.body([prefix, *shard.tokens[i]], sample_seed(run.job.seed, entry.name, shard.ids[i], k)))
            for i in range(len(shard.tokens))
            for k in range(entry.samples)
            if (i, k) not in results
        )
        for (i, k), answer in backend.client.run(todo, backend.parse, journal):
            results[(i, k)] = answer
            left[i] -= 1
            progress.update(int(left[i] == 0), answer.get("new_tokens", 0))
    named = {f"prompt {shard.ids[i]} sample {k}": e for (i, k), e in results.items()}
    unanswered(named, entry.server.url, "requests")
    return results
