"""zk on chain, under trio: circuits, proof claims, slashing and DApp requests.

A thin shell over :class:`ledger.chain.ChainClient` in the style of
:class:`ledger.escrow.ChainEscrow`: every chain call runs in a worker thread
behind the shared ``CapacityLimiter``, every send goes through the account's
one :class:`~ledger.escrow.TxSender` (pass the one ``ChainEscrow`` uses: a key
has exactly one nonce owner), and a revert comes back as a
:class:`~ledger.chain.RevertError` in words (``ledger.contracts.REVERT_HINTS``)
whose ``error_name`` :func:`ledger.contracts.refusal_reason` turns into a
snake_case reason.

Transactions that carry a proof are not gas-estimated: an estimate runs the
transaction a dozen times, and py-evm (the embedded chain) takes ~1 s per
pairing. Instead each is dry-run once as ``eth_call`` (a refusal is decoded
before anything is sent) and sent with a fixed limit from :func:`proof_gas`,
which covers the verifier, the writes and (for ``fulfill``) the callback's
allowance; the contracts revert rather than misjudge a proof when gas is short.

Event readers return frozen records (:class:`Requested`, :class:`Fulfilled`,
...) decoded from the contracts' logs over a block range the caller bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from ledger.chain import ChainClient, Receipt, RevertError, checked_address
from ledger.contracts import ESCROW, REQUESTS, TOKEN, load_artifact
from ledger.escrow import GAS_MARGIN, TxSender, explain_revert
from ledger.ports import ChainError
from ledger.vouchers import MAX_UINT256, checksum
from ledger.zkclaims import (
    ZkClaimError,
    checked_public,
    claim_args,
    fulfill_args,
    slash_args,
)
from protocol.market import AgreementTerms

__all__ = [
    "MAX_LOG_BLOCKS",
    "CallbackFailed",
    "CircuitRegistered",
    "Fulfilled",
    "ProofClaimed",
    "Refunded",
    "RequestState",
    "Requested",
    "Slashed",
    "ZkChain",
    "proof_gas",
]

T = TypeVar("T")

#: Blocks one event read may span (a caller scanning history reads in steps).
MAX_LOG_BLOCKS = 10_000
#: ComputeRequests.CALLBACK_GAS.
CALLBACK_GAS = 500_000
_REQUEST_STATUS = {0: "none", 1: "open", 2: "fulfilled", 3: "refunded"}


def proof_gas(fn: str, n_public: int) -> int:
    """The gas limit a proof-carrying transaction is sent with.

    Measured on py-evm (docs/ledger.md): claimWithProof 320,650 and slash
    322,430 gas with 2 public signals; fulfill 449,844 with 6 and a callback
    that stores 5 words (the callback may use up to 500,000 and fulfill
    refuses to start it with less); the verifier adds ~7,300 per public
    signal. A limit is only a ceiling: unused gas is not paid for."""
    base = {"claimWithProof": 420_000, "slash": 420_000, "fulfill": 420_000 + 560_000}
    if fn not in base:
        raise ValueError(f"not a proof-carrying function: {fn}")
    return base[fn] + 12_000 * max(n_public, 0)


# --- records -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CircuitRegistered:
    circuit_id: str  # 64 hex characters, no 0x (zkp.formats.vk_id)
    n_public: int
    block_number: int
    tx_hash: str


@dataclass(frozen=True, slots=True)
class ProofClaimed:
    job_id: str  # 64 hex characters
    requester: str
    provider: str
    amount: int
    block_number: int
    tx_hash: str


@dataclass(frozen=True, slots=True)
class Slashed:
    provider: str
    job_id: str
    amount: int
    reporter: str
    block_number: int
    tx_hash: str


@dataclass(frozen=True, slots=True)
class Requested:
    """A DApp's request, as ComputeRequests emitted it (the contract checked it)."""

    request_id: int
    requester: str
    circuit_id: str
    inputs: tuple[int, ...]
    n_outputs: int
    input_cid: str
    payment: int
    deadline: int
    callback: str
    block_number: int
    tx_hash: str


@dataclass(frozen=True, slots=True)
class Fulfilled:
    request_id: int
    provider: str
    outputs: tuple[int, ...]
    block_number: int
    tx_hash: str


