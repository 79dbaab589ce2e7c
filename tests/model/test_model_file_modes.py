"""A model's files get the modes a plain open() and mkdir give (0666 / 0777 less the umask), as every other output
does: safetensors wrote model.safetensors 0600 whatever the umask, so a model meant for a team, or for a separate
serving account, could be read by its owner alone."""

from __future__ import annotations

import os
import stat

from model_testing import tiny_config

from lmstack.model.checkpoint import save_model_dir
from lmstack.model.convert_hf import export_hf
from lmstack.model.gpt import build_model


def test_checkpoint_and_export_files_follow_the_umask(tmp_path):
    previous = os.umask(0o027)  # an unusual one, so that no default passes by chance
    try:
        save_model_dir(tmp_path / "ckpt", build_model(tiny_config("llama"), seed=0), None)
        export_hf(tmp_path / "ckpt", tmp_path / "hf")
    finally:
        os.umask(previous)
    for folder in ("ckpt", "hf"):
        modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in (tmp_path / folder).iterdir()}
        assert modes and set(modes.values()) == {"0o640"}, modes
        assert oct(stat.S_IMODE((tmp_path / folder).stat().st_mode)) == "0o750"
