"""The on-disk block store: integrity, pins, gc, quota, missing, CAR."""

from __future__ import annotations

import io
import os
import random
import threading
from pathlib import Path

import pytest

from protocol.errors import StorageError
from storage.blockstore import BlockStore
from storage.cid import DAG_PB, cid_of_bytes, verify_block
from storage.exporter import export
from storage.unixfs import import_file

CHUNK = 262_144


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "blocks")


def test_put_get_has_delete(store: BlockStore) -> None:
    cid = cid_of_bytes(b"hello world")
    assert not store.has(cid)
    assert store.put(cid, b"hello world") is True
    assert store.put(cid, b"hello world") is False  # already there
    assert store.has(cid)
    assert store.get(cid) == b"hello world"
    assert store.get(cid, verify=True) == b"hello world"
    # sharded like Kubo's flatfs: next-to-last two characters
    assert (store.root / cid[-3:-1] / cid).is_file()
    assert store.delete(cid) is True
    assert store.delete(cid) is False
    assert not store.has(cid)


def test_get_of_a_missing_block_names_it(store: BlockStore) -> None:
    cid = cid_of_bytes(b"nope")
    with pytest.raises(StorageError) as info:
        store.get(cid)
    assert info.value.code == "block_not_found"
    assert cid in info.value.message


def test_put_rejects_data_that_does_not_hash_to_the_cid(store: BlockStore) -> None:
    cid = cid_of_bytes(b"good")
    with pytest.raises(StorageError) as info:
        store.put(cid, b"evil")
    assert info.value.code == "block_hash_mismatch"
    assert not store.has(cid)
    assert store.stat().blocks == 0


def test_get_with_verify_detects_corruption_on_disk(store: BlockStore) -> None:
    cid = cid_of_bytes(b"good")
    store.put(cid, b"good")
    (store.root / cid[-3:-1] / cid).write_bytes(b"rot!")
    assert store.get(cid) == b"rot!"
    with pytest.raises(StorageError) as info:
        store.get(cid, verify=True)
    assert info.value.code == "block_corrupt"


def test_cidv0_and_v1_name_the_same_block(store: BlockStore) -> None:
    from multiformats import CID

    node = b"\x0a\x02\x08\x01"
    v1 = cid_of_bytes(node, DAG_PB)
    v0 = str(CID.decode(v1).set(version=0, base="base58btc"))
    store.put(v0, node)
    assert store.has(v1) and store.has(v0)
    assert list(store.cids()) == [v1]


def test_add_pins_after_all_blocks_and_stat_counts(store: BlockStore) -> None:
    data = blob(1, 3 * CHUNK + 5)
    result = store.add_stream(io.BytesIO(data))
    assert store.pins() == [result.cid]
    st = store.stat()
    assert st.blocks == 5 and st.pinned_roots == 1
    assert st.bytes == sum(len(store.get(c)) for c in store.cids())
    assert b"".join(export(result.cid, store.get)) == data
    assert store.missing(result.cid) == []


def test_pins_survive_reopen(store: BlockStore) -> None:
    result = store.add_stream(io.BytesIO(blob(2, 10)))
    again = BlockStore(store.root)
    assert again.pins() == [result.cid]
    assert again.stat().blocks == 1


def test_pin_refuses_an_incomplete_dag(store: BlockStore) -> None:
    sink: dict[str, bytes] = {}
    root = import_file(io.BytesIO(blob(3, 2 * CHUNK + 1)), sink.__setitem__).cid
    store.put(root, sink[root])
    with pytest.raises(StorageError) as info:
        store.pin(root)
    assert info.value.code == "dag_incomplete"
    assert store.pins() == []
    assert len(store.missing(root)) == 3


def test_missing_lists_exactly_the_absent_blocks(store: BlockStore) -> None:
    sink: dict[str, bytes] = {}
    root = import_file(io.BytesIO(blob(4, 3 * CHUNK)), sink.__setitem__).cid
    assert store.missing(root) == [root]
    leaves = [c for c in sink if c != root]
    store.put(root, sink[root])
    store.put(leaves[1], sink[leaves[1]])
    assert store.missing(root) == [leaves[0], leaves[2]]


