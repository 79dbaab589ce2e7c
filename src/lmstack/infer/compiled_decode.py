"""torch.compile of the engine's decode steps (`EngineConfig.compile`): each step is one graph.

The paged cache writes a layer's new key and value into the pool in place (`PagedKVCache.attend`).
Inside a compiled graph that write made inductor copy the whole pool every step (440 ms a step for a
270 MB pool); kept out of the graph, it cut the step into a graph per layer, with Python between them.
Here a decode step only reads the pool: each layer attends over its sequence's past keys, gathered by
slot, plus the step's own new key, and the step returns the new keys and values. The engine writes
them into the pool after the call, one op per pool for all layers.

On CPU the graph is built with two inductor options, which a small model's decode needs (its eager
step is ~150 small PyTorch ops around 0.3 ms of matmuls):
  - `freezing`: the weights become constants of the graph, so its bf16 linears are oneDNN-prepacked ones
    (what infer/packed.py does in eager) and the ops between them fuse into a few C++ loops (per layer:
    the norm, the attention with RoPE and the gather, SwiGLU; the residual adds go into the linears);
  - `cpp_wrapper`: the graph calls its kernels from C++, not from a Python wrapper;
and, where it pays (`cpp_gemms_pay`), `max_autotune` with inductor's own C++ GEMMs. Measured on the 2-core
AVX512-BF16 machine, 1 thread, depth-4 llama, bs=1 (bench/decode.py --threads 1 --compile): the engine decodes
~1.5-1.7k tok/s against ~0.75k eager. There are two graphs, one sequence's and a batch's (its batch size is
dynamic); the engine compiles both when it is built (`warm_up`: ~35-40 s on that machine, more for bigger models).

On CPU the frozen weights are a copy taken when the engine compiles its graphs (when it is built). A model
changed afterwards would decode with the old weights: the decoder checks the weights' version counters each
step (changes in place, such as training between engine calls), dynamo's guards see a weight replaced by another
tensor, and either makes the decoder warn and leave decoding to the eager path for good.
"""

from __future__ import annotations

import contextlib
import itertools
import logging

import torch
import torch._inductor.config as inductor_config
import torch.fx.experimental._config
from tqdm.auto import tqdm

from lmstack.device import last_level_cache_bytes
from lmstack.infer.paged_cache import PagedKVCache, decode_slots, padded_block_tables, table_slots
from lmstack.infer.quantize import Int8Linear

log = logging.getLogger(__name__)

# Decode steps whose longest past is shorter run eagerly: a dimension of size 0 or 1 would make dynamo
# specialise the graph and compile it again (the first two steps of a one-token prompt).
MIN_PAST_KEYS = 2


