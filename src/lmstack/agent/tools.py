"""`@tool`: a typed Python function becomes a tool the model can call.

The JSON schema comes from the type hints (through a pydantic model) and the docstring (summary line
and an `Args:` section). Arguments are validated before the function runs; a validation error, an
unknown tool name, unparsable JSON, a timeout or an exception inside the tool all come back as a
`ToolResult` with `ok=False` whose text tells the model what to fix -- never as a crash.

A parameter annotated `ToolContext` is filled in by the runtime (run id, idempotency key, workspace,
memory) and is not part of the schema. A tool marked `side_effecting` gets a stable idempotency key
per call; it must record its effect keyed by it, so a call re-run after a crash does nothing twice.
"""

from __future__ import annotations

import inspect
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, get_type_hints

import pydantic

from lmstack.errors import LmstackError


class ToolDefinitionError(LmstackError):
    """A function cannot become a tool (missing type hints, bad name)."""


@dataclass
class ToolContext:
    run_id: str = ""
    call_key: str = ""
    idempotency_key: str | None = None
    workspace: Any = None  # pathlib.Path of the run's workspace directory
    memory: Any = None  # lmstack.agent.memory.MemoryStore
    scope: tuple[str, str] = ("default", "default")  # (agent, user) for memory


@dataclass(slots=True)
class ToolResult:
    call_id: str
    name: str
    content: str
    ok: bool = True
    error_kind: str | None = None  # unknown_tool | invalid_json | validation | timeout | exception | denied

    def message(self) -> dict[str, Any]:
        return {"role": "tool", "tool_call_id": self.call_id, "content": self.content}


@dataclass
class Tool:
    name: str
    description: str
    function: Callable[..., Any]
    arguments_model: type[pydantic.BaseModel]
    context_parameter: str | None = None
    side_effecting: bool = False
    requires_approval: bool = False
    timeout_s: float = 30.0
    retries: int = 0
    actions: tuple[str, ...] = ()  # verbs the action-claim monitor accepts as done by this tool

    def schema(self) -> dict[str, Any]:
        parameters = self.arguments_model.model_json_schema()
        parameters.pop("title", None)
        for prop in parameters.get("properties", {}).values():
            prop.pop("title", None)
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": parameters}}

    def field_names(self) -> set[str]:
        return set(self.arguments_model.model_fields)


def tool(function: Callable | None = None, *, name: str | None = None, side_effecting: bool = False,
         requires_approval: bool = False, timeout_s: float = 30.0, retries: int = 0,
         actions: tuple[str, ...] = ()):
    """Decorator (bare or with options) turning a typed function into a `Tool`."""
    def wrap(fn: Callable) -> Tool:
        return make_tool(fn, name=name, side_effecting=side_effecting, requires_approval=requires_approval,
                         timeout_s=timeout_s, retries=retries, actions=actions)
    return wrap(function) if function is not None else wrap


