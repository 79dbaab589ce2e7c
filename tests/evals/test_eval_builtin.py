"""Built-in tasks: monitors scored on labelled steps, the arithmetic agent, tool-use checking, held-out bpb data."""

import json
import re

import pytest

from lmstack.agent.client import OpenAIClient
from lmstack.agent.monitor_data import generate_steps, score_monitors
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.data.prepare import val_score
from lmstack.evals.builtin.arithmetic import word_problems
from lmstack.evals.builtin.toolcalls import toolcall
from lmstack.evals.loader import load_task
from lmstack.evals.model import CachedModel
from lmstack.evals.runner import run_eval
from lmstack.evals.sample import Sample, TaskState
from lmstack.evals.store import Store
from lmstack.evals.task import TaskError


def test_hallucination_detection_matches_the_agent_layers_own_precision_recall(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    with ScriptedServer({"scripts": {"unused": [{"content": ""}]}}) as server:
        model = CachedModel(OpenAIClient(server.base_url, "unused"), store)
        outcome = run_eval(load_task("hallucination_detection"), model, store, progress=False)
        assert server.requests() == []  # the monitors are measured without any model call
    reference = score_monitors(generate_steps(1))
    for monitor in ("grounding", "action_claims", "tool_hallucination"):
        scores = outcome.summary["scores"]
        assert scores[f"{monitor}_precision"]["mean"]["mean"] == pytest.approx(reference[monitor].precision)
        assert scores[f"{monitor}_recall"]["mean"]["mean"] == pytest.approx(reference[monitor].recall)
        assert scores[f"{monitor}_recall"]["mean"]["n"] == reference[monitor].true_positives + reference[monitor].false_negatives


def test_hallucination_detection_takes_a_list_of_known_monitors_each_once():
    task = load_task("hallucination_detection", {"monitors": "[uncertainty, self_consistency, uncertainty]"})
    assert [s.registry_name for s in task.scorers] == ["uncertainty_precision", "uncertainty_recall",
                                                      "self_consistency_precision", "self_consistency_recall"]
    with pytest.raises(TaskError, match="monitors: unknown 'groundng'; use names from \\['grounding'"):
        load_task("hallucination_detection", {"monitors": "groundng"})
    with pytest.raises(TaskError, match="monitors must name at least one of \\['grounding'"):
        load_task("hallucination_detection", {"monitors": "[]"})  # measured the default monitors before


def agent_script(expression, final):
    return [{"tool_calls": [{"name": "calculator", "arguments": {"expression": expression}}]}, {"content": final}]


def test_arithmetic_agent_uses_the_calculator_and_monitors_become_scores(tmp_path):
    problem = word_problems(1, seed=0)[0]  # "A shop has A apples and sells B..."
    a, b = [int(w) for w in re.findall(r"\d+", problem.input)]
    assert str(a - b) == problem.target
    script = {"scripts": {
        "honest": agent_script(f"{a} - {b}", f"{a - b}"),
        "claims": agent_script(f"{a} - {b}", f"{a - b}. I saved the result to result.txt."),
    }}
    store = Store(tmp_path / "db.sqlite")
    with ScriptedServer(script) as server:
        results = {}
        for name in ("honest", "claims"):
            model = CachedModel(OpenAIClient(server.base_url, name), store)
            outcome = run_eval(load_task("arithmetic_agent", {"n": 1}), model, store, progress=False)
            results[name] = (outcome.summary["scores"], store.samples(outcome.run_id)[0])
        second_turn = [r for r in server.requests() if r["model"] == "honest"][1]["messages"]
    assert second_turn[-1] == {"role": "tool", "tool_call_id": "call_0_0", "content": str(a - b)}
    honest_scores, honest = results["honest"]
    assert honest_scores["numeric"]["mean"]["mean"] == 1.0 and honest_scores["hallucination"]["mean"]["mean"] == 0.0
    assert [e["name"] for e in honest.events if e["kind"] == "tool_call"] == ["calculator"]
    claims_scores, claims = results["claims"]
    assert claims_scores["hallucination"]["mean"]["mean"] == 1.0
    flagged = [e for e in claims.events if e["kind"] == "monitor" and e["monitor"] == "action_claims"]
    content = f"{a - b}. I saved the result to result.txt."
    assert flagged and "saved" in content[flagged[0]["start"]:flagged[0]["end"]]


def turn_state(output, tool_calls, target):
    state = TaskState(Sample(id="t", input=[], target=target), 0, 0)
    state.output, state.tool_calls = output, tool_calls
    return state


def test_toolcall_scorer_uses_the_data_layers_checker():
    want = {"call": {"name": "calculator", "arguments": {"expression": "12 * 7"}}}
    right = turn_state("", [{"name": "calculator", "arguments": json.dumps({"expression": "12*7"})}], want)
    wrong_tool = turn_state("", [{"name": "lookup", "arguments": json.dumps({"key": "x"})}], want)
    broken = turn_state("", [{"name": "calculator", "arguments": "{not json"}], want)
    assert [toolcall()(s, None).value for s in (right, wrong_tool, broken)] == [1.0, 0.0, 0.0]
    assert [toolcall("right_tool")(s, None).value for s in (right, wrong_tool, broken)] == [1.0, 0.0, 0.0]
    assert toolcall("parsed")(wrong_tool, None).value == 1.0 and toolcall("parsed")(broken, None).value == 0.0
    answer = {"answer": "84"}
    assert toolcall()(turn_state("It is 84.", [], answer), None).value == 1.0
    assert toolcall()(turn_state("It is 84.", [{"name": "calculator", "arguments": "{}"}], answer), None).value == 0.0


def test_toolcalls_task_is_the_held_out_split_grouped_by_conversation():
    task = load_task("toolcalls", {"n": 6})
    assert all(s.group and s.id.startswith(f"{s.group}/t") for s in task.dataset)
    assert all(s.id.startswith("toolcalls-test-") for s in task.dataset)
    assert len({s.group for s in task.dataset}) == 6 and len(task.dataset) >= 6
    assert load_task("toolcalls", {"n": 2, "tools": False}).name == "toolcalls_no_tools"


def test_val_bpb_reads_only_the_val_split():
    task = load_task("val_bpb", {"n": 12, "per_doc": 3})
    assert len(task.dataset) == 12
    assert all(val_score(s.group) < 0.05 for s in task.dataset)
    assert max(sum(1 for s in task.dataset if s.group == g) for g in {s.group for s in task.dataset}) <= 3


def test_agent_whose_model_fails_is_a_sample_error_with_the_reason(tmp_path):
    from lmstack.agent.client import RetryPolicy

    store = Store(tmp_path / "db.sqlite")
    with ScriptedServer({"scripts": {"broken": [{"content": "x", "fail": [500] * 10}]}}) as server:
        client = OpenAIClient(server.base_url, "broken", retry=RetryPolicy(max_attempts=1))
        outcome = run_eval(load_task("arithmetic_agent", {"n": 2}), CachedModel(client, store), store, progress=False)
    records = store.samples(outcome.run_id)
    assert outcome.summary["errors"] == 2
    assert all("failed" in r.error and "500" in r.error for r in records)
