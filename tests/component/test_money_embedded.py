"""maskd.money on the embedded chain (py-evm in process): deployment at
start, the wallet RPC, a voucher received, settled and found on chain, and
hostile payments scored without harm."""

from __future__ import annotations

import pytest
import trio
from eth_account import Account

from ledger import deploy as dep
from ledger.vouchers import sign_voucher
from maskd.config import load_config
from maskd.money import Money, create_address
from protocol.errors import RpcError
from protocol.market import Payment

JOB = "ab" * 32
PRICE = 7 * 10**17
PEER = "12D3KooWRequester"


def config(tmp_path, backend="embedded"):
    return load_config(
        env={},
        overrides={
            "node": {"data_dir": str(tmp_path)},
            "chain": {"backend": backend},
            "ledger": {"batch_max_age_s": 3600, "voucher_timeout_s": 3600},
        },
    )


@pytest.fixture
async def money(tmp_path, nursery):
    penalties: list[tuple[str, str]] = []
    m = Money(
        config(tmp_path),
        Account.create().key,
        data_path=tmp_path,
        clock=trio.current_time,
        penalise=lambda peer, reason: penalties.append((peer, reason)),
    )
    m.penalties = penalties
    await nursery.start(m.run)
    with trio.fail_after(60):
        await m.connected.wait()
    return m


async def funded_requester(money) -> bytes:
    """A requester on the node's embedded chain with 10 MASK deposited."""
    key = Account.create().key
    chain = money.chain
    key0 = chain.dev_keys()[0]

    def setup():
        dep.fund(chain, key0, Account.from_key(key).address, 10**18, 10 * 10**18, token=money.token)
        dep.deposit(chain, key, money.domain.escrow, money.token, 10 * 10**18)

    await trio.to_thread.run_sync(setup)
    return key


def test_the_embedded_escrow_address_is_known_before_deployment():
    key0 = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"  # eth-tester's first dev key
    assert create_address(key0, 0) == "0xF2E246BB76DF876Cef8b38ae84130F4F55De395b"
    assert create_address(key0, 1) == "0x2946259E0334f33A064106302415aD3391BeD384"


async def test_embedded_start_deploys_funds_and_deposits(money):
    balance = await money.rpc_balance({})
    assert balance["address"] == money.address
    assert balance["deposit"] == balance["available"] == str(10**21)
    assert int(balance["eth"]) > 0 and balance["owed_to_me"] == balance["owed_by_me"] == "0"
    ledger = await money.rpc_ledger({})
    assert ledger["chain"] == {
        "backend": "embedded",
        "rpc_url": "embedded",
        "chain_id": 31337,
        "confirmations": 1,
    }
    assert ledger["contracts"]["escrow"] == money.domain.escrow
    assert ledger["status"]["state"] == "ok"
    got = await money.rpc_deposit({"amount": str(5 * 10**18)})
    assert got["deposit"] == str(10**21 + 5 * 10**18) and got["tx_hash"].startswith("0x")
    with pytest.raises(RpcError) as bad:
        await money.rpc_deposit({"amount": "-5"})
    assert bad.value.code == "bad_amount" and bad.value.hint
    with pytest.raises(RpcError) as broke:
        await money.rpc_withdraw({})  # nothing earned yet
    assert broke.value.code == "nothing_to_withdraw"


async def test_a_voucher_is_kept_settled_and_paid_on_chain(money):
    rkey = await funded_requester(money)
    requester = Account.from_key(rkey).address
    # the quote check reads the requester's escrow once, then trusts the cache
    assert money.funds(requester) is None and not money.funds_fresh(requester)
    await money.refresh_funds(requester)
    assert money.funds_fresh(requester)
    assert money.funds(requester).available == 10 * 10**18
    await money.expect(JOB, PEER, requester, PRICE)
    assert money.payment_state(JOB)["state"] == "awaiting_voucher"
    assert money.funds(requester).owes == PRICE
    voucher = sign_voucher(money.domain, rkey, money.address, PRICE)
    pay = Payment(job_id=JOB, peer_id=PEER, cumulative=str(PRICE), signature=voucher.signature)
    await money.payment(PEER, pay)
    assert money.payment_state(JOB) == {"state": "paid"}
    assert money.penalties == []
    settled = await money.rpc_settle({"wait": True})
    [batch] = settled["batches"]
    assert batch["status"] == "final" and batch["gas_used"] > 0
    # the chain itself, not the ledger's word
    escrow = money.escrow
    assert await escrow.earnings(money.address) == PRICE
    assert await escrow.settled(requester, money.address) == PRICE
    assert await escrow.deposits(requester) == 10 * 10**18 - PRICE
    # the same voucher again pays nothing twice
    await money.payment(PEER, pay)
    assert (await money.rpc_settle({}))["batches"] == []
    assert await escrow.earnings(money.address) == PRICE
    before = await escrow.token_balance(money.address)
    withdrawn = await money.rpc_withdraw({})
    assert withdrawn["amount"] == str(PRICE)
    assert await escrow.token_balance(money.address) == before + PRICE
    assert await escrow.earnings(money.address) == 0


