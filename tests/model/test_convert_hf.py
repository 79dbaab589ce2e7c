"""Hugging Face import and export, checked against `transformers` itself: same logits both ways."""

from __future__ import annotations

import json

import pytest
import torch
from model_testing import random_tokens, randomise_norms, tiny_config
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from lmstack.model.checkpoint import load_model_dir, save_model_dir  # noqa: E402
from lmstack.model.convert import ConversionError  # noqa: E402
from lmstack.model.convert_hf import export_hf, import_hf  # noqa: E402
from lmstack.model.gpt import build_model  # noqa: E402

TOLERANCE = 1e-4


def hf_gpt2(**overrides):
    settings = dict(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**settings, **overrides}))


def hf_llama(**overrides):
    settings = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                    rope_theta=500.0, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**settings, **overrides}))


def hf_qwen3():
    config = transformers.Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=64, rms_norm_eps=1e-5)
    return transformers.Qwen3ForCausalLM(config)


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def our_logits(model, tokens):
    with torch.no_grad():
        return model(tokens)[0]


def imported(hf_model, tmp_path):
    hf_model.eval()
    randomise_norms(hf_model)
    hf_model.save_pretrained(tmp_path / "hf")
    import_hf(str(tmp_path / "hf"), tmp_path / "ours")
    model, _, config = load_model_dir(tmp_path / "ours")
    return model, config


@pytest.mark.parametrize("make", [
    lambda: hf_gpt2(),
    lambda: hf_gpt2(activation_function="gelu", n_inner=48),
    lambda: hf_llama(),  # grouped-query attention, untied
    lambda: hf_llama(tie_word_embeddings=True, attention_bias=True, mlp_bias=True, num_key_value_heads=1),
    lambda: hf_qwen3(),  # QK-norm
], ids=["gpt2", "gpt2-exact-gelu", "llama-gqa", "llama-tied-bias-mqa", "qwen3-qknorm"])
def test_import_gives_transformers_logits(make, tmp_path):
    torch.manual_seed(0)
    hf_model = make()
    model, config = imported(hf_model, tmp_path)
    tokens = random_tokens(300, length=20)
    diff = (our_logits(model, tokens) - hf_logits(hf_model, tokens)).abs().max().item()
    assert diff < TOLERANCE
    assert config["imported_from"]["architecture"] == hf_model.config.architectures[0]


def test_import_reads_sharded_safetensors(tmp_path):
    torch.manual_seed(0)
    hf_model = hf_llama().eval()
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="50KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    import_hf(str(tmp_path / "hf"), tmp_path / "ours")
    model, _, _ = load_model_dir(tmp_path / "ours")
    tokens = random_tokens(300)
    assert (our_logits(model, tokens) - hf_logits(hf_model, tokens)).abs().max().item() < TOLERANCE


def test_import_keeps_dtype_unless_asked(tmp_path):
    torch.manual_seed(0)
    hf_llama().to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    import_hf(str(tmp_path / "hf"), tmp_path / "bf16")
    import_hf(str(tmp_path / "hf"), tmp_path / "fp32", dtype="float32")
    assert {t.dtype for t in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.bfloat16}
    assert {t.dtype for t in load_file(tmp_path / "fp32" / "model.safetensors").values()} == {torch.float32}


def test_import_keeps_the_source_tokenizer_file(tmp_path, tiny_tokenizer):
    hf_gpt2(vocab_size=tiny_tokenizer.vocab_size).save_pretrained(tmp_path / "hf")  # a tokenizer must fit the vocab
    tiny_tokenizer.save(tmp_path / "hf" / "tokenizer.json")
    import_hf(str(tmp_path / "hf"), tmp_path / "ours")
    assert (tmp_path / "ours" / "tokenizer.json").read_bytes() == (tmp_path / "hf" / "tokenizer.json").read_bytes()
    _, tokenizer, _ = load_model_dir(tmp_path / "ours")
    assert tokenizer.encode("the lazy dog") == tiny_tokenizer.encode("the lazy dog")


