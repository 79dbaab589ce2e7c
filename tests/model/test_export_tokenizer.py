"""The exported tokenizer, loaded by `transformers.AutoTokenizer`, must tokenize exactly as ours does."""

from __future__ import annotations

import json

import pytest
from model_testing import tiny_config

transformers = pytest.importorskip("transformers")

from lmstack.model.checkpoint import save_model_dir  # noqa: E402
from lmstack.model.convert_hf import export_hf  # noqa: E402
from lmstack.model.gpt import build_model  # noqa: E402
from lmstack.tokenizer import BOS, END, PAD  # noqa: E402

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces  \n\nand blank lines\n",
    "def add(a, b):\n\treturn a + b",
    "Grüße aus Köln — naïve café, 東京 🙂",
    "",
]

TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}},
    {"type": "function", "function": {"name": "clock"}}]

CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+3?"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": {"expression": "2+3"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    {"role": "assistant", "content": "It is 5."},
    {"role": "user", "content": "Thanks, café!"},
]


@pytest.fixture
def exported(tmp_path, tiny_tokenizer):
    save_model_dir(tmp_path / "ckpt", build_model(tiny_config("llama")), tiny_tokenizer)
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    return tmp_path / "hf"


def test_auto_tokenizer_encodes_and_decodes_like_ours(exported, tiny_tokenizer):
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    for text in TEXTS:
        ids = tiny_tokenizer.encode(text)
        assert hf_tokenizer.encode(text, add_special_tokens=False) == ids
        assert hf_tokenizer(text)["input_ids"] == ids  # no bos/eos added behind our back
        assert hf_tokenizer.decode(ids) == tiny_tokenizer.decode(ids) == text


def test_special_tokens_and_stop_ids_are_declared(exported, tiny_tokenizer):
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    assert hf_tokenizer.bos_token == BOS and hf_tokenizer.eos_token == END and hf_tokenizer.pad_token == PAD
    assert hf_tokenizer.eos_token_id == tiny_tokenizer.end_id
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tiny_tokenizer.stop_ids
    config = json.loads((exported / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (tiny_tokenizer.bos_id, tiny_tokenizer.end_id)


@pytest.mark.parametrize("messages, tools, prompt", [
    (CONVERSATION, TOOLS, True),
    (CONVERSATION[1:], TOOLS, False),  # tools without a system message: a system turn is added
    (CONVERSATION, None, False),
    ([{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "hi"}], TOOLS, True),
], ids=["tools-merged-into-system", "tools-own-system", "no-tools", "developer-role"])
def test_chat_template_renders_the_same_ids_as_ours(exported, tiny_tokenizer, messages, tools, prompt):
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    text = hf_tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=prompt, tokenize=False)
    hf_ids = hf_tokenizer.encode(text, add_special_tokens=False)  # what vLLM does with a rendered prompt
    assert hf_ids == tiny_tokenizer.render(messages, tools=tools, add_generation_prompt=prompt).ids


def test_plain_tokenizer_without_chat_tokens_exports_without_template(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    from lmstack.tokenizer import Tokenizer

    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate("abcdefgh")}}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(["<|endoftext|>"])
    save_model_dir(tmp_path / "ckpt", build_model(tiny_config("gpt2", vocab_size=9)), Tokenizer(hf))
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer.eos_token == hf_tokenizer.bos_token == "<|endoftext|>"
    assert hf_tokenizer.chat_template is None
    assert hf_tokenizer.encode("abc", add_special_tokens=False) == [1, 2, 3]
