"""The DApp part of ``mask demo``: a smart contract buys a verified result.

Issue 10's promise ends with "a smart contract can buy a verified result from
the mesh"; this shows it on the demo's devnet, where node0 is the gateway
(``[gateway] enabled``). From the devchain's treasury key the demo registers
the shipped ``private_stats`` circuit on the escrow, puts the 16 private
values of ``examples/zk-stats`` on node0 (``v1.storage.put``, as ``mask put``
does), deploys the example ``StatsConsumer`` DApp over that dataset's Poseidon
commitment and CID, and has a user (a dev key funded with MASK) approve and
``ask``. node0's gateway places the request on the mesh, a provider proves
it, node0 verifies the proof and sends ``fulfill``: ComputeRequests checks the
proof on chain, pays the provider and calls the DApp back.

What the demo reports comes from the chain, read here with our own client:
the ``Transfer`` of the payment and the ``Fulfilled`` event in the fulfil
transaction, and the statistics the DApp stored (``results(requestId)``),
checked against the example's own values by :func:`judge`, which is pure.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from maskd.devnet import DevnetError, DevNode, wait_until
from maskd.devnet_chain import DevChain
from protocol.errors import MaskError

__all__ = [
    "DAPP_PAYMENT",
    "DappResult",
    "Stats",
    "buy_verified_result",
    "dapp_rows",
    "expected_stats",
    "judge",
    "load_dataset",
]

Progress = Callable[[str], None]

#: what the DApp's user pays for one answer (base units: 1 MASK)
DAPP_PAYMENT = 10**18
#: the request's deadline, from the chain's clock (the gateway wants at least
#: ``[gateway] min_time_left_s``, 180 s by default)
DEADLINE_S = 3600
#: the gateway's states a request leaves no more (maskd.gateway_core.FINAL)
FINAL_STATES = ("fulfilled", "failed", "expired", "skipped")
#: dev keys: 0 the treasury (deployer), 1 the faucet's gas; the user is this one
USER_KEY_INDEX = 2
_GAS_MARGIN = 1.25
_TX_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Stats:
    """``private_stats``' outputs, as ``StatsConsumer.results`` stores them."""

    sum: int
    count_above: int
    mean_floor: int
    threshold: int

    def line(self) -> str:
        return f"sum {self.sum}, {self.count_above} above {self.threshold}, mean {self.mean_floor}"


@dataclass(frozen=True, slots=True)
class DappResult:
    """What became of the DApp's request (amounts in base units)."""

    request_id: int
    dapp: str  # the StatsConsumer's address
    expected: Stats  # from the example's values
    payment: int  # what the user paid with ask
    ask_gas: int
    state: str  # the gateway's last word: fulfilled, failed, ..., or "timed out"
    reason: str = ""  # the gateway's reason (and detail) when not fulfilled
    provider: str = ""  # the account the Fulfilled event names
    provider_node: str = ""  # its node on the devnet, "" if none
    paid: int | None = None  # Transfer to the provider in the fulfil tx
    fulfil_gas: int | None = None
    fulfil_tx: str = ""
    callback_failed: bool = False
    stored: Stats | None = None  # results(requestId), None while not answered
    seconds: float = 0.0  # ask to fulfilled

    @property
    def problems(self) -> tuple[str, ...]:
        return judge(self)

    @property
    def ok(self) -> bool:
        return not self.problems


