"""`lmstack sample`, `chat` and `inspect` on a tiny checkpoint, through the real CLI."""

import contextlib
import dataclasses
import io
import signal

import pytest
import torch
from cli_testing import one_line_error
from infer_helpers import tiny_model

from lmstack.cli import main
from lmstack.infer.chat import EngineSource, chat_loop
from lmstack.infer.commands import ENGINE_SETTINGS
from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams
from lmstack.model.checkpoint import save_model_dir


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model_dir(path, tiny_model("llama", vocab_size=tokenizer.vocab_size), tokenizer)
    return path


def test_sample_streams_the_same_text_as_the_engine(checkpoint, capsys):
    assert main(["sample", str(checkpoint), "--prompt", "Hello", "--max-tokens", "12", "--temperature", "0",
                 "--set", "dtype=float32"]) == 0
    printed = capsys.readouterr().out
    engine = Engine.from_checkpoint(checkpoint, EngineConfig(dtype="float32"))
    expected = engine.generate(["Hello"], SamplingParams(max_tokens=12, temperature=0))[0].text
    assert printed == "Hello" + expected + "\n"
    assert main(["sample", str(checkpoint), "-n", "2", "--max-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.count("--- sample") == 2


def test_sample_reports_bad_settings_as_one_line(checkpoint, capsys):
    assert main(["sample", str(checkpoint), "--top-p", "0"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
    assert main(["sample", str(checkpoint), "--max-tokens", "100000"]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err


SHORT_CONTEXT = 40  # shorter than sample's default length, and than chat's defaults used to be


@pytest.fixture(scope="module")
def short_checkpoint(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("ckpt") / "short"
    save_model_dir(path, tiny_model("llama", vocab_size=tokenizer.vocab_size, block_size=SHORT_CONTEXT), tokenizer)
    return path


def test_sample_by_default_generates_what_the_context_leaves(short_checkpoint, capsys):
    prompt = "The quick brown fox"
    assert main(["sample", str(short_checkpoint), "--prompt", prompt, "--temperature", "0",
                 "--set", "dtype=float32"]) == 0
    printed = capsys.readouterr().out
    engine = Engine.from_checkpoint(short_checkpoint, EngineConfig(dtype="float32"))
    room = SHORT_CONTEXT - len(engine.prompt_ids(prompt))
    expected = engine.generate([prompt], SamplingParams(max_tokens=room, temperature=0))[0].outputs[0]
    assert expected.finish_reason == "length" and len(expected.token_ids) == room
    assert printed == prompt + expected.text + "\n"
    # A length the user asks for is kept: beyond the context it is an error, as is a prompt that fills it.
    assert main(["sample", str(short_checkpoint), "--prompt", prompt, "--max-tokens", str(room + 1)]) == 2
    assert "exceeds the model's context of 40 tokens" in capsys.readouterr().err
    assert main(["sample", str(short_checkpoint), "--prompt", "The quick brown fox jumps over the lazy dog. " * 6]) == 2
    assert "fills the model's context of 40 tokens" in capsys.readouterr().err


def test_a_sample_the_engine_refuses_prints_no_prompt(cli, short_checkpoint):
    """The prompt was echoed to stdout (without a newline) before the request was refused."""
    done = cli("sample", short_checkpoint, "--prompt", "def main(", "--max-tokens", "1000")
    assert "exceeds the model's context of 40 tokens" in one_line_error(done, "sample")
    assert done.stdout == ""


HELLO = [{"role": "user", "content": "Hello world!"}]


def greedy_chat(checkpoint):
    """(engine, the chat source `lmstack chat` makes of it, greedy; a first turn, the reply it must get)."""
    engine = Engine.from_checkpoint(checkpoint, EngineConfig(dtype="float32"))
    prompt = engine.tokenizer.render(HELLO, add_generation_prompt=True).ids
    expected = engine.generate([prompt], SamplingParams(max_tokens=SHORT_CONTEXT - len(prompt), temperature=0))[0].text
    # no max_tokens, what `lmstack chat` asks for when --max-tokens is not given
    return engine, EngineSource(engine, SamplingParams(max_tokens=None, temperature=0)), HELLO, expected


def test_chat_replies_fit_the_context_and_a_turn_that_cannot_is_taken_back(short_checkpoint):
    engine, source, hello, expected = greedy_chat(short_checkpoint)
    lines = iter(["Hello world!", "The quick brown fox jumps over the lazy dog. " * 3, "/reset", "Hello world!",
                  "/exit"])
    out = io.StringIO()
    messages = chat_loop(source, read=lambda prompt: next(lines), out=out)
    printed = out.getvalue()
    assert printed.count(f"assistant> {expected}\n") == 2
    assert "error: the conversation is" in printed and "leaves no room for a reply" in printed
    assert messages == hello + [{"role": "assistant", "content": expected}]
    assert engine.num_free_blocks == engine.num_total_blocks  # nothing left running


class CtrlCAtFirstPiece(io.StringIO):
    """The terminal: the user presses Ctrl-C (a real SIGINT) as the first piece of the first reply is printed."""

    def __init__(self):
        super().__init__()
        self.pressed = False

    def write(self, text: str) -> int:
        replying = self.getvalue().endswith("assistant> ")
        written = super().write(text)
        if replying and text and not self.pressed:
            self.pressed = True
            signal.raise_signal(signal.SIGINT)
        return written


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler (KeyboardInterrupt), which `lmstack chat` has in a terminal: a shell starts a
    background job (`make test &`) with SIGINT ignored, and Python then installs none, so the press did nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_a_chat_reply_and_the_conversation_goes_on(short_checkpoint, ctrl_c_raises):
    """Ctrl-C during a reply ended `lmstack chat` ("interrupted"), and the conversation with it."""
    engine, source, hello, expected = greedy_chat(short_checkpoint)
    lines = iter(["Tell me a story", "Hello world!", "/exit"])
    out = CtrlCAtFirstPiece()
    messages = chat_loop(source, read=lambda prompt: next(lines), out=out)
    assert out.pressed and "(reply stopped and taken back" in out.getvalue()
    assert messages == hello + [{"role": "assistant", "content": expected}]  # the stopped turn is not in it
    assert engine.num_free_blocks == engine.num_total_blocks


def test_inspect_prints_the_report_and_writes_pngs(checkpoint, tmp_path, capsys):
    assert main(["inspect", str(checkpoint), "--prompt", "The quick brown fox", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "logit lens" in printed and "no broken attention pattern found" in printed
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["attention_layer00.png", "attention_layer01.png", "token_scores.png"]
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in pngs)


def test_inspect_names_an_out_dir_given_with_a_slash_once(cli, checkpoint, tmp_path):
    """`--out inspect/` was reported as "wrote 3 PNGs to inspect//"."""
    done = cli("inspect", checkpoint, "--prompt", "a", "--out", f"{tmp_path / 'pngs'}/")
    assert done.returncode == 0, done.stderr
    assert f"\nwrote 3 PNGs to {tmp_path / 'pngs'}/ (attention_layerNN.png, token_scores.png)\n" in done.stdout


def test_chat_loop_keeps_the_conversation_and_streams(checkpoint):
    engine = Engine.from_checkpoint(checkpoint, EngineConfig(dtype="float32"))

    class Recorded:  # a token source that is not the engine: chat only needs .stream(messages)
        def __init__(self):
            self.seen = []

        def stream(self, messages):
            self.seen.append([m["content"] for m in messages])
            yield from ["hi ", "there"]

    source = Recorded()
    lines = iter(["first", "second", "/exit"])
    out = __import__("io").StringIO()
    messages = chat_loop(source, system="be brief", read=lambda prompt: next(lines), out=out)
    assert source.seen == [["be brief", "first"], ["be brief", "first", "hi there", "second"]]
    assert messages[-1] == {"role": "assistant", "content": "hi there"}
    assert engine.tokenizer.has_chat_tokens


def test_chat_loop_prints_to_the_stdout_of_the_call():
    """Its default `out` was the sys.stdout of import time: under a later redirect_stdout the prompts went to the new
    one (input() writes them there) and the replies to the old."""
    class Canned:
        def stream(self, messages):
            yield from ["hi ", "there"]

    lines = iter(["first", "/exit"])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        chat_loop(Canned(), read=lambda prompt: next(lines))
    assert out.getvalue().endswith("assistant> hi there\n")


def test_chat_command_streams_a_reply_from_the_local_checkpoint(cli, checkpoint, monkeypatch):
    # In this process, the user's lines as its stdin (read by the same input() as in a terminal): a new interpreter
    # took seconds of make test.
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n/exit\n"))
    run = cli("chat", checkpoint, "--max-tokens", "8", "--temperature", "0")
    assert run.returncode == 0, run.stderr
    assert "assistant> " in run.stdout


def test_the_help_lists_every_engine_setting():
    assert ENGINE_SETTINGS.split(", ") == [f.name for f in dataclasses.fields(EngineConfig)]


def test_sample_and_inspect_name_a_truncated_weights_file(cli, checkpoint, tmp_path):
    """safetensors' own error was a traceback from both."""
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (damaged / name).write_bytes((checkpoint / name).read_bytes())
    (damaged / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes()[:100])
    for args in (["sample", damaged], ["inspect", damaged, "--prompt", "a", "--out", tmp_path / "pngs"]):
        message = one_line_error(cli(*args), args[0])
        assert f"'{damaged}/model.safetensors' cannot be read (" in message and "truncated" in message
    assert not (tmp_path / "pngs").exists()


def test_sample_refuses_a_kv_budget_too_small_for_one_block_before_reading_the_weights(cli, checkpoint, tmp_path):
    """The engine found it once the weights were loaded, which takes a while for a big model. Truncated weights show
    that they are not read: the budget's error comes first."""
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (damaged / name).write_bytes((checkpoint / name).read_bytes())
    (damaged / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes()[:100])
    message = one_line_error(cli("sample", damaged, "--set", "kv_memory_mb=0.005", "--set", "dtype=float32"), "sample")
    # a block of the tiny llama in float32: k and v x 2 layers x 16 tokens x 2 KV heads x 16 dims x 4 bytes = 8 KiB
    assert message.endswith("engine kv_memory_mb=0.005 holds no KV block of this model: one block (16 tokens, float32) "
                            "takes 0.0078125 MiB; set kv_memory_mb to at least 0.0078125, or set num_blocks")


def test_inspect_checks_out_and_top_before_the_work(cli, checkpoint, tmp_path):
    """--out naming a file was a FileExistsError traceback after the whole inspection, one under a file said only
    "Not a directory", and --top -1 was torch's "selected index k out of range"."""
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    message = one_line_error(cli("inspect", checkpoint, "--prompt", "a", "--out", notes), "inspect")
    assert message.endswith(f"cannot write '{notes}': it is a file, not a directory; choose a writable location")
    message = one_line_error(cli("inspect", checkpoint, "--prompt", "a", "--out", notes / "pngs"), "inspect")
    assert f"'{notes}' is a file, not a directory" in message
    assert notes.read_text() == "keep me"
    for top in ("0", "-1"):
        message = one_line_error(cli("inspect", checkpoint, "--prompt", "a", "--top", top,
                                         "--out", tmp_path / "pngs"), "inspect")
        assert message.endswith(f"--top {top}: show at least 1 token per layer (default 5)")
    assert not (tmp_path / "pngs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_each_command_names_its_own_way_to_choose_the_cpu(cli, checkpoint, tmp_path):
    """The hint said `--set device=cpu` everywhere; inspect takes --device, sample --set device."""
    for args, hint in ((["inspect", checkpoint, "--prompt", "a", "--device", "cuda", "--out", tmp_path / "p"],
                        "use --device cpu"),
                       (["sample", checkpoint, "--set", "device=cuda"], "use --set device=cpu")):
        assert one_line_error(cli(*args), args[0]).endswith(f"no CUDA/ROCm GPU is visible; {hint}")


def test_sample_and_chat_without_a_tokenizer_name_the_checkpoint(cli, tmp_path, tokenizer):
    """sample said "pass token ids" (which the CLI cannot), chat named no dir."""
    bare = save_model_dir(tmp_path / "bare", tiny_model("llama", vocab_size=tokenizer.vocab_size), None)
    for command in ("sample", "chat"):
        message = one_line_error(cli(command, bare), command)
        assert message.endswith(f"'{bare}' has no tokenizer.json, which this command needs to read and write text; "
                                "copy the tokenizer.json the model was trained with into it")
