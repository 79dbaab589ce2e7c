"""Checkpoint dirs: `config.json` + `model.safetensors` + `tokenizer.json` (+ `train_state.pt` when resumable).

Every command that takes a model takes such a directory. Saving goes through `atomic_directory`, so a
crash at any instant leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lmstack.atomic import atomic_directory, recover_directory
from lmstack.config import from_dict
from lmstack.errors import LmstackError
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import GPT, build_model
from lmstack.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


class CheckpointError(LmstackError):
    """A checkpoint dir that is missing, incomplete or inconsistent; the message says which file."""


def model_state(model: GPT) -> dict[str, torch.Tensor]:
    """The weights to save: a tied lm_head is the embedding, stored once."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tied:
        state.pop("lm_head.weight", None)
    return state


def save_weights(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' save_file, with the mode a plain open() gives (0666 less the umask), as every other file of an
    output has: save_file makes its file 0600, so a model meant for a team (or a serving account) was its owner's
    alone."""
    with open(path, "wb"):
        pass
    mode = stat.S_IMODE(os.stat(path).st_mode)
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, mode)


def write_model_files(directory: Path, model: GPT, tokenizer: Tokenizer | None, config: dict[str, Any]) -> None:
    """Write the files of a checkpoint into an existing (temporary) directory."""
    full_config = {"model": asdict(model.cfg), **{k: v for k, v in config.items() if k != "model"}}
    (directory / CONFIG_FILE).write_text(json.dumps(full_config, indent=2))
    save_weights(model_state(model), directory / WEIGHTS_FILE, metadata={"format": "pt", "lmstack": "1"})
    if tokenizer is not None:
        tokenizer.hf.save(str(directory / TOKENIZER_FILE))


def save_model_dir(path: str | Path, model: GPT, tokenizer: Tokenizer | None, config: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    with atomic_directory(path) as tmp:
        write_model_files(tmp, model, tokenizer, config or {})
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    recover_directory(path)
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise CheckpointError(f"checkpoint dir '{path}' {what}; pass a directory written by "
                              "`lmstack train`, `lmstack sft` or `lmstack import`")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"'{path}' has no {CONFIG_FILE}: it is not a lmstack checkpoint dir "
                              "(for a Hugging Face model use `lmstack import --from hf`)")
    if not (path / WEIGHTS_FILE).is_file():
        # A run dir has a config.json too; the checkpoints are inside it (final/, best, ...).
        inside = sorted(str(child) for child in path.iterdir() if (child / WEIGHTS_FILE).is_file())
        if inside:
            raise CheckpointError(f"'{path}' is a run dir, not a checkpoint dir; pass one of its checkpoints: "
                                  f"{', '.join(inside)}")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"'{config_path}' is not valid JSON: {err}") from None


def damaged_weights(path: Path, err: Exception) -> CheckpointError:
    """The error for a weights file that safetensors cannot read (cut short by a full disk or a copy, or not
    safetensors at all); its first line only, as safetensors' own text says nothing about the fix."""
    reason = (str(err).splitlines() or [type(err).__name__])[0]
    return CheckpointError(f"'{path}' cannot be read ({reason}): it is truncated or not a safetensors file; "
                           "copy it again or write the checkpoint again")


def read_weights(path: str | Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a damaged file is a CheckpointError naming it."""
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as err:
        raise damaged_weights(Path(path), err) from None


def load_weights_into(model: GPT, state: dict[str, torch.Tensor], weights: Path) -> None:
    """`model.load_state_dict(state)`, with tensors of the wrong shape or name reported as a CheckpointError."""
    if model.cfg.tied and "tok_emb.weight" in state:
        state["lm_head.weight"] = state["tok_emb.weight"]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a size mismatch; the first two lines name the first tensor
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:2]).rstrip(".") or str(err)
        raise CheckpointError(f"'{weights}' does not match its config.json: {detail}; the config and the "
                              "weights come from different models") from None
    if missing or unexpected:
        raise names_mismatch(weights, missing, unexpected)


def names_mismatch(weights: Path, missing: list[str], unexpected: list[str]) -> CheckpointError:
    if any(".lora_" in name for name in unexpected):  # a checkpoint of a LoRA run, taken before the merge
        return CheckpointError(f"'{weights.parent}' is a checkpoint of a LoRA fine-tuning run, with its adapters "
                               "unmerged; load the run's final/ dir (the adapters merged in), or re-run the same "
                               "command to finish the run and write it")
    return CheckpointError(f"'{weights}' does not match its config.json: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def read_weight_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a safetensors file's header (which covers the whole file: a truncated file fails)."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except SafetensorError as err:
        raise damaged_weights(weights, err) from None


class CheckedModelDir(NamedTuple):
    """What `check_model_dir` read, for its caller to use rather than read again."""
    config: dict[str, Any]  # the whole config.json
    model: ModelConfig
    tokenizer: Tokenizer | None  # None when the dir has no tokenizer.json


def check_model_dir(path: str | Path, need_tokenizer: bool = False, check_names: bool = True) -> CheckedModelDir:
    """Find what `load_model_dir` would refuse without reading the weights: the config, the weights file's
    header (with `check_names`, its tensor names and shapes against the config) and the tokenizer. For commands
    that load the model later, in the background (`lmstack serve`), after other work has begun, or never (`info`,
    `export`, which read the weights as they are stored)."""
    path = Path(path)
    config, model_cfg, weights = _checkpoint_parts(path)
    stored = read_weight_shapes(weights)
    if check_names:
        check_weight_shapes(weights, stored, model_cfg)
    tokenizer = None
    if (path / TOKENIZER_FILE).is_file():
        tokenizer = Tokenizer.load(path / TOKENIZER_FILE)
    elif need_tokenizer:
        raise no_tokenizer(path)
    return CheckedModelDir(config, model_cfg, tokenizer)


def no_tokenizer(path: str | Path) -> CheckpointError:
    """For commands that read or write text with a checkpoint that has no tokenizer.json (a nanoGPT import)."""
    return CheckpointError(f"'{path}' has no {TOKENIZER_FILE}, which this command needs to read and write text; "
                           "copy the tokenizer.json the model was trained with into it")


def check_weight_shapes(weights: Path, stored: dict[str, tuple[int, ...]], model_cfg: ModelConfig) -> None:
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in GPT(model_cfg).state_dict().items()}
    if model_cfg.tied:
        expected.pop("lm_head.weight", None)
    for name, shape in expected.items():
        if stored.get(name, shape) != shape:
            raise CheckpointError(f"'{weights}' does not match its config.json: {name} is {list(stored[name])}, "
                                  f"the config makes it {list(shape)}; the config and the weights come from "
                                  "different models")
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise names_mismatch(weights, missing, unexpected)


def _checkpoint_parts(path: Path) -> tuple[dict[str, Any], ModelConfig, Path]:
    """(config dict, model config, weights file) of a checkpoint dir; an error when any is missing or malformed."""
    config = read_config(path)
    model_cfg = model_config_of(path, config)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"'{path}' has no {WEIGHTS_FILE}; the checkpoint is incomplete")
    return config, model_cfg, weights


def model_config_of(path: Path, config: dict[str, Any]) -> ModelConfig:
    if not isinstance(config.get("model"), dict):
        raise CheckpointError(f"'{path / CONFIG_FILE}' has no \"model\" table; it was not written by lmstack "
                              "(for a Hugging Face model use `lmstack import --from hf`)")
    return from_dict(ModelConfig, config["model"], prefix="model.")


def load_model_dir(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                   load_tokenizer: bool = True) -> tuple[GPT, Tokenizer | None, dict[str, Any]]:
    """Load a checkpoint dir -> (model in eval mode, tokenizer or None, the full config dict)."""
    path = Path(path)
    config, model_cfg, weights = _checkpoint_parts(path)
    model = build_model(model_cfg, device=device, init=False)
    load_weights_into(model, read_weights(weights, device), weights)
    model.tie_weights()
    if dtype is not None:
        model.to(dtype=dtype)
        model.reset_buffers()  # to() cast the RoPE tables too; they stay fp32
    model.eval()
    tokenizer = None
    if load_tokenizer and (path / TOKENIZER_FILE).is_file():
        tokenizer = Tokenizer.load(path / TOKENIZER_FILE)
    return model, tokenizer, config
