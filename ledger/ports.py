"""What the ledger needs from a chain, as one small async interface.

The ledger service (``ledger/service.py``) settles through an
:class:`EscrowPort`; ``ledger/testing.py`` has a fake one for the unit tests and
``ledger/escrow.py`` the real one (web3.py in worker threads, one nonce owner
per key). Amounts are ints in token base units; addresses are EIP-55 strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ledger.vouchers import SignedVoucher

__all__ = ["ChainError", "EscrowPort", "SettleReceipt", "Settled", "Skipped"]


class ChainError(Exception):
    """A chain call failed. ``transient``: worth retrying (unreachable, timeout,
    nonce race); otherwise the request itself is wrong (a revert, bad input)."""

    def __init__(self, message: str, *, transient: bool, hint: str = ""):
        super().__init__(message)
        self.transient = transient
        self.hint = hint


@dataclass(frozen=True, slots=True)
class Settled:
    requester: str
    provider: str
    cumulative: int
    paid: int


@dataclass(frozen=True, slots=True)
class Skipped:
    requester: str
    provider: str
    cumulative: int
    reason: int  # ledger.contracts.SKIP_*


@dataclass(frozen=True, slots=True)
class SettleReceipt:
    tx_hash: str
    block_number: int
    status: bool  # False: the transaction reverted (mined, gas burnt, nothing paid)
    gas_used: int
    settled: list[Settled] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class EscrowPort(Protocol):
    """The escrow as the ledger service sees it. Every method may raise ChainError."""

    chain_id: int
    escrow_address: str

    async def block_number(self) -> int: ...

    async def available(self, requester: str) -> int:
        """The requester's deposit minus what it is taking back (``available``)."""
        ...

    async def settled(self, requester: str, provider: str) -> int: ...

    async def estimate_settle(self, vouchers: Sequence[SignedVoucher]) -> int:
        """Gas for ``settleBatch(vouchers)`` sent by this node's account."""
        ...

    async def send_settle(self, vouchers: Sequence[SignedVoucher], gas: int) -> str:
        """Send ``settleBatch``; returns the transaction hash (0x hex) once the
        node accepted it. The nonce is owned inside (one sender per key)."""
        ...

    async def receipt(self, tx_hash: str) -> SettleReceipt | None:
        """The mined receipt, or None while it is not in the canonical chain
        (pending, dropped, or reorganised away)."""
        ...
