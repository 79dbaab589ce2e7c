"""Synthetic tool-use conversations: the assistant must call tools to answer, and a checker can score it.

Three tools -- a calculator, a small key-value store of product facts, a unit converter -- and six kinds
of conversation: one call of each tool, two-call chains (look up then compute, compute then convert),
tool errors the assistant must react to (retry a busy tool, report a missing key or a division by
zero), and questions that need no tool at all. Every sample carries `expected` (the calls in order and
the final answer), so rewards and evals score it without parsing the conversation again.

Generation is seeded and deterministic. The held-out split is disjoint by construction: a question
belongs to `test` iff a hash of its text says so, whatever the seed or the number of samples.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import random
from pathlib import Path
from typing import Any, Callable, Iterator

from lmstack.atomic import atomic_write_text, refuse_to_replace
from lmstack.errors import LmstackError

# Kept short: every conversation carries these in its system turn, and the demo model's context is small.
TOOL_SCHEMAS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "calculator", "parameters": {
        "type": "object", "properties": {"expression": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "lookup", "description": "key like 'apple price'", "parameters": {
        "type": "object", "properties": {"key": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "convert", "parameters": {"type": "object", "properties": {
        "value": {"type": "number"}, "from_unit": {"type": "string"}, "to_unit": {"type": "string"}}}}},
]

ITEMS = ["apple", "banana", "cherry", "lemon", "mango", "melon", "onion", "pepper", "potato", "tomato",
         "bread", "butter", "cheese", "coffee", "honey", "rice", "salt", "sugar", "tea", "milk"]
MISSING_ITEMS = ["kiwi", "papaya", "quince", "olive", "radish", "walnut"]  # never in the store
ATTRIBUTES = {"price": "{item} price", "stock": "{item} stock", "weight": "{item} weight"}
# The store is fixed (not per seed) so the tool answers the same in training, GRPO and evals.
_store_rng = random.Random(0)
STORE: dict[str, int] = {f"{item} {attr}": _store_rng.randint(2, 60) for item in ITEMS for attr in ATTRIBUTES}

UNITS: dict[tuple[str, str], Callable[[float], float]] = {
    ("km", "m"): lambda x: x * 1000, ("m", "cm"): lambda x: x * 100, ("m", "km"): lambda x: x / 1000,
    ("kg", "g"): lambda x: x * 1000, ("g", "kg"): lambda x: x / 1000, ("h", "min"): lambda x: x * 60,
    ("min", "s"): lambda x: x * 60, ("mi", "km"): lambda x: x * 1.609344, ("lb", "kg"): lambda x: x * 0.45359237,
    ("c", "f"): lambda x: x * 9 / 5 + 32, ("f", "c"): lambda x: (x - 32) * 5 / 9, ("ft", "m"): lambda x: x * 0.3048,
}
UNIT_WORDS = {"km": "kilometers", "m": "meters", "cm": "centimeters", "kg": "kilograms", "g": "grams",
              "h": "hours", "min": "minutes", "s": "seconds", "mi": "miles", "lb": "pounds",
              "c": "degrees Celsius", "f": "degrees Fahrenheit", "ft": "feet"}
BUSY_ERROR = "error: the tool is busy, try again"
SPLIT_FILES = ("train.jsonl", "test.jsonl")  # all `write_splits` writes


class ToolCallError(LmstackError):
    """Bad arguments to the synthetic generator (sizes, output dir)."""


# ---- the tools ---------------------------------------------------------------------------------
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval_arithmetic(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval_arithmetic(node.left), _eval_arithmetic(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_arithmetic(node.operand)
    raise ValueError("only numbers and + - * / are allowed")


def format_number(x: float) -> str:
    """Integers print without a decimal point, the rest with at most 2 decimals."""
    x = round(float(x), 2)
    return str(int(x)) if x.is_integer() else f"{x:g}"


def run_tool(name: str, arguments: dict[str, Any]) -> str:
    """Execute one synthetic tool; failures come back as 'error: ...' text, as a real tool's would."""
    try:
        if name == "calculator":
            return format_number(_eval_arithmetic(ast.parse(str(arguments["expression"]), mode="eval").body))
        if name == "lookup":
            key = str(arguments["key"]).strip().lower()
            return str(STORE[key]) if key in STORE else f"error: no entry for '{key}'"
        if name == "convert":
            pair = (str(arguments["from_unit"]).lower(), str(arguments["to_unit"]).lower())
            if pair not in UNITS:
                return f"error: cannot convert {pair[0]} to {pair[1]}"
            return format_number(UNITS[pair](float(arguments["value"])))
        return f"error: unknown tool '{name}'"
    except ZeroDivisionError:
        return "error: division by zero"
    except (KeyError, ValueError, TypeError, SyntaxError) as err:
        return f"error: bad arguments for {name}: {err}"


