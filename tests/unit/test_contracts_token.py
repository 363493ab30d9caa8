"""MaskToken on a real EVM (eth-tester / py-evm): supply, transfers, EIP-2612 permits.

Also the artifact loader (ledger/contracts.py) the chain clients deploy from.
"""

from __future__ import annotations

import json

import pytest
from eth_account import Account
from eth_utils import keccak

from ledger.contracts import (
    ESCROW,
    TOKEN,
    ContractArtifactError,
    decode_revert,
    load_artifact,
)
from tests.chainhelp import DEFAULT_SUPPLY, TransactionFailed, new_chain, revert_name

MAX_UINT256 = 2**256 - 1


@pytest.fixture(scope="module")
def base():
    return new_chain()


@pytest.fixture
def chain(base):
    snap = base.snapshot()
    yield base
    base.revert_to(snap)


def test_metadata_and_supply(chain):
    token = chain.token.functions
    assert token.name().call() == "MASK"
    assert token.symbol().call() == "MASK"
    assert token.decimals().call() == 18
    assert token.totalSupply().call() == DEFAULT_SUPPLY
    assert token.balanceOf(chain.treasury).call() == DEFAULT_SUPPLY
    assert token.balanceOf(chain.addr(1)).call() == 0


def test_supply_may_be_the_whole_uint256_range():
    big = new_chain(supply=MAX_UINT256, accounts=2)
    assert big.token.functions.balanceOf(big.treasury).call() == MAX_UINT256


def test_transfer_and_transfer_from(chain):
    alice, bob = chain.addr(1), chain.addr(2)
    chain.fund(alice, 100)
    chain.send(chain.token.functions.approve(bob, 40), alice)
    chain.send(chain.token.functions.transferFrom(alice, bob, 40), bob)
    assert chain.token.functions.balanceOf(alice).call() == 60
    assert chain.token.functions.balanceOf(bob).call() == 40
    with pytest.raises(TransactionFailed) as err:
        chain.send(chain.token.functions.transferFrom(alice, bob, 1), bob)
    assert revert_name(err.value, chain.token) == "ERC20InsufficientAllowance"


def test_permit_sets_the_allowance_once(chain):
    alice = chain.addr(1)
    deadline = chain.now() + 600
    v, r, s = chain.permit(chain.key(1), 123, deadline)
    permit = chain.token.functions.permit(alice, chain.escrow.address, 123, deadline, v, r, s)
    chain.send(permit, chain.addr(5))  # anyone may submit it
    assert chain.token.functions.allowance(alice, chain.escrow.address).call() == 123
    assert chain.token.functions.nonces(alice).call() == 1
    with pytest.raises(TransactionFailed) as err:  # the nonce moved: a replay fails
        chain.send(permit, chain.addr(5))
    assert revert_name(err.value, chain.token) == "ERC2612InvalidSigner"


def test_permit_expired_or_by_another_key_reverts(chain):
    alice = chain.addr(1)
    past = chain.now() - 1
    v, r, s = chain.permit(chain.key(1), 5, past)
    with pytest.raises(TransactionFailed) as err:
        call = chain.token.functions.permit(alice, chain.escrow.address, 5, past, v, r, s)
        chain.send(call, alice)
    assert revert_name(err.value, chain.token) == "ERC2612ExpiredSignature"

    future = chain.now() + 600
    v, r, s = chain.permit(chain.key(2), 5, future)  # bob signs alice's permit
    with pytest.raises(TransactionFailed) as err:
        call = chain.token.functions.permit(alice, chain.escrow.address, 5, future, v, r, s)
        chain.send(call, alice)
    assert revert_name(err.value, chain.token) == "ERC2612InvalidSigner"


def test_permit_domain_is_the_token_s_eip712_domain(chain):
    domain = chain.token.functions.eip712Domain().call()
    assert list(domain[1:5]) == ["MASK", "1", chain.chain_id, chain.token.address]


def test_minting_to_the_zero_address_reverts(chain):
    art = load_artifact(TOKEN)
    factory = chain.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    zero = "0x" + "00" * 20
    with pytest.raises(TransactionFailed) as err:
        factory.constructor(zero, 1).transact({"from": chain.treasury})
    assert revert_name(err.value, chain.token) == "ERC20InvalidReceiver"


# ----------------------------------------------------------------- artifacts


def test_artifacts_are_the_pinned_build():
    for name in (TOKEN, ESCROW):
        art = load_artifact(name)
        assert art.contract_name == name
        assert art.solc.startswith("0.8.37+")
        # The CBOR metadata at the end names the compiler: "solc" 0.8.37 (0x000825).
        assert art.bytecode.endswith("64736f6c63430008250033")
        assert art.deployed_bytecode.endswith("64736f6c63430008250033")
        assert load_artifact(name) is art  # read once


def test_deployed_code_is_the_artifact_s(chain):
    code = chain.w3.eth.get_code(chain.escrow.address)
    art = load_artifact(ESCROW)
    # Immutables (token, delays, EIP-712 cache) are filled in at deploy: compare the length.
    assert len(code) == len(bytes.fromhex(art.deployed_bytecode[2:]))


def test_missing_or_broken_artifact_says_how_to_rebuild(tmp_path):
    with pytest.raises(ContractArtifactError) as err:
        load_artifact(TOKEN, tmp_path)
    assert "make contracts" in (err.value.hint or "")
    (tmp_path / "MaskToken.json").write_text("{not json")
    with pytest.raises(ContractArtifactError, match="cannot read"):
        load_artifact(TOKEN, tmp_path)
    (tmp_path / "SettlementEscrow.json").write_text(json.dumps({"abi": [], "bytecode": "0xzz"}))
    with pytest.raises(ContractArtifactError, match="not a contract artifact"):
        load_artifact(ESCROW, tmp_path)
    with pytest.raises(ContractArtifactError, match="not a contract name"):
        load_artifact("../../etc/passwd")


def test_decode_revert_is_total():
    abi = load_artifact(ESCROW).abi
    selector = keccak(text="InsufficientDeposit(uint256,uint256)")[:4]
    data = selector + (7).to_bytes(32, "big") + (9).to_bytes(32, "big")
    decoded = decode_revert(abi, data)
    assert decoded is not None
    assert decoded.name == "InsufficientDeposit"
    assert dict(decoded.args) == {"available": 7, "wanted": 9}
    assert "available=7" in decoded.message and decoded.hint
    assert decode_revert(abi, "0x" + data.hex()) == decoded
    for junk in (None, b"", b"\x01\x02", selector, selector + b"\x00" * 5, "0xzz", b"\xff" * 68):
        assert decode_revert(abi, junk) is None


def test_accounts_are_deterministic(chain):
    assert chain.addr(0) == Account.from_key((1).to_bytes(32, "big")).address
    with pytest.raises(IndexError):
        chain.key(chain.accounts)
