"""`lmstack agent run|resume|approve|list|trace`."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    from lmstack.config import add_config_arguments

    agent = subparsers.add_parser("agent", help="run durable tool-using agents (run, resume, approve, list, trace)")
    commands = agent.add_subparsers(dest="agent_command", metavar="SUBCOMMAND", required=True)

    run = commands.add_parser("run", help="start an agent on a task")
    run.add_argument("task", help="what the agent should do")
    run.add_argument("--model", required=True, metavar="URL_OR_CHECKPOINT",
                     help="OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1) or a checkpoint dir")
    run.add_argument("--model-name", default=None, help="model id at the endpoint (default: the first it lists)")
    run.add_argument("--tools", default=None, metavar="LIST",
                     help="comma-separated: calculator, python, files, memory, module:function, file.py:function")
    run.add_argument("--run-id", default=None, help="id for the new run (default: random)")
    run.add_argument("--workspace", default=None, help="directory the file tools are confined to")
    add_config_arguments(run)
    run.epilog = ("settings (--set KEY=VALUE or TOML): system_prompt, context_tokens, max_output_tokens, temperature, "
                  "logprobs, stream, timeout_s, max_attempts, max_tool_output_chars, api_key_env, agent_name, user, "
                  "budget.{max_steps, max_tokens, max_wall_s, max_dollars, price_in_per_mtok, price_out_per_mtok}, "
                  "loops.{repeat_limit, no_progress_limit}, monitors.{grounding, action_claims, uncertainty, "
                  "tool_hallucination, self_consistency} = off|flag|retry|stop, monitors.self_consistency_k")
    run.set_defaults(func=cmd_run)

    resume = commands.add_parser("resume",
                                 help="continue a crashed, paused or failed run from its last completed step")
    resume.add_argument("run_id")
    resume.set_defaults(func=cmd_resume)

    approve = commands.add_parser("approve", help="approve (or deny) a waiting run's tool calls, then resume it")
    approve.add_argument("run_id")
    approve.add_argument("--deny", action="store_true", help="deny instead of approve")
    approve.add_argument("--call", default=None, metavar="KEY", help="only this call (e.g. step2/tool0)")
    approve.set_defaults(func=cmd_approve)

    listing = commands.add_parser("list", help="list agent runs, newest first")
    listing.add_argument("--status", default=None, help="only runs with this status")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(func=cmd_list)

    trace = commands.add_parser("trace", help="print a run's trace tree, or export it as OpenTelemetry JSON")
    trace.add_argument("run_id")
    trace.add_argument("--otel", default=None, metavar="FILE.json", help="write OTLP/JSON spans to FILE ('-': stdout)")
    trace.set_defaults(func=cmd_trace)

    run.add_argument("--db", default=None, help="database file, created if missing (default: $LMSTACK_HOME/lmstack.db)")
    for sub in (resume, approve, listing, trace):
        sub.add_argument("--db", default=None, help="database file `agent run` recorded the run in (default: "
                                                    "$LMSTACK_HOME/lmstack.db)")


def _report(record) -> int:
    print(f"run {record.id}: {record.status} ({record.steps} steps, "
          f"{record.prompt_tokens + record.completion_tokens} tokens, ${record.cost_usd:.6f})")
    if record.final_answer is not None:
        print(record.final_answer)
    elif record.stop_reason:
        print(record.stop_reason)
    return 0 if record.status in ("completed", "waiting") else 1


def _run_and_report(run) -> int:
    """`run()`'s record reported, or, stopped by Ctrl-C, the run and how to continue it (exit code 130, as the CLI's
    own Ctrl-C): the run's id may be one `agent run` made up, printed nowhere else."""
    from lmstack.agent.runtime import RunInterrupted

    try:
        record = run()
    except RunInterrupted as stop:
        print(f"run {stop.run_id}: {stop.reason}", file=sys.stderr)
        return 130
    return _report(record)


