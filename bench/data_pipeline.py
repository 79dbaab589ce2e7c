"""Data pipeline speed, ours against the plain way of doing the same thing, in the same run, CPU.

  - prepare: tokens/s of `prepare` (worker processes, shards, split, meta) on the stdlib corpus,
    against one `tokenizers.encode_batch_fast` call over the whole corpus (Rust threads on every core)
    plus one `tofile` -- what a short script would do, with no split, no bound on memory.
  - loader: (x, y) batches/s of `ShardLoader.next_batch` (epoch-shuffled windows, rank split,
    resumable), against nanoGPT's `get_batch` (random offsets into a memmap, no epochs).
Medians of --repeats runs. The last line is JSON.

    .venv/bin/python bench/data_pipeline.py [--repeats 3] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from _args import require_positive
from lmstack.data.prepare import prepare
from lmstack.data.shards import HEADER_SIZE
from lmstack.data.sources import iter_documents
from lmstack.tokenizer import Tokenizer

if TYPE_CHECKING:
    import torch

BATCH, SEQ_LEN, LOADER_BATCHES = 32, 1024, 200
# torch (the loaders' part) is imported where it is used: prepare's spawned workers import this script again, and
# torch at its top cost each of them ~1.5 s, which `lmstack prepare` does not pay (it halved the prepare figure).


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def plain_prepare(tokenizer: Tokenizer, texts: list[str], out: Path) -> None:
    ids = tokenizer.encode_batch(texts)
    stream = np.fromiter((t for doc in ids for t in [tokenizer.bos_id, *doc]), dtype=np.uint16)
    stream.tofile(out)


def nanogpt_get_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    data = np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_SIZE)  # re-opened per batch, as nanoGPT does
    ix = torch.randint(len(data) - SEQ_LEN, (BATCH,))
    x = torch.stack([torch.from_numpy(data[i : i + SEQ_LEN].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + SEQ_LEN].astype(np.int64)) for i in ix])
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    require_positive(parser, args, "repeats", "workers")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

    texts = [doc.text for doc in iter_documents("stdlib")]
    tokenizer = Tokenizer.train(texts, vocab_size=4096, show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result = prepare("stdlib", tmp / "data", tokenizer, workers=args.workers, show_progress=False)
        tokens = result.train.tokens + result.val.tokens
        ours_s = median_seconds(lambda: prepare("stdlib", tmp / "data", tokenizer, workers=args.workers,
                                                show_progress=False), args.repeats)
        peer_s = median_seconds(lambda: plain_prepare(tokenizer, texts, tmp / "plain.bin"), args.repeats)

        from lmstack.data.loader import ShardLoader

        loader = ShardLoader(tmp / "data", "train", BATCH, SEQ_LEN)
        shard = tmp / "data" / "train_000000.bin"
        loader_s = median_seconds(lambda: [loader.next_batch() for _ in range(LOADER_BATCHES)], args.repeats)
        get_batch_s = median_seconds(lambda: [nanogpt_get_batch(shard) for _ in range(LOADER_BATCHES)], args.repeats)

    figures = {
        "prepare_tokens_per_s": round(tokens / ours_s),
        "peer_encode_batch_tokens_per_s": round(tokens / peer_s),
        "prepare_ratio": round(peer_s / ours_s, 3),
        "loader_batches_per_s": round(LOADER_BATCHES / loader_s, 1),
        "peer_nanogpt_get_batch_per_s": round(LOADER_BATCHES / get_batch_s, 1),
        "loader_ratio": round(get_batch_s / loader_s, 3),
        "corpus_tokens": tokens, "workers": args.workers, "batch": BATCH, "seq_len": SEQ_LEN,
    }
    print(f"prepare: {figures['prepare_tokens_per_s']:,} tok/s vs encode_batch {figures['peer_encode_batch_tokens_per_s']:,} tok/s")
    print(f"loader: {figures['loader_batches_per_s']} batch/s vs nanoGPT get_batch {figures['peer_nanogpt_get_batch_per_s']} batch/s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
