"""`lmstack info CKPT`: what a checkpoint dir holds, read without loading its weights."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lmstack.model.checkpoint import WEIGHTS_FILE, check_model_dir, damaged_weights
from lmstack.model.gpt import GPT

SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def checkpoint_summary(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    # The shape printed is the config's: it must be the weights' too (the check `sample` makes, from the header).
    config, cfg, tokenizer = check_model_dir(path)
    with torch.device("meta"):  # counts parameters without allocating them
        model = GPT(cfg)
    summary: dict[str, Any] = {
        "path": str(path),
        "model": {**asdict(cfg), "head_dim": cfg.head_dim, "mlp_hidden": cfg.hidden, "kv_heads": cfg.kv_heads,
                  "tie_embeddings": cfg.tied, "bias": cfg.has_bias},
        "params": model.num_params(),
        "params_non_embedding": model.num_params(non_embedding=True),
        "train_flops_per_token": model.flops_per_token(),
        "files": {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()},
    }
    weights = path / WEIGHTS_FILE
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as f:
                stored = {f.get_slice(k).get_dtype() for k in f.keys()}
        except SafetensorError as err:
            raise damaged_weights(weights, err) from None
        summary["weights_dtypes"] = sorted(SAFETENSORS_DTYPES.get(d, d) for d in stored)
    if tokenizer is not None:
        summary["tokenizer"] = {"vocab_size": tokenizer.vocab_size, "chat_tokens": tokenizer.has_chat_tokens,
                                "bos_id": tokenizer.bos_id}
    summary["other_config"] = {k: v for k, v in config.items() if k != "model"}
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    cfg = summary["model"]
    lines = [
        f"checkpoint  {summary['path']}",
        f"model       {cfg['arch']}: {cfg['n_layer']} layers, {cfg['n_head']} heads ({cfg['kv_heads']} kv) "
        f"x {cfg['head_dim']}, n_embd {cfg['n_embd']}, mlp {cfg['mlp_hidden']}, vocab {cfg['vocab_size']}, "
        f"context {cfg['block_size']}",
        f"            tied embeddings {cfg['tie_embeddings']}, bias {cfg['bias']}, qk_norm {cfg['qk_norm']}",
        f"params      {summary['params'] / 1e6:,.2f}M ({summary['params_non_embedding'] / 1e6:,.2f}M without "
        f"embeddings); training {summary['train_flops_per_token'] / 1e9:,.3f} GFLOP/token at full context",
        f"weights     {', '.join(summary.get('weights_dtypes', ['missing']))}",
    ]
    if "tokenizer" in summary:
        tok = summary["tokenizer"]
        lines.append(f"tokenizer   vocab {tok['vocab_size']}, chat tokens {'yes' if tok['chat_tokens'] else 'no'}")
    else:
        lines.append("tokenizer   none")
    lines.append("files       " + ", ".join(f"{name} ({size / 1e6:,.1f} MB)" for name, size in summary["files"].items()))
    for key, value in summary["other_config"].items():
        lines.append(f"{key:<11} {value}")
    return "\n".join(lines)
