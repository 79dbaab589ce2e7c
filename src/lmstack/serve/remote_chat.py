"""A chat source for any OpenAI-compatible server (ours, vLLM, llama.cpp, Ollama, OpenAI), for `chat --url`."""

from __future__ import annotations

import os
from typing import Any, Iterator

import openai

from lmstack.errors import LmstackError
from lmstack.openai_url import ModelListingError, api_base, first_listed


class RemoteChatError(LmstackError):
    """The server at --url could not be reached or refused the request."""


class RemoteSource:
    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, max_tokens: int | None = None,
                 temperature: float = 0.8, top_p: float = 1.0, top_k: int = 0, seed: int | None = None):
        self.client = openai.OpenAI(base_url=api_base(url), max_retries=0,
                                    api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none")
        self.sampling: dict[str, Any] = {"temperature": temperature, "top_p": top_p}
        if max_tokens is not None:  # unset: the server's default, the rest of the context on ours and OpenAI's
            self.sampling["max_tokens"] = max_tokens
        if seed is not None:
            self.sampling["seed"] = seed
        if top_k > 0:  # not an OpenAI field: sent only when asked for (vLLM and lmstack read it)
            self.sampling["extra_body"] = {"top_k": top_k}
        self.model = model or _first_model(url, api_key)

    def stream(self, messages: list[dict[str, Any]]) -> Iterator[str]:
        try:
            stream = self.client.chat.completions.create(model=self.model, messages=messages, stream=True,
                                                         **self.sampling)
            with stream:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
        except openai.OpenAIError as err:
            raise RemoteChatError(f"the server refused the chat request: {err}") from None


def _first_model(url: str, api_key: str | None) -> str:
    """The model to chat with when --model is not given, found as every lmstack client finds it (one try: a person
    waits for the prompt)."""
    try:
        return first_listed(url, "OPENAI_API_KEY", timeout_s=30, max_retries=0, api_key=api_key,
                            key_fix="or pass it with --api-key", model_flag="--model").id
    except ModelListingError as err:
        raise RemoteChatError(f"could not list models at {url}: {err}") from None
