"""A task that sets no max_tokens sends none (as Inspect does): on a model whose context is small, a fixed default
(256 before) made every request a 400. `lmstack serve`, like vLLM, then gives the reply what the context leaves;
in-process the engine bounds it by the context; a max_tokens the task or CLI sets is still sent."""

import sys
from pathlib import Path

import httpx
import pytest

from lmstack.evals.clients import make_client
from lmstack.evals.model import CachedModel
from lmstack.evals.runner import run_eval
from lmstack.evals.sample import Sample
from lmstack.evals.scorers import includes
from lmstack.evals.solvers import chat
from lmstack.evals.store import Store
from lmstack.evals.task import Task
from lmstack.infer.engine import Engine, EngineConfig
from lmstack.model.checkpoint import save_model_dir
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.serve.app import create_app
from lmstack.serve.config import ServeConfig
from lmstack.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "serve"))
from serve_helpers import corpus, in_process_server, wait_for  # noqa: E402  (the server tests' own helpers)

CONTEXT = 128  # less than the prompt + the old default of 256


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = Tokenizer.train(corpus(), vocab_size=300, show_progress=False, min_frequency=1)
    model = build_model(ModelConfig(arch="llama", vocab_size=320, block_size=CONTEXT, n_layer=1, n_head=2,
                                    n_embd=32), seed=0)
    return save_model_dir(tmp_path_factory.mktemp("small") / "small-context", model, tokenizer)


def one_word_task() -> Task:
    """The README's Python task: chat with a system prompt, no max_tokens."""
    dataset = [Sample(id="cat", input="the cat sat on the", target="mat"),
               Sample(id="hi", input="hello", target="world")]
    return Task(dataset=dataset, solver=chat(system="Answer in one word."), scorer=includes(), name="one_word")


def test_no_max_tokens_fits_a_small_context_served_and_in_process(checkpoint, tmp_path):
    store = Store(tmp_path / "db.sqlite")
    # `lmstack serve`'s app, served by uvicorn in this process: what bounds a reply by the context is the app's and its
    # engine's, and a `lmstack serve` subprocess took ~4 s to start.
    app = create_app(lambda: Engine.from_checkpoint(checkpoint, EngineConfig(dtype="float32")), ServeConfig(),
                     checkpoint.name)
    with in_process_server(app) as base:
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200)  # the model loads once the server is up
        served = make_client(f"{base}/v1")
        for client in (served, make_client(str(checkpoint))):
            outcome = run_eval(one_word_task(), CachedModel(client, store), store, progress=False)
            assert outcome.summary["errors"] == 0, store.first_error(outcome.run_id).error
            usages = [r.usage for r in store.samples(outcome.run_id)]
            assert all(u["prompt_tokens"] + u["completion_tokens"] <= CONTEXT for u in usages), usages
            assert max(u["completion_tokens"] for u in usages) > 2  # so the cap below is what limits that run

        capped = run_eval(one_word_task(), CachedModel(served, store), store, overrides={"max_tokens": 2},
                          progress=False)
        assert capped.summary["errors"] == 0
        assert all(r.usage["completion_tokens"] <= 2 for r in store.samples(capped.run_id))
        too_long = run_eval(one_word_task(), CachedModel(served, store), store, overrides={"max_tokens": CONTEXT},
                            progress=False)
        assert f"max_tokens={CONTEXT} does not fit the context of {CONTEXT} tokens" in \
            store.first_error(too_long.run_id).error
