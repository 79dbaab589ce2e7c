"""Against our own server: `lmstack serve CKPT` with a tiny model trained here, in a few seconds, to make
one tool call and then answer from the tool's result. The agent's calls go through the openai SDK, our
server's chat template and tool-call parser, our engine, and back. The server and the `lmstack agent`
commands run in this process (no test here signals or kills one; a new interpreter each took seconds of
make test), the server still over HTTP."""

import json
import sys
from pathlib import Path

import pytest
import torch

from agent_helpers import run_agent
from lmstack.agent.builtin_tools import calculator
from lmstack.agent.context import approx_tokens
from lmstack.agent.client import ContextLengthError, ModelCallError, OpenAIClient
from lmstack.agent.launch import open_database
from lmstack.agent.runtime import AgentRuntime
from lmstack.agent.settings import AgentConfig
from lmstack.agent.store import create_run, update_run
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.agent.tools import ToolRegistry
from lmstack.config import to_dict
from lmstack.model.checkpoint import save_model_dir
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "serve"))
from serve_helpers import serve_here  # noqa: E402  (the server tests' own helpers)

SYSTEM = AgentConfig().system_prompt
TASK = "What is 6 * 7?"
ANSWER = "The answer is 42."
CONTEXT = 512  # the model's block_size: the max_model_len our server reports


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
    cfg = ModelConfig(arch="llama", vocab_size=416, block_size=CONTEXT, n_layer=1, n_head=4, n_kv_head=2, n_embd=32)
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
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-tools"
    train_tool_using_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def own_server(checkpoint):
    with serve_here(checkpoint) as base:
        class Server:
            base_url = f"{base}/v1"
        yield Server


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


def test_the_client_reads_the_context_from_v1_models_when_the_server_reports_it(own_server):
    with OpenAIClient(own_server.base_url, "tiny-tools") as client:
        assert client.context_tokens == CONTEXT
    assert client.sdk.is_closed()  # its sockets go with the block, not when the garbage collector finds it
    with ScriptedServer({"scripts": {"m": []}}) as openai_like:  # lists models without max_model_len, as OpenAI does
        assert getattr(OpenAIClient(openai_like.base_url, "m"), "context_tokens", 8192) == 8192


def tool_turn(call_id: str, output: str) -> list[dict]:
    call = {"id": call_id, "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "6 * 7"}'}}
    return [{"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": output}]


def test_the_conversation_is_fitted_to_the_context_the_server_reports(tmp_path, own_server):
    """Regression: over HTTP the runtime fitted the conversation to context_tokens=8192, not to the server's
    context, with an estimate blind to the tool schemas and the template; the server refused long runs."""
    conn = open_database(tmp_path / "lmstack.db")
    config = AgentConfig(model=own_server.base_url, model_name="tiny-tools", max_output_tokens=48)
    create_run(conn, "fit", TASK, to_dict(config))
    client = OpenAIClient(own_server.base_url, "tiny-tools")
    runtime = AgentRuntime(conn, "fit", config, client, ToolRegistry([calculator]), tmp_path)
    assert runtime.run().status == "completed"  # its calls show the runtime how the server counts a prompt
    # An older tool output the ~4-characters-per-token estimate alone would let through.
    messages = conversation()[:2] + tool_turn("call_0", "42" + " (exact)" * 150) + tool_turn("call_1", "42")
    with pytest.raises(ModelCallError, match="does not fit"):  # the reference: unfitted, the server refuses it
        client.complete(messages, [calculator.schema()], max_tokens=config.max_output_tokens)
    view, tools = runtime.context_view(messages)
    assert "[tool output truncated" in view[3]["content"]
    client.complete(view, tools, max_tokens=config.max_output_tokens)  # fitted, it is answered


def test_a_prompt_our_server_refuses_as_too_long_is_fitted_again_with_its_count(tmp_path, own_server, checkpoint):
    """Regression: our server's 400 for a prompt that does not fit with max_tokens ended the run `failed`, and a
    resume sent the same request again. The count in its message is the one our tokenizer gives."""
    messages = conversation()[:2] + tool_turn("call_0", "42 " * 60)
    counted = Tokenizer.load(checkpoint / "tokenizer.json").render(
        messages, [calculator.schema()], add_generation_prompt=True).ids
    client = OpenAIClient(own_server.base_url, "tiny-tools")
    with pytest.raises(ContextLengthError) as refused:
        client.complete(messages, [calculator.schema()], max_tokens=CONTEXT - len(counted) + 1)
    assert (refused.value.prompt_tokens, refused.value.context_tokens) == (len(counted), CONTEXT)
    # A run whose first estimate is too low (the schemas and the template count more than ~4 characters a token):
    # its max_output_tokens does not fit beside the prompt as the server counts it, yet the run completes.
    first = conversation()[:2]
    prompt = len(Tokenizer.load(checkpoint / "tokenizer.json").render(first, [calculator.schema()],
                                                                        add_generation_prompt=True).ids)
    estimate = approx_tokens(first) + len(json.dumps([calculator.schema()])) // 4
    assert estimate < prompt
    config = AgentConfig(max_output_tokens=CONTEXT - (estimate + prompt) // 2)
    record, _ = run_agent(tmp_path, own_server, "tiny-tools", TASK, [calculator], config)
    assert record.status == "completed" and record.final_answer == ANSWER, record.stop_reason


def test_a_refused_api_key_is_reported_with_where_the_agent_reads_it(cli, monkeypatch, checkpoint, tmp_path):
    def environment(**variables: str) -> None:
        """Neither key set, but for `variables`."""
        for name in ("OPENAI_API_KEY", "SERVER_KEY"):
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    def agent_run(*settings: str, **variables: str):
        environment(**variables)
        return cli("agent", "run", TASK, "--model", url, "--db", tmp_path / "lmstack.db", "--workspace",
                   tmp_path / "ws", *settings)

    with serve_here(checkpoint, "--api-key", "sesame") as base:
        url = f"{base}/v1"
        no_key, wrong_key = agent_run(), agent_run(OPENAI_API_KEY="wrong")
        right_key = agent_run("--set", "api_key_env=SERVER_KEY", SERVER_KEY="sesame")  # the fix the message names
        # A run started with the key in $SERVER_KEY, resumed where it is not set: it said only "Error code: 401" and
        # "continues once the endpoint is back".
        conn = open_database(tmp_path / "lmstack.db")
        create_run(conn, "later", TASK, to_dict(AgentConfig(model=url, model_name="tiny-tools",
                                                             api_key_env="SERVER_KEY", workspace=str(tmp_path / "ws"))))
        update_run(conn, "later", status="failed")  # as after a server outage: its process is not this one
        environment()
        resumed = cli("agent", "resume", "later", "--db", tmp_path / "lmstack.db")
    for result, sent in ((no_key, "no key ($OPENAI_API_KEY is not set)"), (wrong_key, "the key in $OPENAI_API_KEY")):
        assert result.returncode == 2, result.stderr
        error = result.stderr.strip().splitlines()[-1]
        assert "refused the API key (HTTP 401" in error and sent in error and "--set api_key_env=NAME" in error
    assert right_key.returncode == 0 and "completed (2 steps" in right_key.stdout, right_key.stderr
    assert resumed.returncode == 1 and resumed.stdout.splitlines()[-1] == (
        f"model 'tiny-tools' at {url}/: the server refused the API key (HTTP 401; sent no key ($SERVER_KEY is not "
        "set)): set $SERVER_KEY to the server's key; `lmstack agent resume later` continues once $SERVER_KEY holds "
        "the server's key")
