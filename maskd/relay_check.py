"""The provider's check of a relayed zk job against the chain, before it proves.

A relayed job (``scheduler.spec.Relay``: a DApp's request on ComputeRequests,
placed by a gateway) is paid by the contract when its proof is submitted, so
no voucher is expected for it. That is only true if the request is real: a
requester could otherwise mark any job "relayed" and have it proved for
nothing. So before a provider proves one, it reads the request from the chain
and refuses the job (``zk_relay_invalid``, with the reason) unless:

- the relay names the ComputeRequests contract this node knows (the embedded
  deployment's, or ``[gateway] requests``), on this node's chain;
- the request is open and before its deadline;
- it names the circuit the agreement names (``circuitId``);
- it pays at least the agreed price;
- its public inputs are the job's (``inputsHash``, as the contract stores it),
  so the proof made here is one ``fulfill`` accepts.

:func:`relay_problem` is the pure rule; :class:`RelayChecker` reads the chain
through the node's money (once connected) and never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from eth_utils import keccak

from scheduler.spec import Relay

log = logging.getLogger("maskd.relay_check")

__all__ = [
    "RELAY_HINT",
    "RELAY_INVALID",
    "RelayChecker",
    "inputs_hash",
    "known_requests",
    "relay_problem",
]

RELAY_INVALID = "zk_relay_invalid"
RELAY_HINT = (
    "a relayed job must answer an open ComputeRequests request of this provider's chain "
    "that pays at least the agreed price, for this circuit and these public inputs"
)


def inputs_hash(values: Sequence[int]) -> str:
    """keccak256(abi.encodePacked(uint256[] inputs)), as ComputeRequests stores it (hex)."""
    return keccak(b"".join(int(v).to_bytes(32, "big") for v in values)).hex()


def relay_problem(
    relay: Relay,
    state: Any,  # ledger.zkchain.RequestState
    *,
    known_contract: str | None,
    chain_id: int,
    circuit_id: str,
    price: int,
    public_inputs: Sequence[int],
    chain_now: int,
) -> str | None:
    """Why the job's relay is not a request that will pay this proof, or None. Pure."""
    if known_contract is None:
        return (
            "this provider knows no ComputeRequests contract to check the relay against "
            "(set [gateway] requests)"
        )
    if relay.contract.lower() != known_contract.lower() or relay.chain_id != chain_id:
        return (
            f"the job relays a request of {relay.contract} on chain {relay.chain_id}; this "
            f"provider knows ComputeRequests {known_contract} on chain {chain_id}"
        )
    rid = relay.request_id
    if state.status != "open":
        return f"request {rid} is {state.status}, not open"
    if state.deadline <= chain_now:
        return f"request {rid} is past its deadline ({state.deadline})"
    if state.circuit_id.lower() != circuit_id.lower().removeprefix("0x"):
        return f"request {rid} names circuit {state.circuit_id}, the agreement {circuit_id}"
    if state.payment < price:
        return f"request {rid} pays {state.payment}, below the agreed price {price}"
    if state.n_inputs != len(public_inputs) or state.inputs_hash.lower() != inputs_hash(
        public_inputs
    ):
        return f"the job's public inputs are not request {rid}'s"
    return None


def known_requests(configured: str, backend: str, chain: Any) -> str | None:
    """The ComputeRequests address this node trusts: ``[gateway] requests``, else
    on the embedded chain the deployment's (the deployer's third contract),
    else none."""
    if configured:
        return configured
    if backend != "embedded":
        return None
    from eth_account import Account

    from maskd.money import create_address

    deployer = Account.from_key(chain.dev_keys()[0]).address  # eth-tester's first key
    return create_address(deployer, 2)


class RelayChecker:
    """``await checker(bundle, terms)``: the reason to refuse a relayed job, or None.

    ``money`` is the node's (``maskd.money.Money``: ``connected``, ``chain``,
    ``escrow.sender``, ``token``, ``domain``); ``known_contract(chain)`` gives
    the ComputeRequests address this node trusts (None: none)."""

    def __init__(self, money: Any, known_contract: Callable[[Any], str | None]):
        self._money = money
        self._known = known_contract
        self._zk: Any = None

    async def __call__(self, bundle: Any, terms: Any) -> str | None:
        relay: Relay | None = bundle.relay
        if relay is None:
            return None
        money = self._money
        if not money.connected.is_set():
            return "the chain is not connected: the relay cannot be checked yet"
        try:
            known = self._known(money.chain)
            if known is None or relay.contract.lower() != known.lower():
                state = None
            else:
                state = await self._reader(known).request_state(int(relay.request_id))
            sender = money.escrow.sender
            now = await sender.run(money.chain.block_timestamp)
        except Exception as e:  # a chain that does not answer: refuse, never raise
            log.info("checking relay %s failed: %s", relay, e)
            return f"the relay cannot be checked on chain: {e}"[:300]
        circuit = bundle.circuit
        names = circuit.public_names[circuit.n_outputs : -1]
        try:
            public = [int(bundle.inputs[name]) for name in names]
        except (KeyError, TypeError, ValueError):
            return "the job's public inputs are not single numbers"
        return relay_problem(
            relay,
            state,
            known_contract=known,
            chain_id=money.domain.chain_id,
            circuit_id=str(terms.circuit_id),
            price=int(terms.price_total),
            public_inputs=public,
            chain_now=now,
        )

    def _reader(self, contract: str) -> Any:
        from ledger.zkchain import ZkChain

        money = self._money
        if self._zk is None or self._zk.requests_address.lower() != contract.lower():
            self._zk = ZkChain(
                money.chain,
                money.token,
                money.domain.escrow,
                contract,
                b"\x01" * 32,  # reads only: never signs
                None,  # type: ignore[arg-type]
                sender=money.escrow.sender,
            )
        return self._zk
