"""What a GPU-suite part records: figures or the reason they are missing, device, versions."""

from __future__ import annotations

import argparse
import importlib.metadata
from typing import Any

from gpu_archs import PEAK_BF16_FLOPS

GIB = 2**30
PACKAGES = ["torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "pydantic"]

# -- helpers -------------------------------------------------------------------------------


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else None


def allocated_gib() -> float | None:
    import torch

    return torch.cuda.memory_allocated() / GIB if torch.cuda.is_available() else None


NO_CUDA = "no CUDA device: torch.cuda.max_memory_allocated needs a GPU"


class Report:
    """A part's figures; a figure that cannot be had here gets its reason instead."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}
        self.settings: dict[str, Any] = {}
        self.notes: list[str] = []

    def put(self, name: str, value: Any, reason: str = "") -> None:
        if value is None:
            self.unavailable[name] = reason or "not measured"
        else:
            self.figures[name] = value

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "figures": self.figures,
            "unavailable": self.unavailable,
            "notes": self.notes,
        }


def peak_bf16_flops(device_name: str, override: float | None) -> tuple[float | None, str]:
    """The peak MFU divides by, and where it came from."""
    if override:
        return override, f"--peak-flops {override:.4g}"
    for key, value in PEAK_BF16_FLOPS:
        if key in device_name:
            return value, f"{key} dense bf16 data-sheet figure {value:.4g} FLOP/s"
    return None, f"no peak bf16 figure known for {device_name!r} (pass --peak-flops)"


def device_info(args: argparse.Namespace) -> dict[str, Any]:
    """What the figures were measured on (asked in the child: the parent never inits CUDA)."""
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        # The trainer leaves it at torch's default ("highest": no TF32 for fp32 matmuls).
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            total_memory_gib=props.total_memory / GIB,
            capability=f"{props.major}.{props.minor}",
            device_count=torch.cuda.device_count(),
        )
    else:
        info["name"] = "cpu"
    peak, source = peak_bf16_flops(info["name"], args.peak_flops)
    info.update(peak_bf16_flops=peak, peak_bf16_flops_source=source)
    return info


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_params(report: Report, built: dict[str, int], published: dict[str, int]) -> None:
    """Record parameter counts; with the real configs they must equal the checkpoints'."""
    report.figures["params"] = built
    if published:
        wrong = {k: (built.get(k), v) for k, v in published.items() if built.get(k) != v}
        if wrong:
            raise RuntimeError(f"architecture differs from the published checkpoint: {wrong}")
        report.notes.append("parameter counts equal the published checkpoints'")
