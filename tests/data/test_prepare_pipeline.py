"""`prepare`: shards hold exactly the corpus, split by document, stably, the same on any worker count."""

import hashlib
import json
import multiprocessing
import os
import signal
import struct
import threading

import numpy as np
import pytest

from lmstack.data.prepare import PrepareError, prepare
from lmstack.data.shards import read_shard
from lmstack.data.sources import Document, SourceError
from lmstack.data.tokenize_parallel import WorkerDiedError, tokenize_documents
from lmstack.tokenizer import Tokenizer


def split_documents(out_dir, split, tokenizer) -> list[str]:
    """Decode a split's token stream back into documents by cutting at bos."""
    paths = sorted(out_dir.glob(f"{split}_*.bin"))
    stream = np.concatenate([read_shard(p) for p in paths]) if paths else np.zeros(0, dtype=np.uint16)
    starts = np.flatnonzero(stream == tokenizer.bos_id)
    assert stream.size == 0 or starts[0] == 0
    return [tokenizer.decode(doc[1:]) for doc in np.split(stream, starts[1:])] if stream.size else []


def header_count(path) -> int:
    return struct.unpack("<Q", path.read_bytes()[16:24])[0]


def test_shards_hold_the_corpus_split_by_document(tokenizer, make_corpus, tmp_path, document_text):
    corpus = make_corpus(60)
    out = tmp_path / "data"
    result = prepare(str(corpus), out, tokenizer, val_fraction=0.2, shard_tokens=500, workers=1, show_progress=False)
    texts = [document_text(i) for i in range(60)]
    expected_tokens = sum(len(tokenizer.encode(t)) + 1 for t in texts)  # [bos] + text, straight from the tokenizer

    meta = json.loads((out / "meta.json").read_text())
    for split, stats in (("train", result.train), ("val", result.val)):
        paths = sorted(out.glob(f"{split}_*.bin"))
        assert [p.name for p in paths] == stats.shards == meta[split]["shards"]
        assert sum(header_count(p) for p in paths) == stats.tokens == meta[split]["tokens"]
        assert all(header_count(p) == 500 for p in paths[:-1])
    assert result.train.tokens + result.val.tokens == expected_tokens

    train_docs, val_docs = split_documents(out, "train", tokenizer), split_documents(out, "val", tokenizer)
    assert not set(train_docs) & set(val_docs)
    assert sorted(train_docs + val_docs) == sorted(texts)
    assert len(val_docs) == result.val.documents == meta["val"]["documents"] >= 2
    assert len(train_docs) == result.train.documents
    assert meta["vocab_size"] == tokenizer.vocab_size and meta["dtype"] == "uint16"
    assert Tokenizer.load(out).encode("shard 🙂") == tokenizer.encode("shard 🙂")


def test_split_is_stable_when_the_corpus_grows(tokenizer, make_corpus, tmp_path, document_text):
    corpus = make_corpus(50)
    settings = dict(val_fraction=0.2, min_val_docs=0, workers=1, show_progress=False)
    prepare(str(corpus), tmp_path / "small", tokenizer, **settings)
    make_corpus(50, start=50)  # same directory, 50 more documents
    prepare(str(corpus), tmp_path / "big", tokenizer, **settings)
    small_val = set(split_documents(tmp_path / "small", "val", tokenizer))
    big_val = set(split_documents(tmp_path / "big", "val", tokenizer))
    first_fifty = {document_text(i) for i in range(50)}
    assert small_val and big_val & first_fifty == small_val


def test_small_corpus_still_gets_val_documents(tokenizer, make_corpus, tmp_path, document_text):
    result = prepare(str(make_corpus(5)), tmp_path / "data", tokenizer, val_fraction=0.01, min_val_docs=2,
                     workers=1, show_progress=False)
    assert (result.train.documents, result.val.documents) == (3, 2)
    # the two documents whose ids hash lowest (blake2b-64 of the relative path) are the val ones
    by_hash = sorted(range(5), key=lambda i: hashlib.blake2b(f"doc_{i:04d}.txt".encode(), digest_size=8).digest())
    assert sorted(split_documents(tmp_path / "data", "val", tokenizer)) == sorted(document_text(i) for i in by_hash[:2])


