"""One verdict test per reason in the gossip validation pipeline."""

import msgspec
import pytest

from p2p.validation import GossipValidator, ValidationLimits
from protocol.codec import encode
from protocol.identity import sign_gossip
from protocol.messages import IdentityRecord, SignedGossip
from protocol.verdict import Reason, Verdict
from tests.factories import Peer

NOW = 1_700_000_000.0
A, B = Peer(1), Peer(2)


def check(
    data: bytes, *, source: str = A.peer_id, validator: GossipValidator | None = None, now=NOW
):
    v = validator or GossipValidator()
    return v, v.validate(data, source=source, topic_kind="offers", now=now)


def test_accepts_a_good_offer_and_returns_it_decoded():
    offer = A.offer()
    v, out = check(A.sign(offer))
    assert out.verdict is Verdict.ACCEPT and out.reason is Reason.OK
    assert out.message == offer
    assert v.accepted == 1 and not v.drops


def test_too_large_is_rejected_before_decoding():
    v = GossipValidator(ValidationLimits(max_message_bytes=1024))
    _, out = check(b"\x00" * 2048, validator=v)
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.TOO_LARGE)
    assert v.drops["too_large"] == 1


# a body whose text field is not UTF-8: msgspec raises UnicodeDecodeError, not
# DecodeError; it must still be an undecodable reject (penalised), not a
# validator error the sender gets away with
BAD_UTF8 = encode(SignedGossip(b"\x81\xa4type\xa1\xff", b"x"))


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"\x92\xc4\x01a", encode(SignedGossip(b"\x01", b"x")), BAD_UTF8],
)
def test_undecodable(data):
    _, out = check(data)
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.UNDECODABLE)


def test_signature_by_another_key_is_rejected():
    envelope = sign_gossip(encode(A.offer()), B.key)
    _, out = check(encode(envelope))
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.BAD_SIGNATURE)


def test_tampered_body_is_rejected():
    env = msgspec.msgpack.decode(A.sign(A.offer()), type=SignedGossip)
    body = env.body.replace(b"wasm", b"wasn")
    _, out = check(encode(SignedGossip(body, env.signature)))
    assert out.reason in (Reason.BAD_SIGNATURE,)


def test_offer_for_another_peer_than_the_gossip_source_is_rejected():
    _, out = check(B.sign(B.offer()), source=A.peer_id)
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.SOURCE_MISMATCH)


def test_expired_is_ignored_not_penalised():
    _, out = check(A.sign(A.offer(now=NOW - 120, ttl=60)))
    assert (out.verdict, out.reason) == (Verdict.IGNORE, Reason.EXPIRED)


def test_from_the_future_is_rejected():
    _, out = check(A.sign(A.offer(now=NOW + 3600)))
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.FROM_FUTURE)


def test_ttl_too_long_is_rejected():
    _, out = check(A.sign(A.offer(ttl=10 * 86400)))
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.TTL_TOO_LONG)


def test_replay_is_a_duplicate_and_an_older_seq_is_stale():
    v = GossipValidator()
    check(A.sign(A.offer(seq=5)), validator=v)
    _, again = check(A.sign(A.offer(seq=5)), validator=v)
    _, older = check(A.sign(A.offer(seq=4)), validator=v)
    assert (again.verdict, again.reason) == (Verdict.IGNORE, Reason.DUPLICATE)
    assert (older.verdict, older.reason) == (Verdict.IGNORE, Reason.STALE_SEQ)
    assert v.drops == {"duplicate": 1, "stale_seq": 1}


def test_identity_record_for_another_peer_is_rejected():
    _, out = check(A.sign(A.offer(identity=B.record)))
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.BAD_IDENTITY)


def test_identity_record_with_a_forged_signature_is_rejected():
    rec = A.record
    bad = IdentityRecord(
        peer_id=rec.peer_id,
        account=B.record.account,
        x25519=rec.x25519,
        issued_at=rec.issued_at,
        signature=rec.signature,
    )
    _, out = check(A.sign(A.offer(identity=bad)))
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.BAD_IDENTITY)


@pytest.mark.parametrize(
    "override",
    [
        {"cpu": -1},
        {"memory_mb": 1 << 50},
        {"executors": ("docker",)},
        {"executors": ()},
        {"gpus": ()} | {"addrs": tuple(f"/ip4/1.1.1.1/tcp/{i}" for i in range(100))},
        {"seq": -1},
    ],
)
def test_meaningless_fields_are_rejected(override):
    _, out = check(A.sign(A.offer(**override)))
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.BAD_FIELD)


