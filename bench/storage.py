"""Storage benchmark: import throughput, and peer-to-peer transfer between two maskds.

Prints one JSON line per measurement. For each size a file is generated in a
temp dir from a seeded PRNG; then, on the same (page-cached) file, we time
`sha256sum` (the physical floor: one read and one sha-256 pass), the importer
alone into a counting sink, and the importer into a fresh block store (with
and without fsync per block). Target: import within 2x of sha256sum.

Transfer (``--transfer-sizes``): two real maskd processes on 127.0.0.1 (the
devnet config); the file is put on one and fetched with ``v1.storage.get`` by
the other. We report the fetch alone (blocks over /mask/blocks/1, re-hashed and
stored with fsync) and the whole get (fetch plus writing the file out), and in
the same run a raw TCP copy of the same bytes over loopback into a file (the
floor for moving the bytes at all). Target: transfer >= 100 MB/s.

    python bench/storage.py --sizes 1MB,100MB,1GB --transfer-sizes 100MB,1GB
"""

from __future__ import annotations

import argparse
import hashlib
import io
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


def raw_tcp_copy(path: Path, dest: Path) -> float:
    """Seconds to send ``path`` over a loopback TCP socket into ``dest`` (sendfile)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def send() -> None:
        conn, _ = server.accept()
        with conn, open(path, "rb") as f:
            conn.sendfile(f)

    sender = threading.Thread(target=send)
    sender.start()
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock, open(dest, "wb") as out:
        while chunk := sock.recv(1 << 20):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - start
    sender.join()
    server.close()
    return elapsed


def run_transfer(sizes: list[int], workdir: Path) -> None:
    from maskd.devnet import start_devnet

    nodes = start_devnet(2, workdir / "net", timeout=90)
    try:
        a, b = nodes
        for size in sizes:
            path = workdir / f"xfer-{size}.bin"
            make_file(path, size, seed=2)
            mb = size / 1e6
            t, _ = timed(lambda path=path: raw_tcp_copy(path, workdir / "tcp.out"))
            (workdir / "tcp.out").unlink()
            emit(op="raw_tcp_copy", size_bytes=size, seconds=round(t, 4), mb_per_s=round(mb / t, 1))
            put = a.call("v1.storage.put", {"path": str(path)}, timeout=3600)
            dest = workdir / f"got-{size}.bin"
            params = {"cid": put["cid"], "dest": str(dest)}
            t, got = timed(lambda params=params: b.call("v1.storage.get", params, timeout=3600))
            same = _same_file(path, dest)
            emit(
                op="p2p_fetch",
                size_bytes=size,
                blocks=got["fetched_blocks"],
                seconds=got["fetch_s"],
                mb_per_s=round(mb / got["fetch_s"], 1),
                target_mb_per_s=100,
            )
            emit(
                op="p2p_get",
                size_bytes=size,
                seconds=round(t, 4),
                mb_per_s=round(mb / t, 1),
                export_s=got["export_s"],
                identical=same,
            )
            dest.unlink()
            path.unlink()
            for node in nodes:
                node.call("v1.storage.unpin", {"cid": put["cid"]})
                node.call("v1.storage.gc", timeout=600)
    finally:
        for node in nodes:
            node.stop()


def _same_file(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


class SyntheticFile(io.RawIOBase):
    """``size`` bytes of distinct 256 KiB chunks, made on the fly (no disk, no RAM)."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.counter = 0
        self.noise = random.Random(5).randbytes(1 << 20)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.left)
        if n <= 0:
            return 0
        start = (self.counter * 7919) % ((1 << 20) - n) if n < (1 << 20) else 0
        piece = self.counter.to_bytes(8, "big") + self.noise[start : start + n - 8]
        buf[:n] = piece[:n]
        self.counter += 1
        self.left -= n
        return n


def run_stream(size: int) -> None:
    """Import ``size`` bytes from a stream: throughput and the process's peak RSS."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sink = CountingSink()
    t, result = timed(lambda: import_file(io.BufferedReader(SyntheticFile(size)), sink))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    emit(
        op="import_stream",
        size_bytes=size,
        blocks=sink.blocks,
        seconds=round(t, 2),
        mb_per_s=round(size / 1e6 / t, 1),
        peak_rss_mb_before=round(before / 1024, 1),
        peak_rss_mb_after=round(after / 1024, 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1MB,100MB", help="comma list, e.g. 1MB,100MB,1GB")
    parser.add_argument(
        "--repeat", type=int, default=0, help="runs per op (0: 3 below 1 GB, else 1)"
    )
    parser.add_argument("--dir", default=None, help="work dir (default: a temp dir)")
    parser.add_argument(
        "--transfer-sizes", default="", help="p2p transfer sizes, e.g. 100MB,1GB (none: skip)"
    )
    parser.add_argument(
        "--stream-size", default="", help="import this much from a stream and report peak RSS"
    )
    args = parser.parse_args()
    emit(op="machine", python=platform.python_version(), cpus=os.cpu_count())
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="maskd-bench-") as tmp:
        for text in args.sizes.split(","):
            size = parse_size(text)
            repeat = args.repeat or (3 if size < UNITS["GB"] else 1)
            run(size, Path(tmp), repeat)
        if args.stream_size:
            run_stream(parse_size(args.stream_size))
        if args.transfer_sizes:
            run_transfer([parse_size(t) for t in args.transfer_sizes.split(",")], Path(tmp))


if __name__ == "__main__":
    main()
