"""`--model` on the command line -> a `ModelClient` of the agent layer.

A URL is any OpenAI-compatible endpoint; anything else is a checkpoint dir run in-process on our engine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lmstack.agent.client import ModelClient, OpenAIClient
from lmstack.errors import LmstackError


class ModelSpecError(LmstackError):
    """A --model that is neither a URL nor a checkpoint directory."""


def make_client(spec: str, model_name: str | None = None, api_key: str | None = None) -> ModelClient:
    if spec.startswith(("http://", "https://")):
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        return OpenAIClient(spec, model_name or _first_model(spec, api_key), api_key=api_key)
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise ModelSpecError(f"--model '{spec}' is neither an http(s) URL nor a checkpoint dir with config.json; "
                             "pass e.g. http://127.0.0.1:8000/v1 or runs/quickstart/sft")
    from lmstack.agent.engine_client import EngineClient

    return EngineClient.from_checkpoint(path)


def _first_model(base_url: str, api_key: str | None) -> str:
    """Ask the endpoint which model it serves, so `--model URL` alone works against a one-model server.

    If it cannot say (down, or no /v1/models), the run still goes ahead under the name 'default':
    every sample then records why its calls failed, which is what an eval report should show.
    """
    import openai

    try:
        models = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=10, max_retries=1).models.list()
        return models.data[0].id
    except (openai.APIError, IndexError) as err:
        print(f"warning: could not list models at {base_url} ({err}); using model name 'default' "
              "(pass --model-name NAME)", file=sys.stderr)
        return "default"
