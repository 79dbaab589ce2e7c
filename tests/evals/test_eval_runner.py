"""The runner against the scripted OpenAI-compatible server (a real uvicorn subprocess)."""

import json
import re
import sqlite3

import pytest

from eval_helpers import answer, answers, question, write_dataset
from lmstack.agent.client import OpenAIClient, RetryPolicy
from lmstack.agent.testing.scripted_server import ScriptedServer, free_port
from lmstack.cli import main
from lmstack.evals.dataset import load_jsonl
from lmstack.evals.model import CachedModel
from lmstack.evals.report import render_report
from lmstack.evals.runner import run_eval
from lmstack.evals.sample import Sample
from lmstack.evals.code_scorers import hallucination
from lmstack.evals.scorers import numeric
from lmstack.evals.solvers import chat, generate
from lmstack.evals.store import Store
from lmstack.evals.summary import format_scores
from lmstack.evals.task import Task, TaskConfig, scorer

N = 12


@pytest.fixture(scope="module")
def server():
    script = {"scripts": {
        "good": [{"answers": answers(N)}],
        "noisy": [{"answers": answers(N, noisy=True)}],
        "shots": [{"content": "unused"}, {"content": "unused"}, {"answers": {**answers(N), "*": "no"}}],
        "hostile": [{"content": "<script>alert('x')</script> 5"}],
    }}
    with ScriptedServer(script) as srv:
        yield srv


def model(server, store, name="good", **kw):
    return CachedModel(OpenAIClient(server.base_url, name), store, **kw)


