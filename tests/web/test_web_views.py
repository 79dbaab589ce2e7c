"""In-process checks of the dashboard's read side: sample ids with "/", the eval store's paged readers,
and following a metrics file that a resume replaced."""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from lmstack.evals.store import RunNotFound, SampleRecord, Store
from lmstack.web import training_runs
from lmstack.web.settings import DashboardSettings
from lmstack.web.ui_app import create_ui_app
from web_seed import train_record


def _sample(sample_id: str, value: float) -> SampleRecord:
    return SampleRecord(sample_id, 0, "done", {"id": sample_id, "input": "q"}, "out", {"match": {"value": value}},
                        [{"kind": "model_call"}], {"prompt_tokens": 1}, None)


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    for i in range(5):
        store.create_run("task", "model", {}, {}, run_id=f"run{i}")
    for sid in ("gsm8k/12", "gsm8k/13", "plain"):
        store.save_sample("run0", _sample(sid, 1.0))
    yield store
    store.close()


def test_sample_ids_with_a_slash_open_over_http(tmp_path, store):
    app = create_ui_app(DashboardSettings(runs_root=tmp_path / "runs", db_path=tmp_path / "db.sqlite"), None)
    with TestClient(app) as client:
        # as the page asks for it: encodeURIComponent turns "/" into %2F, which the server decodes before routing
        response = client.get(f"/api/evals/runs/run0/samples/{quote('gsm8k/12', safe='')}")
        assert response.status_code == 200, response.text
        assert response.json()["sample_id"] == "gsm8k/12" and response.json()["events"] == [{"kind": "model_call"}]
        assert client.get("/api/evals/runs/run0/samples/gsm8k/13").json()["sample_id"] == "gsm8k/13"
        assert client.get("/api/evals/runs/run0/samples/plain?epoch=0").json()["sample_id"] == "plain"
        assert client.get("/api/evals/runs/run0/samples/gsm8k/99").status_code == 404
        assert client.get("/api/evals/runs/run0/samples").json()["total"] == 3  # the list route is not shadowed


def test_an_unfinished_run_shows_the_scores_of_its_samples_so_far_marked_partial(tmp_path, store):
    """It showed "no scores" until the run finished: a long run's progress, or a crashed run's results, were hidden."""
    for sid, value in [("a", 1.0), ("b", 0.0), ("c", 0.0), ("d", 1.0)]:
        store.save_sample("run1", _sample(sid, value))  # run1 is running: this process recorded it
    app = create_ui_app(DashboardSettings(runs_root=tmp_path / "runs", db_path=tmp_path / "db.sqlite"), None)
    with TestClient(app) as client:
        run = client.get("/api/evals/runs/run1").json()
        listed = next(r for r in client.get("/api/evals/runs").json()["runs"] if r["id"] == "run1")
    assert run["status"] == "running" and listed["summary"] == run["summary"]
    assert run["summary"]["partial"] == {"done": 4, "planned": None}  # a run recorded without its planned count
    assert (run["summary"]["scores"]["match"]["mean"]["mean"], run["summary"]["scores"]["match"]["mean"]["n"]) == (0.5, 4)


def test_store_pages_runs_and_samples(store):
    total, runs = store.runs_page(offset=1, limit=2)
    assert total == 5 and [r.id for r in runs] == [r.id for r in store.runs(limit=5)][1:3]
    total, samples = store.samples_page("run0", offset=1, limit=5)
    assert total == 3 and [s["sample_id"] for s in samples] == ["gsm8k/13", "plain"]
    assert samples[0] == {"sample_id": "gsm8k/13", "epoch": 0, "status": "done", "scores": {"match": {"value": 1.0}},
                          "error": None}
    assert store.samples_page("run1", 0, 10) == (0, [])
    with pytest.raises(RunNotFound):
        store.samples_page("nope", 0, 10)
    assert store.sample("run0", "gsm8k/12").events == [{"kind": "model_call"}]
    with pytest.raises(RunNotFound, match="no sample"):
        store.sample("run0", "gsm8k/12", epoch=1)


def test_followed_metrics_start_over_when_a_resume_replaces_the_file(tmp_path):
    run_dir = tmp_path / "runs" / "live"
    run_dir.mkdir(parents=True)
    metrics = run_dir / "metrics.jsonl"
    lines = [json.dumps(train_record(step)) + "\n" for step in range(1, 7)]
    metrics.write_text("".join(lines[:3]))
    first = training_runs.read_metrics_from(tmp_path / "runs", "live", 0)
    assert [r["step"] for r in first["records"]] == [1, 2, 3] and first["file"]
    # A resume rewrites the file atomically (new inode), as long as or longer than what was read.
    replacement = run_dir / "metrics.jsonl.tmp"
    replacement.write_text("".join(lines[:2]) + lines[3] + lines[4] + lines[5])
    os.replace(replacement, metrics)
    second = training_runs.read_metrics_from(tmp_path / "runs", "live", first["offset"], first["file"])
    assert second["reset"] and [r["step"] for r in second["records"]] == [1, 2, 4, 5, 6]
    assert second["file"] != first["file"]
    with open(metrics, "a") as f:
        f.write(lines[0])
    third = training_runs.read_metrics_from(tmp_path / "runs", "live", second["offset"], second["file"])
    assert not third["reset"] and [r["step"] for r in third["records"]] == [1]
