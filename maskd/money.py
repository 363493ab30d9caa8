"""The node's money: a chain, the escrow on it, the ledger, and the wallet RPC.

This module only wires what ``ledger/`` provides (docs/ledger.md):

- the chain, per ``[chain] backend``: ``embedded`` (py-evm in this process,
  the contracts deployed at start from eth-tester's first dev key, this node's
  account funded and a deposit made, so one node alone can buy from itself),
  ``rpc`` (any JSON-RPC node: the devnet's shared embedded chain, anvil, an
  L2), or ``off`` (no payments: providers quote without an escrow check and
  expect no vouchers);
- :class:`ledger.escrow.ChainEscrow`, the escrow as this node's account sees
  it, behind :class:`_Connecting` so the daemon starts, takes vouchers and
  queues settlements while the chain is unreachable, and connects when it can;
- :class:`ledger.service.LedgerService`, the provider's ledger and batcher;
- the provider side of ``scheduler.market.Ledger`` (escrow reads for quotes,
  expected payments, incoming vouchers, results the requester disputed) and
  the ``v1.wallet.*`` / ``v1.ledger.*`` RPC methods;
- zk claims (docs/ledger.md, "Claims in the daemon"), from ``maskd.zk_claims``:
  the ledger claims a ``voucher_missing`` zk job on chain through a
  :class:`~maskd.zk_claims.ClaimLink` (evidence from this node's records, the
  circuit registered lazily), and a :class:`~maskd.zk_claims.ClaimWatcher`
  polls the escrow's ``ProofClaimed`` events for this account's jobs as a
  requester, so its next voucher counts what the contract already paid.

The EIP-712 domain (chain id and escrow address) is known before the chain is
reached: from the config for ``rpc``, and for ``embedded`` from the deployer
and its nonces (contract addresses are a hash of both), so the market cores
sign agreements and vouchers for the right escrow from the first bid.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from ledger.agreement import ZERO_ADDRESS, AccountKeys
from ledger.core import LedgerConfig as CoreLedgerConfig
from ledger.core import LedgerError, backoff_delay
from ledger.ports import ChainError, SettleReceipt
from ledger.vouchers import Domain, SignedVoucher, checksum
from maskd.zk_claims import ClaimLink, ClaimWatcher
from protocol.errors import RpcError
from scheduler.provider import Funds

log = logging.getLogger("maskd.money")

__all__ = ["Money", "create_address"]

#: The embedded chain's treasury: all MASK there is, minted to eth-tester's first key.
EMBEDDED_SUPPLY = 10**9 * 10**18
#: ETH the embedded chain gives this node's account for gas.
EMBEDDED_ETH = 10 * 10**18
#: Delays the embedded escrow is deployed with (seconds).
EMBEDDED_UNLOCK_DELAY_S = 3600
EMBEDDED_UNSTAKE_DELAY_S = 7 * 86400
#: Outgoing channels whose settled amount `mask wallet balance` reads, at most.
MAX_CHANNELS_READ = 256


def create_address(sender: str, nonce: int) -> str:
    """The address of the contract ``sender`` creates with ``nonce`` (CREATE):
    ``keccak(rlp([sender, nonce]))[12:]``."""
    import rlp

    return to_checksum_address(keccak(rlp.encode([bytes.fromhex(sender[2:]), nonce]))[12:])


#: Payment verdicts that score the sending peer down (p2p.scoring reasons).
_PAYMENT_PENALTIES = {
    "malformed": "bad_field",
    "bad_signature": "bad_signature",
    "wrong_channel": "source_mismatch",
}


class _Connecting:
    """An :class:`ledger.ports.EscrowPort` that answers ``ChainError`` (transient)
    until :meth:`attach` gives it the real escrow: the ledger queues and backs
    off meanwhile, exactly as it does for an outage."""

    def __init__(self, domain: Domain):
        self.chain_id = domain.chain_id
        self.escrow_address = domain.escrow
        self.real: Any = None
        self.error = "not connected to the chain yet"

    def attach(self, escrow: Any) -> None:
        self.real = escrow

    def _need(self) -> Any:
        if self.real is None:
            raise ChainError(self.error, transient=True, hint="it is retried with back-off")
        return self.real

    async def block_number(self) -> int:
        return await self._need().block_number()

    async def available(self, requester: str) -> int:
        return await self._need().available(requester)

    async def settled(self, requester: str, provider: str) -> int:
        return await self._need().settled(requester, provider)

    async def estimate_settle(self, vouchers: Sequence[SignedVoucher]) -> int:
        return await self._need().estimate_settle(vouchers)

    async def send_settle(self, vouchers: Sequence[SignedVoucher], gas: int) -> str:
        return await self._need().send_settle(vouchers, gas)

    async def receipt(self, tx_hash: str) -> SettleReceipt | None:
        return await self._need().receipt(tx_hash)


#: The token's errors, under the names the CLI gives hints for.
_ERROR_CODES = {
    "ERC20InsufficientBalance": "insufficient_balance",
    "ERC20InsufficientAllowance": "insufficient_allowance",
}


def _snake(name: str) -> str:
    """``InsufficientDeposit`` -> ``insufficient_deposit`` (the CLI's error codes)."""
    if name in _ERROR_CODES:
        return _ERROR_CODES[name]
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", name).lower()


def _chain_error(e: ChainError, what: str) -> RpcError:
    name = getattr(e, "error_name", None)
    code = _snake(name) if name else ("chain_unreachable" if e.transient else "chain_error")
    return RpcError(
        f"{what}: {e}",
        code=str(code),
        hint=e.hint or ("the chain could not be reached; try again" if e.transient else None),
    )


def _amount(params: dict, key: str = "amount") -> int:
    raw = params.get(key)
    if not isinstance(raw, str) or not raw.isascii() or not raw.isdigit() or len(raw) > 78:
        raise RpcError(
            f"params.{key} must be a whole number of base units as a decimal string",
            rpc_code=-32602,
            code="bad_amount",
            hint='e.g. "1500000000000000000" for 1.5 MASK (the CLI converts for you)',
        )
    value = int(raw)
    if not 0 < value < 2**256:
        raise RpcError(
            f"params.{key} must be above 0 and fit a uint256",
            rpc_code=-32602,
            code="bad_amount",
            hint="amounts are MASK base units, 10**18 per MASK",
        )
    return value


class Money:
    """One node's money. ``owed_out()`` reads the requester side's owed totals
    per provider account (the job store); everything else comes from config."""

    def __init__(
        self,
        config: Any,  # maskd.config.Config
        account_key: bytes,
        *,
        data_path: Path,
        clock: Callable[[], float],
        owed_out: Callable[[], Any] | None = None,
        penalise: Callable[[str, str], None] = lambda peer_id, reason: None,
        rng: random.Random | None = None,
    ):
        self.config = config
        self.chain_cfg = config.chain
        self.backend: str = config.chain.backend
        self._key = account_key
        self.address: str = Account.from_key(account_key).address
        self._clock = clock
        self._owed_out = owed_out
        self._penalise = penalise
        self._rng = rng or random.Random()
        self.token = ""
        escrow = ZERO_ADDRESS
        if self.backend == "embedded":
            deployer = Account.from_key(_tester_key0()).address
            self.token, escrow = create_address(deployer, 0), create_address(deployer, 1)
        elif self.backend == "rpc":
            self.token, escrow = checksum(config.chain.token), checksum(config.chain.escrow)
        self.domain = Domain(config.chain.chain_id, escrow)
        self.keys = AccountKeys(account_key, self.domain)
        self.enabled = self.backend != "off"
        #: this account's stake in the escrow, as last read (offers carry it)
        self.stake = 0
        self.chain: Any = None
        self.escrow: Any = None  # ChainEscrow once connected
        self.connected = trio.Event()
        self.ledger: Any = None
        self._port: _Connecting | None = None
        self._limiter = trio.CapacityLimiter(1 if self.backend == "embedded" else 4)
        self._jobs_store: Any = None  # the job store, once maskd.jobs attaches it
        self.claim_link: ClaimLink | None = None
        self.claim_watcher: ClaimWatcher | None = None
        if self.enabled:
            from ledger.service import LedgerService
            from ledger.store import LedgerStore, ThreadedLedgerStore

            lc = config.ledger
            self._port = _Connecting(self.domain)
            self.claim_link = ClaimLink(self.address)
            store_dir = data_path / "ledger"
            store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.ledger = LedgerService(
                ThreadedLedgerStore(LedgerStore(store_dir / "ledger.db")),
                self._port,
                CoreLedgerConfig(
                    batch_max_age_s=lc.batch_max_age_s,
                    batch_max_vouchers=lc.batch_max_vouchers,
                    batch_gas_limit=lc.batch_gas_limit,
                    confirmations=config.chain.confirmations,
                    voucher_timeout_s=lc.voucher_timeout_s,
                    escrow_cache_s=lc.escrow_cache_s,
                    retry_base_s=lc.retry_base_s,
                    retry_max_s=lc.retry_max_s,
                    poll_interval_s=config.chain.poll_interval_s,
                    zk_claims=lc.zk_claims,
                ),
                provider=self.address,
                clock=clock,
                random=self._rng,
                claims=self.claim_link,
            )
            self.claim_link.counters = self.ledger.counters
            self.claim_watcher = ClaimWatcher(
                self.address, self.ledger.call_store, clock=clock, counters=self.ledger.counters
            )

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if not self.enabled:
            task_status.started()
            await trio.sleep_forever()
        async with trio.open_nursery() as nursery:
            await self.ledger.load()
            assert self.claim_watcher is not None
            await self.claim_watcher.load()
            await nursery.start(self.ledger.run)
            task_status.started()
            await self._connect()
            await self.claim_watcher.run(self.chain_cfg.poll_interval_s)

    def attach_jobs(self, store: Any, private: Any, requester: Any) -> None:
        """The job side (maskd.jobs): the job store (agreements, results' CIDs),
        the stored results (proofs) and the requester service (its channels)."""
        self._jobs_store = store
        if self.claim_link is not None and self.claim_watcher is not None:
            self.claim_link.attach_jobs(store, private)
            self.claim_watcher.attach_jobs(store, lambda: requester.core.channels)

    def claims_owed(self, owed: Any) -> list[Any]:
        """The owed rows and the jobs providers were paid for on chain by their
        proofs (``ClaimWatcher.claims_owed``): what the channels start from."""
        if self.claim_watcher is None:
            return list(owed)
        return self.claim_watcher.claims_owed(owed)

    async def _connect(self) -> None:
        """Reach the chain (retrying with back-off while it cannot be reached),
        then hand the escrow to the ledger."""
        from ledger.escrow import ChainEscrow

        lc = self.config.ledger
        attempt = 0
        while True:
            try:
                chain = await trio.to_thread.run_sync(self._open_chain, limiter=self._limiter)
                break
            except ChainError as e:
                if not e.transient:
                    assert self._port is not None
                    self._port.error = f"the chain cannot be used: {e}"
                    log.error("chain: %s (%s)", e, e.hint)
                    await trio.sleep_forever()
                attempt += 1
                assert self._port is not None
                self._port.error = f"cannot reach the chain: {e}"
                delay = backoff_delay(attempt, lc.retry_base_s, lc.retry_max_s, self._rng.random())
                log.warning("chain: %s; retrying in %.1f s", e, delay)
                await trio.sleep(delay)
        self.chain = chain
        self.escrow = ChainEscrow(chain, self.token, self.domain.escrow, self._key, self._limiter)
        assert self._port is not None
        self._port.attach(self.escrow)
        from ledger.zkchain import ZkChain

        zk = ZkChain(
            chain,
            self.token,
            self.domain.escrow,
            None,
            self._key,
            self._limiter,
            sender=self.escrow.sender,
        )
        assert self.claim_link is not None and self.claim_watcher is not None
        self.claim_link.connect(chain, self.escrow.sender, zk, self.domain.escrow)
        self.claim_watcher.connect(zk, self.escrow.block_number)
        self.connected.set()
        self.ledger.chain_reachable()  # the "not connected yet" retries are over
        await self._read_stake()
        log.info(
            "chain %s: escrow %s, token %s", self.domain.chain_id, self.domain.escrow, self.token
        )

    async def _read_stake(self) -> None:
        try:
            self.stake = await self.escrow.stakes(self.address)
        except ChainError as e:
            log.debug("reading the stake failed: %s", e)

    def _open_chain(self) -> Any:
        """Blocking (a worker thread): the chain client, deployed and funded for
        ``embedded``; for ``rpc``, checked to hold the configured contracts."""
        from ledger.chain import ChainClient

        if self.backend == "embedded":
            from ledger import deploy as dep

            chain = ChainClient.embedded(chain_id=self.domain.chain_id)
            key0 = chain.dev_keys()[0]
            treasury = Account.from_key(key0).address
            d = dep.deploy(
                chain,
                key0,
                treasury,
                EMBEDDED_SUPPLY,
                EMBEDDED_UNLOCK_DELAY_S,
                EMBEDDED_UNSTAKE_DELAY_S,
            )
            if (d.token, d.escrow) != (self.token, self.domain.escrow):
                raise ChainError(
                    f"the embedded deployment landed at {d.escrow}, not {self.domain.escrow}",
                    transient=False,
                )
            deposit = int(self.config.ledger.embedded_deposit)
            # twice the deposit: the rest stays in the wallet for `mask wallet deposit`
            dep.fund(chain, key0, self.address, EMBEDDED_ETH, 2 * deposit, token=d.token)
            if deposit:
                dep.deposit(chain, self._key, d.escrow, d.token, deposit)
            return chain
        c = self.chain_cfg
        chain = ChainClient.rpc(c.rpc_url, c.chain_id, timeout_s=c.timeout_s)
        for name, address in (("token", self.token), ("escrow", self.domain.escrow)):
            if not chain.code(address):
                raise ChainError(
                    f"no contract at chain.{name} = {address} on chain {c.chain_id}",
                    transient=False,
                    hint="deploy the contracts (`mask devnet up` does) or fix the address",
                )
        return chain

    # ---------------------------------------- scheduler.market.Ledger (provider)
    def funds(self, account: str) -> Funds | None:
        cached = self.ledger.cached_available(account) if self.ledger else None
        if cached is None:
            return None
        return Funds(available=cached[0], owes=self.ledger.owed_by(account))

    def funds_fresh(self, account: str) -> bool:
        cached = self.ledger.cached_available(account) if self.ledger else None
        return cached is not None and cached[1]

    async def refresh_funds(self, account: str) -> None:
        try:
            await self.ledger.escrow_available(account)
        except (ChainError, ValueError) as e:
            self.ledger.counters["escrow_read_failed"] += 1
            log.debug("escrow read for %s failed: %s", account, e)

    async def expect(
        self, job_id: str, requester_peer: str, requester_account: str, price: int
    ) -> None:
        await self.ledger.expect(job_id, requester_account, requester_peer, price)

    async def withdraw(self, job_id: str) -> None:
        await self.ledger.withdraw(job_id)

    async def dispute(self, job_id: str, requester_peer: str) -> None:
        """The requester refused a delivered result: a zk job goes to its claim."""
        await self.ledger.dispute(job_id, requester_peer)

    async def payment(self, source: str, payment: Any) -> None:
        verdict = await self.ledger.payment(
            payment.job_id, source, payment.cumulative, payment.signature
        )
        log.debug("payment for %s from %s: %s", payment.job_id, source, verdict.reason.value)
        # a forged, malformed or misdirected voucher is the sending peer's
        # misbehaviour (scored like bad gossip); a stale or short one is the
        # requester's standing with us (the ledger counts it), not the mesh's
        penalty = _PAYMENT_PENALTIES.get(verdict.reason.value)
        if penalty is not None:
            self._penalise(source, penalty)

    def payment_state(self, job_id: str, role: str = "provider") -> dict | None:
        """A job's payment, for ``mask job`` and ``mask explain``: None when none
        was expected (not run here, or no chain). As a requester, only a job a
        provider was paid for on chain by its proof has one (``paid_by_proof``)."""
        if not self.enabled or self.ledger is None or self.ledger._core is None:
            return None
        if role == "requester":
            assert self.claim_watcher is not None
            return self.claim_watcher.payment_state(job_id)
        from ledger.core import ClaimState
        from ledger.service import claim_view

        core = self.ledger.core
        claim = core.claim(job_id)
        d = core.delivery(job_id)
        if d is not None:
            state = "voucher_missing" if d.missing_at is not None else "awaiting_voucher"
            if d.underpaid_at is not None:
                state = "underpaid"
            out = {
                "state": state,
                "requester": d.requester,
                "price": str(d.price),
                "due_at": d.due_at,
            }
            if claim is not None:
                out["claim"] = claim_view(claim)
            return out
        if claim is not None and claim.state is ClaimState.PAID:
            return {"state": "paid_by_claim", "claim": claim_view(claim)}
        if claim is not None and claim.state is ClaimState.REVERTED:
            return {"state": "claim_refused", "claim": claim_view(claim)}
        if core.knows(job_id):
            return {"state": "paid"}
        return None

    # ------------------------------------------------------------------ RPC
    def rpc_methods(self) -> dict[str, Callable[[dict], Any]]:
        return {
            "v1.wallet.show": self.rpc_show,
            "v1.wallet.balance": self.rpc_balance,
            "v1.wallet.deposit": self.rpc_deposit,
            "v1.wallet.withdraw": self.rpc_withdraw,
            "v1.wallet.unlock": self.rpc_unlock,
            "v1.wallet.reclaim": self.rpc_reclaim,
            "v1.wallet.stake": self.rpc_stake,
            "v1.ledger.show": self.rpc_ledger,
            "v1.ledger.settle": self.rpc_settle,
        }

    def _need_chain(self) -> Any:
        if not self.enabled:
            raise RpcError(
                "this node has no chain (chain.backend = off)",
                code="chain_off",
                hint='set [chain] backend = "embedded" or "rpc" in the config',
            )
        if self.escrow is None:
            assert self._port is not None
            raise RpcError(
                f"the chain is not connected: {self._port.error}",
                code="chain_unreachable",
                hint="`mask ledger` shows the retries; check [chain] rpc_url",
            )
        return self.escrow

    async def rpc_show(self, params: dict) -> dict:
        return {"address": self.address}

    async def rpc_balance(self, params: dict) -> dict:
        escrow = self._need_chain()
        me = self.address
        try:
            eth = await escrow.eth_balance(me)
            mask = await escrow.token_balance(me)
            deposit = await escrow.deposits(me)
            locked, unlock_at = await escrow.unlocking(me)
            stake = await escrow.stakes(me)
            earnings = await escrow.earnings(me)
            owed_by_me = await self._owed_by_me(escrow)
        except ChainError as e:
            raise _chain_error(e, "reading the balance failed") from e
        owed_to_me = sum(self.ledger.owed_by(r["requester"]) for r in self.ledger.core.channels())
        return {
            "address": me,
            "eth": str(eth),
            "mask": str(mask),
            "deposit": str(deposit),
            "locked": str(min(locked, deposit)),
            "unlock_at": unlock_at or None,
            "available": str(deposit - min(locked, deposit)),
            "stake": str(stake),
            "earnings": str(earnings),
            "owed_to_me": str(owed_to_me),
            "owed_by_me": str(owed_by_me),
        }

    async def _channels_out(self, escrow: Any) -> list[dict]:
        totals: dict[str, int] = dict(await self._owed_out()) if self._owed_out else {}
        if self.claim_watcher and self.claim_watcher.seen and self._jobs_store is not None:
            owed = await self._jobs_store.owed()
            for entry in self.claims_owed(owed)[len(owed) :]:  # paid on chain, owed nothing
                key = next((k for k in totals if k.lower() == entry.provider_account.lower()), None)
                key = key or entry.provider_account
                totals[key] = totals.get(key, 0) + int(entry.amount)
        rows = []
        for provider, cumulative in sorted(totals.items())[:MAX_CHANNELS_READ]:
            settled = await escrow.settled(self.address, provider) if escrow else None
            rows.append(
                {
                    "requester": self.address,
                    "provider": provider,
                    "direction": "out",
                    "cumulative": str(cumulative),
                    "settled": None if settled is None else str(settled),
                }
            )
        return rows

    async def _owed_by_me(self, escrow: Any) -> int:
        return sum(
            max(int(r["cumulative"]) - int(r["settled"] or 0), 0)
            for r in await self._channels_out(escrow)
        )

    async def _send(self, what: str, op: Callable[[], Any]) -> Any:
        self._need_chain()
        try:
            return await op()
        except ChainError as e:
            raise _chain_error(e, what) from e

    async def rpc_deposit(self, params: dict) -> dict:
        amount = _amount(params)
        escrow = self._need_chain()
        got = await self._send("the deposit failed", lambda: escrow.deposit_with_permit(amount))
        deposit = await self._send(
            "reading the deposit failed", lambda: escrow.deposits(self.address)
        )
        return {"tx_hash": got.tx_hash, "amount": str(amount), "deposit": str(deposit)}

    async def rpc_withdraw(self, params: dict) -> dict:
        escrow = self._need_chain()
        amount = await self._send("reading earnings failed", lambda: escrow.earnings(self.address))
        got = await self._send("the withdrawal failed", escrow.withdraw)
        return {"tx_hash": got.tx_hash, "amount": str(amount)}

    async def rpc_unlock(self, params: dict) -> dict:
        amount = _amount(params)
        escrow = self._need_chain()
        got = await self._send("the unlock failed", lambda: escrow.request_unlock(amount))
        locked, at = await self._send(
            "reading the unlock failed", lambda: escrow.unlocking(self.address)
        )
        return {"tx_hash": got.tx_hash, "amount": str(locked), "unlock_at": at}

    async def rpc_reclaim(self, params: dict) -> dict:
        escrow = self._need_chain()
        before = await self._send(
            "reading the deposit failed", lambda: escrow.deposits(self.address)
        )
        got = await self._send("the reclaim failed", escrow.reclaim)
        after = await self._send(
            "reading the deposit failed", lambda: escrow.deposits(self.address)
        )
        return {"tx_hash": got.tx_hash, "amount": str(before - after)}

    async def rpc_stake(self, params: dict) -> dict:
        amount = _amount(params)
        escrow = self._need_chain()
        got = await self._send("staking failed", lambda: escrow.stake(amount))
        stake = await self._send("reading the stake failed", lambda: escrow.stakes(self.address))
        self.stake = stake  # the next offer carries it
        return {"tx_hash": got.tx_hash, "amount": str(amount), "stake": str(stake)}

    async def rpc_ledger(self, params: dict) -> dict:
        c = self.chain_cfg
        chain = {
            "backend": self.backend,
            "rpc_url": c.rpc_url if self.backend == "rpc" else self.backend,
            "chain_id": self.domain.chain_id,
            "confirmations": c.confirmations,
        }
        contracts = {"token": self.token or None, "escrow": self.domain.escrow}
        if not self.enabled:
            off = {"state": "off", "last_error": None, "next_retry_at": None, "attempts": 0}
            return {
                "chain": chain,
                "contracts": contracts,
                "channels": [],
                "batches": [],
                "pending_vouchers": [],
                "missing": [],
                "claims": [],
                "claims_seen": [],
                "status": off,
            }
        snap = self.ledger.snapshot()
        try:
            out = await self._channels_out(self.escrow)
        except ChainError:
            out = await self._channels_out(None)
        status = dict(snap["status"])
        status["since"] = status.get("last_error_at") if status.get("attempts") else None
        if self.escrow is None and self._port is not None:
            status.update(state="connecting", last_error=self._port.error)
        return {
            "chain": chain,
            "contracts": contracts,
            "account": self.address,
            "channels": snap["channels"] + out,
            "batches": snap["batches"],
            "pending_vouchers": snap["pending_vouchers"],
            "missing": snap["missing"],
            "claims": snap["claims"],
            "claims_seen": self.claim_watcher.view() if self.claim_watcher else [],
            "status": status,
            "counters": snap["counters"],
        }

    async def rpc_settle(self, params: dict) -> dict:
        self._need_chain()
        try:
            batches = await self.ledger.settle_now()
        except LedgerError as e:
            raise RpcError(e.message, code=e.code, hint=e.hint) from e
        return {"batches": batches}

    def info(self) -> dict:
        """For ``v1.node.info``."""
        return {
            "backend": self.backend,
            "chain_id": self.domain.chain_id,
            "escrow": self.domain.escrow,
            "account": self.address,
            "connected": self.connected.is_set(),
        }


def _tester_key0() -> bytes:
    """eth-tester's first dev key (public, deterministic): the embedded deployer."""
    from eth_tester.backends.pyevm.main import get_default_account_keys

    return bytes(get_default_account_keys()[0].to_bytes())
