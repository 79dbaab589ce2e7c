"""`lmstack eval run | compare | report | list`."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from lmstack.db import default_db_path, existing_database
from lmstack.openai_url import is_http_url
from lmstack.errors import LmstackError


class EvalUsageError(LmstackError):
    """A bad combination of eval command-line arguments."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate models: run tasks, compare runs, write reports")
    commands = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")

    run = commands.add_parser("run", help="run an eval task against a model")
    run.add_argument("task", help="a built-in task name (see `lmstack eval list`), TASK.yaml, or FILE.py[@TASK]")
    run.add_argument("--model", required=True,
                     help="an OpenAI-compatible base URL (http://.../v1; key from $OPENAI_API_KEY) or a checkpoint dir")
    run.add_argument("--model-name", help="the model name to request from a URL (default: the first it lists)")
    run.add_argument("--judge", help="judge model for model-graded scorers (URL or checkpoint dir)")
    run.add_argument("--judge-name", help="the judge's model name at its URL")
    run.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="how long one HTTP request to the model or judge may take (default 60; a resumed run "
                          "keeps its own unless given)")
    run.add_argument("-T", dest="task_args", action="append", default=[], metavar="KEY=VALUE",
                     help="argument for the task factory (repeatable)")
    run.add_argument("--epochs", type=int, help="attempts per sample (for pass@k / pass^k)")
    run.add_argument("--seed", type=int, help="base seed; each sample and epoch derives its own")
    run.add_argument("--limit", type=int, help="evaluate only the first N samples")
    run.add_argument("--max-tokens", type=int, help="generation limit per model call (default: the task's, else none "
                     "is sent and the endpoint's default applies)")
    run.add_argument("--temperature", type=float, help="sampling temperature (0 = greedy)")
    run.add_argument("--reducers", help="comma-separated: mean, max, pass@K, pass^K")
    run.add_argument("--max-concurrency", type=int, default=8, help="parallel requests per endpoint (default 8)")
    run.add_argument("--price", nargs=2, type=float, metavar=("IN", "OUT"),
                     help="dollars per million input / output tokens (default: the agent price table)")
    run.add_argument("--run-id", help="name of the new run (default: a timestamp)")
    run.add_argument("--resume", metavar="RUN_ID",
                     help="continue an interrupted run under its own settings; finished samples are skipped")
    run.add_argument("--no-cache", action="store_true", help="do not read or write the response cache")
    run.add_argument("--report", metavar="FILE.html", help="also write the HTML report")
    run.add_argument("--db", help="SQLite database (default $LMSTACK_HOME/lmstack.db)")
    run.set_defaults(func=cmd_run)

    compare = commands.add_parser("compare", help="paired comparison of two runs (B against baseline A)")
    compare.add_argument("run_a", metavar="RUN_A", help="baseline run id")
    compare.add_argument("run_b", metavar="RUN_B", help="candidate run id")
    compare.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    compare.add_argument("--fail-on-regression", action="store_true",
                         help="exit 1 if B is significantly worse than A on any scorer (for CI gates)")
    compare.add_argument("--db", help="SQLite database (default $LMSTACK_HOME/lmstack.db)")
    compare.set_defaults(func=cmd_compare)

    report = commands.add_parser("report", help="write one self-contained HTML report for runs")
    report.add_argument("runs", nargs="+", metavar="RUN", help="run ids")
    report.add_argument("-o", "--output", default="eval-report.html", help="HTML file (default eval-report.html)")
    report.add_argument("--db", help="SQLite database (default $LMSTACK_HOME/lmstack.db)")
    report.set_defaults(func=cmd_report)

    harness = commands.add_parser("lm-eval", help="run lm-evaluation-harness tasks against an OpenAI-compatible URL")
    harness.add_argument("url", help="base URL of the server, e.g. http://127.0.0.1:8000/v1")
    harness.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    harness.add_argument("--model-name", help="model name to send (default: the first the server lists, e.g. "
                         "the checkpoint dir's name for `lmstack serve`)")
    harness.add_argument("--tokenizer", help="HF-format tokenizer dir (`lmstack export` output); needed for loglikelihood tasks")
    harness.add_argument("--limit", type=int, help="samples per task")
    harness.add_argument("--num-concurrent", type=int, default=8, help="parallel requests (default 8)")
    harness.add_argument("--max-length", type=int, metavar="TOKENS",
                         help="the tokens to which lm-eval cuts prompts from the left (default: the max_model_len "
                         "the server lists for the model, less 2 for the bos the server adds and the token lm-eval "
                         "asks for; lm-eval's 2048 if it lists none, or with --model-name)")
    harness.add_argument("--timeout", type=int, metavar="SECONDS",
                         help="how long one request may take (default: lm-eval's, 300)")
    harness.add_argument("--output-path", help="where lm-eval writes its results")
    harness.add_argument("--dry-run", action="store_true", help="only print the lm_eval command")
    harness.set_defaults(func=cmd_lm_eval)

    listing = commands.add_parser("list", help="list the built-in tasks and recent runs")
    listing.add_argument("--db", help="SQLite database (default $LMSTACK_HOME/lmstack.db)")
    listing.set_defaults(func=cmd_list)
    parser.set_defaults(func=lambda args: parser.print_help())