@pytest.mark.parametrize("cfg", [
    tiny_config("gpt2"),
    tiny_config("gpt2", bias=False, tie_embeddings=False, gelu="exact"),  # HF gets zero biases
    tiny_config("llama"),
    tiny_config("llama", bias=True, tie_embeddings=True, n_kv_head=1),
    tiny_config("llama", qk_norm=True),  # exported as Qwen3
], ids=["gpt2", "gpt2-nobias-untied", "llama-gqa", "llama-tied-bias", "llama-qknorm"])
def test_export_loads_in_transformers_with_same_logits(cfg, tmp_path):
    model = build_model(cfg, seed=3)
    randomise_norms(model)
    model.eval()
    save_model_dir(tmp_path / "ckpt", model, None)
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    hf_model, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tokens = random_tokens(cfg.vocab_size, length=20)
    diff = (hf_logits(hf_model.eval(), tokens) - our_logits(model, tokens)).abs().max().item()
    assert diff < TOLERANCE


def test_export_then_import_is_the_identity(tmp_path):
    model = build_model(tiny_config("llama", qk_norm=True), seed=5)
    save_model_dir(tmp_path / "ckpt", model, None)
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    import_hf(str(tmp_path / "hf"), tmp_path / "again")
    before = load_file(tmp_path / "ckpt" / "model.safetensors")
    after = load_file(tmp_path / "again" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_export_casts_dtype_and_records_it(tmp_path):
    save_model_dir(tmp_path / "ckpt", build_model(tiny_config("llama")), None)
    export_hf(tmp_path / "ckpt", tmp_path / "hf", dtype="bfloat16")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(tmp_path / "hf" / "model.safetensors").values()} == {torch.bfloat16}


def write_hf_dir(path, config, model=None):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    if model is not None:
        model.save_pretrained(path, safe_serialization=True)


def test_import_refuses_unsupported_models_by_name(tmp_path):
    write_hf_dir(tmp_path / "bert", {"model_type": "bert", "architectures": ["BertModel"]})
    with pytest.raises(ConversionError, match="'bert'.*gpt2.*llama"):
        import_hf(str(tmp_path / "bert"), tmp_path / "out")
    scaled = hf_llama(rope_scaling={"rope_type": "linear", "factor": 2.0})
    scaled.save_pretrained(tmp_path / "scaled")
    with pytest.raises(ConversionError, match="RoPE scaling 'linear'"):
        import_hf(str(tmp_path / "scaled"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_names_missing_and_extra_tensors(tmp_path):
    hf_gpt2().save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(ConversionError, match=r"lacks tensor\(s\) \['transformer.h.2"):
        import_hf(str(tmp_path / "hf"), tmp_path / "out")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "n_layer": 1}))
    with pytest.raises(ConversionError, match="transformer.h.1"):
        import_hf(str(tmp_path / "hf"), tmp_path / "out")


def test_import_of_missing_paths_says_what_to_pass(tmp_path):
    with pytest.raises(ConversionError, match="is not a directory"):
        import_hf(str(tmp_path / "nowhere"), tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no config.json"):
        import_hf(str(tmp_path / "empty"), tmp_path / "out")


def test_import_of_an_lmstack_checkpoint_says_no_import_is_needed(tmp_path):
    save_model_dir(tmp_path / "ckpt", build_model(tiny_config("llama")), None)
    with pytest.raises(ConversionError, match="'.*ckpt' is already an lmstack checkpoint dir: no import needed"):
        import_hf(str(tmp_path / "ckpt"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_shapes_without_hf_equivalent(tmp_path):
    save_model_dir(tmp_path / "ckpt", build_model(tiny_config("llama", qk_norm=True, bias=True)), None)
    with pytest.raises(ConversionError, match="qk_norm and biases"):
        export_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
