"""`prepare`: a corpus -> out_dir/{train,val}_NNNNNN.bin token shards + meta.json + tokenizer.json.

Every document is `[bos] + encode(text)`, so documents are separated by bos in the token stream.
The split is by document: a document goes to val when the hash of its id falls below
`val_fraction`, so the split is stable when the corpus is re-read, re-ordered or grows. When that
leaves fewer than `min_val_docs` in val (small corpora), the train documents with the lowest hashes
are moved over; that too depends only on the set of ids, never on order or worker count.
The whole directory appears at once (atomic rename), so a failed run leaves no half of one.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lmstack.atomic import atomic_directory, refuse_to_replace
from lmstack.data.shards import token_dtype, write_shard
from lmstack.data.sources import SourceError, document_count, iter_documents
from lmstack.data.tokenize_parallel import tokenize_documents
from lmstack.errors import LmstackError
from lmstack.tokenizer import Tokenizer

META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_SHARD_TOKENS = 1 << 26  # 128 MiB of uint16 per shard: few files, each small enough to copy
SHARD_NAME = "{split}_{index:06d}.bin"
# All that a data dir prepare wrote holds, and so all that a re-run may replace (it replaces the dir whole).
PREPARED_FILE = re.compile(rf"(train|val)_\d{{6}}\.bin|{re.escape(META_FILE)}|{re.escape(TOKENIZER_FILE)}")


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
        name = SHARD_NAME.format(split=self.split, index=len(self.stats.shards))
        write_shard(self.directory / name, tokens, self.vocab_size)
        self.stats.shards.append(name)


def val_score(doc_id: str) -> float:
    """A uniform number in [0, 1) fixed by the document's id (not by Python's salted hash())."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class DocumentSplitter:
    """Routes each document to the train or val writer (see the module docstring for the rule)."""

    def __init__(self, train: ShardWriter, val: ShardWriter, val_fraction: float, min_val_docs: int):
        self.train, self.val = train, val
        self.val_fraction = val_fraction
        self.min_val_docs = min_val_docs if val_fraction > 0 else 0
        self.held: list[tuple[float, int, np.ndarray]] = []  # heap of (-score, order, tokens): lowest-score train docs
        self.seen = 0

    def add(self, doc_id: str, tokens: np.ndarray) -> None:
        score = val_score(doc_id)
        self.seen += 1
        if score < self.val_fraction:
            self.val.add(tokens)
        elif self.min_val_docs:
            heapq.heappush(self.held, (-score, self.seen, tokens))
            if len(self.held) > self.min_val_docs:
                self.train.add(heapq.heappop(self.held)[2])
        else:
            self.train.add(tokens)

    def finish(self) -> tuple[SplitStats, SplitStats]:
        """Top val up to `min_val_docs` with the lowest-score held documents (keeping one for train)."""
        held = sorted(self.held, key=lambda item: -item[0])  # lowest score first
        need = max(0, min(self.min_val_docs - self.val.stats.documents, len(held) - (self.train.stats.documents == 0)))
        for _, _, tokens in held[:need]:
            self.val.add(tokens)
        for _, _, tokens in sorted(held[need:], key=lambda item: item[1]):  # back in corpus order
            self.train.add(tokens)
        self.held = []
        return self.train.close(), self.val.close()

    @property
    def tokens(self) -> int:
        return self.train.stats.tokens + self.val.stats.tokens


