"""The model's shape: one dataclass for both architectures, and the `depth` dial that derives the rest."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal, Optional

from lmstack.config import ConfigError


@dataclass
class ModelConfig:
    arch: Literal["gpt2", "llama"] = "llama"
    vocab_size: Optional[int] = None  # None: the tokenizer's (training takes it from the data dir's meta.json)
    block_size: int = 512  # longest context the model is trained / served at
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: Optional[int] = None  # grouped-query attention; None = n_head (plain multi-head)
    n_embd: int = 256
    mlp_hidden: Optional[int] = None  # None: 4*n_embd for gpt2, ~8/3*n_embd (rounded to 64) for llama
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False  # RMSNorm on queries and keys per head (llama only), steadies training
    gelu: Literal["tanh", "exact"] = "tanh"  # gpt2 only: GPT-2's "gelu_new" is tanh; nanoGPT trains with exact erf
    tie_embeddings: Optional[bool] = None  # None: tied for gpt2 (as GPT-2 is), untied for llama
    bias: Optional[bool] = None  # None: biases for gpt2, none for llama
    dropout: float = 0.0

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if self.kv_heads <= 0 or self.n_head % self.kv_heads:
            raise ConfigError(f"model.n_head={self.n_head} must be a multiple of model.n_kv_head={self.kv_heads}")
        if self.arch == "gpt2" and self.kv_heads != self.n_head:
            raise ConfigError("model.n_kv_head: grouped-query attention needs arch='llama'")
        if self.arch == "llama" and self.head_dim % 2:
            raise ConfigError(f"head dim {self.head_dim} must be even for RoPE; change model.n_embd or model.n_head")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        require_finite(self, "model.")
        # Out of these ranges the model still builds, then fails in nn.Dropout or computes inf/nan at the first step.
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ConfigError(f"model.rope_theta and model.norm_eps must be > 0, got {self.rope_theta} and "
                              f"{self.norm_eps}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.arch == "gpt2":
            return 4 * self.n_embd
        return 64 * math.ceil(8 * self.n_embd / 3 / 64)  # SwiGLU keeps the 4x MLP's parameter count

    @property
    def tied(self) -> bool:
        return self.arch == "gpt2" if self.tie_embeddings is None else self.tie_embeddings

    @property
    def has_bias(self) -> bool:
        return self.arch == "gpt2" if self.bias is None else self.bias


def require_finite(config: Any, prefix: str = "") -> None:
    """Refuse a float setting of a config dataclass that is nan or inf (`--set lr=inf`): a comparison with nan is
    always false, so range checks let it through, and a run would skip every step or print nan."""
    for field in fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{field.name} must be a finite number, got {value}")


def config_from_depth(depth: int, arch: str = "llama", vocab_size: Optional[int] = None, block_size: int = 512,
                      head_dim: int = 64) -> ModelConfig:
    """One number sets the shape, as in nanochat: width = 64 * depth, heads of `head_dim`.

    nanochat uses aspect ratio 64 (model_dim = 64 * depth); small models keep head_dim 64 so that a
    depth-4 model still has 4 heads. vocab_size None is ModelConfig's: training fills it from the data.
    """
    if depth < 1:
        raise ConfigError(f"--depth must be at least 1, got {depth}")
    n_embd = 64 * depth
    n_head = max(1, n_embd // head_dim)
    cfg = ModelConfig(arch=arch, vocab_size=vocab_size, block_size=block_size, n_layer=depth,
                      n_head=n_head, n_embd=n_embd)
    cfg.validate()
    return cfg
