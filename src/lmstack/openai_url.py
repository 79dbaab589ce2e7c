"""Base URLs of OpenAI-compatible servers, normalised the same way by every client in lmstack."""

from __future__ import annotations

from urllib.parse import urlparse

from lmstack.errors import LmstackError


class OpenAIURLError(LmstackError):
    """A server URL that is not http(s)://host[:port][/path]."""


def api_base(url: str) -> str:
    """Accept 'http://host:port' as well as 'http://host:port/v1' (any explicit path is kept)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise OpenAIURLError(f"'{url}' is not an http(s) URL; pass e.g. http://127.0.0.1:8000/v1")
    return url.rstrip("/") if parsed.path not in ("", "/") else url.rstrip("/") + "/v1"
