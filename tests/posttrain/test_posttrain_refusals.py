"""What post-training refuses, and how it says so: a run dir that is the model being fine-tuned, a resume from
another starting model or data, LoRA settings without a rank, nan settings, and data files that cannot be used."""

import os
import shutil

import pytest
from cli_testing import one_line_error, run_cli

from lmstack.config import ConfigError
from lmstack.data.toolcalls import write_splits
from lmstack.model.checkpoint import save_model_dir
from lmstack.train.chat_data import ChatDataError, load_chat_examples
from lmstack.train.dpo import DPOConfig, load_preferences
from lmstack.train.grpo import GRPOConfig
from lmstack.train.sft import load_finetune_config


@pytest.fixture
def workdir(tmp_path, chat_tokenizer, make_model):
    save_model_dir(tmp_path / "base", make_model(chat_tokenizer, block_size=256), chat_tokenizer, {})
    write_splits(tmp_path / "tc", 12, 4)
    return tmp_path


def sft_args(workdir, run_dir, init_from="base", data="tc/train.jsonl", *extra) -> list:
    return ["sft", "--init-from", workdir / init_from, "--data", workdir / data, "--val-data", workdir / "tc/test.jsonl",
            "--run-dir", workdir / run_dir, "--steps", "1", "--set", "batch_size=2", "--set", "seq_len=256",
            "--set", "sample_count=0", *extra]


def test_the_model_being_fine_tuned_is_no_run_dir(cli, workdir):
    """`--init-from X --run-dir X` rewrote X's config.json and nested checkpoints/ in it."""
    before = {p.name: p.read_bytes() for p in (workdir / "base").iterdir()}
    message = one_line_error(cli(*sft_args(workdir, "base")), "sft")
    assert message.endswith("and is not a training run dir (no metrics.jsonl or run.log), so the run would "
                            "overwrite what is there; choose a new or empty dir with --run-dir DIR")
    assert {p.name: p.read_bytes() for p in (workdir / "base").iterdir()} == before


def test_a_resume_from_another_model_or_data_is_refused_naming_it(cli, workdir):
    """It resumed the old run and recorded the new --init-from in config.json."""
    assert cli(*sft_args(workdir, "run")).returncode == 0
    shutil.copytree(workdir / "base", workdir / "other")
    before = (workdir / "run/config.json").read_bytes()
    for init_from, data, detail in (("other", "tc/train.jsonl", f"init_from: saved '{workdir / 'base'}', now "
                                                                f"'{workdir / 'other'}'"),
                                    ("base", "tc/test.jsonl", f"train_file: saved '{workdir / 'tc/train.jsonl'}', "
                                                              f"now '{workdir / 'tc/test.jsonl'}'")):
        message = one_line_error(cli(*sft_args(workdir, "run", init_from, data)), "sft", alone=False)
        assert f"has a checkpoint from a different config ({detail}); it cannot be resumed" in message
        assert "Use another --run-dir DIR for a new run" in message  # it said --set run_name=NAME
    assert (workdir / "run/config.json").read_bytes() == before
    # the same files, given relative to the working directory, are the run's own
    relative = cli("sft", "--init-from", os.path.relpath(workdir / "base"), "--data",
                       os.path.relpath(workdir / "tc/train.jsonl"), *sft_args(workdir, "run")[5:])
    assert relative.returncode == 0, relative.stderr[-2000:]


def test_lora_settings_without_a_rank_are_refused(cli, workdir):
    """They were ignored: the run was a full fine-tune."""
    done = cli(*sft_args(workdir, "run", "base", "tc/train.jsonl", "--lora-alpha", "16", "--lora-targets", "qkv"))
    assert one_line_error(done, "sft").endswith(
        "--lora-alpha, --lora-targets set LoRA adapters, but no --lora-rank N asks for them; add --lora-rank N "
        "(e.g. 8) for LoRA, or drop them to fine-tune all weights")
    assert not (workdir / "run").exists()


@pytest.mark.parametrize("cls, setting, message", [(DPOConfig, {"beta": float("nan")}, "beta must be a finite number"),
                                                   (GRPOConfig, {"kl_coef": float("nan")}, "kl_coef must be a finite")])
def test_nan_objective_settings_are_refused(workdir, cls, setting, message):
    """Every step was skipped as non-finite, final/ equalled the start, and metrics.jsonl held bare NaN."""
    with pytest.raises(ConfigError, match=message):
        load_finetune_config(cls, str(workdir / "base"), None, [], train_file="x", **setting)


def test_skipped_records_are_counted_once_and_named_by_line(workdir, chat_tokenizer, capsys):
    """Records cut by the length check were counted as kept too ("40 kept, 40 skipped" of 40), named as "record 0",
    and the fix offered was about the lines' format when only the context was too short."""
    path = workdir / "tc/train.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["{broken", *lines]) + "\n")
    with pytest.raises(ChatDataError) as refused:
        load_chat_examples(path, chat_tokenizer, seq_len=8)
    assert str(refused.value) == (
        f"'{path}' has no usable conversations (0 conversations kept, 13 skipped: 12 first assistant turn longer "
        "than the context, 1 malformed JSON); each line needs a 'messages' list with at least one assistant turn")
    assert "warning: train.jsonl line 2: skipped (first assistant turn longer than the context)" in capsys.readouterr().err
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ChatDataError, match=r"\(0 conversations kept, 12 skipped: 12 first assistant turn longer than "
                                            r"the context\); raise the context with --set seq_len=N"):
        load_chat_examples(path, chat_tokenizer, seq_len=8, quiet=True)
    examples, report = load_chat_examples(path, chat_tokenizer, seq_len=256, quiet=True)
    assert report.kept == len(examples) == 12


def test_data_files_that_cannot_be_read_say_what_they_are_and_what_to_pass(workdir, chat_tokenizer):
    with pytest.raises(ChatDataError, match=rf"data file '{workdir / 'tc'}' is a directory; pass a JSONL file"):
        load_chat_examples(workdir / "tc", chat_tokenizer, seq_len=256)  # it said "does not exist"
    with pytest.raises(ChatDataError) as refused:
        load_preferences(workdir / "missing.jsonl", chat_tokenizer, seq_len=256)
    assert str(refused.value).endswith('one {"prompt": ..., "chosen": ..., "rejected": ...} object per line')


def test_grpo_help_says_val_data_has_no_default_slice():
    help_text = " ".join(run_cli("grpo", "--help").stdout.split())  # --help exits: a process of its own
    assert "--val-data FILE held-out file of the same format, scored greedily at each eval (default: none" in help_text
    assert "a slice of --data" not in help_text
