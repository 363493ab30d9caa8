"""A fake escrow for tests: :class:`FakeEscrow` implements ``EscrowPort`` in memory.

It keeps the contract's rules (docs/ledger.md) so tests of the ledger service
mean something: ``settleBatch`` pays ``cumulative - settled`` into the
provider's earnings for each voucher signed by its requester, and skips the
rest with the contract's reasons (bad signature, not an increase, deposit too
small, zero address); a transaction asking for less gas than it needs is mined
reverted. Signatures are checked for real (``verify_voucher``).

Knobs for the failures the service must survive:

- ``unreachable``: every call raises a transient ``ChainError``.
- ``revert_next``: the next N transactions are mined reverted (gas burnt).
- ``auto_mine``: False keeps sent transactions in a mempool until :meth:`mine`.
- :meth:`reorg` takes a mined transaction out of the chain and undoes its
  effects (``requeue=True`` puts it back in the mempool instead of dropping it).
- ``gas_per_voucher`` / ``base_gas``: what :meth:`estimate_settle` answers.
- :meth:`advance` mines empty blocks (confirmations).
- ``on_send``: called with the vouchers before (``before_send``) or after
  (``after_send``) a transaction is accepted; raise in it to simulate a crash.

No threads, no clock: deterministic under ``MockClock``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ledger.core import (
    SKIP_BAD_SIGNATURE,
    SKIP_INSUFFICIENT_DEPOSIT,
    SKIP_NOT_INCREASE,
    SKIP_ZERO_ADDRESS,
    TX_GAS_CAP,
)
from ledger.ports import ChainError, Settled, SettleReceipt, Skipped
from ledger.vouchers import Domain, SignedVoucher, verify_voucher

__all__ = ["FakeEscrow"]

ZERO = "0x" + "00" * 20
FAKE_ESCROW = "0x" + "e5" * 20


@dataclass
class _Tx:
    tx_hash: str
    vouchers: tuple[SignedVoucher, ...]
    gas: int
    receipt: SettleReceipt | None = None
    #: what executing it changed, to undo on a reorg: (requester, provider, before, paid)
    undo: list[tuple[str, str, int, int]] = field(default_factory=list)


class FakeEscrow:
    def __init__(
        self,
        *,
        chain_id: int = 31337,
        escrow_address: str = FAKE_ESCROW,
        base_gas: int = 40_000,
        gas_per_voucher: int = 60_000,
    ):
        self.chain_id = chain_id
        self.escrow_address = escrow_address
        self.domain = Domain(chain_id, escrow_address)
        self.base_gas = base_gas
        self.gas_per_voucher = gas_per_voucher
        self.head = 0
        self.deposits: Counter[str] = Counter()
        self.unlocking: Counter[str] = Counter()
        self.earnings: Counter[str] = Counter()
        self._settled: Counter[tuple[str, str]] = Counter()
        self.unreachable = False
        self.revert_next = 0
        self.auto_mine = True
        self.before_send: Callable[[Sequence[SignedVoucher]], None] | None = None
        self.after_send: Callable[[Sequence[SignedVoucher]], None] | None = None
        self.mempool: list[_Tx] = []
        self.txs: dict[str, _Tx] = {}  # every transaction sent, by hash
        self.calls: Counter[str] = Counter()
        self._nonce = 0

    # --- EscrowPort -------------------------------------------------------------

    async def block_number(self) -> int:
        self._reach("block_number")
        return self.head

    async def available(self, requester: str) -> int:
        self._reach("available")
        key = requester.lower()
        return self.deposits[key] - min(self.unlocking[key], self.deposits[key])

    async def settled(self, requester: str, provider: str) -> int:
        self._reach("settled")
        return self._settled[(requester.lower(), provider.lower())]

    async def estimate_settle(self, vouchers: Sequence[SignedVoucher]) -> int:
        self._reach("estimate_settle")
        return self.gas_needed(len(vouchers))

    async def send_settle(self, vouchers: Sequence[SignedVoucher], gas: int) -> str:
        self._reach("send_settle")
        if gas > TX_GAS_CAP:
            raise ChainError(
                f"gas {gas} is over the EIP-7825 cap {TX_GAS_CAP}",
                transient=False,
                hint="lower ledger.batch_gas_limit",
            )
        if self.before_send is not None:
            self.before_send(vouchers)
        self._nonce += 1
        digest = hashlib.sha256(f"{self._nonce}:{len(vouchers)}:{gas}".encode()).hexdigest()
        tx = _Tx("0x" + digest, tuple(vouchers), gas)
        self.txs[tx.tx_hash] = tx
        self.mempool.append(tx)
        if self.auto_mine:
            self.mine()
        if self.after_send is not None:
            self.after_send(vouchers)
        return tx.tx_hash

    async def receipt(self, tx_hash: str) -> SettleReceipt | None:
        self._reach("receipt")
        tx = self.txs.get(tx_hash)
        return None if tx is None else tx.receipt

    # --- knobs ----------------------------------------------------------------

    def deposit(self, requester: str, amount: int) -> None:
        self.deposits[requester.lower()] += amount

    def settled_now(self, requester: str, provider: str) -> int:
        return self._settled[(requester.lower(), provider.lower())]

    def gas_needed(self, count: int) -> int:
        return self.base_gas + self.gas_per_voucher * count

    def advance(self, blocks: int = 1) -> None:
        self.head += blocks

    def mine(self) -> list[str]:
        """Mine every transaction in the mempool, one block each."""
        mined = []
        while self.mempool:
            tx = self.mempool.pop(0)
            self.head += 1
            self._execute(tx)
            mined.append(tx.tx_hash)
        return mined

    def reorg(self, tx_hash: str, *, requeue: bool = False) -> None:
        """Take a mined transaction out of the canonical chain, undoing what it paid."""
        tx = self.txs[tx_hash]
        if tx.receipt is None:
            raise ValueError(f"{tx_hash} is not mined")
        for requester, provider, before, paid in reversed(tx.undo):
            self._settled[(requester, provider)] = before
            self.deposits[requester] += paid
            self.earnings[provider] -= paid
        tx.undo.clear()
        tx.receipt = None
        if requeue:
            self.mempool.append(tx)

    # --- the contract's rules ---------------------------------------------------

    def _execute(self, tx: _Tx) -> None:
        needed = self.gas_needed(len(tx.vouchers))
        if self.revert_next > 0 or tx.gas < needed:
            self.revert_next = max(self.revert_next - 1, 0)
            tx.receipt = SettleReceipt(tx.tx_hash, self.head, False, min(tx.gas, needed))
            return
        settled, skipped = [], []
        for v in tx.vouchers:
            req, prov = v.requester.lower(), v.provider.lower()
            reason = self._skip_reason(v)
            if reason:
                skipped.append(Skipped(v.requester, v.provider, v.cumulative, reason))
                continue
            before = self._settled[(req, prov)]
            paid = v.cumulative - before
            self._settled[(req, prov)] = v.cumulative
            self.deposits[req] -= paid
            self.earnings[prov] += paid
            tx.undo.append((req, prov, before, paid))
            settled.append(Settled(v.requester, v.provider, v.cumulative, paid))
        tx.receipt = SettleReceipt(tx.tx_hash, self.head, True, needed, settled, skipped)

    def _skip_reason(self, v: SignedVoucher) -> int:
        if v.requester.lower() == ZERO or v.provider.lower() == ZERO:
            return SKIP_ZERO_ADDRESS
        if not verify_voucher(self.domain, v):
            return SKIP_BAD_SIGNATURE
        req, prov = v.requester.lower(), v.provider.lower()
        increase = v.cumulative - self._settled[(req, prov)]
        if increase <= 0:
            return SKIP_NOT_INCREASE
        if self.deposits[req] < increase:
            return SKIP_INSUFFICIENT_DEPOSIT
        return 0

    def _reach(self, call: str) -> None:
        self.calls[call] += 1
        if self.unreachable:
            raise ChainError(
                "chain unreachable: connection refused (fake)",
                transient=True,
                hint="is the node running? check chain.rpc_url",
            )
