"""Tokenize a stream of documents on N worker processes, in order, with bounded memory.

Each document becomes `[bos] + encode(text)`. Work is sent in chunks of about CHUNK_CHARS characters;
at most 2 chunks per worker are in flight, so a corpus larger than memory streams through.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterable, Iterator

import numpy as np

from lmstack.data.sources import Document
from lmstack.errors import LmstackError
from lmstack.tokenizer import Tokenizer

CHUNK_CHARS = 1 << 20
CHUNK_DOCS = 512

_worker_tokenizer: Tokenizer | None = None


class WorkerDiedError(LmstackError):
    """A tokenizer worker process ended without its result."""


def tokenize_documents(documents: Iterable[Document], tokenizer: Tokenizer,
                       workers: int = 1) -> Iterator[tuple[Document, np.ndarray]]:
    """Yield (document, uint32 token array) in document order."""
    assert tokenizer.bos_id is not None, "callers check for a bos token first"
    if workers <= 1:
        for chunk in _chunks(documents):
            yield from _pair(chunk, encode_chunk(tokenizer, [d.text for d in chunk]))
        return
    # spawn, not fork: the parent may hold torch/tokenizers thread pools that do not survive a fork. An executor, not
    # multiprocessing.Pool: a Pool replaces a worker that dies (killed for memory by the OOM killer, say) and waits
    # for its chunk for ever; an executor's pool breaks, and the results waited for raise.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(tokenizer.hf.to_str(),))
    try:
        in_flight: deque = deque()
        for chunk in _chunks(documents):
            in_flight.append((chunk, pool.submit(_encode_in_worker, [d.text for d in chunk])))
            if len(in_flight) >= 2 * workers:
                chunk, future = in_flight.popleft()
                yield from _pair(chunk, future.result())
        while in_flight:
            chunk, future = in_flight.popleft()
            yield from _pair(chunk, future.result())
    except BrokenProcessPool:
        raise WorkerDiedError(f"a tokenizer process died (killed, often for lack of memory) while tokenizing on "
                              f"{workers} processes; run again with fewer --workers (1 tokenizes in this process)") \
            from None
    finally:
        pool.shutdown(cancel_futures=True)  # a consumer that stops early waits for no more chunks than in flight


def encode_chunk(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All documents of a chunk as one flat array (cheap to send between processes) + their lengths."""
    encoded = tokenizer.encode_batch(texts)
    lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
    flat = np.empty(int(lengths.sum()), dtype=np.uint32)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    flat[starts] = tokenizer.bos_id
    body = np.ones(flat.size, dtype=bool)
    body[starts] = False
    flat[body] = [i for ids in encoded for i in ids]
    return flat, lengths


def _pair(chunk: list[Document], encoded: tuple[np.ndarray, np.ndarray]) -> Iterator[tuple[Document, np.ndarray]]:
    flat, lengths = encoded
    return zip(chunk, np.split(flat, np.cumsum(lengths)[:-1]))


def _chunks(documents: Iterable[Document]) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    chars = 0
    for doc in documents:
        chunk.append(doc)
        chars += len(doc.text)
        if chars >= CHUNK_CHARS or len(chunk) >= CHUNK_DOCS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _init_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    from tokenizers import Tokenizer as HFTokenizer

    _worker_tokenizer = Tokenizer(HFTokenizer.from_str(tokenizer_json))


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    assert _worker_tokenizer is not None
    return encode_chunk(_worker_tokenizer, texts)
