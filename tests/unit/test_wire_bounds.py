"""Text a peer sends that we keep and show is bounded when it is decoded.

A provider's error message, a refusal's detail, a GPU's name: before, each
was any length up to the frame size (1 MiB of text stored in a job row or
offered to every `mask offers` on the mesh)."""

from __future__ import annotations

import msgspec
import pytest

from protocol.codec import DECODE_ERRORS, decode_body, encode
from protocol.market import (
    MAX_DETAIL_CHARS,
    MAX_ERROR_MESSAGE_CHARS,
    Cancel,
    JobResult,
    Refusal,
    UsageReport,
    decode_market,
    encode_market,
)
from scheduler import provider as pv
from tests.factories import Peer

JOB = "ab" * 32
P = Peer(3)


def result(**over) -> JobResult:
    fields = dict(
        job_id=JOB,
        peer_id=P.peer_id,
        output_cid="",
        usage=UsageReport(),
        stdout_sha256=b"\0" * 32,
        stderr_sha256=b"\0" * 32,
        exit_code=None,
    )
    return JobResult(**{**fields, **over})


@pytest.mark.parametrize(
    "message",
    [
        result(error_message="x" * (MAX_ERROR_MESSAGE_CHARS + 1)),
        result(error_code="c" * 65),
        result(usage=UsageReport(fuel=-1)),
        Refusal(job_id=JOB, bid_seq=0, peer_id=P.peer_id, reason="busy", detail="d" * 1025),
        Cancel(job_id=JOB, peer_id=P.peer_id, reason="r" * 65),
    ],
)
def test_overlong_text_from_a_peer_does_not_decode(message):
    with pytest.raises(DECODE_ERRORS):
        decode_market(encode_market(message))


def test_text_at_the_bounds_decodes():
    ok = result(error_message="x" * MAX_ERROR_MESSAGE_CHARS, error_code="c" * 64)
    assert decode_market(encode_market(ok)) == ok
    r = Refusal(job_id=JOB, bid_seq=0, peer_id=P.peer_id, reason="busy", detail="d" * 1024)
    assert decode_market(encode_market(r)) == r


def test_a_gpu_name_longer_than_256_characters_does_not_decode():
    from protocol.messages import Gpu

    offer = P.offer(gpus=(Gpu(name="[/x] H100 " * 40, memory_mb=1),))
    with pytest.raises(DECODE_ERRORS):
        decode_body(encode(offer))


def test_the_provider_bounds_its_own_texts_so_its_peer_can_decode_them():
    """Our own error text (an exception's message, say) is cut to fit, never a
    result the requester cannot decode."""
    from ledger.agreement import AccountKeys
    from scheduler.policy import UnitPrices

    core = pv.ProviderCore(
        pv.ProviderConfig(
            peer_id=P.peer_id, identity=P.record, cpu=1, memory_mb=1024, prices=UnitPrices(1, 1, 1)
        ),
        AccountKeys(P.account_key),
    )
    decline = core._decline("q", JOB, "busy", "d" * 5000)
    assert decode_market(encode_market(decline.message)).detail == "d" * MAX_DETAIL_CHARS
    assert msgspec.msgpack.decode(encode_market(decline.message))
