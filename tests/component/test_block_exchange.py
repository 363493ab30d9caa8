"""The block exchange over in-memory streams, with fake peers and MockClock.

Every store call runs inline (``storage.testing.inline``), so trio's MockClock
sees no threads: timeouts are exact virtual time and the tests cannot flake.
"""

from __future__ import annotations

import io
import random
from contextlib import contextmanager

import pytest
import trio
import trio.testing

from maskd.config import StorageConfig
from protocol.blocks import (
    MAX_FRAME_BYTES,
    Blocks,
    DontHave,
    FrameDecoder,
    FrameError,
    PinRequest,
    WantBlocks,
    decode_message,
    encode_frame,
)
from protocol.errors import StorageError
from storage.blockstore import BlockStore
from storage.cid import RAW, parse_cid, verify_block
from storage.exchange import BlockExchange, ExchangeSettings
from storage.exporter import export
from storage.service import StorageService
from storage.testing import (
    DieAfter,
    FakeNetwork,
    Hang,
    MemoryByteStream,
    corrupting_source,
    inline,
)

MiB = 1 << 20
SETTINGS = ExchangeSettings(
    request_timeout_s=5.0, want_bytes=512 << 10, requests_per_peer=2, max_inflight_bytes=4 * MiB
)


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def seeded_store(path, data: bytes) -> tuple[BlockStore, str]:
    store = BlockStore(path, fsync=False)
    return store, store.add_stream(io.BytesIO(data)).cid


class Harness:
    def __init__(self, tmp_path, nursery, settings=SETTINGS):
        self.tmp = tmp_path
        self.net = FakeNetwork(nursery)
        self.settings = settings
        self.penalties: list[tuple[str, str]] = []
        self.client_store = BlockStore(tmp_path / "client", fsync=False)
        self.client = self.exchange(self.client_store, "client")

    def exchange(self, store, me, **kw) -> BlockExchange:
        return BlockExchange(
            store,
            self.net.open_stream_from(me),
            penalise=lambda peer, reason: self.penalties.append((peer, reason)),
            settings=self.settings,
            run_blocking=inline,
            **kw,
        )

    def provider(self, name: str, data: bytes, behaviour=None, source=None) -> str:
        store, cid = seeded_store(self.tmp / name, data)
        server = self.exchange(store, name)
        if source is not None:
            server.source = source(server.source)
        self.net.add(name, server, behaviour)
        return cid

    def read_back(self, cid: str) -> bytes:
        return b"".join(export(cid, self.client_store.get))


def assert_store_consistent(store: BlockStore) -> None:
    """Every block on disk hashes to its name and the counters match the disk."""
    names = list(store.cids())
    for cid in names:
        assert verify_block(cid, store.get(cid))
    stat = store.stat()
    assert stat.blocks == len(names)
    assert stat.bytes == sum(len(store.get(c)) for c in names)


async def test_fetches_a_dag_from_two_peers_at_once(tmp_path, autojump_clock):
    data = payload(8 * MiB)
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery)
        cid = h.provider("a", data)
        assert h.provider("b", data) == cid
        seen = []
        result = await h.client.fetch_dag(cid, ["a", "b"], progress=seen.append)
        nursery.cancel_scope.cancel()
    assert h.read_back(cid) == data
    assert result.blocks == 33  # 32 leaves + the root
    assert set(result.peers_used) == {"a", "b"}
    assert all(n > 0 for n in result.peers_used.values())
    assert sum(result.peers_used.values()) == 33
    assert h.penalties == []
    assert seen[-1].blocks_done == 33 and seen[-1].bytes_done == result.bytes
    assert seen[-1].dag_bytes == result.bytes  # the root's links sum up the whole DAG


async def test_corrupt_block_penalises_that_peer_and_completes_from_the_other(
    tmp_path, autojump_clock
):
    data = payload(4 * MiB)
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery)
        leaves = lambda cid: parse_cid(cid).codec == RAW  # noqa: E731
        cid = h.provider("liar", data, source=lambda inner: corrupting_source(inner, leaves))
        h.provider("honest", data)
        result = await h.client.fetch_dag(cid, ["liar", "honest"])
        nursery.cancel_scope.cancel()
    assert h.read_back(cid) == data
    assert h.penalties == [("liar", "block_hash_mismatch")]
    assert "does not match its CID" in result.peers_dropped["liar"]
    assert h.client.stats.corrupt_blocks >= 1
    assert_store_consistent(h.client_store)


