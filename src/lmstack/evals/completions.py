"""Per-token logprobs of a prompt, for loglikelihood multiple choice and bits-per-byte.

Over HTTP this is the legacy completions endpoint with `echo=True, logprobs=0` -- what
lm-evaluation-harness's `local-completions` uses, so it works against our server, vLLM or llama.cpp.
In-process (a client that holds an engine) it is one forward pass of the model, with the tokenizer's
bos token in front so the first token of the prompt is scored too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lmstack.agent.client import ModelCallError


@dataclass(slots=True)
class PromptToken:
    token: str
    logprob: float | None  # None only where an endpoint scored nothing after the prompt's first scored token
    offset: int  # character offset of the token in the prompt

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_logprobs(client: Any, prompt: str) -> list[PromptToken]:
    if getattr(client, "sdk", None) is not None:
        return _over_http(client, prompt)
    engine = getattr(client, "engine", None)
    if engine is not None:
        return model_prompt_logprobs(engine.model, engine.tokenizer, prompt)
    raise ModelCallError(f"model client {type(client).__name__} cannot score prompts; use an OpenAI-compatible "
                         "URL with a /v1/completions endpoint or a local checkpoint")


def _over_http(client: Any, prompt: str) -> list[PromptToken]:
    import openai

    try:
        # max_tokens=1: some servers reject 0; the generated token is dropped below by its offset.
        completion = client.sdk.completions.create(model=client.model, prompt=prompt, max_tokens=1, echo=True,
                                                   logprobs=0, temperature=0.0)
    except openai.NotFoundError:  # a chat-only API (OpenAI's newer models, some proxies): no retry can help
        raise ModelCallError(f"{client.sdk.base_url}completions answered HTTP 404 for model '{client.model}' (no such "
                             "endpoint there, or no such model): scoring prompts (multiple_choice, bits_per_byte) "
                             "needs /v1/completions (lmstack serve, vLLM, llama.cpp) or a checkpoint dir as --model"
                             ) from None
    except openai.APIError as err:
        raise ModelCallError(f"completions with echo+logprobs at {client.sdk.base_url} failed: {err}") from None
    lp = completion.choices[0].logprobs
    if lp is None or lp.text_offset is None:
        raise ModelCallError(f"{client.sdk.base_url} returned no prompt logprobs; the endpoint must support "
                             "echo=True with logprobs on /v1/completions")
    shift = _prompt_start(lp.tokens, lp.text_offset, prompt)
    return prompt_tokens(lp.tokens, lp.token_logprobs, [offset - shift for offset in lp.text_offset], len(prompt))


def prompt_tokens(tokens: list[str], logprobs: list[float | None], offsets: list[int],
                  prompt_length: int) -> list[PromptToken]:
    """The prompt's tokens from an echo: those inside the prompt (the generated one is past its end), from the
    first scored one on. The leading tokens without a logprob (bos, or the first token of a prompt without one)
    have nothing to score; a bos at offset 0 (the text it adds is not echoed) would otherwise pass the offset
    filter. A missing logprob further in is kept as None, so that scoring a continuation with it fails loudly."""
    inside = [PromptToken(token, logprob, offset)
              for token, logprob, offset in zip(tokens, logprobs, offsets) if 0 <= offset < prompt_length]
    first_scored = next((i for i, t in enumerate(inside) if t.logprob is not None), len(inside))
    return inside[first_scored:]


def _prompt_start(tokens: list[str], offsets: list[int], prompt: str) -> int:
    """The server offset at which the prompt begins. Servers differ in whether a leading bos token's
    text counts in the offsets, so find where the prompt starts in the tokens' own text instead."""
    position = "".join(tokens).find(prompt[:32])
    length = 0
    for token, offset in zip(tokens, offsets):
        if length >= position >= 0:
            return offset - (length - position)
        length += len(token)
    return 0


def model_prompt_logprobs(model: Any, tokenizer: Any, prompt: str) -> list[PromptToken]:
    """Every prompt token's logprob given bos and the text before it. A prompt longer than the context
    is scored in sliding windows: each window scores the next block/2 tokens with at least block/2
    tokens of context, so no token is scored from a cold start (as in perplexity-of-long-text evals)."""
    import torch  # only the in-process path needs it; HTTP-only evals start faster without it

    ids, offsets = tokenizer.encode_with_offsets(prompt)
    full = [tokenizer.bos_id, *ids]  # position p (>= 1) is predicted from full[:p]
    block = model.cfg.block_size
    device = next(model.parameters()).device
    scored: list[float] = []
    while len(scored) < len(ids):
        first = len(scored) + 1
        end = min(len(full), block if first == 1 else first + block // 2)
        begin = max(0, end - block)
        window = torch.tensor([full[begin:end]], device=device)
        with torch.no_grad():
            logits, _ = model(window)
        logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1).gather(1, window[0, 1:, None])[:, 0]
        scored += logprobs[first - begin - 1:].tolist()
    return [PromptToken(tokenizer.decode([t]), lp, off) for t, lp, off in zip(ids, scored, offsets)]
