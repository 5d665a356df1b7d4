"""Where and how an arm runs: device, precision (bf16 autocast or fp32) and torch.compile, resolved from
`train.device/precision/compile` (`resolve_runtime`), and the accelerator's measured peak FLOP/s (the MFU
denominator)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from training.config import ArmConfig
from training.distributed import DistInfo


@dataclass(frozen=True)
class Runtime:
    """Where and how an arm runs; resolved from `train.device/precision/compile`, recorded in MLflow."""

    device: torch.device
    precision: str  # "bf16" (autocast, fp32 master weights) or "fp32"
    compile: bool

    @property
    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def precision_and_compile(arm: ArmConfig, device_type: str) -> tuple[str, bool]:
    """What `train.precision` and `train.compile` (`auto` included) resolve to on `device_type` ("cpu" or
    "cuda"): what a run does there, also what a dry run on a CPU shows for a CUDA machine."""
    t = arm.train
    precision = t.precision if t.precision != "auto" else ("bf16" if device_type == "cuda" else "fp32")
    compile_ = (device_type == "cuda") if t.compile == "auto" else (t.compile == "on")
    return precision, compile_


def resolve_runtime(arm: ArmConfig, dist: DistInfo) -> Runtime:
    t = arm.train
    device_type = t.device if t.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda requested but torch sees no CUDA device")
    device = torch.device("cuda", dist.local_rank) if device_type == "cuda" else torch.device("cpu")
    return Runtime(device, *precision_and_compile(arm, device_type))


def measure_peak_flops(device: torch.device, n: int = 8192, repeats: int = 20) -> float | None:
    """Measured bf16 matrix-product FLOP/s of the accelerator (None on CPU): the MFU denominator."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)
