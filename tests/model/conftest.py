"""The model tests' shared fixture: a tiny trained tokenizer (plain helpers are in model_testing.py)."""

from __future__ import annotations

import pytest

from lmstack.tokenizer import Tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "Grüße aus Köln — naïve café, 東京, emoji 🙂 and tabs\tand  double  spaces.",
    "Numbers 12345 and 3.14159, URLs like https://example.com/path?q=1.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=400, show_progress=False)