async def test_only_peer_corrupt_fails_and_stores_nothing_bad(tmp_path, autojump_clock):
    data = payload(2 * MiB)
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery)
        cid = h.provider(
            "liar", data, source=lambda inner: corrupting_source(inner, lambda c: True)
        )
        with pytest.raises(StorageError) as err:
            await h.client.fetch_dag(cid, ["liar"])
        nursery.cancel_scope.cancel()
    assert err.value.code == "fetch_failed"
    assert "liar" in err.value.message and err.value.hint
    assert list(h.client_store.cids()) == []
    assert h.penalties == [("liar", "block_hash_mismatch")]


async def test_peer_dying_mid_transfer_is_retried_elsewhere(tmp_path, autojump_clock):
    data = payload(6 * MiB)
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery)
        cid = h.provider("dying", data, behaviour=DieAfter(MiB + 1000))
        h.provider("alive", data)
        result = await h.client.fetch_dag(cid, ["dying", "alive"])
        nursery.cancel_scope.cancel()
    assert h.read_back(cid) == data
    assert "stream failed" in result.peers_dropped["dying"]
    assert result.peers_used["alive"] > 0
    assert h.penalties == []  # dying is not misbehaving
    assert_store_consistent(h.client_store)


async def test_hung_peer_times_out_and_its_blocks_go_elsewhere(tmp_path, autojump_clock):
    data = payload(3 * MiB)
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery)
        cid = h.provider("hung", data, behaviour=Hang())
        h.provider("fine", data)
        start = trio.current_time()
        result = await h.client.fetch_dag(cid, ["hung", "fine"])
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert h.read_back(cid) == data
    assert result.peers_dropped["hung"].startswith("no full answer within 5 s")
    assert h.client.stats.timeouts >= 1
    # only the hung peer's first wants waited for the timeout; nothing waited twice
    assert SETTINGS.request_timeout_s <= elapsed < 2 * SETTINGS.request_timeout_s


async def test_block_no_peer_has_fails_fast_with_a_clear_error(tmp_path, autojump_clock):
    data = payload(2 * MiB)
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery)
        cid = h.provider("partial", data)
        store = h.net.servers["partial"].store
        leaf = next(c for c in store.cids() if parse_cid(c).codec == RAW)
        store.delete(leaf)
        with pytest.raises(StorageError) as err:
            await h.client.fetch_dag(cid, ["partial"])
        nursery.cancel_scope.cancel()
    assert err.value.code == "block_unavailable"
    assert leaf in err.value.message
    assert trio.current_time() < SETTINGS.request_timeout_s  # no timeout involved


async def test_quota_full_gives_the_clear_error_and_leaves_the_store_consistent(
    tmp_path, autojump_clock
):
    data = payload(3 * MiB)
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery)
        h.client_store.quota_bytes = MiB + 5000
        cid = h.provider("a", data)
        with pytest.raises(StorageError) as err:
            await h.client.fetch_dag(cid, ["a"])
        nursery.cancel_scope.cancel()
    assert err.value.code == "store_full"
    assert "quota" in err.value.message and "gc" in err.value.hint
    assert h.penalties == []
    assert_store_consistent(h.client_store)
    assert h.client_store.stat().bytes <= h.client_store.quota_bytes
    assert h.client_store.pins() == []
    h.client_store.gc()
    assert h.client_store.stat().blocks == 0


class Tap(MemoryByteStream):
    """Decodes the client's side of a stream and records the pipelining depth."""

    def __init__(self, inner, record):
        self.inner = inner
        self.record = record
        self.out = FrameDecoder()
        self.inn = FrameDecoder()
        self.outstanding: dict[int, int] = {}

    async def write(self, data: bytes) -> None:
        for frame in self.out.feed(data):
            msg = decode_message(frame)
            assert isinstance(msg, WantBlocks)
            self.outstanding[msg.req_id] = len(msg.cids)
            self.record["wants"] = max(self.record["wants"], len(self.outstanding))
            self.record["cids_per_want"] = max(self.record["cids_per_want"], len(msg.cids))
        await self.inner.write(data)

    async def read(self, n=None) -> bytes:
        data = await self.inner.read(n)
        for frame in self.inn.feed(data):
            msg = decode_message(frame)
            done = len(msg.blocks) if isinstance(msg, Blocks) else len(msg.cids)
            self.outstanding[msg.req_id] -= done
            if not self.outstanding[msg.req_id]:
                del self.outstanding[msg.req_id]
        return data

    async def close(self):
        await self.inner.close()

    async def reset(self):
        await self.inner.reset()


