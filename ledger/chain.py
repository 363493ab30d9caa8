"""Synchronous chain clients: one small surface over web3.py for the escrow and the tools.

The trio shell (``ledger/escrow.py``) calls these from worker threads through
one ``CapacityLimiter``: web3.py 8's async provider does not run under trio,
and a synchronous client behind a limiter is simple and bounded. Two backends
share the class: :class:`EmbeddedChain` (eth-tester / py-evm in this process;
py-evm is not thread-safe, so every call takes one lock) and :class:`RpcChain`
(a JSON-RPC node: anvil, the devchain, a real network; request timeouts set,
web3's own retries off so a call fails in bounded time, and the node's chain
id checked at connect).

Every failure leaves as :class:`ledger.ports.ChainError`: connection errors and
timeouts (and nonce races) are ``transient``; a revert is a
:class:`RevertError` (not transient) whose custom Solidity error is decoded
from the contract's ABI, because "UnlockNotDue(unlockAt=...)" tells a person
what to do and a 4-byte selector does not. Addresses from peers or configs are
checked before they reach web3.
"""

from __future__ import annotations

import ast
import functools
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any, Protocol

import requests
from eth_abi import abi as eth_abi
from eth_account import Account
from eth_utils import (
    abi_to_signature,
    event_abi_to_log_topic,
    function_signature_to_4byte_selector,
    get_abi_input_names,
    get_abi_input_types,
    to_checksum_address,
)
from hexbytes import HexBytes
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.contract import Contract
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    ProviderConnectionError,
    RequestTimedOut,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)

from ledger.ports import ChainError
from ledger.vouchers import checksum

__all__ = [
    "ANVIL_MNEMONIC",
    "Artifact",
    "ChainClient",
    "EmbeddedChain",
    "Event",
    "Receipt",
    "RevertError",
    "RpcChain",
    "anvil_dev_keys",
    "checked_address",
    "decode_revert",
    "eth_tester_dev_keys",
    "eth_tester_revert_data",
]

ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
"""The public anvil/hardhat dev mnemonic: its first 10 accounts are funded on anvil."""

RECEIPT_TIMEOUT_S = 60.0
_POLL_S = 0.05
_ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
_PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)
_MAX_MESSAGE = 300  # node error text quoted in our messages is cut to this
_TRANSIENT_RPC_MARKERS = (
    "nonce too low",
    "nonce too high",
    "invalid transaction nonce",  # eth-tester
    "already known",
    "replacement transaction underpriced",
    "transaction underpriced",
    "timeout",
    "timed out",
)


class Artifact(Protocol):
    """A compiled contract (``ledger.contracts.load_artifact(name)``)."""

    @property
    def abi(self) -> list[dict[str, Any]]: ...

    @property
    def bytecode(self) -> str: ...


class RevertError(ChainError):
    """The EVM reverted the call or transaction (never transient).

    ``error_name`` is the decoded Solidity error (``"InsufficientDeposit"``,
    ``"Error"`` for ``require`` strings, ``"Panic"``), or ``""`` when the data
    matched nothing in the ABI; ``error_args`` its decoded arguments."""

    def __init__(
        self,
        message: str,
        *,
        error_name: str = "",
        error_args: Mapping[str, Any] | None = None,
        data: bytes = b"",
        hint: str = "",
    ):
        super().__init__(message, transient=False, hint=hint)
        self.error_name = error_name
        self.error_args = dict(error_args or {})
        self.data = data


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded log of a known contract."""

    address: str
    name: str
    args: dict[str, Any]
    log_index: int


@dataclass(frozen=True, slots=True)
class Receipt:
    """A mined transaction. ``events``: the logs of the contracts passed to
    :meth:`ChainClient.receipt`, decoded; other logs are left out."""

    tx_hash: str
    block_number: int
    status: bool
    gas_used: int
    contract_address: str | None
    events: tuple[Event, ...] = ()


# --- dev keys ---------------------------------------------------------------


def eth_tester_dev_keys() -> list[bytes]:
    """eth-tester's funded accounts: private keys 1..10 (deterministic, public)."""
    return [i.to_bytes(32, "big") for i in range(1, 11)]


@functools.cache
def _anvil_keys() -> tuple[bytes, ...]:
    Account.enable_unaudited_hdwallet_features()
    return tuple(
        bytes(Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}").key)
        for i in range(10)
    )