def expected_stats(values: Sequence[int], threshold: int) -> Stats:
    """What ``private_stats`` proves over ``values`` (16 of them) above ``threshold``."""
    total = sum(values)
    return Stats(total, sum(v > threshold for v in values), total // len(values), threshold)


def judge(r: DappResult) -> tuple[str, ...]:
    """Each way the request fell short, in words (none: the DApp bought a
    verified result and the provider was paid its payment)."""
    if r.state != "fulfilled":
        why = f": {r.reason}" if r.reason else ""
        return (f"request {r.request_id} ended {r.state} on node0's gateway{why}",)
    problems = []
    if not r.provider:
        problems.append(f"no Fulfilled event for request {r.request_id} in its fulfil transaction")
    elif not r.provider_node:
        problems.append(f"the provider paid, {r.provider}, is no node of the devnet")
    if r.paid != r.payment:
        problems.append(
            f"the provider received {r.paid if r.paid is not None else 'nothing'} base units "
            f"in the fulfil transaction; the request paid {r.payment}"
        )
    if r.callback_failed:
        problems.append("ComputeRequests reports the DApp's callback failed (CallbackFailed)")
    if r.stored is None:
        problems.append(f"the DApp stored no result for request {r.request_id}")
    elif r.stored != r.expected:
        problems.append(f"the DApp stored {r.stored.line()}; the data say {r.expected.line()}")
    return tuple(problems)


def dapp_rows(r: DappResult, format_amount: Callable[[int | None], str]) -> list[tuple[str, str]]:
    """The demo's table of the request: (what, value) rows."""

    def gas(value: int | None) -> str:
        return f"{value:,}" if value is not None else "-"

    provider = f"{r.provider_node or '?'} ({r.provider})" if r.provider else "-"
    stored = r.stored.line() if r.stored is not None else "nothing"
    return [
        ("request", f"{r.request_id} by StatsConsumer {r.dapp} (private_stats)"),
        ("state", r.state + (f": {r.reason}" if r.reason else "") + f" ({r.seconds:.1f} s)"),
        ("provider", provider),
        ("payment", f"{format_amount(r.payment)} MASK asked, {format_amount(r.paid)} MASK paid"),
        ("stored by the DApp", stored),
        ("expected", r.expected.line()),
        ("gas", f"ask {gas(r.ask_gas)}, fulfill {gas(r.fulfil_gas)}"),
    ]


def load_dataset(example: Path) -> tuple[list[int], int, int]:
    """(values, threshold, commitment) of ``examples/zk-stats/input.json``."""
    raw = json.loads((example / "input.json").read_text())
    values = [int(v) for v in raw["values"]]
    return values, int(raw["threshold"]), int(raw["commitment"])


# -- the shell -----------------------------------------------------------------


def _send(client: Any, contract: Any, fn: str, *args: Any, key: bytes, decode: Sequence[Any] = ()):
    """``contract.fn(*args)`` from ``key``, mined; a refusal raises in words."""
    from eth_account import Account

    from ledger.ports import ChainError

    sender = Account.from_key(key).address
    abis = [c.abi for c in decode]
    tx = client.transaction(
        contract, fn, *args, sender=sender, nonce=client.pending_nonce(sender), abis=abis
    )
    tx["gas"] = int(tx["gas"] * _GAS_MARGIN)
    mined = client.wait_receipt(
        client.send_transaction(tx, key), [contract, *decode], timeout_s=_TX_TIMEOUT_S
    )
    if not mined.status:
        raise ChainError(
            f"{fn} reverted in transaction {mined.tx_hash}",
            transient=False,
            hint="see the devchain's log",
        )
    return mined


def _request_row(gateway: DevNode, request_id: int) -> Mapping[str, Any] | None:
    shown = gateway.call("v1.gateway.show", {"limit": 20}, timeout=10)
    for row in shown.get("requests", []):
        if row.get("request_id") == str(request_id):
            return row
    return None


def _wait_gateway_ready(gateway: DevNode, timeout: float) -> None:
    shown: dict[str, Any] = {}

    def ready() -> bool:
        shown.update(gateway.call("v1.gateway.show", {"limit": 1}, timeout=10))
        return shown.get("state") == "ok"

    try:
        wait_until(ready, timeout, f"{gateway.data_dir.name}'s gateway to watch the chain", 0.2)
    except DevnetError as e:
        raise DevnetError(
            f"{e.message} (state {shown.get('state')}: {shown.get('last_error') or 'no error'})",
            hint=f"see {gateway.data_dir / 'maskd.err'}",
        ) from None


def _wait_final(
    gateway: DevNode, request_id: int, timeout: float, progress: Progress
) -> Mapping[str, Any] | None:
    """Poll node0's gateway until the request is final, saying each new state."""
    seen: dict[str, Any] = {"row": None, "state": ""}
    started = time.monotonic()

    def final() -> bool:
        row = _request_row(gateway, request_id)
        if row is None:
            return False
        seen["row"] = row
        state = str(row.get("state"))
        if state != seen["state"]:
            seen["state"] = state
            detail = []
            if row.get("job_id"):
                detail.append(f"job {str(row['job_id'])[:12]}…")
            if row.get("provider"):
                detail.append(f"provider {row['provider']}")
            if row.get("reason"):
                detail.append(str(row["reason"]))
            more = f" ({', '.join(detail)})" if detail else ""
            progress(f"{time.monotonic() - started:4.1f} s: request {request_id} {state}{more}")
        return state in FINAL_STATES

    try:
        wait_until(final, timeout, f"request {request_id} to end", interval=0.25)
    except DevnetError:
        return None
    return seen["row"]


def buy_verified_result(
    gateway: DevNode,
    nodes: Sequence[DevNode],
    chain: DevChain,
    example: Path,
    progress: Progress,
    *,
    timeout: float = 60.0,
    format_amount: Callable[[int | None], str] = str,
) -> DappResult:
    """A DApp on ``chain`` asks for ``example``'s statistics and ``gateway``'s
    node has the mesh answer. Raises DevnetError (with the reason) when the
    request cannot be made at all; a request made but not answered comes back
    as a DappResult whose :attr:`~DappResult.problems` say why."""
    from ledger.ports import ChainError

    try:
        return _buy(gateway, nodes, chain, example, progress, timeout, format_amount)
    except DevnetError:
        raise
    except ChainError as e:
        raise DevnetError(f"the DApp's request failed: {e}", hint=e.hint or None) from e
    except MaskError as e:  # a node's refusal (v1.storage.put, ...), a circuit's
        raise DevnetError(f"the DApp's request failed: {e.message}", hint=e.hint) from e
    except (OSError, ValueError, KeyError) as e:
        raise DevnetError(f"the DApp's request failed: {e}") from e


def _buy(
    gateway: DevNode,
    nodes: Sequence[DevNode],
    chain: DevChain,
    example: Path,
    progress: Progress,
    timeout: float,
    format_amount: Callable[[int | None], str],
) -> DappResult:
    from eth_account import Account

    from ledger.contracts import ESCROW, REQUESTS, STATS_CONSUMER, TOKEN, load_artifact
    from ledger.deploy import fund
    from zkp.circuit import load_circuit, shipped_circuits
    from zkp.formats import vk_calldata, vk_id
    from zkp.poseidon import poseidon

    if not chain.requests:
        raise DevnetError(
            "the devnet's chain has no ComputeRequests contract",
            hint="start a fresh devnet: `mask devnet up` deploys it beside the escrow",
        )
    values, threshold, commitment = load_dataset(example)
    if poseidon(values) != commitment:
        raise DevnetError(f"{example / 'input.json'}: the commitment is not the values' Poseidon")
    expected = expected_stats(values, threshold)
    _wait_gateway_ready(gateway, 15)

    client = chain.client(timeout_s=30)
    keys = client.dev_keys()
    if len(keys) <= USER_KEY_INDEX:
        raise DevnetError(f"the {chain.kind} chain lists {len(keys)} dev keys; the demo needs 3")
    treasury, user_key = keys[0], keys[USER_KEY_INDEX]
    user = Account.from_key(user_key).address
    escrow = client.contract(chain.escrow, load_artifact(ESCROW).abi)
    token = client.contract(chain.token, load_artifact(TOKEN).abi)
    requests = client.contract(chain.requests, load_artifact(REQUESTS).abi)

    # 1. the circuit, registered by its verifying key (what fulfill verifies against)
    stats = load_circuit(shipped_circuits()["private_stats"])
    calldata = vk_calldata(stats.vk)
    circuit_id = vk_id(stats.vk)
    args = (
        calldata["alpha1"],
        calldata["beta2"],
        calldata["gamma2"],
        calldata["delta2"],
        calldata["ic"],
    )
    _send(client, escrow, "registerCircuit", args, key=treasury)
    progress(f"private_stats registered on the escrow: circuit {circuit_id[:8]}…{circuit_id[-4:]}")

    # 2. the private dataset, on the gateway's node (providers fetch it from there)
    with tempfile.TemporaryDirectory(prefix="mask-demo-dapp-") as tmp:
        path = Path(tmp) / "dataset.json"
        path.write_text(json.dumps({"values": [str(v) for v in values]}))
        cid = str(gateway.call("v1.storage.put", {"path": str(path)}, timeout=30)["cid"])
    progress(f"{len(values)} private values put on {gateway.data_dir.name}: {cid}")

    # 3. the DApp, which knows only the commitment and the CID
    consumer = load_artifact(STATS_CONSUMER)
    dapp_address = client.deploy(
        consumer,
        [chain.requests, bytes.fromhex(circuit_id), commitment, cid],
        treasury,
        timeout_s=_TX_TIMEOUT_S,
    )
    dapp = client.contract(dapp_address, consumer.abi)
    progress(f"StatsConsumer deployed at {dapp_address} (commitment {str(commitment)[:12]}…)")

    # 4. its user pays for an answer
    fund(client, treasury, user, 0, DAPP_PAYMENT, token=chain.token)
    _send(client, token, "approve", dapp_address, DAPP_PAYMENT, key=user_key)
    deadline = client.block_timestamp() + DEADLINE_S
    asked = _send(
        client, dapp, "ask", threshold, DAPP_PAYMENT, deadline, key=user_key, decode=[requests]
    )
    found = [e for e in asked.events if e.name == "Asked"]
    if not found:
        raise DevnetError(f"ask was mined in {asked.tx_hash} without an Asked event")
    request_id = int(found[0].args["requestId"])
    started = time.monotonic()
    progress(
        f"a user asked StatsConsumer for the statistics above {threshold}, paying "
        f"{format_amount(DAPP_PAYMENT)} MASK: request {request_id} (gas {asked.gas_used:,})"
    )

    # 5. node0's gateway places it, a provider proves it, node0 fulfils it
    row = _wait_final(gateway, request_id, timeout, progress)
    seconds = time.monotonic() - started
    base = DappResult(
        request_id,
        dapp_address,
        expected,
        DAPP_PAYMENT,
        asked.gas_used,
        "timed out",
        seconds=seconds,
    )
    if row is None:
        return replace(base, reason=f"not final after {timeout:.0f} s")
    if row.get("state") != "fulfilled":
        reason = ": ".join(str(x) for x in (row.get("reason"), row.get("detail")) if x)
        return replace(base, state=str(row.get("state")), reason=reason)
    result = replace(base, state="fulfilled")

    # 6. the chain's record: the fulfil transaction and what the DApp stored
    tx_hash = str(row.get("tx_hash") or "")
    if tx_hash:
        mined = client.receipt(tx_hash, [requests, token])
        if mined is not None:
            provider = next(
                (
                    str(e.args["provider"])
                    for e in mined.events
                    if e.name == "Fulfilled" and int(e.args["requestId"]) == request_id
                ),
                "",
            )
            paid = sum(
                int(e.args["value"])
                for e in mined.events
                if e.name == "Transfer"
                and str(e.args["from"]).lower() == chain.requests.lower()
                and provider
                and str(e.args["to"]).lower() == provider.lower()
            )
            result = replace(
                result,
                provider=provider,
                paid=paid if provider else None,
                fulfil_gas=mined.gas_used,
                fulfil_tx=tx_hash,
                callback_failed=any(e.name == "CallbackFailed" for e in mined.events),
            )
    if result.provider:
        names = {}
        for node in nodes:
            try:
                names[str(node.call("v1.wallet.show")["address"]).lower()] = node.data_dir.name
            except MaskError:
                continue
        result = replace(result, provider_node=names.get(result.provider.lower(), ""))
    total, count, mean, at, answered = client.call(dapp, "results", request_id)
    if answered:
        result = replace(result, stored=Stats(int(total), int(count), int(mean), int(at)))
    return result
