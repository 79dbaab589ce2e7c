"""`lmstack serve` (the OpenAI-compatible server) and `lmstack chat` (terminal chat, local or --url)."""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from lmstack.infer.commands import ENGINE_SETTINGS, add_engine_arguments, add_sampling_arguments

    p = subparsers.add_parser("serve", help="serve a checkpoint behind an OpenAI-compatible API")
    p.add_argument("ckpt", help="lmstack checkpoint dir")
    p.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--api-key", default=None, help="require this bearer key (default: $LMSTACK_API_KEY, else none)")
    p.add_argument("--model-name", default=None, help="model id in /v1/models (default: the dir's name)")
    p.add_argument("--max-queue", type=int, default=None, help="waiting requests before 429 (default 256)")
    add_engine_arguments(p)
    p.epilog = "settings (--set KEY=VALUE or TOML): host, port, model_name, api_key, max_queue, max_body_bytes, " \
               f"graceful_shutdown_s, torch_threads, engine.{{{ENGINE_SETTINGS}}}"
    p.set_defaults(func=run_serve)

    p = subparsers.add_parser("chat", help="chat in the terminal with a checkpoint, or with any "
                                           "OpenAI-compatible server (--url)")
    p.add_argument("ckpt", nargs="?", help="lmstack checkpoint dir (needs a tokenizer with chat tokens)")
    p.add_argument("--url", default=None, help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default=None, help="with --url: the model id (default: the server's first model)")
    p.add_argument("--api-key", default=None, help="with --url: bearer key (default: $OPENAI_API_KEY)")
    p.add_argument("--system", default=None, help="system prompt")
    add_sampling_arguments(p, max_tokens_help="the longest reply (default: what the model's context leaves)")
    add_engine_arguments(p)
    p.set_defaults(func=run_chat)


def serve_config(args: argparse.Namespace):
    from lmstack.config import load_config
    from lmstack.serve.config import ServeConfig

    config = load_config(ServeConfig, args.config, args.overrides)
    for name in ("host", "port", "api_key", "model_name", "max_queue"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    config.api_key = config.api_key or os.environ.get("LMSTACK_API_KEY") or None
    config.validate()
    return config


def check_can_listen(host: str, port: int) -> None:
    """Fail now if the server could not listen there: uvicorn would find out only after the model started loading,
    and the process then aborted with the loader thread inside torch. Every address the host resolves to is tried,
    as uvicorn binds them all (localhost: 127.0.0.1 and ::1)."""
    from lmstack.errors import LmstackError

    try:
        addresses = {info[:2] + (info[4],) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                             flags=socket.AI_PASSIVE)}
    except socket.gaierror as err:
        raise LmstackError(f"--host {host}: not an address of this machine ({err.strerror}); pass e.g. 127.0.0.1 "
                           "or 0.0.0.0") from None
    for family, kind, address in sorted(addresses, key=str):
        with socket.socket(family, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's: a port in TIME_WAIT is usable
            if family == socket.AF_INET6:  # as uvicorn's: the IPv6 socket leaves the IPv4 address to its own socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as err:
                raise LmstackError(f"cannot listen on {host}:{port} ({err.strerror}); stop what uses the port or pass "
                                   "--port N (and --host for another address)") from None


def served_name(ckpt: str) -> str:
    """The default model id: the checkpoint dir's name as given, so `runs/x/best` serves `best`, not the checkpoint
    its symlink points to (`step_000200`, another id after every new best); the real dir's name only for a path with
    no name of its own (`.`, `..`)."""
    name = Path(ckpt).name
    return name if name not in ("", "..") else Path(ckpt).resolve().name


def run_serve(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from lmstack.config import to_dict
    from lmstack.infer.engine import Engine, kv_pool_blocks
    from lmstack.device import detect_device, inference_dtype
    from lmstack.model.checkpoint import check_model_dir
    from lmstack.serve.app import create_app
    from lmstack.web.api import dashboard_router
    from lmstack.web.settings import DashboardSettings

    config = serve_config(args)
    # The model loads in the background once the server is up, so whatever would make that fail (a wrong path, a
    # damaged weights file or tokenizer, a device this machine lacks, a KV budget too small for one block of this
    # model) is found here, before a server starts.
    checked = check_model_dir(args.ckpt, need_tokenizer=True)
    device = detect_device(config.engine.device, cpu_hint="--set engine.device=cpu")
    kv_pool_blocks(config.engine, checked.model, inference_dtype(device, config.engine.dtype))
    check_can_listen(config.host, config.port)
    torch.set_num_threads(config.torch_threads or max(1, (os.cpu_count() or 2) - 1))
    model_name = config.model_name or served_name(args.ckpt)
    dashboard = dashboard_router(DashboardSettings(local_model=True))  # the web dashboard at /
    app = create_app(lambda: Engine.from_checkpoint(args.ckpt, config.engine), config, model_name, [dashboard])
    shown = {**to_dict(config), "api_key": "***" if config.api_key else None}
    print(f"lmstack serve: config {json.dumps(shown)}", flush=True)
    auth = "API key required" if config.api_key else "no API key"
    print(f"lmstack serve: '{model_name}' at http://{config.host}:{config.port}/v1 ({auth}); "
          f"GET /health is 200 once the model is loaded", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info",
                timeout_graceful_shutdown=config.graceful_shutdown_s)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from lmstack.errors import LmstackError
    from lmstack.infer.chat import EngineSource, chat_loop
    from lmstack.infer.commands import build_engine, sampling_params

    if (args.url is None) == (args.ckpt is None):
        raise LmstackError("chat needs either a checkpoint dir or --url URL of an OpenAI-compatible server (not both)")
    url_only = [flag for flag, value in (("--model", args.model), ("--api-key", args.api_key)) if value]
    if args.ckpt is not None and url_only:
        raise LmstackError(f"{url_only[0]} is for a server (--url); chatting with the checkpoint '{args.ckpt}' "
                           f"needs neither: drop {url_only[0]}")
    if args.url:
        from lmstack.serve.remote_chat import RemoteSource

        source = RemoteSource(args.url, model=args.model, api_key=args.api_key, max_tokens=args.max_tokens,
                              temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    else:
        source = EngineSource(build_engine(args), sampling_params(args, args.max_tokens))
    chat_loop(source, system=args.system)
    return 0
