"""`--model` on the command line -> a `ModelClient`, built by the agent layer exactly as `lmstack agent run`
builds its own: a URL is any OpenAI-compatible endpoint (key from $OPENAI_API_KEY), anything else a
checkpoint dir run in-process on our engine."""

from __future__ import annotations

from lmstack.agent.client import ModelClient
from lmstack.agent.launch import ClientFlags, build_client
from lmstack.agent.settings import AgentConfig

# `eval run` reads the key from $OPENAI_API_KEY only: no other way to give it is named.
MODEL_FLAGS = ClientFlags("--model", "--model-name", key_fix="", timeout_fix="pass a larger --timeout SECONDS")
JUDGE_FLAGS = ClientFlags("--judge", "--judge-name", key_fix="", timeout_fix="pass a larger --timeout SECONDS")


def make_client(spec: str, model_name: str | None = None, timeout_s: float | None = None,
                flags: ClientFlags = MODEL_FLAGS) -> ModelClient:
    """Without `model_name`, a URL's first listed model is used (an error if the endpoint cannot say). `timeout_s`:
    seconds each HTTP request may take (default the agent's 60). `flags`: the model's or the judge's, for errors."""
    return build_client(AgentConfig(model=spec, model_name=model_name or "",
                                    timeout_s=timeout_s or AgentConfig.timeout_s), flags)
