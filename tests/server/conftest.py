import pytest

from tests.server.local_server import KEY, KEY_ENV, LlamaServer


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """One llama.cpp server for the tests that only read from it (started once: about 2 s)."""
    server = LlamaServer(tmp_path_factory.mktemp("llama-server") / "server.log").start()
    yield server
    server.stop()


@pytest.fixture
def server_key(monkeypatch):
    """The key the test servers take, in the environment variable the job names."""
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY
