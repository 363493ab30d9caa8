"""The end of ``mask demo``: the providers settle on chain and are paid.

After the jobs, the demo waits until every provider holds the requester's
voucher for what it is owed (vouchers travel over the mesh after the
requester verified a result, so a job can be ``completed`` a moment before
its voucher arrives), has each provider settle (``v1.ledger.settle`` with
``wait``), and reads the outcome twice: from the daemons (``v1.wallet.balance``
earnings, ``v1.ledger.show`` batches) and from the chain itself (the escrow's
``earnings(provider)``). :func:`summarise_settlement` is pure: it compares
what the requester owes each provider with both readings and says, in words,
where any two disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ledger.ports import ChainError
from maskd.devnet import DevNode, wait_until
from maskd.devnet_chain import DevChain
from protocol.errors import MaskError

__all__ = [
    "ERC20_TRANSFER_GAS",
    "ProviderPay",
    "ProviderView",
    "Settlement",
    "settle_devnet",
    "summarise_settlement",
]

Progress = Callable[[str], None]

#: One ERC-20 transfer to an existing holder (docs/BENCHMARKS.md): what paying
#: each job on chain would cost instead of one voucher per channel.
ERC20_TRANSFER_GAS = 34_326


@dataclass(frozen=True, slots=True)
class ProviderView:
    """What a provider node and the chain say after settling."""

    node: str  # node name, e.g. "node2"
    account: str
    earnings_rpc: int | None  # v1.wallet.balance "earnings"; None: unreadable
    earnings_chain: int | None  # escrow.earnings(account) read directly
    batches: tuple[tuple[str, int], ...] = ()  # (status, gas_used) of its batches
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderPay:
    """One provider's line of the summary (amounts in base units)."""

    node: str
    account: str
    jobs: int
    owed: int  # what the requester's owed entries add up to
    earned: int | None  # the daemon's reading
    on_chain: int | None  # the chain's reading
    transactions: int  # final settlement batches
    gas_used: int


@dataclass(frozen=True, slots=True)
class Settlement:
    providers: tuple[ProviderPay, ...]
    seconds: float
    disagreements: tuple[str, ...]

    @property
    def jobs(self) -> int:
        return sum(p.jobs for p in self.providers)

    @property
    def transactions(self) -> int:
        return sum(p.transactions for p in self.providers)

    @property
    def gas_used(self) -> int:
        return sum(p.gas_used for p in self.providers)

    @property
    def paid(self) -> int:
        return sum(p.on_chain or 0 for p in self.providers)

    @property
    def gas_per_job(self) -> float | None:
        return self.gas_used / self.jobs if self.jobs else None

    @property
    def ok(self) -> bool:
        return not self.disagreements


def _key(account: str) -> str:
    return account.lower()


def summarise_settlement(
    owed_entries: Sequence[Mapping[str, Any]],
    views: Sequence[ProviderView],
    seconds: float,
    *,
    format_amount: Callable[[int | None], str] = str,
) -> Settlement:
    """Per provider the requester owes: jobs, owed, earnings (daemon and chain),
    final batches and their gas; a sentence for each disagreement."""
    owed: dict[str, int] = {}
    jobs: dict[str, int] = {}
    for e in owed_entries:
        k = _key(str(e["provider_account"]))
        owed[k] = owed.get(k, 0) + int(e["amount"])
        jobs[k] = jobs.get(k, 0) + 1
    by_account = {_key(v.account): v for v in views}
    rows, problems = [], []
    for k in sorted(owed, key=lambda a: by_account[a].node if a in by_account else "~" + a):
        view = by_account.get(k)
        if view is None:
            problems.append(f"{k}: owed {format_amount(owed[k])} MASK but is no node of the devnet")
            rows.append(ProviderPay("?", k, jobs[k], owed[k], None, None, 0, 0))
            continue
        final = [gas for status, gas in view.batches if status == "final"]
        rows.append(
            ProviderPay(
                view.node,
                view.account,
                jobs[k],
                owed[k],
                view.earnings_rpc,
                view.earnings_chain,
                len(final),
                sum(final),
            )
        )
        name = f"{view.node} ({view.account})"
        if view.error is not None:
            problems.append(f"{name}: {view.error}")
        if view.earnings_rpc != view.earnings_chain:
            problems.append(
                f"{name}: the daemon reports earnings of {format_amount(view.earnings_rpc)} MASK, "
                f"the escrow on chain {format_amount(view.earnings_chain)} MASK"
            )
        if view.earnings_chain != owed[k]:
            problems.append(
                f"{name}: owed {format_amount(owed[k])} MASK for {jobs[k]} jobs, "
                f"earned {format_amount(view.earnings_chain)} MASK on chain"
            )
    return Settlement(tuple(rows), seconds, tuple(problems))


