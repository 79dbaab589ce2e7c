"""Chat data for fine-tuning: load OpenAI-format JSONL, render with the loss mask, truncate, pack.

- Loading checks each line and skips a bad one (malformed JSON, no assistant turn, a tool result
  without a matching call) with a counted warning that names the line; a run never dies mid-way on data.
- Rendering is the tokenizer's one chat template; the mask trains only assistant turns (text and tool
  calls). A next-token target t+1 is trained iff loss_mask[t+1] == 1.
- Truncation drops whole turns from the end, so a tool call is never cut in half; a conversation whose
  first assistant turn does not fit is skipped (counted).
- Packing puts several short conversations into one window; `document_mask` keeps attention inside each
  conversation and positions restart at 0 for each, so a packed window computes exactly what the
  conversations would alone.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from lmstack.errors import LmstackError
from lmstack.tokenizer import Tokenizer, TokenizerError


class ChatDataError(LmstackError):
    """A chat dataset that cannot be used at all (missing file, nothing usable in it)."""


CHAT_LINES = "one {\"messages\": [...]} object per line (e.g. from `lmstack data toolcalls`)"
FIRST_TURN_TOO_LONG = "first assistant turn longer than the context"
LONGER_THAN_CONTEXT = "longer than the context"
TOO_LONG = (FIRST_TURN_TOO_LONG, LONGER_THAN_CONTEXT)  # the skips a longer seq_len would have kept


@dataclass
class LoadReport:
    """What loading skipped and why; `warnings` name the line of each skipped record."""
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.warnings.append(f"{where}: skipped ({reason})")

    def drop(self, reason: str, where: str) -> None:
        """Skip a record `read_jsonl` kept, that a later step (rendering, the length check) cannot use."""
        self.kept -= 1
        self.skip(reason, where)

    def fix(self, needs: str) -> str:
        """What to change when nothing was usable: a longer context when length was all that stood in the way,
        else the lines themselves (`needs`: what a line must hold)."""
        if self.skipped and all(reason in TOO_LONG for reason in self.skipped):
            return "raise the context with --set seq_len=N (at most the model's block_size), or shorten them"
        return f"each line needs {needs}"

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.kept} conversations"
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return f"{self.kept} conversations kept, {sum(self.skipped.values())} skipped: {reasons}"

    def warning_lines(self, limit: int = 5) -> list[str]:
        """The first `limit` skipped records by name, then how many more: enough to find the bad lines."""
        more = len(self.warnings) - limit
        return self.warnings[:limit] + ([f"... and {more} more skipped records"] if more > 0 else [])


def conversation_problem(record: Any) -> str | None:
    """Why a record is not a trainable conversation, or None if it is."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        return "no 'messages' list"
    open_calls: list[str | None] = []
    has_assistant = False
    for message in record["messages"]:
        if not isinstance(message, dict):
            return "a message is not an object"
        role = message.get("role")
        if role == "assistant":
            has_assistant = True
            open_calls = [c.get("id") for c in message.get("tool_calls") or [] if isinstance(c, dict)]
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not open_calls or (call_id is not None and call_id not in open_calls and None not in open_calls):
                return "tool message without a matching tool call"
        elif role not in ("system", "developer", "user"):
            return f"unknown role {role!r}"
    if not has_assistant:
        return "no assistant turn"
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, list):
        return "'tools' is not a list"
    return None


