"""/mask/job/1 over in-memory streams: framing, encryption, refusals, mismatch, tampering."""

from __future__ import annotations

import struct
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from maskd.jobfiles import PrivateFiles
from maskd.payloads import (
    Grant,
    PayloadRefusal,
    PayloadServer,
    fetch_private,
    store_authorizer,
)
from protocol import jobdata as jd
from protocol.errors import JobError, StorageError, WireError
from protocol.identity import make_identity_record
from protocol.market import Agreement, AgreementTerms
from scheduler.async_store import InlineStore
from scheduler.jobstate import JobEvent
from storage.carfile import CarFile, export_car, verify_car, write_path_car
from storage.crypto import encrypt_bytes, x25519_from_seed
from storage.testing import MemoryByteStream
from storage.unixfs import import_path
from tests.factories import Peer

JOB = "ab" * 32


class Party:
    def __init__(self, n: int):
        self.peer = Peer(n)
        self.peer_id = self.peer.peer_id
        self.x_priv, self.x_pub = x25519_from_seed(bytes([n]) * 32)
        self.record = make_identity_record(
            self.peer.account_key, self.peer_id, self.x_pub, 1_700_000_000
        )


REQ, PROV, EVE = Party(1), Party(2), Party(3)


def tree(root: Path, text: str = "hello") -> Path:
    (root / "in").mkdir(parents=True)
    (root / "job.json").write_text('{"name": "t"}')
    (root / "program.wasm").write_bytes(b"\0asm" + bytes(300_000))  # two chunks
    (root / "in" / "data.txt").write_text(text)
    return root


@pytest.fixture
def payload(tmp_path):
    """A bundle as a private CAR: (car path, root cid, source dir)."""
    src = tree(tmp_path / "src")
    car = tmp_path / "bundle.car"
    root = write_path_car(src, car).cid
    return car, root, src


async def exchange(server_fn, tmp_path, *, asker=PROV, root, **kw):
    """Run ``server_fn(stream)`` against ``fetch_private``; the fetched CAR's path."""
    a, b = trio.testing.memory_stream_pair()
    client_stream, server_stream = MemoryByteStream(a), MemoryByteStream(b)
    dest = tmp_path / "got.car"

    async def open_stream(peer):
        return client_stream

    error: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_fn, server_stream)
        try:
            await fetch_private(
                open_stream,
                REQ.peer_id,
                JOB,
                "bundle",
                root,
                asker.record,
                asker.x_priv,
                dest,
                **kw,
            )
        except Exception as exc:  # raised outside the nursery, not as a group
            error.append(exc)
        nursery.cancel_scope.cancel()
    if error:
        raise error[0]
    return dest


def server(grant_or_refusal, tmp_path, *, peer=PROV.peer_id, **kw):
    async def authorize(p, job_id, kind):
        assert (p, job_id, kind) == (peer, JOB, "bundle")
        if isinstance(grant_or_refusal, PayloadRefusal):
            raise grant_or_refusal
        return grant_or_refusal

    srv = PayloadServer(authorize, tmp_path, **kw)

    async def run(stream):
        await srv.handle(stream, peer)

    return srv, run


# --- the CAR helpers ------------------------------------------------------------


def test_the_private_car_has_the_block_store_cid_and_exports_back(payload, tmp_path):
    car, root, src = payload
    blocks: dict[str, bytes] = {}
    assert import_path(src, lambda c, d: blocks.setdefault(c, d)).cid == root
    with CarFile(car) as cf:
        assert cf.roots == [root] and len(cf) == len(blocks)
    assert verify_car(car, root) == len(blocks)
    export_car(car, root, tmp_path / "out")
    assert (tmp_path / "out" / "in" / "data.txt").read_text() == "hello"
    assert (tmp_path / "out" / "program.wasm").read_bytes() == (src / "program.wasm").read_bytes()


def test_verify_car_refuses_another_root_and_a_corrupt_block(payload, tmp_path):
    car, root, _ = payload
    other = write_path_car(tree(tmp_path / "other", "bye"), tmp_path / "o.car").cid
    with pytest.raises(StorageError) as e:
        verify_car(car, other)
    assert e.value.code == "car_root_mismatch"
    data = bytearray(car.read_bytes())
    data[data.index(b"hello")] ^= 1
    car.write_bytes(bytes(data))
    with pytest.raises(StorageError) as e:
        verify_car(car, root)
    assert e.value.code == "block_hash_mismatch"


# --- framing --------------------------------------------------------------------