class GatheredDecodeCache:
    """A KV cache (model.gpt's `attend` interface) for one decode step that reads the pool and writes nothing.

    Sequence b attends over the keys at past_slots[b] (B, P) where mask[b] allows, and over its new key, the
    last column: mask (B, 1, 1, P + 1), True = may attend. The arithmetic is the eager decode_attention's
    (paged_cache), written without the buffers that one reuses through out= arguments: inside a graph, inductor
    plans the buffers, and the new key joins the gathered ones instead of going into the pool first."""

    def __init__(self, k_pool: torch.Tensor, v_pool: torch.Tensor, past_slots: torch.Tensor, mask: torch.Tensor):
        self.k_pool, self.v_pool, self.past_slots, self.mask = k_pool, v_pool, past_slots, mask
        self.new_keys: list[torch.Tensor] = []
        self.new_values: list[torch.Tensor] = []

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, H, 1, D), k and v (B, K, 1, D) -> (B, H, 1, D); in fp32 like the eager decode_attention."""
        B, H, _, D = q.shape
        K = k.size(1)
        self.new_keys.append(k[:, :, 0])
        self.new_values.append(v[:, :, 0])
        # (B, P + 1, K, D); inductor fuses the gather into the loops that read it
        keys = torch.cat([self.k_pool[layer_idx][self.past_slots], k.transpose(1, 2)], dim=1).float()
        values = torch.cat([self.v_pool[layer_idx][self.past_slots], v.transpose(1, 2)], dim=1).float()
        # Grouped-query heads: the H // K query heads of a kv head share its keys.
        queries = q.float().reshape(B, K, H // K, D) * D ** -0.5
        scores = torch.einsum("bkhd,blkd->bkhl", queries, keys).masked_fill(~self.mask, float("-inf"))
        y = torch.einsum("bkhl,blkd->bkhd", scores.softmax(-1), values)
        return y.reshape(B, H, 1, D).to(q.dtype)


class DecodeStep(torch.nn.Module):
    """(ids (B, 1), positions (B, 1), block_tables (B, W), past P, k_pool, v_pool) -> logits (B, V) and the step's
    new keys and values (n_layer, B, K, D). Sequence b's past keys are its positions 0 .. positions[b] - 1, found
    through its block table (padded rows are masked); P is the longest past. The pools are arguments, not
    attributes: freezing would make attributes constants."""

    def __init__(self, model: torch.nn.Module, block_size: int):
        super().__init__()
        self.model, self.block_size = model, block_size

    def forward(self, ids, positions, block_tables, past, k_pool, v_pool):
        columns = torch.arange(past + 1, device=ids.device)  # the past keys', then the new key's
        past_slots = table_slots(block_tables, past, self.block_size)
        mask = ((columns < positions) | (columns == past)).view(ids.size(0), 1, 1, past + 1)
        cache = GatheredDecodeCache(k_pool, v_pool, past_slots, mask)
        logits, _ = self.model(ids, positions=positions, kv_cache=cache)
        return logits[:, 0], torch.stack(cache.new_keys), torch.stack(cache.new_values)


# See the module doc. Passed to inductor as torch.compile options, which apply while it compiles.
CPU_INDUCTOR_OPTIONS = {"freezing": True, "cpp_wrapper": True}
# The batch graph stores values that inductor would otherwise recompute inside the loops that read them. In the
# attention, its default recomputed each query's RoPE for every key it scored; stored, 32 sequences of the depth-4
# llama decoded 6% faster (64 tokens: 117 ms against 124, medians of 9, A/B in one process, 2 threads).
CPU_BATCH_OPTIONS = {"realize_opcount_threshold": 2}
# Inductor times its own C++ GEMM for each linear against oneDNN's and keeps the faster (one row of bf16 weights,
# 256x256: 3.2 us against 12.5); the timings' tables it would print, one per shape, are off. Only where it pays:
# see `cpp_gemms_pay`.
AUTOTUNE_OPTIONS = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN", "autotune_num_choices_displayed": 0,
                    "max_autotune_report_choices_stats": False}
# Settings dynamo reads while it traces, before inductor's options apply, so they are set around the warm-up's calls
# (`_trace_settings`), the only ones that trace:
#  - `freezing`: dynamo makes the weights graph constants only when it is on;
#  - duck shaping off: dynamo would give dimensions of equal size one symbol, so a first batch of 2 sequences with
#    block tables 2 wide would compile a graph for batch == width, and compile again at the next step.
CPU_TRACE_SETTINGS = ((inductor_config, "freezing", True), (torch.fx.experimental._config, "use_duck_shape", False))
TRACE_SETTINGS = ((torch.fx.experimental._config, "use_duck_shape", False),)
# After the warm-up, a step that would compile again (a weight replaced, which dynamo's guards see; a shape
# nothing foresaw) raises instead, before any tracing, and decoding goes on eagerly: a compile mid-serving would
# stall every request for up to a minute and freeze yet another copy of the weights. So the steps need no trace
# settings, only this.
NO_RECOMPILE = ((torch._dynamo.config, "error_on_recompile", True),)
# Every engine's two graphs are entries of one code object (DecodeStep.forward), which dynamo caps at 8 by default:
# a fifth live compiled engine would fail its warm-up.
WARM_UP = ((torch._dynamo.config, "recompile_limit", 64),)
# The warm-up's sizes (capped by the largest decode batch the engine can schedule and by the model's context).
# Inductor sizes its choices by them (which loops run in parallel; the batch size the oneDNN weights are packed for):
# compiled at 2 sequences of 2 past keys, the depth-4 llama decoded 32 sequences 7-9% slower than compiled at 32 of
# 48-64 (the benchmark's 16-80 keys; A/B in one process, 2 threads).
WARM_UP_BATCH = 32
WARM_UP_PAST = 64
# Graphs the decoder compiles, each holding a frozen copy of the weights: a lone sequence's, and a batch's (dynamo
# specialises a batch of 1).
COMPILED_GRAPHS = 2


def cpp_gemms_pay(model: torch.nn.Module) -> bool:
    """Whether a lone sequence's decode graph should autotune its GEMMs (AUTOTUNE_OPTIONS). Autotuning times each GEMM
    alone, its weights hot in cache. That picks well for int8 weights (GPT-2-124M, 2 threads: 159 tok/s against 145)
    and for weights that all stay in the last-level cache (depth-4 llama, 10 MB of bf16, 1 thread: ~1.6-1.9k against
    ~1.45k), and
    badly for bf16 weights streamed from memory (GPT-2-124M, 250 MB: 86 against oneDNN's 125)."""
    weights = {id(m.weight): m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, Int8Linear))}
    if any(w.dtype == torch.int8 for w in weights.values()):
        return True
    cache = last_level_cache_bytes()
    return cache is not None and 2 * sum(w.numel() * w.element_size() for w in weights.values()) <= cache


