"""Device detection (cuda incl. ROCm, mps, cpu), dtype choice, peak FLOPs, torch.distributed init."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lmstack.errors import LmstackError

# Dense bf16 tensor-core peak FLOP/s (no sparsity), from the vendors' data sheets. Matched by substring
# of torch.cuda.get_device_name(); the first match wins, so more specific names come first.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("V100", 125e12),  # fp16 tensor cores (no bf16 on Volta)
    ("MI300X", 1307e12),
    ("MI300A", 981e12),
    ("MI250X", 383e12),
    ("MI250", 362e12),
    ("MI210", 181e12),
    ("RTX 5090", 209e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("RTX 4080", 97e12),
    ("RTX 3080", 59e12),
]


class DeviceError(LmstackError):
    """A device or dtype setting this machine cannot honour; the message says what to set instead."""


@dataclass(frozen=True)
class DeviceInfo:
    type: str  # "cuda", "mps" or "cpu"; ROCm reports "cuda" through HIP
    name: str
    is_rocm: bool
    supports_bf16: bool

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.type)


def detect_device(preference: str = "auto", cpu_hint: str = "--set device=cpu") -> DeviceInfo:
    """Pick the best available device, or check that the requested one exists. `cpu_hint` is how the caller's
    user asks for the CPU instead (its commands spell the setting differently), for the error's fix."""
    if preference not in ("auto", "cuda", "mps", "cpu"):
        raise DeviceError(f"device '{preference}' is not one of auto, cuda, mps, cpu")
    kind = preference
    if kind == "auto":
        if torch.cuda.is_available():
            kind = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            kind = "mps"
        else:
            kind = "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device 'cuda' was requested but no CUDA/ROCm GPU is visible; use {cpu_hint}")
        name = torch.cuda.get_device_name()
        return DeviceInfo("cuda", name, torch.version.hip is not None, torch.cuda.is_bf16_supported())
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"device 'mps' was requested but MPS is not available; use {cpu_hint}")
        return DeviceInfo("mps", "Apple MPS", False, True)
    return DeviceInfo("cpu", _cpu_name(), False, _cpu_has_bf16())


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "cpu"


@functools.cache
def onednn_fp32_faster() -> bool:
    """Whether the model's fp32 matmuls go through oneDNN rather than MKL (lmstack.model.onednn_linear): on AMD CPUs
    with AVX-512, where MKL takes a generic path and oneDNN its AVX-512 kernels, twice as fast. On Intel, MKL has
    AVX-512 kernels of its own, so it stays (not measured there). A fixed rule, not a timing: the choice must not
    change between the runs that a resumed training run has to reproduce bit for bit."""
    return ("AuthenticAMD" in _cpuinfo() and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.backends.cpu.get_cpu_capability().startswith("AVX512"))


@functools.cache
def onednn_bf16() -> bool:
    """oneDNN has bf16 kernels on this CPU (the engine's prepacked Linears need them)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@functools.cache
def cpu_amx() -> bool:
    """The CPU has AMX tiles (Intel Xeon from Sapphire Rapids on) and the OS lets this process use them, as inductor's
    C++ GEMMs do for bf16 and int8 (the same two checks as inductor's)."""
    return (getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
            and getattr(torch.cpu, "_init_amx", lambda: False)())


def _cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 math (AVX512-BF16 / AMX on x86, BF16 on Arm)."""
    return any(flag in _cpuinfo() for flag in (" avx512_bf16", " amx_bf16", " bf16"))


@functools.cache
def last_level_cache_bytes() -> int | None:
    """Size of the CPU's largest cache (Linux sysfs, e.g. L3 "32768K"); None where it does not say."""
    sizes = []
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if size[:-1].isdigit() and size[-1] in units:
            sizes.append(int(size[:-1]) * units[size[-1]])
    return max(sizes, default=None)


def available_memory_bytes() -> int | None:
    """Memory the OS can hand out now (Linux's MemAvailable); None where it does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def autocast_context(device_type: str,
                     amp_dtype: torch.dtype | None) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the training step's autocast context (a no-op one when amp_dtype is None: fp32)."""
    if amp_dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type, dtype=amp_dtype)


def autocast_dtype(info: DeviceInfo, requested: str = "auto") -> torch.dtype | None:
    """The autocast dtype for training: bf16 on GPUs that support it, fp32 (None) on CPU unless asked."""
    if requested == "float32":
        return None
    if requested == "bfloat16":
        return torch.bfloat16
    if requested == "float16":
        return torch.float16
    if requested != "auto":
        raise DeviceError(f"dtype '{requested}' is not one of auto, float32, bfloat16, float16")
    if info.type == "cuda":
        return torch.bfloat16 if info.supports_bf16 else torch.float16
    if info.type == "mps":
        return torch.bfloat16
    return None


# The other names vLLM's --dtype and PyTorch give the same types.
DTYPE_ALIASES = {"float": "float32", "fp32": "float32", "half": "float16", "fp16": "float16", "bf16": "bfloat16"}


def inference_dtype(info: DeviceInfo, requested: str | torch.dtype = "auto") -> torch.dtype:
    """Weights dtype for inference: bf16 on GPUs and on CPUs with native bf16, else fp32."""
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if isinstance(requested, torch.dtype) and requested in choices.values():  # EngineConfig(dtype=torch.float32)
        return requested
    if requested != "auto":
        dtype = choices.get(DTYPE_ALIASES.get(requested, requested))
        if dtype is None:
            raise DeviceError(f"dtype '{requested}' is not one of auto, {', '.join(choices)} (or vLLM's and PyTorch's "
                              f"names for them: {', '.join(DTYPE_ALIASES)})")
        return dtype
    return torch.bfloat16 if info.supports_bf16 else torch.float32


def peak_flops(info: DeviceInfo, dtype: torch.dtype | None = torch.bfloat16) -> float:
    """Peak FLOP/s of the device for MFU. GPUs from the table; a CPU is measured once by a matmul."""
    if info.type == "cuda":
        for key, flops in PEAK_BF16_FLOPS:
            if key in info.name:
                return flops if dtype in (torch.bfloat16, torch.float16) else flops / 2
        return float("nan")  # unknown card: MFU is reported as nan rather than guessed
    if info.type == "cpu":
        return measured_cpu_flops(dtype or torch.float32)
    return float("nan")


@functools.lru_cache(maxsize=4)
def measured_cpu_flops(dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 5) -> float:
    """Achievable matmul FLOP/s in `dtype` on this CPU (best of a few runs): the CPU's practical peak.

    In fp32 where the model's layers use oneDNN (`onednn_fp32_faster`), its matmul: there twice MKL's.
    """
    # Imported here: the model layer sits above this module. Its matmul takes the model's own route (oneDNN or not).
    from lmstack.model.onednn_linear import matmul_nt

    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)

    def matmul():
        return matmul_nt(a, b)
    matmul()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(info: DeviceInfo) -> DistInfo:
    """Initialise torch.distributed from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

    NCCL on NVIDIA, RCCL on ROCm (torch names both "nccl"), gloo on CPU. Without torchrun's variables
    this is a single process and nothing is initialised.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(0, 0, 1)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if world == 1:
        return DistInfo(0, 0, 1)
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if info.type == "cuda" else "gloo"
        if info.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, local, world)


def device_for_rank(info: DeviceInfo, dist_info: DistInfo) -> torch.device:
    if info.type == "cuda":
        return torch.device("cuda", dist_info.local_rank)
    return info.torch_device
