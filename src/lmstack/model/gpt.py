"""One GPT, two architectures.

- `gpt2`:  learned positions, LayerNorm, GELU (tanh), tied embeddings, biases -- exactly GPT-2.
- `llama`: RoPE, RMSNorm, SwiGLU, grouped-query attention, untied, no biases; optional QK-norm.

Shapes: B batch, T time, C = n_embd, H query heads, K kv heads, D head dim, V vocab.

The forward pass takes optional `positions` (B, T) and a `kv_cache`. A KV cache is any object with
`attend(layer_idx, q, k, v) -> y`: it stores this step's k, v (B, K, T, D) and attends the queries
(B, H, T, D) over everything cached so far. The inference layer's paged cache and the dense cache
used for simple sampling both implement it, so there is no second model for inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmstack.config import ConfigError
from lmstack.model.config import ModelConfig
from lmstack.model.lm_loss import cross_entropy, linear_cross_entropy
from lmstack.model.onednn_linear import Linear


def is_plain_linear(module: nn.Module) -> bool:
    """True when module(x) is F.linear(x, module.weight, module.bias): an nn.Linear, or one that only computes it
    faster (the model's own oneDNN `Linear`, the engine's PackedLinear); False for layers that add to it or store
    it otherwise (LoRA, int8)."""
    return type(module) is nn.Linear or getattr(module, "is_plain_linear", False)


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule called `name` (as named_modules gives it) sits in `root`."""
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name), attr, new)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (as HF Llama does) so bf16 activations do not lose the mean square. With x and the
        # weight in one dtype, the fused op does exactly that (fp32 inside, one rounding at the end: bit-identical
        # on CPU, tests/model) without the 3 casts, which were 6% of a small bf16 model's decode step.
        if x.dtype == self.weight.dtype:
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)
        return (F.rms_norm(x.float(), (x.size(-1),), eps=self.eps) * self.weight.float()).to(x.dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "gpt2":
        return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.has_bias)
    return RMSNorm(cfg.n_embd, cfg.norm_eps)


