"""Damaged checkpoints and outputs in the way: `info`, `export`, `import` as real subprocesses, and the loaders."""

from __future__ import annotations

import json
import os

import pytest
from cli_testing import one_line_error
from model_testing import tiny_config

from lmstack.model.checkpoint import CheckpointError, check_model_dir, load_model_dir, save_model_dir
from lmstack.model.convert_hf import export_hf
from lmstack.model.gpt import build_model
from lmstack.model.info import checkpoint_summary


@pytest.fixture
def ckpt(tmp_path, tiny_tokenizer):
    return save_model_dir(tmp_path / "ckpt", build_model(tiny_config("llama", vocab_size=tiny_tokenizer.vocab_size)),
                          tiny_tokenizer)


@pytest.mark.parametrize("keep", ["100 bytes", "half"])
def test_a_truncated_weights_file_is_named_in_one_line(cli, ckpt, tmp_path, keep):
    """safetensors' SafetensorError was a traceback from every command that reads the weights."""
    weights = ckpt / "model.safetensors"
    size = os.path.getsize(weights)
    os.truncate(weights, 100 if keep == "100 bytes" else size // 2)
    says = f"'{weights}' cannot be read ("
    fix = "it is truncated or not a safetensors file; copy it again or write the checkpoint again"
    for args in (["info", ckpt], ["export", ckpt, tmp_path / "hf"]):
        message = one_line_error(cli(*args), args[0])
        assert says in message and message.endswith(fix)
    assert not (tmp_path / "hf").exists()
    for check in (load_model_dir, check_model_dir):
        with pytest.raises(CheckpointError, match="it is truncated or not a safetensors file"):
            check(ckpt)


def test_weights_of_another_shape_are_named_not_a_traceback(ckpt):
    """load_state_dict's size-mismatch RuntimeError (many lines) was a traceback; the header check (for serve,
    which loads later) finds the same without reading the weights."""
    config = json.loads((ckpt / "config.json").read_text())
    config["model"]["n_embd"] = 64
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as loading:
        load_model_dir(ckpt)
    assert "does not match its config.json: size mismatch for tok_emb.weight" in str(loading.value)
    assert "\n" not in str(loading.value)
    with pytest.raises(CheckpointError, match=r"tok_emb.weight is \[\d+, 32\], the config makes it \[\d+, 64\]"):
        check_model_dir(ckpt)


def test_a_file_where_a_checkpoint_dir_should_be_is_called_a_file(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    message = one_line_error(cli("info", tmp_path / "notes.txt"), "info")
    assert f"checkpoint dir '{tmp_path}/notes.txt' is a file, not a directory" in message


def test_export_and_import_never_replace_a_file_a_foreign_dir_or_their_source(cli, ckpt, tmp_path):
    """The output dir is replaced as a whole: a file there, a dir of other things, or the source itself was
    deleted without a word. Now each is refused before any work and left as it was."""
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    message = one_line_error(cli("export", ckpt, notes), "export")
    assert message.endswith(f"output '{notes}' is a file; pass the path of a directory to write (it is created)")
    assert notes.read_text() == "keep me"

    home = tmp_path / "home"
    (home / "projects").mkdir(parents=True)
    (home / "projects" / "thesis.tex").write_text("years of work")
    message = one_line_error(cli("export", ckpt, home), "export")
    assert message.endswith(f"output '{home}' holds 'projects', which import or export never writes; choose a new "
                            "or empty directory (the output is replaced as a whole)")
    assert (home / "projects" / "thesis.tex").read_text() == "years of work"

    message = one_line_error(cli("export", ckpt, ckpt), "export")
    assert f"output '{ckpt}' is the model being converted; pass another directory" in message
    load_model_dir(ckpt)  # still our checkpoint

    export_hf(ckpt, tmp_path / "hf")
    message = one_line_error(cli("import", "--from", "hf", tmp_path / "hf", home), "import")
    assert "which import or export never writes" in message and (home / "projects" / "thesis.tex").exists()
    message = one_line_error(cli("import", "--from", "hf", tmp_path / "hf", tmp_path / "hf"), "import")
    assert "is the model being converted" in message
    message = one_line_error(cli("import", "--from", "hf", tmp_path / "hf", notes / "ckpt"), "import")
    assert f"cannot write '{notes}/ckpt': '{notes}' is a file, not a directory" in message

    # an earlier output of the same command is what may be replaced
    for _ in range(2):
        assert cli("export", ckpt, tmp_path / "again").returncode == 0
        assert cli("import", "--from", "hf", tmp_path / "hf", tmp_path / "back").returncode == 0


def test_import_and_export_refuse_a_tokenizer_dir(cli, ckpt, tiny_tokenizer, tmp_path):
    """A `tokenizer train` output holds only a tokenizer.json, a name import and export write too: it passed for
    an earlier output and was replaced by a model. Without the config.json both write, it is another tool's."""
    tok = tmp_path / "tok"
    tok.mkdir()
    tiny_tokenizer.save(tok / "tokenizer.json")
    before = (tok / "tokenizer.json").read_bytes()
    hf = export_hf(ckpt, tmp_path / "hf")
    for args in (("export", ckpt, tok), ("import", "--from", "hf", hf, tok)):
        message = one_line_error(cli(*args), args[0])
        assert message.endswith(f"output '{tok}' holds 'tokenizer.json' but no config.json, so it is no import or "
                                "export output; choose a new or empty directory (the output is replaced as a whole)")
        assert [p.name for p in tok.iterdir()] == ["tokenizer.json"] and (tok / "tokenizer.json").read_bytes() == before


def test_import_checks_the_files_it_copies_or_reads(cli, ckpt, tmp_path):
    """A broken tokenizer.json was copied into the new checkpoint without a word; a damaged pytorch_model.bin and
    a nanoGPT file that is not one were tracebacks or many lines of torch's text."""
    hf = export_hf(ckpt, tmp_path / "hf")
    (hf / "tokenizer.json").write_text('{"version": ')
    message = one_line_error(cli("import", "--from", "hf", hf, tmp_path / "out"), "import")
    assert f"'{hf}/tokenizer.json' is not a valid tokenizer.json" in message
    assert message.endswith("pass a valid one with --tokenizer FILE")
    assert not (tmp_path / "out").exists()

    (hf / "tokenizer.json").unlink()
    (hf / "model.safetensors").rename(hf / "pytorch_model.bin")
    message = one_line_error(cli("import", "--from", "hf", hf, tmp_path / "out"), "import")
    assert f"'{hf}/pytorch_model.bin' cannot be read (" in message and message.endswith("download it again")

    garbage = tmp_path / "ckpt.pt"
    garbage.write_bytes(b"not a pickle at all")
    message = one_line_error(cli("import", "--from", "nanogpt", garbage, tmp_path / "out"), "import")
    assert f"'{garbage}' is not a readable nanoGPT checkpoint (" in message
    assert not (tmp_path / "out").exists()


# What torch's weights-only unpickler raised, as a traceback, on files that are not a pickle: a memo lookup
# (KeyError, `echo hi > ckpt.pt`), its stack (IndexError), text that is not UTF-8, a number cut short (struct.error);
# and a pickle protocol past 2 added two lines of torch's warning.
@pytest.mark.parametrize("content, raised", [(b"hi\n", "KeyError"), (b"K", "IndexError"), (b".", "IndexError"),
                                             (b"X\x02\x00\x00\x00\xff\xfe.", "UnicodeDecodeError"),
                                             (b"J\x01", "error"), (b"\x80\x04hi", "KeyError")])
def test_a_nanogpt_file_that_is_not_a_pickle_is_one_line(cli, tmp_path, content, raised):
    garbage = tmp_path / "ckpt.pt"
    garbage.write_bytes(content)
    message = one_line_error(cli("import", "--from", "nanogpt", garbage, tmp_path / "out"), "import")
    assert f"'{garbage}' is not a readable nanoGPT checkpoint ({raised}: " in message
    assert message.endswith("); pass the ckpt.pt that nanoGPT's train.py wrote")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change", ["vocab_size", "n_layer", "n_embd", "lora"])
def test_export_and_info_refuse_weights_that_do_not_fit_their_config(cli, ckpt, tmp_path, change):
    """What `sample` refuses: export wrote an HF dir transformers could not load (vocab_size), or failed with
    KeyError / split_with_sizes tracebacks (n_layer, n_embd), or wrote the base weights of a LoRA run's unmerged
    checkpoint without its adapters; info printed the config's shape as if it were the weights'."""
    if change == "lora":
        from lmstack.train.lora import apply_lora
        model = load_model_dir(ckpt)[0]
        apply_lora(model, rank=2)
        save_model_dir(ckpt, model, None, {"lora_rank": 2})  # as a LoRA run writes its step checkpoints
        says = f"'{ckpt}' is a checkpoint of a LoRA fine-tuning run, with its adapters unmerged; load the run's final/"
    else:
        config = json.loads((ckpt / "config.json").read_text())
        config["model"][change] += 1 if change == "n_layer" else 64
        (ckpt / "config.json").write_text(json.dumps(config))
        says = f"'{ckpt}/model.safetensors' does not match its config.json: "
    for command in (lambda: export_hf(ckpt, tmp_path / "hf"), lambda: checkpoint_summary(ckpt)):
        with pytest.raises(CheckpointError) as refused:
            command()
        assert says in str(refused.value) and "\n" not in str(refused.value)
    if change == "lora":  # and from the command line: one line
        assert says in one_line_error(cli("export", ckpt, tmp_path / "hf"), "export")
    assert not (tmp_path / "hf").exists()


def test_import_refuses_a_tokenizer_larger_than_the_models_vocab(cli, tmp_path, tiny_tokenizer):
    """A 4096-token tokenizer on a 512-token model was imported, and failed only later, in `sample`."""
    small = tiny_tokenizer.vocab_size - 100
    export_hf(save_model_dir(tmp_path / "ckpt", build_model(tiny_config("llama", vocab_size=small)), None),
              tmp_path / "hf")
    tokenizer = tmp_path / "tokenizer.json"
    tiny_tokenizer.save(tokenizer)
    message = one_line_error(cli("import", "--from", "hf", tmp_path / "hf", tmp_path / "out", "--tokenizer",
                                     tokenizer), "import")
    assert message.endswith(f"the tokenizer '{tokenizer}' has {tiny_tokenizer.vocab_size} tokens but the model "
                            f"{tmp_path / 'hf'} has vocab_size={small}; pass the tokenizer the model was trained "
                            "with (--tokenizer FILE)")
    assert not (tmp_path / "out").exists()