@dataclass(frozen=True, slots=True)
class CallbackFailed:
    request_id: int
    callback: str
    block_number: int
    tx_hash: str


@dataclass(frozen=True, slots=True)
class Refunded:
    request_id: int
    requester: str
    amount: int
    block_number: int
    tx_hash: str


@dataclass(frozen=True, slots=True)
class RequestState:
    """``ComputeRequests.requests(id)``; ``status`` none/open/fulfilled/refunded."""

    requester: str
    deadline: int
    n_outputs: int
    n_inputs: int
    status: str
    callback: str
    payment: int
    circuit_id: str
    inputs_hash: str


def _hex32(value: bytes) -> str:
    return bytes(value).hex()


def _bytes32(value: str | bytes, what: str) -> bytes:
    if isinstance(value, bytes | bytearray) and len(value) == 32:
        return bytes(value)
    if isinstance(value, str):
        text = value[2:] if value.startswith(("0x", "0X")) else value
        if len(text) == 64:
            try:
                return bytes.fromhex(text)
            except ValueError:
                pass
    raise ChainError(
        f"{what} is not 32 bytes of hex: {str(value)[:80]!r}",
        transient=False,
        hint=f"a {what} is 64 hex characters",
    )


def _uint(value: int, what: str, limit: int = MAX_UINT256) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ChainError(f"{what} {value!r} is out of range", transient=False)
    return value


def _bad_input(e: ZkClaimError) -> ChainError:
    return ChainError(
        e.reason, transient=False, hint="the proof, signals or ids are malformed; not sent"
    )


# --- the shell ---------------------------------------------------------------------