def parse_task_args(items: list[str]) -> dict[str, str]:
    """KEY=VALUE strings; the loader parses each value by the task factory's annotation."""
    out = {}
    for item in items:
        if "=" not in item:
            raise EvalUsageError(f"-T '{item}': expected KEY=VALUE, e.g. -T split=test")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise EvalUsageError(f"-T '{item}': expected KEY=VALUE with a key, e.g. -T split=test")
        out[key.strip()] = raw
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from lmstack.evals.clients import JUDGE_FLAGS, make_client
    from lmstack.evals.loader import load_task
    from lmstack.evals.model import CachedModel
    from lmstack.evals.report import write_report
    from lmstack.evals.runner import run_eval
    from lmstack.evals.store import Store
    from lmstack.evals.summary import format_scores

    if args.max_concurrency < 1:
        raise EvalUsageError(f"--max-concurrency {args.max_concurrency}: must be at least 1 (parallel requests "
                             "per endpoint; default 8)")
    if args.price and min(args.price) < 0:
        raise EvalUsageError(f"--price {args.price[0]:g} {args.price[1]:g}: prices must be >= 0 (dollars per million "
                             "input and output tokens)")
    check_timeout(args)
    check_flags_used(args)
    task = load_task(args.task, parse_task_args(args.task_args))
    store = Store(args.db)  # creates the database and its folders: the checks of the arguments come first
    timeout_s = args.timeout
    if timeout_s is None and args.resume:  # a resumed run keeps its own: a slow model's must not resume at 60 s
        timeout_s = store.run(args.resume).config.get("timeout_s")
    price = tuple(args.price) if args.price else None
    model = CachedModel(make_client(args.model, args.model_name, timeout_s), store, args.max_concurrency,
                        price, use_cache=not args.no_cache)
    judge = (CachedModel(make_client(args.judge, args.judge_name, timeout_s, JUDGE_FLAGS), store, args.max_concurrency)
             if args.judge else None)
    overrides = {"epochs": args.epochs, "seed": args.seed, "limit": args.limit, "max_tokens": args.max_tokens,
                 "temperature": args.temperature,
                 "reducers": [r.strip() for r in args.reducers.split(",")] if args.reducers else None}
    try:
        outcome = run_eval(task, model, store, judge=judge, overrides=overrides, run_id=args.run_id, resume=args.resume,
                           max_workers=args.max_concurrency + (args.max_concurrency if judge else 0))
    except KeyboardInterrupt as err:
        for note in getattr(err, "__notes__", []):  # how to resume the run
            print(note, file=sys.stderr)
        raise
    print(format_scores([store.run(outcome.run_id)]))
    # Every request this process sent, by what came of it (a count of answers alone said "0 requests made" of a run
    # whose every request got a 400).
    requests = outcome.requests
    summary = outcome.summary
    print(f"run {outcome.run_id}: {summary['results']} results, {summary['errors']} errors, "
          f"{summary['scorer_errors']} scorer errors; model requests: {requests['answered']} answered by the endpoint, "
          f"{requests['cached']} from the cache, {requests['failed']} failed")
    failed = store.first_error(outcome.run_id)
    if failed:  # the count alone does not say what to fix
        print(f"first error (sample {failed.sample_id}, epoch {failed.epoch}): {failed.failure}; --resume "
              f"{outcome.run_id} retries the failed samples under the run's settings (a new setting needs a new run)",
              file=sys.stderr)
    if args.report:
        print(f"report: {write_report(store, [outcome.run_id], args.report)}")
    return 0


def existing_store(db: str | None):
    """The store of the runs a reading command shows: an existing lmstack database, untouched otherwise."""
    from lmstack.evals.store import Store

    return Store(existing_database(db, "`lmstack eval run` creates it: pass the --db its runs were recorded in"))


