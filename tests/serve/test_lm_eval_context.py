"""`lmstack eval lm-eval` against our real server: lm-eval is told the served model's context (it assumes 2048, and
every longer prompt it sent a 256-token model was refused with HTTP 400, failing the whole lm-eval run)."""

from __future__ import annotations

from serve_helpers import API_KEY

from lmstack.cli import main
from lmstack.model.checkpoint import read_config


def test_lm_eval_gets_the_context_the_server_serves(server, checkpoint, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)  # lm-eval's key, and the one the listing sends
    assert main(["eval", "lm-eval", f"{server}/v1", "--tasks", "hellaswag", "--dry-run"]) == 0
    context = read_config(checkpoint)["model"]["block_size"]
    model_args = capsys.readouterr().out.split("--model_args ")[1].split()[0].split(",")
    assert f"max_length={context}" in model_args and "model=tiny-chat" in model_args
    assert not any(arg.startswith("timeout=") for arg in model_args)  # lm-eval's own unless given