def test_non_numeric_price_is_rejected():
    from protocol.messages import Prices

    _, out = check(A.sign(A.offer(prices=Prices(cpu_core_hour="1e18"))))
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.BAD_FIELD)


def test_withdrawal_after_offer_is_accepted_and_forget_resets_replay_state():
    v = GossipValidator()
    offer = A.offer(seq=5)
    check(A.sign(offer), validator=v)
    _, out = check(A.sign(A.withdrawal(offer, seq=6, now=NOW)), validator=v)
    assert out.verdict is Verdict.ACCEPT
    v.forget(A.peer_id)
    _, again = check(A.sign(A.offer(seq=2)), validator=v)
    assert again.verdict is Verdict.ACCEPT


def test_count_drop_records_reasons_decided_outside_the_pipeline():
    v = GossipValidator()
    v.count_drop(Reason.GARBAGE_FRAME)
    assert v.drops["garbage_frame"] == 1


def _node_emitting_to(validator):
    """The node's book-event handler (``Node._emit``) on a node with nothing but
    a validator: what the node does to replay state when an offer leaves."""
    from types import SimpleNamespace

    import trio

    from maskd.events import EventBus
    from maskd.node import Node

    node = SimpleNamespace(validator=validator, events=EventBus(), _book_changed=trio.Event())
    return lambda events: Node._emit(node, events)


def test_a_departed_publishers_old_offer_relayed_again_does_not_reenter_the_book():
    from scheduler.offer_book import OfferBook

    v, book = GossipValidator(), OfferBook()
    emit = _node_emitting_to(v)
    data = A.sign(A.offer(seq=5))  # valid for 60 s
    _, out = check(data, validator=v)
    emit(book.apply(out.message, NOW))
    emit(book.peer_departed(A.peer_id))  # A disconnects from us; its offer is still valid
    _, again = check(data, validator=v, now=NOW + 10)  # a relayed (or replayed) copy
    assert (again.verdict, again.reason) == (Verdict.IGNORE, Reason.DUPLICATE)
    assert v.drops["duplicate"] == 1 and len(book) == 0
    _, older = check(A.sign(A.offer(seq=4)), validator=v, now=NOW + 10)
    assert older.reason is Reason.STALE_SEQ
    # A's next offer gets in, as before
    _, newer = check(A.sign(A.offer(seq=6, now=NOW + 20)), validator=v, now=NOW + 20)
    assert newer.verdict is Verdict.ACCEPT


def test_replay_state_lasts_until_everything_the_publisher_sent_has_expired():
    v = GossipValidator()
    check(A.sign(A.offer(seq=5, ttl=60)), validator=v)
    check(A.sign(A.offer(seq=6, ttl=30)), validator=v)  # a shorter-lived later offer
    old_long_lived = A.sign(A.offer(seq=5, ttl=60))
    _, out = check(old_long_lived, validator=v, now=NOW + 45)
    assert out.reason is Reason.STALE_SEQ  # seq 6 has lapsed, seq 5 has not: still known
    # once all of it has expired a restarted publisher whose seq started over gets in
    _, out = check(A.sign(A.offer(seq=1, now=NOW + 61)), validator=v, now=NOW + 61)
    assert out.verdict is Verdict.ACCEPT


def test_replay_state_is_bounded():
    v = GossipValidator(ValidationLimits(seen_cache_size=2))
    for peer in (A, B, Peer(3)):
        check(peer.sign(peer.offer()), source=peer.peer_id, validator=v)
    assert v.tracked_publishers() == 2


@pytest.mark.parametrize("stake", ["-1", "1e18", "0x10", "9" * 79, "\u0661"])
def test_a_stake_that_is_not_a_decimal_amount_is_rejected(stake):
    _, out = check(A.sign(A.offer(stake=stake)))
    assert (out.verdict, out.reason) == (Verdict.REJECT, Reason.BAD_FIELD)


def test_offers_carry_the_stake():
    offer, out = check(A.sign(A.offer(stake=str(5 * 10**18))))
    assert out.verdict is Verdict.ACCEPT and out.message.stake == str(5 * 10**18)
