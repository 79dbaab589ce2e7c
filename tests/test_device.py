"""Device layer on CPU: detection, dtype choice, the peak-FLOPs table, and torch.distributed on gloo."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lmstack.device import (DeviceError, DeviceInfo, DistInfo, autocast_dtype, detect_device, device_for_rank,
                            inference_dtype, init_distributed, measured_cpu_flops, peak_flops)
from lmstack.errors import LmstackError

CPU = DeviceInfo("cpu", "test cpu", False, False)
CPU_BF16 = DeviceInfo("cpu", "test cpu", False, True)
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-80GB", False, True)
V100 = DeviceInfo("cuda", "Tesla V100-SXM2-16GB", False, False)
MPS = DeviceInfo("mps", "Apple MPS", False, True)


def test_detects_cpu_here():
    info = detect_device("cpu")
    assert info.type == "cpu" and info.torch_device == torch.device("cpu") and not info.is_rocm
    assert info.name
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert detect_device("auto").type == "cpu"


def test_bad_or_missing_devices_are_user_errors():
    with pytest.raises(DeviceError, match="'tpu' is not one of"):
        detect_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LmstackError, match="device=cpu"):
            detect_device("cuda")


def test_training_autocast_dtype():
    assert autocast_dtype(CPU) is None  # fp32 on CPU unless asked
    assert autocast_dtype(A100) is torch.bfloat16
    assert autocast_dtype(V100) is torch.float16  # no bf16 on Volta
    assert autocast_dtype(MPS) is torch.bfloat16
    assert autocast_dtype(A100, "float32") is None
    assert autocast_dtype(CPU, "bfloat16") is torch.bfloat16
    with pytest.raises(DeviceError, match="'fp8' is not one of"):
        autocast_dtype(CPU, "fp8")


def test_inference_dtype():
    assert inference_dtype(CPU) is torch.float32
    assert inference_dtype(CPU_BF16) is torch.bfloat16
    assert inference_dtype(A100) is torch.bfloat16
    assert inference_dtype(A100, "float16") is torch.float16
    # vLLM's and PyTorch's other names, and torch dtypes themselves (EngineConfig(dtype=torch.float32))
    assert [inference_dtype(CPU, name) for name in ("half", "fp16", "float", "fp32", "bf16")] == [
        torch.float16, torch.float16, torch.float32, torch.float32, torch.bfloat16]
    assert inference_dtype(CPU, torch.float32) is torch.float32
    with pytest.raises(DeviceError, match="'double' is not one of auto, float32, bfloat16, float16 .*half"):
        inference_dtype(CPU, "double")


@pytest.mark.parametrize("name, flops", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),  # listed before the plain "H100" (SXM) entry
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-40GB", 312e12),
    ("NVIDIA A10G", 125e12),
    ("NVIDIA L40S", 362e12),
    ("NVIDIA L4", 121e12),
    ("AMD Instinct MI300X", 1307e12),
    ("AMD Instinct MI250X", 383e12),
    ("NVIDIA GeForce RTX 4090", 165e12),
])
def test_peak_flops_table_lookup_by_name(name, flops):
    gpu = DeviceInfo("cuda", name, "AMD" in name, True)
    assert peak_flops(gpu, torch.bfloat16) == flops
    assert peak_flops(gpu, torch.float16) == flops
    assert peak_flops(gpu, torch.float32) == flops / 2  # TF32 runs at half the bf16 rate


def test_unknown_accelerators_report_nan_rather_than_a_guess():
    assert math.isnan(peak_flops(DeviceInfo("cuda", "Some Future GPU", False, True)))
    assert math.isnan(peak_flops(MPS))


def test_cpu_flops_are_measured():
    small = measured_cpu_flops(n=128, repeats=2)
    assert math.isfinite(small) and small > 1e7  # any CPU of this century does 10 MFLOP/s
    assert peak_flops(CPU) > 1e7


def test_without_torchrun_environment_it_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    dist = init_distributed(CPU)
    assert dist == DistInfo(0, 0, 1) and dist.is_main
    assert device_for_rank(CPU, dist) == torch.device("cpu")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed(CPU) == DistInfo(0, 0, 1)
    assert not torch.distributed.is_initialized()


WORKER = """
import json, pathlib, sys
import torch
import torch.distributed as dist
from lmstack.device import detect_device, init_distributed

info = detect_device("cpu")
rank = init_distributed(info)
total = torch.tensor([float(rank.rank + 1)])
dist.all_reduce(total)
ranks = [None] * rank.world_size
dist.all_gather_object(ranks, rank.rank)
# One file per rank: the two processes share one stdout, where their lines can interleave.
report = {"rank": rank.rank, "local_rank": rank.local_rank, "world": rank.world_size,
          "main": rank.is_main, "sum": total.item(), "ranks": ranks, "backend": dist.get_backend()}
pathlib.Path(sys.argv[1], f"rank{rank.rank}.json").write_text(json.dumps(report))
dist.destroy_process_group()
"""


def test_two_processes_under_torchrun_use_gloo(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tmp_path)],
        capture_output=True, text=True, timeout=180, env={**_clean_env(), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(r["rank"], r["local_rank"], r["world"], r["main"]) for r in reports] == [(0, 0, 2, True), (1, 1, 2, False)]
    assert all(r["sum"] == 3.0 and r["ranks"] == [0, 1] and r["backend"] == "gloo" for r in reports)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
