"""The real escrow port: SettlementEscrow and MaskToken through web3.py, under trio.

web3.py is synchronous here (its async provider does not run under trio), so
every chain call is a :class:`~ledger.chain.ChainClient` method run by
``trio.to_thread.run_sync`` behind one shared ``CapacityLimiter``: the
daemon's chain traffic is bounded however many tasks want it.

Nonces: a :class:`TxSender` per signing key is the only thing that sends from
that account. It reads the ``pending`` nonce once, hands out one per send
under a lock (so concurrent sends stay ordered), and after any send error
forgets it and reads it again before the next send, because after an error
nobody knows whether the node kept the transaction (hardhat mines a reverting
one and still answers with an error; a timeout may hide an accepted one).

:class:`ChainEscrow` implements :class:`ledger.ports.EscrowPort` (what the
ledger service settles through) and the wallet operations the CLI offers.
A wallet send is estimated first, so a call the contract would refuse raises
the decoded custom error (``UnlockNotDue(unlockAt=...)``) before it costs gas;
if one still reverts on chain, it is replayed to say why.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
from eth_account import Account

from ledger.chain import ChainClient, Receipt, RevertError, checked_address
from ledger.contracts import ESCROW, REVERT_HINTS, TOKEN, load_artifact, voucher_args
from ledger.ports import ChainError, Settled, SettleReceipt, Skipped
from ledger.vouchers import MAX_UINT256, SignedVoucher, checksum

__all__ = [
    "PERMIT_TYPES",
    "PERMIT_TTL_S",
    "ChainEscrow",
    "SentTx",
    "TxSender",
    "TxSenderStats",
    "permit_signature",
]

T = TypeVar("T")

PERMIT_TTL_S = 3600  # a permit's deadline: this long after the latest block's time
GAS_MARGIN = 1.25  # over estimate_gas for wallet sends (refunds, state changes in between)
PERMIT_TYPES: dict[str, list[dict[str, str]]] = {
    "Permit": [
        {"name": "owner", "type": "address"},
        {"name": "spender", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ]
}
TOKEN_DOMAIN_NAME = "MASK"  # ERC20Permit("MASK") in contracts/src/MaskToken.sol
TOKEN_DOMAIN_VERSION = "1"


def permit_signature(
    chain_id: int,
    token: str,
    owner_key: bytes,
    spender: str,
    value: int,
    nonce: int,
    deadline: int,
) -> tuple[int, bytes, bytes]:
    """EIP-2612 ``permit`` signature (v, r, s) letting ``spender`` take ``value``
    of the owner's tokens. Pure."""
    domain = {
        "name": TOKEN_DOMAIN_NAME,
        "version": TOKEN_DOMAIN_VERSION,
        "chainId": chain_id,
        "verifyingContract": checksum(token),
    }
    message = {
        "owner": Account.from_key(owner_key).address,
        "spender": checksum(spender),
        "value": value,
        "nonce": nonce,
        "deadline": deadline,
    }
    signed = Account.sign_typed_data(owner_key, domain, PERMIT_TYPES, message)
    return int(signed.v), int(signed.r).to_bytes(32, "big"), int(signed.s).to_bytes(32, "big")


def explain_revert(error: RevertError, what: str) -> RevertError:
    """The escrow's custom errors in words for people (``ledger.contracts``)."""
    words = REVERT_HINTS.get(error.error_name)
    if words is None:
        return error
    message, hint = words
    if error.error_args:
        message += " (" + ", ".join(f"{k}={v}" for k, v in error.error_args.items()) + ")"
    explained = RevertError(
        f"{what} refused: {message}",
        error_name=error.error_name,
        error_args=error.error_args,
        data=error.data,
        hint=hint,
    )
    explained.__cause__ = error
    return explained


# --- the nonce owner ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SentTx:
    """A transaction the node accepted: its hash and what was signed."""

    tx_hash: str
    tx: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TxSenderStats:
    sent: int
    send_errors: int
    nonce_reads: int
    next_nonce: int | None  # None: read from the node before the next send


