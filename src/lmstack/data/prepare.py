"""`prepare`: a corpus -> out_dir/{train,val}_NNNNNN.bin token shards + meta.json + tokenizer.json.

Every document is `[bos] + encode(text)`, so documents are separated by bos in the token stream.
The split is by document: a document goes to val when the hash of its id falls below
`val_fraction`, so the split is stable when the corpus is re-read, re-ordered or grows. When that
leaves fewer than `min_val_docs` in val (small corpora), the train documents with the lowest hashes
are moved over, which is just as stable. The whole directory appears at once (atomic rename).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lmstack.atomic import atomic_directory
from lmstack.data.shards import token_dtype, write_shard
from lmstack.data.sources import SourceError, document_count, iter_documents
from lmstack.data.tokenize_parallel import tokenize_documents
from lmstack.errors import LmstackError
from lmstack.tokenizer import Tokenizer

META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_SHARD_TOKENS = 1 << 26  # 128 MiB of uint16 per shard: few files, each small enough to copy


class PrepareError(LmstackError):
    """Settings `prepare` cannot work with (bad fraction, output dir that isn't ours, no bos token)."""


@dataclass(slots=True)
class SplitStats:
    documents: int = 0
    tokens: int = 0
    shards: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PrepareResult:
    out_dir: Path
    train: SplitStats
    val: SplitStats


class ShardWriter:
    """Collects one split's token arrays and writes a shard each time `shard_tokens` are buffered."""

    def __init__(self, directory: Path, split: str, vocab_size: int, shard_tokens: int):
        self.directory, self.split = directory, split
        self.vocab_size, self.shard_tokens = vocab_size, shard_tokens
        self.stats = SplitStats()
        self.buffer: list[np.ndarray] = []
        self.buffered = 0

    def add(self, tokens: np.ndarray) -> None:
        self.buffer.append(tokens)
        self.buffered += tokens.size
        self.stats.documents += 1
        self.stats.tokens += tokens.size
        while self.buffered >= self.shard_tokens:
            stream = np.concatenate(self.buffer)
            self._write(stream[: self.shard_tokens])
            self.buffer = [stream[self.shard_tokens:]]
            self.buffered = self.buffer[0].size

    def close(self) -> SplitStats:
        if self.buffered:
            self._write(np.concatenate(self.buffer))
        self.buffer, self.buffered = [], 0
        return self.stats

    def _write(self, tokens: np.ndarray) -> None:
        name = f"{self.split}_{len(self.stats.shards):06d}.bin"
        write_shard(self.directory / name, tokens, self.vocab_size)
        self.stats.shards.append(name)


def val_score(doc_id: str) -> float:
    """A uniform number in [0, 1) fixed by the document's id (not by Python's salted hash())."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def prepare(source: str, out_dir: str | Path, tokenizer: Tokenizer, val_fraction: float = 0.05,
            min_val_docs: int = 2, shard_tokens: int = DEFAULT_SHARD_TOKENS, workers: int | None = None,
            text_field: str = "text", split: str = "train", limit: int | None = None,
            show_progress: bool = True) -> PrepareResult:
    out_dir = Path(out_dir)
    _check_settings(out_dir, tokenizer, val_fraction, min_val_docs, shard_tokens)
    workers = workers or os.cpu_count() or 1
    documents = iter_documents(source, text_field=text_field, split=split, limit=limit)
    total = document_count(source)
    total = min(total, limit) if total is not None and limit is not None else total or limit
    wants_val = val_fraction > 0 and min_val_docs > 0

    with atomic_directory(out_dir) as tmp:
        train = ShardWriter(tmp, "train", tokenizer.vocab_size, shard_tokens)
        val = ShardWriter(tmp, "val", tokenizer.vocab_size, shard_tokens)
        held: list[tuple[float, int, np.ndarray]] = []  # max-heap by score of the lowest-score train docs
        with tqdm(total=total, desc=f"prepare {source}", unit="doc", disable=not show_progress) as bar:
            for order, (doc, tokens) in enumerate(tokenize_documents(documents, tokenizer, workers)):
                score = val_score(doc.id)
                if score < val_fraction:
                    val.add(tokens)
                elif wants_val:
                    heapq.heappush(held, (-score, order, tokens))
                    if len(held) > min_val_docs:
                        train.add(heapq.heappop(held)[2])
                else:
                    train.add(tokens)
                bar.update(1)
                bar.set_postfix(tokens=f"{train.stats.tokens + val.stats.tokens:,}", refresh=False)
        _settle_held(sorted(held, key=lambda item: -item[0]), train, val, min_val_docs)
        result = PrepareResult(out_dir, train.close(), val.close())
        if result.train.documents == 0:
            raise SourceError(f"the corpus '{source}' has {result.val.documents} document(s), all of them in "
                              "val; add documents or lower --val-fraction (train needs at least one)")
        _write_meta(tmp, result, tokenizer, source=source, text_field=text_field, split=split,
                    val_fraction=val_fraction, min_val_docs=min_val_docs, shard_tokens=shard_tokens)
        tokenizer.hf.save(str(tmp / TOKENIZER_FILE))
    return result


def _settle_held(held: list[tuple[float, int, np.ndarray]], train: ShardWriter, val: ShardWriter,
                 min_val_docs: int) -> None:
    """Top val up to `min_val_docs` with the lowest-score held documents; the rest go to train.

    `held` is sorted lowest score first. One document always stays for train.
    """
    need = max(0, min(min_val_docs - val.stats.documents, len(held) - (train.stats.documents == 0)))
    for _, _, tokens in held[:need]:
        val.add(tokens)
    for _, _, tokens in sorted(held[need:], key=lambda item: item[1]):  # back in corpus order
        train.add(tokens)


def _check_settings(out_dir: Path, tokenizer: Tokenizer, val_fraction: float, min_val_docs: int,
                    shard_tokens: int) -> None:
    if not 0 <= val_fraction < 1:
        raise PrepareError(f"--val-fraction {val_fraction} is out of range; use a number in [0, 1), e.g. 0.05")
    if min_val_docs < 0 or shard_tokens < 1:
        raise PrepareError("min_val_docs must be >= 0 and shard_tokens >= 1")
    if tokenizer.bos_id is None:
        raise PrepareError("the tokenizer has no bos / end-of-text token to separate documents; "
                           "use a tokenizer trained by `lmstack tokenizer train`")
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / META_FILE).exists())):
        raise PrepareError(f"output '{out_dir}' exists and is not a data dir written by `lmstack prepare`; "
                           "choose a new --out (prepare replaces its output directory)")


def _write_meta(directory: Path, result: PrepareResult, tokenizer: Tokenizer, **settings) -> None:
    meta = {
        "format": "lmstack-shards",
        **settings,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "train": asdict(result.train),
        "val": asdict(result.val),
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
