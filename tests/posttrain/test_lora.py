"""LoRA: merged weights give the base + adapter logits; training moves only the adapters."""

import pytest
import torch

from lmstack.model.checkpoint import load_model_dir, save_model_dir
from lmstack.train.lora import LoRAError, LoRALinear, apply_lora, lora_disabled, lora_parameters, merge_lora


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merged_weights_give_base_plus_adapter_logits(chat_tokenizer, make_model, arch, tmp_path):
    model = make_model(chat_tokenizer, arch=arch).eval()
    idx = torch.randint(0, chat_tokenizer.vocab_size, (2, 24))
    with torch.no_grad():
        base_logits, _ = model(idx)
    adapted = apply_lora(model, rank=4, alpha=8, targets=["qkv", "proj", "up", "down"])
    assert len(adapted) == 4 * model.cfg.n_layer
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.05)  # B starts at zero; make the adapter do something
        adapter_logits, _ = model(idx)
        # the adapter path by hand: W x + (alpha / r) B A x for one layer equals the wrapped layer
        layer = model.blocks[0].attn.qkv
        x = torch.randn(3, layer.in_features)
        by_hand = x @ layer.weight.T + (x @ layer.lora_A.T @ layer.lora_B.T) * (8 / 4)
        torch.testing.assert_close(layer(x), by_hand + (layer.bias if layer.bias is not None else 0))
        with lora_disabled(model):
            torch.testing.assert_close(model(idx)[0], base_logits)
    assert not torch.allclose(adapter_logits, base_logits)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    save_model_dir(tmp_path / "merged", model, chat_tokenizer)
    reloaded, _, _ = load_model_dir(tmp_path / "merged")  # a plain checkpoint: loads with no LoRA code
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx)[0], adapter_logits, rtol=1e-4, atol=1e-5)


def test_training_changes_only_adapter_parameters(chat_tokenizer, make_model):
    model = make_model(chat_tokenizer).train()
    apply_lora(model, rank=2, dropout=0.1, targets=["qkv", "down"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(model)}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    idx = torch.randint(0, chat_tokenizer.vocab_size, (2, 16))
    for _ in range(3):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == ("lora_" in name), name


def test_bad_lora_settings_are_clear_errors(chat_tokenizer, make_model):
    with pytest.raises(LoRAError, match="--lora-rank"):
        apply_lora(make_model(chat_tokenizer), rank=0)
    with pytest.raises(LoRAError, match="not one of"):
        apply_lora(make_model(chat_tokenizer), rank=2, targets=["attention"])
    with pytest.raises(LoRAError, match="lm_head shares"):
        apply_lora(make_model(chat_tokenizer, arch="gpt2"), rank=2, targets=["lm_head"])
