"""`lmstack quickstart`: every stage for real (stdlib corpus, BPE, shards, pretraining, samples), shrunk."""

from __future__ import annotations

import pytest
from cli_testing import one_line_error, run_cli

from lmstack.train.metrics import read_metrics
from lmstack.quickstart import STAGES, quickstart

# This layer's stages; later layers append theirs (SFT, evals) and test them themselves.
PRETRAIN_STAGES = [stage for stage in STAGES if stage[0] in ("data", "pretrain", "samples")]

TINY_MODEL = {"model.n_layer": 1, "model.n_head": 1, "model.n_embd": 64, "model.block_size": 64, "seq_len": 64,
              "batch_size": 8, "lr": 0.02, "warmup_steps": 5, "eval_every": 20, "eval_batches": 2,
              "checkpoint_every": 20, "sample_tokens": 8}


def val_losses(run_dir) -> list[float]:
    return [r["val_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r]


def test_quickstart_end_to_end_on_a_slice_of_the_corpus(tmp_path, capsys):
    run_dir = tmp_path / "quickstart"
    qs = quickstart(run_dir, data_dir=tmp_path / "data", corpus_limit=30, stages=PRETRAIN_STAGES,
                    max_steps=60, **TINY_MODEL)
    out = capsys.readouterr().out
    assert qs.pretrain.step == 60 and qs.interrupted_by is None
    losses = val_losses(run_dir)
    first_train_loss = read_metrics(run_dir / "metrics.jsonl")[1]["loss"]  # ~ln(4096): knows nothing yet
    assert len(losses) == 3 and losses[-1] < first_train_loss - 0.6
    for what in ("checkpoint", "metrics", "loss curve"):
        assert dict(qs.outputs)[what].exists()
        assert f"{what}" in out
    assert "samples from the pretrained model" in out and "\ndef" in out
    # Re-running reuses the data and finds the run finished: nothing is trained twice.
    again = quickstart(run_dir, data_dir=tmp_path / "data", corpus_limit=30, stages=PRETRAIN_STAGES,
                       max_steps=60, **TINY_MODEL)
    assert "data: reusing" in capsys.readouterr().out
    assert again.pretrain.step == 60 and val_losses(run_dir) == losses


@pytest.mark.slow
def test_full_quickstart_val_loss_clearly_falls(tmp_path, capsys):
    qs = quickstart(tmp_path / "quickstart", data_dir=tmp_path / "data", stages=PRETRAIN_STAGES)
    first_train_loss = read_metrics(qs.run_dir / "metrics.jsonl")[1]["loss"]
    assert val_losses(qs.run_dir)[-1] < 0.6 * first_train_loss


@pytest.mark.slow  # tokenizer on the whole stdlib, SFT data and a tool-use score: ~25 s
def test_the_cli_shortens_the_demo_and_stops_after_the_stage_asked(tmp_path):
    """A quick try: `--steps`, `--sft-steps` and `--until` (the demo took 7 minutes however it was called)."""
    run_dir = tmp_path / "quick"
    done = run_cli("quickstart", "--run-dir", run_dir, "--steps", "3", "--sft-steps", "2", "--until", "sft",
                   timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    sft_steps = [r["step"] for r in read_metrics(run_dir / "sft/metrics.jsonl") if "loss" in r]
    assert (steps, sft_steps) == ([1, 2, 3], [1, 2])
    assert "==== quickstart: sft" in done.stdout and "==== quickstart: evals" not in done.stdout
    assert (run_dir / "sft/final/model.safetensors").is_file()


@pytest.mark.parametrize("flag", ["--steps", "--sft-steps"])
def test_the_cli_refuses_zero_steps(cli, tmp_path, flag):
    message = one_line_error(cli("quickstart", "--run-dir", tmp_path / "q", flag, "0"), "quickstart")
    assert message.endswith(f"{flag} 0: train at least 1 step (or leave {flag} out for the default)")
    assert not (tmp_path / "q").exists()


def test_the_cli_refuses_sft_steps_when_it_stops_before_sft(cli, tmp_path):
    message = one_line_error(cli("quickstart", "--run-dir", tmp_path / "q", "--sft-steps", "5", "--until",
                                 "pretrain"), "quickstart")
    assert message.endswith("--sft-steps has no stage to shorten with --until pretrain; drop one of them")
