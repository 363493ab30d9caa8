"""Schema round trips (hypothesis) and the golden encodings that must keep decoding."""

import json
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from protocol.codec import DECODE_ERRORS, decode_body, decode_envelope, encode
from protocol.messages import Gpu, OfferWithdrawal, Prices, ResourceOffer, SignedGossip
from tests.factories import Peer

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "wire"
A = Peer(1)

digits = st.integers(min_value=0, max_value=10**30).map(str)
u32 = st.integers(min_value=0, max_value=2**32)
offers = st.builds(
    ResourceOffer,
    offer_id=st.text(max_size=20),
    peer_id=st.just(A.peer_id),
    seq=st.integers(min_value=0, max_value=2**62),
    identity=st.just(A.record),
    cpu=u32,
    memory_mb=u32,
    disk_mb=u32,
    gpus=st.lists(
        st.builds(Gpu, name=st.text(max_size=10), memory_mb=u32, uuid=st.text(max_size=10)),
        max_size=3,
    ).map(tuple),
    executors=st.lists(st.sampled_from(["wasm", "native", "zk-groth16"]), max_size=3).map(tuple),
    prices=st.builds(
        Prices, cpu_core_hour=digits, memory_gb_hour=digits, gpu_hour=digits, storage_gb_hour=digits
    ),
    storage_mb=u32,
    addrs=st.lists(st.text(max_size=30), max_size=3).map(tuple),
    issued_at=st.floats(allow_nan=False, allow_infinity=False),
    expires_at=st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=200, deadline=None)
@given(offers)
def test_offer_round_trip(offer):
    assert decode_body(encode(offer)) == offer


@given(st.binary(max_size=200), st.binary(max_size=80))
def test_envelope_round_trip(body, sig):
    env = SignedGossip(body, sig)
    assert decode_envelope(encode(env)) == env


# a map whose "type" is a str that is not UTF-8: msgspec's UnicodeDecodeError
BAD_UTF8 = b"\x81\xa4type\xa1\xff"


@given(st.binary(max_size=300))
@example(BAD_UTF8)
def test_decoding_garbage_never_raises_anything_but_decode_errors(data):
    from protocol.blocks import FrameError, decode_message
    from protocol.errors import WireError
    from protocol.jobdata import decode_body as decode_job_frame

    for fn in (decode_envelope, decode_body):
        try:
            fn(data)
        except DECODE_ERRORS:
            pass
    # the framed protocols turn every malformed frame into their own error
    try:
        decode_message(data)
    except FrameError:
        pass
    try:
        decode_job_frame(data)
    except WireError:
        pass


def _golden():
    offer = A.offer(seq=7, now=1_700_000_000.0)
    return {
        "offer_v1.msgpack": encode(offer),
        "offer_withdrawal_v1.msgpack": encode(
            OfferWithdrawal(
                offer_id=offer.offer_id, peer_id=A.peer_id, seq=8, issued_at=1.0, expires_at=2.0
            )
        ),
        "signed_offer_v1.msgpack": A.sign(offer),
    }


def test_golden_encodings_keep_decoding():
    """Files under tests/data/wire/ were written by an earlier version: never edit them.

    New fields must be optional so these still decode to the same values.
    """
    index = json.loads((GOLDEN / "index.json").read_text())
    assert index, "no golden files"
    for name, expect in index.items():
        data = (GOLDEN / name).read_bytes()
        if name.startswith("signed_"):
            env = decode_envelope(data)
            body = decode_body(env.body)
        else:
            body = decode_body(data)
        assert type(body).__name__ == expect["type"]
        assert body.peer_id == expect["peer_id"] and body.seq == expect["seq"]


if __name__ == "__main__":  # regenerate only when adding a NEW golden file
    index = {}
    for name, data in _golden().items():
        if not (GOLDEN / name).exists():
            (GOLDEN / name).write_bytes(data)
        body = decode_body(decode_envelope(data).body if name.startswith("signed_") else data)
        index[name] = {"type": type(body).__name__, "peer_id": body.peer_id, "seq": body.seq}
    (GOLDEN / "index.json").write_text(json.dumps(index, indent=2) + "\n")
