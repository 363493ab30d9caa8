"""The settlement summary `mask demo` ends with: who earned what, in how many
transactions, at what gas per job, and every disagreement in words."""

from maskd.demo import format_mask
from maskd.demo_settlement import ProviderView, Settlement, summarise_settlement

A = "0x00000000000000000000000000000000000000A1"
B = "0x00000000000000000000000000000000000000b2"
PRICE = 16_875_000_000_000


def entry(account: str, amount: int = PRICE) -> dict:
    return {"job_id": "j", "provider_peer": "p", "provider_account": account, "amount": str(amount)}


def view(node: str, account: str, rpc: int | None, chain: int | None, *batches, error=None):
    return ProviderView(node, account, rpc, chain, tuple(batches), error)


def summary(entries, views) -> Settlement:
    return summarise_settlement(entries, views, 2.5, format_amount=format_mask)


def test_every_provider_paid_what_it_is_owed():
    entries = [entry(A), entry(B), entry(A.lower()), entry(A, 2 * PRICE)]
    s = summary(
        entries,
        [
            view("node2", B, PRICE, PRICE, ("final", 82_000)),
            view("node1", A, 4 * PRICE, 4 * PRICE, ("final", 83_000), ("reverted", 50_000)),
        ],
    )
    assert s.ok and s.disagreements == ()
    assert [(p.node, p.jobs, p.owed, p.transactions, p.gas_used) for p in s.providers] == [
        ("node1", 3, 4 * PRICE, 1, 83_000),  # a reverted batch paid nothing: not counted
        ("node2", 1, PRICE, 1, 82_000),
    ]
    assert s.jobs == 4 and s.transactions == 2 and s.paid == 5 * PRICE
    assert s.gas_per_job == (83_000 + 82_000) / 4
    assert s.seconds == 2.5


def test_daemon_and_chain_disagree():
    s = summary([entry(A)], [view("node1", A, PRICE, 0)])
    assert not s.ok
    assert any(
        "daemon reports earnings of 0.000016875 MASK, the escrow on chain 0 MASK" in d
        for d in s.disagreements
    )
    assert any(
        "owed 0.000016875 MASK for 1 jobs, earned 0 MASK on chain" in d for d in s.disagreements
    )


def test_underpaid_on_chain_is_named():
    s = summary([entry(A), entry(A)], [view("node1", A, PRICE, PRICE, ("final", 80_000))])
    assert s.disagreements == (
        f"node1 ({A}): owed 0.00003375 MASK for 2 jobs, earned 0.000016875 MASK on chain",
    )


def test_unreadable_provider_and_unknown_account():
    s = summary(
        [entry(A), entry(B)],
        [view("node1", A, None, None, error="reading the escrow failed: refused")],
    )
    text = "\n".join(s.disagreements)
    assert "reading the escrow failed: refused" in text
    assert f"{B.lower()}: owed 0.000016875 MASK but is no node of the devnet" in text
    assert [p.node for p in s.providers] == ["node1", "?"]


def test_no_jobs_no_gas_per_job():
    s = summary([], [])
    assert s.ok and s.jobs == 0 and s.gas_per_job is None and s.providers == ()
