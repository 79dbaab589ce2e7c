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
from lmstack.model.gpt import GPT

METRICS_FILE = "metrics.jsonl"


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


def pass_flops_per_token(model: GPT, seq_len: int, backward: bool = True) -> float:
    """Model FLOPs per token of rows `seq_len` long, forward and backward: 6N plus attention (PaLM, App. B).

    A forward alone is a third of that. The backward's weight gradients (2N of the 6N) are computed only for
    the weights that train, so a LoRA step counts about 4N: counting 6N made a LoRA run's MFU look a third
    better than it was. Embeddings are lookups (no FLOPs), unless tied to the output layer's matmul.
    """
    full = model.flops_per_token(seq_len)
    if not backward:
        return full / 3
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    lookups = [model.pos_emb] + ([] if model.cfg.tied else [model.tok_emb])
    frozen -= sum(e.weight.numel() for e in lookups if e is not None and not e.weight.requires_grad)
    return full - 2 * frozen


def scored_rows_flops(model: GPT, inputs: torch.Tensor, reference_pass: bool) -> float:
    """Model FLOPs of a step over padded rows (DPO's pairs, GRPO's samples): the policy's forward and backward
    over every position computed, padding included, plus the reference model's forward when it runs."""
    rows, length = inputs.shape
    per_token = pass_flops_per_token(model, length)
    if reference_pass:
        per_token += pass_flops_per_token(model, length, backward=False)
    return rows * length * per_token