def cmd_run(args: argparse.Namespace) -> int:
    from lmstack.agent.launch import open_database, start_run
    from lmstack.agent.settings import AgentConfig
    from lmstack.config import load_config

    base = {"model": args.model}
    if args.model_name:
        base["model_name"] = args.model_name
    if args.tools is not None:
        base["tools"] = [t.strip() for t in args.tools.split(",") if t.strip()]
    if args.workspace:
        base["workspace"] = args.workspace
    config = load_config(AgentConfig, args.config, args.overrides, base=base)
    conn = open_database(args.db)
    name = f" ({config.model_name})" if config.model_name else ""  # else the first model the endpoint lists
    print(f"run {args.run_id or '(new)'}: {config.model}{name}, tools: {', '.join(config.tools)}", file=sys.stderr)
    return _run_and_report(lambda: start_run(conn, args.task, config, args.run_id, show_progress=True))


def cmd_resume(args: argparse.Namespace) -> int:
    from lmstack.agent.launch import open_existing_database, resume_run
    from lmstack.agent.store import RESUMABLE, get_run

    conn = open_existing_database(args.db)
    record = get_run(conn, args.run_id)
    if record.status not in RESUMABLE:
        # Idempotent, as after a crash one cannot tell whether the run finished: its outcome again, saying so.
        print(f"run {args.run_id} has already ended ({record.status}): nothing to resume; `lmstack agent run` "
              "starts a new one", file=sys.stderr)
        return _report(record)
    return _run_and_report(lambda: resume_run(conn, args.run_id, show_progress=True))


def cmd_approve(args: argparse.Namespace) -> int:
    from lmstack.agent.launch import build_runtime, decide_approvals, open_existing_database

    conn = open_existing_database(args.db)
    keys, runtime = decide_approvals(conn, args.run_id, not args.deny, args.call,
                                     lambda: build_runtime(conn, args.run_id, show_progress=True))
    print(f"{'denied' if args.deny else 'approved'}: {', '.join(keys)}")
    return _run_and_report(runtime.run)


def cmd_list(args: argparse.Namespace) -> int:
    import datetime

    from lmstack.agent.launch import open_existing_database
    from lmstack.agent.store import RESUMABLE, list_runs
    from lmstack.errors import LmstackError

    if args.limit < 1:
        raise LmstackError(f"--limit {args.limit}: list at least 1 run (default 50)")
    runs = list_runs(open_existing_database(args.db), args.status, args.limit)
    width = max([14, *(len(r.id) for r in runs)])  # ids up to 128 characters (an eval's agent runs: ~25)
    print(f"{'RUN':{width}} {'STATUS':18} {'STEPS':>5} {'TOKENS':>8} {'COST $':>10}  {'CREATED':19}  TASK")
    for r in runs:
        created = datetime.datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{r.id:{width}} {r.status:18} {r.steps:>5} {r.prompt_tokens + r.completion_tokens:>8} "
              f"{r.cost_usd:>10.6f}  {created}  {r.task[:60]}")
        if r.status in RESUMABLE and r.status != "running":  # stopped, but can go on: its reason says how
            print(f"{'':{width}} {r.stop_reason}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from lmstack.agent.launch import open_existing_database
    from lmstack.agent.store import get_run
    from lmstack.agent.tracing import format_tree, load_tree, to_otel
    from lmstack.atomic import atomic_write_text

    conn = open_existing_database(args.db)
    record = get_run(conn, args.run_id)
    if args.otel:
        text = json.dumps(to_otel(conn, args.run_id), indent=1)
        if args.otel == "-":
            sys.stdout.write(text + "\n")
        else:
            atomic_write_text(args.otel, text)
            print(f"wrote {args.otel}")
        return 0
    print(f"run {record.id}: {record.status}" + (f" -- {record.stop_reason}" if record.stop_reason else ""))
    print(format_tree(load_tree(conn, args.run_id)))
    return 0
