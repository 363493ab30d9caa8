"""A fresh in-process chain with MaskToken, SettlementEscrow and ComputeRequests deployed, for tests.

Real EVM (eth-tester on py-evm, Prague), the committed artifacts from
``contracts/build``, deterministic accounts (private keys 1..n, all unlocked
in eth-tester and funded with ETH). Account 0 deployed the contracts (nonces
0, 1, 2, as ``ledger.deploy`` does) and is the token's treasury. Reverts raise ``eth_tester.exceptions.TransactionFailed``;
:func:`revert_name` says which custom error it was.

    chain = new_chain()
    alice, bob = chain.addr(1), chain.addr(2)
    chain.fund(alice, 10**18)
    chain.deposit(alice, 10**18)
    voucher = chain.sign_voucher(chain.key(1), bob, 5 * 10**17)
    receipt = chain.settle([voucher])
    chain.events(receipt, "VoucherSettled")

zk helpers: ``chain.register(vk)`` registers a ``zkp.formats.VerifyingKey``
and returns its circuit id (bytes32); ``chain.sign_agreement(key, terms)``
signs ``ledger.agreement`` typed data; ``agreement_args(terms)`` is the
``Agreement`` tuple ``claimWithProof`` takes.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.exceptions import TransactionFailed
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.logs import DISCARD
from web3.providers.eth_tester import EthereumTesterProvider

from ledger.agreement import sign_agreement
from ledger.contracts import (
    ESCROW,
    REQUESTS,
    TOKEN,
    Revert,
    decode_revert,
    load_artifact,
    voucher_args,
)
from ledger.vouchers import VOUCHER_TYPES, Domain, SignedVoucher
from ledger.zkclaims import agreement_args, zk_job_args
from protocol.market import AgreementTerms

__all__ = [
    "DEFAULT_SUPPLY",
    "GAS_BURNER",
    "RETURN_BOMB",
    "REVERTER",
    "UNLOCK_DELAY",
    "UNSTAKE_DELAY",
    "Chain",
    "TransactionFailed",
    "agreement_args",
    "new_chain",
    "zk_job_args",
    "revert_data",
    "revert_name",
]

DEFAULT_SUPPLY = 10**9 * 10**18  # a billion MASK
UNLOCK_DELAY = 3600
UNSTAKE_DELAY = 7 * 24 * 3600

#: Runtime code that reverts whatever it is called with (PUSH1 0, PUSH1 0, REVERT).
REVERTER = bytes.fromhex("60006000fd")
#: Runtime code that loops until its gas is gone (JUMPDEST, PUSH1 0, JUMP).
GAS_BURNER = bytes.fromhex("5b600056")
#: Runtime code that returns 64 KiB of zeros (a return-data bomb): PUSH3 0x010000, PUSH1 0, RETURN.
RETURN_BOMB = bytes.fromhex("62010000" + "6000f3")

PERMIT_TYPES = {
    "Permit": [
        {"name": "owner", "type": "address"},
        {"name": "spender", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ]
}


def _key(i: int) -> bytes:
    return i.to_bytes(32, "big")


@dataclass
class Chain:
    """One eth-tester chain with the two contracts; methods send from unlocked accounts."""

    w3: Web3
    tester: EthereumTester
    token: Contract
    escrow: Contract
    accounts: int
    requests: Contract

    # -- accounts
    def key(self, i: int) -> bytes:
        """The private key of account ``i`` (0 is the treasury and deployer)."""
        if not 0 <= i < self.accounts:
            raise IndexError(f"account {i}: this chain has {self.accounts}")
        return _key(i + 1)

    def addr(self, i: int) -> str:
        return Account.from_key(self.key(i)).address

    @property
    def treasury(self) -> str:
        return self.addr(0)

    @property
    def chain_id(self) -> int:
        return self.w3.eth.chain_id

    @property
    def domain(self) -> Domain:
        return Domain(self.chain_id, self.escrow.address)

    # -- transactions
    def send(self, call: ContractFunction, sender: str, gas: int | None = None) -> Any:
        """Sends ``call`` from ``sender`` and returns the receipt (reverts raise TransactionFailed)."""
        tx: dict[str, Any] = {"from": sender}
        if gas is not None:
            tx["gas"] = gas
        return self.w3.eth.wait_for_transaction_receipt(call.transact(tx))

    def events(self, receipt: Any, name: str, contract: Contract | None = None) -> list[dict]:
        """The decoded args of every ``name`` event in the receipt, in log order."""
        event = getattr((contract or self.escrow).events, name)()
        return [dict(e["args"]) for e in event.process_receipt(receipt, errors=DISCARD)]

    def fund(self, to: str, amount: int) -> None:
        """Tokens from the treasury."""
        self.send(self.token.functions.transfer(to, amount), self.treasury)

    def approve(self, owner: str, amount: int) -> None:
        self.send(self.token.functions.approve(self.escrow.address, amount), owner)

    def deposit(self, requester: str, amount: int) -> Any:
        """approve + deposit (the requester must hold the tokens)."""
        self.approve(requester, amount)
        return self.send(self.escrow.functions.deposit(amount), requester)

    def settle(
        self, vouchers: Sequence[SignedVoucher], sender: str | None = None, gas: int | None = None
    ) -> Any:
        call = self.escrow.functions.settleBatch(voucher_args(vouchers))
        return self.send(call, sender or self.treasury, gas)

    def deploy_escrow(self, unlock_delay: int, unstake_delay: int) -> Contract:
        """Another SettlementEscrow over the same token (a different EIP-712 domain)."""
        return _deploy(
            self.w3, ESCROW, self.treasury, self.token.address, unlock_delay, unstake_delay
        )

    def deploy(self, name: str, *args: Any, sender: str | None = None) -> Contract:
        """Deploys the committed artifact ``name`` (e.g. ``StatsConsumer``)."""
        return _deploy(self.w3, name, sender or self.treasury, *args)

    def deploy_code(self, runtime: bytes) -> str:
        """A contract whose code is exactly ``runtime`` (hostile callbacks:
        ``REVERTER``, ``GAS_BURNER``); its address."""
        if not 0 < len(runtime) < 256:
            raise ValueError("runtime code of 1 to 255 bytes")
        n = len(runtime)
        # PUSH1 n, PUSH1 12, PUSH1 0, CODECOPY, PUSH1 n, PUSH1 0, RETURN: 12 bytes, then the code
        init = bytes([0x60, n, 0x60, 12, 0x60, 0, 0x39, 0x60, n, 0x60, 0, 0xF3]) + runtime
        tx = self.w3.eth.send_transaction({"from": self.treasury, "data": init})
        return self.w3.eth.wait_for_transaction_receipt(tx)["contractAddress"]

    def expect_revert(
        self,
        call: ContractFunction,
        sender: str,
        *,
        gas: int,
        contracts: Sequence[Contract] = (),
        send: bool = True,
    ) -> Revert:
        """The custom error ``call`` reverts with (decoded with ``contracts``'
        ABIs, the escrow's and the token's). The transaction is then sent with
        ``gas`` and must be mined as failed: with its gas set, eth-tester mines
        a reverting transaction (status 0) as a real node does, instead of
        raising as it does when it estimates. ``send=False``: the call only."""
        with pytest.raises(TransactionFailed) as err:
            call.call({"from": sender, "gas": gas})
        data = revert_data(err.value)
        for contract in (*contracts, self.escrow, self.requests, self.token):
            decoded = decode_revert(contract.abi, data)
            if decoded is not None:
                break
        else:
            raise AssertionError(f"not a custom error: {err.value}")
        if send:
            assert self.send(call, sender, gas=gas)["status"] == 0
        return decoded

    # -- zk
    def register(self, vk: Any, sender: str | None = None) -> bytes:
        """Registers a ``zkp.formats.VerifyingKey`` on the escrow; its circuit id."""
        from zkp.formats import vk_calldata, vk_id

        data = vk_calldata(vk)
        args = (data["alpha1"], data["beta2"], data["gamma2"], data["delta2"], data["ic"])
        self.send(self.escrow.functions.registerCircuit(args), sender or self.treasury)
        return bytes.fromhex(vk_id(vk))

    def sign_agreement(self, key: bytes, terms: AgreementTerms) -> bytes:
        """``ledger.agreement.sign_agreement`` (the terms carry their own domain)."""
        return sign_agreement(terms, key)

    # -- signatures
    def sign_voucher(
        self,
        requester_key: bytes,
        provider: str,
        cumulative: int,
        *,
        chain_id: int | None = None,
        escrow: str | None = None,
        requester: str | None = None,
    ) -> SignedVoucher:
        """A voucher signed with eth_account's EIP-712 signer. ``requester`` names
        a channel other than the key's own (a forgery); ``chain_id`` and
        ``escrow`` sign for another domain (a replay)."""
        domain = {
            "name": "maskd",
            "version": "1",
            "chainId": self.chain_id if chain_id is None else chain_id,
            "verifyingContract": escrow or self.escrow.address,
        }
        req = requester or Account.from_key(requester_key).address
        message = {"requester": req, "provider": provider, "cumulative": cumulative}
        signed = Account.sign_typed_data(requester_key, domain, VOUCHER_TYPES, message)
        return SignedVoucher(req, provider, cumulative, bytes(signed.signature))

    def permit(self, owner_key: bytes, value: int, deadline: int) -> tuple[int, bytes, bytes]:
        """An EIP-2612 permit for the escrow to spend ``value``: (v, r, s)."""
        owner = Account.from_key(owner_key).address
        domain = {
            "name": "MASK",
            "version": "1",
            "chainId": self.chain_id,
            "verifyingContract": self.token.address,
        }
        message = {
            "owner": owner,
            "spender": self.escrow.address,
            "value": value,
            "nonce": self.token.functions.nonces(owner).call(),
            "deadline": deadline,
        }
        sig = Account.sign_typed_data(owner_key, domain, PERMIT_TYPES, message)
        return sig.v, sig.r.to_bytes(32, "big"), sig.s.to_bytes(32, "big")

    # -- time
    def now(self) -> int:
        """The latest block's timestamp."""
        return self.w3.eth.get_block("latest")["timestamp"]

    def travel_to(self, timestamp: int) -> None:
        """The next block (so the next transaction) is mined at exactly ``timestamp``,
        which must be later than the latest block."""
        self.tester.time_travel(timestamp)

    def travel(self, seconds: int) -> int:
        """Moves the clock: the next block is mined ``seconds`` after the latest one."""
        target = self.now() + seconds
        self.travel_to(target)
        return target

    # -- isolation
    def snapshot(self) -> Any:
        return self.tester.take_snapshot()

    def revert_to(self, snapshot: Any) -> None:
        self.tester.revert_to_snapshot(snapshot)


