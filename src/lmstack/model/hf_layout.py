"""Hugging Face <-> lmstack: the config.json fields and the tensor names of GPT-2, Llama and Qwen3.

One table per architecture lists, for each of our tensors, the HF tensors it is made of. Import
concatenates them (our attention and SwiGLU projections are fused), export splits them back, so the
two directions cannot drift apart.

HF conventions that matter here:
- GPT-2 uses Conv1D, whose weight is (in, out): the transpose of nn.Linear's.
- HF Llama stores q and k in the 'rotate half' RoPE layout our model uses too: no permutation.
- Our fused qkv rows are [q | k | v]; our llama mlp.up rows are [gate | up].
- Qwen3 is Llama plus a per-head RMSNorm on q and k before RoPE: our `qk_norm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmstack.config import ConfigError
from lmstack.model.config import ModelConfig
from lmstack.model.convert import ConversionError

SUPPORTED = "gpt2 (GPT2LMHeadModel), llama (LlamaForCausalLM) and qwen3 (Qwen3ForCausalLM)"
GPT2_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}
# Buffers some HF checkpoints carry that are derived, not learned (GPT-2's causal mask, RoPE's inv_freq).
DERIVED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


@dataclass(frozen=True)
class TensorMap:
    ours: str
    theirs: tuple[str, ...]  # concatenated along dim 0, in this order, to make ours
    sizes: tuple[int, ...] | None = None  # rows of each part, to split ours back (None: one part)
    transpose: bool = False  # Conv1D stores (in, out)


def gpt2_tensor_maps(cfg: ModelConfig, prefix: str = "transformer.", conv1d: bool = True) -> list[TensorMap]:
    """GPT-2's names, shared by HF (Conv1D) and nanoGPT (nn.Linear, so `conv1d=False`)."""
    maps = [TensorMap("tok_emb.weight", (f"{prefix}wte.weight",)),
            TensorMap("pos_emb.weight", (f"{prefix}wpe.weight",))]
    layer = [("norm1", "ln_1", False), ("attn.qkv", "attn.c_attn", conv1d), ("attn.proj", "attn.c_proj", conv1d),
             ("norm2", "ln_2", False), ("mlp.up", "mlp.c_fc", conv1d), ("mlp.down", "mlp.c_proj", conv1d)]
    for i in range(cfg.n_layer):
        for ours, theirs, transpose in layer:
            maps.append(TensorMap(f"blocks.{i}.{ours}.weight", (f"{prefix}h.{i}.{theirs}.weight",), None, transpose))
            if cfg.has_bias:
                maps.append(TensorMap(f"blocks.{i}.{ours}.bias", (f"{prefix}h.{i}.{theirs}.bias",)))
    maps.append(TensorMap("norm_f.weight", (f"{prefix}ln_f.weight",)))
    if cfg.has_bias:
        maps.append(TensorMap("norm_f.bias", (f"{prefix}ln_f.bias",)))
    if not cfg.tied:
        maps.append(TensorMap("lm_head.weight", ("lm_head.weight",)))
    return maps


def llama_tensor_maps(cfg: ModelConfig) -> list[TensorMap]:
    """Llama's names (and Qwen3's, which adds q_norm / k_norm)."""
    qkv_rows = (cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim)
    maps = [TensorMap("tok_emb.weight", ("model.embed_tokens.weight",))]
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias") if cfg.has_bias else ("weight",):
            maps += [
                TensorMap(f"{ours}attn.qkv.{kind}", tuple(f"{theirs}self_attn.{p}_proj.{kind}" for p in "qkv"), qkv_rows),
                TensorMap(f"{ours}attn.proj.{kind}", (f"{theirs}self_attn.o_proj.{kind}",)),
                TensorMap(f"{ours}mlp.up.{kind}", (f"{theirs}mlp.gate_proj.{kind}", f"{theirs}mlp.up_proj.{kind}"),
                          (cfg.hidden, cfg.hidden)),
                TensorMap(f"{ours}mlp.down.{kind}", (f"{theirs}mlp.down_proj.{kind}",)),
            ]
        maps += [TensorMap(f"{ours}norm1.weight", (f"{theirs}input_layernorm.weight",)),
                 TensorMap(f"{ours}norm2.weight", (f"{theirs}post_attention_layernorm.weight",))]
        if cfg.qk_norm:
            maps += [TensorMap(f"{ours}attn.q_norm.weight", (f"{theirs}self_attn.q_norm.weight",)),
                     TensorMap(f"{ours}attn.k_norm.weight", (f"{theirs}self_attn.k_norm.weight",))]
    maps.append(TensorMap("norm_f.weight", ("model.norm.weight",)))
    if not cfg.tied:
        maps.append(TensorMap("lm_head.weight", ("lm_head.weight",)))
    return maps


