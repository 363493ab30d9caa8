"""zk claims in the node: the provider's evidence and claim on chain, and the
requester's view of claims made against it (docs/ledger.md, "Claims in the daemon").

A requester that takes a zk job's proven result and never pays leaves its
provider one recourse: ``SettlementEscrow.claimWithProof`` with the agreement
the requester signed and the proof, which the contract verifies and pays from
the requester's deposit. The rules (when a job is claimed, once, what a paid
or refused claim does) are the ledger's (``ledger/core.py``); this module is
the I/O they need:

- :class:`ClaimLink` is the ledger's :class:`ledger.service.ClaimPort`. It reads
  a job's evidence from this node's own records only: the agreement both
  parties signed (the provider's job row) and ``proof.json``, ``public.json``
  and ``verification_key.json`` read bounded out of the stored result CAR
  (sizes and JSON nesting checked before decoding: py-ecc raises the recursion
  limit to 100,000). It registers the circuit lazily, just before the first
  claim that needs it: ``circuitInfo`` is read first, so the key is paid for
  once, and only by a provider that has to claim. A claim is dry-run
  (``eth_call``: a refusal is decoded and nothing is sent) and sent with a
  fixed gas limit (``ledger.zkchain.proof_gas``); its hash is returned as soon
  as the node has it, so the ledger stores it before the transaction is mined.
- :class:`ClaimWatcher` is the requester's side: it polls the escrow's
  ``ProofClaimed`` events (from a cursor kept in the ledger store, so a
  restart misses none) and keeps those for its own jobs. A job it owed that
  provider nothing for (it refused the proof, or never recorded it) is added
  to the provider's channel: the contract already added the price to
  ``settled``, so the requester's next voucher must count it too.

Everything before the chain is reached (or the job store is attached) is a
transient :class:`~ledger.ports.ChainError`: the ledger backs off and asks again.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from ledger.core import ClaimEvidence, ClaimReceipt, ClaimRefused, ClaimUnavailable
from ledger.ports import ChainError
from ledger.vouchers import checksum

log = logging.getLogger("maskd.zk_claims")

__all__ = ["CLAIMS_CURSOR", "ClaimLink", "ClaimWatcher", "read_evidence"]

#: The requester's read position in the escrow's ProofClaimed events (a ledger store cursor).
CLAIMS_CURSOR = "proof_claimed"
#: The result files a claim reads, at most this many bytes each (checked before decoding).
MAX_PROOF_BYTES = 64 << 10
MAX_PUBLIC_BYTES = 128 << 10
MAX_VK_BYTES = 1 << 20
#: proof.json nests three levels, the key four: deeper is refused before json.loads.
MAX_JSON_DEPTH = 8


def _not_yet(what: str) -> ChainError:
    return ChainError(f"{what} not ready yet", transient=True, hint="it is retried")


def agreement_of(blob: bytes | None) -> Any:
    """The signed ``protocol.market.Agreement`` a job row keeps, or None."""
    import msgspec

    from protocol.market import Agreement

    if not blob:
        return None
    try:
        return msgspec.msgpack.decode(blob, type=Agreement)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return None


def _json(data: bytes, name: str) -> Any:
    from protocol.codec import NestingTooDeep, check_nesting

    try:
        check_nesting(data, MAX_JSON_DEPTH)
        return json.loads(data)
    except (NestingTooDeep, RecursionError):
        raise ClaimUnavailable("bad_result", f"{name} is nested too deeply") from None
    except ValueError as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise ClaimUnavailable("bad_result", f"{name} is not JSON: {first}") from None


def read_evidence(job_id: str, agreement: bytes, car: Path, root: str) -> ClaimEvidence:
    """Blocking: the proof (EIP-197 order), the public signals and the circuit's
    key out of the provider's own stored result, each bounded and parsed.
    Raises ClaimUnavailable with a reason."""
    from protocol.errors import StorageError
    from storage.carfile import read_file_at
    from zkp.formats import ZkFormatError, parse_proof, parse_public, parse_vk, proof_calldata

    def read(name: str, cap: int) -> bytes:
        try:
            data, cut = read_file_at(car, root, name, max_bytes=cap)
        except StorageError as e:
            raise ClaimUnavailable("no_result", f"{name}: {e.message}") from None
        except OSError as e:
            raise ClaimUnavailable("no_result", f"the result is not here: {e}") from None
        if cut:
            raise ClaimUnavailable("bad_result", f"{name} is larger than {cap} bytes")
        return data

    vk = read("verification_key.json", MAX_VK_BYTES)
    try:
        proof = parse_proof(_json(read("proof.json", MAX_PROOF_BYTES), "proof.json"))
        public = parse_public(_json(read("public.json", MAX_PUBLIC_BYTES), "public.json"))
        parse_vk(_json(vk, "verification_key.json"))
    except ZkFormatError as e:
        raise ClaimUnavailable("bad_result", f"the stored result: {e}") from None
    return ClaimEvidence(job_id, agreement, tuple(proof_calldata(proof)), tuple(public), vk)


class ClaimLink:
    """:class:`ledger.service.ClaimPort` for the account ``address``.

    ``attach_jobs(store, private)`` gives it the job store (async facade) and
    the private files (result CARs); ``connect(chain, sender, zk, escrow)`` the
    chain, the account's one nonce owner, its :class:`ledger.zkchain.ZkChain`
    and the escrow's address."""

    def __init__(self, address: str, counters: Counter[str] | None = None):
        self.address = checksum(address)
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self._store: Any = None
        self._private: Any = None
        self._chain: Any = None
        self._sender: Any = None
        self._zk: Any = None
        self._escrow: Any = None
        self._abis: tuple[Any, ...] = ()
        self._registered: set[str] = set()  # circuit ids the chain has (read or sent)
        self._sent: dict[str, dict[str, Any]] = {}  # tx hash -> transaction (to replay a revert)

    def attach_jobs(self, store: Any, private: Any) -> None:
        self._store, self._private = store, private

    def connect(self, chain: Any, sender: Any, zk: Any, escrow: str) -> None:
        from ledger.contracts import ESCROW, TOKEN, load_artifact

        self._chain, self._sender, self._zk = chain, sender, zk
        self._escrow = chain.contract(checksum(escrow), load_artifact(ESCROW).abi)
        self._abis = (self._escrow.abi, load_artifact(TOKEN).abi)

    def _need_chain(self) -> Any:
        if self._chain is None:
            raise _not_yet("the chain connection is")
        return self._chain

    async def evidence(self, job_id: str) -> ClaimEvidence | None:
        from scheduler.store import UnknownJob

        if self._store is None or self._private is None:
            raise _not_yet("the job store is")
        try:
            row = await self._store.get(job_id, role="provider")
        except UnknownJob:
            raise ClaimUnavailable("no_job", "this node has no provider job row for it") from None
        agreement = agreement_of(row.agreement)
        if agreement is None:
            raise ClaimUnavailable("no_agreement", "the job row holds no readable agreement")
        t = agreement.terms
        if not t.circuit_id or set(t.circuit_id) <= {"0"}:
            return None  # not a zk job: a voucher or nothing
        if t.provider_account.lower() != self.address.lower():
            raise ClaimUnavailable("not_ours", "the agreement names another provider account")
        if not row.output_cid:
            raise ClaimUnavailable("no_result", "the job has no stored result")
        car = self._private.result(row.output_cid)
        return await trio.to_thread.run_sync(
            read_evidence, job_id, bytes(row.agreement), car, row.output_cid
        )

    async def send_claim(self, evidence: ClaimEvidence) -> str:
        from ledger.chain import RevertError
        from ledger.contracts import refusal_reason
        from ledger.escrow import explain_revert
        from ledger.zkchain import proof_gas
        from ledger.zkclaims import ZkClaimError, claim_args

        chain = self._need_chain()
        agreement = agreement_of(evidence.agreement)
        if agreement is None:
            raise ClaimUnavailable("no_agreement", "the stored agreement cannot be decoded")
        t = agreement.terms
        try:
            args = claim_args(t, agreement.requester_signature, evidence.proof, evidence.public)
        except ZkClaimError as e:
            raise ClaimUnavailable("malformed_evidence", e.reason) from None
        await self._register(t.circuit_id.lower(), evidence.vk)
        escrow, abis, me = self._escrow, self._abis, self.address
        gas = proof_gas("claimWithProof", len(evidence.public))

        def build(nonce: int) -> dict[str, Any]:
            chain.call(escrow, "claimWithProof", *args, sender=me, abis=abis)  # the dry run
            return chain.transaction(
                escrow, "claimWithProof", *args, sender=me, nonce=nonce, gas=gas, abis=abis
            )

        try:
            sent = await self._sender.send(build)
        except RevertError as e:
            why = explain_revert(e, "claimWithProof")
            raise ClaimRefused(refusal_reason(e.error_name) or "reverted", str(why)) from None
        self._sent[sent.tx_hash] = dict(sent.tx)
        return sent.tx_hash

    async def _register(self, circuit_id: str, vk_json: bytes) -> None:
        """The circuit's key on chain before its first claim: ``circuitInfo``
        first, ``registerCircuit`` only when the chain lacks it."""
        from ledger.chain import RevertError
        from zkp.formats import ZkFormatError, parse_vk, vk_calldata

        if circuit_id in self._registered:
            return
        registered, _ = await self._zk.circuit_info(circuit_id)
        if not registered:
            try:
                calldata = vk_calldata(parse_vk(_json(vk_json, "verification_key.json")))
            except ZkFormatError as e:
                raise ClaimUnavailable("bad_verification_key", f"cannot register: {e}") from None
            try:
                got = await self._zk.register_circuit(calldata)
            except RevertError as e:
                raise ClaimUnavailable("register_failed", f"registering the key: {e}") from None
            if got != circuit_id:
                raise ClaimUnavailable(
                    "circuit_mismatch", f"the result's key is circuit {got}, not {circuit_id}"
                )
            self.counters["circuits_registered"] += 1
            log.info("registered circuit %s on chain for a claim", circuit_id)
        self._registered.add(circuit_id)

    async def claim_receipt(self, tx_hash: str) -> ClaimReceipt | None:
        from ledger.contracts import refusal_reason

        chain = self._need_chain()
        got = await self._sender.run(chain.receipt, tx_hash, [self._escrow])
        if got is None:
            return None
        if got.status:
            amount = next(
                (int(e.args["amount"]) for e in got.events if e.name == "ProofClaimed"), None
            )
            return ClaimReceipt(got.tx_hash, got.block_number, True, got.gas_used, amount)
        reason = "reverted"
        error = f"claimWithProof {tx_hash} reverted in block {got.block_number}"
        tx = self._sent.get(tx_hash)
        if tx is not None:  # sent by this process: replay it for the reason
            why = await self._sender.run(chain.replay_revert, tx, got.block_number, self._abis)
            if why is not None:
                reason, error = refusal_reason(why.error_name) or reason, str(why)
        return ClaimReceipt(got.tx_hash, got.block_number, False, got.gas_used, None, reason, error)

    async def claimed(self, job_id: str) -> bool:
        self._need_chain()
        return bool(await self._zk.claimed(job_id, self.address))