async def test_concurrency_is_bounded_per_peer_and_per_want(tmp_path, autojump_clock):
    data = payload(8 * MiB)
    record = {"wants": 0, "cids_per_want": 0}
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery)
        cid = h.provider("a", data)
        plain = h.client.open_stream

        async def tapped(peer):
            return Tap(await plain(peer), record)

        h.client.open_stream = tapped
        await h.client.fetch_dag(cid, ["a"])
        nursery.cancel_scope.cancel()
    assert h.read_back(cid) == data
    assert record["wants"] == SETTINGS.requests_per_peer  # pipelined, and no deeper
    assert record["cids_per_want"] == SETTINGS.want_bytes // (256 << 10)
    assert h.client._budget.free == SETTINGS.max_inflight_bytes  # all returned


async def test_server_refuses_streams_over_its_per_peer_limit(tmp_path, autojump_clock):
    settings = ExchangeSettings(serve_streams_per_peer=1)
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery, settings)
        cid = h.provider("a", payload(1000))
        open_stream = h.net.open_stream_from("greedy")
        streams = [await open_stream("a") for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        assert h.net.servers["a"].stats.refused_streams == 2
        assert h.net.max_active["a"] == 3  # opened, but two were reset at once
        answered = 0
        for s in streams:
            try:
                await s.write(encode_frame(WantBlocks(req_id=1, cids=[cid])))
                answered += bool(await s.read(MAX_FRAME_BYTES))
            except trio.BrokenResourceError:
                pass  # reset by the server
        nursery.cancel_scope.cancel()
    assert answered == 1


async def test_garbage_frame_penalises_the_sender_and_keeps_serving(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery)
        cid = h.provider("a", payload(1000))
        open_stream = h.net.open_stream_from("vandal")
        bad = await open_stream("a")
        await bad.write(b"\x05garbage")
        assert await bad.read(100) == b""  # reset
        good = await h.client.fetch_dag(cid, ["a"])
        nursery.cancel_scope.cancel()
    assert h.penalties == [("vandal", "block_protocol")]
    assert good.blocks == 1


def test_frames_survive_any_split_and_oversize_is_refused():
    msgs = [WantBlocks(req_id=1, cids=["bafkqaaa"]), DontHave(req_id=2, cids=[])]
    wire = b"".join(encode_frame(m) for m in msgs)
    for cut in range(len(wire) + 1):
        dec = FrameDecoder()
        frames = dec.feed(wire[:cut]) + dec.feed(wire[cut:])
        assert [decode_message(f) for f in frames] == msgs
    with pytest.raises(FrameError, match="too_large"):
        FrameDecoder(max_frame=10).feed(b"\x0b" + b"x" * 11)
    with pytest.raises(FrameError, match="bad_frame"):
        FrameDecoder().feed(b"\xff" * 6)
    with pytest.raises(FrameError, match="undecodable"):
        decode_message(b"\xc1")


def test_decoder_knows_how_much_of_a_frame_is_missing():
    wire = encode_frame(Blocks(req_id=1, blocks=[("bafkqaaa", b"x" * 300_000)]))
    dec = FrameDecoder()
    assert dec.missing == 0  # nothing begun
    assert dec.feed(wire[:2]) == [] and dec.missing == 0  # 3-byte length prefix: unknown
    assert dec.feed(wire[2:4]) == [] and dec.missing == len(wire) - 4
    assert dec.feed(wire[4:1000]) == [] and dec.missing == len(wire) - 1000
    assert len(dec.feed(wire[1000:])) == 1 and dec.missing == 0


async def test_big_frames_go_out_in_pieces_that_fit_one_noise_message():
    from storage.streams import WRITE_PIECE, FramedStream

    writes: list[int] = []

    class Recorder(MemoryByteStream):
        def __init__(self):
            pass

        async def write(self, data):
            writes.append(len(data))

    framed = FramedStream(Recorder())
    big = Blocks(req_id=1, blocks=[("bafkqaaa", b"y" * (1 << 20))])
    await framed.send(big)
    assert WRITE_PIECE + 12 == 65_535 - 16  # Yamux header + piece = Noise's max plaintext
    assert max(writes) == WRITE_PIECE and sum(writes) == len(encode_frame(big))
    writes.clear()
    await framed.send(WantBlocks(req_id=2, cids=["bafkqaaa"]))
    assert len(writes) == 1  # small frames in one write


def test_put_many_stores_in_parallel_and_flags_mismatches(tmp_path):
    from storage.cid import cid_of_bytes

    store = BlockStore(tmp_path / "s", fsync=True)
    blobs = [payload(50_000, seed=i) for i in range(12)]
    items = [(cid_of_bytes(b), b) for b in blobs]
    forged = (items[0][0], b"not the data")
    assert store.put_many([*items[1:], forged]) == [True] * 11 + [None]
    assert store.put_many(items) == [True] + [False] * 11  # the first was refused before
    assert_store_consistent(store)
    store.quota_bytes = store.stat().bytes + 60_000
    more = [(cid_of_bytes(b), b) for b in (payload(50_000, seed=100 + i) for i in range(3))]
    with pytest.raises(StorageError) as err:
        store.put_many(more)
    assert err.value.code == "store_full"
    assert_store_consistent(store)
    assert store.stat().bytes <= store.quota_bytes


# -- gc between a fetch and what its caller does next (pin, export) ----------


def gc_right_after_writing(store: BlockStore) -> list:
    """Make ``store.gc()`` run the moment any ``writing()`` guard is released: the
    interleaving where a fetch has stored its blocks and its caller has not yet
    pinned or exported them, made deterministic instead of raced."""
    real = store.writing
    results = []

    @contextmanager
    def writing():
        with real():
            yield
        results.append(store.gc())

    store.writing = writing
    return results


def fetching_service(tmp_path, net: FakeNetwork) -> StorageService:
    opener = net.open_stream_from("me")
    return StorageService(
        StorageConfig(),
        tmp_path / "me",
        peer_id="me",
        open_stream=lambda peer, protocol: opener(peer),
        connected_peers=lambda: ["a"],
        penalise=lambda peer, reason: None,
        publish=lambda event: None,
        lookup_offer=lambda peer: None,
        list_offers=list,
        storage_mb=64,
        fsync=False,
    )


async def test_fetch_dag_with_pin_pins_before_a_gc_can_run(tmp_path, autojump_clock):
    data = payload(2 * MiB)
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery)
        cid = h.provider("a", data)
        collected = gc_right_after_writing(h.client_store)
        result = await h.client.fetch_dag(cid, ["a"], pin=True)
        nursery.cancel_scope.cancel()
    assert result.blocks == 9
    assert len(collected) == 1 and collected[0].blocks == 0  # the gc ran, found nothing to take
    assert h.client_store.pins() == [cid]
    assert h.read_back(cid) == data


