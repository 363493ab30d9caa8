"""What this machine can sell: cores, memory, free disk, GPUs.

GPU detection goes through NVML (``nvidia-ml-py``). With no driver NVML raises
at once; the node then offers no GPUs and says so. ``nvml`` is injectable so
tests run a fake on machines without a GPU.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("maskd.worker")


@dataclass(frozen=True, slots=True)
class GpuInfo:
    name: str
    memory_mb: int
    uuid: str


@dataclass(frozen=True, slots=True)
class Capacity:
    cpu: int
    memory_mb: int
    disk_mb: int
    gpus: tuple[GpuInfo, ...]


def detect_gpus(nvml: Any = None) -> tuple[tuple[GpuInfo, ...], str]:
    """The GPUs NVML reports, and a one-line note for the log."""
    if nvml is None:
        try:
            import pynvml as nvml  # nvidia-ml-py
        except ImportError:
            return (), "no GPU: nvidia-ml-py is not installed"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, …
        return (), f"no GPU: NVML unavailable ({type(exc).__name__})"
    try:
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode()
            uuid = nvml.nvmlDeviceGetUUID(handle)
            if isinstance(uuid, bytes):
                uuid = uuid.decode()
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(GpuInfo(name=name, memory_mb=int(mem.total) // (1 << 20), uuid=uuid))
        return tuple(gpus), f"{len(gpus)} GPU(s) found through NVML"
    except Exception as exc:
        return (), f"no GPU: NVML query failed ({type(exc).__name__}: {exc})"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def measure(
    data_dir: Path,
    *,
    cpu: int = 0,
    memory_mb: int = 0,
    disk_mb: int = 0,
    gpus: bool = True,
    nvml: Any = None,
) -> Capacity:
    """Measure free capacity; a non-zero configured figure caps the measured one."""
    import psutil

    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    mem = psutil.virtual_memory().available // (1 << 20)
    disk = shutil.disk_usage(data_dir).free // (1 << 20)
    found: tuple[GpuInfo, ...] = ()
    if gpus:
        found, note = detect_gpus(nvml)
        log.debug(note)
    return Capacity(
        cpu=min(cpu, cores) if cpu else cores,
        memory_mb=min(memory_mb, mem) if memory_mb else mem,
        disk_mb=min(disk_mb, disk) if disk_mb else disk,
        gpus=found,
    )
