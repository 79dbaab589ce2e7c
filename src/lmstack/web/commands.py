"""`lmstack ui`: the web dashboard without a model (training runs, agent runs, evals, chat with endpoints)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ui", help="serve the web dashboard without a model (`lmstack serve` also serves it at /)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--runs-root", default=None, help="folder holding training run dirs (default runs)")
    p.add_argument("--db", default=None, help="database file (default: $LMSTACK_HOME/lmstack.db)")
    p.add_argument("--endpoint", action="append", default=[], metavar="NAME=URL",
                   help="an OpenAI-compatible endpoint to chat with, e.g. local=http://127.0.0.1:8000/v1 (repeatable; "
                        "sent no API key unless --endpoint-key names one)")
    p.add_argument("--endpoint-key", action="append", default=[], metavar="NAME=ENV_VAR",
                   help="send endpoint NAME the bearer key held in environment variable ENV_VAR, e.g. "
                        "openai=OPENAI_API_KEY (repeatable; each endpoint gets only its own key)")
    p.add_argument("--api-key", default=None,
                   help="require this bearer key for /api (default: $LMSTACK_API_KEY, else none)")
    p.set_defaults(func=run_ui)


def run_ui(args: argparse.Namespace) -> int:
    import uvicorn

    from lmstack.db import existing_database
    from lmstack.errors import LmstackError
    from lmstack.serve.commands import check_can_listen
    from lmstack.web.settings import DashboardSettings, parse_endpoint_keys, parse_endpoints
    from lmstack.web.ui_app import create_ui_app

    # The defaults may be missing (no training runs yet, a fresh user's database); a folder or file the user names must
    # exist: opening a mistyped --db would create an empty database (and its folders) and show no runs.
    if args.runs_root is not None and not Path(args.runs_root).is_dir():
        raise LmstackError(f"--runs-root '{args.runs_root}' is not a directory; pass the folder that holds your run "
                           "dirs (e.g. runs, where `lmstack train` writes them)")
    if args.db is not None:
        existing_database(args.db, "pass the --db your agent and eval runs were recorded in, or leave --db out for "
                                   "the default ($LMSTACK_HOME/lmstack.db)")
    endpoints = parse_endpoints(args.endpoint)
    named_root = {"runs_root": Path(args.runs_root)} if args.runs_root else {}
    settings = DashboardSettings(**named_root, db_path=Path(args.db) if args.db else None, endpoints=endpoints,
                                 endpoint_keys=parse_endpoint_keys(args.endpoint_key, endpoints))
    api_key = args.api_key or os.environ.get("LMSTACK_API_KEY") or None
    # The server binds its port only later; a bad port is found now.
    if not 0 <= args.port < 65536:
        raise LmstackError(f"--port {args.port}: a port is in [0, 65535] (default 8080)")
    check_can_listen(args.host, args.port)
    app = create_ui_app(settings, api_key)
    print(f"lmstack ui: dashboard at http://{args.host}:{args.port}/ ({'API key required' if api_key else 'no API key'}); "
          f"runs from '{settings.runs_root}', {len(settings.endpoints)} chat endpoint(s)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