def test_gc_keeps_pinned_dags_and_removes_the_rest(store: BlockStore) -> None:
    kept = store.add_stream(io.BytesIO(blob(5, 2 * CHUNK + 7)))
    dropped = store.add_stream(io.BytesIO(blob(6, 2 * CHUNK + 9)), pin=False)
    loose = cid_of_bytes(b"loose")
    store.put(loose, b"loose")
    before = store.stat()
    result = store.gc()
    assert result.blocks == 3 + 1 + 1  # dropped: 3 leaves + its node; the loose block
    assert result.bytes == 2 * CHUNK + 9 + len(b"loose") + len(store_node_bytes(dropped.cid, kept))
    after = store.stat()
    assert after.blocks == before.blocks - 5 and after.bytes == before.bytes - result.bytes
    assert store.missing(kept.cid) == [] and not store.has(dropped.cid) and not store.has(loose)
    assert store.unpin(kept.cid) is True and store.unpin(kept.cid) is False
    assert store.gc().blocks == 4 and store.stat().blocks == 0


def store_node_bytes(cid: str, _kept) -> bytes:
    sink: dict[str, bytes] = {}
    import_file(io.BytesIO(blob(6, 2 * CHUNK + 9)), sink.__setitem__)
    return sink[cid]


def test_gc_keeps_blocks_shared_with_a_pinned_dag(store: BlockStore) -> None:
    shared = blob(7, CHUNK)
    a = store.add_stream(io.BytesIO(shared + b"a"))
    store.add_stream(io.BytesIO(shared + b"b"), pin=False)
    store.gc()
    assert store.missing(a.cid) == []


def test_a_lease_keeps_an_unpinned_dag_from_gc_until_released(store: BlockStore) -> None:
    data = blob(10, 2 * CHUNK + 3)
    held = store.add_stream(io.BytesIO(data), pin=False)
    loose = cid_of_bytes(b"loose")
    store.put(loose, b"loose")
    with store.lease(held.cid):
        with store.lease(held.cid):  # leases nest
            pass
        assert store.gc().blocks == 1  # only the loose block
        assert b"".join(export(held.cid, store.get)) == data
        assert store.pins() == []  # a lease is not a pin
    assert store.gc().blocks == 4 and store.stat().blocks == 0


def test_a_lease_waits_for_a_running_gc(store: BlockStore) -> None:
    held = store.add_stream(io.BytesIO(blob(11, CHUNK + 1)), pin=False)
    entered = threading.Event()
    lease = store.lease(held.cid)
    with store._guard.collecting():  # a gc is running
        t = threading.Thread(target=lambda: lease.__enter__() or entered.set())
        t.start()
        assert not entered.wait(0.2)
    t.join(5)
    assert entered.is_set()
    assert store.gc().blocks == 0  # the lease taken after that gc holds for the next
    lease.__exit__(None, None, None)
    assert store.gc().blocks == 3


def test_quota_full_is_a_clear_error_and_leaves_the_store_consistent(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks", quota_bytes=3 * CHUNK)
    small = store.add_stream(io.BytesIO(blob(8, 100)))
    with pytest.raises(StorageError) as info:
        store.add_stream(io.BytesIO(blob(9, 4 * CHUNK)))
    err = info.value
    assert err.code == "store_full"
    assert "quota" in err.message and f"{3 * CHUNK:,}" in err.message
    assert "storage.quota_mb" in err.hint and "mask blocks gc" in err.hint
    assert store.pins() == [small.cid]
    for cid in store.cids():
        assert verify_block(cid, store.get(cid))
    st = store.stat()
    assert st.bytes <= 3 * CHUNK and st.quota_bytes == 3 * CHUNK
    assert not [p for p in store.root.rglob(".tmp-*")]
    store.gc()
    assert store.stat().blocks == 1
    assert store.add_stream(io.BytesIO(blob(10, 2 * CHUNK))).size == 2 * CHUNK


def test_leftover_temp_files_are_removed_on_open(store: BlockStore) -> None:
    cid = cid_of_bytes(b"x")
    store.put(cid, b"x")
    shard = store.root / cid[-3:-1]
    (shard / ".tmp-deadbeef").write_bytes(b"half a blo")
    (store.root / ".tmp-pins-1234").write_bytes(b"{")
    again = BlockStore(store.root)
    assert not list(store.root.rglob(".tmp-*"))
    assert again.stat().blocks == 1


def test_put_refuses_oversized_blocks(store: BlockStore) -> None:
    data = bytes(3 * 1024 * 1024)
    with pytest.raises(StorageError) as info:
        store.put(cid_of_bytes(data), data)
    assert info.value.code == "block_too_large"


def test_car_round_trip_into_a_fresh_store(tmp_path: Path, store: BlockStore) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "f").write_bytes(blob(11, 2 * CHUNK + 3))
    (tmp_path / "d" / "sub" / "g").write_bytes(b"tiny")
    root = store.add_path(tmp_path / "d").cid
    car = io.BytesIO()
    assert store.export_car(root, car) == store.stat().blocks
    fresh = BlockStore(tmp_path / "fresh")
    car.seek(0)
    assert fresh.import_car(car, pin=True) == [root]
    assert sorted(fresh.cids()) == sorted(store.cids())
    for cid in store.cids():
        assert fresh.get(cid) == store.get(cid)
    assert fresh.pins() == [root]


