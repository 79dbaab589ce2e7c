"""Checkpoint dirs: exact round trips, tied weights that stay tied, and errors that name the bad part."""

from __future__ import annotations

import json
import re

import pytest
import torch
from model_testing import random_tokens, randomise_norms, tiny_config
from safetensors.torch import load_file

from lmstack.config import ConfigError
from lmstack.model.checkpoint import CheckpointError, load_model_dir, save_model_dir
from lmstack.model.gpt import build_model


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_round_trip_gives_identical_logits(tmp_path, arch, tiny_tokenizer):
    model = build_model(tiny_config(arch, qk_norm=arch == "llama"), seed=7).eval()
    randomise_norms(model)
    save_model_dir(tmp_path / "ckpt", model, tiny_tokenizer, {"note": "kept"})
    loaded, tokenizer, config = load_model_dir(tmp_path / "ckpt")
    tokens = random_tokens(400)
    with torch.no_grad():
        assert torch.equal(loaded(tokens)[0], model(tokens)[0])
    assert config["note"] == "kept" and not loaded.training
    assert tokenizer.encode("lazy dog") == tiny_tokenizer.encode("lazy dog")


def test_tied_weight_is_stored_once_and_shared_after_load(tmp_path):
    save_model_dir(tmp_path / "ckpt", build_model(tiny_config("gpt2")), None)
    assert "lm_head.weight" not in load_file(tmp_path / "ckpt" / "model.safetensors")
    loaded, tokenizer, _ = load_model_dir(tmp_path / "ckpt")
    assert tokenizer is None
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    half, _, _ = load_model_dir(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert half.lm_head.weight is half.tok_emb.weight and half.tok_emb.weight.dtype == torch.bfloat16


def test_bf16_load_keeps_rope_tables_fp32(tmp_path):
    model = build_model(tiny_config("llama"), seed=1).eval()
    save_model_dir(tmp_path / "ckpt", model, None)
    half, _, _ = load_model_dir(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert half.rope_cos.dtype == torch.float32 and torch.equal(half.rope_cos, model.rope_cos)
    tokens = random_tokens(400)
    with torch.no_grad():
        assert (half(tokens)[0].float() - model(tokens)[0]).abs().max().item() < 0.05


def test_saving_over_a_checkpoint_replaces_it_whole(tmp_path):
    save_model_dir(tmp_path / "ckpt", build_model(tiny_config("llama"), seed=1), None)
    second = build_model(tiny_config("llama"), seed=2)
    save_model_dir(tmp_path / "ckpt", second, None)
    loaded, _, _ = load_model_dir(tmp_path / "ckpt")
    assert torch.equal(loaded.tok_emb.weight, second.tok_emb.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary or old dirs left


def test_missing_weights_file_is_named(tmp_path):
    save_model_dir(tmp_path / "ckpt", build_model(tiny_config("llama")), None)
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        load_model_dir(tmp_path / "ckpt")


def test_a_run_dir_passed_as_a_checkpoint_names_its_checkpoints(tmp_path):
    # A run dir has a config.json of its own; its checkpoints are inside it.
    run = tmp_path / "sft"
    save_model_dir(run / "final", build_model(tiny_config("llama")), None)
    (run / "checkpoints" / "step_000010").mkdir(parents=True)  # a checkpoint dir still being written: no weights
    (run / "config.json").write_text(json.dumps({"model": {}, "lr": 1e-3}))
    message = f"'{run}' is a run dir, not a checkpoint dir; pass one of its checkpoints: {run / 'final'}"
    with pytest.raises(CheckpointError, match=re.escape(message) + "$"):
        load_model_dir(run)


def test_unknown_config_key_is_named(tmp_path):
    save_model_dir(tmp_path / "ckpt", build_model(tiny_config("llama")), None)
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["n_lyer"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="unknown config key 'model.n_lyer'"):
        load_model_dir(tmp_path / "ckpt")


def test_not_a_checkpoint_dir_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_dir(tmp_path / "nowhere")
    (tmp_path / "hf").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json.*lmstack import --from hf"):
        load_model_dir(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match='no "model" table'):
        load_model_dir(tmp_path / "hf")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    save_model_dir(tmp_path / "ckpt", build_model(tiny_config("llama")), None)
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["n_layer"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match its config.json"):
        load_model_dir(tmp_path / "ckpt")
