"""Look inside a model on one prompt: attention maps, per-head entropy, a logit lens, per-token logprobs.

Attention weights are recomputed from each layer's own q and k (a forward pre-hook on every block's
`attn` receives its input and RoPE tables, and `Attention.project` gives q, k), under the same mask
the forward used, so a broken mask or a collapsed head shows up here as it does in the model.
`check_attention` turns the maps into warnings a person can act on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmstack.model.gpt import GPT, expand_kv

FUTURE_MASS_LIMIT = 1e-3  # attention weight above the diagonal that counts as "sees the future"
COLLAPSE_LIMIT = 0.95  # mean weight on one key position that counts as "collapsed"


@dataclass
class Inspection:
    token_ids: list[int]
    attention: list[torch.Tensor]  # per layer (H, T, T): query rows, key columns
    head_entropy: torch.Tensor  # (n_layer, H) mean attention entropy in nats over query positions
    lens_top: list[list[tuple[int, float]]]  # per layer, the top tokens (id, prob) at the last position
    token_logprobs: list[float | None]  # per position, log p(token | earlier tokens); None for the first
    token_entropy: list[float]  # per position, entropy (nats) of the next-token distribution
    warnings: list[str] = field(default_factory=list)


@torch.inference_mode()
def inspect_prompt(model: GPT, token_ids: list[int], attn_mask: torch.Tensor | None = None, top: int = 5) -> Inspection:
    """One forward over `token_ids` with hooks; attn_mask as in GPT.forward (None = causal)."""
    device = model.tok_emb.weight.device
    maps: list[torch.Tensor] = []
    residuals: list[torch.Tensor] = []

    def record_attention(module, args):
        x, rope = args[0], args[1]
        mask = args[3] if len(args) > 3 else None
        maps.append(attention_weights(module, x, rope, mask)[0].float().cpu())

    hooks = [block.attn.register_forward_pre_hook(record_attention) for block in model.blocks]
    hooks += [block.register_forward_hook(lambda m, a, out: residuals.append(out)) for block in model.blocks]
    try:
        logits, _ = model(torch.tensor([token_ids], device=device), attn_mask=attn_mask)
    finally:
        for hook in hooks:
            hook.remove()
    log_probs = logits[0].float().log_softmax(-1)
    token_logprobs = [None] + [float(log_probs[t - 1, token_ids[t]]) for t in range(1, len(token_ids))]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    lens = []
    for residual in residuals:
        probs = model.lm_head(model.norm_f(residual[:, -1])).float().softmax(-1)[0]
        values, indices = probs.topk(min(top, probs.numel()))
        lens.append(list(zip(indices.tolist(), values.tolist())))
    head_entropy = torch.stack([attention_entropy(m) for m in maps])
    result = Inspection(token_ids, maps, head_entropy, lens, token_logprobs, entropy.tolist())
    result.warnings = check_attention(maps)
    return result


def attention_weights(attn, x: torch.Tensor, rope, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) of one Attention module -> (B, H, T, T), with the forward's mask."""
    q, k, _ = attn.project(x, rope)
    k = expand_kv(k, q.size(1))
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.size(-1))
    T = q.size(2)
    if mask is None:
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


def attention_entropy(weights: torch.Tensor) -> torch.Tensor:
    """(H, T, T) -> (H,) mean over queries of the entropy of each query's attention, in nats."""
    return -(weights * weights.clamp_min(1e-12).log()).sum(-1).mean(-1)


def check_attention(maps: list[torch.Tensor]) -> list[str]:
    """Plain-language warnings: heads that see future positions, heads collapsed onto one key position."""
    warnings = []
    for layer, weights in enumerate(maps):
        T = weights.size(-1)
        future = weights.triu(diagonal=1).sum(-1).amax(-1)  # (H,) worst query's mass on later positions
        for head in (future > FUTURE_MASS_LIMIT).nonzero().flatten().tolist():
            warnings.append(f"layer {layer} head {head}: attends to future positions (up to "
                            f"{future[head]:.1%} of its weight); the causal mask is broken")
        if T < 4:
            continue
        # Skip the first queries, which have few keys to choose from and look collapsed by necessity.
        late = weights[:, T // 2:]
        per_key = late.mean(1)  # (H, T) average weight each key receives from the later queries
        share, key = per_key.max(-1)
        for head in (share > COLLAPSE_LIMIT).nonzero().flatten().tolist():
            warnings.append(f"layer {layer} head {head}: collapsed onto position {key[head]} "
                            f"({share[head]:.0%} of the weight of every later query)")
    return warnings


def plot_attention(inspection: Inspection, labels: list[str], out_dir: str | Path) -> list[Path]:
    """One PNG per layer: a heatmap per head (rows: queries, columns: keys)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmstack.atomic import atomic_write

    out_dir = Path(out_dir)  # atomic_write creates it
    paths = []
    for layer, weights in enumerate(inspection.attention):
        heads = weights.size(0)
        cols = min(heads, 4)
        rows = -(-heads // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
        for head, ax in enumerate(axes.flat):
            if head >= heads:
                ax.axis("off")
                continue
            ax.imshow(weights[head].numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"head {head}  H={inspection.head_entropy[layer, head]:.2f}", fontsize=8)
            if len(labels) <= 24:
                ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
                ax.set_yticks(range(len(labels)), labels, fontsize=6)
        fig.suptitle(f"layer {layer} attention (rows: queries, columns: keys)")
        fig.tight_layout()
        path = out_dir / f"attention_layer{layer:02d}.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
        plt.close(fig)
        paths.append(path)
    return paths


def plot_token_scores(inspection: Inspection, labels: list[str], out_dir: str | Path) -> Path:
    """Per-token logprob and next-token entropy, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmstack.atomic import atomic_write

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.35 * len(labels)), 5), sharex=True)
    positions = range(len(labels))
    top.bar(positions, [lp if lp is not None else 0.0 for lp in inspection.token_logprobs], color="tab:blue")
    top.set_ylabel("log p(token)")
    bottom.plot(positions, inspection.token_entropy, marker="o", color="tab:orange")
    bottom.set_ylabel("next-token entropy (nats)")
    bottom.set_xticks(list(positions), labels, rotation=90, fontsize=7)
    fig.tight_layout()
    path = Path(out_dir) / "token_scores.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path
