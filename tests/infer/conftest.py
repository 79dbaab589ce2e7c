"""Tiny random models and a tiny tokenizer for the inference tests (built in well under a second)."""

import pytest

from infer_helpers import TEXTS
from lmstack.tokenizer import Tokenizer


@pytest.fixture(params=["gpt2", "llama"])
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(TEXTS * 4, vocab_size=300, show_progress=False, min_frequency=1)
