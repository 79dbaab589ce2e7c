"""Metrics, plots, run header, bits per byte, and the SIGTERM checkpoint of a real `lmstack train`."""

from __future__ import annotations

import math
import signal
import subprocess
import time

import pytest
import torch
import torch.nn.functional as F

from lmstack.config import load_config
from lmstack.data.loader import ShardLoader
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.tokenizer import Tokenizer
from lmstack.train.checkpoint import latest_checkpoint
from lmstack.train.config import TrainConfig
from lmstack.train.evaluate import evaluate, token_byte_lengths
from lmstack.train.loop import train
from lmstack.device import detect_device, peak_flops
from lmstack.train.flops import pass_flops_per_token
from lmstack.train.metrics import read_metrics
from lmstack.train.val import val_batches
from train_helpers import REPO, VOCAB, lmstack_command, make_data, run_lmstack, subprocess_env, tiny_overrides


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("metrics") / "data")


def test_every_step_is_logged_with_throughput_and_the_run_is_described(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(TrainConfig, overrides=tiny_overrides(data_dir, run_dir, max_steps=20, eval_every=10,
                                                            log_x=True))
    result = train(cfg)
    records = read_metrics(run_dir / "metrics.jsonl")
    start = records[0]
    assert start["event"] == "start" and start["git_sha"] and start["torch"] == torch.__version__
    assert start["device"] == "cpu" and start["params"] == build_model(cfg.model).num_params()
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 21))
    # MFU is the step's model FLOPs (4 rows of 32 tokens) over its time and the CPU's measured peak.
    flops, peak = 4 * 32 * pass_flops_per_token(build_model(cfg.model), 32), peak_flops(detect_device("cpu"), None)
    for r in steps:
        assert r["tokens"] == r["step"] * 4 * 32 and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1
        assert r["mfu"] * r["step_s"] * peak == pytest.approx(flops, rel=1e-6)
        assert r["lr"] > 0 and r["grad_norm"] > 0 and r["memory_mb"] > 0
    vals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in vals] == [10, 20] and all(r["val_bpb"] > 0 for r in vals)
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (run_dir / "run.log").read_text()
    assert log.startswith("==== start {") and '"git_dirty"' in log and '"lr": 0.01' in log
    assert len(result.samples) == len(cfg.sample_prompts) and result.samples[0].startswith("def")
    assert (result.best_checkpoint / "config.json").is_file()


def test_bits_per_byte_matches_a_count_of_the_decoded_text(data_dir):
    tokenizer = Tokenizer.load(data_dir / "tokenizer.json")
    model = build_model(ModelConfig(vocab_size=VOCAB, block_size=32, n_layer=1, n_head=2, n_embd=32), seed=1)
    loader = ShardLoader(str(data_dir), "val", 4, 32, rank=0, world_size=1, shuffle=False)
    batches = list(val_batches(loader, 3, torch.device("cpu")))
    result = evaluate(model, batches, token_byte_lengths(tokenizer, VOCAB, torch.device("cpu")),
                      lambda: torch.autocast("cpu", enabled=False))
    nats, nbytes, tokens = 0.0, 0, 0
    bos = tokenizer.bos_id
    with torch.no_grad():
        for x, y in batches:
            losses = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten(), reduction="none")
            keep = y.flatten() != bos  # bos stands for no text
            nats += losses[keep].sum().item()
            tokens += int(keep.sum())
            nbytes += len(tokenizer.decode([t for t in y.flatten().tolist() if t != bos]).encode("utf-8"))
    assert result["val_loss"] == pytest.approx(nats / tokens, rel=1e-5)
    assert result["val_bpb"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-5)


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(data_dir, run_dir, max_steps=100_000, checkpoint_every=0, eval_every=0)
    args = ["train"] + [a for o in overrides for a in ("--set", o)]
    process = subprocess.Popen(lmstack_command(*args), env=subprocess_env(), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "metrics.jsonl").is_file() or len(read_metrics(run_dir / "metrics.jsonl")) < 6:
            assert time.monotonic() < deadline and process.poll() is None, "training did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143
    assert "stopped by SIGTERM" in stdout
    saved = latest_checkpoint(run_dir)
    stopped_at = int(saved.name.split("_")[1])
    assert stopped_at >= 5
    resumed = overrides + [f"max_steps={stopped_at + 3}"]
    result = run_lmstack("train", "--resume", *[a for o in resumed for a in ("--set", o)])
    assert f"resuming from {saved}" in result.stdout
    assert latest_checkpoint(run_dir).name == f"step_{stopped_at + 3:06d}"
