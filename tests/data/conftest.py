"""Fixtures for the data tests: a small tokenizer and small corpora of distinct documents."""

import random
from pathlib import Path

import pytest

from lmstack.tokenizer import Tokenizer

WORDS = "alpha beta gamma delta tensor shard token window rank epoch loss batch model data café 数据 🙂".split()


def document_text(index: int) -> str:
    """A distinct, reproducible document (its number makes it unique)."""
    rng = random.Random(index)
    return f"document {index}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) + "\n"


@pytest.fixture(name="document_text", scope="session")
def document_text_fixture():
    return document_text


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.train([document_text(i) for i in range(200)], vocab_size=320, show_progress=False)


@pytest.fixture
def make_corpus(tmp_path):
    """make_corpus(n, start=0) -> a directory with one .txt file per document."""

    def make(count: int, start: int = 0, directory: Path | None = None) -> Path:
        directory = directory or tmp_path / "corpus"
        directory.mkdir(exist_ok=True)
        for index in range(start, start + count):
            (directory / f"doc_{index:04d}.txt").write_text(document_text(index), encoding="utf-8")
        return directory

    return make