def test_scores_usage_and_cache_on_rerun(server, tmp_path):
    store = Store(tmp_path / "db.sqlite")
    task = Task(dataset=load_jsonl(write_dataset(tmp_path / "d.jsonl", N)), solver=generate(), scorer=numeric(),
                name="arith")
    first = run_eval(task, model(server, store, price_per_mtok=(1.0, 2.0)), store, progress=False)
    assert first.summary["scores"]["numeric"]["mean"]["mean"] == 1.0
    assert first.requests == {"answered": N} and first.summary["usage"]["calls"] == N
    usage = first.summary["usage"]
    assert usage["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6)
    before = len(server.requests())
    second = run_eval(task, model(server, store), store, progress=False)
    assert second.requests == {"cached": N} and len(server.requests()) == before  # all answered from the cache
    assert second.summary["scores"] == first.summary["scores"]
    assert second.summary["usage"]["cached_calls"] == N


def test_seeds_are_per_sample_and_epoch_and_reducers(server, tmp_path):
    store = Store(tmp_path / "db.sqlite")
    task = Task(dataset=load_jsonl(write_dataset(tmp_path / "d.jsonl", N)), solver=generate(), scorer=numeric(),
                config=TaskConfig(epochs=4, temperature=0.7, reducers=["mean", "pass@2", "pass^2"]), name="arith")
    outcome = run_eval(task, model(server, store, name="noisy"), store, progress=False)
    seeds = [r["seed"] for r in server.requests() if r["model"] == "noisy"]
    assert len(seeds) == 4 * N and len(set(seeds)) == 4 * N  # every (sample, epoch) has its own seed
    records = store.samples(outcome.run_id)
    expected_pass2, expected_hat2 = [], []
    for i in range(N):  # recompute the reducers by hand from the seeds the server saw
        picks = [r for r in records if r.sample_id == f"q{i}"]
        correct = sum(p.scores["numeric"]["value"] for p in picks)
        assert correct == sum(1 for p in picks if answer(i) in p.output)
        expected_pass2.append(1 - (4 - correct) * (3 - correct) / 12 if correct <= 2 else 1.0)
        expected_hat2.append(correct * (correct - 1) / 12)
    scores = outcome.summary["scores"]["numeric"]
    assert scores["pass@2"]["mean"] == pytest.approx(sum(expected_pass2) / N)
    assert scores["pass^2"]["mean"] == pytest.approx(sum(expected_hat2) / N)


def test_chat_solver_sends_system_and_few_shot(server, tmp_path):
    store = Store(tmp_path / "db.sqlite")
    task = Task(dataset=[Sample(id="a", input=question(1), target=answer(1))],
                solver=chat(system="Be brief.", examples=[("1+1?", "2"), ("2+2?", "4")]), scorer=numeric(), name="shots")
    outcome = run_eval(task, model(server, store, name="shots"), store, progress=False)
    sent = [r for r in server.requests() if r["model"] == "shots"][-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert sent[0]["content"] == "Be brief." and sent[-1]["content"] == question(1)
    assert outcome.summary["scores"]["numeric"]["mean"]["mean"] == 1.0


@scorer
def explodes_on_q2():
    def score(state, ctx):
        if state.sample.id == "q2":
            raise RuntimeError("scorer bug on q2")
        return numeric()(state, ctx)
    return score


def test_bad_input_is_reported_per_sample_and_the_run_finishes(server, tmp_path):
    store = Store(tmp_path / "db.sqlite")
    data = write_dataset(tmp_path / "d.jsonl", 4)
    with open(data, "a") as f:
        f.write(json.dumps({"id": "no-input", "target": "1"}) + "\n")
    task = Task(dataset=load_jsonl(data), solver=generate(), scorer=[explodes_on_q2(), numeric()], name="arith")
    outcome = run_eval(task, model(server, store), store, progress=False)
    records = {r.sample_id: r for r in store.samples(outcome.run_id)}
    assert records["no-input"].status == "error" and "line 5: no 'input' field" in records["no-input"].error
    assert records["q2"].scores["explodes_on_q2"]["error"] == "RuntimeError: scorer bug on q2"
    assert records["q2"].scores["numeric"]["value"] == 1.0  # the other scorer still scored it
    summary = outcome.summary
    assert summary["errors"] == 1 and summary["scorer_errors"] == 1
    assert summary["scores"]["explodes_on_q2"]["mean"]["n"] == 3 and summary["scores"]["numeric"]["mean"]["n"] == 4

    dead = CachedModel(OpenAIClient(f"http://127.0.0.1:{free_port()}/v1", "good",
                                    retry=RetryPolicy(max_attempts=2, base_delay_s=0.01)), store)
    down = run_eval(Task(dataset=load_jsonl(data), solver=generate(), scorer=numeric(), name="arith"), dead, store,
                    progress=False)
    down_records = store.samples(down.run_id)
    assert down.summary["errors"] == 5 and all(r.status == "error" for r in down_records)
    assert all("Connection error" in r.error for r in down_records if r.sample_id != "no-input")

    html = render_report(store, [outcome.run_id, down.run_id])
    assert "scorer bug on q2" in html and "no &#x27;input&#x27; field" in html and "Connection error" in html
    rows = {scorer: re.search(rf"<td>{scorer}</td><td>mean</td>.*?<td class='err'>([^<]*)</td>", html).group(1)
            for scorer in ("explodes_on_q2", "numeric")}  # the first run's rows: a scorer's failures are its own
    assert rows == {"explodes_on_q2": "1 samples, 1 scores", "numeric": "1 samples, 0 scores"}


def test_report_escapes_model_output(server, tmp_path):
    store = Store(tmp_path / "db.sqlite")
    task = Task(dataset=[Sample(id="<b>id</b>", input="<img src=x onerror=alert(1)>", target="5")],
                solver=generate(), scorer=numeric(), name="hostile")
    outcome = run_eval(task, model(server, store, name="hostile"), store, progress=False)
    html = render_report(store, [outcome.run_id])
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "<img src=x" not in html and "<b>id</b>" not in html
    assert "data:image/png;base64," in html


def test_a_run_that_dies_is_recorded_failed_and_resumes(tmp_path, monkeypatch, capsys):
    store = Store(tmp_path / "db.sqlite")
    save_sample = store.save_sample

    def disk_full_on_q2(run_id, record):
        if record.sample_id == "q2":
            raise sqlite3.OperationalError("database or disk is full")
        save_sample(run_id, record)

    seen_while_resuming = []

    def copy_target(state, ctx):  # no model call: the only failure is the database's
        run = store.run("dies")  # what `eval list` shows while samples are solved
        seen_while_resuming.append((run.status, run.error))
        state.output = state.sample.target
        return state

    task = Task(dataset=load_jsonl(write_dataset(tmp_path / "d.jsonl", 4)), solver=copy_target, scorer=numeric(),
                name="arith")
    dead = CachedModel(OpenAIClient(f"http://127.0.0.1:{free_port()}/v1", "m"), store)
    monkeypatch.setattr(store, "save_sample", disk_full_on_q2)
    with pytest.raises(sqlite3.OperationalError):
        run_eval(task, dead, store, run_id="dies", max_workers=1, progress=False)
    run = store.run("dies")
    assert (run.status, run.error) == ("failed", "OperationalError: database or disk is full")
    assert main(["eval", "list", "--db", store.path]) == 0
    assert "dies                         failed" in capsys.readouterr().out

    monkeypatch.setattr(store, "save_sample", save_sample)
    seen_while_resuming.clear()
    resumed = run_eval(task, dead, store, resume="dies", progress=False)
    run = store.run("dies")
    assert (run.status, run.error) == ("finished", None) and resumed.summary["scores"]["numeric"]["mean"]["n"] == 4
    assert set(seen_while_resuming) == {("running", None)}  # not the old failure while it runs again


def test_the_score_table_marks_lower_is_better_and_keeps_long_names_whole(server, tmp_path):
    store = Store(tmp_path / "db.sqlite")
    task = Task(dataset=[Sample(id="q0", input=question(0), target=answer(0))], solver=generate(),
                scorer=[hallucination(), numeric()], name="a_task_name_longer_than_the_old_columns")
    outcome = run_eval(task, model(server, store), store, progress=False)
    header, *rows = format_scores([store.run(outcome.run_id)]).splitlines()
    flagged = next(row for row in rows if "hallucination" in row)
    assert "hallucination (lower is better)" in flagged and "a_task_name_longer_than_the_old_columns" in flagged
    # every column starts (text) or ends (numbers) where its header does
    assert flagged.index("hallucination") == header.index("scorer")
    assert flagged.index(" 1 ") == header.index(" n ")  # n = 1, under its header
