"""Against our own server: `lmstack serve CKPT` (a real subprocess) with a tiny model trained here, in
a few seconds, to make one tool call and then answer from the tool's result. The agent's calls go
through the openai SDK, our server's chat template and tool-call parser, our engine, and back."""

import json
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from agent_helpers import run_agent
from lmstack.agent.builtin_tools import calculator
from lmstack.agent.settings import AgentConfig
from lmstack.agent.testing.scripted_server import free_port
from lmstack.model.checkpoint import save_model_dir
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.tokenizer import Tokenizer

SYSTEM = AgentConfig().system_prompt
TASK = "What is 6 * 7?"
ANSWER = "The answer is 42."


def conversation() -> list[dict]:
    call = {"id": "call_0", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "6 * 7"}'}}
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": "42"},
            {"role": "assistant", "content": ANSWER}]


def train_tool_using_checkpoint(path) -> None:
    texts = [SYSTEM, TASK, ANSWER, json.dumps(calculator.schema()), '{"name": "calculator", "arguments": {}}'] * 20
    tokenizer = Tokenizer.train(texts, vocab_size=400, show_progress=False, min_frequency=1)
    rendered = tokenizer.render(conversation(), [calculator.schema()])
    ids = torch.tensor([rendered.ids])
    targets = torch.tensor([[t if m else -1 for t, m in zip(rendered.ids[1:] + [0], rendered.loss_mask[1:] + [0])]])
    cfg = ModelConfig(arch="llama", vocab_size=416, block_size=512, n_layer=1, n_head=4, n_kv_head=2, n_embd=32)
    model = build_model(cfg, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trained = targets[0] >= 0
    for step in range(300):  # memorise the two assistant turns, until greedy decoding reproduces them
        logits, loss = model(ids, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 and bool((logits[0].argmax(-1)[trained] == targets[0][trained]).all()):
            break
    save_model_dir(path, model.eval(), tokenizer, {})


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("ckpt") / "tiny-tools"
    train_tool_using_checkpoint(checkpoint)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "lmstack.cli", "serve", str(checkpoint), "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if process.poll() is not None:
                pytest.fail(f"lmstack serve exited: {process.stderr.read().decode()[-2000:]}")
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=1).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)

        class Server:
            base_url = f"{base}/v1"
        yield Server
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.parametrize("stream", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_agent_run_against_our_own_server(tmp_path, own_server, stream):
    config = AgentConfig(max_output_tokens=48)
    record, conn = run_agent(tmp_path, own_server, "tiny-tools", TASK, [calculator], config, stream=stream)
    assert record.status == "completed", record.stop_reason
    assert record.final_answer == ANSWER
    tool = conn.execute("SELECT request, response FROM agent_journal WHERE kind = 'tool'").fetchone()
    assert json.loads(tool["request"])["arguments"] == {"expression": "6 * 7"}
    assert json.loads(tool["response"])["content"] == "42"
    final = json.loads(conn.execute("SELECT response FROM agent_journal WHERE key = 'step1/model0'").fetchone()[0])
    # Logprobs come through the API (our server also lists the <|end|> stop token after the answer).
    assert "".join(entry["token"] for entry in final["logprobs"]).startswith(ANSWER)
    assert final["usage"]["completion_tokens"] >= len(final["logprobs"])
    assert conn.execute("SELECT COUNT(*) FROM agent_events").fetchone()[0] == 0  # 42 is grounded in the tool output
