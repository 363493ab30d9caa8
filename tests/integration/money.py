"""A real chain for the money integration tests: anvil with the contracts on it.

The daemons reach it as users do (``[chain] backend = "rpc"``), through their
environment because ``tests/conftest.py`` turns every test node's chain off
and the environment wins over config files. The test reads the chain itself
(``earnings``, ``settled``, ``deposits``, ``VoucherSettled`` logs) with its own
web3 client, never through a daemon: what the daemons say about money is
what is being checked. ``python -m tests.integration.money`` also runs a
daemon that dies on its first voucher (a voucher lost to a provider crash).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account

from ledger.anvil import start_anvil
from ledger.contracts import ESCROW, load_artifact
from ledger.deploy import Deployment, deploy, fund
from ledger.devchain import ChainProcess
from maskd.devnet import DevnetError, DevNode, wait_full_view, wait_until

MASK = 10**18

#: Short ledger timers so settlements, retries and escrow reads happen in seconds.
FAST_LEDGER = {
    "MASK_LEDGER_BATCH_MAX_AGE_S": "2",
    "MASK_LEDGER_ESCROW_CACHE_S": "1",
    "MASK_LEDGER_RETRY_BASE_S": "0.5",
    "MASK_LEDGER_RETRY_MAX_S": "4",
    "MASK_CHAIN_POLL_INTERVAL_S": "0.5",
    "MASK_CHAIN_TIMEOUT_S": "5",
}


@dataclass(frozen=True, slots=True)
class Settlement:
    """One ``VoucherSettled`` log."""

    tx_hash: str
    requester: str
    provider: str
    cumulative: int
    paid: int


class Anvil:
    """anvil on 127.0.0.1 with MaskToken and SettlementEscrow deployed from its
    first dev key (the treasury). Stopped and restarted by PID on the same port
    with its chain kept (``ledger.anvil``)."""

    def __init__(self, root: Path):
        self.root = root
        self.process: ChainProcess = start_anvil(root, keep_state=False)
        self.chain = self.process.client()
        self.treasury = self.chain.dev_keys()[0]
        self.deployment: Deployment = deploy(
            self.chain,
            self.treasury,
            Account.from_key(self.treasury).address,
            10**9 * MASK,
            3600,
            0,
        )
        self._escrow = self.chain.contract(self.deployment.escrow, load_artifact(ESCROW).abi)

    @property
    def url(self) -> str:
        return self.process.url

    def node_env(self, **overrides: str) -> dict[str, str]:
        """What a daemon needs to use this chain (``MASK_*`` variables)."""
        d = self.deployment
        return {
            "MASK_CHAIN_BACKEND": "rpc",
            "MASK_CHAIN_RPC_URL": self.url,
            "MASK_CHAIN_CHAIN_ID": str(d.chain_id),
            "MASK_CHAIN_TOKEN": d.token,
            "MASK_CHAIN_ESCROW": d.escrow,
            **FAST_LEDGER,
            **overrides,
        }

    # --- the process ------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM by PID (anvil writes its state), wait for the exit."""
        self.process.stop()

    def restart(self) -> None:
        """Start again on the same port with the chain as it was."""
        port = self.process.port
        self.process = start_anvil(self.root, port=port, keep_state=True)
        self.chain = self.process.client()
        self._escrow = self.chain.contract(self.deployment.escrow, load_artifact(ESCROW).abi)

    def raw(self, method: str, params: list[Any]) -> Any:
        """A raw JSON-RPC call (anvil's ``evm_*`` methods)."""
        answer = self.chain.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        assert "error" not in answer, answer
        return answer.get("result")

    def set_automine(self, on: bool) -> None:
        """Off: sent transactions wait in the mempool until :meth:`mine`."""
        self.raw("evm_setAutomine", [on])

    def mine(self) -> None:
        self.raw("evm_mine", [])

    # --- money --------------------------------------------------------------------

    def fund(self, address: str, *, eth: int = MASK, mask: int = 0) -> None:
        """The faucet: ETH for gas, MASK from the treasury."""
        fund(self.chain, self.treasury, address, eth, mask, token=self.deployment.token)

    def _view(self, fn: str, *args: Any) -> Any:
        return self.chain.call(self._escrow, fn, *args)

    def earnings(self, provider: str) -> int:
        return int(self._view("earnings", provider))

    def deposits(self, requester: str) -> int:
        return int(self._view("deposits", requester))

    def settled(self, requester: str, provider: str) -> int:
        return int(self._view("settled", requester, provider))

    def settlements(self) -> list[Settlement]:
        """Every ``VoucherSettled`` since the escrow was deployed."""
        logs = self._escrow.events.VoucherSettled.get_logs(from_block=self.deployment.block)
        return [
            Settlement(
                tx_hash=log["transactionHash"].to_0x_hex(),
                requester=log["args"]["requester"],
                provider=log["args"]["provider"],
                cumulative=int(log["args"]["cumulative"]),
                paid=int(log["args"]["paid"]),
            )
            for log in logs
        ]

    def skipped(self) -> list[dict[str, Any]]:
        """Every ``VoucherSkipped`` (args) since the escrow was deployed."""
        logs = self._escrow.events.VoucherSkipped.get_logs(from_block=self.deployment.block)
        return [dict(log["args"]) for log in logs]