def prepare(source: str, out_dir: str | Path, tokenizer: Tokenizer, val_fraction: float = 0.05,
            min_val_docs: int = 2, shard_tokens: int = DEFAULT_SHARD_TOKENS, workers: int | None = None,
            text_field: str = "text", split: str = "train", limit: int | None = None,
            show_progress: bool = True) -> PrepareResult:
    out_dir = Path(out_dir)
    _check_settings(out_dir, tokenizer, val_fraction, min_val_docs, shard_tokens, workers)
    documents = iter_documents(source, text_field=text_field, split=split, limit=limit)
    total = document_count(source)
    total = min(total, limit) if total is not None and limit is not None else total or limit

    with atomic_directory(out_dir) as tmp:
        splitter = DocumentSplitter(ShardWriter(tmp, "train", tokenizer.vocab_size, shard_tokens),
                                    ShardWriter(tmp, "val", tokenizer.vocab_size, shard_tokens),
                                    val_fraction, min_val_docs)
        with tqdm(total=total, desc=f"prepare {source}", unit="doc", disable=not show_progress) as bar:
            for doc, tokens in tokenize_documents(documents, tokenizer, workers or os.cpu_count() or 1):
                splitter.add(doc.id, tokens)
                bar.update(1)
                bar.set_postfix(tokens=f"{splitter.tokens:,}", refresh=False)
        result = PrepareResult(out_dir, *splitter.finish())
        if result.train.documents == 0:
            raise SourceError(f"the corpus '{source}' has {result.val.documents} document(s), all of them in "
                              "val; add documents or lower --val-fraction (train needs at least one)")
        _write_meta(tmp, result, tokenizer, source=source, text_field=text_field, split=split,
                    val_fraction=val_fraction, min_val_docs=min_val_docs, shard_tokens=shard_tokens)
        tokenizer.hf.save(str(tmp / TOKENIZER_FILE))
    return result


def _check_settings(out_dir: Path, tokenizer: Tokenizer, val_fraction: float, min_val_docs: int,
                    shard_tokens: int, workers: int | None) -> None:
    if not 0 <= val_fraction < 1:
        raise PrepareError(f"--val-fraction {val_fraction} is out of range; use a number in [0, 1), e.g. 0.05")
    if min_val_docs < 0:
        raise PrepareError(f"--min-val-docs {min_val_docs} is negative; use 0 or more (default 2)")
    if shard_tokens < 1:
        raise PrepareError(f"--shard-tokens {shard_tokens}: a shard holds at least 1 token; use a positive number "
                           "or leave it out")
    if workers is not None and workers < 1:
        raise PrepareError(f"--workers {workers}: use at least 1 tokenizer process, or leave it out for all cores")
    if tokenizer.bos_id is None:
        raise PrepareError("the tokenizer has no bos / end-of-text token to separate documents; "
                           "use a tokenizer trained by `lmstack tokenizer train`")
    if out_dir.exists() and not out_dir.is_dir() and not out_dir.is_symlink():
        raise PrepareError(f"output '{out_dir}' is a file; choose a new --out (prepare writes a directory)")
    # A data dir with the user's notes in it, or a run dir: a re-run would delete them with the dir.
    # Only prepare writes meta.json: without it, files of those names (a `tokenizer train` output's tokenizer.json)
    # are another tool's.
    refuse_to_replace(out_dir, PREPARED_FILE.fullmatch, "prepare", PrepareError, marker=META_FILE)


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


def empty_val_split(documents: int, val_fraction: float, min_val_docs: int) -> str:
    """Why a corpus of `documents` prepared with these settings has an empty val split, and what to change: for
    prepare's own warning, and for `lmstack train`'s refusal of such a dir (re-running prepare as it was gives the
    same split, since the split depends only on the documents' ids)."""
    if documents < 2:  # train keeps one document (see DocumentSplitter.finish), so val needs a second
        fix = "add documents to the corpus"
    elif val_fraction == 0:
        fix = "use a --val-fraction above 0"
    else:  # with --min-val-docs 1 or more, val would have had documents
        fix = "raise --min-val-docs above 0"
    return (f"the val split is empty ({documents} document(s) in all), and `lmstack train`, which evaluates on it, "
            f"refuses such a dir: {fix} and run `lmstack prepare` again")


def prepared_without_val(data_dir: str | Path) -> str | None:
    """`empty_val_split` for a data dir whose meta.json says `prepare` wrote no val documents; None for any other
    dir (no meta.json, or val shards that were there and are gone)."""
    try:
        meta = json.loads((Path(data_dir) / META_FILE).read_text())
        if meta["val"]["documents"]:
            return None
        return empty_val_split(meta["train"]["documents"], meta["val_fraction"], meta["min_val_docs"])
    except (OSError, ValueError, KeyError, TypeError):  # not a meta.json as prepare writes it: no advice from it
        return None


def data_vocab_size(data_dir: str | Path) -> int | None:
    """The vocab size the shards were written with (meta.json), or None for a dir without meta.json."""
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text())["vocab_size"])
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise PrepareError(f"'{path}' has no readable vocab_size ({err}); re-run `lmstack prepare`") from None