def new_chain(
    *,
    accounts: int = 10,
    supply: int = DEFAULT_SUPPLY,
    unlock_delay: int = UNLOCK_DELAY,
    unstake_delay: int = UNSTAKE_DELAY,
) -> Chain:
    """A fresh chain with ``accounts`` funded accounts, MaskToken(treasury=account 0,
    supply) and SettlementEscrow(token, unlock_delay, unstake_delay) deployed."""
    backend = PyEVMBackend(genesis_state=PyEVMBackend.generate_genesis_state(num_accounts=accounts))
    tester = EthereumTester(backend)
    w3 = Web3(EthereumTesterProvider(tester))
    deployer = Account.from_key(_key(1)).address
    token = _deploy(w3, TOKEN, deployer, deployer, supply)
    escrow = _deploy(w3, ESCROW, deployer, token.address, unlock_delay, unstake_delay)
    requests = _deploy(w3, REQUESTS, deployer, token.address, escrow.address)
    return Chain(w3, tester, token, escrow, accounts, requests)


def _deploy(w3: Web3, name: str, sender: str, *args: Any) -> Contract:
    art = load_artifact(name)
    factory = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    receipt = w3.eth.wait_for_transaction_receipt(
        factory.constructor(*args).transact({"from": sender})
    )
    return w3.eth.contract(address=receipt["contractAddress"], abi=art.abi)


def revert_data(err: BaseException) -> bytes | None:
    """The revert data inside an eth-tester ``TransactionFailed``.

    web3's eth-tester provider re-raises it as the text
    ``"execution reverted: b'...'"`` (the repr of the bytes); this undoes that.
    """
    for arg in getattr(err, "args", ()):
        if isinstance(arg, bytes):
            return arg
        if isinstance(arg, str):
            text = arg.removeprefix("execution reverted: ")
            if text[:2] in ("b'", 'b"'):
                try:
                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    continue
                if isinstance(value, bytes):
                    return value
    return None


def revert_name(err: BaseException, contract: Contract) -> str | None:
    """The name of the custom error of ``contract`` that ``err`` carries, if any."""
    decoded = decode_revert(contract.abi, revert_data(err))
    return decoded.name if decoded else None