@pytest.mark.parametrize("pin", [True, False])
async def test_service_get_survives_a_gc_between_fetch_and_pin_or_export(tmp_path, pin):
    data = payload(2 * MiB)
    async with trio.open_nursery() as nursery:
        net = FakeNetwork(nursery)
        store, cid = seeded_store(tmp_path / "a", data)
        net.add("a", BlockExchange(store, net.open_stream_from("a")))
        svc = fetching_service(tmp_path, net)
        collected = gc_right_after_writing(svc.store)
        dest = tmp_path / "out.bin"
        result = await svc.get({"cid": cid, "dest": str(dest), "pin": pin})
        nursery.cancel_scope.cancel()
    assert result["fetched_blocks"] == 9
    assert collected and collected[0].blocks == 0
    assert dest.read_bytes() == data
    assert svc.store.pins() == ([cid] if pin else [])
    # without a pin the blocks are gc's to take once the get has returned
    assert svc.store.gc().blocks == (0 if pin else 9)


async def test_a_pin_request_survives_a_gc_between_fetch_and_pin(tmp_path):
    data = payload(2 * MiB)
    async with trio.open_nursery() as nursery:
        net = FakeNetwork(nursery)
        store, cid = seeded_store(tmp_path / "a", data)
        net.add("a", BlockExchange(store, net.open_stream_from("a")))
        svc = fetching_service(tmp_path, net)
        collected = gc_right_after_writing(svc.store)
        req = PinRequest(req_id=1, cid=cid, size=len(data), duration_s=3600.0)
        response = await svc.replicator.on_pin_request("a", req)
        nursery.cancel_scope.cancel()
    assert response.accepted, response.reason
    assert collected and collected[0].blocks == 0
    assert svc.store.pins() == [cid]
    assert svc.store.missing(cid) == []
