"""The inference engine: paged KV cache, continuous batching, per-request sampling, logprobs.

API (modelled on vLLM's `LLM` / `SamplingParams`; the server codes against it):

    engine = Engine.from_checkpoint("runs/x/final", EngineConfig(kv_memory_mb=512))  # or Engine(model, tok, config)
    outputs = engine.generate(["Once upon", [1, 2, 3]], SamplingParams(max_tokens=32))  # offline batch
    outputs[0].text, outputs[0].token_ids, outputs[0].outputs[i]          # RequestOutput, n samples each

    rid = engine.add_request("Hello", SamplingParams(temperature=0.7, stop=["\n"]))     # online
    while engine.has_unfinished():
        for event in engine.step():    # TokenEvent per new token, as soon as it is produced
            event.request_id, event.index, event.token_id, event.text, event.logprob, event.top_logprobs,
            event.finished, event.finish_reason ('stop' | 'length' | 'abort'), event.prompt_logprobs, event.usage
    engine.abort(rid)

- A prompt is text (encoded with the tokenizer, bos prepended when it has one) or a list of token ids
  (used as is). The engine knows nothing about chat templates.
- `add_request` and `abort` may be called from any thread; they only touch an inbox under a lock, which `step`
  applies at its start. Steps run one at a time: a `step` or `generate` called from another thread meanwhile waits.
- `generate` runs every unfinished request, its own and those added with `add_request`; the events of the latter
  come out of the next `step`, so that none is lost.
- Stats for /metrics: `num_free_blocks`, `num_total_blocks`, `num_waiting`, `num_running`.
- A request that can never fit (prompt + max_tokens beyond the model's context or the KV pool) is
  refused by `add_request` with a `SamplingError`; requests that merely do not fit *now* wait, and
  running ones are preempted and recomputed when the pool runs dry.
- A setting of the wrong type, or a prompt that is neither text nor integer token ids, is refused by `add_request`
  with a `SamplingError`. A step that raises anyway aborts the requests it ran (their blocks freed) and re-raises,
  so the engine serves the next request; `generate` leaves none of its requests behind when it raises.
- Logprobs are those of the model's distribution (log_softmax of the raw logits), before
  temperature, penalties and filtering, as in vLLM.
- `SamplingParams.constraint` (a factory of per-sequence token masks) is the hook structured output uses.
- `Engine(model, ...)` serves the model in the dtype and on the device it is in; `from_checkpoint`
  loads it with `config.dtype` and `config.device`. `compile` and `cuda_graphs` change speed, not results
  (compile: up to rounding, from fused kernels), and cost memory (compile: frozen copies of the weights on CPU).
- `quantization="int8"` stores the Linear weights as int8 with per-channel scales (infer/quantize.py):
  the engine replaces the model's Linear layers in place, so the model passed in is changed too.
- `pack_weights` (on by default) gives a bf16 model on CPU oneDNN-prepacked Linear weights (infer/packed.py):
  bit-identical outputs, about twice the decode speed, a second copy of the Linear weights in memory (skipped,
  with a warning, when that copy would take more than half of the memory free). The
  layers are swapped in place but keep their Parameters and train as before; the packed copies follow
  every change of the weights. With `compile=True` the prefill steps use them; the prepacking memory check also
  counts the compiled graphs' own copies.
- `compile=True` compiles the decode steps (infer/compiled_decode.py: AOTInductor on CPU, torch.compile on GPUs)
  when the engine is built (1-2 min on CPU), not during the first requests. On CPU a small model decodes over twice
  as fast at bs=1; GPT-2-124M, bound by reading its weights, 1.4x as fast (Intel Xeon; on an AMD EPYC as fast).
  Each of the two CPU graphs (a lone sequence's, a batch's) freezes a copy of the weights: a model changed
  afterwards (a weight changed or replaced, a layer replaced) makes the engine warn and decode eagerly, as does a
  compile that fails. With `cuda_graphs=True` on NVIDIA, the CUDA graphs take the decode steps and `compile` is not
  used.
"""

from __future__ import annotations

