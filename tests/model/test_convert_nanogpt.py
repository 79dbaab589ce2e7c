"""nanoGPT ckpt.pt import, checked against a hand-written nanoGPT forward pass over the raw state dict."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from model_testing import random_tokens

from lmstack.errors import LmstackError
from lmstack.model.checkpoint import load_model_dir
from lmstack.model.convert import ConversionError
from lmstack.model.convert_nanogpt import import_nanogpt

ARGS = dict(n_layer=2, n_head=4, n_embd=32, block_size=24, vocab_size=400, dropout=0.0)  # the tiny tokenizer fits


def nanogpt_state(bias: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """nanoGPT's names and nn.Linear (out, in) shapes; lm_head is the same tensor as wte, as in nanoGPT."""
    gen = torch.Generator().manual_seed(seed)
    C, V, T = ARGS["n_embd"], ARGS["vocab_size"], ARGS["block_size"]

    def rand(*shape, scale=0.1, offset=0.0):
        return torch.randn(*shape, generator=gen) * scale + offset

    state = {"transformer.wte.weight": rand(V, C), "transformer.wpe.weight": rand(T, C)}
    for i in range(ARGS["n_layer"]):
        h = f"transformer.h.{i}."
        shapes = {"attn.c_attn": (3 * C, C), "attn.c_proj": (C, C), "mlp.c_fc": (4 * C, C), "mlp.c_proj": (C, 4 * C)}
        for name, shape in shapes.items():
            state[h + name + ".weight"] = rand(*shape)
            if bias:
                state[h + name + ".bias"] = rand(shape[0])
        for norm in ("ln_1", "ln_2"):
            state[h + norm + ".weight"] = rand(C, offset=1.0)
            if bias:
                state[h + norm + ".bias"] = rand(C)
        # the causal-mask buffer nanoGPT registers when flash attention is unavailable
        state[h + "attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
    state["transformer.ln_f.weight"] = rand(C, offset=1.0)
    if bias:
        state["transformer.ln_f.bias"] = rand(C)
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def reference_forward(state: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """nanoGPT's GPT.forward written out: explicit softmax attention, exact GELU, eps 1e-5."""
    n_head, (B, T) = ARGS["n_head"], idx.shape
    C = ARGS["n_embd"]

    def linear(x, name):
        return F.linear(x, state[name + ".weight"], state.get(name + ".bias"))

    def norm(x, name):
        return F.layer_norm(x, (C,), state[name + ".weight"], state.get(name + ".bias"), 1e-5)

    x = state["transformer.wte.weight"][idx] + state["transformer.wpe.weight"][:T]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(ARGS["n_layer"]):
        h = f"transformer.h.{i}."
        q, k, v = linear(norm(x, h + "ln_1"), h + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(C // n_head)
        attention = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (attention @ v).transpose(1, 2).reshape(B, T, C)
        x = x + linear(y, h + "attn.c_proj")
        x = x + linear(F.gelu(linear(norm(x, h + "ln_2"), h + "mlp.c_fc")), h + "mlp.c_proj")
    return F.linear(norm(x, "transformer.ln_f"), state["lm_head.weight"])


def write_ckpt(path, state, compiled: bool, bias: bool):
    prefix = "_orig_mod." if compiled else ""
    torch.save({"model": {prefix + k: v for k, v in state.items()}, "model_args": {**ARGS, "bias": bias},
                "optimizer": {"state": {}, "param_groups": []}, "iter_num": 100, "best_val_loss": 2.5,
                "config": {"dataset": "shakespeare_char", "learning_rate": 1e-3}}, path)


@pytest.mark.parametrize("bias, compiled", [(True, True), (False, False)], ids=["bias-compiled", "nobias"])
def test_nanogpt_import_matches_reference_forward(tmp_path, bias, compiled):
    state = nanogpt_state(bias)
    (tmp_path / "out").mkdir()
    write_ckpt(tmp_path / "out" / "ckpt.pt", state, compiled, bias)
    import_nanogpt(tmp_path / "out", tmp_path / "ours")  # nanoGPT's out_dir, as its sample.py takes
    model, _, config = load_model_dir(tmp_path / "ours")
    assert config["model"]["gelu"] == "exact" and config["model"]["bias"] is bias
    assert model.lm_head.weight is model.tok_emb.weight
    tokens = random_tokens(ARGS["vocab_size"], length=ARGS["block_size"])
    with torch.no_grad():
        diff = (model(tokens)[0] - reference_forward(state, tokens)).abs().max().item()
    assert diff < 1e-4


def test_nanogpt_checkpoint_without_model_args_is_refused(tmp_path):
    torch.save({"model": nanogpt_state(True)}, tmp_path / "ckpt.pt")
    with pytest.raises(ConversionError, match="'model' and 'model_args'"):
        import_nanogpt(tmp_path / "ckpt.pt", tmp_path / "ours")
    with pytest.raises(ConversionError, match="does not exist"):
        import_nanogpt(tmp_path / "missing.pt", tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


def test_nanogpt_tokenizer_is_attached_when_given(tmp_path, tiny_tokenizer):
    write_ckpt(tmp_path / "ckpt.pt", nanogpt_state(True), compiled=False, bias=True)
    tiny_tokenizer.save(tmp_path / "tokenizer.json")
    import_nanogpt(tmp_path / "ckpt.pt", tmp_path / "ours", tokenizer=tmp_path / "tokenizer.json")
    _, tokenizer, _ = load_model_dir(tmp_path / "ours")
    assert tokenizer.encode("quick brown fox") == tiny_tokenizer.encode("quick brown fox")


def test_a_damaged_nanogpt_file_is_imported_or_refused_never_a_traceback(tmp_path):
    """Bytes flipped anywhere in a real nanoGPT file: torch raised a ValueError (a damaged `.storage_alignment`
    record) that was a traceback. Every damaged copy now imports (damage inside a tensor's bytes reads as other
    numbers) or is refused with a ConversionError; none leaves a half-written output."""
    write_ckpt(tmp_path / "ckpt.pt", nanogpt_state(True), compiled=False, bias=True)
    intact = (tmp_path / "ckpt.pt").read_bytes()
    alignment = bytearray(intact)  # the record's text "64" (after its name and its zip header's padding)
    alignment[intact.index(b"64", intact.index(b".storage_alignment"))] ^= 0xFF
    (tmp_path / "damaged.pt").write_bytes(alignment)
    with pytest.raises(ConversionError, match="is not a readable nanoGPT checkpoint \\(ValueError: invalid literal"):
        import_nanogpt(tmp_path / "damaged.pt", tmp_path / "out")
    rng = random.Random(0)
    outcomes = Counter()
    for trial in range(60):
        damaged = bytearray(intact)
        for _ in range(rng.choice([1, 4, 16])):
            damaged[rng.randrange(len(damaged))] ^= 0xFF
        (tmp_path / "damaged.pt").write_bytes(damaged)
        out = tmp_path / f"out{trial}"
        try:
            import_nanogpt(tmp_path / "damaged.pt", out)
            outcomes["imported"] += 1
        except LmstackError:
            assert not out.exists()
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["imported"] > 0
