"""The harness against our own server (`lmstack serve` subprocess): loglikelihood over HTTP
(completions + echo + logprobs) equals the in-process engine's, and concurrency does not change
greedy results."""

import sys
from pathlib import Path

import pytest

from lmstack.agent.engine_client import EngineClient
from lmstack.evals.clients import make_client
from lmstack.evals.completions import prompt_logprobs
from lmstack.evals.model import CachedModel
from lmstack.evals.runner import run_eval
from lmstack.evals.sample import Sample
from lmstack.evals.scorers import choice, includes
from lmstack.evals.solvers import generate, multiple_choice
from lmstack.evals.store import Store
from lmstack.evals.task import Task, TaskConfig
from lmstack.infer.engine import Engine, EngineConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "serve"))
from serve_helpers import make_checkpoint, running_server  # noqa: E402  (the server tests' own helpers)

QUESTIONS = [("the cat sat on the", ["mat", "dog", "blue"], 0), ("hello", ["world", "cat"], 0),
             ("one two", ["three", "red", "yes no"], 0), ("the dog ran", ["home", "on the mat"], 1)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    checkpoint = make_checkpoint(tmp_path_factory.mktemp("served") / "tiny")
    with running_server(checkpoint) as (base, _):
        yield checkpoint, f"{base}/v1"


@pytest.fixture(scope="module")
def local(served):
    """The served checkpoint in process, in fp32: the reference for the HTTP path."""
    checkpoint, _ = served
    return EngineClient(Engine.from_checkpoint(checkpoint, EngineConfig(dtype="float32")), checkpoint=str(checkpoint))


def test_multiple_choice_over_http_equals_in_process(served, local, tmp_path):
    _, url = served
    store = Store(tmp_path / "db.sqlite")
    dataset = [Sample(id=f"q{i}", input=q, choices=c, target=t) for i, (q, c, t) in enumerate(QUESTIONS)]
    task = Task(dataset=dataset, solver=multiple_choice(template="{question}"), scorer=choice(), name="mc")
    picks = {}
    for name, client in (("http", make_client(url)), ("local", local)):
        outcome = run_eval(task, CachedModel(client, store), store, progress=False)
        picks[name] = {r.sample_id: r.sample["metadata"]["solver"]["choice_logprobs"] for r in store.samples(outcome.run_id)}
    for sample_id, logprobs in picks["local"].items():
        assert picks["http"][sample_id] == pytest.approx(logprobs, abs=1e-4)


def test_greedy_results_do_not_depend_on_concurrency(served, tmp_path):
    _, url = served
    samples = [Sample(id=f"s{i}", input=f"the {w} sat on the", target="mat")
               for i, w in enumerate(["cat", "dog", "red", "blue", "one", "two", "yes", "no"])]
    task = Task(dataset=samples, solver=generate(), scorer=includes(), name="greedy",
                config=TaskConfig(max_tokens=12, temperature=0.0))
    outputs = {}
    for concurrency in (1, 8):
        store = Store(tmp_path / f"c{concurrency}.sqlite")
        outcome = run_eval(task, CachedModel(make_client(url), store, max_concurrency=concurrency, use_cache=False),
                           store, max_workers=concurrency, progress=False)
        assert outcome.summary["errors"] == 0
        outputs[concurrency] = ({r.sample_id: r.output for r in store.samples(outcome.run_id)},
                                outcome.summary["scores"])
    diff = {k: (v, outputs[8][0][k]) for k, v in outputs[1][0].items() if outputs[8][0][k] != v}
    assert outputs[1] == outputs[8], diff


def test_prompt_logprobs_over_http_equal_the_in_process_ones(served, local):
    """Every scored prompt token, with its offset, through completions + echo + logprobs: the bos our server
    echoes at offset 0 (no logprob, no text) must not appear as a scored token."""
    _, url = served
    text = "the cat sat on the mat. naïve café"
    over_http, in_process = prompt_logprobs(make_client(url), text), prompt_logprobs(local, text)
    assert [t.offset for t in over_http] == [t.offset for t in in_process]
    assert [t.logprob for t in over_http] == pytest.approx([t.logprob for t in in_process], abs=1e-4)
    assert all(t.logprob is not None for t in over_http)
