"""What every conversion shares: its error, the dtype choice, and writing an imported checkpoint dir.

The formats themselves live next door: `convert_hf.py` (Hugging Face import and export, names and
config fields in `hf_layout.py`) and `convert_nanogpt.py` (nanoGPT `ckpt.pt` import).
"""

from __future__ import annotations

import pickle
import shutil
import struct
from pathlib import Path
from typing import Any

import torch

from lmstack.atomic import atomic_directory, check_output_dir, refuse_to_replace
from lmstack.errors import LmstackError
from lmstack.model.checkpoint import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, write_model_files
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import GPT
from lmstack.model.hf_tokenizer import HF_TOKENIZER_FILES
from lmstack.run_layout import is_run_dir
from lmstack.tokenizer import Tokenizer, TokenizerError

# What an import (write_model_files) or an export writes: all that an earlier output may hold to be replaced.
OUTPUT_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, *HF_TOKENIZER_FILES})
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ConversionError(LmstackError):
    """A model that cannot be converted; the message names the file or setting and what would work."""


# What torch.load raises on a damaged file or one that is no torch file at all: a zip archive it cannot read
# (RuntimeError), a damaged record in one (ValueError: `.storage_alignment` that is not a number), and what its
# weights-only unpickler raises on bytes that are not a pickle: its own UnpicklingError and EOFError, a lookup in its
# memo or stack (KeyError, IndexError), text that is not UTF-8 (UnicodeDecodeError, a ValueError), a number cut
# short (struct.error).
TORCH_LOAD_ERRORS = (RuntimeError, ValueError, pickle.UnpicklingError, EOFError, LookupError, struct.error)


def torch_load_reason(err: BaseException) -> str:
    """torch.load's error in a few words: its type (which tells a bare "105" for a KeyError) and its first sentence
    (torch's own text runs over many lines)."""
    return ": ".join([type(err).__name__, *str(err).splitlines()[:1]]).split(". ")[0]


def target_dtype(requested: str, state: dict[str, torch.Tensor]) -> torch.dtype:
    """`auto` keeps the source's float dtype (a bf16 model stays bf16: half the disk of fp32)."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ConversionError(f"--dtype {requested!r} is not one of auto, {', '.join(DTYPES)}")
        return DTYPES[requested]
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    return max(set(floats), key=floats.count) if floats else torch.float32


def check_out_dir(out_dir: str | Path, source: str | Path) -> None:
    """The output dir of an import or export is replaced as a whole, so all it holds is deleted: it must be new,
    empty, or an earlier output (nothing but the files an import or export writes: a run dir has a config.json
    too) that is no model of a training run, and must neither hold the model being converted nor lie inside it."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir() and not out.is_symlink():
        raise ConversionError(f"output '{out}' is a file; pass the path of a directory to write (it is created)")
    if out.is_dir() and any(out.iterdir()) and is_run_dir(out.parent.resolve()):
        # A run's `final` holds only model files, as an earlier output does, but it is what the run trained.
        raise ConversionError(f"output '{out}' is a model of the training run '{out.parent}'; choose a new or empty "
                              "directory (the output is replaced as a whole)")
    check_apart(out, Path(source))
    # Both write config.json: a dir without one (a `tokenizer train` output) is another tool's.
    refuse_to_replace(out, OUTPUT_FILES.__contains__, "import or export", ConversionError, marker=CONFIG_FILE)
    if not out.exists():
        check_output_dir(out)  # a file above it


def check_apart(out: Path, source: Path) -> None:
    """Replacing `out` must not delete the source: refuse the source itself, a dir holding it, or one inside it.
    A source not on disk (a hub id, before its download) is never in the way."""
    if not source.exists():
        return
    out_path, source_path = out.resolve(), source.resolve()  # through links such as a run's `best`
    if out_path == source_path:
        raise ConversionError(f"output '{out}' is the model being converted; pass another directory")
    if out_path in source_path.parents:
        raise ConversionError(f"output '{out}' holds the model being converted ('{source}'); choose a new or empty "
                              "directory outside it")
    if source_path in out_path.parents:
        raise ConversionError(f"output '{out}' is inside the model being converted ('{source}'); choose a new or "
                              "empty directory outside it")


def check_tokenizer_file(path: str | Path, cfg: ModelConfig, source: Any, fix: str = "") -> Path:
    """A tokenizer.json to attach to an imported model (a file, or a dir holding one), checked by loading it, before
    the weights are read; `fix` is added to the error. One with more tokens than the model has embeddings makes ids
    the model cannot read: `sample` would fail on the first one, long after the import said it was done."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    try:
        tokens = Tokenizer.load(path).vocab_size  # a TokenizerError names the file if it is missing or malformed
    except TokenizerError as err:
        raise TokenizerError(f"{err}; {fix}" if fix else str(err)) from None
    if tokens > cfg.vocab_size:
        raise ConversionError(f"the tokenizer '{path}' has {tokens} tokens but the model {source} has "
                              f"vocab_size={cfg.vocab_size}; pass the tokenizer the model was trained with "
                              "(--tokenizer FILE)")
    return path


def write_imported_checkpoint(out_dir: str | Path, cfg: ModelConfig, state: dict[str, torch.Tensor],
                              tokenizer_file: Path | None, imported_from: dict[str, Any],
                              dtype: str = "auto") -> Path:
    """Check `state` (our names) against `cfg` and write a lmstack checkpoint dir, atomically.

    The model is built on the meta device and the tensors are assigned into it, not copied: importing
    a model needs one copy of its weights in memory, not two. The tokenizer file is copied byte for byte.
    """
    cast_to = target_dtype(dtype, state)
    state = {name: t.to(cast_to) if t.is_floating_point() else t for name, t in state.items()}
    with torch.device("meta"):
        model = GPT(cfg)
    if cfg.tied:
        state["lm_head.weight"] = state["tok_emb.weight"]
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ConversionError(f"the weights of {imported_from.get('path')} do not fit the model its config "
                              f"describes: {err}") from None
    model.tie_weights()
    with atomic_directory(out_dir) as tmp:
        write_model_files(tmp, model, None, {"imported_from": imported_from})
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, tmp / TOKENIZER_FILE)
    return Path(out_dir)
