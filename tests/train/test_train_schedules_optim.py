"""Schedules against hand-computed values; optimizer groups; gradient accumulation arithmetic; --depth."""

from __future__ import annotations

import math

import pytest
import torch

from lmstack.config import ConfigError, load_config
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.train.commands import load_train_config
from lmstack.train.config import TrainConfig
from lmstack.train.optim import build_optimizers, split_parameters
from lmstack.train.schedules import lr_multiplier


def test_cosine_schedule_hand_computed():
    cfg = TrainConfig(schedule="cosine", warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_multiplier(cfg, 0) == pytest.approx(0.1)  # warmup: (0 + 1) / 10
    assert lr_multiplier(cfg, 9) == pytest.approx(1.0)
    assert lr_multiplier(cfg, 10) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_multiplier(cfg, 60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: cos(pi/2) = 0
    assert lr_multiplier(cfg, 110) == pytest.approx(0.1)


def test_warmup_stable_decay_hand_computed():
    cfg = TrainConfig(schedule="wsd", warmup_steps=10, max_steps=100, decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_multiplier(cfg, 4) == pytest.approx(0.5)
    assert lr_multiplier(cfg, 50) == 1.0 and lr_multiplier(cfg, 79) == 1.0  # stable until step 80
    assert lr_multiplier(cfg, 80) == pytest.approx(1 - 1 / 20)  # linear decay over the last 20 steps
    assert lr_multiplier(cfg, 99) == pytest.approx(0.0)


def test_weight_decay_only_on_matmul_weights():
    model = build_model(ModelConfig(arch="gpt2", vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    groups = split_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups["hidden"] + groups["head"]}
    assert "blocks.0.attn.qkv.weight" in decayed and "blocks.1.mlp.down.weight" in decayed
    assert not any(n.endswith("bias") or "norm" in n or "emb" in n for n in decayed)
    [optimizer] = build_optimizers(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    by_decay = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in optimizer.param_groups}
    assert sum(by_decay.values()) == model.num_params()  # every parameter exactly once (tied head too)
    assert by_decay[0.1] == sum(p.numel() for p in groups["hidden"])  # gpt2 ties the head to the embedding


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = build_model(ModelConfig(arch="llama", vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    muon, adamw = build_optimizers(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    assert isinstance(muon, torch.optim.Muon) and all(p.dim() == 2 for g in muon.param_groups for p in g["params"])
    counted = sum(p.numel() for opt in (muon, adamw) for g in opt.param_groups for p in g["params"])
    assert counted == model.num_params()
    x = torch.randint(0, 64, (2, 16))
    before = model(x, x)[1].item()
    for _ in range(5):
        model(x, x)[1].backward()
        for opt in (muon, adamw):
            opt.step()
            opt.zero_grad()
    assert model(x, x)[1].item() < before


def test_grad_accumulation_keeps_the_global_batch():
    cfg = TrainConfig(batch_size=4, seq_len=32, tokens_per_step=4 * 32 * 8)
    assert [cfg.grad_accum_steps(w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ConfigError, match="not a multiple"):
        TrainConfig(batch_size=4, seq_len=32, tokens_per_step=1000).grad_accum_steps(1)


def test_depth_dial_sets_the_shape_and_set_overrides_it():
    class Args:
        config, depth, overrides = None, 6, ["model.n_layer=3"]

    cfg = load_train_config(Args)
    assert (cfg.model.n_embd, cfg.model.n_head, cfg.model.n_layer) == (384, 6, 3)


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="seq_len=1024 is longer than model.block_size=512"):
        load_config(TrainConfig, overrides=["seq_len=1024"])
    with pytest.raises(ConfigError, match="guard.spike_factor"):
        load_config(TrainConfig, overrides=["guard.spike_factor=-1"])
    assert math.isclose(load_config(TrainConfig, overrides=["lr=1e-4"]).lr, 1e-4)