class ClaimWatcher:
    """The requester's side: ``ProofClaimed`` events for this account's jobs.

    ``call_store(fn)`` runs ``fn(LedgerStore)`` (the ledger service's facade);
    ``attach_jobs(store, channels)`` gives the job store and the requester
    core's ``channels`` (cumulative owed per provider account)."""

    def __init__(
        self,
        address: str,
        call_store: Callable[[Callable[[Any], Any]], Any],
        *,
        clock: Callable[[], float],
        counters: Counter[str] | None = None,
    ):
        self.address = checksum(address)
        self._call_store = call_store
        self._clock = clock
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self._store: Any = None
        self._channels: Callable[[], dict[str, int]] | None = None
        self._zk: Any = None
        self._block_number: Callable[[], Any] | None = None
        #: what was seen, by (job id, provider account in lower case)
        self.seen: dict[tuple[str, str], Any] = {}

    def attach_jobs(self, store: Any, channels: Callable[[], dict[str, int]] | None) -> None:
        self._store, self._channels = store, channels

    def connect(self, zk: Any, block_number: Callable[[], Any]) -> None:
        self._zk, self._block_number = zk, block_number

    async def load(self) -> None:
        seen = await self._call_store(lambda s: s.seen_claims())
        self.seen = {(c.job_id, c.provider.lower()): c for c in seen}

    async def run(self, interval: float) -> None:
        """:meth:`scan` every ``interval`` seconds, for ever (chain errors are counted)."""
        while True:
            try:
                await self.scan()
            except ChainError as e:
                self.counters["claims_scan_failed"] += 1
                log.debug("reading ProofClaimed events failed: %s", e)
            except Exception:  # a bug must not take the node's money down with it
                self.counters["claims_scan_failed"] += 1
                log.exception("reading ProofClaimed events failed")
            await trio.sleep(interval)

    async def scan(self) -> int:
        """Read the events from the cursor to the chain's head, in steps; the
        number of new claims seen for this account's jobs."""
        from ledger.zkchain import MAX_LOG_BLOCKS

        if self._zk is None or self._block_number is None:
            raise _not_yet("the chain connection is")
        head = await self._block_number()
        cursor = await self._call_store(lambda s: s.cursor(CLAIMS_CURSOR))
        if cursor is None or cursor > head + 1:  # the first look, or a chain that started over
            cursor = max(head - MAX_LOG_BLOCKS + 1, 0)
        found = 0
        while cursor <= head:
            last = min(head, cursor + MAX_LOG_BLOCKS - 1)
            for event in await self._zk.proofs_claimed(cursor, last):
                if event.requester.lower() == self.address.lower():
                    found += await self._seen(event)
            cursor = last + 1
            await self._call_store(lambda s, c=cursor: s.set_cursor(CLAIMS_CURSOR, c))
        return found

    async def _seen(self, event: Any) -> int:
        """A provider was paid on chain for ``event.job_id``: remember it (once),
        and if that job owed it nothing here, add the price to its channel."""
        from ledger.store import SeenClaim
        from scheduler.store import UnknownJob

        if self._store is None:
            raise _not_yet("the job store is")
        job_id, provider = event.job_id, checksum(event.provider)

        def ours(s: Any) -> tuple[bool, bool]:
            try:
                s.get(job_id, role="requester")
            except UnknownJob:
                return False, False
            owed = any(
                e.job_id == job_id and e.provider_account.lower() == provider.lower()
                for e in s.owed()
            )
            return True, owed

        mine, owed = await self._store.run(ours)
        if not mine:
            self.counters["proofs_claimed_unknown_job"] += 1
            return 0
        seen = SeenClaim(
            job_id,
            provider,
            checksum(event.requester),
            int(event.amount),
            int(event.block_number),
            str(event.tx_hash),
            self._clock(),
        )
        if not await self._call_store(lambda s: s.add_seen_claim(seen)):
            return 0
        self.seen[(job_id, provider.lower())] = seen
        self.counters["proofs_claimed_seen"] += 1
        log.info("job %s was paid on chain by %s's proof (%d)", job_id, provider, seen.amount)
        if owed:
            # we owed it by voucher already: not counted twice, but a claim for a
            # job we paid means the provider was paid ahead (docs/ledger.md)
            self.counters["proofs_claimed_owed"] += 1
            log.warning(
                "job %s was claimed on chain by %s though we owe it a voucher", job_id, provider
            )
        elif self._channels is not None:
            channels = self._channels()
            key = next((k for k in channels if k.lower() == provider.lower()), provider)
            channels[key] = channels.get(key, 0) + seen.amount
        return 1

    def claims_owed(self, owed: Sequence[Any]) -> list[Any]:
        """``owed`` (the job store's owed rows) and, for each job a provider was
        paid for on chain that owed it nothing, an entry for it: the channels'
        cumulative totals (not resent: ``recorded_at`` 0)."""
        from scheduler.store import OwedEntry

        have = {(e.job_id, e.provider_account.lower()) for e in owed}
        extra = [
            OwedEntry(c.job_id, "", c.provider, str(c.amount), 0.0)
            for key, c in sorted(self.seen.items())
            if key not in have
        ]
        return [*owed, *extra]

    def payment_state(self, job_id: str) -> dict | None:
        """For ``mask job`` on the requester: ``paid_by_proof`` with each claim."""
        seen = [c for (j, _), c in sorted(self.seen.items()) if j == job_id]
        if not seen:
            return None
        return {
            "state": "paid_by_proof",
            "claims": [
                {
                    "provider": c.provider,
                    "amount": str(c.amount),
                    "tx_hash": c.tx_hash,
                    "block": c.block,
                }
                for c in seen
            ],
        }

    def view(self) -> list[dict[str, Any]]:
        return [
            {
                "job_id": c.job_id,
                "provider": c.provider,
                "amount": str(c.amount),
                "tx_hash": c.tx_hash,
                "block": c.block,
            }
            for _, c in sorted(self.seen.items())
        ]
