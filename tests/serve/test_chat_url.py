"""`lmstack chat --url` talks to an OpenAI-compatible server (ours) through the real CLI."""

import subprocess
import sys
from serve_helpers import API_KEY, CONTEXT, MODEL



def test_chat_url_streams_the_servers_reply(server, client):
    expected = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello cat"}],
                                              max_tokens=6, temperature=0).choices[0].message.content
    run = subprocess.run([sys.executable, "-m", "lmstack.cli", "chat", "--url", server, "--api-key", API_KEY,
                          "--max-tokens", "6", "--temperature", "0"],
                         input="hello cat\n/exit\n", capture_output=True, text=True, encoding="utf-8",
                         errors="replace", timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"assistant> {expected}" in run.stdout


def test_chat_url_leaves_the_length_to_the_server_and_survives_a_refused_turn(server, client):
    # No --max-tokens: the request has none, and our server lets the reply use the rest of the context.
    expected = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello cat"}],
                                              temperature=0).choices[0].message.content
    too_long = "hello " * (CONTEXT + 10)  # a 400 from the server (context_length_exceeded)
    run = subprocess.run([sys.executable, "-m", "lmstack.cli", "chat", "--url", server, "--api-key", API_KEY,
                          "--temperature", "0"], input=f"{too_long}\nhello cat\n/exit\n", capture_output=True,
                         text=True, encoding="utf-8", errors="replace", timeout=120)
    assert run.returncode == 0, run.stderr
    assert "error: the server refused the chat request" in run.stdout and "context" in run.stdout
    # The refused turn was taken back: the next one is answered as the first of a conversation.
    assert f"assistant> {expected}" in run.stdout


def test_chat_url_reports_an_unreachable_server_in_one_line():
    run = subprocess.run([sys.executable, "-m", "lmstack.cli", "chat", "--url", "http://127.0.0.1:9/v1"],
                         input="", capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "could not list models" in run.stderr and "Traceback" not in run.stderr
