"""The commands end to end on a tiny checkpoint: `lmstack data toolcalls`, `sft` (LoRA, resume, merged
export), `dpo` and `grpo` write metrics and a final checkpoint that loads as a plain one."""

import json

import pytest
import torch

from lmstack.cli import main
from lmstack.model.checkpoint import CheckpointError, load_model_dir, save_model_dir
from lmstack.train.metrics import read_metrics


@pytest.fixture
def workdir(tmp_path, chat_tokenizer, make_model):
    save_model_dir(tmp_path / "base", make_model(chat_tokenizer, block_size=256), chat_tokenizer, {})
    assert main(["data", "toolcalls", "--out", str(tmp_path / "tc"), "--train", "40", "--test", "8"]) == 0
    return tmp_path


def test_sft_with_lora_resumes_and_exports_a_merged_checkpoint(workdir):
    args = ["sft", "--init-from", str(workdir / "base"), "--data", str(workdir / "tc/train.jsonl"),
            "--val-data", str(workdir / "tc/test.jsonl"), "--run-dir", str(workdir / "run"), "--lora-rank", "4",
            "--set", "batch_size=2", "--set", "seq_len=256", "--set", "eval_every=2", "--set", "checkpoint_every=2",
            "--set", "lr=1e-2"]
    assert main(args + ["--steps", "2"]) == 0
    assert main(args + ["--steps", "4"]) == 0  # the same command with more steps continues at step 3
    records = read_metrics(workdir / "run/metrics.jsonl")
    steps = [r["step"] for r in records if "loss" in r and "event" not in r]
    assert steps == [1, 2, 3, 4]
    assert any(r.get("event") == "start" and r.get("resumed_from") for r in records)
    assert (workdir / "run/loss.png").is_file()
    final, _, config = load_model_dir(workdir / "run/final")  # plain checkpoint: no adapter tensors left
    base, _, _ = load_model_dir(workdir / "base")
    assert config["lora_rank"] == 4 and config["finetuned_step"] == 4
    changed = [n for n, p in final.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all(n.endswith(("qkv.weight", "proj.weight", "up.weight", "down.weight")) for n in changed)


def test_dpo_and_grpo_commands_run_and_log_their_metrics(workdir):
    for name, colours in (("prefs", ["yes", "red", "blue", "green", "no"]), ("val", ["red", "no", "blue"])):
        (workdir / f"{name}.jsonl").write_text("".join(  # "no" over "no": no preference, skipped and named
            json.dumps({"prompt": f"Say {c}.", "chosen": c, "rejected": "no"}) + "\n" for c in colours))
    common = ["--init-from", str(workdir / "base"), "--steps", "2", "--set", "batch_size=2", "--set", "eval_every=2"]
    assert main(["dpo", *common, "--data", str(workdir / "prefs.jsonl"), "--val-data", str(workdir / "val.jsonl"),
                 "--run-dir", str(workdir / "dpo")]) == 0
    log = (workdir / "dpo/run.log").read_text()
    assert "4 conversations kept, 1 skipped: 1 'chosen' equals 'rejected'" in log
    assert "warning: prefs.jsonl line 5: skipped" in log and "warning: val.jsonl line 2: skipped" in log
    dpo = read_metrics(workdir / "dpo/metrics.jsonl")
    assert {"reward_margin", "reward_accuracy"} <= set(next(r for r in dpo if r.get("step") == 1))
    assert any("val_reward_accuracy" in r for r in dpo)
    assert main(["grpo", *common, "--data", str(workdir / "tc/train.jsonl"), "--val-data", str(workdir / "tc/test.jsonl"),
                 "--run-dir", str(workdir / "grpo"), "--group-size", "3", "--set", "max_new_tokens=8",
                 "--set", "eval_prompts=4"]) == 0
    grpo = read_metrics(workdir / "grpo/metrics.jsonl")
    assert {"reward_mean", "reward_std", "kl", "sample_length"} <= set(next(r for r in grpo if r.get("step") == 1))
    assert any("val_reward" in r for r in grpo) and (workdir / "grpo/reward.png").is_file()
    assert load_model_dir(workdir / "grpo/final")[0] is not None


def test_bad_command_input_is_a_one_line_error_and_leaves_no_run_dir(workdir, capsys):
    base, data = ["--init-from", str(workdir / "base")], ["--data", str(workdir / "tc/train.jsonl")]
    bad_run = ["--run-dir", str(workdir / "bad")]
    assert main(["sft", *base, "--data", str(workdir / "missing.jsonl"), *bad_run]) == 2
    assert "missing.jsonl' does not exist" in capsys.readouterr().err
    assert main(["sft", "--init-from", str(workdir / "nowhere"), "--data", "x"]) == 2
    assert main(["sft", *base, *data, "--lora-rank", "2", "--lora-targets", "attention", *bad_run]) == 2
    assert "'attention'" in capsys.readouterr().err
    assert main(["dpo", *base, *data, "--resume", *bad_run]) == 2
    assert main(["grpo", *base, *data, "--resume", *bad_run]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    assert not (workdir / "bad").exists()


@pytest.mark.parametrize("rank", ["0", "-2"])
def test_a_lora_rank_below_1_is_refused_not_taken_as_a_full_fine_tune(workdir, capsys, rank):
    assert main(["sft", "--init-from", str(workdir / "base"), "--data", str(workdir / "tc/train.jsonl"),
                 "--run-dir", str(workdir / "run"), "--steps", "1", "--set", "batch_size=2", "--lora-rank", rank]) == 2
    assert capsys.readouterr().err.strip() == (f"lmstack sft: error: --lora-rank {rank}: a LoRA rank must be at least 1 "
                                               "(e.g. --lora-rank 8); omit --lora-rank to fine-tune all weights")
    assert not (workdir / "run").exists()


def test_grpo_names_skipped_lines_and_warns_without_val_prompts(workdir):
    lines = (workdir / "tc/train.jsonl").read_text().splitlines()
    no_expected = json.dumps({k: v for k, v in json.loads(lines[1]).items() if k != "expected"})
    data = workdir / "mixed.jsonl"
    data.write_text("\n".join([lines[0], "{broken", no_expected, *lines[2:]]) + "\n")
    assert main(["grpo", "--init-from", str(workdir / "base"), "--data", str(data), "--run-dir", str(workdir / "grpo"),
                 "--steps", "1", "--group-size", "2", "--set", "batch_size=2", "--set", "max_new_tokens=4"]) == 0
    log = (workdir / "grpo/run.log").read_text()
    assert f"train {len(lines) - 1} conversations kept, 2 skipped: 1 malformed JSON, 1 no 'expected'" in log
    assert "warning: mixed.jsonl line 2 (Expecting property name" in log and "warning: mixed.jsonl line 3:" in log
    assert "warning: 0 val prompts (pass --val-data FILE" in log


@pytest.mark.parametrize("flag, message", [(["--kl-coef", "-1"], "kl_coef must be >= 0 (0 = no KL penalty), got -1.0"),
                                           (["--set", "temperature=0"], "temperature must be > 0"),
                                           (["--set", "max_new_tokens=0"], "max_new_tokens must be at least 1, got 0")])
def test_grpo_settings_errors_name_the_setting(workdir, capsys, flag, message):
    assert main(["grpo", "--init-from", str(workdir / "base"), "--data", str(workdir / "tc/train.jsonl"), *flag]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("must be") == 1


def test_a_run_resumed_with_other_lora_settings_is_refused_naming_them(workdir, capsys):
    """A full fine-tune resumed with --lora-rank was load_state_dict's "Missing key(s)" traceback, and a LoRA run
    resumed without it said only "does not match its config.json". Both runs are left as they were."""
    common = ["sft", "--init-from", str(workdir / "base"), "--data", str(workdir / "tc/train.jsonl"),
              "--val-data", str(workdir / "tc/test.jsonl"), "--set", "batch_size=2", "--set", "seq_len=256",
              "--set", "eval_every=2", "--set", "checkpoint_every=2"]
    assert main([*common, "--run-dir", str(workdir / "full"), "--steps", "2"]) == 0
    assert main([*common, "--run-dir", str(workdir / "lora"), "--steps", "2", "--lora-rank", "2"]) == 0
    capsys.readouterr()
    before = {run: (workdir / run / "metrics.jsonl").read_bytes() for run in ("full", "lora")}
    for run, flags, detail in (("full", ["--lora-rank", "2"], "lora_rank: saved 0, now 2"),
                               ("lora", [], "lora_rank: saved 2, now 0"),
                               ("lora", ["--lora-rank", "2", "--lora-alpha", "8"], "lora_alpha: saved None, now 8.0")):
        assert main([*common, "--run-dir", str(workdir / run), "--steps", "4", *flags]) == 2
        err = capsys.readouterr().err
        assert f"the run dir '{workdir / run}' has a checkpoint from a different config ({detail})" in err
    assert before == {run: (workdir / run / "metrics.jsonl").read_bytes() for run in ("full", "lora")}
    # a LoRA run's own checkpoints hold unmerged adapters: loading one says where the merged model is
    with pytest.raises(CheckpointError, match=r"is a checkpoint of a LoRA fine-tuning run, with its adapters "
                                              r"unmerged; load the run's final/ dir"):
        load_model_dir(workdir / "lora" / "checkpoints" / "step_000002")


@pytest.mark.parametrize("alpha", ["0", "-1"])
def test_a_lora_alpha_that_cannot_train_is_refused(workdir, capsys, alpha):
    """The adapters' scale is alpha / rank: at 0 the run trained nothing (zero gradients) and said nothing."""
    assert main(["sft", "--init-from", str(workdir / "base"), "--data", str(workdir / "tc/train.jsonl"),
                 "--run-dir", str(workdir / "run"), "--steps", "1", "--lora-rank", "2", "--lora-alpha", alpha]) == 2
    assert f"lora_alpha must be > 0, got {float(alpha)}" in capsys.readouterr().err
    assert not (workdir / "run").exists()


def test_a_damaged_init_from_is_named_and_leaves_no_run_dir(workdir, capsys):
    weights = workdir / "base" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    for extra in ([], ["--lora-rank", "2"]):
        assert main(["sft", "--init-from", str(workdir / "base"), "--data", str(workdir / "tc/train.jsonl"),
                     "--run-dir", str(workdir / "run"), "--steps", "1", *extra]) == 2
        assert f"'{weights}' cannot be read (" in capsys.readouterr().err
    assert not (workdir / "run").exists()
