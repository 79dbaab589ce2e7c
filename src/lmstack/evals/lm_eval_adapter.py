"""Run lm-evaluation-harness tasks against our server (or any OpenAI-compatible completions endpoint).

lm-eval's `local-completions` backend sends loglikelihood requests as /v1/completions with
`echo=True, logprobs=1` -- exactly what our server implements -- and generation requests as plain
completions. It counts continuation tokens with a tokenizer, so point it at the HF-format export
of the checkpoint (`lmstack export CKPT DIR` writes tokenizer files there):

    lmstack serve runs/quickstart/sft &
    lm_eval --model local-completions --tasks hellaswag,arc_easy \\
        --model_args model=lmstack,base_url=http://127.0.0.1:8000/v1/completions,num_concurrent=8,\\
max_retries=3,tokenized_requests=False,tokenizer_backend=huggingface,tokenizer=EXPORT_DIR

`lmstack eval lm-eval URL --tasks ...` builds and runs that command (`--dry-run` only prints it).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess

from lmstack.errors import LmstackError


class LmEvalError(LmstackError):
    """lm-evaluation-harness is not installed, or the arguments cannot make a command."""


def lm_eval_command(base_url: str, model: str, tasks: list[str], tokenizer: str | None = None,
                    limit: int | None = None, num_concurrent: int = 8, output_path: str | None = None) -> list[str]:
    if not tasks:
        raise LmEvalError("no lm-eval task given; pass e.g. --tasks hellaswag,arc_easy")
    completions_url = base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith("/completions") else "/completions")
    model_args = [f"model={model}", f"base_url={completions_url}", f"num_concurrent={num_concurrent}",
                  "max_retries=3", "tokenized_requests=False"]
    model_args += (["tokenizer_backend=huggingface", f"tokenizer={tokenizer}"] if tokenizer
                   else ["tokenizer_backend=None"])  # generation tasks only: loglikelihood needs a tokenizer
    command = ["lm_eval", "--model", "local-completions", "--tasks", ",".join(tasks), "--model_args", ",".join(model_args)]
    if limit is not None:
        command += ["--limit", str(limit)]
    if output_path:
        command += ["--output_path", output_path]
    return command


def run_lm_eval(command: list[str], dry_run: bool = False) -> int:
    print(shlex.join(command))
    if dry_run:
        return 0
    if shutil.which(command[0]) is None:
        raise LmEvalError("lm_eval is not installed: pip install 'lm-eval[api]' (then rerun, or copy the command above)")
    return subprocess.run(command).returncode
