"""A storage provider measures what it pins: a requester's declared size is a
claim, not a measurement. In-memory streams, no threads (``inline``)."""

from __future__ import annotations

import io
import json
import random

import pytest
import trio
import trio.testing

from maskd.config import StorageConfig
from protocol.blocks import PinRequest
from storage.blockstore import BlockStore
from storage.cid import DAG_PB, cid_of_bytes, cid_to_bytes
from storage.dagpb import PBLink, encode_node
from storage.exchange import BlockExchange
from storage.replicate import PIN_SLACK_BYTES, owed
from storage.service import StorageService
from storage.testing import FakeNetwork, inline

MiB = 1 << 20
# A pin's fetch has a byte budget counted as blocks arrive (BlockExchange.fetch_dag
# max_bytes): what it stores never passes the budget, whatever link sizes claim.
PRICE = "1000000000000000000"  # per GB-hour
# a small in-flight budget, so that "how much did a liar make us fetch" is tight
SETTINGS = StorageConfig(fetch_inflight_mb=4, fetch_max_peers=1, fetch_requests_per_peer=1)


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


def requester_with(tmp_path, net: FakeNetwork, name: str = "req") -> BlockStore:
    store = BlockStore(tmp_path / name, fsync=False)
    net.add(name, BlockExchange(store, net.open_stream_from(name), run_blocking=inline))
    return store


def put_file(store: BlockStore, size: int, seed: int = 7, *, pin: bool = True) -> str:
    return store.add_stream(io.BytesIO(random.Random(seed).randbytes(size)), pin=pin).cid


def put_forged_dag(store: BlockStore, leaves: int, leaf_size: int) -> str:
    """A root whose links claim 1 byte each for leaves of ``leaf_size`` bytes."""
    rng = random.Random(3)
    links = []
    for _ in range(leaves):
        data = rng.randbytes(leaf_size)
        cid = cid_of_bytes(data)
        store.put(cid, data)
        links.append(PBLink(cid_to_bytes(cid), b"", 1))
    root = encode_node(links, None)
    cid = cid_of_bytes(root, DAG_PB)
    store.put(cid, root)
    return cid


def provider(tmp_path, net: FakeNetwork, *, storage_mb: int = 64) -> StorageService:
    opener = net.open_stream_from("prov")
    return StorageService(
        SETTINGS,
        tmp_path / "prov",
        peer_id="prov",
        open_stream=lambda peer, protocol: opener(peer),
        connected_peers=lambda: ["req"],
        penalise=lambda peer, reason: None,
        publish=lambda event: None,
        lookup_offer=lambda peer: None,
        list_offers=list,
        storage_mb=storage_mb,
        price_gb_hour=PRICE,
        clock=lambda: 1000.0,
        fsync=False,
    )


def hosted_records(svc: StorageService) -> list[dict]:
    path = svc.replicator.hosted_file
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def pin(svc: StorageService, cid: str, size: int, req_id: int = 1, duration_s=3600.0):
    req = PinRequest(req_id=req_id, cid=cid, size=size, duration_s=duration_s)
    return await svc.replicator.on_pin_request("req", req)


async def test_a_requester_that_declares_1_byte_for_bigger_dags_is_refused(tmp_path):
    # the report: 3 x 60 MiB pinned and billed as 1 byte each (here 3 x 3 MiB)
    async with trio.open_nursery() as nursery:
        net = FakeNetwork(nursery)
        req_store = requester_with(tmp_path, net)
        svc = provider(tmp_path, net)
        cids = [put_file(req_store, 3 * MiB, seed=i) for i in range(3)]
        answers = [await pin(svc, cid, size=1, req_id=i) for i, cid in enumerate(cids)]
        nursery.cancel_scope.cancel()
    assert [a.accepted for a in answers] == [False] * 3
    assert {a.reason for a in answers} == {"size_mismatch"}
    assert svc.store.pins() == []
    assert svc.replicator.hosted == {} and hosted_records(svc) == []
    # the root says how big the DAG is: nothing past it was fetched
    assert svc.exchange.stats.fetched_bytes <= 3 * PIN_SLACK_BYTES
    assert svc.store.gc().blocks >= 0 and svc.store.stat().blocks == 0


async def test_forged_link_sizes_are_caught_by_what_arrives(tmp_path):
    async with trio.open_nursery() as nursery:
        net = FakeNetwork(nursery)
        req_store = requester_with(tmp_path, net)
        svc = provider(tmp_path, net)
        cid = put_forged_dag(req_store, leaves=64, leaf_size=512 << 10)  # 32 MiB, claims ~2 KiB
        answer = await pin(svc, cid, size=1)
        nursery.cancel_scope.cancel()
    assert not answer.accepted and answer.reason == "size_mismatch"
    assert svc.store.pins() == [] and hosted_records(svc) == []
    # bounded while fetching: never more stored than declared + slack
    assert svc.exchange.stats.fetched_bytes <= 1 + PIN_SLACK_BYTES


async def test_what_is_recorded_and_billed_is_the_measured_size(tmp_path):
    async with trio.open_nursery() as nursery:
        net = FakeNetwork(nursery)
        req_store = requester_with(tmp_path, net)
        svc = provider(tmp_path, net)
        cid = put_file(req_store, 2 * MiB)
        measured = sum(len(req_store.get(c)) for c in req_store.cids())
        answer = await pin(svc, cid, size=10 * MiB)  # over-declared: billed as measured
        nursery.cancel_scope.cancel()
    assert answer.accepted, answer.reason
    assert svc.store.pins() == [cid]
    (record,) = hosted_records(svc)
    assert record["size"] == measured and record["declared_size"] == 10 * MiB
    assert record["owed"] == str(owed(measured, 3600.0, PRICE))
    assert svc.replicator.hosted[cid]["size"] == measured


