"""`lmstack serve` and `lmstack chat` given bad input: one line, exit code 2, no server.

The server loads its model in the background, once it listens; whatever would make that load fail is found by
the command first, so that no server is left up with a traceback in its log and a model that never comes. The
commands run in this process (a new interpreter per case made this file take a minute), on a port that is taken:
a check that let one through would fail with another error, never start a server here."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from cli_testing import one_line_error
from serve_helpers import make_checkpoint


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("serve-bad") / "tiny")


def damaged_copy(good, tmp_path, damage) -> object:
    copy = tmp_path / "ckpt"
    shutil.copytree(good, copy)
    damage(copy)
    return copy


def truncate_weights(ckpt) -> None:
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:len(weights.read_bytes()) // 2])


def widen_the_config(ckpt) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config["model"]["n_embd"] = 128
    (ckpt / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, says", [
    (truncate_weights, "model.safetensors' cannot be read (Error while deserializing header: incomplete metadata"),
    (widen_the_config, "does not match its config.json: tok_emb.weight is [320, 64], the config makes it [320, 128]"),
    (lambda ckpt: (ckpt / "tokenizer.json").write_text("{"), "tokenizer.json' is not a valid tokenizer.json"),
    (lambda ckpt: (ckpt / "tokenizer.json").unlink(), "has no tokenizer.json, which this command needs"),
])
def test_serve_refuses_a_checkpoint_that_would_fail_to_load(cli, good, taken_port, tmp_path, damage, says):
    ckpt = damaged_copy(good, tmp_path, damage)
    assert says in one_line_error(cli("serve", ckpt, "--port", taken_port), "serve")


@pytest.mark.parametrize("setting, says", [
    ("engine.device='tpu'", "device 'tpu' is not one of auto, cuda, mps, cpu"),
    ("graceful_shutdown_s=-1", "graceful_shutdown_s must be >= 0 (seconds SIGTERM waits for requests in flight)"),
    # one message used to name both settings, whichever was wrong
    ("max_queue=0", "max_queue must be >= 1 (requests waiting before new ones get 429), got 0"),
    ("max_body_bytes=10", "max_body_bytes must be >= 1024, got 10"),
    # these two used to pass the start-up checks, and the server then listened with a model that never loaded
    ("engine.dtype=float99", "engine dtype: dtype 'float99' is not one of auto, float32, bfloat16, float16"),
    ("engine.kv_memory_mb=-1", "engine kv_memory_mb must be > 0 (the KV pool's budget in MiB), got -1.0"),
])
def test_serve_refuses_settings_that_cannot_work_before_it_listens(cli, good, taken_port, setting, says):
    assert says in one_line_error(cli("serve", good, "--port", taken_port, "--set", setting), "serve")


def test_serve_refuses_a_kv_budget_too_small_for_one_block_before_it_listens(cli, good, taken_port):
    """The model's load found it, after the server had said it was up: /health then said "failed" for good."""
    done = cli("serve", good, "--port", taken_port, "--set", "engine.kv_memory_mb=0.005", "--set", "engine.dtype=float32")
    # a block of the tiny llama in float32: k and v x 2 layers x 16 tokens x 2 KV heads x 16 dims x 4 bytes = 8 KiB
    assert one_line_error(done, "serve").endswith("engine kv_memory_mb=0.005 holds no KV block of this model: one "
                                                  "block (16 tokens, float32) takes 0.0078125 MiB; set kv_memory_mb "
                                                  "to at least 0.0078125, or set num_blocks")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_serve_names_its_own_device_setting_in_the_fix(cli, good, taken_port):
    message = one_line_error(cli("serve", good, "--port", taken_port, "--set", "engine.device=cuda"), "serve")
    assert message.endswith("no CUDA/ROCm GPU is visible; use --set engine.device=cpu")


@pytest.mark.parametrize("flag", ["--model", "--api-key"])
def test_chat_with_a_checkpoint_refuses_the_flags_of_a_server(cli, good, flag):
    """They were ignored without a word: the user meant one model and got another."""
    message = one_line_error(cli("chat", good, flag, "x"), "chat")
    assert message.endswith(f"{flag} is for a server (--url); chatting with the checkpoint '{good}' needs neither: "
                            f"drop {flag}")
