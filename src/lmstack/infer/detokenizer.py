"""Incremental detokenisation with stop strings: text comes out as soon as it is certain.

Two things are held back: a partial UTF-8 character (byte-level BPE splits characters across tokens;
the decoder shows U+FFFD until the rest arrives) and any tail of the text that could be the start of
a stop string. A stop string ends the text where it begins and is not emitted, or, with
`include_stop`, where it ends (vLLM's include_stop_str_in_output).
"""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: list[str], include_stop: bool = False):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.include_stop = include_stop
        self.ids: list[int] = []
        self.prefix_offset = 0  # ids[prefix_offset:read_offset] are decoded again for context
        self.read_offset = 0
        self.text = ""  # all text decoded so far (cut at a stop string once one is found)
        self.emitted = 0  # characters of `text` already handed out

    def add(self, token_id: int, find_stop: bool = True) -> tuple[str, bool]:
        """Add one token -> (text delta that is now certain, whether a stop string was found). find_stop=False
        (a sequence under min_tokens): no stop string is looked for, and nothing is held back for one."""
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        after = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        if not find_stop:
            return self.flush_decoded(), False
        if self.stop:
            # Held-back text never contains a whole stop string, so a match starts at or after `emitted`.
            # (start, end) of each stop string found; the earliest start wins, the first listed on a tie.
            found = [(p, p + len(s)) for p, s in ((self.text.find(s, self.emitted), s) for s in self.stop) if p >= 0]
            if found:
                start, end = min(found, key=lambda span: span[0])
                self.text = self.text[:end if self.include_stop else start]
                return self.flush_decoded(), True  # a partial character still undecoded lies past the stop
        delta = self.text[self.emitted:len(self.text) - self._stop_prefix_length()]
        self.emitted += len(delta)
        return delta, False

    def flush(self) -> str:
        """The held-back text (a partial character decodes as U+FFFD), when the sequence ends."""
        if self.read_offset < len(self.ids):
            before = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
            self.text += self.tokenizer.decode(self.ids[self.prefix_offset:])[len(before):]
            self.prefix_offset = self.read_offset = len(self.ids)
        return self.flush_decoded()

    def flush_decoded(self) -> str:
        """Every whole character decoded so far that is not out yet (a partial one still waits)."""
        delta = self.text[self.emitted:]
        self.emitted = len(self.text)
        return delta

    def _stop_prefix_length(self) -> int:
        pending = self.text[self.emitted:]
        for length in range(min(len(pending), max(map(len, self.stop), default=1) - 1), 0, -1):
            if any(s.startswith(pending[-length:]) for s in self.stop):
                return length
        return 0
