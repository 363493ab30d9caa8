"""GPU check for a machine with a real NVIDIA GPU (prints one JSON line).

What the tests can only fake: NVML on a real driver. Runs ``worker.capacity``
against the real ``pynvml``, checks every field the offer gossips, and
round-trips the GPUs through the wire types. Needs only psutil, nvidia-ml-py
and msgspec, so it runs on a bare CUDA image:

    PYTHONPATH=. python3 scripts/device_check.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import msgspec

from protocol.messages import Gpu
from worker.capacity import detect_gpus, measure


def main() -> int:
    import pynvml

    gpus, note = detect_gpus()
    with tempfile.TemporaryDirectory() as tmp:
        cap = measure(Path(tmp))
    wire = [Gpu(name=g.name, memory_mb=g.memory_mb, uuid=g.uuid) for g in cap.gpus]
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(wire), type=list[Gpu])
    problems = []
    if not gpus:
        problems.append(f"no GPU found: {note}")
    for g in gpus:
        if not isinstance(g.name, str) or not g.name:
            problems.append(f"bad name {g.name!r}")
        if not g.uuid.startswith("GPU-"):
            problems.append(f"uuid {g.uuid!r} is not an NVML GPU uuid")
        if g.memory_mb < 1024:
            problems.append(f"memory {g.memory_mb} MiB is implausible")
    if back != wire:
        problems.append("GPUs do not survive the wire types")
    if cap.gpus != gpus:
        problems.append("measure() and detect_gpus() disagree")
    print(
        json.dumps(
            {
                "check": "gpu_capacity",
                "nvml_version": getattr(pynvml, "__version__", "?"),
                "note": note,
                "gpus": [msgspec.structs.asdict(g) for g in wire],
                "cpu": cap.cpu,
                "memory_mb": cap.memory_mb,
                "disk_mb": cap.disk_mb,
                "problems": problems,
                "ok": not problems,
            }
        )
    )
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