def test_frames_round_trip_and_oversized_frames_are_refused():
    async def main():
        a, b = trio.testing.memory_stream_pair()
        msgs = [
            jd.PayloadRequest(job_id=JOB, kind="bundle", identity=PROV.record),
            jd.PayloadHeader(job_id=JOB, kind="bundle", root="bafy", size=3),
            jd.PayloadData(data=b"abc"),
            jd.PayloadRefused(job_id=JOB, kind="result", reason=jd.NOT_PARTY),
        ]
        await a.send_all(b"".join(jd.encode_frame(m) for m in msgs))
        await a.send_all(struct.pack(">I", jd.MAX_FRAME + 1))
        reader = jd.FrameReader(MemoryByteStream(b))
        for m in msgs:
            assert await reader.next() == m
        with pytest.raises(WireError) as e:
            await reader.next()
        assert e.value.code == "payload_protocol"

    trio.run(main)


def test_a_clean_end_between_frames_is_none_and_inside_one_an_error():
    async def main():
        a, b = trio.testing.memory_stream_pair()
        frame = jd.encode_frame(jd.PayloadData(data=b"x"))
        await a.send_all(frame + frame[:3])
        await a.send_eof()
        reader = jd.FrameReader(MemoryByteStream(b))
        assert await reader.next() == jd.PayloadData(data=b"x")
        with pytest.raises(WireError) as e:
            await reader.next()
        # a peer that went away mid-frame broke nothing: not scored like bad input
        assert e.value.code == "payload_stream_broken"
        a2, b2 = trio.testing.memory_stream_pair()
        await a2.send_eof()
        assert await jd.FrameReader(MemoryByteStream(b2)).next() is None

    trio.run(main)


def test_an_undecodable_frame_is_a_protocol_error():
    with pytest.raises(WireError) as e:
        jd.decode_body(msgspec.msgpack.encode({"type": "payload_nonsense"}))
    assert e.value.code == "payload_protocol"


# --- the exchange ---------------------------------------------------------------


def test_round_trip_delivers_exactly_the_dag(payload, tmp_path):
    car, root, _ = payload
    srv, run = server(Grant(PROV.record.account, root, car), tmp_path)
    dest = trio.run(lambda: exchange(run, tmp_path, root=root))
    assert dest.read_bytes() == car.read_bytes()
    assert srv.counters["served_bundle"] == 1 and not srv.active
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_a_payload_over_the_askers_limit_is_refused_before_any_data(payload, tmp_path):
    """A provider cannot fill the requester's disk with a "result": the size the
    header announces is checked against the asker's limit before a byte is kept."""
    car, root, _ = payload
    srv, run = server(Grant(PROV.record.account, root, car), tmp_path)
    with pytest.raises(JobError) as e:
        trio.run(lambda: exchange(run, tmp_path, root=root, max_bytes=100))
    assert e.value.code == "payload_too_large" and "100-byte limit" in e.value.message
    assert not (tmp_path / "got.car").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_a_result_is_fetched_no_larger_than_a_sandbox_can_make_one():
    from maskd.payloads import RESULT_LIMITS, RESULT_MAX_CAR_BYTES
    from worker.wasm import WasmLimits

    run = WasmLimits()
    assert RESULT_LIMITS.max_bytes == run.max_output_bytes + 2 * run.max_log_bytes
    assert RESULT_LIMITS.max_bytes < RESULT_MAX_CAR_BYTES < 2 * RESULT_LIMITS.max_bytes


@pytest.mark.parametrize(
    "refusal", [PayloadRefusal(jd.NOT_PARTY, "no"), PayloadRefusal(jd.UNKNOWN_JOB)]
)
def test_the_authorizers_refusal_reaches_the_asker_typed(payload, tmp_path, refusal):
    _, root, _ = payload
    _, run = server(refusal, tmp_path)
    with pytest.raises(JobError) as e:
        trio.run(lambda: exchange(run, tmp_path, root=root))
    assert e.value.code == "payload_refused" and refusal.reason in e.value.message
    assert not (tmp_path / "got.car").exists()


def test_an_identity_for_another_account_is_refused(payload, tmp_path):
    car, root, _ = payload
    # EVE's stream is authenticated as PROV's peer id here, but its record is
    # EVE's own: PROV's peer id with EVE's account does not verify either
    _, run = server(Grant(PROV.record.account, root, car), tmp_path, peer=EVE.peer_id)
    with pytest.raises(JobError) as e:
        trio.run(lambda: exchange(run, tmp_path, root=root, asker=EVE))
    assert e.value.code == "payload_refused" and jd.NOT_PARTY in e.value.message