async def test_hostile_payments_are_rejected_scored_and_harmless(money):
    rkey = await funded_requester(money)
    requester = Account.from_key(rkey).address
    await money.expect(JOB, PEER, requester, PRICE)
    forged = sign_voucher(money.domain, Account.create().key, money.address, PRICE)
    cases = [
        (
            PEER,
            Payment(job_id=JOB, peer_id=PEER, cumulative=str(PRICE), signature=forged.signature),
        ),
        (PEER, Payment(job_id=JOB, peer_id=PEER, cumulative="1" * 90, signature=b"\0" * 65)),
        (PEER, Payment(job_id=JOB, peer_id=PEER, cumulative=str(PRICE), signature=b"\1" * 3)),
        ("12D3KooWSomeoneElse", Payment(job_id=JOB, peer_id="x", cumulative="1", signature=b"")),
        (PEER, Payment(job_id="cd" * 32, peer_id=PEER, cumulative="1", signature=b"")),
    ]
    for source, pay in cases:
        await money.payment(source, pay)
    assert money.penalties == [
        (PEER, "bad_signature"),
        (PEER, "bad_field"),
        (PEER, "bad_field"),
        ("12D3KooWSomeoneElse", "source_mismatch"),
    ]  # an unknown job is counted, not scored: our own crash may have lost it
    assert money.payment_state(JOB)["state"] == "awaiting_voucher"
    assert money.ledger.counters["payment_unknown_job"] == 1
    # and the honest voucher still pays
    ok = sign_voucher(money.domain, rkey, money.address, PRICE)
    await money.payment(
        PEER, Payment(job_id=JOB, peer_id=PEER, cumulative=str(PRICE), signature=ok.signature)
    )
    assert money.payment_state(JOB) == {"state": "paid"}


async def test_chain_off_answers_with_a_reason(tmp_path):
    m = Money(
        config(tmp_path, "off"), Account.create().key, data_path=tmp_path, clock=trio.current_time
    )
    assert not m.enabled and m.ledger is None and m.payment_state(JOB) is None
    with pytest.raises(RpcError) as off:
        await m.rpc_balance({})
    assert off.value.code == "chain_off" and "backend" in off.value.hint
    assert (await m.rpc_ledger({}))["status"]["state"] == "off"
    assert (await m.rpc_show({}))["address"] == m.address


async def test_a_job_left_without_its_voucher_is_voucher_missing_in_explain(tmp_path, nursery):
    from maskd.jobs_rpc import provider_explanation
    from scheduler.jobstate import JobState
    from scheduler.store import JobRow

    cfg = load_config(
        env={},
        overrides={
            "node": {"data_dir": str(tmp_path)},
            "ledger": {"voucher_timeout_s": 0.5, "batch_max_age_s": 3600},
        },
    )
    m = Money(cfg, Account.create().key, data_path=tmp_path, clock=trio.current_time)
    await nursery.start(m.run)
    with trio.fail_after(60):
        await m.connected.wait()
    requester = Account.create().address
    await m.expect(JOB, PEER, requester, PRICE)
    row = JobRow(
        JOB,
        "provider",
        JobState.COMPLETED,
        {},
        None,
        None,
        None,
        str(PRICE),
        None,
        "bafyout",
        None,
        None,
        0.0,
        0.0,
    )
    assert (
        "waiting for the requester's voucher"
        in provider_explanation(row, m.payment_state(JOB))["text"]
    )
    with trio.fail_after(30):
        while m.payment_state(JOB)["state"] != "voucher_missing":
            await m.ledger.changed.wait()
    e = provider_explanation(row, m.payment_state(JOB))
    assert e["payment"]["state"] == "voucher_missing" and "voucher_missing" in e["text"]
    assert m.ledger.standing(requester).voucher_missing == 1
    missing = (await m.rpc_ledger({}))["missing"]
    assert [x["job_id"] for x in missing] == [JOB]
    assert "none expected" in provider_explanation(row, None)["text"]
