"""The one verdict vocabulary: what each verdict does, and the reason strings peers see."""

import pytest

from protocol.verdict import Outcome, Reason, Verdict


@pytest.mark.parametrize(
    ("verdict", "delivers", "penalises"),
    [
        (Verdict.ACCEPT, True, False),
        (Verdict.IGNORE, False, False),
        (Verdict.REJECT, False, True),
    ],
)
def test_each_verdict_maps_to_gossipsub_and_scoring(verdict, delivers, penalises):
    assert (verdict.delivers, verdict.penalises) == (delivers, penalises)


def test_verdict_values_are_gossipsubs_names():
    assert [v.value for v in Verdict] == ["accept", "ignore", "reject"]


def test_reason_values_never_change():
    # Counter names in `mask status` and keys of p2p.scoring.PENALTIES.
    assert {r.value for r in Reason} == {
        "ok",
        "too_large",
        "undecodable",
        "bad_signature",
        "source_mismatch",
        "expired",
        "from_future",
        "ttl_too_long",
        "duplicate",
        "stale_seq",
        "bad_identity",
        "bad_field",
        "wrong_topic",
        "deadline_passed",
        "rate_limited",
        "validator_error",
        "garbage_frame",
    }


def test_an_outcome_carries_no_message_unless_given_one():
    out = Outcome(Verdict.IGNORE, Reason.EXPIRED)
    assert (out.message, out.detail) == (None, "")
