"""Dashboard test set-up: seeded data, the scripted model server, a real `lmstack ui` process, and
Debian's chromium driven by Playwright (tests that need it are skipped when /usr/bin/chromium is missing)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from lmstack.agent.testing.scripted_server import ScriptedServer, free_port
from web_seed import SCRIPT, seed_agent_runs, seed_eval_runs, seed_interrupted_eval_run, seed_training_run

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
API_KEY = "dashboard-test-key"
# Root in a container needs --no-sandbox; the rest keep chromium off the (closed) network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]


@pytest.fixture(scope="session")
def scripted():
    with ScriptedServer(SCRIPT) as server:
        yield server


@pytest.fixture(scope="session")
def seeded(tmp_path_factory, scripted):
    root = tmp_path_factory.mktemp("dashboard")
    db = root / "lmstack.db"
    runs_root = root / "runs"
    return {"root": root, "db": db, "runs_root": runs_root, "training_dir": seed_training_run(runs_root),
            "agents": seed_agent_runs(db, scripted.base_url, root / "workspace"), "evals": seed_eval_runs(db),
            "interrupted_eval": seed_interrupted_eval_run(db)}


@pytest.fixture(scope="session")
def ui_server(seeded, scripted):
    """`lmstack ui` as a real subprocess on a free port, with the scripted model as a chat endpoint."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lmstack.cli", "ui", "--port", str(port), "--runs-root", str(seeded["runs_root"]),
         "--db", str(seeded["db"]), "--endpoint", f"scripted={scripted.base_url}", "--api-key", API_KEY],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"lmstack ui exited: {process.stdout.read().decode()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("lmstack ui did not start within 60 s")
            time.sleep(0.2)
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def api(ui_server):
    """An HTTP client of the real `lmstack ui`, sending its API key."""
    with httpx.Client(base_url=ui_server, timeout=30, headers={"authorization": f"Bearer {API_KEY}"}) as client:
        yield client


# Module scope, not session: while sync_playwright is open its event loop runs on the main thread, and every
# later test calling asyncio.run() (the server's concurrency tests) would fail when run after these.
@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium: run `make browsers` "
                    "(apt-get install chromium) as root")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (dev extra) is missing")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, ui_server):
    """A fresh page on the dashboard with the API key already saved (as after entering it once)."""
    context = browser.new_context(base_url=ui_server, viewport={"width": 1360, "height": 900})
    context.add_init_script(f"localStorage.setItem('lmstack.apiKey', '{API_KEY}')")
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.set_default_timeout(15_000)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def screenshot():
    """screenshot(page, name): saves test-artifacts/web/NAME.png (gitignored) for a person to look at."""
    def save(page, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path
    return save
