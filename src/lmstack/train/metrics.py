"""Per-step metrics to `metrics.jsonl`: one JSON object a line, `{"step": ...}` for training steps,
`{"step", "val_loss", "val_bpb"}` for evals and `{"event": ...}` for everything else.

Only rank 0 writes. On resume, lines past the resumed step are dropped, so the file always tells the
story of the weights in the checkpoint (no duplicated or orphaned steps).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from lmstack.atomic import atomic_write_text
from lmstack.run_layout import METRICS_FILE



class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / METRICS_FILE
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        else:
            self._truncate_after(resume_step)
        self.file = open(self.path, "a")

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", -1) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All whole records; a last line cut short by a crash is ignored."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def memory_mb(device: torch.device) -> float:
    """Peak memory of this process: allocated GPU memory, or the CPU process's max resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: the step's model FLOPs per second over the devices' peak (all processes together)."""
    return flops / seconds / peak_flops_per_s