def make_tool(fn: Callable, *, name: str | None = None, side_effecting: bool = False, requires_approval: bool = False,
              timeout_s: float = 30.0, retries: int = 0, actions: tuple[str, ...] = ()) -> Tool:
    tool_name = name or fn.__name__
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,63}", tool_name):
        raise ToolDefinitionError(f"tool name '{tool_name}' must be letters, digits, _ or - (max 64)")
    summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    context_parameter = None
    for param in inspect.signature(fn).parameters.values():
        annotation = hints.get(param.name)
        if annotation is ToolContext:
            context_parameter = param.name
            continue
        if annotation is None:
            raise ToolDefinitionError(f"tool '{tool_name}': parameter '{param.name}' needs a type hint")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, pydantic.Field(default, description=arg_docs.get(param.name)))
    model = pydantic.create_model(f"{tool_name}_arguments", __config__=pydantic.ConfigDict(extra="forbid"), **fields)
    return Tool(tool_name, summary or tool_name, fn, model, context_parameter, side_effecting, requires_approval,
                timeout_s, retries, actions or _default_actions(tool_name))


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Google-style: the text before `Args:` is the description; `name: text` lines after it."""
    head, _, args_part = doc.partition("Args:")
    arg_docs: dict[str, str] = {}
    current = None
    for line in args_part.splitlines():
        match = re.match(r"\s*(\w+)\s*(?:\([^)]*\))?:\s*(.*)", line)
        if match:
            current = match.group(1)
            arg_docs[current] = match.group(2).strip()
        elif current and line.strip():
            arg_docs[current] += " " + line.strip()
    return " ".join(head.split()), arg_docs


def _default_actions(tool_name: str) -> tuple[str, ...]:
    return tuple(part for part in re.split(r"[_-]", tool_name.lower()) if part)


@dataclass
class PreparedCall:
    tool: Tool
    call_id: str
    arguments: dict[str, Any]


class ToolRegistry:
    def __init__(self, tools: list[Tool] | None = None):
        self.tools: dict[str, Tool] = {}
        for t in tools or []:
            self.add(t)

    def add(self, t: Tool) -> None:
        if t.name in self.tools:
            raise ToolDefinitionError(f"two tools are named '{t.name}'; give one another name")
        self.tools[t.name] = t

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self.tools.values()]

    def prepare(self, call_id: str, name: str, arguments_json: str) -> PreparedCall | ToolResult:
        """Look up and validate a call; on any problem return the message the model should see."""
        t = self.tools.get(name)
        if t is None:
            return ToolResult(call_id, name, f"Error: there is no tool named '{name}'. Available tools: "
                              f"{', '.join(sorted(self.tools))}. Call one of those.", False, "unknown_tool")
        try:
            raw = json.loads(arguments_json or "{}")
            raw = {} if raw is None else raw  # "null", like "", sends no arguments
        except json.JSONDecodeError as err:
            return ToolResult(call_id, name, f"Error: the arguments for '{name}' are not valid JSON ({err.msg} at "
                              f"position {err.pos}). Send a JSON object matching: "
                              f"{json.dumps(t.schema()['function']['parameters'])}", False, "invalid_json")
        if not isinstance(raw, dict):  # valid JSON, but a list or a bare value: there are no named arguments
            return ToolResult(call_id, name, f"Error: the arguments for '{name}' must be a JSON object of named "
                              f"arguments, got a JSON {JSON_TYPE_NAMES[type(raw)]}. Send an object matching: "
                              f"{json.dumps(t.schema()['function']['parameters'])}", False, "validation")
        try:
            validated = t.arguments_model.model_validate(raw)
        except pydantic.ValidationError as err:
            problems = "; ".join(f"'{'.'.join(map(str, e['loc'])) or 'arguments'}': {e['msg']}" for e in err.errors())
            return ToolResult(call_id, name, f"Error: invalid arguments for '{name}': {problems}. Expected: "
                              f"{json.dumps(t.schema()['function']['parameters'])}. Fix the arguments and call "
                              f"again.", False, "validation")
        return PreparedCall(t, call_id, {k: getattr(validated, k) for k in t.arguments_model.model_fields})

    def execute(self, prepared: PreparedCall, context: ToolContext) -> ToolResult:
        """Run with the tool's timeout and retry policy; exceptions become error results."""
        t = prepared.tool
        kwargs = dict(prepared.arguments)
        if t.context_parameter:
            kwargs[t.context_parameter] = context
        last_error = ""
        for attempt in range(t.retries + 1):
            outcome = _call_with_timeout(t.function, kwargs, t.timeout_s)
            if outcome is None:
                last_error, kind = f"Error: tool '{t.name}' timed out after {t.timeout_s:g} s.", "timeout"
            elif isinstance(outcome, BaseException):  # the tool's failure is the model's information, not our crash
                last_error, kind = f"Error: tool '{t.name}' raised {type(outcome).__name__}: {outcome}", "exception"
            else:
                return ToolResult(prepared.call_id, t.name, _to_text(outcome[0]))
            if attempt < t.retries:
                time.sleep(min(2.0, 0.1 * 2 ** attempt))
        return ToolResult(prepared.call_id, t.name, last_error, False, kind)


JSON_TYPE_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _call_with_timeout(function: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float
                       ) -> tuple[Any] | BaseException | None:
    """`(value,)`, the exception the function raised, or None when it ran past `timeout_s`.

    A daemon thread per call: a timed-out call is abandoned (Python cannot kill a thread), and a daemon thread
    does not keep the process alive after the run has ended, as a pool's worker would (the interpreter joins
    those at exit). Tools that run code use the sandbox, whose subprocess has its own wall-clock kill.
    Everything the tool raises is caught, SystemExit and KeyboardInterrupt included: raised in the tool's own
    thread they are the tool's failure, and let through they would crash the run again at every resume.
    """
    outcome: list[tuple[Any] | BaseException] = []

    def target() -> None:
        try:
            outcome.append((function(**kwargs),))
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=target, name=f"tool-{getattr(function, '__name__', 'call')}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else None


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump_json()
    return json.dumps(value, default=str)
