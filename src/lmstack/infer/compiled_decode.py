"""Compiled decode steps (`EngineConfig.compile`): each step is one graph.

The paged cache writes a layer's new key and value into the pool in place (`PagedKVCache.attend`).
Inside a compiled graph that write made inductor copy the whole pool every step (440 ms a step for a
270 MB pool); kept out of the graph, it cut the step into a graph per layer, with Python between them.
Here a decode step only reads the pool: each layer attends over its sequence's past keys, gathered by
slot, plus the step's own new key, and the step returns the new keys and values. The engine writes
them into the pool after the call, one op per pool for all layers.

On CPU each graph is compiled ahead of time by AOTInductor (torch.export, then inductor into a shared library)
and called straight from its loader. The same graph under torch.compile cost ~0.2 ms more a call, a fifth of
the small model's step (depth-4 llama, bs=1, Intel Xeon, 2 threads): the call went through dynamo's guards on
every weight, the eval-frame hooks and AOTAutograd's wrappers before reaching inductor's code (0.69-0.72 ms
against 0.49-0.50 inside it); the AOTInductor call takes ~0.39 ms. Its inductor options are:
  - `freezing`: the weights become constants of the graph, so its bf16 linears are oneDNN-prepacked ones
    (what infer/packed.py does in eager) and the ops between them fuse into a few C++ loops (per layer:
    the norm, the attention with RoPE and the gather, SwiGLU; the residual adds go into the linears);
and, where it pays (`cpp_gemms_pay`), `max_autotune` with inductor's own C++ GEMMs. There are two graphs, one
sequence's and a batch's (its batch size is dynamic); the engine compiles both when it is built (`warm_up`:
~1-2 min for the small model, more for bigger ones). Their frozen weights are a copy taken then: a model changed
afterwards would decode with the old weights, so the decoder checks each step that every weight is the tensor
it froze, at the version it froze (changes in place, such as training between engine calls), and otherwise warns
and leaves decoding to the eager path for good.

On GPUs the steps are torch.compile'd without freezing: the graphs read the model's own weights, and dynamo's
guards see a weight replaced by another tensor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator

import torch
import torch._inductor.config as inductor_config
import torch._inductor.utils
import torch.fx.experimental._config
from torch.export import Dim
from tqdm.auto import tqdm

from lmstack.device import cpu_amx, last_level_cache_bytes
from lmstack.infer.paged_cache import PagedKVCache, decode_slots, padded_block_tables, table_slots
from lmstack.infer.quantize import Int8Linear

log = logging.getLogger(__name__)

# Decode steps whose longest past is shorter run eagerly: a dimension of size 0 or 1 would make the graph
# specialise to it (the first two steps of a one-token prompt).
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
    """(ids (B, 1), positions (B, 1), block_tables (B, W), columns (P + 1,), k_pool, v_pool) -> logits (B, V) and the
    step's new keys and values (n_layer, B, K, D). Sequence b's past keys are its positions 0 .. positions[b] - 1,
    found through its block table (padded rows are masked); P is the longest past, and columns = 0 .. P, the key
    columns (a tensor, so that an exported graph sees P as a dimension). The pools are arguments, not attributes:
    freezing would make attributes constants."""

    def __init__(self, model: torch.nn.Module, block_size: int):
        super().__init__()
        self.model, self.block_size = model, block_size

    def forward(self, ids, positions, block_tables, columns, k_pool, v_pool):
        past = columns.size(0) - 1  # the past keys' columns, then the new key's
        past_slots = table_slots(block_tables, past, self.block_size)
        mask = ((columns < positions) | (columns == past)).view(ids.size(0), 1, 1, past + 1)
        cache = GatheredDecodeCache(k_pool, v_pool, past_slots, mask)
        logits, _ = self.model(ids, positions=positions, kv_cache=cache)
        return logits[:, 0], torch.stack(cache.new_keys), torch.stack(cache.new_values)


# See the module doc. Passed to inductor with each CPU graph.
CPU_INDUCTOR_OPTIONS = {"freezing": True}
# The batch graph stores values that inductor would otherwise recompute inside the loops that read them. In the
# attention, its default recomputed each query's RoPE for every key it scored; stored, 32 sequences of the depth-4
# llama decoded 6% faster (64 tokens: 117 ms against 124, medians of 9, A/B in one process, 2 threads).
CPU_BATCH_OPTIONS = {"realize_opcount_threshold": 2}
# Inductor times its own C++ GEMM for each linear against oneDNN's and keeps the faster (one row of bf16 weights,
# 256x256: 3.2 us against 12.5); the timings' tables it would print, one per shape, are off. Only where it pays:
# see `cpp_gemms_pay`.
AUTOTUNE_OPTIONS = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN", "autotune_num_choices_displayed": 0,
                    "max_autotune_report_choices_stats": False}
# Duck shaping off while tracing: dimensions of equal size would get one symbol, so a first batch of 2 sequences with
# block tables 2 wide would give a graph for batch == width only (and torch.compile would compile again).
TRACE_SETTINGS = ((torch.fx.experimental._config, "use_duck_shape", False),)
# torch.compile (GPUs) only. After the warm-up, a step that would compile again (a weight replaced, which dynamo's
# guards see; a shape nothing foresaw) raises instead, before any tracing, and decoding goes on eagerly: a compile
# mid-serving would stall every request for up to a minute. So the steps need no trace settings, only this.
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
# Graphs the decoder compiles, each holding a frozen copy of the weights on CPU: a lone sequence's, and a batch's.
COMPILED_GRAPHS = 2


def cpp_gemms_pay(model: torch.nn.Module, batched: bool, amx: bool | None = None) -> bool:
    """Whether a decode graph (a batch's if `batched`) should autotune its GEMMs (AUTOTUNE_OPTIONS): time inductor's
    C++ GEMM for each linear alone against oneDNN's, weights hot in cache, and keep the faster. `amx`: whether the CPU
    has AMX tiles (default: this one's).

    With AMX, inductor's AMX micro-kernels won every decode shape measured (Intel Xeon, 2 threads, compiled engine):
    the depth-4 llama's 32 sequences 14.7-16.3k tok/s against 8.3-9.4k, GPT-2-124M's 32 sequences 1,062 against 770
    and its lone sequence 69 against 66. Without AMX (AMD EPYC, AVX-512), the timings alone picked well for a lone
    sequence's int8 weights (GPT-2-124M, 2 threads: 159 tok/s against 145) and for weights that all stay in the
    last-level cache (depth-4 llama, 10 MB of bf16, 1 thread: ~1.6-1.9k against ~1.45k), and badly for bf16 weights
    streamed from memory (GPT-2-124M, 250 MB: 86 against oneDNN's 125) and for a batch, whose row count is dynamic
    (32 sequences of the depth-4 llama: 13.5k against 14.4k, warmed up at 32 sequences)."""
    if cpu_amx() if amx is None else amx:
        return True
    if batched:
        return False
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


# Inductor's context for a throwaway cache dir (fresh_inductor_cache before torch 2.7).
fresh_cache = getattr(torch._inductor.utils, "fresh_cache", None) or torch._inductor.utils.fresh_inductor_cache
# Deprecation notices that torch's export and autotuning raise about torch's own code, nothing a user can act on.
TORCH_INTERNAL_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated", "TypedStorage is deprecated")


def compile_ahead_of_time(step: DecodeStep, example: tuple, batched: bool, options: dict) -> Callable:
    """`step` exported at the `example` inputs and compiled by AOTInductor with inductor `options`, loaded -> a function
    of the step's inputs returning [logits, new keys, new values]. Dynamic: the block tables' width and the key
    columns, and the batch if `batched` (a lone sequence's graph is built for batch 1)."""
    batch = Dim("batch", min=2) if batched else None
    rows = {0: batch} if batched else None
    tables = {0: batch, 1: Dim("width", min=2)} if batched else {1: Dim("width", min=2)}
    shapes = (rows, rows, tables, {0: Dim("columns", min=MIN_PAST_KEYS + 1)}, None, None)
    # AOTInductor builds in inductor's cache dir, and its library holds the frozen weights (~0.25-0.5 GB a graph for
    # GPT-2-124M): there every engine compiled from other weights would leave them behind. So it builds in a fresh
    # cache dir inside a temporary one, deleted once the library is loaded or the build failed (fresh_cache keeps its
    # dir after a failure); the package is only the loader's way in.
    with (_trace_settings(_known_settings(TRACE_SETTINGS)), tempfile.TemporaryDirectory(prefix="lmstack-") as tmp,
          fresh_cache(dir=tmp), warnings.catch_warnings()):
        for message in TORCH_INTERNAL_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        program = torch.export.export(step, example, dynamic_shapes=shapes)
        package = torch._inductor.aoti_compile_and_package(
            program, package_path=os.path.join(tmp, "step.pt2"), inductor_configs=_known(options))
        # The loader's own boxed call: the package's Python __call__ parses the call's input and output specs from
        # JSON on every call (~70 us of a small model's ~450 us step). Looked up here, so that a torch without it
        # fails the warm-up, which then leaves decoding eager.
        boxed_run = torch._inductor.aoti_load_package(package).loader.boxed_run
    return lambda *inputs: boxed_run(list(inputs))


def _frozen_slots(model: torch.nn.Module) -> Iterator[tuple[dict, str, torch.Tensor | torch.nn.Module]]:
    """(holder, name, value) of every parameter, buffer and submodule: holder is the dict of the module that holds
    it, where a tensor or module assigned in its place (LoRA layers applied, int8 layers) would replace it."""
    for module in model.modules():
        for holder in (module._parameters, module._buffers, module._modules):
            for name, value in holder.items():
                if value is not None:
                    yield holder, name, value


def _version(value: torch.Tensor | torch.nn.Module) -> int | None:
    """A tensor's version counter; None for modules and inference tensors (which have none)."""
    return value._version if isinstance(value, torch.Tensor) and not value.is_inference() else None


class CompiledDecoder:
    """Decode steps through the compiled DecodeStep, writing their keys and values into `cache`. compiled=False runs
    the same step eagerly: the tests check its arithmetic and the engine's use of it that way, in seconds instead
    of minutes of compiling. ahead_of_time: AOTInductor rather than torch.compile; by default on CPU only (the tests
    also run the GPUs' torch.compile steps on the CPU)."""

    def __init__(self, model: torch.nn.Module, cache: PagedKVCache, max_batch: int, compiled: bool = True,
                 ahead_of_time: bool | None = None):
        self.cache = cache
        # For the warm-up's sizes: the largest decode batch the engine can schedule, and the model's context.
        self.max_batch, self.context = max_batch, model.cfg.block_size
        # A step's key columns 0 .. P are a slice of this.
        self.columns = torch.arange(self.context, device=cache.k.device)
        self.step = DecodeStep(model, cache.block_size).eval()
        on_cpu = cache.k.device.type == "cpu"
        # AOTInductor's packages came with torch 2.6: an older one compiles with torch.compile, as on GPUs.
        default = on_cpu and hasattr(torch._inductor, "aoti_compile_and_package")
        self.ahead_of_time = compiled and (default if ahead_of_time is None else ahead_of_time)
        # A lone sequence's step, then a batch's.
        self.steps: list[Callable | None]
        if not compiled:
            self.steps = [self.step, self.step]
        elif self.ahead_of_time:
            self.steps = [None, None]  # built by the warm-up, with these inductor options
            self.aot_options = [{**CPU_INDUCTOR_OPTIONS, **(CPU_BATCH_OPTIONS if batched else {}),
                                 **(AUTOTUNE_OPTIONS if cpp_gemms_pay(model, batched) else {})}
                                for batched in (False, True)]
        else:
            # Two compiled callables: dynamo keeps their graphs apart (each call checks only its own). fullgraph: a
            # graph break would silently leave part of every step to Python.
            self.steps = [torch.compile(self.step, dynamic=True, fullgraph=True) for _ in range(COMPILED_GRAPHS)]
            for pool in (cache.k, cache.v):  # the same tensors every step: no symbols for their sizes
                torch._dynamo.mark_static(pool)
        self.warm_up_settings = _known_settings(TRACE_SETTINGS, WARM_UP)
        self.run_settings = () if self.ahead_of_time else _known_settings(NO_RECOMPILE)
        # What the graphs froze (CPU, compiled): the weights and the modules, where they are held, and the weights'
        # versions; nothing on GPUs, where the graphs read the model's own. Inference tensors have no version counter;
        # nothing can train them.
        self._frozen = [(holder, name, value, _version(value))
                        for holder, name, value in _frozen_slots(model)] if self.ahead_of_time else []
        self.disabled = False
        self.compiled_steps = 0  # decode steps run through the compiled graph

    def _weights_changed(self) -> bool:
        """Whether a weight or module the graphs froze was replaced since, or a weight changed in place."""
        return any(holder.get(name) is not value or (version is not None and value._version != version)
                   for holder, name, value, version in self._frozen)

    def _give_up(self, what: str, error: Exception | None = None) -> None:
        cause = f" ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})" if error else ""
        log.warning("%s%s; decoding eagerly from now on", what, cause)
        self.disabled = True

    def warm_up(self) -> None:
        """Compile both graphs now, at placeholder inputs (one sequence, then a batch, at WARM_UP_PAST keys of block
        0's slots), instead of during the first requests (tens of seconds to minutes on CPU). The step only reads the
        pool. A failure to compile (no C++ compiler, say) is logged and leaves decoding eager."""
        past = max(MIN_PAST_KEYS, min(WARM_UP_PAST, self.context - 1))
        try:
            batches = (1, max(2, min(WARM_UP_BATCH, self.max_batch)))
            # A bar: the compiles take tens of seconds each, during which nothing else would show.
            for index, batch in enumerate(tqdm(batches, desc="compiling the decode steps", unit="graph")):
                placeholders = ([0] * batch, [past] * batch, past, [[0]] * batch)
                if self.ahead_of_time:
                    self.steps[index] = compile_ahead_of_time(self.step, self._inputs(*placeholders), index > 0,
                                                              self.aot_options[index])
                    continue
                # dynamo compiles for one grad mode, and guards on the inputs' inference-mode dispatch keys: the
                # engine's steps make their inputs and run under inference_mode
                with torch.inference_mode(), _trace_settings(self.warm_up_settings):
                    self.steps[index](*self._inputs(*placeholders))
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
        step = self.steps[len(tokens) > 1]
        try:
            with _trace_settings(self.run_settings):
                logits, new_keys, new_values = step(*self._inputs(tokens, positions, past, block_tables))
        except torch._dynamo.exc.RecompileError as error:
            self._give_up("a decode step needed a new compile (was a weight of the model replaced?)", error)
            return None
        device = self.cache.k.device
        new_slots = torch.tensor(decode_slots(block_tables, positions, self.cache.block_size), device=device)
        self.cache.k.index_copy_(1, new_slots, new_keys)
        self.cache.v.index_copy_(1, new_slots, new_values)
        self.compiled_steps += 1
        return logits

    def _inputs(self, tokens: list[int], positions: list[int], past: int, block_tables: list[list[int]]) -> tuple:
        """DecodeStep's inputs; past = max(positions)."""
        device = self.cache.k.device
        # Never 1 wide: the graph would specialise to it.
        tables = padded_block_tables(block_tables, max(2, -(-past // self.cache.block_size)), device)
        return (torch.tensor(tokens, device=device).unsqueeze(1), torch.tensor(positions, device=device).unsqueeze(1),
                tables, self.columns[:past + 1], self.cache.k, self.cache.v)