def test_car_header_is_canonical_dag_cbor(store: BlockStore) -> None:
    cid = store.add_stream(io.BytesIO(b"hello world")).cid
    car = io.BytesIO()
    store.export_car(cid, car)
    raw = car.getvalue()
    from storage.cid import cid_to_bytes

    cid_b = cid_to_bytes(cid)
    header = (
        b"\xa2eroots\x81\xd8\x2a\x58" + bytes((len(cid_b) + 1,)) + b"\x00" + cid_b + b"gversion\x01"
    )
    assert raw[0] == len(header) and raw[1 : 1 + len(header)] == header
    section = raw[1 + len(header) :]
    assert section == bytes((len(cid_b) + 11,)) + cid_b + b"hello world"


def test_tampered_car_is_rejected(store: BlockStore, tmp_path: Path) -> None:
    root = store.add_stream(io.BytesIO(blob(12, CHUNK + 1))).cid
    car = io.BytesIO()
    store.export_car(root, car)
    raw = bytearray(car.getvalue())
    raw[-10] ^= 0xFF
    fresh = BlockStore(tmp_path / "fresh")
    with pytest.raises(StorageError) as info:
        fresh.import_car(io.BytesIO(bytes(raw)), pin=True)
    assert info.value.code == "block_hash_mismatch"
    assert fresh.pins() == []


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x05abc", b"\x01\xa0", b"\x11\xa2eroots\x80gversion\x02"],
    ids=["empty", "short-header", "not-a-car-map", "version-2"],
)
def test_malformed_car_headers_are_rejected(store: BlockStore, raw: bytes) -> None:
    with pytest.raises(StorageError) as info:
        store.import_car(io.BytesIO(raw))
    assert info.value.code == "car_invalid"


def test_truncated_car_section_is_rejected(store: BlockStore, tmp_path: Path) -> None:
    root = store.add_stream(io.BytesIO(b"hello world")).cid
    car = io.BytesIO()
    store.export_car(root, car)
    with pytest.raises(StorageError) as info:
        BlockStore(tmp_path / "fresh").import_car(io.BytesIO(car.getvalue()[:-3]))
    assert info.value.code == "car_invalid"


def test_block_files_are_private(store: BlockStore) -> None:
    cid = cid_of_bytes(b"secret")
    store.put(cid, b"secret")
    assert os.stat(store.root / cid[-3:-1] / cid).st_mode & 0o077 == 0


