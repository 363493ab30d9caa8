"""SIGKILL a process in the middle of an import: the store must reopen clean.

The child pins a small file, prints its CID, then imports stdin, which the
parent feeds from a seeded PRNG and never closes, so that import cannot finish.
Once enough blocks are on disk the parent kills the child by pid.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage.blockstore import BlockStore
from storage.cid import verify_block
from storage.fsutil import TMP_PREFIX

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import io, random, sys
from storage.blockstore import BlockStore
store = BlockStore(sys.argv[1])
first = store.add_stream(io.BytesIO(random.Random(1).randbytes(1 << 20)))
print(first.cid, flush=True)
store.add_stream(sys.stdin.buffer)
print("finished", flush=True)
"""
FEED_BYTES = 64 << 20
KILL_AFTER_BLOCKS = 5 + 128  # the pinned file's 5 blocks, then 32 MiB of the big one
DEADLINE_S = 120.0


def count_blocks(root: Path) -> int:
    return sum(
        1
        for shard in root.iterdir()
        if shard.is_dir()
        for name in os.listdir(shard)
        if not name.startswith(TMP_PREFIX)
    )


def wait_for(condition, what: str, deadline: float) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)  # polling interval of a condition wait, not a fixed delay


def read_line(proc: subprocess.Popen, deadline: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
        raise AssertionError("child printed nothing before the deadline")
    return proc.stdout.readline().decode().strip()


def feed(proc: subprocess.Popen) -> None:
    rng = random.Random(64)
    try:
        for _ in range(FEED_BYTES >> 20):
            proc.stdin.write(rng.randbytes(1 << 20))
            proc.stdin.flush()
    except (BrokenPipeError, ValueError, OSError):
        pass  # the child was killed: expected


def test_sigkill_mid_import_leaves_a_consistent_store(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    deadline = time.monotonic() + DEADLINE_S
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    feeder = threading.Thread(target=feed, args=(proc,), daemon=True)
    try:
        pinned = read_line(proc, deadline)
        assert pinned.startswith("bafy")
        feeder.start()
        wait_for(lambda: count_blocks(root) >= KILL_AFTER_BLOCKS, "blocks on disk", deadline)
        assert proc.poll() is None, "the child must still be importing when killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        feeder.join(timeout=30)
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except BrokenPipeError:
                pass

    store = BlockStore(root)

    assert not [p for p in root.rglob(f"{TMP_PREFIX}*")], "temp files survive reopen"
    present = list(store.cids())
    assert len(present) >= KILL_AFTER_BLOCKS
    for cid in present:
        assert verify_block(cid, store.get(cid)), f"{cid} is torn"
    assert store.pins() == [pinned], "only the finished import may be pinned"
    for pin in store.pins():
        assert store.missing(pin) == []
    assert store.stat().blocks == len(present)
    # the unfinished DAG is garbage: gc drops it and keeps the pinned file
    store.gc()
    assert store.stat().blocks == 5 and store.missing(pinned) == []
