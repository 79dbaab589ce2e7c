"""What the dashboard shows: where training run dirs live, which database, which chat endpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lmstack.errors import LmstackError


class EndpointSpecError(LmstackError):
    """A --endpoint value that is not NAME=URL."""


@dataclass
class DashboardSettings:
    runs_root: Path = Path("runs")  # the folder holding training run dirs (runs/NAME/)
    db_path: Path | None = None  # default: $LMSTACK_HOME/lmstack.db
    # Other OpenAI-compatible endpoints to chat with, by name -> base URL (..../v1). The server proxies
    # them, so the browser needs no CORS from them and never sees their API keys.
    endpoints: dict[str, str] = field(default_factory=dict)
    endpoint_api_key: str | None = None  # sent to those endpoints (default: $OPENAI_API_KEY)
    local_model: bool = False  # whether this app also serves /v1 (`lmstack serve`) or not (`lmstack ui`)


def parse_endpoints(specs: list[str]) -> dict[str, str]:
    endpoints = {}
    for spec in specs:
        name, sep, url = spec.partition("=")
        if not sep or not name.strip() or not url.startswith(("http://", "https://")):
            raise EndpointSpecError(f"--endpoint '{spec}': expected NAME=URL with an http(s) base URL, "
                                    f"e.g. --endpoint vllm=http://127.0.0.1:8001/v1")
        endpoints[name.strip()] = url.rstrip("/")
    return endpoints