def test_a_failed_block_write_during_add_pins_nothing_and_keeps_counts(
    store: BlockStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import storage.blockstore as bs

    real = bs.write_atomic
    calls = []

    def flaky(path, data, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.EIO, "Input/output error")
        return real(path, data, **kw)

    monkeypatch.setattr(bs, "write_atomic", flaky)
    with pytest.raises(StorageError) as info:
        store.add_stream(io.BytesIO(blob(13, 5 * CHUNK)))
    assert info.value.code == "store_write_failed"
    assert store.pins() == []
    on_disk = list(store.cids())
    assert store.stat().blocks == len(on_disk) == len(calls) - 1
    assert store.stat().bytes == sum(len(store.get(c)) for c in on_disk)


def _tree(base: Path, seed: int) -> Path:
    """A small directory: a multi-chunk file, a one-chunk file, a subdirectory."""
    rng = random.Random(seed)
    (base / "sub").mkdir(parents=True)
    (base / "big").write_bytes(rng.randbytes(3 * CHUNK + 17))
    (base / "small").write_bytes(rng.randbytes(100))
    (base / "sub" / "g").write_bytes(rng.randbytes(CHUNK))
    return base


def _in_threads(n: int, fn) -> list:
    """Run ``fn(i)`` on n threads released together; return results (or raise the first error)."""
    import threading

    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "deadlock: an import never finished"
    if errors:
        raise errors[0]
    return results


def _assert_consistent(store: BlockStore) -> None:
    on_disk = list(store.cids())
    st = store.stat()
    assert st.blocks == len(on_disk)
    assert st.bytes == sum(len(store.get(c)) for c in on_disk)
    assert not list(store.root.rglob(".tmp-*"))
    for root in store.pins():
        assert store.missing(root) == []


@pytest.mark.parametrize("round_", range(6))
def test_concurrent_identical_imports_all_pin(tmp_path: Path, round_: int) -> None:
    # 20 identical job bundles submitted at once: every add_path must pin, each
    # block written once, the counters right (one thread used to find the root
    # "missing" because another thread was still writing it).
    src = _tree(tmp_path / "src", seed=100 + round_)
    store = BlockStore(tmp_path / "blocks")
    results = _in_threads(8, lambda _i: store.add_path(src, pin=True))
    assert len({r.cid for r in results}) == 1
    assert store.pins() == [results[0].cid]
    _assert_consistent(store)
    assert store.stat().blocks == 9  # big: 4 leaves + node; small; g; sub; the root


@pytest.mark.parametrize("round_", range(3))
def test_overlapping_imports_with_gc_running_all_pin(tmp_path: Path, round_: int) -> None:
    # Imports sharing chunks (and some identical), while gc loops: no pin fails,
    # no pinned DAG loses a block, the counters match the disk.
    import threading

    shared = blob(200 + round_, 2 * CHUNK)
    store = BlockStore(tmp_path / "blocks")
    stop = threading.Event()
    gc_errors: list[BaseException] = []

    def collect() -> None:
        while not stop.wait(0.002):  # a pause, or this loop could starve the writers
            try:
                store.gc()
            except BaseException as exc:  # noqa: BLE001
                gc_errors.append(exc)
                return

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        results = _in_threads(
            8, lambda i: store.add_stream(io.BytesIO(shared + bytes([i % 3]) * (i % 3 + 1)))
        )
    finally:
        stop.set()
        collector.join(timeout=60)
    assert not gc_errors
    assert sorted(store.pins()) == sorted({r.cid for r in results})
    assert len(store.pins()) == 3
    _assert_consistent(store)
    store.gc()
    _assert_consistent(store)
    assert store.stat().blocks == 2 + 3 * 2  # the shared leaves; per file a tail leaf + a node


def _blocking_writes(monkeypatch: pytest.MonkeyPatch, *, fail_first: bool = False):
    """Make the first block write wait for ``release`` (and optionally then fail)."""
    import errno
    import threading

    import storage.blockstore as bs

    real = bs.write_atomic
    entered, release = threading.Event(), threading.Event()
    first = [True]

    def slow(path, data, **kw):
        if first[0]:
            first[0] = False
            entered.set()
            assert release.wait(10)
            if fail_first:
                raise OSError(errno.EIO, "Input/output error")
        return real(path, data, **kw)

    monkeypatch.setattr(bs, "write_atomic", slow)
    return entered, release


def test_put_of_a_block_another_thread_is_writing_waits_for_it(
    store: BlockStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "already here" must mean readable: import_car and the fetcher pin right after.
    import threading

    entered, release = _blocking_writes(monkeypatch)
    cid = cid_of_bytes(b"block")
    first = threading.Thread(target=store.put, args=(cid, b"block"))
    first.start()
    assert entered.wait(10)
    seen: list = []
    second = threading.Thread(
        target=lambda: seen.append((store.put(cid, b"block"), store.has(cid)))
    )
    second.start()
    second.join(0.2)
    waited = second.is_alive()  # for the first writer, not claiming "already here"
    release.set()
    first.join(10)
    second.join(10)
    assert waited and seen == [(False, True)]
    assert store.stat().blocks == 1 and store.stat().bytes == len(b"block")


def test_a_block_whose_writer_failed_is_written_by_the_one_waiting(
    store: BlockStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    entered, release = _blocking_writes(monkeypatch, fail_first=True)
    cid = cid_of_bytes(b"block")
    errors: list = []

    def first_put() -> None:
        try:
            store.put(cid, b"block")
        except StorageError as exc:
            errors.append(exc.code)

    first = threading.Thread(target=first_put)
    first.start()
    assert entered.wait(10)
    seen: list = []
    second = threading.Thread(target=lambda: seen.append(store.put(cid, b"block")))
    second.start()
    second.join(0.1)
    release.set()
    first.join(10)
    second.join(10)
    assert errors == ["store_write_failed"] and seen == [True]
    assert store.get(cid) == b"block"
    assert store.stat().blocks == 1 and store.stat().bytes == len(b"block")
