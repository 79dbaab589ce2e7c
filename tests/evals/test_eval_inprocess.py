"""Loglikelihood multiple choice and bits-per-byte on a real checkpoint, in-process on the engine,
against the model's own cross-entropy as the reference."""

import math

import pytest
import torch

from lmstack.evals.clients import make_client
from lmstack.evals.model import CachedModel
from lmstack.evals.runner import run_eval
from lmstack.evals.sample import Sample, TaskState
from lmstack.evals.scorers import bpb, choice
from lmstack.evals.solvers import bits_per_byte, multiple_choice
from lmstack.evals.store import Store
from lmstack.evals.task import Task
from lmstack.model.checkpoint import load_model_dir, save_model_dir
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.tokenizer import Tokenizer

TEXTS = ["The sky is blue. The grass is green. The sun is bright. " * 4, "def f(x):\n    return x + 1\n" * 4]
QUESTIONS = [("The sky is", ["blue", "green", "bright"], 0), ("The grass is", ["blue", "green"], 1),
             ("def f(x):\n   ", ["return x + 1", "sky"], 0)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = Tokenizer.train(TEXTS * 4, vocab_size=300, show_progress=False, min_frequency=1)
    model = build_model(ModelConfig(arch="gpt2", vocab_size=320, block_size=128, n_layer=2, n_head=4, n_embd=64), seed=0)
    return save_model_dir(tmp_path_factory.mktemp("ckpt") / "tiny", model, tokenizer)


def reference_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | bos + context) from the model's summed cross-entropy."""
    context_ids = [tokenizer.bos_id, *tokenizer.encode(context)]
    ids = [tokenizer.bos_id, *tokenizer.encode(context + continuation)]
    assert ids[:len(context_ids)] == context_ids  # the continuation starts on a token boundary
    idx = torch.tensor([ids])
    targets = idx[:, 1:].clone()
    targets[:, :len(context_ids) - 1] = -1
    with torch.no_grad():
        _, loss = model(idx[:, :-1], targets, loss_reduction="sum")
    return -loss.item()


def test_multiple_choice_and_bpb_match_the_models_cross_entropy(checkpoint, tmp_path):
    store = Store(tmp_path / "db.sqlite")
    client = make_client(str(checkpoint))
    model = CachedModel(client, store)
    reference_model, tokenizer, _ = load_model_dir(checkpoint, dtype=torch.float32)  # independent fp32 copy
    dataset = [Sample(id=f"q{i}", input=q, choices=c, target=t) for i, (q, c, t) in enumerate(QUESTIONS)]
    mc = run_eval(Task(dataset=dataset, solver=multiple_choice(template="{question}"), scorer=choice(), name="mc"),
                  model, store, progress=False)
    expected_correct = 0
    for record, (question, choices, target) in zip(sorted(store.samples(mc.run_id), key=lambda r: r.sample_id),
                                                   QUESTIONS):
        reference = [reference_logprob(reference_model, tokenizer, question, " " + c) for c in choices]
        got = record.sample["metadata"]["solver"]["choice_logprobs"]
        assert got == pytest.approx(reference, rel=1e-2)  # the engine runs in bf16 where the CPU has it
        expected_correct += max(range(len(choices)), key=reference.__getitem__) == target
    assert mc.summary["scores"]["choice"]["mean"]["mean"] == pytest.approx(expected_correct / len(QUESTIONS))

    text = "The sun is green. def f(x): return x"
    out = run_eval(Task(dataset=[Sample(id="t", input=text)], solver=bits_per_byte(), scorer=bpb(), name="bpb"),
                   model, store, progress=False)
    bits = -reference_logprob(reference_model, tokenizer, "", text) / math.log(2)
    assert out.summary["scores"]["bpb"]["mean"]["mean"] == pytest.approx(bits / len(text.encode()), rel=1e-2)
    assert out.summary["higher_is_better"] == {"bpb": False}


def test_a_sample_model_passes_the_engines_context_and_token_count_to_agent_runs(checkpoint, tmp_path):
    """The agent runtime fits its conversation to `context_tokens` with `count_tokens` when its client has them;
    inside an eval its client is the per-sample wrapper, which must pass the engine's through."""
    store = Store(tmp_path / "db.sqlite")
    state = TaskState(Sample(id="s", input="hi"), epoch=0, seed=0)
    local = CachedModel(make_client(str(checkpoint)), store).for_sample(state)
    _, tokenizer, config = load_model_dir(checkpoint)
    assert getattr(local, "context_tokens", 8192) == config["model"]["block_size"] == 128
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The sky is"}]
    assert local.count_tokens(messages) == len(tokenizer.render(messages, add_generation_prompt=True).ids)
    remote = CachedModel(make_client("http://127.0.0.1:9/v1", model_name="m"), store).for_sample(state)
    assert getattr(remote, "context_tokens", 8192) == 8192  # an HTTP API does not say: the runtime's setting
    assert getattr(remote, "count_tokens", None) is None
