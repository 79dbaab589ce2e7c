"""Built-in tasks; importing this package registers them (and every solver and scorer) by name."""

from lmstack.evals import agent_solver, code_scorers, scorers, solvers  # noqa: F401
from lmstack.evals.builtin import arithmetic, bpb, hallucination, toolcalls  # noqa: F401
