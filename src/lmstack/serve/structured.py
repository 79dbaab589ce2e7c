"""Constrained decoding for response_format and forced tool calls, with llguidance grammars.

llguidance compiles a JSON schema (or a Lark grammar embedding JSON schemas) against our tokenizer's
vocabulary and, at each step, gives the set of tokens that keep the output a valid prefix. Once the
output is complete it allows only <|end|>, so the engine stops there. `GrammarConstraint` adapts
one matcher to the engine's per-sequence `LogitsConstraint` hook.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import jsonschema
import llguidance
import torch

from lmstack.serve.errors import APIError
from lmstack.tokenizer import TOOL_CALL_END, TOOL_CALL_START, Tokenizer

# Compact JSON with json.dumps' separators: no whitespace runs for a model to wander into.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
BIT_INDEX = torch.arange(32, dtype=torch.int32)


class GrammarConstraint:
    """One sequence's grammar state, as the engine's LogitsConstraint."""

    def __init__(self, matcher: llguidance.LLMatcher, end_id: int):
        self.matcher = matcher
        self.end_id = end_id

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor:
        words = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)
        allowed = ((words.unsqueeze(1) >> BIT_INDEX) & 1).flatten()[:vocab_size].bool()
        if len(allowed) < vocab_size:
            allowed = torch.cat([allowed, torch.zeros(vocab_size - len(allowed), dtype=torch.bool)])
        if self.matcher.is_error() or not allowed.any():  # never leave the sampler nothing to draw: end the turn
            allowed = torch.zeros(vocab_size, dtype=torch.bool)
            allowed[self.end_id] = True
        return allowed

    def advance(self, token_id: int) -> None:
        self.matcher.consume_token(token_id)


class Grammars:
    """Compiles grammars for one tokenizer (the vocabulary table is built once, at load)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int):
        self.end_id = tokenizer.end_id
        self.call_start = tokenizer.id(TOOL_CALL_START)
        self.call_end = tokenizer.id(TOOL_CALL_END)
        self.lltokenizer = llguidance.LLTokenizer(tokenizer.hf.to_str(), n_vocab=vocab_size, eos_token=self.end_id)

    def constraint(self, grammar: str) -> Callable[[], GrammarConstraint]:
        """The per-sequence factory SamplingParams.constraint takes."""
        return lambda: GrammarConstraint(llguidance.LLMatcher(self.lltokenizer, grammar), self.end_id)

    def json_schema(self, schema: dict[str, Any], param: str) -> str:
        """A grammar for one JSON value that validates against `schema`."""
        check_schema(schema, param)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
        return self._validated(grammar, param)

    def tool_calls(self, functions: list[dict[str, Any]], parallel: bool) -> str:
        """<|tool_call|>{"name": ..., "arguments": {...}}<|/tool_call|>, once or repeated, for these functions."""
        for i, fn in enumerate(functions):
            check_schema(fn["parameters"], f"tools[{i}].function.parameters")
        call_schema = {"anyOf": [{"type": "object", "properties": {"name": {"const": fn["name"]},
                                                                   "arguments": fn["parameters"]},
                                  "required": ["name", "arguments"], "additionalProperties": False}
                                 for fn in functions],
                       "x-guidance": {**JSON_OPTIONS, "lenient": True}}
        repeat = "+" if parallel else ""
        lark = (f"start: call{repeat}\n"
                f"call: <[{self.call_start}]> body <[{self.call_end}]>\n"
                f"body: %json {json.dumps(call_schema)}\n")
        return self._validated(llguidance.LLMatcher.grammar_from_lark(lark), "tools")

    def _validated(self, grammar: str, param: str) -> str:
        error = llguidance.LLMatcher.validate_grammar(grammar, self.lltokenizer)
        if error:
            raise APIError(f"{param}: the schema cannot be enforced: {error}", param=param, code="invalid_schema")
        return grammar


def check_schema(schema: Any, param: str) -> None:
    if not isinstance(schema, dict):
        raise APIError(f"{param} must be a JSON Schema object, got {type(schema).__name__}", param=param,
                       code="invalid_schema")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise APIError(f"{param} is not a valid JSON Schema: {err.message}", param=param,
                       code="invalid_schema") from None
