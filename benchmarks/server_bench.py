"""Generation through a teacher behind a server: requests/s and tokens/s at several concurrencies.

Starts llama-cpp-python's OpenAI-compatible server on the bundled SmolLM2-135M GGUF (on this
machine's CPU, `--n_threads` as given), then runs `miniplm generate` with `backend: server` over the
same prompts (the first characters of the bundled corpus's documents) at each `max_concurrency`;
the in-process `hf` backend on the same prompts is the row to compare with. Each run starts from an
empty run directory; time is the stage's, the server's start not included.

    python benchmarks/server_bench.py --prompts 48 --new-tokens 32 --concurrency 1 4 16
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import miniplm.stages  # noqa: E402, F401  (the registry)
from miniplm.generation import generate  # noqa: E402
from miniplm.job import load_job  # noqa: E402
from miniplm.models.loading import SMOLLM2  # noqa: E402
from tests.server.local_server import KEY, KEY_ENV, MODEL, LlamaServer  # noqa: E402

NEUTRAL = {"top_k": 0, "min_p": 0, "repeat_penalty": 1.0}  # llama-cpp-python's sampler defaults off


def prompts(n: int) -> list[str]:
    texts = pl.concat([pl.read_parquet(p) for p in sorted((REPO / "data" / "sample").glob("*.parquet"))])["text"]
    return [" ".join(t.split())[:160] for t in texts.head(n).to_list()]


def run(folder: Path, name: str, texts: list[str], new_tokens: int, server: dict | None) -> dict:
    prompt_file = folder / "prompts.jsonl"
    if not prompt_file.exists():
        prompt_file.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    entry = {"name": "bench", "prompts": {"path": str(prompt_file)}, "max_new_tokens": new_tokens, "temperature": 1.0}
    entry |= {"backend": "server", "server": server} if server else {"backend": "hf"}
    job_file = folder / f"{name}.yaml"
    job_file.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(folder / name),
                "seed": 0,
                "corpus": {"inputs": [{"path": str(prompt_file), "format": "jsonl"}]},
                "teacher": {"model": SMOLLM2},
                "generate": [entry],
            }
        )
    )
    job = load_job(job_file)
    started = time.perf_counter()
    counts = generate.STAGE.run(job, show_progress=False)["generate/bench"]
    seconds = time.perf_counter() - started
    requests = counts["rows"] + sum(counts.get("requests_failed", {}).values())
    return {"seconds": seconds, "requests": requests, "new_tokens": counts["new_tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=2, help="the server's --n_threads")
    parser.add_argument(
        "--server-options", default="", help='more llama_cpp.server options: --server-options="--logits_all False"'
    )
    args = parser.parse_args()
    texts = prompts(args.prompts)
    os.environ[KEY_ENV] = KEY
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = LlamaServer(folder / "server.log", None, KEY, args.threads, *shlex.split(args.server_options)).start()
        try:
            for c in args.concurrency:
                settings = {"url": server.url, "model": MODEL, "api_key_env": KEY_ENV, "prompt": "text"}
                settings |= {"extra_body": NEUTRAL, "max_concurrency": c}
                rows.append((f"server, max_concurrency {c}", run(folder, f"c{c}", texts, args.new_tokens, settings)))
        finally:
            server.stop()
        rows.append(("in-process hf backend", run(folder, "hf", texts, args.new_tokens, None)))
    print(f"{args.prompts} prompts, up to {args.new_tokens} new tokens each, temperature 1; --n_threads {args.threads}")
    print("| backend | requests | seconds | requests/s | new tokens | new tokens/s |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['requests']} | {r['seconds']:.1f} | {r['requests'] / r['seconds']:.2f} | "
            f"{r['new_tokens']:,} | {r['new_tokens'] / r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
