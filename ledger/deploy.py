"""Putting the money contracts on a chain, and the devnet faucet.

Synchronous tools (``mask devnet up``, ``make demo``, tests): each waits for its
transactions to be mined. :func:`deploy` sends MaskToken, SettlementEscrow
and ComputeRequests (over the token, verifying with the escrow) from the
deployer's next three nonces, so the addresses follow from the deployer and
its nonce alone: a fresh devnet always has the same ones.
:class:`DeploymentConfig` is the small dict a daemon's config carries to find
them again (``{"rpc_url" | "embedded", "chain_id", "token", "escrow"}`` and,
optionally, ``"requests"``: configs written before ComputeRequests existed
still load), checked like any other input because a person writes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eth_account import Account

from ledger.chain import ChainClient, Receipt, RevertError, checked_address
from ledger.contracts import ESCROW, REQUESTS, TOKEN, load_artifact
from ledger.escrow import PERMIT_TTL_S, explain_revert, permit_signature
from ledger.ports import ChainError
from ledger.vouchers import MAX_UINT256

__all__ = ["DeploymentConfig", "Deployment", "deploy", "deposit", "fund"]

MAX_UINT64 = 2**64 - 1
_GAS_MARGIN = 1.25


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where the contracts landed: addresses (EIP-55), chain, and the block of
    the escrow's deployment (where log scans may start). ``requests``:
    ComputeRequests (None only for a Deployment made by hand)."""

    token: str
    escrow: str
    chain_id: int
    block: int
    requests: str | None = None

    def config(self, rpc_url: str | None) -> DeploymentConfig:
        """The config entry for this deployment; ``rpc_url`` None: the embedded chain."""
        return DeploymentConfig(self.chain_id, self.token, self.escrow, rpc_url, self.requests)


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """How a daemon finds the contracts: ``rpc_url`` None means the embedded chain;
    ``requests`` None: no ComputeRequests known (an older config)."""

    chain_id: int
    token: str
    escrow: str
    rpc_url: str | None = None
    requests: str | None = None

    def to_dict(self) -> dict[str, Any]:
        where: dict[str, Any] = (
            {"rpc_url": self.rpc_url} if self.rpc_url is not None else {"embedded": True}
        )
        out = {**where, "chain_id": self.chain_id, "token": self.token, "escrow": self.escrow}
        if self.requests is not None:
            out["requests"] = self.requests
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DeploymentConfig:
        """Parse and check a config dict (JSON or TOML); ValueError saying which field."""
        if not isinstance(raw, Mapping):
            raise ValueError("the chain config is not a table")
        unknown = set(raw) - {"rpc_url", "embedded", "chain_id", "token", "escrow", "requests"}
        if unknown:
            raise ValueError(f"unknown chain config keys: {', '.join(sorted(map(str, unknown)))}")
        rpc_url = raw.get("rpc_url")
        embedded = raw.get("embedded", False)
        if not isinstance(embedded, bool):
            raise ValueError("chain config 'embedded' must be true or false")
        if (rpc_url is None) == (not embedded):
            raise ValueError(
                "the chain config needs exactly one of 'rpc_url' and 'embedded = true'"
            )
        if rpc_url is not None and (
            not isinstance(rpc_url, str)
            or not rpc_url.startswith(("http://", "https://"))
            or len(rpc_url) > 2048
        ):
            raise ValueError(f"chain config 'rpc_url' is not an http(s) URL: {str(rpc_url)[:80]!r}")
        chain_id = raw.get("chain_id")
        if isinstance(chain_id, bool) or not isinstance(chain_id, int) or not 0 < chain_id < 2**64:
            raise ValueError(f"chain config 'chain_id' is not a positive integer: {chain_id!r}")
        addresses: dict[str, str | None] = {"requests": None}
        for key in ("token", "escrow", "requests"):
            if key == "requests" and raw.get(key) is None:
                continue
            try:
                addresses[key] = checked_address(raw.get(key))  # type: ignore[arg-type]
            except ChainError as e:
                raise ValueError(f"chain config {key!r}: {e}") from None
        return cls(
            chain_id,
            str(addresses["token"]),
            str(addresses["escrow"]),
            rpc_url,
            addresses["requests"],
        )


