"""`tokens` and `tokens_per_s` of a DPO run count the padded rows it trains on, not batch_size * seq_len windows.

The reference figure is summed from the preference loader's own batches, drawn here from the data file, apart
from the run: each step's pairs padded to their longest reply, both replies of each pair."""

import json
import subprocess
import sys

import torch

from lmstack.cli import main
from lmstack.data.toolcalls import generate
from lmstack.model.checkpoint import save_model_dir
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.tokenizer import Tokenizer
from lmstack.train import checkpoint as ckpt
from lmstack.train.dpo import PreferenceLoader, load_preferences
from lmstack.train.metrics import read_metrics
from train_helpers import REPO, lmstack_command, subprocess_env

BATCH, SEQ_LEN = 2, 64


def write_preferences(path):
    """Replies of very different lengths, so that steps pad to different widths, all far below seq_len."""
    answers = ["red", "a long answer about the colour blue and why it is the right one", "green", "no",
               "white, as asked, and nothing else at all", "yes"]
    path.write_text("".join(json.dumps({"prompt": f"Say {a.split()[0]}.", "chosen": a, "rejected": "maybe"}) + "\n"
                            for a in answers))


def make_base(tmp_path) -> Tokenizer:
    """A tiny checkpoint dir at tmp_path/base and the preference file at tmp_path/prefs.jsonl."""
    texts = [json.dumps(s["messages"]) + json.dumps(s["tools"]) for s in generate(100, seed=1)]
    tokenizer = Tokenizer.train(texts, vocab_size=400, show_progress=False)
    cfg = ModelConfig(arch="llama", vocab_size=tokenizer.vocab_size, block_size=SEQ_LEN, n_layer=1, n_head=2, n_embd=32)
    save_model_dir(tmp_path / "base", build_model(cfg, seed=0), tokenizer, {})
    write_preferences(tmp_path / "prefs.jsonl")
    return tokenizer


def padded_tokens_per_step(data, tokenizer, steps: int, shards: int = 1) -> list[int]:
    """Each step: the padded rows of `shards` micro-batches (a loader split as many ways, as MicroBatches does)."""
    pairs, _ = load_preferences(data, tokenizer, SEQ_LEN)
    loaders = [PreferenceLoader(pairs, BATCH, tokenizer.special["<|pad|>"], rank, shards, seed=0)  # the default seed
               for rank in range(shards)]
    per_step = []
    for _ in range(steps):
        tokens = 0
        for loader in loaders:
            inputs, _ = loader.next_batch()
            rows, width = inputs.shape
            assert rows == 2 * BATCH and width < SEQ_LEN
            tokens += rows * width
        per_step.append(tokens)
    return per_step


def dpo_args(tmp_path, run_dir, steps: int, *settings: str) -> list[str]:
    args = ["dpo", "--init-from", str(tmp_path / "base"), "--data", str(tmp_path / "prefs.jsonl"),
            "--val-data", str(tmp_path / "prefs.jsonl"), "--run-dir", str(run_dir), "--steps", str(steps),
            "--set", f"batch_size={BATCH}", "--set", f"seq_len={SEQ_LEN}", "--set", "eval_every=0",
            "--set", "checkpoint_every=2"]
    return args + [a for setting in settings for a in ("--set", setting)]


def step_records(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r and "event" not in r]


def run_dpo(tmp_path, run_dir, steps: int) -> list[dict]:
    assert main(dpo_args(tmp_path, run_dir, steps)) == 0
    return step_records(run_dir)


def test_dpo_counts_its_padded_rows_and_a_resumed_run_continues_the_total(tmp_path):
    tokenizer = make_base(tmp_path)
    per_step = padded_tokens_per_step(tmp_path / "prefs.jsonl", tokenizer, steps=4)
    assert len(set(per_step)) > 1  # the steps differ, so a fixed figure per step cannot match

    run_dpo(tmp_path, tmp_path / "run", steps=2)
    records = run_dpo(tmp_path, tmp_path / "run", steps=4)  # resumes from step 2
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["tokens"] for r in records] == [sum(per_step[:n]) for n in (1, 2, 3, 4)]
    assert all(r["tokens_per_s"] == per_step[r["step"] - 1] / r["step_s"] for r in records)
    log = (tmp_path / "run/run.log").read_text()
    assert f"{BATCH} preference pairs (2 rows each, padded to their micro-batch's longest)/step" in log
    assert "tokens/step" not in log  # the nominal batch_size * seq_len figure claimed 128 for every step


def test_a_resume_from_a_checkpoint_without_the_total_extrapolates_its_next_step(tmp_path):
    """A checkpoint saved before the total was kept: the first resumed step's count stands for each step before."""
    tokenizer = make_base(tmp_path)
    per_step = padded_tokens_per_step(tmp_path / "prefs.jsonl", tokenizer, steps=3)

    run_dpo(tmp_path, tmp_path / "run", steps=2)
    saved = ckpt.latest_checkpoint(tmp_path / "run") / ckpt.TRAIN_STATE_FILE
    state = torch.load(saved, weights_only=False)
    del state["tokens"]
    torch.save(state, saved)
    records = run_dpo(tmp_path, tmp_path / "run", steps=3)
    assert records[-1]["step"] == 3 and records[-1]["tokens"] == 3 * per_step[2]


def test_two_gloo_processes_sum_their_padded_rows_as_one_process_with_accumulation(tmp_path):
    """Each rank pads its own micro-batch: the step's tokens are summed over the ranks, not rank 0's times two."""
    tokenizer = make_base(tmp_path)
    per_step = padded_tokens_per_step(tmp_path / "prefs.jsonl", tokenizer, steps=3, shards=2)
    expected = [sum(per_step[:n]) for n in (1, 2, 3)]
    assert main(dpo_args(tmp_path, tmp_path / "one", 3, f"tokens_per_step={2 * BATCH * SEQ_LEN}")) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                *lmstack_command(*dpo_args(tmp_path, tmp_path / "two", 3))[1:]]
    result = subprocess.run(torchrun, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for run in ("one", "two"):
        assert [r["tokens"] for r in step_records(tmp_path / run)] == expected, run
