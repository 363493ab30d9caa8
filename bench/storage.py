"""Storage benchmark: UnixFS import throughput against `sha256sum` of the same file.

Prints one JSON line per measurement. For each size a file is generated in a
temp dir from a seeded PRNG; then, on the same (page-cached) file, we time
`sha256sum` (the physical floor: one read and one sha-256 pass), the importer
alone into a counting sink, and the importer into a fresh block store (with
and without fsync per block). Target: import within 2x of sha256sum.

    python bench/storage.py --sizes 1MB,100MB,1GB
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.blockstore import BlockStore  # noqa: E402
from storage.unixfs import import_file  # noqa: E402

UNITS = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def parse_size(text: str) -> int:
    text = text.strip().upper()
    for unit, factor in UNITS.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def make_file(path: Path, size: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(rng.randbytes(n))
            left -= n


class CountingSink:
    def __init__(self) -> None:
        self.blocks = 0
        self.bytes = 0

    def __call__(self, cid: str, data: bytes) -> None:
        self.blocks += 1
        self.bytes += len(data)


def hashlib_file(path: Path) -> bytes:
    """Python's own floor: the same OpenSSL sha-256 the importer uses, 1 MiB reads."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(repeat: int, fn, before=None) -> tuple[float, object]:
    best: tuple[float, object] | None = None
    for _ in range(repeat):
        if before:
            before()
        t = timed(fn)
        if best is None or t[0] < best[0]:
            best = t
    assert best is not None
    return best


def emit(**fields) -> None:
    print(json.dumps({"bench": "storage", **fields}), flush=True)


def run(size: int, workdir: Path, repeat: int) -> None:
    path = workdir / f"input-{size}.bin"
    make_file(path, size)
    sha_s, out = best_of(
        repeat, lambda: subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
    )
    mb = size / 1e6
    common = {"size_bytes": size, "sha256sum_s": round(sha_s, 4)}
    emit(op="sha256sum", seconds=round(sha_s, 4), mb_per_s=round(mb / sha_s, 1), **common)

    t, _ = best_of(repeat, lambda: hashlib_file(path))
    emit(
        op="hashlib_sha256",
        seconds=round(t, 4),
        mb_per_s=round(mb / t, 1),
        ratio_vs_sha256sum=round(t / sha_s, 2),
        **common,
    )

    t, result = best_of(repeat, lambda: import_file(path, CountingSink()))
    emit(
        op="import_counting_sink",
        cid=result.cid,
        seconds=round(t, 4),
        mb_per_s=round(mb / t, 1),
        ratio_vs_sha256sum=round(t / sha_s, 2),
        **common,
    )

    store_dir = workdir / "blocks"

    def fresh_store() -> None:
        shutil.rmtree(store_dir, ignore_errors=True)

    for fsync in (True, False):
        t, result = best_of(
            repeat,
            lambda fsync=fsync: BlockStore(store_dir, fsync=fsync).add_path(path),
            fresh_store,
        )
        emit(
            op="import_blockstore" + ("" if fsync else "_nofsync"),
            cid=result.cid,
            blocks=result.blocks,
            seconds=round(t, 4),
            mb_per_s=round(mb / t, 1),
            ratio_vs_sha256sum=round(t / sha_s, 2),
            **common,
        )
    fresh_store()
    path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1MB,100MB", help="comma list, e.g. 1MB,100MB,1GB")
    parser.add_argument(
        "--repeat", type=int, default=0, help="runs per op (0: 3 below 1 GB, else 1)"
    )
    parser.add_argument("--dir", default=None, help="work dir (default: a temp dir)")
    args = parser.parse_args()
    emit(op="machine", python=platform.python_version(), cpus=os.cpu_count())
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="maskd-bench-") as tmp:
        for text in args.sizes.split(","):
            size = parse_size(text)
            repeat = args.repeat or (3 if size < UNITS["GB"] else 1)
            run(size, Path(tmp), repeat)


if __name__ == "__main__":
    main()
