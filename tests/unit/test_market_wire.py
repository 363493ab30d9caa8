"""Market messages round-trip through MessagePack; bids get one verdict per reason."""

import msgspec
import pytest

from protocol.codec import encode
from protocol.identity import sign_gossip
from protocol.market import (
    Agreement,
    AgreementTerms,
    BidLimits,
    BidValidator,
    Cancel,
    Heartbeat,
    JobBid,
    JobRequirements,
    JobResult,
    Quote,
    Refusal,
    UsageReport,
    decode_market,
    encode_market,
)
from protocol.messages import SignedGossip
from protocol.verdict import Reason, Verdict
from tests.factories import Peer

NOW = 1_700_000_000.0
A, B = Peer(1), Peer(2)
JOB = "ab" * 32


def bid(peer: Peer = A, **over) -> JobBid:
    fields = dict(
        job_id=JOB,
        peer_id=peer.peer_id,
        identity=peer.record,
        requirements=JobRequirements(executor="wasm", cpu=1, memory_mb=128, max_seconds=60),
        max_total="1000000000000000",
        deadline=int(NOW) + 300,
        spec_cid="bafkreispec",
        issued_at=NOW,
        expires_at=NOW + 30,
        seq=1,
    )
    fields.update(over)
    return JobBid(**fields)


def check(data: bytes, *, source: str = A.peer_id, v: BidValidator | None = None, now=NOW):
    v = v or BidValidator()
    return v, v.validate(data, source=source, now=now)


TERMS = AgreementTerms(
    job_id=JOB, requester_peer="r", requester_account="0x" + "1" * 40, provider_peer="p",
    provider_account="0x" + "2" * 40, price_total="5", cpu=1, memory_mb=1, gpu=0, max_seconds=1,
    max_fuel=0, deadline=2, spec_cid="c", heartbeat_interval_ms=1000, chain_id=1,
    verifying_contract="0x" + "0" * 40,
)  # fmt: skip

MESSAGES = [
    Quote(job_id=JOB, bid_seq=1, peer_id="p", identity=A.record, price_total=str(2**100),
          valid_until=NOW, free_cpu=4, free_memory_mb=8192),
    Refusal(job_id=JOB, bid_seq=1, peer_id="p", reason="insufficient_memory", detail="asks 9"),
    Agreement(terms=TERMS, requester_signature=b"\x01" * 65),
    Agreement(terms=TERMS, requester_signature=b"\x01" * 65, provider_signature=b"\x02" * 65),
    Heartbeat(job_id=JOB, peer_id="p", seq=3, usage=UsageReport(fuel=9, wall_ms=10)),
    JobResult(job_id=JOB, peer_id="p", output_cid="bafk", usage=UsageReport(), stdout_sha256=b"1",
              stderr_sha256=b"2", exit_code=None, error_code="timeout", signature=b"s"),
    Cancel(job_id=JOB, peer_id="r"),
]  # fmt: skip


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_market_messages_round_trip(message):
    assert decode_market(encode_market(message)) == message


def test_decode_market_is_strict():
    with pytest.raises(msgspec.ValidationError):
        decode_market(encode_market(bid()))  # a bid is gossip, never a direct message
    with pytest.raises(msgspec.DecodeError):
        decode_market(b"\xc1")
    with pytest.raises(ValueError, match="over the limit"):
        decode_market(b"\x00" * 20000)


def test_accepts_a_good_bid():
    b = bid()
    v, out = check(A.sign(b))
    assert (out.verdict, out.reason, out.message) == (Verdict.ACCEPT, Reason.OK, b)
    assert v.accepted == 1 and not v.drops


def test_bid_round_trips_inside_its_envelope():
    b = bid()
    env = msgspec.msgpack.decode(A.sign(b), type=SignedGossip)
    assert msgspec.msgpack.decode(env.body, type=JobBid) == b


def test_too_large():
    _, out = check(b"\x00" * 9000, v=BidValidator(BidLimits(max_message_bytes=8192)))
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.TOO_LARGE)


@pytest.mark.parametrize(
    "data",
    [b"", b"junk", A.sign(A.offer()), encode(SignedGossip(b"\x81\xa4type\xa1\xff", b"x"))],
)
def test_undecodable_including_an_offer_on_the_bids_topic(data):
    _, out = check(data)
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.UNDECODABLE)


def test_source_mismatch_and_bad_signature():
    _, out = check(A.sign(bid()), source=B.peer_id)
    assert out.reason is Reason.SOURCE_MISMATCH and out.verdict is Verdict.REJECT
    _, out = check(encode(sign_gossip(encode(bid()), B.key)))
    assert out.reason is Reason.BAD_SIGNATURE and out.verdict is Verdict.REJECT


@pytest.mark.parametrize(
    ("over", "verdict", "reason"),
    [
        ({"expires_at": NOW}, Verdict.IGNORE, Reason.EXPIRED),
        ({"deadline": int(NOW)}, Verdict.IGNORE, Reason.DEADLINE_PASSED),
        (
            {"issued_at": NOW + 100, "expires_at": NOW + 130},
            Verdict.REJECT,
            Reason.FROM_FUTURE,
        ),
        ({"expires_at": NOW + 5000}, Verdict.REJECT, Reason.TTL_TOO_LONG),
        ({"job_id": "J"}, Verdict.REJECT, Reason.BAD_FIELD),
        ({"max_total": "-1"}, Verdict.REJECT, Reason.BAD_FIELD),
        ({"max_total": str(2**256)}, Verdict.REJECT, Reason.BAD_FIELD),
        ({"spec_cid": ""}, Verdict.REJECT, Reason.BAD_FIELD),
        ({"seq": -1}, Verdict.REJECT, Reason.BAD_FIELD),
        ({"identity": B.record}, Verdict.REJECT, Reason.BAD_IDENTITY),
        (
            {"requirements": JobRequirements(executor="dos", cpu=1, memory_mb=1, max_seconds=1)},
            Verdict.REJECT,
            Reason.BAD_FIELD,
        ),
        (
            {"requirements": JobRequirements(executor="wasm", cpu=0, memory_mb=1, max_seconds=1)},
            Verdict.REJECT,
            Reason.BAD_FIELD,
        ),
    ],
)
def test_freshness_and_meaning(over, verdict, reason):
    _, out = check(A.sign(bid(**over)))
    assert (out.verdict, out.reason) == (verdict, reason)


def test_forged_identity_record_is_rejected():
    forged = msgspec.structs.replace(A.record, account="0x" + "9" * 40)
    _, out = check(A.sign(bid(identity=forged)))
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.BAD_IDENTITY)


def test_replay_is_per_requester_and_job():
    v = BidValidator()
    assert check(A.sign(bid(seq=2)), v=v)[1].verdict is Verdict.ACCEPT
    assert check(A.sign(bid(seq=2)), v=v)[1].reason is Reason.DUPLICATE
    assert check(A.sign(bid(seq=1)), v=v)[1].reason is Reason.STALE_SEQ
    # another job of the same requester is judged on its own seq
    assert check(A.sign(bid(job_id="cd" * 32, seq=1)), v=v)[1].verdict is Verdict.ACCEPT
    # a fresh round for the first job
    assert check(A.sign(bid(seq=3)), v=v)[1].verdict is Verdict.ACCEPT
    assert v.drops == {"duplicate": 1, "stale_seq": 1}
