"""Run lm-evaluation-harness tasks against our server (or any OpenAI-compatible completions endpoint).

lm-eval's `local-completions` backend sends loglikelihood requests as /v1/completions with
`echo=True, logprobs=1` -- exactly what our server implements -- and generation requests as plain
completions. It counts continuation tokens with a tokenizer, so point it at the HF-format export
of the checkpoint (`lmstack export CKPT DIR` writes tokenizer files there):

    lmstack serve runs/quickstart/sft/final &
    lm_eval --model local-completions --tasks hellaswag,arc_easy \\
        --model_args model=final,base_url=http://127.0.0.1:8000/v1/completions,num_concurrent=8,\\
max_retries=3,tokenized_requests=False,tokenizer_backend=huggingface,tokenizer=EXPORT_DIR

`model=` must be a name the server serves (ours serves the checkpoint dir's name, here `final`).
`lmstack eval lm-eval URL --tasks ...` builds and runs that command (`--dry-run` only prints it), with
the first model the server lists at GET /v1/models unless `--model-name` is given, and that model's context
(`max_model_len`, which ours and vLLM list) as lm-eval's `max_length`: lm-eval assumes 2048 and would send longer
loglikelihood prompts than a smaller model takes, each refused (HTTP 400); it cuts them to `max_length` from the
left instead. Less LM_EVAL_EXTRA_TOKENS: lm-eval counts a window without the bos the server puts before a text
prompt, and asks for one token after it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess

from lmstack.errors import LmstackError
from lmstack.openai_url import ListingCause, ModelListingError, api_base, first_listed


class LmEvalError(LmstackError):
    """lm-evaluation-harness is not installed, or the arguments cannot make a command."""


def lm_eval_command(base_url: str, model: str, tasks: list[str], tokenizer: str | None = None,
                    limit: int | None = None, num_concurrent: int = 8, output_path: str | None = None,
                    max_length: int | None = None, timeout_s: int | None = None) -> list[str]:
    """lm-eval's command line; `max_length` and `timeout_s` (seconds per request) are lm-eval's own when None."""
    if not tasks:
        raise LmEvalError("no lm-eval task given; pass e.g. --tasks hellaswag,arc_easy")
    model_args = [f"model={model}", f"base_url={_api_root(base_url)}/completions", f"num_concurrent={num_concurrent}",
                  "max_retries=3", "tokenized_requests=False"]
    model_args += [f"max_length={max_length}"] if max_length is not None else []
    model_args += [f"timeout={timeout_s}"] if timeout_s is not None else []
    model_args += (["tokenizer_backend=huggingface", f"tokenizer={tokenizer}"] if tokenizer
                   else ["tokenizer_backend=None"])  # generation tasks only: loglikelihood needs a tokenizer
    command = ["lm_eval", "--model", "local-completions", "--tasks", ",".join(tasks), "--model_args", ",".join(model_args)]
    if limit is not None:
        command += ["--limit", str(limit)]
    if output_path:
        command += ["--output_path", output_path]
    return command


# The served context less lm-eval's max_length: the server's bos before a text prompt, and the one token lm-eval asks
# for with each loglikelihood window (a window of the whole context was refused with a 400).
LM_EVAL_EXTRA_TOKENS = 2


def served_model(base_url: str) -> tuple[str, int | None]:
    """The first model the server lists, found the way `lmstack agent run` finds it (its key from $OPENAI_API_KEY,
    which lm-eval's local-completions also sends): its id, and its context when the server lists one. A malformed
    URL fails with its own message: naming the model would not help there."""
    api_root = _api_root(base_url)
    try:
        listed = first_listed(api_root, "OPENAI_API_KEY", timeout_s=30)
        return listed.id, getattr(listed, "max_model_len", None)
    except ModelListingError as err:
        raise LmEvalError(f"cannot find the model name at {base_url}: {err}"
                          + ("" if err.cause is ListingCause.NO_MODEL else "; or pass --model-name")) from None


def _api_root(base_url: str) -> str:
    """http://host:port[/v1][/completions] -> http://host:port/v1 (the URL may name the endpoint itself)."""
    return api_base(base_url.rstrip("/").removesuffix("/completions"))


def run_lm_eval(command: list[str], dry_run: bool = False) -> int:
    print(shlex.join(command))
    if dry_run:
        return 0
    if shutil.which(command[0]) is None:
        raise LmEvalError("lm_eval is not installed: pip install 'lm-eval[api]' (then rerun, or copy the command above)")
    return subprocess.run(command).returncode
