"""The synthetic tool-use generator: deterministic, disjoint splits, consistent tools, a checker that
accepts the reference turns and rejects wrong ones."""

import json
import os

import pytest

from lmstack.cli import main
from lmstack.data import toolcalls as tc
from lmstack.tokenizer import ParsedToolCall


def test_generation_is_deterministic_and_seeded():
    assert tc.generate(50, seed=3) == tc.generate(50, seed=3)
    assert tc.generate(50, seed=3) != tc.generate(50, seed=4)


def test_held_out_split_shares_no_question_with_train():
    train = {s["messages"][0]["content"] for s in tc.generate(2000, seed=0, split="train")}
    test = [s["messages"][0]["content"] for s in tc.generate(200, seed=0, split="test")]
    assert not train & set(test)
    assert all(tc.split_of(q) == "test" for q in test)


def test_every_kind_appears_with_varied_phrasing():
    samples = tc.generate(400, seed=0)
    assert {s["kind"] for s in samples} == set(tc.KINDS)
    assert len({s["messages"][0]["content"] for s in samples}) > 300
    assert any(len(s["expected"]["calls"]) == 2 for s in samples if s["kind"] == "chain")
    assert any(m["content"].startswith("error:") for s in samples for m in s["messages"] if m["role"] == "tool")
    assert all(not s["expected"]["calls"] for s in samples if s["kind"] == "no_tool")


def test_tool_results_in_conversations_come_from_the_tools():
    for sample in tc.generate(300, seed=5):
        calls = [json.loads(c["function"]["arguments"]) | {"_name": c["function"]["name"]}
                 for m in sample["messages"] if m["role"] == "assistant" for c in m.get("tool_calls") or []]
        results = [m["content"] for m in sample["messages"] if m["role"] == "tool"]
        for call, result in zip(calls, results):
            name = call.pop("_name")
            assert result in (tc.run_tool(name, call), tc.BUSY_ERROR)


def test_tools_compute_by_hand_checked_values():
    assert tc.run_tool("calculator", {"expression": "12 * 7 - 4"}) == "80"
    assert tc.run_tool("calculator", {"expression": "7 / 2"}) == "3.5"
    assert tc.run_tool("calculator", {"expression": "1 / 0"}) == "error: division by zero"
    assert tc.run_tool("calculator", {"expression": "__import__('os')"}).startswith("error:")
    assert tc.run_tool("convert", {"value": 3, "from_unit": "km", "to_unit": "m"}) == "3000"
    assert tc.run_tool("convert", {"value": 100, "from_unit": "c", "to_unit": "f"}) == "212"
    assert tc.run_tool("lookup", {"key": "kiwi price"}) == "error: no entry for 'kiwi price'"
    assert tc.run_tool("lookup", {"key": "Apple Price"}) == str(tc.STORE["apple price"])


def test_checker_accepts_reference_turns_and_rejects_wrong_ones(chat_tokenizer):
    for sample in tc.generate(100, seed=2, split="test"):
        for messages, target in tc.decision_points(sample):
            reference = sample["messages"][len(messages)]
            ids = chat_tokenizer.render([reference]).ids[2:]  # after <|bos|><|assistant|>
            content, calls = chat_tokenizer.parse_assistant(chat_tokenizer.decode(ids))
            score = tc.score_turn(content, calls, target)
            assert score["correct"], (reference, target)
            assert tc.turn_reward(score) == pytest.approx(1.0)
    call_target = {"call": {"name": "lookup", "arguments": {"key": "apple price"}}}
    wrong_tool = [ParsedToolCall("calculator", {"expression": "1"}, "")]
    assert not tc.score_turn("", wrong_tool, call_target)["right_tool"]
    assert tc.turn_reward(tc.score_turn("", [], call_target)) == 0.0
    assert not tc.score_turn("It is 5.", wrong_tool, {"answer": "5"})["correct"]  # answered with a call


def test_write_splits_writes_both_files(tmp_path):
    paths = tc.write_splits(tmp_path / "toolcalls", n_train=20, n_test=5, seed=0)
    lines = paths["test"].read_text().splitlines()
    assert len(paths["train"].read_text().splitlines()) == 20 and len(lines) == 5
    assert json.loads(lines[0])["id"] == "toolcalls-test-000000"
    with pytest.raises(tc.ToolCallError, match="is a file"):
        tc.write_splits(paths["train"], 1, 1)


@pytest.mark.parametrize("counts, flag", [(["--train", "0", "--test", "5"], "--train 0"),
                                          (["--train", "5", "--test", "-1"], "--test -1")])
def test_a_count_below_1_is_refused_naming_the_flag(tmp_path, capsys, counts, flag):
    assert main(["data", "toolcalls", "--out", str(tmp_path / "tc"), *counts]) == 2
    assert capsys.readouterr().err.strip() == f"lmstack data: error: {flag}: write at least 1 conversation"
    assert not (tmp_path / "tc").exists()  # neither file written


def test_tokenizer_texts_spell_calls_as_the_chat_template_does(chat_tokenizer):
    samples, texts = tc.generate(20, seed=0), list(tc.tokenizer_texts(20, seed=0))
    index = next(i for i, s in enumerate(samples) if s["expected"]["calls"])
    sample, text = samples[index], texts[index]
    rendered = chat_tokenizer.decode(chat_tokenizer.render(sample["messages"], sample["tools"]).ids)
    call = sample["expected"]["calls"][0]
    payload = json.dumps({"name": call["name"], "arguments": call["arguments"]})
    schema = json.dumps(tc.TOOL_SCHEMAS[0]["function"])
    assert payload in text and payload in rendered
    assert schema in text and schema in rendered


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where no file can be created")
def test_an_unwritable_output_is_one_line_naming_it(capsys):
    assert main(["data", "toolcalls", "--out", "/proc/lmstack-nope", "--train", "2", "--test", "1"]) == 2
    assert capsys.readouterr().err.strip() == ("lmstack data: error: cannot write '/proc/lmstack-nope/train.jsonl': "
                                               "No such file or directory; choose a writable location")