def test_an_identity_record_of_another_peer_is_refused(payload, tmp_path):
    car, root, _ = payload
    srv, run = server(Grant(PROV.record.account, root, car), tmp_path, peer=EVE.peer_id)
    with pytest.raises(JobError) as e:
        trio.run(lambda: exchange(run, tmp_path, root=root, asker=PROV))
    assert e.value.code == "payload_refused" and jd.BAD_REQUEST in e.value.message
    assert srv.counters["refused_bad_request"] == 1


def test_too_many_streams_from_one_peer_are_refused(payload, tmp_path):
    car, root, _ = payload
    _, run = server(Grant(PROV.record.account, root, car), tmp_path, streams_per_peer=0)
    with pytest.raises(JobError) as e:
        trio.run(lambda: exchange(run, tmp_path, root=root))
    assert e.value.code == "payload_refused" and jd.BUSY in e.value.message


def test_a_missing_payload_is_not_ready(payload, tmp_path):
    _, root, _ = payload
    _, run = server(Grant(PROV.record.account, root, tmp_path / "nope.car"), tmp_path)
    with pytest.raises(JobError) as e:
        trio.run(lambda: exchange(run, tmp_path, root=root))
    assert jd.NOT_READY in e.value.message


def test_another_dag_under_the_right_root_name_is_a_mismatch(payload, tmp_path):
    _, root, _ = payload
    other_car = tmp_path / "other.car"
    write_path_car(tree(tmp_path / "other", "evil"), other_car)
    # the server claims the agreed root but sends another DAG
    _, run = server(Grant(PROV.record.account, root, other_car), tmp_path)
    with pytest.raises(JobError) as e:
        trio.run(lambda: exchange(run, tmp_path, root=root))
    assert e.value.code == "payload_mismatch"
    assert not (tmp_path / "got.car").exists()


def test_a_header_naming_another_root_is_a_mismatch(payload, tmp_path):
    car, root, _ = payload
    other = write_path_car(tree(tmp_path / "other", "evil"), tmp_path / "o.car").cid
    _, run = server(Grant(PROV.record.account, other, tmp_path / "o.car"), tmp_path)
    with pytest.raises(JobError) as e:
        trio.run(lambda: exchange(run, tmp_path, root=root))
    assert e.value.code == "payload_mismatch"


def raw_server(car: Path, root: str, *, key: bytes, mangle):
    """A hand-written server: encrypts ``car`` to ``key``, lets ``mangle`` edit the
    ciphertext pieces, and announces the original size."""

    async def run(stream):
        reader = jd.FrameReader(stream)
        await reader.next()
        blob = encrypt_bytes(car.read_bytes(), key)
        pieces = [blob[i : i + jd.DATA_PIECE] for i in range(0, len(blob), jd.DATA_PIECE)]
        header = jd.PayloadHeader(job_id=JOB, kind="bundle", root=root, size=len(blob))
        await stream.write(jd.encode_frame(header))
        for piece in mangle(pieces):
            await stream.write(jd.encode_frame(jd.PayloadData(data=piece)))
        await stream.close()

    return run


@pytest.mark.parametrize(
    "name,key,mangle",
    [
        (
            "flipped bit",
            PROV.x_pub,
            lambda ps: [ps[0][:100] + bytes([ps[0][100] ^ 1]) + ps[0][101:], *ps[1:]],
        ),
        ("truncated", PROV.x_pub, lambda ps: ps[:-1]),
        ("reordered", PROV.x_pub, lambda ps: [ps[0], ps[2], ps[1], *ps[3:]]),
        ("wrong key", EVE.x_pub, lambda ps: ps),
    ],
)
def test_tampering_truncation_and_a_wrong_key_fail_to_decrypt(payload, tmp_path, name, key, mangle):
    car, root, _ = payload
    run = raw_server(car, root, key=key, mangle=mangle)
    with pytest.raises(StorageError) as e:
        trio.run(lambda: exchange(run, tmp_path, root=root))
    assert e.value.code == "decrypt_failed", name
    assert not (tmp_path / "got.car").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_more_data_than_announced_is_a_protocol_error(payload, tmp_path):
    car, root, _ = payload
    run = raw_server(car, root, key=PROV.x_pub, mangle=lambda ps: [*ps[:-1], ps[-1] + b"extra"])
    with pytest.raises(WireError):
        trio.run(lambda: exchange(run, tmp_path, root=root))