def anvil_dev_keys() -> list[bytes]:
    """anvil's (and hardhat's) 10 funded dev accounts, from :data:`ANVIL_MNEMONIC`."""
    return list(_anvil_keys())


# --- revert decoding ----------------------------------------------------------


def eth_tester_revert_data(exc: BaseException) -> bytes | None:
    """The revert data inside an eth-tester ``TransactionFailed``.

    eth-tester reports ``"execution reverted: <reason>"`` where reason is either
    the decoded ``Error(string)`` text or the repr of the raw bytes; both are
    turned back into the ABI-encoded revert data a real node returns."""
    text = str(exc.args[0]) if exc.args else ""
    if isinstance(exc.args[0] if exc.args else None, bytes):
        return bytes(exc.args[0])
    prefix = "execution reverted: "
    reason = text[len(prefix) :] if text.startswith(prefix) else text
    if reason[:2] in ("b'", 'b"'):
        try:
            value = ast.literal_eval(reason)  # a bytes literal, nothing else
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, bytes):
            return value
    if not reason:
        return b""
    return _ERROR_SELECTOR + eth_abi.encode(["string"], [reason])


def _error_table(abi: Sequence[Mapping[str, Any]]) -> dict[bytes, Mapping[str, Any]]:
    table: dict[bytes, Mapping[str, Any]] = {}
    for item in abi:
        if item.get("type") == "error":
            table[function_signature_to_4byte_selector(abi_to_signature(item))] = item
    return table


def decode_revert(
    data: bytes, abis: Sequence[Sequence[Mapping[str, Any]]] = ()
) -> tuple[str, dict[str, Any]]:
    """(error name, arguments) of revert data: ``Error(string)``, ``Panic(uint256)``
    or a custom error of one of ``abis``; ``("", {})`` when nothing matches."""
    selector, body = data[:4], data[4:]
    try:
        if selector == _ERROR_SELECTOR:
            return "Error", {"reason": eth_abi.decode(["string"], body)[0]}
        if selector == _PANIC_SELECTOR:
            return "Panic", {"code": eth_abi.decode(["uint256"], body)[0]}
        for abi in abis:
            item = _error_table(abi).get(selector)
            if item is not None:
                types = get_abi_input_types(item)
                values = [
                    to_checksum_address(v) if t == "address" else v
                    for t, v in zip(types, eth_abi.decode(types, body), strict=True)
                ]
                names = get_abi_input_names(item)
                return str(item["name"]), dict(zip(names, values, strict=True))
    except Exception:  # malformed revert data from a node: report it undecoded
        return "", {}
    return "", {}


def _revert_error(
    what: str, data: bytes | None, abis: Sequence[Sequence[Mapping[str, Any]]]
) -> RevertError:
    data = data or b""
    name, args = decode_revert(data, abis)
    if name == "Error":
        detail = f"Error({args['reason'][:_MAX_MESSAGE]!r})"
    elif name:
        detail = f"{name}({', '.join(f'{k}={v}' for k, v in args.items())})"
    elif data:
        detail = f"unknown error 0x{data[:4].hex()}"
    else:
        detail = "no reason given"
    return RevertError(
        f"{what} reverted: {detail}",
        error_name=name,
        error_args=args,
        data=data,
        hint="the contract refused the request; see the error's arguments",
    )


def _web3_revert_data(exc: ContractLogicError) -> bytes | None:
    data = exc.data
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return None
    if isinstance(data, Mapping):  # some nodes nest it: {"data": "0x..."}
        inner = data.get("data")
        if isinstance(inner, str) and inner.startswith("0x"):
            try:
                return bytes.fromhex(inner[2:])
            except ValueError:
                return None
    return None


def _short(text: object) -> str:
    s = str(text)
    return s if len(s) <= _MAX_MESSAGE else s[:_MAX_MESSAGE] + "..."


# --- the client ---------------------------------------------------------------


