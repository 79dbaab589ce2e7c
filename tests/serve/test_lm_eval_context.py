"""`lmstack eval lm-eval` against our real server: lm-eval is told the served model's context (it assumes 2048, and
every longer prompt it sent a 256-token model was refused with HTTP 400, failing the whole lm-eval run), less the
server's bos and the token lm-eval asks for (a window of the whole context was refused too)."""

from __future__ import annotations

import openai
import pytest
from serve_helpers import API_KEY

from lmstack.cli import main
from lmstack.model.checkpoint import read_config
from lmstack.tokenizer import Tokenizer


def text_of_tokens(tokenizer: Tokenizer, count: int) -> str:
    """A text that the tokenizer encodes to exactly `count` tokens."""
    ids = tokenizer.encode(" ".join(f"word{i} and more" for i in range(count)))
    for start in range(len(ids) - count):
        text = tokenizer.decode(ids[start:start + count])
        if len(tokenizer.encode(text)) == count:
            return text
    raise AssertionError(f"no text of {count} tokens found")


def test_lm_eval_gets_the_context_the_server_serves(server, checkpoint, client, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)  # lm-eval's key, and the one the listing sends
    assert main(["eval", "lm-eval", f"{server}/v1", "--tasks", "hellaswag", "--dry-run"]) == 0
    context = read_config(checkpoint)["model"]["block_size"]
    model_args = capsys.readouterr().out.split("--model_args ")[1].split()[0].split(",")
    max_length = int(next(arg for arg in model_args if arg.startswith("max_length=")).removeprefix("max_length="))
    assert max_length == context - 2 and "model=tiny-chat" in model_args
    # The longest loglikelihood request lm-eval then sends: a window of max_length tokens as text, one token asked for.
    window = text_of_tokens(Tokenizer.load(checkpoint), max_length)
    scored = client.completions.create(model="tiny-chat", prompt=window, max_tokens=1, echo=True, logprobs=1)
    assert scored.usage.prompt_tokens == max_length + 1  # the server's bos
    one_more = text_of_tokens(Tokenizer.load(checkpoint), max_length + 1)
    with pytest.raises(openai.BadRequestError, match="context"):  # so max_length is the most that fits
        client.completions.create(model="tiny-chat", prompt=one_more, max_tokens=1, echo=True, logprobs=1)
    assert not any(arg.startswith("timeout=") for arg in model_args)  # lm-eval's own unless given
