"""The DApp part of `mask demo`: what it expects of private_stats over the
example's values, and each way a request can fall short, in words."""

from dataclasses import replace

from maskd.demo import examples_dir, format_mask
from maskd.demo_dapp import (
    DAPP_PAYMENT,
    DappResult,
    Stats,
    dapp_rows,
    expected_stats,
    judge,
    load_dataset,
)
from zkp.poseidon import poseidon

PROVIDER = "0x1724C22e14E40fBbd3aF43bABe2b1BeaD1AA3897"
EXPECTED = Stats(89085, 8, 5567, 5500)


def answered(**changes) -> DappResult:
    r = DappResult(
        request_id=1,
        dapp="0xA3183498b579bd228aa2B62101C40CC1da978F24",
        expected=EXPECTED,
        payment=DAPP_PAYMENT,
        ask_gas=243_544,
        state="fulfilled",
        provider=PROVIDER,
        provider_node="node2",
        paid=DAPP_PAYMENT,
        fulfil_gas=433_044,
        fulfil_tx="0x" + "ab" * 32,
        stored=EXPECTED,
        seconds=10.2,
    )
    return replace(r, **changes)


def test_the_example_dataset_and_its_statistics():
    values, threshold, commitment = load_dataset(examples_dir() / "zk-stats")
    assert len(values) == 16 and poseidon(values) == commitment
    assert expected_stats(values, threshold) == EXPECTED
    assert expected_stats([1, 2, 3, 10], 2) == Stats(16, 2, 4, 2)  # strictly above, floor


def test_a_fulfilled_request_with_the_right_statistics_and_payment_is_ok():
    r = answered()
    assert r.ok and judge(r) == ()
    rows = dict(dapp_rows(r, format_mask))
    assert rows["stored by the DApp"] == "sum 89085, 8 above 5500, mean 5567"
    assert rows["provider"] == f"node2 ({PROVIDER})"
    assert rows["payment"] == "1 MASK asked, 1 MASK paid"
    assert rows["gas"] == "ask 243,544, fulfill 433,044"


def test_a_request_the_gateway_did_not_fulfil_says_why():
    r = answered(state="failed", reason="input_unavailable: no peer has it", stored=None)
    assert judge(r) == (
        "request 1 ended failed on node0's gateway: input_unavailable: no peer has it",
    )
    timed_out = answered(state="timed out", reason="not final after 60 s")
    assert "ended timed out on node0's gateway: not final after 60 s" in judge(timed_out)[0]


def test_wrong_statistics_an_unpaid_provider_and_a_failed_callback_are_named():
    r = answered(
        stored=Stats(89085, 7, 5567, 5500),
        paid=0,
        callback_failed=True,
        provider_node="",
    )
    problems = "\n".join(judge(r))
    assert "the DApp stored sum 89085, 7 above 5500, mean 5567; the data say sum 89085, 8" in (
        problems
    )
    assert f"received 0 base units in the fulfil transaction; the request paid {DAPP_PAYMENT}" in (
        problems
    )
    assert "callback failed" in problems
    assert f"the provider paid, {PROVIDER}, is no node of the devnet" in problems
    nothing = judge(answered(provider="", paid=None, stored=None))
    assert any("no Fulfilled event" in p for p in nothing)
    assert any("received nothing" in p for p in nothing)
    assert any("stored no result" in p for p in nothing)
    assert dict(dapp_rows(answered(paid=None, fulfil_gas=None), format_mask))["gas"] == (
        "ask 243,544, fulfill -"
    )
