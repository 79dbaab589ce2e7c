"""Unit tests run in the agent sandbox, a judge model with a rubric, through the real runner."""

from lmstack.agent.client import OpenAIClient
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.evals.code_scorers import model_graded, unit_tests
from lmstack.evals.model import CachedModel
from lmstack.evals.runner import run_eval
from lmstack.evals.sample import Sample, TaskState
from lmstack.evals.solvers import generate
from lmstack.evals.store import Store
from lmstack.evals.task import Task

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def code_state(output):
    state = TaskState(Sample(id="c", input="write add", target=None, metadata={"tests": TESTS}), 0, 0)
    state.output = output
    return state


def test_unit_tests_pass_fail_and_hostile_code_in_the_sandbox():
    scorer = unit_tests(wall_s=10)
    right = code_state("Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n")
    assert scorer(right, None).value == 1.0
    wrong = scorer(code_state("```python\ndef add(a, b):\n    return a - b\n```"), None)
    assert wrong.value == 0.0 and "AssertionError" in wrong.explanation
    hang = unit_tests(cpu_s=1, wall_s=3)(code_state("```python\nwhile True:\n    pass\n```"), None)
    assert hang.value == 0.0  # killed by the CPU or wall-clock limit, never hangs the eval
    state = code_state("```python\nimport os\nopen('/etc/evil', 'w').write('x')\ndef add(a, b): return a + b\n```")
    assert unit_tests(wall_s=10)(state, None).value == 0.0  # writing outside the scratch dir fails
    assert any(e["kind"] == "sandbox" for e in state.events)


def test_model_graded_keeps_the_judges_raw_verdict(tmp_path):
    script = {"scripts": {
        "solver": [{"content": "Paris is the capital."}],
        "judge_yes": [{"content": "The answer names Paris, as the reference does.\nGRADE: C"}],
        "judge_no": [{"content": "Wrong city.\nGRADE: I"}],
        "judge_rambles": [{"content": "Hard to say."}],
    }}
    store = Store(tmp_path / "db.sqlite")
    task = Task(dataset=[Sample(id="q", input="Capital of France?", target="Paris")], solver=generate(),
                scorer=model_graded(rubric="Names the right city."), name="graded")
    with ScriptedServer(script) as server:
        solver_model = CachedModel(OpenAIClient(server.base_url, "solver"), store)
        verdicts = {}
        for judge_name in ("judge_yes", "judge_no", "judge_rambles"):
            judge = CachedModel(OpenAIClient(server.base_url, judge_name), store)
            outcome = run_eval(task, solver_model, store, judge=judge, progress=False)
            verdicts[judge_name] = store.samples(outcome.run_id)[0].scores["model_graded"]
        limited = Task(dataset=task.dataset, solver=generate(), scorer=model_graded(max_tokens=64), name="graded")
        run_eval(limited, solver_model, store, judge=CachedModel(OpenAIClient(server.base_url, "judge_no"), store),
                 progress=False)
        judge_requests = [r for r in server.requests() if r["model"].startswith("judge")]
    judge_prompt = judge_requests[0]["messages"][0]["content"]
    assert "Paris is the capital." in judge_prompt and "Names the right city." in judge_prompt
    # no length limit unless the scorer sets one: a fixed 512 cut a reasoning judge off before its GRADE line
    assert [r.get("max_tokens") for r in judge_requests] == [None, None, None, 64]
    assert verdicts["judge_yes"]["value"] == 1.0 and verdicts["judge_yes"]["explanation"].endswith("GRADE: C")
    assert verdicts["judge_no"]["value"] == 0.0 and verdicts["judge_no"]["explanation"] == "Wrong city.\nGRADE: I"
    assert verdicts["judge_rambles"]["value"] == 0.0 and verdicts["judge_rambles"]["metadata"] == {"parsed": False}