class ZkChain:
    """The escrow's zk functions and ComputeRequests for ``key``'s account.

    ``requests`` may be None (an older deployment): then the request methods
    raise ChainError with a hint. Every method may raise :class:`ChainError`
    (a refusal as :class:`RevertError`, in words)."""

    def __init__(
        self,
        chain: ChainClient,
        token_address: str,
        escrow_address: str,
        requests_address: str | None,
        key: bytes,
        limiter: trio.CapacityLimiter,
        *,
        sender: TxSender | None = None,
        poll_interval_s: float = 0.2,
        receipt_timeout_s: float = 120.0,
    ):
        self.chain = chain
        self.sender = sender if sender is not None else TxSender(chain, key, limiter)
        self.address = self.sender.address
        self._token = chain.contract(checksum(token_address), load_artifact(TOKEN).abi)
        self._escrow = chain.contract(checksum(escrow_address), load_artifact(ESCROW).abi)
        self._requests = (
            chain.contract(checksum(requests_address), load_artifact(REQUESTS).abi)
            if requests_address is not None
            else None
        )
        self._abis = tuple(
            c.abi for c in (self._escrow, self._requests, self._token) if c is not None
        )
        self.poll_interval_s = poll_interval_s
        self.receipt_timeout_s = receipt_timeout_s

    @property
    def requests_address(self) -> str | None:
        return self._requests.address if self._requests is not None else None

    def _need_requests(self) -> Any:
        if self._requests is None:
            raise ChainError(
                "no ComputeRequests contract is configured",
                transient=False,
                hint="deploy the contracts again (ledger.deploy) or set chain 'requests'",
            )
        return self._requests

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.sender.run(fn, *args, **kwargs)

    async def _view(self, contract: Any, fn: str, *args: Any) -> Any:
        try:
            return await self._run(self.chain.call, contract, fn, *args, abis=self._abis)
        except RevertError as e:
            raise explain_revert(e, fn) from e.__cause__

    # views

    async def circuit_info(self, circuit_id: str | bytes) -> tuple[bool, int]:
        """(registered, number of public signals)."""
        registered, n = await self._view(
            self._escrow, "circuitInfo", _bytes32(circuit_id, "circuit id")
        )
        return bool(registered), int(n)

    async def verify_proof(
        self, circuit_id: str | bytes, proof: Sequence[int], public: Sequence[int]
    ) -> bool:
        """The escrow's verifyProof (a view: no gas paid, one pairing on the node)."""
        try:
            args = fulfill_args(0, self.address, proof, public)
        except ZkClaimError as e:
            raise _bad_input(e) from None
        return bool(
            await self._view(
                self._escrow, "verifyProof", _bytes32(circuit_id, "circuit id"), *args[2:]
            )
        )

    async def claimed(self, job_id: str | bytes, provider: str) -> bool:
        return bool(
            await self._view(
                self._escrow, "claimed", _bytes32(job_id, "job id"), checked_address(provider)
            )
        )

    async def slashed(self, job_id: str | bytes, provider: str) -> bool:
        return bool(
            await self._view(
                self._escrow, "slashed", _bytes32(job_id, "job id"), checked_address(provider)
            )
        )

    async def job_id_of(self, request_id: int) -> str:
        """The job id a request is placed on the mesh with (64 hex characters)."""
        raw = await self._view(self._need_requests(), "jobIdOf", _uint(request_id, "request id"))
        return _hex32(raw)

    async def request_state(self, request_id: int) -> RequestState:
        r = await self._view(self._need_requests(), "requests", _uint(request_id, "request id"))
        requester, deadline, n_out, n_in, status, callback, payment, circuit, inputs_hash = r
        return RequestState(
            requester=requester,
            deadline=int(deadline),
            n_outputs=int(n_out),
            n_inputs=int(n_in),
            status=_REQUEST_STATUS.get(int(status), f"unknown_{int(status)}"),
            callback=callback,
            payment=int(payment),
            circuit_id=_hex32(circuit),
            inputs_hash=_hex32(inputs_hash),
        )

    # sends

    async def register_circuit(self, vk_calldata: Mapping[str, Any]) -> str:
        """Registers a key (``zkp.formats.vk_calldata``); its circuit id (64 hex).
        Idempotent: an already registered key costs a cheap transaction."""
        try:
            args = (
                list(vk_calldata["alpha1"]),
                list(vk_calldata["beta2"]),
                list(vk_calldata["gamma2"]),
                list(vk_calldata["delta2"]),
                [list(p) for p in vk_calldata["ic"]],
            )
        except (KeyError, TypeError) as e:
            raise ChainError(
                f"not a verifying key in calldata form: {e}",
                transient=False,
                hint="convert it with zkp.formats.vk_calldata",
            ) from None
        circuit = await self._view(self._escrow, "registerCircuit", args)
        await self._transact(self._escrow, "registerCircuit", args)
        return _hex32(circuit)

    async def claim_with_proof(
        self,
        terms: AgreementTerms,
        requester_signature: bytes,
        proof: Sequence[int],
        public: Sequence[int],
    ) -> ProofClaimed:
        """Asks the escrow to pay ``terms``' provider for its proven zk job."""
        try:
            args = claim_args(terms, requester_signature, proof, public)
        except ZkClaimError as e:
            raise _bad_input(e) from None
        mined = await self._transact_proof(
            self._escrow, "claimWithProof", args, proof_gas("claimWithProof", len(public))
        )
        return self._claimed_events(mined)[0]

    async def slash(
        self,
        job_id: str | bytes,
        requester: str,
        provider: str,
        circuit_id: str | bytes,
        provider_signature: bytes,
        proof: Sequence[int],
        public: Sequence[int],
    ) -> Slashed:
        """Takes a provider's stake on its signed wrong result (the bounty comes here)."""
        try:
            args = slash_args(
                job_id, requester, provider, circuit_id, provider_signature, proof, public
            )
        except ZkClaimError as e:
            raise _bad_input(e) from None
        mined = await self._transact_proof(
            self._escrow, "slash", args, proof_gas("slash", len(public))
        )
        return self._slashed_events(mined)[0]

    async def request(
        self,
        circuit_id: str | bytes,
        inputs: Sequence[int],
        n_outputs: int,
        input_cid: str,
        payment: int,
        deadline: int,
        callback: str | None = None,
    ) -> Requested:
        """Approves ``payment`` and asks ComputeRequests for a zk job (two
        transactions); the Requested record, with its request id."""
        requests = self._need_requests()
        try:
            values = list(checked_public(inputs))
        except ZkClaimError as e:
            raise _bad_input(e) from None
        args = (
            _bytes32(circuit_id, "circuit id"),
            values,
            _uint(n_outputs, "number of outputs", 255),
            str(input_cid),
            _uint(payment, "payment"),
            _uint(deadline, "deadline", 2**64 - 1),
            checked_address(callback) if callback else "0x" + "00" * 20,
        )
        await self._transact(self._token, "approve", requests.address, payment)
        mined = await self._transact(requests, "request", *args)
        return self._requested_events(mined)[0]

    async def fulfill(
        self, request_id: int, provider: str, proof: Sequence[int], public: Sequence[int]
    ) -> tuple[Fulfilled, CallbackFailed | None]:
        """Submits ``provider``'s proof for a request: the provider is paid and the
        requester called back (a failed callback does not undo the payment)."""
        requests = self._need_requests()
        try:
            args = fulfill_args(request_id, provider, proof, public)
        except ZkClaimError as e:
            raise _bad_input(e) from None
        mined = await self._transact_proof(
            requests, "fulfill", args, proof_gas("fulfill", len(public))
        )
        failed = self._callback_failed_events(mined)
        return self._fulfilled_events(mined)[0], (failed[0] if failed else None)

    async def refund(self, request_id: int) -> Refunded:
        mined = await self._transact(
            self._need_requests(), "refund", _uint(request_id, "request id")
        )
        return self._refunded_events(mined)[0]

    # event readers (a bounded block range)

    async def requested(self, from_block: int, to_block: int) -> list[Requested]:
        logs = await self._logs(self._need_requests(), "Requested", from_block, to_block)
        return [self._requested(e) for e in logs]

    async def fulfilled(self, from_block: int, to_block: int) -> list[Fulfilled]:
        logs = await self._logs(self._need_requests(), "Fulfilled", from_block, to_block)
        return [self._fulfilled(e) for e in logs]

    async def refunded(self, from_block: int, to_block: int) -> list[Refunded]:
        logs = await self._logs(self._need_requests(), "Refunded", from_block, to_block)
        return [self._refunded(e) for e in logs]

    async def proofs_claimed(self, from_block: int, to_block: int) -> list[ProofClaimed]:
        logs = await self._logs(self._escrow, "ProofClaimed", from_block, to_block)
        return [self._proof_claimed(e) for e in logs]

    async def slashes(self, from_block: int, to_block: int) -> list[Slashed]:
        logs = await self._logs(self._escrow, "Slashed", from_block, to_block)
        return [self._slashed(e) for e in logs]

    async def circuits_registered(self, from_block: int, to_block: int) -> list[CircuitRegistered]:
        logs = await self._logs(self._escrow, "CircuitRegistered", from_block, to_block)
        return [
            CircuitRegistered(_hex32(e["args"]["circuitId"]), int(e["args"]["nPublic"]), *_where(e))
            for e in logs
        ]

    async def _logs(self, contract: Any, event: str, from_block: int, to_block: int) -> list[Any]:
        _uint(from_block, "from_block")
        _uint(to_block, "to_block")
        if not 0 <= to_block - from_block < MAX_LOG_BLOCKS:
            raise ChainError(
                f"block range {from_block}..{to_block} is empty or over {MAX_LOG_BLOCKS} blocks",
                transient=False,
                hint="read events in steps of at most MAX_LOG_BLOCKS blocks",
            )

        def read() -> list[Any]:
            with self.chain._guard("eth_getLogs"):
                return list(
                    getattr(contract.events, event)().get_logs(
                        from_block=from_block, to_block=to_block
                    )
                )

        return await self._run(read)

    # receipts to records

    def _claimed_events(self, mined: Receipt) -> list[ProofClaimed]:
        return [self._proof_claimed(e) for e in self._events(mined, "ProofClaimed")]

    def _slashed_events(self, mined: Receipt) -> list[Slashed]:
        return [self._slashed(e) for e in self._events(mined, "Slashed")]

    def _requested_events(self, mined: Receipt) -> list[Requested]:
        return [self._requested(e) for e in self._events(mined, "Requested")]

    def _fulfilled_events(self, mined: Receipt) -> list[Fulfilled]:
        return [self._fulfilled(e) for e in self._events(mined, "Fulfilled")]

    def _refunded_events(self, mined: Receipt) -> list[Refunded]:
        return [self._refunded(e) for e in self._events(mined, "Refunded")]

    def _callback_failed_events(self, mined: Receipt) -> list[CallbackFailed]:
        return [
            CallbackFailed(int(e["args"]["requestId"]), e["args"]["callback"], *_where(e))
            for e in self._events(mined, "CallbackFailed")
        ]

    def _events(self, mined: Receipt, name: str) -> list[dict[str, Any]]:
        """The receipt's ``name`` events as web3 log dicts (args, block, tx hash)."""
        return [
            {
                "args": ev.args,
                "blockNumber": mined.block_number,
                "transactionHash": mined.tx_hash,
            }
            for ev in mined.events
            if ev.name == name
        ]

    @staticmethod
    def _requested(e: Mapping[str, Any]) -> Requested:
        a = e["args"]
        return Requested(
            request_id=int(a["requestId"]),
            requester=a["requester"],
            circuit_id=_hex32(a["circuitId"]),
            inputs=tuple(int(v) for v in a["inputs"]),
            n_outputs=int(a["nOutputs"]),
            input_cid=str(a["inputCid"]),
            payment=int(a["payment"]),
            deadline=int(a["deadline"]),
            callback=a["callback"],
            block_number=_where(e)[0],
            tx_hash=_where(e)[1],
        )

    @staticmethod
    def _fulfilled(e: Mapping[str, Any]) -> Fulfilled:
        a = e["args"]
        return Fulfilled(
            int(a["requestId"]), a["provider"], tuple(int(v) for v in a["outputs"]), *_where(e)
        )

    @staticmethod
    def _refunded(e: Mapping[str, Any]) -> Refunded:
        a = e["args"]
        return Refunded(int(a["requestId"]), a["requester"], int(a["amount"]), *_where(e))

    @staticmethod
    def _proof_claimed(e: Mapping[str, Any]) -> ProofClaimed:
        a = e["args"]
        return ProofClaimed(
            _hex32(a["jobId"]), a["requester"], a["provider"], int(a["amount"]), *_where(e)
        )

    @staticmethod
    def _slashed(e: Mapping[str, Any]) -> Slashed:
        a = e["args"]
        return Slashed(
            a["provider"], _hex32(a["jobId"]), int(a["amount"]), a["reporter"], *_where(e)
        )

    # sending

    async def _transact(self, contract: Any, fn: str, *args: Any) -> Receipt:
        """An ordinary transaction: estimated (a refusal is raised before it is sent)."""

        def build(nonce: int) -> dict[str, Any]:
            tx = self.chain.transaction(
                contract, fn, *args, sender=self.address, nonce=nonce, abis=self._abis
            )
            tx["gas"] = int(tx["gas"] * GAS_MARGIN)
            return tx

        return await self._send(build, contract, fn)

    async def _transact_proof(
        self, contract: Any, fn: str, args: Sequence[Any], gas: int
    ) -> Receipt:
        """A proof-carrying transaction: one dry run, then sent with ``gas`` (no estimate)."""

        def build(nonce: int) -> dict[str, Any]:
            self.chain.call(contract, fn, *args, sender=self.address, abis=self._abis)
            return self.chain.transaction(
                contract, fn, *args, sender=self.address, nonce=nonce, gas=gas, abis=self._abis
            )

        return await self._send(build, contract, fn)

    async def _send(
        self, build: Callable[[int], dict[str, Any]], contract: Any, fn: str
    ) -> Receipt:
        try:
            sent = await self.sender.send(build)
        except RevertError as e:
            raise explain_revert(e, fn) from e.__cause__
        mined = await self._wait_receipt(sent.tx_hash, [contract])
        if not mined.status:
            why = await self._run(self.chain.replay_revert, sent.tx, mined.block_number, self._abis)
            if why is not None:
                raise explain_revert(why, fn)
            raise RevertError(
                f"{fn} reverted on chain in transaction {sent.tx_hash}",
                hint="the chain changed between the dry run and the transaction; retry",
            )
        return mined

    async def _wait_receipt(self, tx_hash: str, contracts: Sequence[Any]) -> Receipt:
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


def _where(e: Mapping[str, Any]) -> tuple[int, str]:
    tx = e["transactionHash"]
    return int(e["blockNumber"]), tx if isinstance(tx, str) else tx.to_0x_hex()