class TxSender:
    """The only sender from one key's account. Sends are serialised by a trio
    lock, so nonces go out in order with no gaps."""

    def __init__(self, chain: ChainClient, key: bytes, limiter: trio.CapacityLimiter):
        self.chain = chain
        self.address = Account.from_key(key).address
        self._key = key
        self._limiter = limiter
        self._lock = trio.Lock()
        self._nonce: int | None = None
        self._sent = 0
        self._errors = 0
        self._reads = 0

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread, behind the shared limiter."""
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self._limiter
        )

    async def send(self, build: Callable[[int], Mapping[str, Any]]) -> SentTx:
        """Build the unsigned transaction for the next nonce (``build(nonce)``
        runs in a worker thread: it may estimate gas and raise a revert, which
        uses no nonce), sign it and send it."""
        async with self._lock:
            if self._nonce is None:
                self._nonce = await self.run(self.chain.pending_nonce, self.address)
                self._reads += 1
            nonce = self._nonce
            tx = dict(await self.run(build, nonce))
            tx["nonce"] = nonce
            try:
                tx_hash = await self.run(self.chain.send_transaction, tx, self._key)
            except BaseException:
                # Did the node keep it? Unknown: ask it again before the next send.
                self._nonce = None
                self._errors += 1
                raise
            self._nonce = nonce + 1
            self._sent += 1
            return SentTx(tx_hash, tx)

    def forget_nonce(self) -> None:
        """Read the nonce from the node before the next send (after this account
        sent by another route, e.g. a wallet)."""
        self._nonce = None

    def statistics(self) -> TxSenderStats:
        return TxSenderStats(self._sent, self._errors, self._reads, self._nonce)


# --- the escrow ---------------------------------------------------------------------


def _amount(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_UINT256:
        raise ChainError(
            f"{what}: amount {value!r} is not a positive uint256",
            transient=False,
            hint="amounts are whole MASK base units (10**18 per MASK), above 0",
        )
    return value


class ChainEscrow:
    """:class:`ledger.ports.EscrowPort` over a deployed SettlementEscrow, plus
    the wallet operations of ``key``'s account. Every method may raise
    :class:`ChainError` (a revert as :class:`RevertError`)."""

    def __init__(
        self,
        chain: ChainClient,
        token_address: str,
        escrow_address: str,
        key: bytes,
        limiter: trio.CapacityLimiter,
        *,
        sender: TxSender | None = None,
        poll_interval_s: float = 0.2,
        receipt_timeout_s: float = 120.0,
    ):
        self.chain = chain
        self.chain_id = chain.chain_id
        self.token_address = checksum(token_address)
        self.escrow_address = checksum(escrow_address)
        self.sender = sender if sender is not None else TxSender(chain, key, limiter)
        if self.sender.address != Account.from_key(key).address:
            raise ValueError("the TxSender signs for another key")
        self.address = self.sender.address
        self._key = key
        self._token = chain.contract(self.token_address, load_artifact(TOKEN).abi)
        self._escrow = chain.contract(self.escrow_address, load_artifact(ESCROW).abi)
        self._abis = (self._escrow.abi, self._token.abi)
        self.poll_interval_s = poll_interval_s
        self.receipt_timeout_s = receipt_timeout_s

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.sender.run(fn, *args, **kwargs)

    async def _view(self, contract: Any, fn: str, *args: Any) -> Any:
        try:
            return await self._run(self.chain.call, contract, fn, *args, abis=self._abis)
        except RevertError as e:
            raise explain_revert(e, f"{fn}") from e.__cause__

    # EscrowPort

    async def block_number(self) -> int:
        return await self._run(self.chain.block_number)

    async def available(self, requester: str) -> int:
        return int(await self._view(self._escrow, "available", checked_address(requester)))

    async def settled(self, requester: str, provider: str) -> int:
        return int(
            await self._view(
                self._escrow, "settled", checked_address(requester), checked_address(provider)
            )
        )

    def _settle_data(self, vouchers: Sequence[SignedVoucher]) -> str:
        try:
            return self._escrow.encode_abi("settleBatch", [voucher_args(vouchers)])
        except Exception as e:  # a voucher eth_abi cannot encode (bad address, size)
            raise ChainError(
                f"cannot encode the vouchers: {str(e)[:200]}",
                transient=False,
                hint="a voucher has a malformed field; it should have been refused on receipt",
            ) from e

    async def estimate_settle(self, vouchers: Sequence[SignedVoucher]) -> int:
        data = self._settle_data(vouchers)
        tx = {"from": self.address, "to": self.escrow_address, "data": data}
        return await self._run(self.chain.estimate_gas, tx, self._abis)

    async def send_settle(self, vouchers: Sequence[SignedVoucher], gas: int) -> str:
        if not 21_000 <= gas <= 2**63:
            raise ChainError(f"settleBatch gas {gas} out of range", transient=False)
        data = self._settle_data(vouchers)

        def build(nonce: int) -> dict[str, Any]:
            return {"to": self.escrow_address, "data": data, "gas": gas, "nonce": nonce}

        sent = await self.sender.send(build)
        return sent.tx_hash

    async def receipt(self, tx_hash: str) -> SettleReceipt | None:
        got = await self._run(self.chain.receipt, tx_hash, [self._escrow])
        if got is None:
            return None
        return self._settle_receipt(got)

    def _settle_receipt(self, got: Receipt) -> SettleReceipt:
        settled: list[Settled] = []
        skipped: list[Skipped] = []
        for event in got.events:
            if event.address != self.escrow_address:
                continue
            a = event.args
            if event.name == "VoucherSettled":
                settled.append(Settled(a["requester"], a["provider"], a["cumulative"], a["paid"]))
            elif event.name == "VoucherSkipped":
                skipped.append(Skipped(a["requester"], a["provider"], a["cumulative"], a["reason"]))
        return SettleReceipt(
            tx_hash=got.tx_hash,
            block_number=got.block_number,
            status=got.status,
            gas_used=got.gas_used,
            settled=settled,
            skipped=skipped,
        )

    # wallet: views

    async def token_balance(self, account: str) -> int:
        return int(await self._view(self._token, "balanceOf", checked_address(account)))

    async def eth_balance(self, account: str) -> int:
        return await self._run(self.chain.eth_balance, account)

    async def deposits(self, account: str) -> int:
        return int(await self._view(self._escrow, "deposits", checked_address(account)))

    async def unlocking(self, account: str) -> tuple[int, int]:
        """(amount, unlockAt): the pending unlock request, zeros when none."""
        amount, at = await self._view(self._escrow, "unlocking", checked_address(account))
        return int(amount), int(at)

    async def earnings(self, account: str) -> int:
        return int(await self._view(self._escrow, "earnings", checked_address(account)))

    async def stakes(self, account: str) -> int:
        return int(await self._view(self._escrow, "stakes", checked_address(account)))

    async def unstaking(self, account: str) -> tuple[int, int]:
        amount, at = await self._view(self._escrow, "unstaking", checked_address(account))
        return int(amount), int(at)

    # wallet: sends (each waits until mined)

    async def approve_and_deposit(self, amount: int) -> Receipt:
        """Two transactions: ``approve`` then ``deposit``."""
        _amount(amount, "deposit")
        await self._transact(self._token, "approve", self.escrow_address, amount)
        return await self._transact(self._escrow, "deposit", amount)

    async def deposit_with_permit(self, amount: int) -> Receipt:
        """One transaction: an EIP-2612 permit signed here, then the deposit."""
        _amount(amount, "deposit")
        nonce = int(await self._view(self._token, "nonces", self.address))
        deadline = await self._run(self.chain.block_timestamp) + PERMIT_TTL_S
        v, r, s = permit_signature(
            self.chain_id,
            self.token_address,
            self._key,
            self.escrow_address,
            amount,
            nonce,
            deadline,
        )
        return await self._transact(self._escrow, "depositWithPermit", amount, deadline, v, r, s)

    async def withdraw(self) -> Receipt:
        """Earnings to this account's wallet."""
        return await self._transact(self._escrow, "withdraw")

    async def request_unlock(self, amount: int) -> Receipt:
        return await self._transact(self._escrow, "requestUnlock", _amount(amount, "unlock"))

    async def cancel_unlock(self) -> Receipt:
        return await self._transact(self._escrow, "cancelUnlock")

    async def reclaim(self) -> Receipt:
        return await self._transact(self._escrow, "reclaim")

    async def stake(self, amount: int) -> Receipt:
        """Two transactions: ``approve`` then ``stake``."""
        _amount(amount, "stake")
        await self._transact(self._token, "approve", self.escrow_address, amount)
        return await self._transact(self._escrow, "stake", amount)

    async def request_unstake(self, amount: int) -> Receipt:
        return await self._transact(self._escrow, "requestUnstake", _amount(amount, "unstake"))

    async def withdraw_stake(self) -> Receipt:
        return await self._transact(self._escrow, "withdrawStake")

    async def transfer_token(self, to: str, amount: int) -> Receipt:
        return await self._transact(
            self._token, "transfer", checked_address(to), _amount(amount, "transfer")
        )

    async def _transact(self, contract: Any, fn: str, *args: Any) -> Receipt:
        def build(nonce: int) -> dict[str, Any]:
            tx = self.chain.transaction(
                contract, fn, *args, sender=self.address, nonce=nonce, abis=self._abis
            )
            tx["gas"] = int(tx["gas"] * GAS_MARGIN)
            return tx

        try:
            sent = await self.sender.send(build)
        except RevertError as e:
            raise explain_revert(e, f"{fn}") from e.__cause__
        mined = await self.wait_receipt(sent.tx_hash, [contract])
        if not mined.status:
            why = await self._run(self.chain.replay_revert, sent.tx, mined.block_number, self._abis)
            if why is not None:
                raise explain_revert(why, fn)
            raise RevertError(
                f"{fn} reverted on chain in transaction {sent.tx_hash}",
                hint="the chain changed between the estimate and the transaction; retry",
            )
        return mined

    async def wait_receipt(self, tx_hash: str, contracts: Sequence[Any] = ()) -> Receipt:
        """Poll until mined; transient ChainError after ``receipt_timeout_s``."""
        with trio.move_on_after(self.receipt_timeout_s):
            while True:
                got = await self._run(self.chain.receipt, tx_hash, list(contracts))
                if got is not None:
                    return got
                await trio.sleep(self.poll_interval_s)
        raise ChainError(
            f"transaction {tx_hash} not mined after {self.receipt_timeout_s:.0f} s",
            transient=True,
            hint="the node may be congested or not mining; check it, the send may still land",
        )
