"""The in-process client over our engine: same ModelResponse as the HTTP client; logprobs checked
against a plain full forward pass of the model (no KV cache), and a whole agent run on it."""

import torch

from lmstack.agent.engine_client import EngineClient
from lmstack.infer.engine import Engine
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.tokenizer import Tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog. 1 2 3 4 5 6 7 8 9 10. " * 4,
         "What is two plus two? It is four. Tools help agents compute. " * 4]


def tiny_client(block_size: int = 256) -> EngineClient:
    tokenizer = Tokenizer.train(TEXTS * 4, vocab_size=300, show_progress=False, min_frequency=1)
    cfg = ModelConfig(arch="llama", vocab_size=320, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    model = build_model(cfg, seed=0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # sharper logits: no near-ties between greedy candidates
    return EngineClient(Engine(model, tokenizer), model="tiny")


def test_response_fields_and_logprobs_match_a_full_forward_pass():
    client = tiny_client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus two?"}]
    response = client.complete(messages, max_tokens=12, logprobs=True)
    prompt = client.engine.tokenizer.render(messages, add_generation_prompt=True).ids
    assert response.usage.prompt_tokens == len(prompt)
    assert 1 <= response.usage.completion_tokens <= 12
    assert len(response.logprobs) == response.usage.completion_tokens
    # Reference: greedy decoding by full forward passes over the whole sequence, no cache.
    ids, reference = list(prompt), []
    with torch.no_grad():
        for _ in range(response.usage.completion_tokens):
            logits, _ = client.engine.model(torch.tensor([ids]))
            row = torch.log_softmax(logits[0, -1].float(), dim=-1)
            token = int(row.argmax())
            reference.append((client.engine.tokenizer.token_str(token), float(row[token])))
            ids.append(token)
    assert [e.token for e in response.logprobs] == [t for t, _ in reference]
    for entry, (_, logprob) in zip(response.logprobs, reference):
        assert abs(entry.logprob - logprob) < 1e-3
        assert entry.top_logprobs[0] == (entry.token, entry.logprob) and len(entry.top_logprobs) == 5


def test_an_agent_runs_on_the_engine_client(tmp_path):
    from pathlib import Path

    from lmstack.agent.builtin_tools import calculator
    from lmstack.agent.launch import open_database
    from lmstack.agent.runtime import AgentRuntime
    from lmstack.agent.settings import AgentConfig
    from lmstack.agent.store import create_run
    from lmstack.agent.tools import ToolRegistry
    from lmstack.config import to_dict

    conn = open_database(tmp_path / "db")
    config = AgentConfig(model="in-process", max_output_tokens=8)
    create_run(conn, "e1", "What is two plus two?", to_dict(config))
    record = AgentRuntime(conn, "e1", config, tiny_client(block_size=1024), ToolRegistry([calculator]), Path(tmp_path)).run()
    # A random tiny model rarely emits a well-formed tool call; what matters is that the loop completes cleanly.
    assert record.status in ("completed", "no_progress", "loop_detected", "budget_exceeded"), record.stop_reason
    assert record.completion_tokens >= 1


def test_the_view_sent_to_a_small_model_fits_its_context_with_the_tool_schemas(tmp_path):
    """Regression: the conversation used to be fitted without counting the tool schemas the template
    adds to the system turn, so a long run on a 256-token model overflowed its context."""
    from pathlib import Path

    from lmstack.agent.builtin_tools import calculator
    from lmstack.agent.launch import open_database
    from lmstack.agent.runtime import AgentRuntime
    from lmstack.agent.settings import AgentConfig
    from lmstack.agent.store import create_run
    from lmstack.config import to_dict
    from lmstack.agent.tools import ToolRegistry

    registry = ToolRegistry([calculator])
    schemas = registry.schemas()
    counter = tiny_client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add up the numbers."}]
    schema_tokens = counter.count_tokens(messages, schemas) - counter.count_tokens(messages)
    i = 0
    while counter.count_tokens(messages) < schema_tokens + 300:  # a history well beyond the schemas
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "1+2"}'}}]})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": "3 " * 20})
        i += 1
    # A context the whole run would fit without the schemas, but not with them.
    context = counter.count_tokens(messages) + 20
    client = tiny_client(block_size=context)
    config = AgentConfig(model="in-process", max_output_tokens=8)
    conn = open_database(tmp_path / "db")
    create_run(conn, "fit", "Add up the numbers.", to_dict(config))
    runtime = AgentRuntime(conn, "fit", config, client, registry, Path(tmp_path))
    view, tools = runtime.context_view(messages)
    assert client.count_tokens(view, tools) + config.max_output_tokens <= context
    assert view[0] == messages[0]  # the system prompt and the task are never dropped
    assert view[1]["role"] == "user" and view[1]["content"].startswith(messages[1]["content"])  # (+ the summary)
    response = client.complete(view, tools, max_tokens=config.max_output_tokens)  # raised on overflow before
    assert response.usage.prompt_tokens == client.count_tokens(view, tools)


def test_the_latest_tool_call_and_its_result_stay_when_they_leave_the_reply_less_than_a_quarter(tmp_path):
    """Regression (the demo model in-process looped to loop_detected): a quarter of the context was kept for the
    reply, and the task, the schemas, the call and its result did not fit beside it, so the next prompt held only the
    task. Now the latest turn may leave the reply down to an eighth of the context."""
    from pathlib import Path

    from lmstack.agent.builtin_tools import calculator
    from lmstack.agent.launch import open_database
    from lmstack.agent.runtime import AgentRuntime
    from lmstack.agent.settings import AgentConfig
    from lmstack.agent.store import create_run
    from lmstack.agent.tools import ToolRegistry
    from lmstack.config import to_dict

    registry = ToolRegistry([calculator])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 17% of 2,340?"},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "c0", "type": "function", "function": {
                    "name": "calculator", "arguments": '{"expression": "17 * 2340 / 100"}'}}]},
                {"role": "tool", "tool_call_id": "c0", "content": "397.8"}]
    prompt = tiny_client().count_tokens(messages, registry.schemas())
    context = prompt * 8 // 7 + 2  # the whole prompt leaves the reply an eighth of the context, not a quarter
    assert context - context // 4 < prompt <= context - context // 8
    client = tiny_client(block_size=context)
    config = AgentConfig(model="in-process")
    conn = open_database(tmp_path / "db")
    create_run(conn, "room", messages[1]["content"], to_dict(config))
    view, tools = AgentRuntime(conn, "room", config, client, registry, Path(tmp_path)).context_view(messages)
    assert view == messages
    assert client.complete(view, tools).usage.prompt_tokens == prompt


def test_a_run_whose_tool_schemas_fill_a_checkpoints_context_is_refused_before_it_is_recorded(tmp_path, cli):
    """Regression: with the four built-in tools on a 256-token model the run was recorded, then failed on its first
    call, saying `agent resume` would continue it 'once the endpoint is back', which no resume could do."""
    from cli_testing import one_line_error
    from lmstack.agent.launch import open_database
    from lmstack.model.checkpoint import save_model_dir

    client = tiny_client(block_size=128)
    checkpoint = save_model_dir(tmp_path / "tiny", client.engine.model, client.engine.tokenizer)
    done = cli("agent", "run", "What is 3+4?", "--model", checkpoint, "--tools", "calculator,python,files,memory",
               "--run-id", "full", "--db", tmp_path / "lmstack.db")
    error = one_line_error(done, "agent", alone=False)  # after the line naming the run's model and tools
    assert error.startswith("lmstack agent: error: --tools calculator,python,files,memory: the system prompt")
    assert "fills the 128-token context of model 'tiny'" in error and "pass fewer --tools" in error
    assert open_database(tmp_path / "lmstack.db").execute("SELECT COUNT(*) FROM agent_runs").fetchone()[0] == 0