# --- the daemons' side --------------------------------------------------------------


def start_nodes(cluster: Any, n: int, env: dict[str, str], timeout: float = 60) -> list[DevNode]:
    """``n`` maskd on ``env``'s chain, bootstrapped to the first, each seeing
    every offer (``Cluster.node``: the environment is passed as given)."""
    first = cluster.node("n0", env=env, start=False)
    first.start().wait_ready(timeout)
    rest = [
        cluster.node(f"n{i}", bootstrap=[first.addrs[0]], env=env, start=False) for i in range(1, n)
    ]
    for node in rest:
        node.start()
    for node in rest:
        node.wait_ready(timeout)
    nodes = [first, *rest]
    wait_full_view(nodes, timeout)
    return nodes


def account(node: DevNode) -> str:
    return node.call("v1.wallet.show")["address"]


def wait_connected(nodes: Iterable[DevNode], timeout: float = 30) -> None:
    for node in nodes:
        wait_until(
            lambda node=node: node.call("v1.node.info")["chain"]["connected"],
            timeout,
            f"{node.data_dir.name} to reach the chain",
            interval=0.1,
        )


def ledger_view(node: DevNode) -> dict[str, Any]:
    return node.call("v1.ledger.show")


def owed_by_provider(requester: DevNode) -> dict[str, int]:
    """The requester's owed rows summed per provider account: what each earned."""
    totals: dict[str, int] = {}
    for e in requester.call("v1.jobs.owed")["entries"]:
        totals[e["provider_account"]] = totals.get(e["provider_account"], 0) + int(e["amount"])
    return totals


def channel_in(provider: DevNode, requester_account: str) -> dict[str, Any] | None:
    """The provider's ledger row for what ``requester_account`` pays it."""
    rows = [
        c
        for c in ledger_view(provider)["channels"]
        if c["direction"] == "in" and c["requester"] == requester_account
    ]
    return rows[0] if rows else None


def wait_vouchers_received(
    providers: Iterable[DevNode], requester_account: str, owed: dict[str, int], timeout: float
) -> None:
    """Until every provider holds a voucher for all it is owed and has no unpaid job."""
    for p in providers:
        want = owed.get(account(p), 0)

        def received(p: DevNode = p, want: int = want) -> bool:
            row = channel_in(p, requester_account)
            if row is None:
                return want == 0
            return int(row["cumulative"]) == want and row["unpaid_jobs"] == 0

        try:
            wait_until(received, timeout, f"{p.data_dir.name} to hold a voucher for {want}", 0.2)
        except DevnetError as e:
            view = ledger_view(p)
            raise AssertionError(
                f"{e}; its channels: {view['channels']}; missing: {view['missing']}"
            ) from None


def settle_all(providers: Iterable[DevNode], timeout: float = 60) -> None:
    """``mask ledger settle`` on each provider (sends what is pending, waits)."""
    for p in providers:
        p.call("v1.ledger.settle", {"wait": True}, timeout=timeout)


def wait_settled_on_chain(
    chain: Anvil, requester_account: str, owed: dict[str, int], timeout: float
) -> None:
    def done() -> bool:
        return all(
            chain.settled(requester_account, prov) == amount for prov, amount in owed.items()
        )

    wait_until(done, timeout, "every channel to be settled on chain", interval=0.25)


# --- a provider that dies on its first voucher ---------------------------------------
#
#     python -m tests.integration.money crash_on_first_payment -- <python> -m maskd.daemon ARGS
#
# runs the real daemon with one function swapped (like tests/hostile/launch.py):
# the first Payment it receives kills it with SIGKILL before its ledger records
# the voucher, once per MASK_TEST_CRASH_MARKER file. To the requester the
# voucher was delivered; to the provider it never arrived.

CRASH_MARKER_ENV = "MASK_TEST_CRASH_MARKER"


def crash_on_first_payment() -> None:
    from maskd.money import Money

    honest = Money.payment
    marker = Path(os.environ[CRASH_MARKER_ENV])

    async def crashing(self: Money, source: str, payment: Any) -> None:
        if not marker.exists():
            marker.write_text(f"killed on the voucher for {payment.job_id}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        await honest(self, source, payment)

    Money.payment = crashing  # type: ignore[method-assign]


def crash_prefix() -> list[str]:
    """``DevNode.prefix`` that runs the daemon under :func:`crash_on_first_payment`."""
    return [sys.executable, "-m", "tests.integration.money", "crash_on_first_payment", "--"]


def _launch(argv: list[str]) -> None:
    name, sep, *rest = argv
    assert name == "crash_on_first_payment" and sep == "--", argv
    while rest and rest[0] != "maskd.daemon":  # drop "<python> -m": this process is it
        rest.pop(0)
    crash_on_first_payment()
    from maskd.daemon import main as daemon_main

    daemon_main(args=rest[1:], prog_name="maskd")


if __name__ == "__main__":
    _launch(sys.argv[1:])
