"""One `lmstack serve` subprocess (with an API key) shared by the server test modules."""

import openai
import pytest
from serve_helpers import API_KEY, make_checkpoint, running_server


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "tiny-chat")


@pytest.fixture(scope="session")
def server(checkpoint):
    with running_server(checkpoint, "--api-key", API_KEY) as (base, _proc):
        yield base


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def offline_engine(checkpoint):
    """The served checkpoint in an engine of this process: the reference for what the server returns."""
    from lmstack.infer.engine import Engine, EngineConfig

    return Engine.from_checkpoint(checkpoint, EngineConfig(dtype="float32"))


@pytest.fixture(scope="session")
def tokenizer(checkpoint):
    from lmstack.tokenizer import Tokenizer

    return Tokenizer.load(checkpoint)