def _check_uint(value: int, limit: int, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= limit:
        raise ChainError(
            f"{what} {value!r} is out of range ({minimum}..{limit})",
            transient=False,
            hint=f"give {what} as a whole number",
        )
    return value


def deploy(
    chain: ChainClient,
    deployer_key: bytes,
    treasury: str,
    supply: int,
    unlock_delay_s: int,
    unstake_delay_s: int,
) -> Deployment:
    """Deploy MaskToken (``supply`` minted to ``treasury``), SettlementEscrow
    over it and ComputeRequests(token, escrow) from ``deployer_key``'s next
    three nonces (token and escrow at the same addresses as before
    ComputeRequests existed)."""
    treasury = checked_address(treasury)
    _check_uint(supply, MAX_UINT256, "supply", minimum=1)
    _check_uint(unlock_delay_s, MAX_UINT64, "unlock delay")
    _check_uint(unstake_delay_s, MAX_UINT64, "unstake delay")
    deployer = Account.from_key(deployer_key).address
    nonce = chain.pending_nonce(deployer)
    token = chain.deploy(load_artifact(TOKEN), [treasury, supply], deployer_key, nonce=nonce)
    mined = chain.deploy_receipt(
        load_artifact(ESCROW),
        [token, unlock_delay_s, unstake_delay_s],
        deployer_key,
        nonce=nonce + 1,
    )
    assert mined.contract_address is not None
    requests = chain.deploy(
        load_artifact(REQUESTS), [token, mined.contract_address], deployer_key, nonce=nonce + 2
    )
    return Deployment(
        token, mined.contract_address, chain.chain_id, mined.block_number, requests=requests
    )


def _send(chain: ChainClient, contract: Any, fn: str, *args: Any, key: bytes) -> Receipt:
    sender = Account.from_key(key).address
    abis = [load_artifact(ESCROW).abi, load_artifact(TOKEN).abi]
    try:
        tx = chain.transaction(
            contract, fn, *args, sender=sender, nonce=chain.pending_nonce(sender), abis=abis
        )
    except RevertError as e:
        raise explain_revert(e, fn) from e.__cause__
    tx["gas"] = int(tx["gas"] * _GAS_MARGIN)
    tx_hash = chain.send_transaction(tx, key)
    mined = chain.wait_receipt(tx_hash, [contract])
    if not mined.status:
        why = chain.replay_revert(tx, mined.block_number, abis)
        if why is not None:
            raise explain_revert(why, fn)
        raise RevertError(f"{fn} reverted in transaction {tx_hash}")
    return mined


def fund(
    chain: ChainClient,
    treasury_key: bytes,
    to: str,
    eth_wei: int,
    mask_base_units: int,
    *,
    token: str,
    eth_key: bytes | None = None,
) -> None:
    """The devnet faucet: ``eth_wei`` from ``eth_key`` (default: the treasury's
    key; on a devnet any dev key), ``mask_base_units`` of MASK from the treasury."""
    to = checked_address(to)
    _check_uint(eth_wei, MAX_UINT256, "ETH amount")
    _check_uint(mask_base_units, MAX_UINT256, "MASK amount")
    if eth_wei:
        key = eth_key if eth_key is not None else treasury_key
        sender = Account.from_key(key).address
        tx_hash = chain.transfer_eth(key, to, eth_wei, chain.pending_nonce(sender))
        if not chain.wait_receipt(tx_hash).status:
            raise ChainError(f"sending ETH to {to} failed", transient=False)
    if mask_base_units:
        contract = chain.contract(token, load_artifact(TOKEN).abi)
        _send(chain, contract, "transfer", to, mask_base_units, key=treasury_key)


def deposit(chain: ChainClient, key: bytes, escrow: str, token: str, amount: int) -> Receipt:
    """Deposit ``amount`` into the escrow from ``key``'s account in one
    transaction (EIP-2612 permit + ``depositWithPermit``)."""
    _check_uint(amount, MAX_UINT256, "deposit", minimum=1)
    escrow, token = checked_address(escrow), checked_address(token)
    owner = Account.from_key(key).address
    token_contract = chain.contract(token, load_artifact(TOKEN).abi)
    nonce = int(chain.call(token_contract, "nonces", owner))
    deadline = chain.block_timestamp() + PERMIT_TTL_S
    v, r, s = permit_signature(chain.chain_id, token, key, escrow, amount, nonce, deadline)
    escrow_contract = chain.contract(escrow, load_artifact(ESCROW).abi)
    return _send(chain, escrow_contract, "depositWithPermit", amount, deadline, v, r, s, key=key)
