"""What produced a run: the code version (git sha, dirty flag) and the environment (torch, device).

Written at the top of every run log, so any curve can be traced back to the code and machine behind it.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch, which device.py imports, is imported when needed: `eval run` against a URL never needs it
    from lmstack.device import DeviceInfo


def code_version() -> dict[str, Any]:
    """git sha and dirty flag of the checkout lmstack is imported from ('unknown' outside git)."""
    source = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        return {"git_sha": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "unknown", "git_dirty": None}


def environment(device: DeviceInfo, world_size: int) -> dict[str, Any]:
    import torch

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "rocm": torch.version.hip,
        "device": device.type,
        "device_name": device.name,
        "world_size": world_size,
        "threads": torch.get_num_threads(),
        "host": platform.node(),
    }