import dataclasses
import operator
import itertools
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lmstack.device import DeviceError, available_memory_bytes, detect_device, inference_dtype
from lmstack.infer.block_manager import BlockManager
from lmstack.infer.compiled_decode import COMPILED_GRAPHS, CompiledDecoder
from lmstack.infer.cuda_graphs import CudaGraphDecoder
from lmstack.infer.detokenizer import IncrementalDetokenizer
from lmstack.infer.paged_cache import PagedKVCache, build_layout
from lmstack.infer.packed import linear_weight_bytes, pack_linears, packed_copy_fits, packing_supported
from lmstack.infer.params import SamplingError, SamplingParams
from lmstack.infer.quantize import check_method, quantize_model
from lmstack.infer.sampler import apply_penalties, sample
from lmstack.infer.scheduler import ScheduledChunk, Scheduler
from lmstack.infer.sequence import Sequence, Status, TokenLogprob
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import GPT

log = logging.getLogger("lmstack.infer")


@dataclass
class EngineConfig:
    block_size: int = 16  # tokens per KV block
    num_blocks: int | None = None  # KV pool size; None = from kv_memory_mb
    kv_memory_mb: float = 512.0  # KV pool budget when num_blocks is None (capped at what max_num_seqs can use)
    max_num_seqs: int = 64  # sequences decoded together
    max_batched_tokens: int = 2048  # token budget of one step (prefill chunks + decode tokens)
    # weights and cache: auto (bf16 where the device has it) | float32 | bfloat16 | float16 (or half, bf16, ...)
    dtype: str = "auto"
    device: str = "auto"
    compile: bool = False  # compile the decode steps, when built (1-2 min; measure: bench/decode.py --compile)
    enable_prefix_caching: bool = True
    cuda_graphs: bool = False  # replay captured decode steps on NVIDIA GPUs (captured on the first decode)
    quantization: str | None = None  # "int8": weight-only int8 Linears (replaces the model's layers in place)
    pack_weights: bool = True  # CPU bf16: oneDNN-prepacked Linear weights (same outputs, ~2x decode, 2x their memory)

    def validate(self) -> None:
        check_method(self.quantization)
        if self.dtype != "auto":  # a name it does not know: refused now, not once the model has started loading
            try:
                inference_dtype(None, self.dtype)  # the device matters for "auto" only
            except DeviceError as err:
                raise SamplingError(f"engine dtype: {err}") from None
        if not self.kv_memory_mb > 0:
            raise SamplingError(f"engine kv_memory_mb must be > 0 (the KV pool's budget in MiB), "
                                f"got {self.kv_memory_mb}")
        # Zero would schedule nothing, and the engine would step forever without an error.
        for name in ("block_size", "max_num_seqs", "max_batched_tokens", "num_blocks"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SamplingError(f"engine {name} must be at least 1, got {getattr(self, name)}")


@dataclass(slots=True)
class TokenEvent:
    request_id: str
    index: int
    token_id: int | None  # None on an abort event
    text: str  # the text this token makes certain (may be empty; held-back text comes later)
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finished: bool = False
    finish_reason: str | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # on the request's first event, when asked
    usage: dict[str, int] | None = None  # on finish: prompt_tokens, completion_tokens
    stop_token: bool = False  # a stop id that ended the sequence: no text of its own (OpenAI lists no logprob for it)


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    prompt_logprobs: list[TokenLogprob | None] | None
    outputs: list[CompletionOutput] = field(default_factory=list)

    # The first sample's fields, for the common n == 1 case.
    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def logprobs(self) -> list[TokenLogprob] | None:
        return self.outputs[0].logprobs

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason


class Engine:
    def __init__(self, model: GPT, tokenizer=None, config: EngineConfig | None = None):
        self.config = config = config or EngineConfig()
        config.validate()
        if config.quantization is not None:
            model = quantize_model(model, config.quantization)
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg = model.cfg
        weight = model.tok_emb.weight
        self.device, self.dtype = weight.device, weight.dtype
        # With compile=True too, for the eager prefill steps; its graphs hold frozen copies of their own, which the
        # memory check counts (traced code takes F.linear, see PackedLinear).
        if config.pack_weights and packing_supported(self.device, self.dtype):
            frozen_copies = COMPILED_GRAPHS if config.compile else 0
            if packed_copy_fits(model, available_memory_bytes(), frozen_copies):
                pack_linears(model)
            else:  # a second copy of a big model's weights would run the machine out of memory
                log.warning("not prepacking the Linear weights: the packed copy (%.1f GB, and %d compiled graphs' "
                            "copies) would take more than half of the memory free; eager steps run unpacked, about "
                            "half as fast (pack_weights=False silences this)", linear_weight_bytes(model) / 1e9,
                            frozen_copies)
        self.num_total_blocks = kv_pool_blocks(config, cfg, self.dtype)
        use_graphs = config.cuda_graphs and self.device.type == "cuda" and torch.version.hip is None
        # CUDA graphs pad batches; padded rows write into one spare block that the block manager never hands out.
        self.cache = PagedKVCache(cfg.n_layer, self.num_total_blocks + use_graphs, config.block_size, cfg.kv_heads,
                                  cfg.head_dim, self.dtype, self.device)
        self._graphs = CudaGraphDecoder(model, self.cache, config.max_num_seqs, cfg.block_size,
                                        spare_block=self.num_total_blocks) if use_graphs else None
        self.block_manager = BlockManager(self.num_total_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_batched_tokens)
        self.failed_requests: set[str] = set()  # those of the last step that raised, which aborted them
        self.requests: dict[str, list[Sequence]] = {}
        self._inbox: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._step_lock = threading.RLock()  # one step at a time (an aborting generate steps inside a step)
        self._generating: set[str] = set()  # the requests of generate calls, which collect their own outputs
        self._held_events: list[TokenEvent] = []  # other requests' events from generate's steps, for the next step
        self._ids = itertools.count()
        self._compiled = None
        if config.compile and not use_graphs:
            log.info("compiling the decode steps (a minute or two)")
            largest_decode = min(config.max_num_seqs, config.max_batched_tokens)
            self._compiled = CompiledDecoder(model, self.cache, largest_decode)
            self._compiled.warm_up()

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: EngineConfig | None = None) -> "Engine":
        from lmstack.model.checkpoint import load_model_dir, model_config_of, read_config

        config = config or EngineConfig()
        config.validate()  # this and the KV pool's check (from config.json alone) before the load, which takes a while
        info = detect_device(config.device)
        dtype = inference_dtype(info, config.dtype)
        kv_pool_blocks(config, model_config_of(Path(path), read_config(path)), dtype)
        model, tokenizer, _ = load_model_dir(path, device=info.torch_device, dtype=dtype)
        return cls(model, tokenizer, config)

    # ---- stats (read from any thread) ----------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return self.block_manager.num_free_blocks

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    # ---- requests --------------------------------------------------------------------------------
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise SamplingError(f"params must be a SamplingParams, got {_preview(params)} ({type(params).__name__}); "
                                "e.g. SamplingParams(max_tokens=32)", param="params")
        prompt_ids = self.prompt_ids(prompt)
        if params.max_tokens is None:  # at least 1: a prompt that fills the context then gets _check_fits' error
            params = dataclasses.replace(params, max_tokens=max(1, self.room_for(len(prompt_ids))))
        params.validate(self.model.cfg.vocab_size)  # after that: min_tokens is checked against the max it got
        self._check_fits(len(prompt_ids), params)
        if params.stop and self.tokenizer is None:
            raise SamplingError("stop strings need a tokenizer; pass stop_token_ids instead or load one")
        request_id = request_id or f"req-{next(self._ids)}"
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos and self.tokenizer is not None:
            stop_ids.update(self.tokenizer.stop_ids)
        seqs = [Sequence(request_id, i, list(prompt_ids), params, self._generator(params, i),
                         IncrementalDetokenizer(self.tokenizer, params.stop, params.include_stop_str_in_output)
                         if self.tokenizer else None,
                         frozenset(stop_ids), constraint=params.constraint() if params.constraint else None)
                for i in range(params.n)]
        with self._lock:
            if request_id in self.requests:
                raise SamplingError(f"request id '{request_id}' is already running; use a unique id")
            self.requests[request_id] = seqs
            self._inbox.append(("add", seqs))
        return request_id

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._inbox.append(("abort", request_id))

    def has_unfinished(self) -> bool:
        with self._lock:
            return bool(self._inbox or self.requests or self._held_events)


    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """The token ids add_request runs for `prompt`: a text is encoded after bos; ids are checked against the vocab."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise SamplingError("a text prompt needs a tokenizer; pass token ids or load a checkpoint with one")
            bos = [self.tokenizer.bos_id] if self.tokenizer.bos_id is not None else []
            ids = bos + self.tokenizer.encode(prompt)
        else:
            try:  # bytes iterate as ints, but they are text the caller forgot to decode
                if isinstance(prompt, (bytes, bytearray)):
                    raise TypeError
                ids = [_token_id(t) for t in prompt]
            except TypeError:
                raise SamplingError(f"a prompt is a text or a list of integer token ids, got {_preview(prompt)}; "
                                    "decode bytes to a str, convert other values to int") from None
        if not ids:
            raise SamplingError("the prompt is empty; pass at least one token")
        bad = [t for t in ids if not 0 <= t < self.model.cfg.vocab_size]
        if bad:
            raise SamplingError(f"prompt token ids {bad[:5]} are outside the vocab [0, {self.model.cfg.vocab_size})")
        return ids

    def room_for(self, prompt_len: int) -> int:
        """How many tokens a request with a prompt of `prompt_len` tokens may generate: the rest of the model's
        context, within the KV pool's slots; 0 when the prompt fills them. (What max_tokens may be at most.)"""
        return max(0, min(self.model.cfg.block_size, self.num_total_blocks * self.config.block_size) - prompt_len)

    def _check_fits(self, prompt_len: int, params: SamplingParams) -> None:
        total = prompt_len + params.max_tokens
        context = self.model.cfg.block_size
        if prompt_len >= context:
            raise SamplingError(f"prompt of {prompt_len} tokens fills the model's context of {context} tokens and "
                                "leaves no room for a new token; shorten the prompt")
        if total > context:
            raise SamplingError(f"prompt of {prompt_len} tokens + max_tokens={params.max_tokens} exceeds the "
                                f"model's context of {context} tokens; shorten the prompt or lower max_tokens")
        capacity = self.num_total_blocks * self.config.block_size
        if total > capacity:
            raise SamplingError(f"prompt of {prompt_len} tokens + max_tokens={params.max_tokens} needs {total} "
                                f"KV slots but the cache holds {capacity}; raise kv_memory_mb / num_blocks "
                                "or lower max_tokens")

    def _generator(self, params: SamplingParams, index: int) -> torch.Generator | None:
        if params.temperature == 0:
            return None
        generator = torch.Generator(device=self.device)
        if params.seed is None:
            generator.seed()
        else:
            generator.manual_seed(params.seed + index)
        return generator

    # ---- the step ------------------------------------------------------------------------------
    def _apply_inbox(self) -> list[TokenEvent]:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        events = []
        for kind, payload in inbox:
            if kind == "add":
                for seq in payload:
                    self.scheduler.add(seq)
                continue
            with self._lock:
                seqs = self.requests.pop(payload, [])
            for seq in seqs:
                if seq.status is not Status.FINISHED:
                    self.scheduler.remove(seq)
                    seq.finish_reason = "abort"
                    rest = seq.detokenizer.flush() if seq.detokenizer else ""
                    events.append(TokenEvent(seq.request_id, seq.index, None, rest,
                                             finished=True, finish_reason="abort", usage=self._usage(seq)))
        return events

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        """Run one forward over the scheduled tokens; return an event per sampled token (and per abort)."""
        with self._step_lock:
            with self._lock:
                held, self._held_events = self._held_events, []
            events = held + self._apply_inbox()
            chunks = self.scheduler.schedule()
            if not chunks:
                return events
            try:
                return events + self._run(chunks)
            except BaseException:
                # The step's sequences are half-advanced (their tokens counted as computed, none sampled), and every
                # later step would fail on them: abort them, so that the engine serves the next request; then raise.
                # The server answers these requests, and only these, with the error.
                self.failed_requests = {chunk.seq.request_id for chunk in chunks}
                self._abort_now(self.failed_requests)
                with self._lock:  # events held from generate's steps are still owed to the next step's caller
                    self._held_events = held + self._held_events
                raise

    def _abort_now(self, request_ids) -> None:
        """Abort these requests now, not at the next step (their abort events are dropped), after a failure."""
        with self._step_lock:
            for request_id in request_ids:
                self.abort(request_id)
            self._apply_inbox()

    def _run(self, chunks: list[ScheduledChunk]) -> list[TokenEvent]:
        logits, sample_rows, prompt_rows = self._forward(chunks)
        for chunk in chunks:
            chunk.seq.num_computed_tokens = chunk.start + chunk.length
            self.block_manager.register_computed(chunk.seq)
        for chunk, rows in prompt_rows:
            self._record_prompt_logprobs(chunk, logits[rows])
        sampling = [chunk for chunk in chunks if chunk.samples]
        if not sampling:
            return []
        every_row = len(sample_rows) == logits.size(0)  # then sample_rows == 0 .. B-1: skip the gather
        return self._sample_and_emit(sampling, logits if every_row else logits[sample_rows])

    def _forward(self, chunks: list[ScheduledChunk]):
        """One forward over all chunks, flattened into a single row -> (logits, sampling rows, prompt-logprob rows)."""
        ids: list[int] = []
        positions: list[int] = []
        logit_rows: list[int] = []
        sample_rows: list[int] = []
        prompt_rows: list[tuple[ScheduledChunk, list[int]]] = []
        for chunk in chunks:
            seq, base = chunk.seq, len(ids)
            ids += seq.tokens(chunk.start, chunk.start + chunk.length)
            positions += range(chunk.start, chunk.start + chunk.length)
            if seq.wants_prompt_logprobs:
                first = len(logit_rows)
                logit_rows += range(base, base + chunk.length)
                prompt_rows.append((chunk, list(range(first, len(logit_rows)))))
                if chunk.samples:
                    sample_rows.append(len(logit_rows) - 1)
            elif chunk.samples:
                sample_rows.append(len(logit_rows))
                logit_rows.append(base + chunk.length - 1)
        device = self.device
        # logit_rows rises through 0 .. N-1, so equal lengths mean every row is wanted: no row selection.
        logits_at = None if len(logit_rows) == len(ids) else torch.tensor(logit_rows, device=device, dtype=torch.long)
        if len(ids) == len(chunks):  # a decode step: one token per sequence (a lone prompt token counts)
            logits = self._fast_decode(ids, positions, chunks)
            if logits is not None:
                return (logits if logits_at is None else logits[logits_at]).float(), sample_rows, prompt_rows
        self.cache.layout = build_layout([(c.seq.block_table, c.start, c.length) for c in chunks],
                                         self.config.block_size, device)
        logits, _ = self.model(torch.tensor([ids], device=device), positions=torch.tensor([positions], device=device),
                               kv_cache=self.cache, logits_at=logits_at)
        self.cache.layout = None
        return logits.reshape(-1, logits.size(-1)).float(), sample_rows, prompt_rows

    def _fast_decode(self, ids: list[int], positions: list[int], chunks: list[ScheduledChunk]) -> torch.Tensor | None:
        """Logits (B, V) of a decode step from CUDA graphs or the compiled step, or None to run it eagerly."""
        block_tables = [c.seq.block_table for c in chunks]
        if self._graphs is not None:
            if not self._graphs.graphs:
                self._graphs.capture()
            return self._graphs.run(ids, positions, block_tables)
        if self._compiled is not None:
            return self._compiled.run(ids, positions, block_tables)
        return None

    def _record_prompt_logprobs(self, chunk: ScheduledChunk, logits: torch.Tensor) -> None:
        """Logits at position p score prompt token p + 1; the first prompt token gets None."""
        seq = chunk.seq
        k = seq.params.prompt_logprobs
        if not seq.prompt_logprobs:
            seq.prompt_logprobs.append(None)
        log_probs = logits.log_softmax(dim=-1)
        for row, position in enumerate(range(chunk.start, chunk.start + chunk.length)):
            target = position + 1
            if target != len(seq.prompt_logprobs) or target >= len(seq.prompt_ids):
                continue
            token = seq.prompt_ids[target]
            seq.prompt_logprobs.append(_token_logprob(log_probs[row], token, k))

    def _sample_and_emit(self, chunks: list[ScheduledChunk], logits: torch.Tensor) -> list[TokenEvent]:
        seqs = [c.seq for c in chunks]
        penalised = [i for i, s in enumerate(seqs) if s.penalised]
        scores = apply_penalties(logits, penalised, [seqs[i].params for i in penalised],
                                 [seqs[i].prompt_ids for i in penalised], [seqs[i].output_ids for i in penalised])
        scores = self._apply_constraints(seqs, scores)
        tokens = sample(scores, [s.sampling for s in seqs])
        want = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
        if want:
            log_probs = logits[want].log_softmax(dim=-1)
        token_list = tokens.tolist()  # the one sync per step: the host needs the ids
        events = []
        for i, (seq, token) in enumerate(zip(seqs, token_list)):
            logprob = _token_logprob(log_probs[want.index(i)], token, seq.params.logprobs) if i in want else None
            events.append(self._append_token(seq, token, logprob))
        return events

    @staticmethod
    def _apply_constraints(seqs: list[Sequence], scores: torch.Tensor) -> torch.Tensor:
        """Tokens a sequence may not sample next get -inf, before temperature and filtering: those its constraint
        forbids, and its stop ids while it is under min_tokens."""
        constrained = [i for i, s in enumerate(seqs) if s.constraint is not None]
        too_short = [i for i, s in enumerate(seqs) if s.params.min_tokens > len(s.output_ids) and s.stop_ids]
        if not constrained and not too_short:
            return scores
        allowed = torch.ones_like(scores, dtype=torch.bool)
        for i in constrained:
            allowed[i] = seqs[i].constraint.allowed_tokens(scores.size(1)).to(scores.device)
        for i in too_short:
            allowed[i, [t for t in seqs[i].stop_ids if t < scores.size(1)]] = False
        return scores.masked_fill(~allowed, float("-inf"))

    def _append_token(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> TokenEvent:
        seq.output_ids.append(token)
        if seq.constraint is not None:
            seq.constraint.advance(token)
        if logprob is not None:
            seq.logprobs.append(logprob)
        finish, delta = None, ""
        stop_token = token in seq.stop_ids
        if stop_token:
            finish = "stop"
            delta = seq.detokenizer.flush() if seq.detokenizer else ""
        else:
            if seq.detokenizer:
                # Under min_tokens no stop string ends the sequence (vLLM's rule): the text goes out as it is.
                delta, stopped = seq.detokenizer.add(token, find_stop=len(seq.output_ids) >= seq.params.min_tokens)
                finish = "stop" if stopped else None
            if finish is None and len(seq.output_ids) >= seq.params.max_tokens:
                finish = "length"
                delta += seq.detokenizer.flush() if seq.detokenizer else ""
        seq.text += delta
        event = TokenEvent(seq.request_id, seq.index, token, delta,
                           logprob.logprob if logprob else None, logprob.top if logprob else None, stop_token=stop_token)
        if seq.params.prompt_logprobs is not None and not seq.prompt_logprobs_sent:
            event.prompt_logprobs, seq.prompt_logprobs_sent = seq.prompt_logprobs, True
        if finish:
            seq.finish_reason = finish
            self.scheduler.remove(seq)
            event.finished, event.finish_reason, event.usage = True, finish, self._usage(seq)
            with self._lock:
                siblings = self.requests.get(seq.request_id, [])
                if all(s.status is Status.FINISHED for s in siblings):
                    self.requests.pop(seq.request_id, None)
        return event

    @staticmethod
    def _usage(seq: Sequence) -> dict[str, int]:
        return {"prompt_tokens": len(seq.prompt_ids), "completion_tokens": len(seq.output_ids)}

    # ---- offline batches -------------------------------------------------------------------------
    def generate(self, prompts: str | list[int] | list[str | list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None,
                 show_progress: bool = False) -> list[RequestOutput]:
        """Run prompts to completion together (continuous batching); outputs in the prompts' order."""
        if _is_one_prompt(prompts):
            prompts = [prompts]
        params_list = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise SamplingError(f"got {len(params_list)} SamplingParams for {len(prompts)} prompts; "
                                "pass one, or one per prompt", param="params")
        ids: list[str] = []
        try:
            for prompt, sp in zip(prompts, params_list):
                request_id = self.add_request(prompt, sp)
                with self._lock:
                    self._generating.add(request_id)
                ids.append(request_id)
            seqs = {rid: self.requests[rid] for rid in ids}
            total = sum(len(s) for s in seqs.values())
            with tqdm(total=total, desc="generate", unit="seq", disable=not show_progress) as bar:
                while any(s.status is not Status.FINISHED for rid in ids for s in seqs[rid]):
                    bar.update(sum(1 for e in self._step_for_generate() if e.finished and e.request_id in seqs))
        except BaseException:  # a refused prompt, a failed step, Ctrl-C: leave none of this call's requests behind
            self._abort_now(ids)
            raise
        finally:
            with self._lock:
                self._generating.difference_update(ids)
        return [self._output(rid, seqs[rid]) for rid in ids]

    def _step_for_generate(self) -> list[TokenEvent]:
        """A step whose events of requests not run by a generate call are kept for the next `step`'s caller."""
        with self._step_lock:
            events = self.step()
            with self._lock:
                self._held_events += [e for e in events if e.request_id not in self._generating]
        return events

    @staticmethod
    def _output(request_id: str, seqs: list[Sequence]) -> RequestOutput:
        first = seqs[0]
        return RequestOutput(
            request_id, first.prompt_ids, first.prompt_logprobs if first.params.prompt_logprobs is not None else None,
            [CompletionOutput(s.index, s.text, list(s.output_ids),
                              s.logprobs if s.params.logprobs is not None else None, s.finish_reason) for s in seqs])


def kv_pool_blocks(config: EngineConfig, model_cfg: ModelConfig, dtype: torch.dtype) -> int:
    """The KV pool's size in blocks: `num_blocks`, else what `kv_memory_mb` holds (capped at what `max_num_seqs`
    sequences of the model's whole context can use). From the configs alone, so that a command that loads the model
    later (`lmstack serve`) refuses a budget too small for one block before it starts, with the engine's own rule.
    A pool that holds less than the model's context still serves (shorter requests), so one block is the minimum."""
    if config.num_blocks is not None:
        return config.num_blocks
    per_block = PagedKVCache.bytes_per_block(model_cfg.n_layer, config.block_size, model_cfg.kv_heads,
                                             model_cfg.head_dim, dtype)
    useful = config.max_num_seqs * -(-model_cfg.block_size // config.block_size)
    blocks = min(int(config.kv_memory_mb * 2**20 // per_block), useful)
    if blocks < 1:
        smallest = per_block / 2**20  # exact (a division by a power of two): this budget holds one block
        raise SamplingError(f"engine kv_memory_mb={config.kv_memory_mb} holds no KV block of this model: one block "
                            f"({config.block_size} tokens, {str(dtype).removeprefix('torch.')}) takes {smallest} MiB; "
                            f"set kv_memory_mb to at least {smallest}, or set num_blocks")
    return blocks


def _is_one_prompt(prompts) -> bool:
    """A text or one prompt's token ids (a list, tuple, array or tensor of ints), rather than a list of prompts."""
    if not isinstance(prompts, (list, tuple)):
        return True
    first = prompts[0] if prompts else None
    return bool(prompts) and not isinstance(first, (str, list, tuple)) and getattr(first, "ndim", 0) == 0


def _token_id(value) -> int:
    """operator.index takes ints of any kind (numpy's, a 0-d tensor's) but no float, which int() would cut; a bool is
    an int to Python (and a bool tensor's element to torch) but no token id."""
    if isinstance(value, bool) or getattr(value, "dtype", None) is torch.bool:
        raise TypeError
    return operator.index(value)


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _token_logprob(log_probs: torch.Tensor, token: int, top_k: int | None) -> TokenLogprob:
    """log_probs (V,) -> the token's logprob and the top_k alternatives."""
    top: list[tuple[int, float]] = []
    if top_k:
        values, indices = log_probs.topk(top_k)
        top = list(zip(indices.tolist(), values.tolist()))
    return TokenLogprob(token, float(log_probs[token]), top)