def test_worker_processes_write_the_same_bytes(tokenizer, make_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr("lmstack.data.tokenize_parallel.CHUNK_DOCS", 7)  # many chunks in flight
    corpus = make_corpus(80)
    prepare(str(corpus), tmp_path / "one", tokenizer, shard_tokens=700, workers=1, show_progress=False)
    prepare(str(corpus), tmp_path / "two", tokenizer, shard_tokens=700, workers=2, show_progress=False)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(names) > 4
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_a_worker_killed_mid_run_is_an_error_not_a_hang(tokenizer, monkeypatch, document_text):
    """multiprocessing.Pool replaced a worker killed mid-chunk (the OOM killer's way) and waited for its chunk for
    ever: prepare hung with no CPU used. Now the run stops with an error naming the fix."""
    monkeypatch.setattr("lmstack.data.tokenize_parallel.CHUNK_DOCS", 7)  # many chunks in flight
    before = set(multiprocessing.active_children())

    def documents():  # read in this process as the workers tokenize: the kill lands mid-run
        for index in range(300):
            if index == 150:
                for worker in set(multiprocessing.active_children()) - before:
                    os.kill(worker.pid, signal.SIGKILL)
            yield Document(f"doc{index}", document_text(index))

    outcome = {}

    def tokenize_all():
        try:
            outcome["documents"] = sum(1 for _ in tokenize_documents(documents(), tokenizer, workers=2))
        except WorkerDiedError as err:
            outcome["error"] = str(err)

    run = threading.Thread(target=tokenize_all, daemon=True)
    run.start()
    run.join(timeout=60)
    assert not run.is_alive(), "tokenizing hung after a worker was killed"
    assert outcome == {"error": "a tokenizer process died (killed, often for lack of memory) while tokenizing on 2 "
                                "processes; run again with fewer --workers (1 tokenizes in this process)"}


def test_rerun_replaces_a_data_dir_but_never_a_foreign_one(tokenizer, make_corpus, tmp_path):
    corpus = make_corpus(10)
    out = tmp_path / "data"
    prepare(str(corpus), out, tokenizer, workers=1, show_progress=False)
    prepare(str(make_corpus(3, directory=tmp_path / "other")), out, tokenizer, workers=1, show_progress=False)
    assert json.loads((out / "meta.json").read_text())["train"]["documents"] + \
        json.loads((out / "meta.json").read_text())["val"]["documents"] == 3
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(PrepareError, match="holds 'notes.txt', which prepare never writes"):
        prepare(str(corpus), precious, tokenizer, workers=1, show_progress=False)
    assert (precious / "notes.txt").read_text() == "keep me"
    # A data dir the user put something of their own into: a re-run replaced it whole, and deleted that.
    (out / "README.md").write_text("where this corpus came from")
    (out / "extra").mkdir()
    with pytest.raises(PrepareError, match=r"holds 'README.md', 'extra', which prepare never writes"):
        prepare(str(corpus), out, tokenizer, workers=1, show_progress=False)
    assert (out / "README.md").read_text() == "where this corpus came from"
    # A link to a data dir was swapped for a real dir, leaving the link's target as it was and a stray `.NAME.old`.
    link = tmp_path / "data-link"
    link.symlink_to(precious, target_is_directory=True)
    with pytest.raises(PrepareError, match="is a symbolic link; choose a new or empty directory"):
        prepare(str(corpus), link, tokenizer, workers=1, show_progress=False)
    assert link.is_symlink() and not (tmp_path / ".data-link.old").exists()


def test_bad_inputs_leave_no_output(tokenizer, make_corpus, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="is empty"):
        prepare(str(empty), tmp_path / "out", tokenizer, workers=1, show_progress=False)
    with pytest.raises(PrepareError, match="--val-fraction 1.5 is out of range"):
        prepare(str(make_corpus(3)), tmp_path / "out", tokenizer, val_fraction=1.5, show_progress=False)
    one = make_corpus(1, directory=tmp_path / "one")
    with pytest.raises(SourceError, match="all of them in val"):
        prepare(str(one), tmp_path / "out", tokenizer, val_fraction=0.9999999, workers=1, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "empty", "one"]  # no out, no temp dirs
