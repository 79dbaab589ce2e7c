"""Built-in tools: calculator, python (in the sandbox), workspace files, memory search/save.

`load_tools(["calculator", "files", "pkg.module:my_tool", "path/to/tools.py:my_tool"])` resolves
the names the CLI's `--tools` takes.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import math
import operator
from pathlib import Path

from lmstack.agent.sandbox import SandboxLimits, run_python
from lmstack.agent.tools import Tool, ToolContext, tool
from lmstack.errors import LmstackError


class ToolLookupError(LmstackError):
    """A --tools entry names no built-in tool and no importable function."""


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
              ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS = {"sqrt": math.sqrt, "log": math.log, "exp": math.exp, "sin": math.sin, "cos": math.cos,
              "tan": math.tan, "abs": abs, "round": round, "min": min, "max": max}
_CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_EXPONENT = 10_000  # 9**9**9 would take minutes and gigabytes
# Larger integer results are refused before computing them. Python prints at most 4,300 digits of an int
# (sys.get_int_max_str_digits, ~14,284 bits): above that str() raises, and the model would read an error about
# sys.set_int_max_str_digits instead of ours.
MAX_RESULT_BITS = 14_000


def _bits(value: float | int) -> int:
    return abs(int(value)).bit_length() if isinstance(value, int) else 0


def _check_result_size(op: ast.operator, left: float | int, right: float | int) -> None:
    """Refuse integer results estimated above MAX_RESULT_BITS before computing them: a capped
    exponent alone lets ((10**9999)**9999)**9999 through, which would freeze the process."""
    if isinstance(op, ast.Pow) and isinstance(left, int) and isinstance(right, int) and right > 0:
        estimate = math.ceil(math.log2(abs(left)) * right) + 1 if left else 0  # an upper bound (2**10000: 10001)
    elif isinstance(op, ast.Mult) and isinstance(left, int) and isinstance(right, int):
        estimate = _bits(left) + _bits(right)
    else:
        return
    if estimate > MAX_RESULT_BITS:
        raise ValueError(f"the result would have about {estimate} bits (limit {MAX_RESULT_BITS}); "
                         f"use smaller numbers or floats (e.g. 10.0**400 overflows instead of freezing)")


def evaluate(expression: str) -> float | int:
    """Arithmetic on numbers, a few math functions and constants; walks the AST, never `eval`."""
    def walk(node: ast.AST):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](walk(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ValueError(f"exponent {right} is too large (max {MAX_EXPONENT})")
            _check_result_size(node.op, left, right)
            return _OPERATORS[type(node.op)](left, right)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
                and not node.keywords):
            return _FUNCTIONS[node.func.id](*[walk(a) for a in node.args])
        raise ValueError(f"unsupported expression element: {ast.dump(node)[:60]}")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as err:
        raise ValueError(f"not an arithmetic expression: {err.msg}") from None
    result = walk(tree)
    # Whatever made it (sums, which grow past the estimate a bit per operation; a long literal), a result too long
    # to print is refused here, cheaply, after it is computed.
    if isinstance(result, int) and result.bit_length() > MAX_RESULT_BITS:
        raise ValueError(f"the result has {result.bit_length()} bits (limit {MAX_RESULT_BITS}); use floats")
    return result


@tool(actions=("calculate", "compute", "calculated", "computed"))
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly (+ - * / // % **, sqrt, log, exp, sin, cos, pi, e).

    Args:
        expression: the expression, e.g. "(17 * 3) / 4".
    """
    value = evaluate(expression)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return str(value)


@tool(timeout_s=60.0, actions=("run", "ran", "execute", "executed", "test", "tested", "python"))
def python(code: str) -> str:
    """Run Python code in a sandbox (no network, limited CPU/memory, only its scratch dir writable); returns stdout/stderr.

    Args:
        code: a complete Python program; print what you want to see.
    """
    # Without a scratch_dir, run_python gives each call a fresh temporary folder and removes it afterwards: the
    # calls of one turn run concurrently and must not overwrite each other's __main__.py and files.
    return run_python(code, SandboxLimits()).report()


def workspace_path(context: ToolContext, path: str) -> Path:
    """`path` inside the workspace; anything resolving outside it (.., absolute, symlinks) is refused."""
    root = Path(context.workspace).resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root):
        raise PermissionError(f"path '{path}' is outside the workspace; use a relative path inside it")
    return target


@tool(actions=("read", "opened", "looked"))
def read_file(path: str, context: ToolContext) -> str:
    """Read a text file from the workspace.

    Args:
        path: path relative to the workspace.
    """
    return workspace_path(context, path).read_text()


