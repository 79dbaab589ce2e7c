"""Terminal chat: a loop that reads a line, streams the reply, and keeps the conversation.

The loop only needs a `TokenSource` -- something that turns the conversation so far into a stream
of text pieces. `EngineSource` runs a local checkpoint through our engine and chat template; a
remote OpenAI-compatible server is another source (the server layer adds it for `--url`).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Iterator, Protocol, TextIO

from lmstack.errors import LmstackError
from lmstack.infer.engine import Engine
from lmstack.infer.params import SamplingError, SamplingParams

Message = dict[str, Any]


class TokenSource(Protocol):
    def stream(self, messages: list[Message]) -> Iterator[str]:
        """Yield the assistant's reply to `messages` piece by piece, as it is generated."""


class EngineSource:
    """A local model: render with our chat template, generate with the engine, stop at end of turn.

    A reply stops at what the model's context leaves (params.max_tokens None: nothing else limits it, as in
    OpenAI's API without max_tokens), and at params.max_tokens when that is less: the conversation grows each
    turn, so a fixed length alone would stop fitting."""

    def __init__(self, engine: Engine, params: SamplingParams):
        if engine.tokenizer is None:
            from lmstack.tokenizer import TokenizerError

            raise TokenizerError("chat needs a tokenizer; the checkpoint dir has no tokenizer.json")
        self.engine = engine
        self.params = params

    def stream(self, messages: list[Message]) -> Iterator[str]:
        prompt = self.engine.tokenizer.render(messages, add_generation_prompt=True).ids
        room = self.engine.room_for(len(prompt))
        if room < 1:
            raise SamplingError(f"the conversation is {len(prompt)} tokens and leaves no room for a reply in the "
                                f"model's context of {self.engine.model.cfg.block_size} tokens; /reset starts over")
        params = dataclasses.replace(self.params, max_tokens=min(room, self.params.max_tokens or room))
        request_id = self.engine.add_request(prompt, params)
        try:
            while self.engine.has_unfinished():
                for event in self.engine.step():
                    if event.request_id == request_id and event.text:
                        yield event.text
        finally:
            if self.engine.has_unfinished():  # the reader stopped early (Ctrl-C): free the request's blocks
                self.engine.abort(request_id)
                self.engine.step()


HELP = "commands: /reset clears the conversation, /exit quits (or Ctrl-D)"


def chat_loop(source: TokenSource, system: str | None = None, read: Callable[[str], str] = input,
              out: TextIO | None = None) -> list[Message]:
    """Read user lines until EOF or /exit; stream each reply to `out` (default: sys.stdout at the call, where input()
    writes the prompt: the one bound at import went on printing there under a later redirect_stdout). Returns the
    conversation.

    A turn the source refuses (an lmstack error: the conversation outgrew the context, the server went away), or
    one stopped with Ctrl-C, is printed and taken back, user line and partial reply, so the conversation goes on
    from before it. Ctrl-C at the prompt quits."""
    out = out or sys.stdout
    base = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    print(HELP, file=out)
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            print(file=out)
            return messages
        if line in ("/exit", "/quit"):
            return messages
        if line == "/reset":
            messages = list(base)
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        print("assistant> ", end="", file=out, flush=True)
        reply = []
        pieces = source.stream(messages)
        try:
            for piece in pieces:
                reply.append(piece)
                print(piece, end="", file=out, flush=True)
        except LmstackError as error:
            messages.pop()
            print(f"\nerror: {error}", file=out)
            continue
        except KeyboardInterrupt:  # Ctrl-C stops the reply, as in other chat CLIs; at the prompt it quits
            messages.pop()
            print("\n(reply stopped and taken back; /exit or Ctrl-D quits)", file=out)
            continue
        finally:
            getattr(pieces, "close", lambda: None)()  # a generator stopped mid-reply frees its request now
        print(file=out)
        messages.append({"role": "assistant", "content": "".join(reply)})
