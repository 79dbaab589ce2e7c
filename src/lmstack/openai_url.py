"""OpenAI-compatible servers as every client in lmstack finds them: the base URL, normalised the same way, and the
model a server serves when none is named (the first one GET /v1/models lists)."""

from __future__ import annotations

import enum
import os
from typing import Any
from urllib.parse import urlparse

from lmstack.errors import LmstackError


class OpenAIURLError(LmstackError):
    """A server URL that is not http(s)://host[:port][/path]."""


def is_http_url(spec: str | None) -> bool:
    """Whether a --model (or --judge) names an endpoint by its URL, rather than a checkpoint dir run in-process."""
    return bool(spec) and spec.startswith(("http://", "https://"))


def api_base(url: str) -> str:
    """Accept 'http://host:port' as well as 'http://host:port/v1' (any explicit path is kept)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise OpenAIURLError(f"'{url}' is not an http(s) URL; pass e.g. http://127.0.0.1:8000/v1")
    return url.rstrip("/") if parsed.path not in ("", "/") else url.rstrip("/") + "/v1"


class ListingCause(enum.Enum):
    KEY_REFUSED = "key_refused"  # the message says how to send the right key
    UNREACHABLE = "unreachable"  # the message asks whether the server runs at that URL
    NO_MODEL = "no_model"  # the server answered without a model to use: the message says to pass the model flag


class ModelListingError(LmstackError):
    """GET /v1/models gave no model id. `status`: the HTTP status when the server answered (None: it did not, or
    listed nothing); `cause`: which fix the message names, so a caller can add its own without reading the text."""

    def __init__(self, message: str, status: int | None, cause: ListingCause):
        super().__init__(message)
        self.status = status
        self.cause = cause


def first_listed(url: str, api_key_env: str, timeout_s: float, prefix: str = "", key_fix: str = "",
                 max_retries: int = 2, api_key: str | None = None, model_flag: str = "--model-name") -> Any:
    """The first model GET /v1/models lists at `url`: its `id`, and what else the server says of it (ours and vLLM's
    `max_model_len`, as an attribute). A ModelListingError (one line after `prefix`: the cause and its fix) when it
    cannot be listed. The key sent is `api_key` when given (a command's --api-key), else $api_key_env. Each command
    names its own flags: `key_fix` another way to give the key than the variable, `model_flag` the one that names
    the model instead of listing it."""
    import openai

    sdk = openai.OpenAI(base_url=api_base(url), api_key=api_key or os.environ.get(api_key_env) or "not-needed",
                        timeout=timeout_s, max_retries=max_retries)
    try:
        models = sdk.models.list().data
    except openai.APIError as err:
        cause, why = listing_failure(err, api_key_env, key_fix, key_given=bool(api_key), model_flag=model_flag)
        raise ModelListingError(prefix + why, getattr(err, "status_code", None), cause) from None
    if not models:
        raise ModelListingError(f"{prefix}the endpoint lists no models; pass {model_flag}", None, ListingCause.NO_MODEL)
    return models[0]


def listing_failure(err: Exception, api_key_env: str, key_fix: str = "", key_given: bool = False,
                    model_flag: str = "--model-name") -> tuple[ListingCause, str]:
    """Why GET /v1/models failed, with the fix for that cause."""
    import openai

    if isinstance(err, (openai.AuthenticationError, openai.PermissionDeniedError)):
        if key_given:  # $api_key_env was not read: the fix is the flag the key came with
            return ListingCause.KEY_REFUSED, (f"the server refused the API key (HTTP {err.status_code}; sent the key "
                                              f"given with --api-key): pass the server's key with --api-key")
        sent = f"the key in ${api_key_env}" if os.environ.get(api_key_env) else f"no key (${api_key_env} is not set)"
        return ListingCause.KEY_REFUSED, (f"the server refused the API key (HTTP {err.status_code}; sent {sent}): "
                                          f"set ${api_key_env} to the server's key{', ' + key_fix if key_fix else ''}")
    if isinstance(err, openai.APIConnectionError):
        return ListingCause.UNREACHABLE, f"cannot connect ({err}); is the server running at that URL?"
    return ListingCause.NO_MODEL, f"cannot list its models ({err}); pass {model_flag}"
