"""`lmstack prepare` and `tokenizer train` as users run them: output on success, one-line errors with exit code 2."""

import json
import os
import stat

import pytest
from cli_testing import one_line_error


@pytest.fixture
def lmstack(cli):
    """The `lmstack` command, in this process (see the `cli` fixture)."""
    return cli


@pytest.fixture
def tokenizer_dir(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tokenizer.json")
    return tmp_path


def test_prepare_writes_shards_and_reports_counts(lmstack, tokenizer_dir, make_corpus, tmp_path):
    out = tmp_path / "data"
    done = lmstack("prepare", "--source", make_corpus(40), "--tokenizer", tokenizer_dir, "--out", out,
                   "--val-fraction", "0.1", "--workers", "2")
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert f"wrote {out}/" in done.stdout
    assert f"{meta['train']['tokens']:,} tokens" in done.stdout and f"{meta['val']['tokens']:,} tokens" in done.stdout
    assert meta["train"]["documents"] + meta["val"]["documents"] == 40
    assert "40/40" in done.stderr and "doc/s" in done.stderr  # the progress bar, with its rate


def test_empty_corpus(lmstack, tokenizer_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    message = one_line_error(lmstack("prepare", "--source", empty, "--tokenizer", tokenizer_dir, "--out", tmp_path / "o"), "prepare", alone=False)
    assert f"the corpus '{empty}' is empty" in message
    assert not (tmp_path / "o").exists()


def test_unreadable_file(lmstack, tokenizer_dir, make_corpus, tmp_path):
    corpus = make_corpus(3)
    (corpus / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    message = one_line_error(lmstack("prepare", "--source", corpus, "--tokenizer", tokenizer_dir, "--out", tmp_path / "o",
                                     "--workers", "1"), "prepare", alone=False)
    assert "bad.txt': it is not UTF-8 text" in message


def test_missing_tokenizer(lmstack, make_corpus, tmp_path):
    message = one_line_error(lmstack("prepare", "--source", make_corpus(3), "--tokenizer", tmp_path / "nope",
                                     "--out", tmp_path / "o"), "prepare", alone=False)
    assert "no tokenizer at" in message and "lmstack tokenizer train" in message


def test_tokenizer_train_refuses_an_out_that_is_or_is_under_a_file_before_training(lmstack, make_corpus, tmp_path):
    """A file where --out should be was a FileExistsError traceback (after the whole training); one under it said
    only "Not a directory". Both are refused up front now, naming the file, and the file is left as it was."""
    corpus = make_corpus(20)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    message = one_line_error(lmstack("tokenizer", "train", "--source", corpus, "--vocab-size", "300", "--out", blocker), "tokenizer", alone=False)
    assert message == (f"lmstack tokenizer: error: cannot write '{blocker}': it is a file, not a directory; "
                       "choose a writable location")
    message = one_line_error(lmstack("tokenizer", "train", "--source", corpus, "--vocab-size", "300",
                                      "--out", blocker / "tok"), "tokenizer", alone=False)
    assert f"cannot write '{blocker}/tok': '{blocker}' is a file, not a directory" in message
    assert blocker.read_text() == "keep me"
    assert "tokenizer: reading corpus" not in lmstack("tokenizer", "train", "--source", corpus, "--out", blocker).stderr


@pytest.mark.parametrize("flag, value, says", [
    ("--limit", "-1", "--limit -1 would read no documents; use a positive number or leave it out"),
    ("--min-frequency", "-1", "min_frequency=-1 is negative; use 0 or more (--min-frequency, default 2)"),
])
def test_tokenizer_train_refuses_negative_counts(lmstack, make_corpus, tmp_path, flag, value, says):
    """Both were tracebacks from the tokenizers library (a negative length, an unsigned overflow)."""
    message = one_line_error(lmstack("tokenizer", "train", "--source", make_corpus(5), "--vocab-size", "300",
                                      "--out", tmp_path / "tok", flag, value), "tokenizer", alone=False)
    assert message.endswith(says)
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("flag, value, says", [
    ("--workers", "0", "--workers 0: use at least 1 tokenizer process, or leave it out for all cores"),
    ("--workers", "-2", "--workers -2: use at least 1 tokenizer process, or leave it out for all cores"),
    ("--shard-tokens", "0", "--shard-tokens 0: a shard holds at least 1 token"),
    ("--min-val-docs", "-1", "--min-val-docs -1 is negative; use 0 or more (default 2)"),
])
def test_prepare_names_the_setting_out_of_range(lmstack, tokenizer_dir, make_corpus, tmp_path, flag, value, says):
    """--workers below 1 ran anyway (0 as all cores, -2 as one); the other two shared one message naming neither flag."""
    message = one_line_error(lmstack("prepare", "--source", make_corpus(3), "--tokenizer", tokenizer_dir,
                                     "--out", tmp_path / "o", flag, value), "prepare", alone=False)
    assert says in message
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("settings, fix", [
    (["--val-fraction", "0"], "use a --val-fraction above 0"),
    (["--val-fraction", "0.01", "--min-val-docs", "0"], "raise --min-val-docs above 0"),
])
def test_prepare_warns_of_an_empty_val_split_with_the_setting_that_fills_it(lmstack, tokenizer_dir, make_corpus, tmp_path,
                                                                             settings, fix):
    """--val-fraction 0 left val empty without a word (and `lmstack train` refuses such a dir at its start)."""
    corpus = make_corpus(5)
    done = lmstack("prepare", "--source", corpus, "--tokenizer", tokenizer_dir, "--out", tmp_path / "o", *settings)
    assert done.returncode == 0, done.stderr
    assert done.stderr.endswith("warning: the val split is empty (5 document(s) in all), and `lmstack train`, which "
                                f"evaluates on it, refuses such a dir: {fix} and run `lmstack prepare` again\n")
    done = lmstack("prepare", "--source", corpus, "--tokenizer", tokenizer_dir, "--out", tmp_path / "o")
    assert "warning" not in done.stderr and json.loads((tmp_path / "o" / "meta.json").read_text())["val"]["documents"]


def test_prepared_data_gets_the_modes_the_umask_gives(lmstack, tokenizer_dir, make_corpus, tmp_path):
    """The data dir was 0700 and its shards 0600 (tempfile's modes), whatever the umask: data meant for a team
    was unreadable to it. Now they get what mkdir and open() give: 0777 and 0666 less the umask."""
    previous = os.umask(0o027)  # an unusual one, so that no default passes by chance
    try:
        done = lmstack("prepare", "--source", make_corpus(5), "--tokenizer", tokenizer_dir, "--out", tmp_path / "o")
    finally:
        os.umask(previous)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "o"
    modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in [out, *out.iterdir()]}
    assert modes == {"o": "0o750", "meta.json": "0o640", "tokenizer.json": "0o640", "train_000000.bin": "0o640",
                     "val_000000.bin": "0o640"}
