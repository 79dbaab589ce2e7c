"""What the dashboard shows: where training run dirs live, which database, which chat endpoints."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lmstack.errors import LmstackError
from lmstack.openai_url import OpenAIURLError, api_base


class EndpointSpecError(LmstackError):
    """A --endpoint value that is not NAME=URL, or an --endpoint-key that is not NAME=ENV_VAR for a set variable."""


@dataclass
class DashboardSettings:
    runs_root: Path = Path("runs")  # the folder holding training run dirs (runs/NAME/)
    db_path: Path | None = None  # default: $LMSTACK_HOME/lmstack.db
    # Other OpenAI-compatible endpoints to chat with, by name -> base URL (..../v1). The server proxies
    # them, so the browser needs no CORS from them and never sees their API keys.
    endpoints: dict[str, str] = field(default_factory=dict)
    # Each endpoint's own bearer key, by name (from --endpoint-key NAME=ENV_VAR); an endpoint without one
    # is sent no key, so no endpoint ever sees another's key.
    endpoint_keys: dict[str, str] = field(default_factory=dict)
    local_model: bool = False  # whether this app also serves /v1 (`lmstack serve`) or not (`lmstack ui`)


def parse_endpoints(specs: list[str]) -> dict[str, str]:
    endpoints = {}
    for spec in specs:
        name, sep, url = spec.partition("=")
        wrong = EndpointSpecError(f"--endpoint '{spec}': expected NAME=URL with an http(s) base URL, "
                                  f"e.g. --endpoint vllm=http://127.0.0.1:8001/v1")
        if not sep or not name.strip():
            raise wrong
        if name.strip() in endpoints:  # the second silently replaced the first
            raise EndpointSpecError(f"--endpoint '{spec}': the name '{name.strip()}' is given twice; give each "
                                    "endpoint its own name")
        try:
            endpoints[name.strip()] = api_base(url)
        except OpenAIURLError:
            raise wrong from None
    return endpoints


def parse_endpoint_keys(specs: list[str], endpoints: dict[str, str],
                        environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """--endpoint-key NAME=ENV_VAR values -> {endpoint name: the key read from ENV_VAR}."""
    keys = {}
    for spec in specs:
        name, sep, var = (part.strip() for part in spec.partition("="))
        if not sep or not name or not var:
            raise EndpointSpecError(f"--endpoint-key '{spec}': expected NAME=ENV_VAR, the name of an --endpoint "
                                    f"and the environment variable holding its key, "
                                    f"e.g. --endpoint-key openai=OPENAI_API_KEY")
        if name not in endpoints:
            raise EndpointSpecError(f"--endpoint-key '{spec}': no --endpoint named '{name}'; "
                                    f"configured: {', '.join(endpoints) or 'none'}")
        if not environ.get(var):
            raise EndpointSpecError(f"--endpoint-key '{spec}': environment variable ${var} is not set; "
                                    f"export it before starting the dashboard")
        keys[name] = environ[var]
    return keys
