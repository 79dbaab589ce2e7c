"""`lmstack prepare` as a real subprocess: output on success, one-line errors with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

LMSTACK = str(Path(sys.executable).with_name("lmstack"))


def lmstack(*args) -> subprocess.CompletedProcess:
    return subprocess.run([LMSTACK, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def tokenizer_dir(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tokenizer.json")
    return tmp_path


def test_prepare_writes_shards_and_reports_counts(tokenizer_dir, make_corpus, tmp_path):
    out = tmp_path / "data"
    done = lmstack("prepare", "--source", make_corpus(40), "--tokenizer", tokenizer_dir, "--out", out,
                   "--val-fraction", "0.1", "--workers", "2")
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert f"wrote {out}/" in done.stdout
    assert f"{meta['train']['tokens']:,} tokens" in done.stdout and f"{meta['val']['tokens']:,} tokens" in done.stdout
    assert meta["train"]["documents"] + meta["val"]["documents"] == 40
    assert "40/40" in done.stderr and "doc/s" in done.stderr  # the progress bar, with its rate


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.startswith("lmstack prepare: error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_empty_corpus(tokenizer_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    message = one_line_error(lmstack("prepare", "--source", empty, "--tokenizer", tokenizer_dir, "--out", tmp_path / "o"))
    assert f"the corpus '{empty}' is empty" in message
    assert not (tmp_path / "o").exists()


def test_unreadable_file(tokenizer_dir, make_corpus, tmp_path):
    corpus = make_corpus(3)
    (corpus / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    message = one_line_error(lmstack("prepare", "--source", corpus, "--tokenizer", tokenizer_dir, "--out", tmp_path / "o",
                                     "--workers", "1"))
    assert "bad.txt': it is not UTF-8 text" in message


def test_missing_tokenizer(make_corpus, tmp_path):
    message = one_line_error(lmstack("prepare", "--source", make_corpus(3), "--tokenizer", tmp_path / "nope",
                                     "--out", tmp_path / "o"))
    assert "no tokenizer at" in message and "lmstack tokenizer train" in message
