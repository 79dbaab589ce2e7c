"""Monitors: precision and recall on the labelled generator, plus exact spans on hand-written cases."""

from lmstack.agent.client import TokenLogprob, ToolCall
from lmstack.agent.monitor_data import generate_steps, score_monitors
from lmstack.agent.monitors import PastCall, StepView
from lmstack.agent.monitors.action_claims import check_action_claims
from lmstack.agent.monitors.grounding import check_grounding
from lmstack.agent.monitors.tool_hallucination import check_tool_hallucination
from lmstack.agent.monitors.uncertainty import check_uncertainty


def test_precision_and_recall_on_the_labelled_steps():
    steps = generate_steps(seed=0)
    assert len(steps) >= 200
    scores = score_monitors(steps)
    for score in scores.values():
        print(f"{score.monitor:18} precision {score.precision:.3f} recall {score.recall:.3f} "
              f"(tp {score.true_positives}, fp {score.false_positives}, fn {score.false_negatives})")
    for name in ("grounding", "action_claims"):
        assert scores[name].precision >= 0.9 and scores[name].recall >= 0.9, scores[name]
        assert scores[name].true_positives >= 50
    # A second seed, so the targets hold beyond one draw of the generator.
    other = score_monitors(generate_steps(seed=7))
    for name in ("grounding", "action_claims"):
        assert other[name].precision >= 0.9 and other[name].recall >= 0.9, other[name]


def test_grounding_flags_the_exact_span_of_an_invented_number_and_name():
    content = "Oslo had 709,037 residents in 2023, says Statistics Norway, and 812,000 by 2030 per Mayor Anne Lind."
    evidence = ["population of Oslo: 709037 (2023), source: Statistics Norway"]
    events = check_grounding(StepView(content, evidence=evidence))
    flagged = {(e.text, content[e.start:e.end]) for e in events}
    assert flagged == {("812,000", "812,000"), ("2030", "2030"), ("Mayor Anne Lind", "Mayor Anne Lind")}


def test_action_claim_needs_a_successful_call_on_the_same_file():
    content = "I ran the numbers. I saved them to totals.csv."
    actions = {"python": ("run",), "write_file": ("saved",)}
    failed = [PastCall("python", {"code": "x"}, True), PastCall("write_file", {"path": "totals.csv"}, False)]
    events = check_action_claims(StepView(content, past_calls=failed, tool_actions=actions))
    assert [(content[e.start:e.end]) for e in events] == ["I saved them to totals.csv"]
    ok = failed[:1] + [PastCall("write_file", {"path": "totals.csv"}, True)]
    assert check_action_claims(StepView(content, past_calls=ok, tool_actions=actions)) == []


def test_tool_hallucination_spans_point_into_the_arguments_text():
    call = ToolCall("c1", "calculator", '{"expression": "1+1", "precision": 3}')
    events = check_tool_hallucination(StepView("", tool_calls=[call], tool_fields={"calculator": {"expression"}}))
    assert [(e.target, call.arguments[e.start:e.end]) for e in events] == [("tool_call:c1", "precision")]
    unknown = check_tool_hallucination(StepView("", tool_calls=[ToolCall("c2", "send_email", "{}")],
                                                tool_fields={"calculator": {"expression"}}))
    assert unknown[0].text == "send_email"


def test_uncertainty_flags_a_low_probability_number():
    tokens = [("The", -0.1), (" total", -0.1), (" is", -0.1), (" 4", -0.2), ("17", -4.0), (".", -0.1)]
    logprobs = [TokenLogprob(t, lp, [(t, lp)]) for t, lp in tokens]
    content = "".join(t for t, _ in tokens)
    events = check_uncertainty(StepView(content, logprobs=logprobs))
    assert [content[e.start:e.end] for e in events] == ["417"]