@tool(side_effecting=True, actions=("write", "wrote", "save", "saved", "create", "created", "update", "updated"))
def write_file(path: str, content: str, context: ToolContext) -> str:
    """Write (create or overwrite) a text file in the workspace.

    Args:
        path: path relative to the workspace.
        content: the full new content of the file.
    """
    from lmstack.atomic import atomic_write_text

    # Overwriting with the same content is idempotent, so a re-run after a crash is harmless.
    atomic_write_text(workspace_path(context, path), content)
    return f"wrote {len(content)} characters to {path}"


@tool(actions=("list", "listed"))
def list_files(context: ToolContext) -> str:
    """List the files in the workspace."""
    root = Path(context.workspace).resolve()
    return "\n".join(sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())) or "(empty)"


@tool(actions=("search", "searched", "recall", "recalled", "remember", "remembered", "look", "looked"))
def memory_search(query: str, context: ToolContext) -> str:
    """Search long-term memory for facts relevant to a query.

    Args:
        query: words to search for.
    """
    found = context.memory.search(query, context.scope)
    return "\n".join(f"[{m.id}] {m.text}" for m in found) or "(no memories found)"


@tool(side_effecting=True, actions=("save", "saved", "remember", "remembered", "store", "stored", "note", "noted"))
def memory_save(text: str, context: ToolContext, key: str | None = None) -> str:
    """Save a fact to long-term memory; a fact with the same key replaces the older one.

    Args:
        text: the fact, as one self-contained sentence.
        key: optional stable name for the fact (e.g. "user.city") so it can be updated later.
    """
    if text in context.memory.all_texts(context.scope):  # idempotent: a re-run after a crash saves nothing new
        return "already saved"
    return f"saved memory {context.memory.save(text, context.scope, key)}"


BUILTIN_TOOLS: dict[str, list[Tool]] = {
    "calculator": [calculator], "python": [python], "files": [read_file, write_file, list_files],
    "memory": [memory_search, memory_save],
}


def load_tools(specs: list[str]) -> list[Tool]:
    tools: list[Tool] = []
    for spec in specs:
        if spec in BUILTIN_TOOLS:
            tools.extend(BUILTIN_TOOLS[spec])
            continue
        module_name, _, attribute = spec.partition(":")
        if not attribute:
            raise ToolLookupError(f"--tools '{spec}': not a built-in ({', '.join(BUILTIN_TOOLS)}); for your own tool "
                                  f"pass module:function or path/to/file.py:function")
        module = import_tool_module(spec, module_name)
        if not hasattr(module, attribute):
            found = ", ".join(name for name, value in vars(module).items() if isinstance(value, Tool)) or "none"
            raise ToolLookupError(f"--tools '{spec}': '{module_name}' has no attribute '{attribute}'; its @tool "
                                  f"functions: {found}")
        if not isinstance(getattr(module, attribute), Tool):
            raise ToolLookupError(f"--tools '{spec}': '{attribute}' in '{module_name}' is not a @tool function; "
                                  "decorate it with @tool")
        tools.append(getattr(module, attribute))
    return tools


def import_tool_module(spec: str, module_name: str):
    """The module of a --tools entry (`module_name` a dotted name or a file.py path); a one-line error naming the
    file, and the line of a syntax error, when it cannot be imported -- never the import's traceback."""
    try:
        if module_name.endswith(".py"):
            spec_obj = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            module = importlib.util.module_from_spec(spec_obj)
            spec_obj.loader.exec_module(module)
            return module
        return importlib.import_module(module_name)
    except SyntaxError as err:  # in the file itself, or in one it imports: err.filename says which
        raise ToolLookupError(f"--tools '{spec}': '{err.filename}' line {err.lineno}: {err.msg}; fix the file") from None
    except (ImportError, OSError) as err:
        raise ToolLookupError(f"--tools '{spec}': cannot import '{module_name}': {err}") from None
    except Exception as err:  # the module's own code failed as it ran
        raise ToolLookupError(f"--tools '{spec}': importing '{module_name}' raised {type(err).__name__}: {err}; "
                              "fix the module") from None


def absolute_tool_paths(specs: list[str]) -> list[str]:
    """`specs` with each file.py path made absolute against the current directory: a run's saved configuration must
    load the same files when it is resumed or approved from another directory (or by the dashboard)."""
    absolute = []
    for spec in specs:
        path, _, attribute = spec.partition(":")
        absolute.append(f"{Path(path).resolve()}:{attribute}" if path.endswith(".py") and attribute else spec)
    return absolute