def test_a_silent_server_times_out(payload, tmp_path):
    _, root, _ = payload

    async def silent(stream):
        await trio.sleep_forever()

    async def main():
        return await exchange(silent, tmp_path, root=root, header_timeout=0.2)

    with pytest.raises(JobError) as e:
        trio.run(main)
    assert e.value.code == "payload_timeout"


# --- the daemon's authorizer ----------------------------------------------------


def agreement(spec_cid: str) -> bytes:
    terms = AgreementTerms(
        job_id=JOB,
        requester_peer=REQ.peer_id,
        requester_account=REQ.record.account,
        provider_peer=PROV.peer_id,
        provider_account=PROV.record.account,
        price_total="1",
        cpu=1,
        memory_mb=64,
        gpu=0,
        max_seconds=10,
        max_fuel=0,
        deadline=2_000_000_000,
        spec_cid=spec_cid,
        heartbeat_interval_ms=1000,
        chain_id=31337,
        verifying_contract="0x" + "00" * 20,
    )
    return msgspec.msgpack.encode(Agreement(terms=terms, requester_signature=b"s"))


def test_the_store_authorizer_serves_the_bundle_to_the_matched_provider_only(tmp_path):
    from scheduler.store import JobStore

    files = PrivateFiles(tmp_path / "private")
    store = JobStore(tmp_path / "jobs.db")
    store.create(JOB, role="requester", spec={"spec_cid": "bafyspec"}, now=1.0)
    authorize = store_authorizer(InlineStore(store), files, match_wait=0.2)

    async def ask(peer, kind="bundle", job=JOB):
        try:
            return await authorize(peer, job, kind)
        except PayloadRefusal as r:
            return r.reason

    # pending (not matched yet): waits, then refuses
    assert trio.run(ask, PROV.peer_id) == jd.NOT_PARTY
    assert trio.run(ask, PROV.peer_id, "bundle", "cd" * 32) == jd.UNKNOWN_JOB
    store.transition(
        JOB,
        JobEvent.MATCHED,
        role="requester",
        now=2.0,
        provider_peer=PROV.peer_id,
        provider_account=PROV.record.account,
        agreement=agreement("bafyspec"),
    )
    grant = trio.run(ask, PROV.peer_id)
    assert grant == Grant(PROV.record.account, "bafyspec", files.bundle("bafyspec"))
    assert trio.run(ask, EVE.peer_id) == jd.NOT_PARTY
    # results are asked of the provider role, which this node does not have for JOB
    assert trio.run(ask, REQ.peer_id, "result") == jd.UNKNOWN_JOB


def test_the_store_authorizer_serves_the_result_to_the_requester_only(tmp_path):
    from scheduler.store import JobStore

    files = PrivateFiles(tmp_path / "private")
    store = JobStore(tmp_path / "jobs.db")
    store.create(JOB, role="provider", spec={}, now=1.0, agreement=agreement("bafyspec"))
    authorize = store_authorizer(InlineStore(store), files, match_wait=0.2)

    async def ask(peer):
        try:
            return await authorize(peer, JOB, "result")
        except PayloadRefusal as r:
            return r.reason

    assert trio.run(ask, REQ.peer_id) == jd.NOT_READY
    store.update(JOB, role="provider", now=2.0, output_cid="bafyout")
    assert trio.run(ask, REQ.peer_id) == Grant(
        REQ.record.account, "bafyout", files.result("bafyout")
    )
    assert trio.run(ask, EVE.peer_id) == jd.NOT_PARTY
    assert trio.run(ask, PROV.peer_id) == jd.NOT_PARTY


@pytest.mark.parametrize(
    ("sent", "scored"),
    [
        (struct.pack(">I", 3) + b"\xc1\xc1\xc1", True),  # an undecodable frame
        (struct.pack(">I", jd.MAX_FRAME + 1), True),  # a frame over the limit
        (jd.encode_frame(jd.PayloadData(data=b"x")), True),  # data before any request
        (struct.pack(">I", 100) + b"\x00" * 10, False),  # the asker went away mid-frame
    ],
)
def test_the_server_scores_malformed_input_but_not_a_peer_that_left(
    payload, tmp_path, sent, scored
):
    car, root, _ = payload
    penalised: list[tuple[str, str]] = []
    srv, run = server(
        Grant(PROV.record.account, root, car),
        tmp_path,
        penalise=lambda peer, reason: penalised.append((peer, reason)),
    )

    async def main():
        a, b = trio.testing.memory_stream_pair()
        await a.send_all(sent)
        await a.send_eof()
        with trio.fail_after(5):
            await run(MemoryByteStream(b))

    trio.run(main)
    assert penalised == ([(PROV.peer_id, "payload_protocol")] if scored else [])