class ChainClient:
    """A chain, synchronously. Build one with :meth:`embedded` or :meth:`rpc`.

    Every method raises :class:`ChainError` (or :class:`RevertError`) and
    nothing else for chain failures and bad addresses."""

    chain_id: int
    w3: Web3

    def __init__(self, w3: Web3, chain_id: int, *, name: str, lock: bool):
        self.w3 = w3
        self.chain_id = chain_id
        self.name = name
        self._lock: Any = threading.RLock() if lock else nullcontext()

    # construction

    @staticmethod
    def embedded(chain_id: int | None = None) -> EmbeddedChain:
        return EmbeddedChain(chain_id)

    @staticmethod
    def rpc(url: str, chain_id: int, timeout_s: float = 10.0) -> RpcChain:
        return RpcChain(url, chain_id, timeout_s)

    def dev_keys(self) -> list[bytes]:
        """Private keys of the node's funded dev accounts (eth-tester's or anvil's
        well-known ones that the node lists in ``eth_accounts``); empty on a real
        network."""
        with self._guard("eth_accounts"):
            listed = {a.lower() for a in self.w3.eth.accounts}
        return [
            k
            for k in eth_tester_dev_keys() + anvil_dev_keys()
            if Account.from_key(k).address.lower() in listed
        ]

    # error mapping

    def _hint_unreachable(self) -> str:
        return "check that the chain node is running and reachable"

    @contextmanager
    def _guard(self, what: str, abis: Sequence[Sequence[Mapping[str, Any]]] = ()) -> Iterator[None]:
        from eth_tester.exceptions import TransactionFailed
        from eth_tester.exceptions import ValidationError as TesterValidationError
        from eth_utils.exceptions import ValidationError as EthValidationError

        with self._lock:
            try:
                yield
            except ChainError:
                raise
            except TransactionFailed as e:
                raise _revert_error(what, eth_tester_revert_data(e), abis) from e
            except (ContractCustomError, ContractPanicError, ContractLogicError) as e:
                raise _revert_error(what, _web3_revert_data(e), abis) from e
            except (
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout,
                ProviderConnectionError,
                RequestTimedOut,
                TimeExhausted,
                ConnectionError,
                TimeoutError,
            ) as e:
                raise ChainError(
                    f"{what}: {self.name} unreachable or too slow: {_short(e)}",
                    transient=True,
                    hint=self._hint_unreachable(),
                ) from e
            except (Web3RPCError, EthValidationError, TesterValidationError) as e:
                message = _short(e.args[0] if e.args else e)
                if isinstance(e, Web3RPCError) and isinstance(e.rpc_response, Mapping):
                    error = e.rpc_response.get("error")
                    if isinstance(error, Mapping) and "message" in error:
                        message = _short(error["message"])
                low = message.lower()
                transient = any(m in low for m in _TRANSIENT_RPC_MARKERS)
                if "insufficient funds" in low:
                    hint = "the sending account needs ETH for gas"
                elif transient:
                    hint = "retry; another sender may have used this account's nonce"
                else:
                    hint = "the node refused the request"
                raise ChainError(
                    f"{what}: {self.name} refused it: {message}", transient=transient, hint=hint
                ) from e
            except Exception as e:  # web3 raises a zoo of types; never leak one
                raise ChainError(
                    f"{what} failed: {type(e).__name__}: {_short(e)}",
                    transient=False,
                    hint="unexpected answer from the chain node",
                ) from e

    # reads

    def block_number(self) -> int:
        with self._guard("eth_blockNumber"):
            return int(self.w3.eth.block_number)

    def block_timestamp(self, block: int | str = "latest") -> int:
        with self._guard("eth_getBlockByNumber"):
            return int(self.w3.eth.get_block(block)["timestamp"])

    def eth_balance(self, address: str) -> int:
        address = checked_address(address)
        with self._guard("eth_getBalance"):
            return int(self.w3.eth.get_balance(address))

    def code(self, address: str) -> bytes:
        address = checked_address(address)
        with self._guard("eth_getCode"):
            return bytes(self.w3.eth.get_code(address))

    def pending_nonce(self, address: str) -> int:
        address = checked_address(address)
        with self._guard("eth_getTransactionCount"):
            return int(self.w3.eth.get_transaction_count(address, "pending"))

    def contract(self, address: str, abi: Sequence[Mapping[str, Any]]) -> Contract:
        return self.w3.eth.contract(address=checked_address(address), abi=list(abi))

    def call(
        self,
        contract: Contract,
        fn: str,
        *args: Any,
        sender: str | None = None,
        block: int | str = "latest",
        abis: Sequence[Sequence[Mapping[str, Any]]] = (),
    ) -> Any:
        """A view (or a dry run of a transaction) of ``contract.fn(*args)``; a
        revert is decoded with the contract's ABI, then ``abis``."""
        what = f"{fn}()"
        with self._guard(what, [contract.abi, *abis]):
            params: dict[str, Any] = {}
            if sender is not None:
                params["from"] = checked_address(sender)
            return contract.get_function_by_name(fn)(*args).call(params, block_identifier=block)

    def estimate_gas(
        self, tx: Mapping[str, Any], abis: Sequence[Sequence[Mapping[str, Any]]] = ()
    ) -> int:
        """Gas for ``tx`` (``from``, ``to``, ``data``, ``value``); a revert is decoded
        with ``abis``."""
        with self._guard("eth_estimateGas", abis):
            return int(self.w3.eth.estimate_gas(dict(tx)))  # type: ignore[arg-type]

    # writes

    def transaction(
        self,
        contract: Contract,
        fn: str,
        *args: Any,
        sender: str,
        nonce: int,
        gas: int | None = None,
        value: int = 0,
        abis: Sequence[Sequence[Mapping[str, Any]]] = (),
    ) -> dict[str, Any]:
        """The unsigned transaction for ``contract.fn(*args)`` with fees from the
        node. Without ``gas`` it is estimated, so a call that would revert raises
        the decoded :class:`RevertError` here, before anything is sent (decoded
        with the contract's ABI, then ``abis``: a token's error inside the escrow)."""
        with self._guard(f"{fn}()", [contract.abi, *abis]):
            params: dict[str, Any] = {
                "from": checked_address(sender),
                "nonce": nonce,
                "value": value,
                "chainId": self.chain_id,
            }
            if gas is not None:
                params["gas"] = gas
            return dict(contract.get_function_by_name(fn)(*args).build_transaction(params))

    def send_transaction(self, tx: Mapping[str, Any], key: bytes) -> str:
        """Sign ``tx`` locally (it carries its nonce and gas) and send it raw;
        the transaction hash once the node accepted it."""
        with self._guard("eth_sendRawTransaction"):
            tx = dict(tx)
            tx.setdefault("chainId", self.chain_id)
            if "gasPrice" not in tx and "maxFeePerGas" not in tx:
                tx.update(self._fees())
            signed = Account.sign_transaction(tx, key)
            return Web3.to_hex(self.w3.eth.send_raw_transaction(signed.raw_transaction))

    def transact(
        self,
        contract: Contract,
        fn: str,
        *args: Any,
        key: bytes,
        nonce: int,
        gas: int | None = None,
        value: int = 0,
    ) -> str:
        """Build, sign and send ``contract.fn(*args)`` from ``key``'s account."""
        sender = Account.from_key(key).address
        tx = self.transaction(contract, fn, *args, sender=sender, nonce=nonce, gas=gas, value=value)
        return self.send_transaction(tx, key)

    def transfer_eth(self, key: bytes, to: str, wei: int, nonce: int) -> str:
        tx = {"to": checked_address(to), "value": wei, "gas": 21_000, "nonce": nonce}
        return self.send_transaction(tx, key)

    def _fees(self) -> dict[str, int]:
        tip = int(self.w3.eth.max_priority_fee)
        base = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0)
        return {"maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base + tip}

    def receipt(self, tx_hash: str, contracts: Sequence[Contract] = ()) -> Receipt | None:
        """The mined receipt, None while unknown (pending, dropped, reorganised
        away). Logs of ``contracts`` come back decoded as :class:`Event`."""
        tx_hash = _tx_hash(tx_hash)
        with self._guard("eth_getTransactionReceipt"):
            try:
                raw = self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                return None
            if raw is None or raw.get("blockNumber") is None:
                return None
            return Receipt(
                tx_hash=Web3.to_hex(raw["transactionHash"]),
                block_number=int(raw["blockNumber"]),
                status=int(raw["status"]) == 1,
                gas_used=int(raw["gasUsed"]),
                contract_address=raw.get("contractAddress") or None,
                events=tuple(_decode_logs(raw.get("logs", ()), contracts)),
            )

    def wait_receipt(
        self,
        tx_hash: str,
        contracts: Sequence[Contract] = (),
        timeout_s: float = RECEIPT_TIMEOUT_S,
    ) -> Receipt:
        """Poll until mined (sync tools only: deploy, faucet); transient
        ChainError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.receipt(tx_hash, contracts)
            if got is not None:
                return got
            if time.monotonic() >= deadline:
                raise ChainError(
                    f"transaction {tx_hash} not mined after {timeout_s:.0f} s",
                    transient=True,
                    hint="the node may be congested, or mining is off",
                )
            time.sleep(_POLL_S)

    def replay_revert(
        self, tx: Mapping[str, Any], block: int, abis: Sequence[Sequence[Mapping[str, Any]]]
    ) -> RevertError | None:
        """Why a mined transaction reverted: run it again as ``eth_call`` on the
        state before its block. None if the replay does not revert."""
        call = {k: tx[k] for k in ("from", "to", "data", "value") if k in tx}
        try:
            with self._guard("transaction", abis):
                self.w3.eth.call(call, block_identifier=max(block - 1, 0))  # type: ignore[arg-type]
        except RevertError as e:
            return e
        except ChainError:
            return None
        return None

    def deploy(
        self,
        artifact: Artifact | Mapping[str, Any],
        args: Sequence[Any],
        key: bytes,
        *,
        nonce: int | None = None,
        timeout_s: float = RECEIPT_TIMEOUT_S,
    ) -> str:
        """Deploy ``artifact`` with constructor ``args`` from ``key``; the
        contract's address once mined."""
        mined = self.deploy_receipt(artifact, args, key, nonce=nonce, timeout_s=timeout_s)
        assert mined.contract_address is not None
        return mined.contract_address

    def deploy_receipt(
        self,
        artifact: Artifact | Mapping[str, Any],
        args: Sequence[Any],
        key: bytes,
        *,
        nonce: int | None = None,
        timeout_s: float = RECEIPT_TIMEOUT_S,
    ) -> Receipt:
        """:meth:`deploy`, returning the mined receipt (its ``contract_address``
        is EIP-55)."""
        abi, bytecode = _artifact_parts(artifact)
        sender = Account.from_key(key).address
        if nonce is None:
            nonce = self.pending_nonce(sender)
        with self._guard("deploy", [abi]):
            factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
            tx = dict(
                factory.constructor(*args).build_transaction(
                    {"from": sender, "nonce": nonce, "chainId": self.chain_id}
                )
            )
        tx_hash = self.send_transaction(tx, key)
        mined = self.wait_receipt(tx_hash, timeout_s=timeout_s)
        if not mined.status or mined.contract_address is None:
            raise self.replay_revert(tx, mined.block_number, [abi]) or ChainError(
                f"deploying failed in transaction {tx_hash}",
                transient=False,
                hint="check the constructor arguments",
            )
        return replace(mined, contract_address=to_checksum_address(mined.contract_address))

    def advance_time(self, seconds: int) -> None:
        """Dev chains only: move the clock forward and mine a block."""
        with self._guard("evm_increaseTime"):
            self.w3.provider.make_request("evm_increaseTime", [int(seconds)])  # type: ignore[arg-type]
            self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


class EmbeddedChain(ChainClient):
    """eth-tester with py-evm in this process: instant blocks, 10 funded keys.

    ``chain_id`` None keeps eth-tester's own (131277322940537); another one
    (31337, to match anvil and the default config) is set on py-evm's chain
    class, which is what ``block.chainid`` and so every EIP-712 domain read,
    and answered by ``eth_chainId``. py-evm does not check a signed
    transaction's chain id, so a transaction signed for another id still
    mines here (a real node refuses it)."""

    def __init__(self, chain_id: int | None = None) -> None:
        from eth_tester import EthereumTester, PyEVMBackend
        from eth_utils.toolz import assoc_in
        from web3.providers.eth_tester.defaults import API_ENDPOINTS

        self.backend = PyEVMBackend()
        endpoints = None
        if chain_id is not None:
            if isinstance(chain_id, bool) or not 0 < chain_id < 2**63:
                raise ChainError(
                    f"bad chain id {chain_id!r}", transient=False, hint="use e.g. 31337"
                )
            base = type(self.backend.chain)
            self.backend.chain.__class__ = type(base.__name__, (base,), {"chain_id": chain_id})
            endpoints = assoc_in(API_ENDPOINTS, ["eth", "chainId"], lambda *_: chain_id)
        self.tester = EthereumTester(self.backend)
        self.provider = EthereumTesterProvider(self.tester, api_endpoints=endpoints)
        w3 = Web3(self.provider)
        super().__init__(w3, int(w3.eth.chain_id), name="the embedded chain", lock=True)
        self._raw_w3 = Web3(self.provider, middleware=[])
        self._raw_request = self.provider.request_func(self._raw_w3, self._raw_w3.middleware_onion)

    def dev_keys(self) -> list[bytes]:
        return [bytes(k.to_bytes()) for k in self.backend.account_keys]

    def rpc_request(self, method: str, params: Any) -> dict[str, Any]:
        """One JSON-RPC request in wire form (camelCase keys), for the devchain
        server. Reverts and bad input raise as eth-tester raises them."""
        with self._lock:
            return dict(self._raw_request(method, params))

    def advance_time(self, seconds: int) -> None:
        with self._lock:  # eth-tester's time travel mines the block itself
            now = int(self.tester.get_block_by_number("pending")["timestamp"])
            self.tester.time_travel(now + max(int(seconds), 1))


class RpcChain(ChainClient):
    """A JSON-RPC node over HTTP. The node's chain id must equal ``chain_id``."""

    def __init__(self, url: str, chain_id: int, timeout_s: float = 10.0):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ChainError(
                f"not an HTTP(S) JSON-RPC URL: {str(url)[:100]!r}",
                transient=False,
                hint="use e.g. http://127.0.0.1:8545",
            )
        if not 0 < timeout_s <= 600:
            raise ChainError(
                f"bad RPC timeout {timeout_s!r}", transient=False, hint="use 0 < timeout <= 600 s"
            )
        self.url = url
        provider = HTTPProvider(
            url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None
        )
        super().__init__(Web3(provider), chain_id, name=f"the node at {url}", lock=False)
        with self._guard("eth_chainId"):
            actual = int(self.w3.eth.chain_id)
        if actual != chain_id:
            raise ChainError(
                f"the node at {url} serves chain {actual}, not the configured {chain_id}",
                transient=False,
                hint="fix the chain id or the RPC URL in the config so they name the same chain",
            )

    def _hint_unreachable(self) -> str:
        return f"check that the chain node at {self.url} is running and reachable"


# --- helpers ------------------------------------------------------------------


def checked_address(value: str) -> str:
    """``value`` in EIP-55 form; a non-transient ChainError with a hint if it is not an address."""
    try:
        return checksum(value)
    except ValueError as e:
        raise ChainError(
            str(e), transient=False, hint="an address is 0x and 40 hex digits (EIP-55)"
        ) from None


def _tx_hash(value: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) != 66
        or not value.startswith("0x")
        or any(c not in "0123456789abcdefABCDEF" for c in value[2:])
    ):
        raise ChainError(
            f"not a transaction hash: {str(value)[:80]!r}",
            transient=False,
            hint="a transaction hash is 0x and 64 hex digits",
        )
    return value


def _artifact_parts(artifact: Artifact | Mapping[str, Any]) -> tuple[list[Any], str]:
    if isinstance(artifact, Mapping):
        return list(artifact["abi"]), str(artifact["bytecode"])
    return list(artifact.abi), str(artifact.bytecode)


def _decode_logs(
    logs: Sequence[Mapping[str, Any]], contracts: Sequence[Contract]
) -> Iterator[Event]:
    by_address = {c.address.lower(): c for c in contracts}
    for log in logs:
        contract = by_address.get(str(log.get("address", "")).lower())
        topics = log.get("topics") or ()
        if contract is None or not topics:
            continue
        topic0 = HexBytes(topics[0])
        for item in contract.abi:
            if item.get("type") != "event" or item.get("anonymous"):
                continue
            if event_abi_to_log_topic(item) != topic0:  # type: ignore[arg-type]
                continue
            try:
                decoded = contract.events[item["name"]]().process_log(log)  # type: ignore[arg-type]
            except Exception:  # a log that does not fit its ABI: skip it
                break
            yield Event(
                address=to_checksum_address(log["address"]),
                name=str(item["name"]),
                args=dict(decoded["args"]),
                log_index=int(log.get("logIndex", 0)),
            )
            break