def _known(options: dict) -> dict:
    """The inductor options this PyTorch has (older releases lack some; those are left out)."""
    return {name: value for name, value in options.items() if hasattr(inductor_config, name)}


def _known_settings(*groups: tuple[tuple[object, str, object], ...]) -> tuple[tuple[object, str, object], ...]:
    """The settings of `groups` that this PyTorch's config modules have."""
    return tuple(setting for group in groups for setting in group if hasattr(setting[0], setting[1]))


@contextlib.contextmanager
def _trace_settings(settings: tuple[tuple[object, str, object], ...]):
    """(config module, name, value) settings while the call runs, restored after it, so that other compiles in the
    process do not see them."""
    saved = [(config, name, getattr(config, name)) for config, name, _ in settings]
    for config, name, value in settings:
        setattr(config, name, value)
    try:
        yield
    finally:
        for config, name, value in saved:
            setattr(config, name, value)


class CompiledDecoder:
    """Decode steps through the compiled DecodeStep, writing their keys and values into `cache`. compiled=False runs
    the same step eagerly: the tests check its arithmetic and the engine's use of it that way, in seconds instead
    of minutes of compiling."""

    def __init__(self, model: torch.nn.Module, cache: PagedKVCache, max_batch: int, compiled: bool = True):
        self.cache = cache
        # For the warm-up's sizes: the largest decode batch the engine can schedule, and the model's context.
        self.max_batch, self.context = max_batch, model.cfg.block_size
        step = DecodeStep(model, cache.block_size).eval()
        on_cpu = cache.k.device.type == "cpu"
        # Batched steps' graph does not autotune: its GEMMs have a dynamic row count, for which inductor's C++ GEMM lost
        # to oneDNN (32 sequences of the depth-4 llama: 4.6k tok/s against 8.1k; warmed up at 32 sequences, 13.5k
        # against 14.4k).
        cpu = CPU_INDUCTOR_OPTIONS if on_cpu else {}
        batch = {**cpu, **CPU_BATCH_OPTIONS} if on_cpu else cpu
        single = {**cpu, **AUTOTUNE_OPTIONS} if on_cpu and cpp_gemms_pay(model) else cpu
        # Two compiled callables: dynamo keeps their graphs apart (each call checks only its own), and each compiles
        # with its options. fullgraph: a graph break would silently leave part of every step to Python.
        self.single_step, self.batch_step = (
            (torch.compile(step, dynamic=True, fullgraph=True, options=_known(options)) for options in (single, batch))
            if compiled else (step, step))
        for pool in (cache.k, cache.v):  # the same tensors every step: no symbols for their sizes
            torch._dynamo.mark_static(pool)
        trace = CPU_TRACE_SETTINGS if on_cpu else TRACE_SETTINGS
        self.warm_up_settings = _known_settings(trace, WARM_UP)
        self.run_settings = _known_settings(NO_RECOMPILE)
        # The weights the graphs freeze (the engine warms them up right away), and their versions; none on GPUs, where
        # the graphs read the model's own. Inference tensors have no version counter; nothing can train them.
        weights = itertools.chain(model.parameters(), model.buffers()) if on_cpu else ()
        self._frozen = [(t, t._version) for t in weights if not t.is_inference()]
        self.disabled = False
        self.compiled_steps = 0  # decode steps run through the compiled graph

    def _weights_changed(self) -> bool:
        """Whether a weight changed in place since the graphs froze them (a weight replaced by another tensor is seen
        by dynamo's guards, see NO_RECOMPILE)."""
        return any(t._version != version for t, version in self._frozen)

    def _give_up(self, what: str, error: Exception | None = None) -> None:
        cause = f" ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})" if error else ""
        log.warning("%s%s; decoding eagerly from now on", what, cause)
        self.disabled = True

    def warm_up(self) -> None:
        """Compile both graphs now, on placeholder inputs (one sequence, then a batch, at WARM_UP_PAST keys of block
        0's slots), instead of during the first requests (tens of seconds to minutes on CPU). The step only reads the
        pool. A failure to compile (no C++ compiler, say) is logged and leaves decoding eager."""
        past = max(MIN_PAST_KEYS, min(WARM_UP_PAST, self.context - 1))
        try:
            batches = (1, max(2, min(WARM_UP_BATCH, self.max_batch)))
            # A bar: the compiles take tens of seconds each, during which nothing else would show.
            with torch.inference_mode():  # as the engine's steps run: dynamo compiles for one grad mode
                for batch in tqdm(batches, desc="compiling the decode steps", unit="graph"):
                    self._step([0] * batch, [past] * batch, past, [[0]] * batch, self.warm_up_settings)
        except Exception as error:  # noqa: BLE001 - any compiler failure: eager decoding still gives the same tokens
            self._give_up("could not compile the decode steps", error)

    def run(self, tokens: list[int], positions: list[int], block_tables: list[list[int]]) -> torch.Tensor | None:
        """One decode step: token b sits at positions[b] of the sequence with block_tables[b] -> logits (B, V), and
        the step's keys and values written into the cache. None when the caller is to run the step eagerly: compiled
        decoding is off (it failed, or the weights changed), the longest past is under MIN_PAST_KEYS, or the step
        would have to compile again."""
        past = max(positions)
        if self.disabled or past < MIN_PAST_KEYS:
            return None
        if self._weights_changed():
            self._give_up("the model's weights changed after the engine compiled its decode steps (compile=True "
                          "freezes them); build a new Engine to compile the new weights")
            return None
        try:
            logits, new_keys, new_values = self._step(tokens, positions, past, block_tables, self.run_settings)
        except torch._dynamo.exc.RecompileError as error:
            self._give_up("a decode step needed a new compile (was a weight of the model replaced?)", error)
            return None
        device = self.cache.k.device
        new_slots = torch.tensor(decode_slots(block_tables, positions, self.cache.block_size), device=device)
        self.cache.k.index_copy_(1, new_slots, new_keys)
        self.cache.v.index_copy_(1, new_slots, new_values)
        self.compiled_steps += 1
        return logits

    def _step(self, tokens: list[int], positions: list[int], past: int, block_tables: list[list[int]], settings):
        """The graph's call; past = max(positions)."""
        device = self.cache.k.device
        # Never 1 wide: dynamo would specialise a graph to it and compile it again.
        tables = padded_block_tables(block_tables, max(2, -(-past // self.cache.block_size)), device)
        with _trace_settings(settings):
            return (self.single_step if len(tokens) == 1 else self.batch_step)(
                torch.tensor(tokens, device=device).unsqueeze(1), torch.tensor(positions, device=device).unsqueeze(1),
                tables, past, self.cache.k, self.cache.v)
