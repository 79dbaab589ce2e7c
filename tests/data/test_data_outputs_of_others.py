"""The data commands never write into another tool's output: `tokenizer train --out` a model dir, `prepare --out` a
tokenizer dir, `data toolcalls --out` a data dir. Each is refused before any work and left byte for byte."""

from __future__ import annotations

from pathlib import Path

from cli_testing import one_line_error

FIX = "choose a new or empty directory"


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_tokenizer_train_refuses_a_model_dir_and_replaces_its_own(cli, make_corpus, tokenizer, tmp_path):
    """A model dir's tokenizer.json was replaced by one the model was never trained with."""
    corpus = make_corpus(20)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    tokenizer.save(model / "tokenizer.json")
    before = contents(model)
    args = ("tokenizer", "train", "--source", corpus, "--vocab-size", "270", "--min-frequency", "1", "--out")
    message = one_line_error(cli(*args, model), "tokenizer")
    assert message.endswith(f"output '{model}' holds 'config.json', 'model.safetensors', which tokenizer train never "
                            f"writes; {FIX} (its tokenizer.json is replaced)")
    assert contents(model) == before
    (model / "config.json").unlink()
    (model / "model.safetensors").unlink()
    assert cli(*args, model).returncode == 0  # a dir of its own: its tokenizer.json is replaced
    assert contents(model)["tokenizer.json"] != before["tokenizer.json"]


def test_prepare_refuses_a_dir_without_meta_json(cli, make_corpus, tokenizer, tmp_path):
    """A dir holding only a tokenizer.json (a `tokenizer train` output) passed for prepare's own and was replaced."""
    tok = tmp_path / "tok"
    tok.mkdir()
    tokenizer.save(tok / "tokenizer.json")
    before = contents(tok)
    message = one_line_error(cli("prepare", "--source", make_corpus(5), "--tokenizer", tok, "--out", tok), "prepare")
    assert message.endswith(f"output '{tok}' holds 'tokenizer.json' but no meta.json, so it is no prepare output; "
                            f"{FIX} (the output is replaced as a whole)")
    assert contents(tok) == before


def test_data_toolcalls_refuses_a_dir_with_other_files(cli, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text("{}")
    (data / "train.jsonl").write_text("mine\n")
    message = one_line_error(cli("data", "toolcalls", "--out", data, "--train", "2", "--test", "2"), "data")
    assert message.endswith(f"output '{data}' holds 'meta.json', which data toolcalls never writes; {FIX} (its train.jsonl "
                            "and test.jsonl are replaced)")
    assert contents(data) == {"meta.json": b"{}", "train.jsonl": b"mine\n"}
