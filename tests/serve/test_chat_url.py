"""`lmstack chat --url` talks to an OpenAI-compatible server (ours) through the CLI. The command runs in this process
with the user's lines as its stdin, read by the same input() as in a terminal (a new interpreter per case took
~30 s of make test)."""

import io

import pytest

from lmstack.agent.testing.scripted_server import ScriptedServer
from serve_helpers import API_KEY, CONTEXT, MODEL


@pytest.fixture
def chat(cli, monkeypatch):
    """`lmstack chat --url URL FLAGS`, the user typing `lines`."""
    def run(url: str, *flags: str, lines: str = ""):
        monkeypatch.setattr("sys.stdin", io.StringIO(lines))
        return cli("chat", "--url", url, *flags)

    return run


def test_chat_url_streams_the_servers_reply(server, client, chat):
    expected = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello cat"}],
                                              max_tokens=6, temperature=0).choices[0].message.content
    run = chat(server, "--api-key", API_KEY, "--max-tokens", "6", "--temperature", "0", lines="hello cat\n/exit\n")
    assert run.returncode == 0, run.stderr
    assert f"assistant> {expected}" in run.stdout


def test_chat_url_leaves_the_length_to_the_server_and_survives_a_refused_turn(server, client, chat):
    # No --max-tokens: the request has none, and our server lets the reply use the rest of the context.
    expected = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello cat"}],
                                              temperature=0).choices[0].message.content
    too_long = "hello " * (CONTEXT + 10)  # a 400 from the server (context_length_exceeded)
    run = chat(server, "--api-key", API_KEY, "--temperature", "0", lines=f"{too_long}\nhello cat\n/exit\n")
    assert run.returncode == 0, run.stderr
    assert "error: the server refused the chat request" in run.stdout and "context" in run.stdout
    # The refused turn was taken back: the next one is answered as the first of a conversation.
    assert f"assistant> {expected}" in run.stdout


@pytest.fixture
def chat_error(chat, monkeypatch):
    """The one line `chat --url URL FLAGS` prints when it cannot find the model to chat with (no key in the
    environment)."""
    def error(url: str, *flags: str) -> str:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        run = chat(url, *flags)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.count("\n") == 1, run.stderr
        return run.stderr.strip()

    return error


def test_chat_url_reports_an_unreachable_server_in_one_line(chat_error):
    error = chat_error("http://127.0.0.1:9/v1")
    assert "could not list models at http://127.0.0.1:9/v1: cannot connect (" in error
    assert error.endswith("is the server running at that URL?")


def test_chat_url_names_the_key_it_sent_and_how_to_send_the_right_one(server, chat_error):
    assert chat_error(server, "--api-key", "wrong").endswith(
        "the server refused the API key (HTTP 401; sent the key given with --api-key): pass the server's key with "
        "--api-key")
    assert chat_error(server).endswith(
        "the server refused the API key (HTTP 401; sent no key ($OPENAI_API_KEY is not set)): set $OPENAI_API_KEY "
        "to the server's key, or pass it with --api-key")


def test_chat_url_says_to_name_the_model_when_the_server_lists_none(chat_error):
    with ScriptedServer({"scripts": {}}) as empty:
        assert chat_error(empty.base_url).endswith(
            f"could not list models at {empty.base_url}: the endpoint lists no models; pass --model")