def check_flags_used(args: argparse.Namespace) -> None:
    """Refuse a flag that would be ignored: the user meant it to do something."""
    if args.run_id and args.resume:
        raise EvalUsageError(f"--run-id names a new run and --resume continues run '{args.resume}': pass one of them")
    if args.judge_name and not args.judge:
        raise EvalUsageError("--judge-name is the judge's model name at its --judge URL: pass --judge URL too")
    for flag, name, spec in (("--model-name", args.model_name, args.model), ("--judge-name", args.judge_name,
                                                                             args.judge)):
        if name and spec and not is_http_url(spec):
            raise EvalUsageError(f"{flag} is the model name to request from a URL; '{spec}' is a checkpoint, known by "
                                 f"its folder's name: drop {flag}")


def check_timeout(args: argparse.Namespace) -> None:
    """Refuse a --timeout that cannot work: seconds one HTTP request may take, so above 0 and for a URL."""
    if args.timeout is None:
        return
    if not 0 < args.timeout < math.inf:
        raise EvalUsageError(f"--timeout {args.timeout:g}: must be a number of seconds > 0 (how long one HTTP "
                             "request may take; default 60)")
    if not any(is_http_url(spec) for spec in (args.model, args.judge)):
        raise EvalUsageError(f"--timeout {args.timeout:g}: only a model at an http(s) URL has one; --model "
                             f"'{args.model}' runs in-process, so drop --timeout")


def cmd_compare(args: argparse.Namespace) -> int:
    from lmstack.evals.compare import compare_runs, format_comparison

    if not 0 < args.alpha < 1:
        raise EvalUsageError(f"--alpha {args.alpha:g}: the significance level must be between 0 and 1 (default 0.05)")
    comparison = compare_runs(existing_store(args.db), args.run_a, args.run_b, alpha=args.alpha)
    print(format_comparison(comparison))
    unfinished = [run for run in (comparison.run_a, comparison.run_b) if run.status != "finished"]
    if args.fail_on_regression and unfinished:  # a crashed candidate must not pass a CI gate on the samples it did
        run = unfinished[0]
        print(f"run {run.id} has not finished ({run.status}): a gate compares finished runs; continue it with "
              f"`lmstack eval run ... --resume {run.id}`", file=sys.stderr)
        return 1
    if args.fail_on_regression and comparison.regressions:
        names = ", ".join(s.scorer for s in comparison.regressions)
        print(f"significant regression (alpha={args.alpha}) on: {names}", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lmstack.evals.report import write_report

    path = write_report(existing_store(args.db), args.runs, Path(args.output))
    print(f"report: {path.resolve()}")
    return 0


def cmd_lm_eval(args: argparse.Namespace) -> int:
    from lmstack.evals.lm_eval_adapter import LM_EVAL_EXTRA_TOKENS, lm_eval_command, run_lm_eval, served_model

    for flag, value in (("--max-length", args.max_length), ("--timeout", args.timeout),
                        ("--num-concurrent", args.num_concurrent)):
        if value is not None and value < 1:
            raise EvalUsageError(f"{flag} {value}: must be at least 1")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    model_name, context = (args.model_name, None) if args.model_name else served_model(args.url)
    max_length = args.max_length or (context - LM_EVAL_EXTRA_TOKENS if context is not None else None)
    return run_lm_eval(lm_eval_command(args.url, model_name, tasks, args.tokenizer, args.limit, args.num_concurrent,
                                       args.output_path, max_length, args.timeout),
                       dry_run=args.dry_run)


def cmd_list(args: argparse.Namespace) -> int:
    from lmstack.evals.loader import TASKS
    from lmstack.evals.summary import partial_note, progress

    print("tasks:")
    for name, factory in sorted(TASKS.items()):
        doc = (factory.__doc__ or "").strip().splitlines()
        print(f"  {name:<24} {doc[0] if doc else ''}")
    # A fresh machine has no database yet: the tasks are listed all the same, and none is created.
    store = None if args.db is None and not default_db_path().exists() else existing_store(args.db)
    runs = store.runs() if store else []
    print("runs:" if runs else "runs: none yet")
    for run in runs:
        note = None if run.status == "finished" else partial_note(run.status, progress(store, run)[1])
        print(f"  {run.id:<28} {run.status:<11} {run.task:<22} {run.model}" + (f"  {note}" if note else "")
              + (f"  ({run.error})" if run.error else ""))
    return 0
