"""Byte-level BPE (HF `tokenizers`), special tokens, and the one chat template.

Chat format (every turn ends with <|end|>; tool calls are JSON between <|tool_call|> markers):

    <|bos|><|system|>You are helpful.

    # Tools
    {"name": "calculator", "description": ..., "parameters": {...}}<|end|>
    <|user|>What is 2+3?<|end|>
    <|assistant|><|tool_call|>{"name": "calculator", "arguments": {"expression": "2+3"}}<|/tool_call|><|end|>
    <|tool|>5<|end|>
    <|assistant|>It is 5.<|end|>

Text from users, tools and models is encoded with special tokens *disabled*, so a message that
contains the string "<|end|>" cannot forge a turn boundary; special ids are only ever inserted by
the template itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm

from lmstack.errors import LmstackError

BOS = "<|bos|>"
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
TOOL = "<|tool|>"
END = "<|end|>"
TOOL_CALL_START = "<|tool_call|>"
TOOL_CALL_END = "<|/tool_call|>"
SPECIAL_TOKENS = [BOS, PAD, SYSTEM, USER, ASSISTANT, TOOL, END, TOOL_CALL_START, TOOL_CALL_END]
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT, "tool": TOOL}
# Names other tokenizers use for the document separator (GPT-2, Llama), for imported checkpoints.
BOS_ALIASES = [BOS, "<|endoftext|>", "<s>", "<|begin_of_text|>"]


class TokenizerError(LmstackError):
    """A user-caused tokenizer problem (bad vocab size, missing file, message the template can't render)."""


@dataclass
class ParsedToolCall:
    name: str | None
    arguments: dict[str, Any] | None
    raw: str
    error: str | None = None  # why the call did not parse, for the model to correct


@dataclass
class RenderedChat:
    ids: list[int]
    loss_mask: list[int]  # 1 where the token is trained on (assistant output), else 0
    spans: list[tuple[str, int, int]] = field(default_factory=list)  # (role, start, end) token spans


class Tokenizer:
    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        self.hf.encode_special_tokens = True  # text never turns into special ids (see module doc)
        self.special = {t: self.hf.token_to_id(t) for t in SPECIAL_TOKENS if self.hf.token_to_id(t) is not None}
        bos = next((self.hf.token_to_id(t) for t in BOS_ALIASES if self.hf.token_to_id(t) is not None), None)
        self.bos_id: int | None = bos

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, total: int | None = None,
              show_progress: bool = True, min_frequency: int = 2) -> "Tokenizer":
        minimum = 256 + len(SPECIAL_TOKENS)
        if vocab_size < minimum:
            raise TokenizerError(
                f"vocab_size={vocab_size} is too small: 256 byte tokens + {len(SPECIAL_TOKENS)} special tokens "
                f"need at least {minimum}; choose a vocab size of at least {minimum} (e.g. 4096)")
        if min_frequency < 0:
            raise TokenizerError(f"min_frequency={min_frequency} is negative; use 0 or more "
                                 "(--min-frequency, default 2)")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        seen = {"docs": 0}

        def counted() -> Iterator[str]:
            # `with` closes the bar even when the corpus raises, so an error prints on its own line
            with tqdm(texts, total=total, desc="tokenizer: reading corpus", unit="doc",
                      disable=not show_progress) as bar:
                for text in bar:
                    seen["docs"] += 1
                    yield text

        hf.train_from_iterator(counted(), trainer=trainer, length=total)
        if seen["docs"] == 0:
            raise TokenizerError("the corpus is empty: no documents to train the tokenizer on; "
                                 "point the source at a directory or file with text in it")
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"no tokenizer at '{path}'; train one with `lmstack tokenizer train` "
                                 "or pass a checkpoint dir that has tokenizer.json")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as err:  # tokenizers raises a bare Exception on a malformed file
            raise TokenizerError(f"'{path}' is not a valid tokenizer.json: {err}") from None

    def save(self, path: str | Path) -> None:
        from lmstack.atomic import atomic_write

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        atomic_write(path, lambda tmp: self.hf.save(str(tmp)))

    # ---- plain text ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """The ids of `encode` and where each token's text starts in `text` (a character index)."""
        encoding = self.hf.encode(text, add_special_tokens=False)
        return encoding.ids, [start for start, _ in encoding.offsets]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # The same ids as encode_batch without the character offsets it also tracks: the stdlib corpus in 5.7 s
        # instead of 15.6 (one thread).
        return [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def token_str(self, token_id: int) -> str:
        """One token as text (for logprob displays); partial UTF-8 bytes show as U+FFFD."""
        return self.hf.decode([token_id], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes of one token (byte-level BPE), for OpenAI's `bytes` logprob field."""
        piece = self.hf.id_to_token(token_id)
        if piece is None:
            return b""
        if piece in self.special or self.hf.decoder is None or not isinstance(self.hf.pre_tokenizer, pre_tokenizers.ByteLevel):
            return self.token_str(token_id).encode()
        return bytes(_BYTE_DECODER.get(ch, 0) for ch in piece)

    def id(self, token: str) -> int:
        if token not in self.special:
            raise TokenizerError(f"this tokenizer has no '{token}' token; it was not trained by lmstack "
                                 "(imported tokenizers have no chat tokens: fine-tune with a lmstack tokenizer)")
        return self.special[token]

    @property
    def has_chat_tokens(self) -> bool:
        return all(t in self.special for t in SPECIAL_TOKENS)

    @property
    def end_id(self) -> int:
        return self.id(END)

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end generation by default: end of turn, and bos (end of document)."""
        ids = [self.special[END]] if END in self.special else []
        return ids + ([self.bos_id] if self.bos_id is not None else [])

    # ---- chat ---------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = False) -> RenderedChat:
        """Render OpenAI-format messages (+ tool schemas) to ids and a loss mask over assistant output."""
        if not self.has_chat_tokens:
            self.id(SYSTEM)  # raises the explanatory error
        ids: list[int] = [self.bos_id]
        mask: list[int] = [0]
        spans: list[tuple[str, int, int]] = []
        messages = list(messages)
        if tools:
            tool_text = "# Tools\n" + "\n".join(json.dumps(_tool_schema(t), ensure_ascii=False) for t in tools)
            if messages and messages[0].get("role") == "system":
                first = dict(messages[0])
                first["content"] = f"{content_text(first.get('content'))}\n\n{tool_text}"
                messages[0] = first
            else:
                messages.insert(0, {"role": "system", "content": tool_text})
        for i, message in enumerate(messages):
            role = message.get("role")
            if role == "developer":
                role = "system"
            if role not in ROLE_TOKENS:
                raise TokenizerError(f"message {i}: unknown role {role!r}; use system, user, assistant or tool")
            start = len(ids)
            ids.append(self.special[ROLE_TOKENS[role]])
            mask.append(0)
            body = self._render_body(message, role)
            trained = 1 if role == "assistant" and message.get("weight", 1) else 0
            ids.extend(body)
            mask.extend([trained] * len(body))
            spans.append((role, start, len(ids)))
        if add_generation_prompt:
            ids.append(self.special[ASSISTANT])
            mask.append(0)
        return RenderedChat(ids, mask, spans)

    def _render_body(self, message: dict[str, Any], role: str) -> list[int]:
        """The ids of one turn after its role token, ending with <|end|>."""
        out = self.encode(content_text(message.get("content")))
        if role == "assistant":
            for call in message.get("tool_calls") or []:
                fn = call.get("function", call)
                args = fn.get("arguments", {})
                if isinstance(args, str):
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError:
                        pass  # keep the model's malformed text as it was, so training sees what happened
                payload = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False)
                out += [self.special[TOOL_CALL_START]] + self.encode(payload) + [self.special[TOOL_CALL_END]]
        return out + [self.special[END]]

    def parse_assistant(self, text: str) -> tuple[str, list[ParsedToolCall]]:
        """Split generated assistant text (special tokens kept) into content and tool calls."""
        content_parts: list[str] = []
        calls: list[ParsedToolCall] = []
        rest = text.split(END, 1)[0]
        while TOOL_CALL_START in rest:
            before, after = rest.split(TOOL_CALL_START, 1)
            content_parts.append(before)
            raw, closed, rest = after.partition(TOOL_CALL_END)
            calls.append(parse_tool_call(raw.strip(), closed=bool(closed)))
        content_parts.append(rest)
        return "".join(content_parts).strip(), calls


def parse_tool_call(raw: str, closed: bool = True) -> ParsedToolCall:
    if not closed:
        return ParsedToolCall(None, None, raw, f"tool call not closed with {TOOL_CALL_END}")
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as err:
        return ParsedToolCall(None, None, raw, f"tool call is not valid JSON: {err}")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ParsedToolCall(None, None, raw, 'tool call must be {"name": ..., "arguments": {...}}')
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return ParsedToolCall(obj["name"], None, raw, "tool call arguments are not a JSON object")
    if not isinstance(args, dict):
        return ParsedToolCall(obj["name"], None, raw, "tool call arguments must be a JSON object")
    return ParsedToolCall(obj["name"], args, raw)


def content_text(content: Any) -> str:
    """OpenAI content is a string, None, or a list of parts; text parts are joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise TokenizerError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def _tool_schema(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function", tool)
    out = {"name": fn.get("name")}
    if fn.get("description"):
        out["description"] = fn["description"]
    out["parameters"] = fn.get("parameters", {"type": "object", "properties": {}})
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE tokens are written in."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))


_BYTE_DECODER = {ch: b for b, ch in _bytes_to_unicode().items()}
