"""/v1/chat/completions through the official `openai` SDK against a real `lmstack serve` process."""

import json

import jsonschema
import pytest
from serve_helpers import HELLO, MODEL

from lmstack.infer.params import SamplingParams


def test_models_lists_the_checkpoint(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_greedy_http_output_equals_the_engine_offline(client, offline_engine, tokenizer):
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=0)
    prompt = tokenizer.render(HELLO, add_generation_prompt=True).ids
    offline = offline_engine.generate([prompt], SamplingParams(max_tokens=24, temperature=0))[0]
    assert reply.choices[0].message.content == offline.text
    assert reply.choices[0].finish_reason == offline.finish_reason
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == len(offline.token_ids)


def test_usage_and_logprobs_match_the_tokenizer(client, tokenizer):
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=12, temperature=0.9,
                                           seed=3, logprobs=True, top_logprobs=3)
    choice = reply.choices[0]
    assert reply.usage.prompt_tokens == len(tokenizer.render(HELLO, add_generation_prompt=True).ids)
    assert reply.usage.completion_tokens == len(choice.logprobs.content) == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12
    assert b"".join(bytes(t.bytes) for t in choice.logprobs.content).decode("utf-8", "replace") == choice.message.content
    for entry in choice.logprobs.content:
        assert len(entry.top_logprobs) == 3
        alternatives = [t.logprob for t in entry.top_logprobs]
        assert alternatives == sorted(alternatives, reverse=True) and entry.logprob <= alternatives[0] + 1e-6


def test_seeded_requests_are_reproducible_and_seeds_differ(client):
    def ask(seed):
        return client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16, temperature=1.0, seed=seed,
                                              extra_body={"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.1})

    first, again, other = ask(7), ask(7), ask(8)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content


def test_null_fields_mean_their_defaults(client):
    """The openai client sends null for an argument given as None; OpenAI's spec makes these fields nullable, and
    null means the default (as vLLM reads it), so the seeded reply is the one without them."""
    extras = ("top_k", "min_p", "repetition_penalty", "ignore_eos", "stop_token_ids", "min_tokens",
              "include_stop_str_in_output")
    chat_nulls = dict(temperature=None, top_p=None, n=None, presence_penalty=None, frequency_penalty=None,
                      logprobs=None, stream=None, stream_options=None, parallel_tool_calls=None,
                      extra_body=dict.fromkeys(extras))
    chat = [client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, seed=5, **nulls)
            for nulls in ({}, chat_nulls)]
    assert chat[0].choices[0].message.content == chat[1].choices[0].message.content
    assert chat[1].choices[0].logprobs is None and len(chat[1].choices) == 1
    completion_nulls = dict(temperature=None, top_p=None, n=None, echo=None, stream=None, extra_body={"top_k": None})
    texts = [client.completions.create(model=MODEL, prompt="the cat", max_tokens=8, seed=5, **nulls).choices[0].text
             for nulls in ({}, completion_nulls)]
    assert texts[0] == texts[1]


def test_n_choices_and_stop_strings(client):
    full = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, temperature=0)
    text = full.choices[0].message.content
    stop = text[6:9]
    assert stop and stop not in text[:6 + 2]
    cut = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, temperature=0, stop=[stop], n=2)
    assert [c.index for c in cut.choices] == [0, 1]
    for choice in cut.choices:  # greedy: both samples equal the full text cut where the stop string starts
        assert choice.message.content == text[:text.index(stop)]
        assert choice.finish_reason == "stop"
    kept = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, temperature=0, stop=stop,
                                          extra_body={"include_stop_str_in_output": True})
    assert kept.choices[0].message.content == text[:text.index(stop) + len(stop)]  # vLLM's extra field


def test_streaming_matches_non_streaming_and_reports_usage(client):
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16, temperature=0)
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == plain.usage.model_dump()


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "weather in a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "strict": True,
    "parameters": {"type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"],
                   "additionalProperties": False}}}


def check_call(call, tools):
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name in schema
    jsonschema.validate(json.loads(call.function.arguments), schema[call.function.name])


def test_tool_choice_required_gives_parsed_tool_calls(client):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "weather in Oslo?"}],
                                           tools=[WEATHER, CLOCK], tool_choice="required", max_tokens=150,
                                           temperature=0.8, seed=1, parallel_tool_calls=False)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    check_call(choice.message.tool_calls[0], [WEATHER, CLOCK])


def test_named_tool_call_streams_as_deltas_the_sdk_merges(client):
    messages = [{"role": "user", "content": "weather?"}]
    with client.chat.completions.stream(model=MODEL, messages=messages, tools=[WEATHER, CLOCK], max_tokens=150,
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}}) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    check_call(call, [WEATHER])
    assert call.function.parsed_arguments == json.loads(call.function.arguments)


def test_tool_results_are_rendered_for_the_next_turn(client, tokenizer):
    messages = [{"role": "user", "content": "weather in Rome?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Rome", "days": 1}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24 C"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none",
                                           max_tokens=8, temperature=0)
    assert reply.usage.prompt_tokens == len(tokenizer.render(messages, tools=[WEATHER], add_generation_prompt=True).ids)
    assert reply.choices[0].message.tool_calls is None
    assert "<|tool_call|>" not in reply.choices[0].message.content


PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "pet": {"enum": ["cat", "dog", None]}, "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
    "required": ["name", "age", "pet", "tags"], "additionalProperties": False}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_schema_output_parses_and_validates(client, seed):
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a person"}], max_tokens=120, temperature=1.0, seed=seed,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON)


@pytest.mark.parametrize("seed", [0, 1])
def test_json_object_output_is_an_object(client, tokenizer, seed):
    # A random model writes strings forever; a logit_bias towards '"', '}' and ']' lets it finish, while the
    # grammar still decides where each of them may go.
    closers = {str(tokenizer.encode(c)[0]): 8 for c in '"}]'}
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=200, temperature=1.0, seed=seed,
                                           logit_bias=closers, response_format={"type": "json_object"})
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)
