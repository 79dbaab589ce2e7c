"""Fixtures for the post-training tests: a small chat tokenizer and tiny models (seconds, not minutes)."""

import json

import pytest
import torch

from lmstack.data.toolcalls import generate
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def chat_tokenizer() -> Tokenizer:
    texts = [json.dumps(s["messages"]) + json.dumps(s["tools"]) for s in generate(300, seed=1)]
    return Tokenizer.train(texts, vocab_size=512, show_progress=False)


def tiny_model(tokenizer: Tokenizer, arch: str = "llama", seed: int = 0, block_size: int = 256):
    cfg = ModelConfig(arch=arch, vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=2,
                      n_embd=32)
    torch.manual_seed(seed)
    return build_model(cfg, seed=seed)


@pytest.fixture
def make_model():
    return tiny_model
