"""Tiny data and configs for the training tests: a BPE tokenizer and shards made from stdlib sources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from lmstack.data.shards import write_shard
from lmstack.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]
VOCAB = 320


def make_data(directory: Path, train_tokens: int = 60_000) -> Path:
    """A data dir as `lmstack prepare` writes it (tokenizer.json + train/val shards), in about a second."""
    import json as source_a
    import textwrap as source_b

    texts = [Path(m.__file__).read_text() for m in (source_a.decoder, source_a.encoder, source_b)]
    tokenizer = Tokenizer.train(texts, VOCAB, show_progress=False)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(directory / "tokenizer.json")
    stream = []
    for text in texts:
        stream += [tokenizer.bos_id] + tokenizer.encode(text)
    tokens = np.resize(np.array(stream), train_tokens)  # repeat the text up to the size asked for
    write_shard(directory / "train_000000.bin", tokens, tokenizer.vocab_size)
    write_shard(directory / "val_000000.bin", np.array(stream[:4000]), tokenizer.vocab_size)
    return directory


def tiny_overrides(data_dir: Path, run_dir: Path, **extra) -> list[str]:
    """--set overrides for a model that trains a step in milliseconds. Width 128 puts its matmuls (128 rows) over
    lmstack.model.onednn_linear's MIN_MULTIPLY_ADDS, so resume and DDP are checked on the oneDNN path where it runs."""
    settings = {
        "data_dir": str(data_dir), "run_dir": str(run_dir), "device": "cpu",
        "model.arch": "llama", "model.vocab_size": VOCAB, "model.block_size": 32, "model.n_layer": 2,
        "model.n_head": 2, "model.n_embd": 128, "batch_size": 4, "seq_len": 32, "max_steps": 40,
        "warmup_steps": 5, "lr": 0.01, "eval_every": 20, "eval_batches": 2, "checkpoint_every": 5,
        "keep_last": 2, "sample_tokens": 8,
    }
    settings.update(extra)
    return [f"{k}={v if not isinstance(v, str) else repr(v)}" for k, v in settings.items()]


def lmstack_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmstack.cli", *args]


def subprocess_env() -> dict[str, str]:
    """One thread per process: the same matmul order in every run, and no oversubscribed 2-core machine."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def run_lmstack(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(lmstack_command(*args), env=subprocess_env(), capture_output=True, text=True,
                            timeout=timeout, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"lmstack {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result
