"""Hugging Face checkpoints in and out: `lmstack import --from hf` and `lmstack export --format hf`.

Import reads config.json and the safetensors (or pytorch_model.bin) weights of a local directory,
or downloads them from the hub; export writes config.json + model.safetensors + tokenizer files
that `transformers`, vLLM and llama.cpp's converter load. Neither direction needs `transformers`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lmstack.atomic import atomic_directory
from lmstack.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, check_model_dir, read_weights, save_weights
from lmstack.model.config import ModelConfig
from lmstack.model.convert import (TORCH_LOAD_ERRORS, ConversionError, check_out_dir, check_tokenizer_file,
                                  target_dtype, torch_load_reason, write_imported_checkpoint)
from lmstack.model.hf_layout import (hf_config_from_model, hf_tensor_maps, model_config_from_hf, rename_to_ours,
                                     rename_to_theirs, zero_gpt2_biases)
from lmstack.model.hf_tokenizer import write_tokenizer_files

HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
             "tokenizer_config.json", "generation_config.json"]


# ---- import -----------------------------------------------------------------------------------------

def import_hf(src: str, out_dir: str | Path, dtype: str = "auto", tokenizer: str | Path | None = None) -> Path:
    """A HF GPT-2 / Llama / Qwen3 directory (or hub id) -> a lmstack checkpoint dir."""
    check_out_dir(out_dir, Path(src).expanduser())  # before a download (a hub id's snapshot is never in the way)
    source = resolve_source(src)
    hf_config = read_hf_config(source)
    cfg = model_config_from_hf(hf_config, str(source))
    if tokenizer is not None:  # checked before the weights, the slow part, are read
        tokenizer_file = check_tokenizer_file(tokenizer, cfg, source)
    elif (source / "tokenizer.json").is_file():  # copied byte for byte, so it is checked first
        tokenizer_file = check_tokenizer_file(source / "tokenizer.json", cfg, source,
                                              fix="pass a valid one with --tokenizer FILE")
    else:
        tokenizer_file = None
    theirs = normalise_names(read_hf_weights(source), cfg)
    state = rename_to_ours(theirs, hf_tensor_maps(cfg), str(source),
                           ignored=("lm_head.weight",) if cfg.tied else ())
    architecture = (hf_config.get("architectures") or [hf_config["model_type"]])[0]
    return write_imported_checkpoint(out_dir, cfg, state, tokenizer_file,
                                     {"format": "hf", "path": str(src), "architecture": architecture}, dtype)


def resolve_source(src: str) -> Path:
    """A local directory as is; anything else that looks like `org/name` is fetched from the hub."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.exists() or src.startswith((".", "/", "~")) or src.count("/") > 1:
        raise ConversionError(f"'{src}' is not a directory; pass a directory holding config.json and "
                              "model.safetensors, or a hub id such as openai-community/gpt2")
    from huggingface_hub import snapshot_download  # only the hub path needs it

    try:
        local = Path(snapshot_download(repo_id=src, allow_patterns=HUB_FILES))
        if not any(local.glob("*.safetensors")):  # older repos ship only pytorch_model.bin
            local = Path(snapshot_download(repo_id=src, allow_patterns=HUB_FILES + ["pytorch_model*.bin*"]))
    except Exception as err:  # the hub raises many types (offline, not found, gated, bad id); one line for each
        raise ConversionError(hub_failure(src, err)) from None
    return local


def hub_failure(src: str, err: Exception) -> str:
    """One line for a failed download. When the hub is out of reach or has no such id, an argument written
    like a path was most likely meant as a local folder, so that is what the line says first."""
    from huggingface_hub.utils import LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    fix = "pass a directory holding config.json and model.safetensors, or a hub id such as openai-community/gpt2"
    if isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        reason = "the hub could not be reached"
    elif isinstance(err, RepositoryNotFoundError):
        reason = "the hub has no such model, or it is private or gated"
    else:  # huggingface_hub's messages run over several lines; the first says what happened
        return (f"could not download '{src}' from the Hugging Face hub ({type(err).__name__}: "
                f"{(str(err).splitlines() or [''])[0]}); {fix}")
    if any(sep in src for sep in (os.sep, os.altsep) if sep):
        return f"local folder '{src}' does not exist (and as a hub id: {reason}); {fix}"
    return (f"could not download '{src}' from the Hugging Face hub ({reason}), and there is no local folder "
            f"'{src}'; {fix}")


def read_hf_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise ConversionError(f"'{directory}' has no config.json; it is not a Hugging Face model directory")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"'{path}' is not valid JSON: {err}") from None
    if isinstance(config.get("model"), dict) and "model_type" not in config:  # our config.json, not HF's
        raise ConversionError(f"'{directory}' is already an lmstack checkpoint dir: no import needed; pass it as "
                              f"is (e.g. `lmstack sample {directory}`, `lmstack export --format hf {directory} OUT`)")
    return config


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF model dir: one or sharded safetensors, else one or sharded pytorch_model.bin."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (directory / index).is_file():
            files = sorted(set(json.loads((directory / index).read_text())["weight_map"].values()))
        elif (directory / single).is_file():
            files = [single]
        else:
            continue
        state: dict[str, torch.Tensor] = {}
        for name in tqdm(files, desc="reading weights", unit="file", disable=len(files) < 2):
            if name.endswith(".safetensors"):
                state.update(read_weights(directory / name))
            else:
                state.update(read_torch_weights(directory / name))
        return state
    raise ConversionError(f"'{directory}' has no model.safetensors or pytorch_model.bin (nor a sharded index)")


def read_torch_weights(path: Path) -> dict[str, torch.Tensor]:
    try:  # weights_only: a checkpoint from the internet must not run code when unpickled
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except TORCH_LOAD_ERRORS as err:
        raise ConversionError(f"'{path}' cannot be read ({torch_load_reason(err)}): it is truncated or not a PyTorch "
                              "weights file; download it again") from None


def normalise_names(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Base-model checkpoints (GPT2Model, LlamaModel) omit the `transformer.` / `model.` prefix."""
    prefix = "transformer." if cfg.arch == "gpt2" else "model."
    return {k if k.startswith(prefix) or k == "lm_head.weight" else prefix + k: v for k, v in state.items()}


# ---- export -----------------------------------------------------------------------------------------

def export_hf(ckpt: str | Path, out_dir: str | Path, dtype: str = "auto") -> Path:
    """A lmstack checkpoint dir -> a HF model dir (config.json, model.safetensors, tokenizer files)."""
    ckpt = Path(ckpt)
    # What `sample` refuses, export refuses too: weights that do not fit config.json (the HF dir would not load, or
    # the rename would fail), and a LoRA run's unmerged checkpoint (its base weights alone are not what it trained).
    _, cfg, tokenizer = check_model_dir(ckpt)
    check_out_dir(out_dir, ckpt)
    ours = read_weights(ckpt / WEIGHTS_FILE)
    cast_to = target_dtype(dtype, ours)
    theirs = rename_to_theirs({k: v.to(cast_to) for k, v in ours.items()}, hf_tensor_maps(cfg))
    if cfg.arch == "gpt2":
        zero_gpt2_biases(theirs)
    with atomic_directory(out_dir) as tmp:
        token_ids = write_tokenizer_files(tmp, tokenizer, cfg.block_size) if tokenizer else {}
        hf_config = hf_config_from_model(cfg, cast_to, token_ids)
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        save_weights(theirs, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
    return Path(out_dir)