async def test_a_dag_already_here_is_measured_too(tmp_path):
    # the provider already holds the blocks: nothing is fetched, the size is still measured
    async with trio.open_nursery() as nursery:
        net = FakeNetwork(nursery)
        req_store = requester_with(tmp_path, net)
        svc = provider(tmp_path, net)
        cid = put_file(req_store, 3 * MiB)
        put_file(svc.store, 3 * MiB, pin=False)  # same bytes, same CID, not pinned
        answer = await pin(svc, cid, size=1)
        nursery.cancel_scope.cancel()
    assert not answer.accepted and answer.reason == "size_mismatch"
    assert svc.store.pins() == []


async def test_what_exceeds_the_storage_sold_is_refused(tmp_path):
    async with trio.open_nursery() as nursery:
        net = FakeNetwork(nursery)
        req_store = requester_with(tmp_path, net)
        svc = provider(tmp_path, net, storage_mb=4)
        first = put_file(req_store, 3 * MiB, seed=1)
        second = put_file(req_store, 3 * MiB, seed=2)
        ok = await pin(svc, first, size=3 * MiB + 4096, req_id=1)
        # honest about its size, but the room left is 1 MiB
        refused = await pin(svc, second, size=3 * MiB + 4096, req_id=2)
        nursery.cancel_scope.cancel()
    assert ok.accepted, ok.reason
    assert not refused.accepted and refused.reason == "too_large"
    assert svc.store.pins() == [first]


async def test_a_lie_within_the_room_is_still_bounded_by_the_room(tmp_path):
    async with trio.open_nursery() as nursery:
        net = FakeNetwork(nursery)
        req_store = requester_with(tmp_path, net)
        svc = provider(tmp_path, net, storage_mb=2)
        cid = put_forged_dag(req_store, leaves=64, leaf_size=512 << 10)  # 32 MiB
        answer = await pin(svc, cid, size=2 * MiB - 4096)
        nursery.cancel_scope.cancel()
    # which limit a batch crosses first (room, or declared + slack) depends on the batch
    assert not answer.accepted and answer.reason in ("too_large", "size_mismatch")
    assert svc.store.pins() == []
    assert svc.exchange.stats.fetched_bytes <= 2 * MiB


async def test_a_pin_does_not_take_over_the_operators_own_pin(tmp_path, autojump_clock):
    now = [1000.0]
    async with trio.open_nursery() as nursery:
        net = FakeNetwork(nursery)
        req_store = requester_with(tmp_path, net)
        svc = provider(tmp_path, net)
        svc.replicator.clock = lambda: now[0]
        cid = put_file(req_store, 1 * MiB)
        own = put_file(svc.store, 1 * MiB)  # the operator's `mask put`: pinned
        assert own == cid and svc.store.pins() == [cid]
        size = sum(len(svc.store.get(c)) for c in svc.store.cids())
        answer = await pin(svc, cid, size=size, duration_s=1.0)
        assert answer.accepted, answer.reason
        nursery.start_soon(svc.replicator.expiry_loop)
        now[0] += 5.0
        with trio.fail_after(120):
            while svc.replicator.hosted:
                await trio.sleep(1)  # virtual time: the expiry loop's own timer
        nursery.cancel_scope.cancel()
    assert svc.store.pins() == [cid]  # the operator's pin outlives the contract


async def test_a_shorter_second_pin_does_not_cut_the_first_short(tmp_path, autojump_clock):
    now = [1000.0]
    async with trio.open_nursery() as nursery:
        net = FakeNetwork(nursery)
        req_store = requester_with(tmp_path, net)
        svc = provider(tmp_path, net)
        svc.replicator.clock = lambda: now[0]
        cid = put_file(req_store, 1 * MiB)
        size = 1 * MiB + 4096
        assert (await pin(svc, cid, size=size, req_id=1, duration_s=3600.0)).accepted
        assert (await pin(svc, cid, size=size, req_id=2, duration_s=1.0)).accepted
        nursery.start_soon(svc.replicator.expiry_loop)
        now[0] += 60.0
        await trio.sleep(120)  # virtual time (autojump): the loop's timer fires, twice at least
        assert svc.store.pins() == [cid]
        assert svc.replicator.hosted[cid]["expires_at"] == 1000.0 + 3600.0
        now[0] += 3600.0  # the longer contract ends too: now the pin goes
        with trio.fail_after(120):
            while svc.replicator.hosted:
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert svc.store.pins() == []


async def test_pins_fetched_at_once_cannot_together_exceed_the_storage_sold(tmp_path):
    async with trio.open_nursery() as nursery:
        net = FakeNetwork(nursery)
        req_store = requester_with(tmp_path, net)
        svc = provider(tmp_path, net, storage_mb=4)
        cids = [put_file(req_store, 3 * MiB, seed=i) for i in range(2)]
        answers = {}

        async def ask(i: int) -> None:
            answers[i] = await pin(svc, cids[i], size=3 * MiB + 4096, req_id=i)

        async with trio.open_nursery() as both:
            both.start_soon(ask, 0)
            both.start_soon(ask, 1)
        nursery.cancel_scope.cancel()
    assert sorted(a.accepted for a in answers.values()) == [False, True]
    assert {a.reason for a in answers.values() if not a.accepted} == {"too_large"}
    assert len(svc.store.pins()) == 1