def hf_tensor_maps(cfg: ModelConfig) -> list[TensorMap]:
    return gpt2_tensor_maps(cfg) if cfg.arch == "gpt2" else llama_tensor_maps(cfg)


def rename_to_ours(theirs: dict[str, torch.Tensor], maps: list[TensorMap], source: str,
                   ignored: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Their state dict -> ours. Every tensor must be used, except derived buffers and `ignored` names."""
    missing = [name for m in maps for name in m.theirs if name not in theirs]
    if missing:
        raise ConversionError(f"'{source}' lacks tensor(s) {missing[:3]} that its config requires; "
                              "the weights and config.json do not belong together")
    used = {name for m in maps for name in m.theirs}
    unused = [k for k in theirs if k not in used and k not in ignored and not k.endswith(DERIVED_SUFFIXES)]
    if unused:
        raise ConversionError(f"'{source}' has tensor(s) {unused[:3]} that lmstack's model has no place for; "
                              f"only plain {SUPPORTED} models can be imported")
    ours = {}
    for m in maps:
        parts = [theirs[name].t() if m.transpose else theirs[name] for name in m.theirs]
        ours[m.ours] = parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, dim=0)
    return ours


def rename_to_theirs(ours: dict[str, torch.Tensor], maps: list[TensorMap]) -> dict[str, torch.Tensor]:
    theirs = {}
    for m in maps:
        tensor = ours[m.ours].t() if m.transpose else ours[m.ours]
        parts = tensor.split(list(m.sizes), dim=0) if m.sizes else (tensor,)
        for name, part in zip(m.theirs, parts):
            theirs[name] = part.contiguous()
    return theirs


def zero_gpt2_biases(theirs: dict[str, torch.Tensor]) -> None:
    """HF GPT-2 always has biases; a bias-free model exports exactly with zero biases."""
    for name in [n for n in theirs if n.endswith(".weight") and not n.endswith(("wte.weight", "wpe.weight"))
                 and n != "lm_head.weight"]:
        bias = name[: -len("weight")] + "bias"
        if bias not in theirs:
            weight = theirs[name]
            out_features = weight.shape[-1] if weight.dim() == 2 else weight.shape[0]  # Conv1D is (in, out)
            theirs[bias] = torch.zeros(out_features, dtype=weight.dtype)


# ---- config.json ----------------------------------------------------------------------------------

def model_config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    model_type = hf.get("model_type")
    try:
        if model_type == "gpt2":
            cfg = _gpt2_config(hf, source)
        elif model_type in ("llama", "qwen3"):
            cfg = _llama_config(hf, source)
        else:
            raise ConversionError(f"'{source}' is a {model_type!r} model; lmstack imports {SUPPORTED}")
        cfg.validate()
    except (KeyError, TypeError) as err:
        raise ConversionError(f"'{source}' config.json lacks or mangles field {err}; it is not a complete "
                              "Hugging Face config") from None
    except ConfigError as err:
        raise ConversionError(f"'{source}' describes a shape lmstack cannot build: {err}") from None
    return cfg


def _gpt2_config(hf: dict[str, Any], source: str) -> ModelConfig:
    activation = hf.get("activation_function", "gelu_new")
    if activation not in GPT2_GELU:
        raise ConversionError(f"'{source}': activation_function {activation!r} is not one of {list(GPT2_GELU)}")
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True) \
            or hf.get("add_cross_attention"):
        raise ConversionError(f"'{source}': GPT-2 variants with scale_attn_by_inverse_layer_idx, unscaled "
                              "attention or cross-attention are not supported; only plain GPT-2 is")
    return ModelConfig(
        arch="gpt2", vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
        n_head=hf["n_head"], n_embd=hf["n_embd"], mlp_hidden=hf.get("n_inner") or None,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=hf.get("tie_word_embeddings", True),
        bias=True, gelu=GPT2_GELU[activation])


def _llama_config(hf: dict[str, Any], source: str) -> ModelConfig:
    qwen3 = hf["model_type"] == "qwen3"
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConversionError(f"'{source}': RoPE scaling {rope.get('rope_type', rope.get('type'))!r} is not "
                              "supported; lmstack implements plain RoPE only")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"'{source}': hidden_act {hf['hidden_act']!r} is not supported; Llama uses silu")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    if head_dim * hf["num_attention_heads"] != hf["hidden_size"]:
        raise ConversionError(f"'{source}': head_dim {head_dim} x {hf['num_attention_heads']} heads != hidden_size "
                              f"{hf['hidden_size']}; lmstack needs n_embd = n_head * head_dim")
    attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    if attention_bias != mlp_bias or (qwen3 and attention_bias):
        raise ConversionError(f"'{source}': attention_bias={attention_bias} with mlp_bias={mlp_bias} is not "
                              "supported; lmstack's `bias` covers attention and MLP together")
    if hf.get("use_sliding_window") or (not qwen3 and hf.get("sliding_window")):
        raise ConversionError(f"'{source}': sliding-window attention is not supported")
    return ModelConfig(
        arch="llama", vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"], n_embd=hf["hidden_size"],
        mlp_hidden=hf["intermediate_size"], rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=hf.get("rms_norm_eps", 1e-6), qk_norm=qwen3, tie_embeddings=hf.get("tie_word_embeddings", False),
        bias=attention_bias)


def hf_config_from_model(cfg: ModelConfig, dtype: torch.dtype, token_ids: dict[str, int | None]) -> dict[str, Any]:
    """config.json for transformers (4.x and 5.x), vLLM and llama.cpp's converter."""
    dtype_name = str(dtype).removeprefix("torch.")
    common = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tied, "torch_dtype": dtype_name,
              "bos_token_id": token_ids.get("bos"), "eos_token_id": token_ids.get("eos"),
              "pad_token_id": token_ids.get("pad"), "use_cache": True}
    if cfg.arch == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **common,
                "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd,
                "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.hidden,
                "activation_function": "gelu_new" if cfg.gelu == "tanh" else "gelu",
                "layer_norm_epsilon": cfg.norm_eps, "scale_attn_weights": True,
                "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                "attn_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "resid_pdrop": cfg.dropout}
    if cfg.qk_norm and cfg.has_bias:
        raise ConversionError("a llama model with qk_norm and biases has no Hugging Face equivalent "
                              "(Qwen3 has QK-norm but no MLP biases); export a model without model.bias")
    architecture, model_type = ("Qwen3ForCausalLM", "qwen3") if cfg.qk_norm else ("LlamaForCausalLM", "llama")
    out = {"architectures": [architecture], "model_type": model_type, **common,
           "hidden_size": cfg.n_embd, "intermediate_size": cfg.hidden, "num_hidden_layers": cfg.n_layer,
           "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
           "hidden_act": "silu", "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
           # rope_theta at the top level for transformers 4.x and llama.cpp, rope_parameters for 5.x
           "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
           "attention_bias": cfg.has_bias, "mlp_bias": cfg.has_bias, "attention_dropout": cfg.dropout}
    if cfg.qk_norm:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer,
                   layer_types=["full_attention"] * cfg.n_layer)
    return out