def _channel_cumulative(ledger: Mapping[str, Any], requester: str) -> int:
    for ch in ledger.get("channels", []):
        if ch.get("direction") == "in" and _key(str(ch.get("requester"))) == _key(requester):
            return int(ch.get("cumulative") or 0)
    return 0


def _covers(held: int | str | None, owed: int) -> bool:
    return isinstance(held, int) and held >= owed


def wait_vouchers(
    providers: Mapping[str, DevNode], requester: str, owed: Mapping[str, int], timeout: float
) -> list[str]:
    """Wait until each provider holds a voucher covering what ``requester`` owes
    it; after ``timeout``, a line per provider still short, with its ledger's
    payment counters (the settlement then shows the shortfall)."""
    held: dict[str, int | str] = {}
    counters: dict[str, str] = {}

    def arrived() -> bool:
        for account, node in providers.items():
            try:
                ledger = node.call("v1.ledger.show")
                held[account] = _channel_cumulative(ledger, requester)
                counted = ledger.get("counters") or {}
                counters[account] = ", ".join(f"{k} {v}" for k, v in sorted(counted.items()) if v)
            except MaskError as e:
                held[account] = f"unreadable ({e})"
        return all(_covers(held[a], owed[a]) for a in providers)

    try:
        wait_until(arrived, timeout, "every provider to hold its voucher", interval=0.1)
    except MaskError:
        return [
            f"{providers[a].data_dir.name} holds a voucher for {held.get(a)} of {owed[a]} "
            f"base units (its ledger counted: {counters.get(a) or 'nothing'})"
            for a in providers
            if not _covers(held.get(a), owed[a])
        ]
    return []


def _view(node: DevNode, account: str, earnings_on_chain: Callable[[str], int]) -> ProviderView:
    rpc: int | None = None
    chain: int | None = None
    batches: tuple[tuple[str, int], ...] = ()
    errors = []
    try:
        rpc = int(node.call("v1.wallet.balance", timeout=30)["earnings"])
        batches = tuple(
            (str(b["status"]), int(b.get("gas_used") or 0))
            for b in node.call("v1.ledger.show", timeout=30)["batches"]
        )
    except (MaskError, KeyError, TypeError, ValueError) as e:
        errors.append(f"reading its balance failed: {e}")
    try:
        chain = earnings_on_chain(account)
    except (ChainError, MaskError, ValueError) as e:
        errors.append(f"reading the escrow failed: {e}")
    return ProviderView(node.data_dir.name, account, rpc, chain, batches, "; ".join(errors) or None)


def escrow_earnings_reader(chain: DevChain) -> Callable[[str], int]:
    """``earnings(provider)`` read from the escrow contract, not through a daemon."""
    from ledger.contracts import ESCROW, load_artifact

    client = chain.client(timeout_s=30)
    escrow = client.contract(chain.escrow, load_artifact(ESCROW).abi)
    return lambda account: int(client.call(escrow, "earnings", account))


def settle_devnet(
    nodes: Sequence[DevNode],
    requester: DevNode,
    chain: DevChain,
    progress: Progress,
    *,
    timeout: float = 60.0,
    format_amount: Callable[[int | None], str] = str,
) -> Settlement:
    """Settle what ``requester`` owes on every provider of the devnet and report."""
    started = time.monotonic()
    addresses = {n.data_dir.name: str(n.call("v1.wallet.show")["address"]) for n in nodes}
    accounts = {_key(addresses[n.data_dir.name]): n for n in nodes}
    requester_account = addresses[requester.data_dir.name]
    entries = requester.call("v1.jobs.owed", timeout=30)["entries"]
    owed: dict[str, int] = {}
    for e in entries:
        k = _key(str(e["provider_account"]))
        owed[k] = owed.get(k, 0) + int(e["amount"])
    providers = {a: accounts[a] for a in owed if a in accounts}
    short = wait_vouchers(providers, requester_account, owed, timeout=min(timeout, 30.0))
    for line in short:
        progress(f"a voucher is missing: {line}")
    progress(
        f"settling {len(entries)} jobs on {len(providers)} providers "
        f"({', '.join(sorted(n.data_dir.name for n in providers.values()))})"
    )
    errors: list[str] = []

    def settle(node: DevNode) -> None:
        try:
            node.call("v1.ledger.settle", {"wait": True}, timeout=timeout)
        except MaskError as e:
            errors.append(f"{node.data_dir.name}: {e}")

    with ThreadPoolExecutor(max_workers=max(1, min(len(providers), 8))) as pool:
        list(pool.map(settle, providers.values()))
    for line in errors:
        progress(f"settling failed on {line}")
    read = escrow_earnings_reader(chain)
    views = [
        _view(node, addresses[node.data_dir.name], read)
        for account, node in accounts.items()
        if account in owed
    ]
    return summarise_settlement(
        entries, views, time.monotonic() - started, format_amount=format_amount
    )