# ---- building conversations --------------------------------------------------------------------
class _Conversation:
    """Accumulates messages and the expected calls of one sample."""

    def __init__(self, question: str):
        self.messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
        self.calls: list[dict[str, Any]] = []

    def call(self, name: str, arguments: dict[str, Any], result: str | None = None) -> str:
        call_id = f"call_{len(self.calls) + 1}"
        self.calls.append({"name": name, "arguments": arguments})
        self.messages.append({"role": "assistant", "content": None, "tool_calls": [{
            "id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]})
        result = run_tool(name, arguments) if result is None else result
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
        return result

    def answer(self, text: str, expected: str, kind: str) -> dict[str, Any]:
        self.messages.append({"role": "assistant", "content": text})
        return {"kind": kind, "tools": TOOL_SCHEMAS, "messages": self.messages,
                "expected": {"calls": self.calls, "answer": expected}}


def _expression(rng: random.Random) -> tuple[str, str]:
    """(words, expression): 'What is 12 times 7?' and '12 * 7'."""
    words = {"+": ["plus", "+"], "-": ["minus", "-"], "*": ["times", "*", "multiplied by"], "/": ["divided by", "/"]}
    n_ops = rng.choice([1, 1, 2])
    numbers = [rng.randint(2, 99) for _ in range(n_ops + 1)]
    ops = [rng.choice("+-*/") for _ in range(n_ops)]
    expr, text = str(numbers[0]), str(numbers[0])
    for op, num in zip(ops, numbers[1:]):
        expr += f" {op} {num}"
        text += f" {rng.choice(words[op])} {num}"
    return text, expr


def _calculator(rng: random.Random) -> dict[str, Any]:
    text, expr = _expression(rng)
    question = rng.choice(["What is {}?", "Compute {}.", "Calculate {}.", "Please work out {}.", "{} = ?"]).format(text)
    conv = _Conversation(question)
    result = conv.call("calculator", {"expression": expr})
    return conv.answer(rng.choice([f"The answer is {result}.", f"{expr} = {result}."]), result, "calculator")


def _lookup(rng: random.Random) -> dict[str, Any]:
    item, attr = rng.choice(ITEMS), rng.choice(list(ATTRIBUTES))
    question = rng.choice(["What is the {a} of {i}?", "Look up the {a} of {i}.", "Find the {i} {a}.",
                           "Tell me the {a} for {i}."]).format(a=attr, i=item)
    conv = _Conversation(question)
    result = conv.call("lookup", {"key": f"{item} {attr}"})
    return conv.answer(f"The {attr} of {item} is {result}.", result, "lookup")


def _convert(rng: random.Random) -> dict[str, Any]:
    src, dst = rng.choice(list(UNITS))
    value = rng.randint(1, 50)
    unit = rng.choice([(src, dst), (UNIT_WORDS[src], UNIT_WORDS[dst])])
    question = rng.choice(["Convert {v} {a} to {b}.", "How many {b} is {v} {a}?", "What is {v} {a} in {b}?"]).format(
        v=value, a=unit[0], b=unit[1])
    conv = _Conversation(question)
    result = conv.call("convert", {"value": value, "from_unit": src, "to_unit": dst})
    return conv.answer(f"{value} {src} is {result} {dst}.", result, "convert")


def _chain(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.5:  # look up, then compute
        item, count = rng.choice(ITEMS), rng.randint(2, 9)
        question = rng.choice(["What do {n} {i} cost in total?", "How much are {n} {i}?"]).format(n=count, i=item)
        conv = _Conversation(question)
        price = conv.call("lookup", {"key": f"{item} price"})
        total = conv.call("calculator", {"expression": f"{price} * {count}"})
        return conv.answer(f"{count} {item} cost {total}.", total, "chain")
    a, b = rng.randint(1, 20), rng.randint(1, 20)  # compute, then convert
    src, dst = rng.choice([("km", "m"), ("kg", "g"), ("h", "min"), ("m", "cm")])
    question = f"Add {a} {src} and {b} {src}, and give the sum in {dst}."
    conv = _Conversation(question)
    total = conv.call("calculator", {"expression": f"{a} + {b}"})
    result = conv.call("convert", {"value": float(total) if "." in total else int(total), "from_unit": src, "to_unit": dst})
    return conv.answer(f"The sum is {result} {dst}.", result, "chain")


def _tool_error(rng: random.Random) -> dict[str, Any]:
    choice = rng.choice(["busy", "missing", "zero"])
    if choice == "busy":  # a transient failure: the right reaction is the same call again
        item, attr = rng.choice(ITEMS), rng.choice(list(ATTRIBUTES))
        conv = _Conversation(f"What is the {attr} of {item}?")
        conv.call("lookup", {"key": f"{item} {attr}"}, result=BUSY_ERROR)
        result = conv.call("lookup", {"key": f"{item} {attr}"})
        return conv.answer(f"The {attr} of {item} is {result}.", result, "error")
    if choice == "missing":  # a permanent failure: say so, do not invent a value
        item, attr = rng.choice(MISSING_ITEMS), rng.choice(list(ATTRIBUTES))
        conv = _Conversation(rng.choice(["What is the {a} of {i}?", "Look up the {a} of {i}."]).format(a=attr, i=item))
        conv.call("lookup", {"key": f"{item} {attr}"})
        return conv.answer(f"I could not find the {attr} of {item}.", "could not find", "error")
    a = rng.randint(2, 99)
    conv = _Conversation(rng.choice(["What is {} divided by 0?", "Compute {} / 0."]).format(a))
    conv.call("calculator", {"expression": f"{a} / 0"})
    return conv.answer("That cannot be computed: division by zero.", "cannot", "error")


def _no_tool(rng: random.Random) -> dict[str, Any]:
    word = rng.choice(ITEMS + MISSING_ITEMS)
    task = rng.choice(["upper", "hello", "repeat"])
    if task == "upper":
        conv = _Conversation(rng.choice(["Write '{}' in capital letters.", "Uppercase the word {}."]).format(word))
        return conv.answer(word.upper(), word.upper(), "no_tool")
    if task == "hello":
        name = rng.choice(["Ada", "Alan", "Grace", "Guido", "Linus", "Ken"])
        conv = _Conversation(rng.choice(["Hi, I am {}.", "Hello! My name is {}."]).format(name))
        return conv.answer(f"Hello, {name}!", name, "no_tool")
    conv = _Conversation(f"Repeat the word {word} twice.")
    return conv.answer(f"{word} {word}", f"{word} {word}", "no_tool")


KINDS: dict[str, tuple[float, Callable[[random.Random], dict[str, Any]]]] = {
    "calculator": (0.22, _calculator), "lookup": (0.2, _lookup), "convert": (0.2, _convert),
    "chain": (0.14, _chain), "error": (0.12, _tool_error), "no_tool": (0.12, _no_tool),
}
SPLITS = ("train", "test")
TEST_FRACTION = 0.1


def split_of(question: str) -> str:
    """The split a question belongs to, from a hash of its text: disjoint whatever the seed or size."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big") / 2**32
    return "test" if bucket < TEST_FRACTION else "train"


def generate(n: int, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """`n` samples of `split`, the same for the same (n, seed, split)."""
    if split not in SPLITS:
        raise ToolCallError(f"split {split!r} is not one of {list(SPLITS)}")
    if n < 0:
        raise ToolCallError(f"number of samples must be >= 0, got {n}")
    rng = random.Random(f"toolcalls-{seed}-{split}")
    makers = [maker for _, maker in KINDS.values()]
    weights = [weight for weight, _ in KINDS.values()]
    samples: list[dict[str, Any]] = []
    attempts = 0
    while len(samples) < n:
        attempts += 1
        if attempts > 1000 + 100 * n:
            raise ToolCallError(f"could not find {n} distinct {split} questions; ask for fewer samples")
        sample = rng.choices(makers, weights)[0](rng)
        if split_of(sample["messages"][0]["content"]) == split:
            sample["id"] = f"toolcalls-{split}-{len(samples):06d}"
            samples.append(sample)
    return samples


def write_splits(out_dir: str | Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, Path]:
    """Write `train.jsonl` and `test.jsonl` (atomically) and return their paths."""
    for flag, n in (("--train", n_train), ("--test", n_test)):
        if n < 1:  # an empty file would only fail later, in the sft or grpo run reading it
            raise ToolCallError(f"{flag} {n}: write at least 1 conversation")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ToolCallError(f"output '{out_dir}' is a file; pass a directory for train.jsonl and test.jsonl")
    # Files of these names in another tool's output (or beside files of yours) are not ours to overwrite.
    refuse_to_replace(out_dir, SPLIT_FILES.__contains__, "data toolcalls", ToolCallError,
                      "its train.jsonl and test.jsonl are replaced")
    paths = {}
    for split, n in (("train", n_train), ("test", n_test)):
        lines = (json.dumps(s, ensure_ascii=False) for s in generate(n, seed, split))
        paths[split] = out_dir / f"{split}.jsonl"
        atomic_write_text(paths[split], "\n".join(lines) + "\n")
    return paths


# ---- checking a model's turn -------------------------------------------------------------------
def decision_points(sample: dict[str, Any]) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Each assistant turn of a sample as (messages before it, what it should do).

    The target is {"call": {"name", "arguments"}} for a tool-calling turn, else {"answer": text}.
    """
    points = []
    calls = iter(sample["expected"]["calls"])
    for i, message in enumerate(sample["messages"]):
        if message["role"] != "assistant":
            continue
        target = {"call": next(calls)} if message.get("tool_calls") else {"answer": sample["expected"]["answer"]}
        points.append((sample["messages"][:i], target))
    return points


def _same_value(got: Any, want: Any, key: str) -> bool:
    if key == "expression":
        return str(got).replace(" ", "") == str(want).replace(" ", "")
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        try:
            return abs(float(got) - float(want)) < 1e-6
        except (TypeError, ValueError):
            return False
    return str(got).strip().lower() == str(want).strip().lower()


def score_turn(content: str, calls: list[Any], target: dict[str, Any]) -> dict[str, bool]:
    """Score one generated assistant turn (`Tokenizer.parse_assistant` output) against its target.

    For a calling turn: did the first call parse, name the right tool, carry the right arguments.
    For an answering turn: did it call nothing and contain the expected answer.
    """
    if "call" in target:
        want = target["call"]
        first = calls[0] if calls else None
        parsed = first is not None and first.error is None
        right_tool = parsed and first.name == want["name"]
        right_args = right_tool and set(first.arguments) == set(want["arguments"]) and all(
            _same_value(first.arguments[k], v, k) for k, v in want["arguments"].items())
        return {"expects_call": True, "parsed": parsed, "right_tool": right_tool, "right_args": right_args,
                "correct": right_args}
    no_call = not calls
    correct = no_call and target["answer"].lower() in content.lower()
    return {"expects_call": False, "parsed": True, "right_tool": no_call, "right_args": no_call, "correct": correct}


def turn_reward(score: dict[str, bool]) -> float:
    """A shaped reward in [0, 1]: partial credit for a well-formed call, full credit for a correct turn."""
    if score["expects_call"]:
        return 0.2 * score["parsed"] + 0.3 * score["right_tool"] + 0.5 * score["right_args"]
    return 0.3 * score["right_tool"] + 0.7 * score["correct"]


def tokenizer_texts(n: int = 2000, seed: int = 0) -> Iterator[str]:
    """Conversations as the chat template spells them (tool schemas, messages, call JSON), one text each.

    Mixed into a code corpus, they let the tokenizer learn the chat vocabulary, so tool-use conversations
    take fewer tokens in a small model's context.
    """
    for sample in generate(n, seed, "train"):
        parts = [json.dumps(tool["function"], ensure_ascii=False) for tool in sample["tools"]]
        for message in sample["messages"]:
            parts.append(message.get("content") or "")
            for call in message.get("tool_calls") or []:
                fn = call["function"]
                parts.append(json.dumps({"name": fn["name"], "arguments": json.loads(fn["arguments"])}))
        yield "\n".join(parts)
