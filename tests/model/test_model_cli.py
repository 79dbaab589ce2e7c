"""`lmstack import`, `lmstack export` and `lmstack info` on tiny models, in this process (conftest's `cli`). The hub
cases run a new `lmstack` process: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported, so only a new
process can be kept off the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from model_testing import random_tokens, tiny_config

transformers = pytest.importorskip("transformers")

from lmstack.model.checkpoint import load_model_dir, save_model_dir  # noqa: E402
from lmstack.model.gpt import build_model  # noqa: E402
from lmstack.model.info import format_summary  # noqa: E402


def lmstack(*args: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmstack.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env}, cwd=cwd)


def test_import_export_info_round_trip(cli, tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tiny_tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=32)
    hf_model = transformers.LlamaForCausalLM(config).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    tiny_tokenizer.save(tmp_path / "hf" / "tokenizer.json")

    done = cli("import", "--from", "hf", tmp_path / "hf", tmp_path / "ckpt")
    assert done.returncode == 0, done.stderr
    model, tokenizer, _ = load_model_dir(tmp_path / "ckpt")
    assert tokenizer.vocab_size == tiny_tokenizer.vocab_size

    done = cli("info", tmp_path / "ckpt", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["params"] == hf_model.num_parameters()
    assert info["model"]["n_kv_head"] == 2 and info["weights_dtypes"] == ["float32"]
    assert info["tokenizer"]["chat_tokens"] is True
    assert "llama: 2 layers, 4 heads (2 kv)" in format_summary(info)  # what `lmstack info` prints without --json

    done = cli("export", "--format", "hf", tmp_path / "ckpt", tmp_path / "exported", "--dtype", "float32")
    assert done.returncode == 0, done.stderr
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    tokens = random_tokens(config.vocab_size)
    with torch.no_grad():
        assert (exported(tokens).logits - hf_model(tokens).logits).abs().max().item() < 1e-4
        assert (model(tokens)[0] - hf_model(tokens).logits).abs().max().item() < 1e-4


def test_cli_errors_are_one_line_with_exit_code_2(cli, tmp_path):
    done = cli("import", "--from", "hf", tmp_path / "missing_dir", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "is not a directory" in done.stderr
    done = cli("info", tmp_path)
    assert done.returncode == 2 and "has no config.json" in done.stderr


@pytest.mark.parametrize("src, says", [
    ("nosuchdir", "could not download 'nosuchdir' from the Hugging Face hub (the hub could not be reached), "
                  "and there is no local folder 'nosuchdir'"),
    # written like a path (a separator in it): most likely meant as a local folder
    ("models/nosuch", "local folder 'models/nosuch' does not exist (and as a hub id: the hub could not be reached)"),
])
def test_hub_ids_go_to_the_hub_and_failures_say_so_in_one_line(tmp_path, src, says):
    """No network in tests: offline mode makes the real download code fail, and the CLI must explain it."""
    (tmp_path / "models").mkdir()
    done = lmstack("import", "--from", "hf", src, "out", cwd=tmp_path,
                   env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")})
    assert done.returncode == 2
    assert says in done.stderr and "pass a directory holding config.json" in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_export_without_a_tokenizer_warns_and_says_how_to_add_one(cli, tmp_path, tiny_tokenizer):
    save_model_dir(tmp_path / "ckpt", build_model(tiny_config("llama")), None)
    done = cli("export", tmp_path / "ckpt", tmp_path / "hf")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == (f"warning: '{tmp_path}/ckpt' has no tokenizer.json, so '{tmp_path}/hf' has none: "
                                   "transformers' AutoTokenizer cannot load it (vLLM needs --tokenizer); copy the "
                                   f"tokenizer.json the model was trained with into '{tmp_path}/ckpt' and export again")
    with pytest.raises((OSError, ValueError)):
        transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    tiny_tokenizer.save(tmp_path / "ckpt" / "tokenizer.json")  # the fix the warning gives
    done = cli("export", tmp_path / "ckpt", tmp_path / "hf")
    assert done.returncode == 0 and done.stderr == ""
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf").encode("def add") == tiny_tokenizer.encode("def add")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where no file can be created")
def test_export_to_an_unwritable_path_names_it_in_one_line(cli, tmp_path):
    save_model_dir(tmp_path / "ckpt", build_model(tiny_config("llama")), None)
    done = cli("export", tmp_path / "ckpt", "/proc/lmstack-nope")
    assert done.returncode == 2
    assert done.stderr.strip() == ("lmstack export: error: cannot write '/proc/lmstack-nope': No such file or "
                                   "directory; choose a writable location")  # never the temporary's name