def read_jsonl(path: str | Path, report: LoadReport, check=conversation_problem,
               lines: str = CHAT_LINES) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where: file and line number, record) for the usable records of a JSONL file; bad lines are skipped
    and counted in `report`. `lines` says what the file should hold, for the error when there is no such file."""
    path = Path(path)
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "is not a regular file" if path.exists() else "does not exist"
        raise ChatDataError(f"data file '{path}' {problem}; pass a JSONL file with {lines}")
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                report.skip("malformed JSON", f"{where} ({err.msg})")
                continue
            problem = check(record)
            if problem:
                report.skip(problem, where)
                continue
            report.kept += 1
            yield where, record


@dataclass
class Example:
    """One rendered conversation: ids and the mask of trained ids (same length)."""
    ids: list[int]
    loss_mask: list[int]


def truncate(ids: list[int], loss_mask: list[int], spans: list[tuple[str, int, int]],
             max_tokens: int) -> tuple[list[int], list[int]] | None:
    """Keep the longest prefix of whole turns that fits and ends on an assistant turn, or None."""
    if len(ids) <= max_tokens:
        return ids, loss_mask
    end = None
    for role, _, span_end in spans:
        if span_end > max_tokens:
            break
        if role == "assistant":
            end = span_end
    if end is None:
        return None
    return ids[:end], loss_mask[:end]


def render_examples(tokenizer: Tokenizer, records: Iterator[dict[str, Any]], max_tokens: int,
                    report: LoadReport) -> list[Example]:
    """Render records to examples of at most `max_tokens` ids (window length + 1 for the shifted target)."""
    examples = []
    for where, record in records:
        try:
            rendered = tokenizer.render(record["messages"], record.get("tools"))
        except TokenizerError as err:
            report.drop("cannot render", f"{where} ({err})")
            continue
        cut = truncate(rendered.ids, rendered.loss_mask, rendered.spans, max_tokens)
        if cut is None or not any(cut[1][1:]):
            report.drop(FIRST_TURN_TOO_LONG, where)
            continue
        examples.append(Example(*cut))
    return examples


def load_chat_examples(path: str | Path, tokenizer: Tokenizer, seq_len: int, quiet: bool = False) -> tuple[list[Example], LoadReport]:
    """JSONL file -> rendered, truncated examples for windows of `seq_len` tokens."""
    report = LoadReport()
    examples = render_examples(tokenizer, read_jsonl(path, report), seq_len + 1, report)
    if not quiet:
        for warning in report.warning_lines():
            print(f"warning: {warning}", file=sys.stderr)
    if not examples:
        raise ChatDataError(f"'{path}' has no usable conversations ({report.summary()}); "
                            + report.fix("a 'messages' list with at least one assistant turn"))
    return examples, report


# ---- packing -----------------------------------------------------------------------------------
@dataclass
class PackedBatch:
    inputs: torch.Tensor     # (B, T) token ids
    targets: torch.Tensor    # (B, T) next-token ids, -1 where not trained (prompt, padding, boundaries)
    positions: torch.Tensor  # (B, T) position inside each conversation, restarting at 0
    doc_ids: torch.Tensor    # (B, T) which conversation each position belongs to; -1 = padding

    def to(self, device: torch.device | str) -> "PackedBatch":
        return PackedBatch(*(t.to(device, non_blocking=True) for t in
                             (self.inputs, self.targets, self.positions, self.doc_ids)))

    @property
    def attn_mask(self) -> torch.Tensor:
        return document_mask(self.doc_ids)


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) conversation ids -> (B, 1, T, T) bool: causal, and only within the same conversation.

    Padding (-1) is its own document, so every row keeps at least its diagonal (no all-masked rows,
    which would make attention NaN).
    """
    T = doc_ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same = doc_ids.unsqueeze(2) == doc_ids.unsqueeze(1)
    return (same & causal).unsqueeze(1)


def pack_windows(examples: list[Example], seq_len: int) -> list[list[int]]:
    """First-fit-decreasing: group example indices so each group's (len - 1) sum fits `seq_len`."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].ids))
    windows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        need = len(examples[i].ids) - 1  # an example of L ids gives L - 1 (input, target) pairs
        assert need <= seq_len, "examples are truncated to seq_len + 1 ids before packing"
        slot = next((w for w, room in enumerate(free) if room >= need), None)
        if slot is None:
            windows.append([])
            free.append(seq_len)
            slot = len(windows) - 1
        windows[slot].append(i)
        free[slot] -= need
    return windows


def collate(examples: list[Example], windows: list[list[int]], seq_len: int, pad_id: int) -> PackedBatch:
    """Lay the examples of each window end to end; pad the rest."""
    B = len(windows)
    inputs = torch.full((B, seq_len), pad_id, dtype=torch.long)
    targets = torch.full((B, seq_len), -1, dtype=torch.long)
    positions = torch.zeros((B, seq_len), dtype=torch.long)
    doc_ids = torch.full((B, seq_len), -1, dtype=torch.long)
    for row, window in enumerate(windows):
        at = 0
        for doc, index in enumerate(window):
            ids = torch.tensor(examples[index].ids)
            mask = torch.tensor(examples[index].loss_mask[1:], dtype=torch.bool)
            n = len(ids) - 1
            inputs[row, at:at + n] = ids[:-1]
            targets[row, at:at + n] = torch.where(mask, ids[1:], -1)
            positions[row, at:at + n] = torch.arange(n)
            doc_ids[row, at:at + n] = doc
            at += n
        positions[row, at:] = torch.arange(seq_len - at)  # padding: any in-range position will do
    return PackedBatch(inputs, targets, positions, doc_ids)


class PackedChatLoader:
    """Endless shuffled batches of packed windows, sharded by rank, resumable by (epoch, cursor)."""

    def __init__(self, examples: list[Example], batch_size: int, seq_len: int, pad_id: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0):
        self.examples, self.batch_size, self.seq_len, self.pad_id = examples, batch_size, seq_len, pad_id
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.windows = pack_windows(examples, seq_len)
        self.epoch, self.cursor = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        order = list(range(len(self.windows)))
        random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        return order

    @property
    def fill(self) -> float:
        """Fraction of window positions that hold a real token (packing efficiency)."""
        used = sum(len(e.ids) - 1 for e in self.examples)
        return used / (len(self.windows) * self.seq_len)

    def next_batch(self) -> PackedBatch:
        """The next `batch_size` windows for this rank (every rank steps through the same global order)."""
        step = self.batch_size * self.world_size
        if self.cursor + step > len(self._order) and self.cursor > 0:  # too few left: start the next epoch
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._epoch_order()
        # Modulo: a dataset smaller than one global batch repeats windows rather than failing.
        global_batch = [self._order[(self.cursor + k) % len(self._order)] for k in range(step)]
        chosen = global_batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        self.cursor += step
        return collate(self.examples, [self.windows[w] for w in chosen], self.seq_len, self.pad_id)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._epoch_order()