def rope_tables(cfg: ModelConfig, length: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (length, D) in the 'rotate half' layout HF Llama uses (no weight permutation)."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32, device=device) / cfg.head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        # One fused projection for q, k, v: a single matmul is faster than three on every device.
        self.qkv = Linear(cfg.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=cfg.has_bias)
        self.proj = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.has_bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout

    def project(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None):
        """x (B, T, C) -> q (B, H, T, D), k and v (B, K, T, D), with RoPE and QK-norm applied."""
        B, T, _ = x.shape
        H, K = self.n_head, self.n_kv_head
        qk, v = self.qkv(x).view(B, T, H + 2 * K, self.head_dim).split([H + K, K], dim=2)
        if self.q_norm is not None:
            q, k = qk.split([H, K], dim=2)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], dim=2)
        if rope is not None:
            # Query and key heads in one rotation (cos, sin: (B, T, 1, D)): half the ops of a decode step's RoPE.
            qk = apply_rope(qk, *rope)
        q, k = qk.split([H, K], dim=2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x, rope, kv_cache=None, attn_mask=None):
        B, T, C = x.shape
        q, k, v = self.project(x, rope)
        if kv_cache is not None:
            y = kv_cache.attend(self.layer_idx, q, k, v)
        else:
            k, v = expand_kv(k, self.n_head), expand_kv(v, self.n_head)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def expand_kv(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """Repeat kv heads (B, K, T, D) -> (B, H, T, D) for grouped-query attention."""
    n_rep = n_head // x.size(1)
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.arch == "llama"
        self.gelu_approximate = "tanh" if cfg.gelu == "tanh" else "none"
        # SwiGLU's gate and up projections are fused into one matmul, split after.
        self.up = Linear(cfg.n_embd, cfg.hidden * (2 if self.swiglu else 1), bias=cfg.has_bias)
        self.down = Linear(cfg.hidden, cfg.n_embd, bias=cfg.has_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate=self.gelu_approximate)
        return self.down(h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg, layer_idx)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, kv_cache=None, attn_mask=None):
        x = x + self.dropout(self.attn(self.norm1(x), rope, kv_cache, attn_mask))
        return x + self.dropout(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size is None:
            raise ConfigError("model.vocab_size is not set: pass the tokenizer's vocab size (training fills it in "
                              "from the data dir)")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.arch == "gpt2" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.tie_weights()
        if cfg.arch == "llama":
            # Not persistent: derived from the config, recomputed by init_weights (e.g. after meta build).
            self.register_buffer("rope_cos", torch.empty(cfg.block_size, cfg.head_dim), persistent=False)
            self.register_buffer("rope_sin", torch.empty(cfg.block_size, cfg.head_dim), persistent=False)

    def tie_weights(self) -> None:
        if self.cfg.tied:
            self.lm_head.weight = self.tok_emb.weight

    # ---- construction -------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer), zero biases."""
        gen = torch.Generator(device=self.tok_emb.weight.device)
        if seed is not None:
            gen.manual_seed(seed)
        else:
            gen.seed()
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if p.dim() < 2:  # norms' weights (1) and biases (0)
                p.fill_(0.0 if name.endswith("bias") else 1.0)
            else:
                std = residual_std if name.endswith(("attn.proj.weight", "mlp.down.weight")) else 0.02
                p.normal_(0.0, std, generator=gen)
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        if self.cfg.arch == "llama":
            # Always fp32, whatever dtype the weights were cast to: positions must stay exact.
            self.rope_cos, self.rope_sin = rope_tables(self.cfg, self.cfg.block_size, self.rope_cos.device)

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                positions: torch.Tensor | None = None, kv_cache=None, attn_mask: torch.Tensor | None = None,
                logits_at: torch.Tensor | None = None, loss_reduction: str = "mean"):
        """idx (B, T) token ids -> (logits, loss).

        positions: (B, T) absolute positions (default 0..T-1); needed with a KV cache and for packing.
        attn_mask: bool, True = may attend, broadcastable to (B, 1, T, T); default causal.
        logits_at: flat indices into B*T: only those rows of logits are computed (prefill, sampling).
        targets:   (B, T) next-token ids, -1 = not trained on; gives the cross-entropy loss. With a loss,
                   the logits may come back detached (lmstack.model.lm_loss): differentiate the loss.
        """
        B, T = idx.shape
        if positions is None:
            if T > self.cfg.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than the model's block_size {self.cfg.block_size}")
            positions = torch.arange(T, device=idx.device).expand(B, T)
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        else:
            rope = (self.rope_cos[positions].unsqueeze(2), self.rope_sin[positions].unsqueeze(2))  # (B, T, 1, D)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope, kv_cache, attn_mask)
        x = self.norm_f(x)
        if logits_at is not None:
            x = x.reshape(B * T, -1)[logits_at]
        if targets is None:
            return self.lm_head(x), None
        flat_x, flat_targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)
        if is_plain_linear(self.lm_head):  # not when an adapter (LoRA) computes the head's output itself
            loss, logits = linear_cross_entropy(flat_x, self.lm_head.weight, flat_targets, loss_reduction)
            logits = logits.view(*x.shape[:-1], -1)
        else:
            logits = self.lm_head(x)
            loss = cross_entropy(logits.reshape(flat_x.size(0), -1), flat_targets, loss_reduction)
        return logits, loss

    # ---- accounting ---------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # parameters() counts a tied weight once
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N plus attention, as in the PaLM paper (App. B).

        N excludes embeddings (a lookup, no FLOPs) but includes the lm_head matmul.
        """
        cfg = self.cfg
        T = seq_len or cfg.block_size
        n = self.num_params(non_embedding=True) + (self.lm_head.weight.numel() if cfg.tied else 0)
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu", seed: int | None = 0,
                init: bool = True) -> GPT:
    """1) build on the meta device (no memory, no init cost), 2) allocate on `device`, 3) init explicitly."""
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device=device)
    model.tie_weights()  # to_empty gives the shared weight two separate tensors; share it again
    if init:
        model.init_weights(seed)
    else:
        model.reset_buffers()
    return model
