"""nanoGPT `ckpt.pt` -> lmstack checkpoint dir: `lmstack import --from nanogpt`.

nanoGPT's model is GPT-2 with GPT-2's names, but its layers are nn.Linear (not HF's transposed
Conv1D), its GELU is the exact erf one, biases are optional (`bias` in `model_args`), and a model
trained with torch.compile saves every name behind an `_orig_mod.` prefix.
A nanoGPT checkpoint holds no tokenizer (nanoGPT uses tiktoken's GPT-2 encoding); pass `--tokenizer`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from lmstack.model.config import ModelConfig
from lmstack.model.convert import (TORCH_LOAD_ERRORS, ConversionError, check_out_dir, check_tokenizer_file,
                                  torch_load_reason, write_imported_checkpoint)
from lmstack.model.hf_layout import gpt2_tensor_maps, rename_to_ours

COMPILE_PREFIX = "_orig_mod."


def import_nanogpt(src: str | Path, out_dir: str | Path, dtype: str = "auto",
                   tokenizer: str | Path | None = None) -> Path:
    src = Path(src)
    if src.is_dir():
        src = src / "ckpt.pt"
    check_out_dir(out_dir, src)
    checkpoint = read_nanogpt_checkpoint(src)
    cfg = model_config_from_nanogpt(checkpoint["model_args"], src)
    tokenizer_file = check_tokenizer_file(tokenizer, cfg, src) if tokenizer is not None else None
    theirs = {k.removeprefix(COMPILE_PREFIX): v for k, v in checkpoint["model"].items()}
    # nanoGPT ties lm_head to wte, and torch.save keeps both names for the one tensor.
    state = rename_to_ours(theirs, gpt2_tensor_maps(cfg, conv1d=False), str(src), ignored=("lm_head.weight",))
    return write_imported_checkpoint(out_dir, cfg, state, tokenizer_file, {"format": "nanogpt", "path": str(src)},
                                     dtype)


def read_nanogpt_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"'{path}' does not exist; pass nanoGPT's ckpt.pt (or the out_dir holding it)")
    try:
        with warnings.catch_warnings():
            # torch warns of any pickle protocol past 2, which nanoGPT's torch.save never writes: two lines of noise
            # before the one that refuses such a file
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            # weights_only: unpickling a downloaded file must not be able to run code
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as err:
        raise ConversionError(f"'{path}' is not a readable nanoGPT checkpoint ({torch_load_reason(err)}); pass the "
                              "ckpt.pt that "
                              "nanoGPT's train.py wrote") from None
    if not isinstance(checkpoint, dict) or not {"model", "model_args"} <= checkpoint.keys():
        raise ConversionError(f"'{path}' lacks nanoGPT's 'model' and 'model_args' entries; it was not "
                              "written by nanoGPT's train.py")
    return checkpoint


def model_config_from_nanogpt(args: dict, source: Path) -> ModelConfig:
    try:
        cfg = ModelConfig(arch="gpt2", vocab_size=args["vocab_size"], block_size=args["block_size"],
                          n_layer=args["n_layer"], n_head=args["n_head"], n_embd=args["n_embd"],
                          bias=bool(args.get("bias", True)), dropout=float(args.get("dropout", 0.0)),
                          tie_embeddings=True, gelu="exact")
    except KeyError as err:
        raise ConversionError(f"'{source}': model_args lacks {err}") from None
    cfg.validate()
    return cfg
