"""SettlementEscrow on a real EVM (eth-tester / py-evm): every function, every
custom error, every skip reason, signature malleability, replays across
channels, chains and escrows, uint256 edges, the unlock and unstake delays, and
the gas a settlement costs per job (docs/ledger.md, part 1)."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_keys import keys
from web3 import Web3

from ledger.contracts import (
    ESCROW,
    SKIP_BAD_SIGNATURE,
    SKIP_INSUFFICIENT_DEPOSIT,
    SKIP_NOT_INCREASE,
    SKIP_ZERO_ADDRESS,
    Revert,
    decode_revert,
    load_artifact,
    skip_reason_name,
    voucher_args,
)
from ledger.vouchers import SignedVoucher, sign_voucher, verify_voucher
from tests.chainhelp import (
    UNLOCK_DELAY,
    UNSTAKE_DELAY,
    Chain,
    TransactionFailed,
    new_chain,
    revert_data,
)

MAX_UINT256 = 2**256 - 1
MAX_UINT64 = 2**64 - 1
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
ZERO = "0x" + "00" * 20
ETHER = 10**18


@pytest.fixture(scope="module")
def base():
    return new_chain(accounts=8)


@pytest.fixture
def chain(base):
    snap = base.snapshot()
    yield base
    base.revert_to(snap)


def reverts(chain: Chain, call, sender: str) -> Revert:
    """Sends ``call``, expects a revert with one of the escrow's custom errors, returns it."""
    with pytest.raises(TransactionFailed) as err:
        chain.send(call, sender)
    decoded = decode_revert(chain.escrow.abi, revert_data(err.value))
    assert decoded is not None, f"not a custom error: {err.value}"
    return decoded


def funded(chain: Chain, i: int, amount: int) -> str:
    """Account i with ``amount`` tokens deposited in the escrow."""
    who = chain.addr(i)
    chain.fund(who, amount)
    chain.deposit(who, amount)
    return who


def skips(chain: Chain, receipt) -> list[tuple[str, str, int, int]]:
    return [
        (e["requester"], e["provider"], e["cumulative"], e["reason"])
        for e in chain.events(receipt, "VoucherSkipped")
    ]


def paid(chain: Chain, receipt) -> list[tuple[str, str, int, int]]:
    return [
        (e["requester"], e["provider"], e["cumulative"], e["paid"])
        for e in chain.events(receipt, "VoucherSettled")
    ]


def view(chain: Chain, name: str, *args):
    return getattr(chain.escrow.functions, name)(*args).call()


def balance(chain: Chain, who: str) -> int:
    return chain.token.functions.balanceOf(who).call()


def with_signature(voucher: SignedVoucher, signature: bytes) -> SignedVoucher:
    return SignedVoucher(voucher.requester, voucher.provider, voucher.cumulative, signature)


# ------------------------------------------------------------------------ ABI

FUNCTIONS = {
    "deposit(uint256)",
    "depositWithPermit(uint256,uint256,uint8,bytes32,bytes32)",
    "requestUnlock(uint256)",
    "cancelUnlock()",
    "reclaim()",
    "settleBatch((address,address,uint256,bytes)[])",
    "withdraw()",
    "stake(uint256)",
    "requestUnstake(uint256)",
    "withdrawStake()",
    "deposits(address)",
    "unlocking(address)",
    "available(address)",
    "settled(address,address)",
    "earnings(address)",
    "stakes(address)",
    "unstaking(address)",
    "token()",
    "unlockDelay()",
    "unstakeDelay()",
    "domainSeparator()",
    "voucherDigest(address,address,uint256)",
    "eip712Domain()",  # ERC-5267, from OpenZeppelin's EIP712
    # zk disputes and slashing (Groth16Verifier inherited; test_contracts_zk_claims.py)
    "registerCircuit((uint256[2],uint256[4],uint256[4],uint256[4],uint256[2][]))",
    "circuitInfo(bytes32)",
    "verifyProof(bytes32,uint256[8],uint256[])",
    "MAX_PUBLIC()",
    "claimWithProof((bytes32,string,address,string,address,uint256,uint32,uint64,uint32,uint64,"
    "uint64,uint64,string,uint32,bytes32),bytes,uint256[8],uint256[])",
    "slash((bytes32,address,address,bytes32),bytes,uint256[8],uint256[])",
    "claimed(bytes32,address)",
    "slashed(bytes32,address)",
    "agreementDigest((bytes32,string,address,string,address,uint256,uint32,uint64,uint32,uint64,"
    "uint64,uint64,string,uint32,bytes32))",
    "zkResultDigest((bytes32,address,address,bytes32),uint256[8],uint256[])",
    "CLAIM_WINDOW()",
    "BURN_ADDRESS()",
}
EVENTS = {
    "Deposited": ["requester", "amount"],
    "UnlockRequested": ["requester", "amount", "unlockAt"],
    "UnlockCancelled": ["requester"],
    "Reclaimed": ["requester", "amount"],
    "VoucherSettled": ["requester", "provider", "cumulative", "paid"],
    "VoucherSkipped": ["requester", "provider", "cumulative", "reason"],
    "Withdrawn": ["provider", "amount"],
    "Staked": ["provider", "amount"],
    "UnstakeRequested": ["provider", "amount", "at"],
    "Unstaked": ["provider", "amount"],
    "EIP712DomainChanged": [],  # ERC-5267, from OpenZeppelin's EIP712 (never emitted here)
    "CircuitRegistered": ["circuitId", "nPublic"],
    "ProofClaimed": ["jobId", "requester", "provider", "amount"],
    "Slashed": ["provider", "jobId", "amount", "reporter"],
}
ERRORS = {
    "ZeroAmount()",
    "InsufficientDeposit(uint256,uint256)",
    "NoUnlockPending()",
    "UnlockNotDue(uint64)",
    "NothingToWithdraw()",
    "InsufficientStake(uint256,uint256)",
    "NoUnstakePending()",
    "UnstakeNotDue(uint64)",
    "InvalidKeyIcLength(uint256)",
    "InvalidKeyCoordinate()",
    "InvalidKeyPoint()",
    "KeyStoreFailed()",
    "VerifierOutOfGas()",
    "NotZkJob()",
    "BadAgreementSignature()",
    "InvalidProof()",
    "BindingMismatch(uint256,uint256)",
    "AlreadyClaimed(bytes32,address)",
    "ClaimWindowClosed(uint256)",
    "BadResultSignature()",
    "UnknownCircuit(bytes32)",
    "NotSlashable()",
    "AlreadySlashed(bytes32,address)",
    "NothingToSlash(address)",
    # Raised by OpenZeppelin libraries compiled in (never by a voucher):
    "SafeERC20FailedOperation(address)",
    "InvalidShortString()",
    "StringTooLong(string)",
}


def _type(param: dict) -> str:
    if param["type"].startswith("tuple"):
        inner = ",".join(_type(c) for c in param["components"])
        return f"({inner}){param['type'][5:]}"
    return param["type"]


def _signature(entry: dict) -> str:
    return f"{entry['name']}({','.join(_type(i) for i in entry['inputs'])})"


def test_abi_is_the_one_docs_ledger_md_fixes():
    abi = load_artifact(ESCROW).abi
    assert {_signature(e) for e in abi if e["type"] == "function"} == FUNCTIONS
    events = {e["name"]: [i["name"] for i in e["inputs"]] for e in abi if e["type"] == "event"}
    assert events == EVENTS
    assert {_signature(e) for e in abi if e["type"] == "error"} == ERRORS
    ctor = next(e for e in abi if e["type"] == "constructor")
    assert [i["type"] for i in ctor["inputs"]] == ["address", "uint64", "uint64"]
    settle = next(e for e in abi if e.get("name") == "settleBatch")
    fields = [c["name"] for c in settle["inputs"][0]["components"]]
    assert fields == ["requester", "provider", "cumulative", "signature"]
    unstaking = next(e for e in abi if e.get("name") == "unstaking")
    assert [o["name"] for o in unstaking["outputs"]] == ["amount", "at"]
    unlocking = next(e for e in abi if e.get("name") == "unlocking")
    assert [o["name"] for o in unlocking["outputs"]] == ["amount", "unlockAt"]
    skipped = next(e for e in abi if e.get("name") == "VoucherSkipped")
    assert skipped["inputs"][3]["type"] == "uint8"


def test_skip_reason_names():
    assert [skip_reason_name(r) for r in (1, 2, 3, 4)] == [
        "bad_signature",
        "not_increase",
        "insufficient_deposit",
        "zero_address",
    ]
    assert skip_reason_name(99) == "unknown_99"


# ---------------------------------------------------------- views and domain


def test_constructor_views(chain):
    assert view(chain, "token") == chain.token.address
    assert view(chain, "unlockDelay") == UNLOCK_DELAY
    assert view(chain, "unstakeDelay") == UNSTAKE_DELAY
    domain = view(chain, "eip712Domain")
    assert list(domain[1:5]) == ["maskd", "1", chain.chain_id, chain.escrow.address]


def test_domain_separator_and_digest_are_eth_account_s(chain):
    alice, bob = chain.addr(1), chain.addr(2)
    signed = Account.sign_typed_data(
        chain.key(1),
        chain.domain.typed(),
        {"Voucher": [{"name": n, "type": t} for n, t in VOUCHER_FIELDS]},
        {"requester": alice, "provider": bob, "cumulative": 77},
    )
    assert view(chain, "voucherDigest", alice, bob, 77) == signed.message_hash
    # EIP-712: digest = keccak(0x1901 || domainSeparator || structHash)
    separator = view(chain, "domainSeparator")
    struct = Web3.keccak(
        Web3.keccak(text="Voucher(address requester,address provider,uint256 cumulative)")
        + bytes(12)
        + bytes.fromhex(alice[2:])
        + bytes(12)
        + bytes.fromhex(bob[2:])
        + (77).to_bytes(32, "big")
    )
    assert Web3.keccak(b"\x19\x01" + separator + struct) == signed.message_hash


VOUCHER_FIELDS = [("requester", "address"), ("provider", "address"), ("cumulative", "uint256")]


# ------------------------------------------------------------------ deposits


def test_deposit_moves_tokens_and_emits(chain):
    alice = chain.addr(1)
    chain.fund(alice, 1000)
    receipt = chain.deposit(alice, 600)
    assert chain.events(receipt, "Deposited") == [{"requester": alice, "amount": 600}]
    assert view(chain, "deposits", alice) == 600
    assert view(chain, "available", alice) == 600
    assert balance(chain, alice) == 400
    assert balance(chain, chain.escrow.address) == 600
    chain.deposit(alice, 400)
    assert view(chain, "deposits", alice) == 1000


def test_deposit_reverts(chain):
    alice = chain.addr(1)
    assert reverts(chain, chain.escrow.functions.deposit(0), alice).name == "ZeroAmount"
    chain.fund(alice, 10)
    with pytest.raises(TransactionFailed) as err:  # not approved: the token refuses
        chain.send(chain.escrow.functions.deposit(5), alice)
    token_error = decode_revert(chain.token.abi, revert_data(err.value))
    assert token_error is not None and token_error.name == "ERC20InsufficientAllowance"
    chain.approve(alice, 50)
    with pytest.raises(TransactionFailed) as err:  # approved, but holds only 10
        chain.send(chain.escrow.functions.deposit(50), alice)
    token_error = decode_revert(chain.token.abi, revert_data(err.value))
    assert token_error is not None and token_error.name == "ERC20InsufficientBalance"
    assert view(chain, "deposits", alice) == 0


def test_deposit_with_permit_is_one_transaction(chain):
    alice = chain.addr(1)
    chain.fund(alice, 500)
    deadline = chain.now() + 600
    v, r, s = chain.permit(chain.key(1), 500, deadline)
    receipt = chain.send(chain.escrow.functions.depositWithPermit(500, deadline, v, r, s), alice)
    assert chain.events(receipt, "Deposited") == [{"requester": alice, "amount": 500}]
    assert view(chain, "deposits", alice) == 500
    assert chain.token.functions.allowance(alice, chain.escrow.address).call() == 0
    assert chain.token.functions.nonces(alice).call() == 1


def test_deposit_with_a_front_run_permit_still_deposits(chain):
    alice, mallory = chain.addr(1), chain.addr(6)
    chain.fund(alice, 500)
    deadline = chain.now() + 600
    v, r, s = chain.permit(chain.key(1), 500, deadline)
    # Mallory copies the permit from the mempool and submits it first.
    chain.send(
        chain.token.functions.permit(alice, chain.escrow.address, 500, deadline, v, r, s), mallory
    )
    chain.send(chain.escrow.functions.depositWithPermit(500, deadline, v, r, s), alice)
    assert view(chain, "deposits", alice) == 500


def test_deposit_with_a_bad_permit_reverts(chain):
    alice = chain.addr(1)
    chain.fund(alice, 500)
    deadline = chain.now() + 600
    v, r, s = chain.permit(chain.key(2), 500, deadline)  # signed by bob
    with pytest.raises(TransactionFailed) as err:
        chain.send(chain.escrow.functions.depositWithPermit(500, deadline, v, r, s), alice)
    token_error = decode_revert(chain.token.abi, revert_data(err.value))
    assert token_error is not None and token_error.name == "ERC20InsufficientAllowance"
    call = chain.escrow.functions.depositWithPermit(0, deadline, v, r, s)
    assert reverts(chain, call, alice).name == "ZeroAmount"


# -------------------------------------------------------------------- unlock


def test_request_unlock_reverts(chain):
    alice = funded(chain, 1, 100)
    assert reverts(chain, chain.escrow.functions.requestUnlock(0), alice).name == "ZeroAmount"
    err = reverts(chain, chain.escrow.functions.requestUnlock(101), alice)
    assert (err.name, dict(err.args)) == ("InsufficientDeposit", {"available": 100, "wanted": 101})
    err = reverts(chain, chain.escrow.functions.requestUnlock(1), chain.addr(2))
    assert (err.name, dict(err.args)) == ("InsufficientDeposit", {"available": 0, "wanted": 1})


def test_unlock_waits_the_delay_then_reclaims(chain):
    alice = funded(chain, 1, 100)
    receipt = chain.send(chain.escrow.functions.requestUnlock(70), alice)
    at = chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"] + UNLOCK_DELAY
    assert chain.events(receipt, "UnlockRequested") == [
        {"requester": alice, "amount": 70, "unlockAt": at}
    ]
    assert view(chain, "unlocking", alice) == [70, at]
    assert view(chain, "available", alice) == 30
    assert view(chain, "deposits", alice) == 100

    chain.travel_to(at - 1)
    err = reverts(chain, chain.escrow.functions.reclaim(), alice)
    assert (err.name, dict(err.args)) == ("UnlockNotDue", {"unlockAt": at})

    chain.travel_to(at)
    receipt = chain.send(chain.escrow.functions.reclaim(), alice)
    assert chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"] == at
    assert chain.events(receipt, "Reclaimed") == [{"requester": alice, "amount": 70}]
    assert view(chain, "deposits", alice) == 30
    assert view(chain, "available", alice) == 30
    assert view(chain, "unlocking", alice) == [0, 0]
    assert balance(chain, alice) == 70
    assert reverts(chain, chain.escrow.functions.reclaim(), alice).name == "NoUnlockPending"


def test_a_new_unlock_request_replaces_the_old(chain):
    alice = funded(chain, 1, 100)
    chain.send(chain.escrow.functions.requestUnlock(70), alice)
    chain.travel(10)
    receipt = chain.send(chain.escrow.functions.requestUnlock(20), alice)
    at = chain.events(receipt, "UnlockRequested")[0]["unlockAt"]
    assert view(chain, "unlocking", alice) == [20, at]
    assert view(chain, "available", alice) == 80


def test_cancel_unlock(chain):
    alice = funded(chain, 1, 100)
    assert reverts(chain, chain.escrow.functions.cancelUnlock(), alice).name == "NoUnlockPending"
    chain.send(chain.escrow.functions.requestUnlock(100), alice)
    assert view(chain, "available", alice) == 0
    receipt = chain.send(chain.escrow.functions.cancelUnlock(), alice)
    assert chain.events(receipt, "UnlockCancelled") == [{"requester": alice}]
    assert view(chain, "unlocking", alice) == [0, 0]
    assert view(chain, "available", alice) == 100
    assert reverts(chain, chain.escrow.functions.reclaim(), alice).name == "NoUnlockPending"


def test_providers_settle_during_the_unlock_and_reclaim_gets_the_rest(chain):
    alice, bob = funded(chain, 1, 100), chain.addr(2)
    receipt = chain.send(chain.escrow.functions.requestUnlock(80), alice)
    at = chain.events(receipt, "UnlockRequested")[0]["unlockAt"]
    chain.settle([chain.sign_voucher(chain.key(1), bob, 60)])  # settles although unlocking
    assert view(chain, "deposits", alice) == 40
    assert view(chain, "available", alice) == 0  # 40 - min(80, 40)
    chain.travel_to(at)
    receipt = chain.send(chain.escrow.functions.reclaim(), alice)
    assert chain.events(receipt, "Reclaimed") == [{"requester": alice, "amount": 40}]
    assert view(chain, "deposits", alice) == 0
    assert view(chain, "earnings", bob) == 60


def test_reclaim_after_the_deposit_is_spent_pays_nothing_and_clears(chain):
    alice, bob = funded(chain, 1, 100), chain.addr(2)
    receipt = chain.send(chain.escrow.functions.requestUnlock(50), alice)
    at = chain.events(receipt, "UnlockRequested")[0]["unlockAt"]
    chain.settle([chain.sign_voucher(chain.key(1), bob, 100)])
    chain.travel_to(at)
    receipt = chain.send(chain.escrow.functions.reclaim(), alice)
    assert chain.events(receipt, "Reclaimed") == [{"requester": alice, "amount": 0}]
    assert view(chain, "unlocking", alice) == [0, 0]


def test_a_huge_delay_is_clamped_not_an_overflow(chain):
    escrow = chain.deploy_escrow(MAX_UINT64, MAX_UINT64)
    alice = chain.addr(1)
    chain.fund(alice, 10)
    chain.send(chain.token.functions.approve(escrow.address, 10), alice)
    chain.send(escrow.functions.deposit(5), alice)
    chain.send(escrow.functions.requestUnlock(5), alice)
    assert escrow.functions.unlocking(alice).call() == [5, MAX_UINT64]
    chain.send(escrow.functions.stake(5), alice)
    chain.send(escrow.functions.requestUnstake(5), alice)
    assert escrow.functions.unstaking(alice).call() == [5, MAX_UINT64]


# ---------------------------------------------------------------- settlement


def test_a_voucher_pays_the_increase_and_an_older_one_nothing(chain):
    alice, bob, carol = funded(chain, 1, 1000), chain.addr(2), chain.addr(3)
    v100 = chain.sign_voucher(chain.key(1), bob, 100)
    v250 = chain.sign_voucher(chain.key(1), bob, 250)

    receipt = chain.settle([v100], sender=carol)  # anyone may submit
    assert paid(chain, receipt) == [(alice, bob, 100, 100)]
    assert skips(chain, receipt) == []
    assert view(chain, "settled", alice, bob) == 100
    assert view(chain, "earnings", bob) == 100
    assert view(chain, "deposits", alice) == 900

    receipt = chain.settle([v250])
    assert paid(chain, receipt) == [(alice, bob, 250, 150)]
    assert view(chain, "settled", alice, bob) == 250
    assert view(chain, "earnings", bob) == 250
    assert view(chain, "deposits", alice) == 750

    receipt = chain.settle([v100, v250])  # older and equal: nothing, no revert
    assert paid(chain, receipt) == []
    assert skips(chain, receipt) == [
        (alice, bob, 100, SKIP_NOT_INCREASE),
        (alice, bob, 250, SKIP_NOT_INCREASE),
    ]
    assert view(chain, "earnings", bob) == 250
    assert view(chain, "deposits", alice) == 750


def test_an_empty_batch_does_nothing(chain):
    receipt = chain.settle([])
    assert receipt["status"] == 1
    assert paid(chain, receipt) == skips(chain, receipt) == []


def test_same_channel_twice_in_one_batch(chain):
    alice, bob = funded(chain, 1, 1000), chain.addr(2)
    vouchers = [chain.sign_voucher(chain.key(1), bob, c) for c in (100, 50, 300)]
    receipt = chain.settle(vouchers)
    assert paid(chain, receipt) == [(alice, bob, 100, 100), (alice, bob, 300, 200)]
    assert skips(chain, receipt) == [(alice, bob, 50, SKIP_NOT_INCREASE)]
    assert view(chain, "earnings", bob) == 300


def test_earnings_are_right_across_interleaved_providers(chain):
    a, b = funded(chain, 1, 1000), funded(chain, 2, 1000)
    p, q = chain.addr(3), chain.addr(4)
    vouchers = [
        chain.sign_voucher(chain.key(1), p, 10),
        chain.sign_voucher(chain.key(2), p, 20),
        chain.sign_voucher(chain.key(1), q, 40),
        chain.sign_voucher(chain.key(2), p, 25),  # same channel again: +5
        chain.sign_voucher(chain.key(2), q, 80),
        chain.sign_voucher(chain.key(1), p, 5),  # older: skipped inside a run of p
        chain.sign_voucher(chain.key(1), p, 110),
    ]
    receipt = chain.settle(vouchers)
    assert [x[3] for x in paid(chain, receipt)] == [10, 20, 40, 5, 80, 100]
    assert view(chain, "earnings", p) == 10 + 20 + 5 + 100
    assert view(chain, "earnings", q) == 40 + 80
    assert view(chain, "deposits", a) == 1000 - 110 - 40
    assert view(chain, "deposits", b) == 1000 - 25 - 80


def test_insufficient_deposit_pays_nothing_and_the_voucher_stays_valid(chain):
    alice, bob = funded(chain, 1, 100), chain.addr(2)
    chain.settle([chain.sign_voucher(chain.key(1), bob, 40)])
    v200 = chain.sign_voucher(chain.key(1), bob, 200)  # needs 160, 60 left
    receipt = chain.settle([v200])
    assert skips(chain, receipt) == [(alice, bob, 200, SKIP_INSUFFICIENT_DEPOSIT)]
    assert view(chain, "settled", alice, bob) == 40
    assert view(chain, "deposits", alice) == 60
    assert view(chain, "earnings", bob) == 40

    chain.fund(alice, 100)
    chain.deposit(alice, 100)
    receipt = chain.settle([v200])
    assert paid(chain, receipt) == [(alice, bob, 200, 160)]
    assert view(chain, "deposits", alice) == 0


def test_zero_addresses_are_skipped(chain):
    funded(chain, 1, 100)
    to_zero = chain.sign_voucher(chain.key(1), ZERO, 10)
    from_zero = SignedVoucher(ZERO, chain.addr(2), 10, bytes(65))
    receipt = chain.settle([to_zero, from_zero])
    assert [s[3] for s in skips(chain, receipt)] == [SKIP_ZERO_ADDRESS, SKIP_ZERO_ADDRESS]
    assert view(chain, "deposits", chain.addr(1)) == 100
    assert view(chain, "earnings", ZERO) == 0


# ------------------------------------------------------------- signatures


def test_a_voucher_signed_by_someone_else_is_skipped(chain):
    alice, bob = funded(chain, 1, 100), chain.addr(2)
    forged = chain.sign_voucher(chain.key(3), bob, 50, requester=alice)  # carol signs for alice
    assert not verify_voucher(chain.domain, forged)
    receipt = chain.settle([forged])
    assert skips(chain, receipt) == [(alice, bob, 50, SKIP_BAD_SIGNATURE)]
    assert view(chain, "deposits", alice) == 100


def _flip_to_high_s(signature: bytes) -> bytes:
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    return r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # 27 <-> 28


def test_high_s_signatures_are_skipped_though_ecrecover_accepts_them(chain):
    alice, bob = funded(chain, 1, 100), chain.addr(2)
    good = chain.sign_voucher(chain.key(1), bob, 50)
    malleated = _flip_to_high_s(good.signature)
    # The flipped signature is the same key's: ecrecover alone would accept it.
    digest = view(chain, "voucherDigest", alice, bob, 50)
    sig = keys.Signature(malleated[:64] + bytes([malleated[64] - 27]))
    assert sig.recover_public_key_from_msg_hash(digest).to_checksum_address() == alice
    high = with_signature(good, malleated)
    assert not verify_voucher(chain.domain, high)  # the off-chain check agrees
    receipt = chain.settle([high])
    assert skips(chain, receipt) == [(alice, bob, 50, SKIP_BAD_SIGNATURE)]
    assert view(chain, "settled", alice, bob) == 0


@pytest.mark.parametrize("v", [0, 1, 26, 29, 255])
def test_a_v_other_than_27_or_28_is_skipped(chain, v):
    alice, bob = funded(chain, 1, 100), chain.addr(2)
    good = chain.sign_voucher(chain.key(1), bob, 50)
    bad = with_signature(good, good.signature[:64] + bytes([v]))
    receipt = chain.settle([bad])
    assert skips(chain, receipt) == [(alice, bob, 50, SKIP_BAD_SIGNATURE)]


def test_signatures_of_the_wrong_length_or_garbage_are_skipped(chain):
    funded(chain, 1, 100)
    good = chain.sign_voucher(chain.key(1), chain.addr(2), 50)
    shapes = [
        b"",
        good.signature[:64],  # ERC-2098 compact form is not accepted
        good.signature + b"\x00",
        good.signature * 2,
        bytes(65),
        b"\xff" * 65,
        bytes(1000),
    ]
    receipt = chain.settle([with_signature(good, s) for s in shapes])
    assert [s[3] for s in skips(chain, receipt)] == [SKIP_BAD_SIGNATURE] * len(shapes)
    assert view(chain, "deposits", chain.addr(1)) == 100


def test_a_voucher_does_not_replay_on_another_channel(chain):
    alice, bob, carol = funded(chain, 1, 100), chain.addr(2), chain.addr(3)
    for_bob = chain.sign_voucher(chain.key(1), bob, 50)
    as_carol = SignedVoucher(alice, carol, 50, for_bob.signature)
    receipt = chain.settle([as_carol])
    assert skips(chain, receipt) == [(alice, carol, 50, SKIP_BAD_SIGNATURE)]
    # nor with the cumulative changed
    receipt = chain.settle([SignedVoucher(alice, bob, 51, for_bob.signature)])
    assert skips(chain, receipt) == [(alice, bob, 51, SKIP_BAD_SIGNATURE)]
    assert view(chain, "earnings", carol) == 0


def test_a_voucher_does_not_replay_on_another_chain(chain):
    alice, bob = funded(chain, 1, 100), chain.addr(2)
    other_chain = chain.sign_voucher(chain.key(1), bob, 50, chain_id=chain.chain_id + 1)
    receipt = chain.settle([other_chain])
    assert skips(chain, receipt) == [(alice, bob, 50, SKIP_BAD_SIGNATURE)]


def test_a_voucher_does_not_replay_on_another_escrow(chain):
    alice, bob = funded(chain, 1, 100), chain.addr(2)
    other = chain.deploy_escrow(UNLOCK_DELAY, UNSTAKE_DELAY)
    chain.send(chain.token.functions.approve(other.address, 100), alice)
    chain.fund(alice, 100)
    chain.send(other.functions.deposit(100), alice)
    for_other = chain.sign_voucher(chain.key(1), bob, 50, escrow=other.address)
    receipt = chain.settle([for_other])
    assert skips(chain, receipt) == [(alice, bob, 50, SKIP_BAD_SIGNATURE)]
    # ... where it was signed for, it pays
    tx = other.functions.settleBatch(voucher_args([for_other])).transact({"from": bob})
    chain.w3.eth.wait_for_transaction_receipt(tx)
    assert other.functions.earnings(bob).call() == 50
    assert view(chain, "earnings", bob) == 0


def test_ledger_vouchers_signs_what_the_escrow_accepts(chain):
    alice, bob = funded(chain, 1, 100), chain.addr(2)
    voucher = sign_voucher(chain.domain, chain.key(1), bob, 30)
    assert verify_voucher(chain.domain, voucher)
    receipt = chain.settle([voucher])
    assert paid(chain, receipt) == [(alice, bob, 30, 30)]


def test_a_mixed_batch_pays_the_good_and_names_each_bad_one(chain):
    alice, bob = funded(chain, 1, 1000), funded(chain, 2, 10)
    p, q = chain.addr(3), chain.addr(4)
    chain.settle([chain.sign_voucher(chain.key(1), p, 100)])
    good1 = chain.sign_voucher(chain.key(1), p, 300)
    forged = chain.sign_voucher(chain.key(5), q, 40, requester=alice)
    stale = chain.sign_voucher(chain.key(1), p, 100)
    too_big = chain.sign_voucher(chain.key(2), q, 11)
    no_provider = chain.sign_voucher(chain.key(1), ZERO, 5)
    low_s = chain.sign_voucher(chain.key(1), q, 20)
    high_s = with_signature(low_s, _flip_to_high_s(low_s.signature))
    good2 = chain.sign_voucher(chain.key(2), p, 10)
    batch = [good1, forged, stale, too_big, no_provider, high_s, good2]
    receipt = chain.settle(batch)
    assert receipt["status"] == 1
    assert paid(chain, receipt) == [(alice, p, 300, 200), (bob, p, 10, 10)]
    assert skips(chain, receipt) == [
        (alice, q, 40, SKIP_BAD_SIGNATURE),
        (alice, p, 100, SKIP_NOT_INCREASE),
        (bob, q, 11, SKIP_INSUFFICIENT_DEPOSIT),
        (alice, ZERO, 5, SKIP_ZERO_ADDRESS),
        (alice, q, 20, SKIP_BAD_SIGNATURE),
    ]
    assert view(chain, "earnings", p) == 310
    assert view(chain, "earnings", q) == 0
    assert view(chain, "deposits", alice) == 700
    assert view(chain, "deposits", bob) == 0


# ------------------------------------------------------------ uint256 edges


def test_a_max_cumulative_voucher_does_not_brick_the_channel(chain):
    alice, bob = funded(chain, 1, 100), chain.addr(2)
    huge = chain.sign_voucher(chain.key(1), bob, MAX_UINT256)
    receipt = chain.settle([huge])
    assert skips(chain, receipt) == [(alice, bob, MAX_UINT256, SKIP_INSUFFICIENT_DEPOSIT)]
    receipt = chain.settle([chain.sign_voucher(chain.key(1), bob, 60)])
    assert paid(chain, receipt) == [(alice, bob, 60, 60)]
    receipt = chain.settle([huge])  # still too big after a settlement
    assert skips(chain, receipt) == [(alice, bob, MAX_UINT256, SKIP_INSUFFICIENT_DEPOSIT)]


def test_a_whole_uint256_supply_settles_and_withdraws():
    big = new_chain(accounts=3, supply=MAX_UINT256)
    alice, bob = big.treasury, big.addr(1)
    big.deposit(alice, MAX_UINT256)
    assert big.escrow.functions.deposits(alice).call() == MAX_UINT256
    receipt = big.settle([big.sign_voucher(big.key(0), bob, MAX_UINT256)])
    assert paid(big, receipt) == [(alice, bob, MAX_UINT256, MAX_UINT256)]
    assert big.escrow.functions.earnings(bob).call() == MAX_UINT256
    receipt = big.settle([big.sign_voucher(big.key(0), bob, MAX_UINT256)])
    assert skips(big, receipt) == [(alice, bob, MAX_UINT256, SKIP_NOT_INCREASE)]
    big.send(big.escrow.functions.withdraw(), bob)
    assert balance(big, bob) == MAX_UINT256


# -------------------------------------------------------------------- withdraw


def test_withdraw_pays_earnings_once(chain):
    funded(chain, 1, 100)
    bob = chain.addr(2)
    assert reverts(chain, chain.escrow.functions.withdraw(), bob).name == "NothingToWithdraw"
    chain.settle([chain.sign_voucher(chain.key(1), bob, 70)])
    receipt = chain.send(chain.escrow.functions.withdraw(), bob)
    assert chain.events(receipt, "Withdrawn") == [{"provider": bob, "amount": 70}]
    assert balance(chain, bob) == 70
    assert view(chain, "earnings", bob) == 0
    assert balance(chain, chain.escrow.address) == 30
    assert reverts(chain, chain.escrow.functions.withdraw(), bob).name == "NothingToWithdraw"


# ----------------------------------------------------------------------- stake


def test_stake_and_unstake_after_the_delay(chain):
    prov = chain.addr(2)
    chain.fund(prov, 1000)
    chain.send(chain.token.functions.approve(chain.escrow.address, 1000), prov)
    assert reverts(chain, chain.escrow.functions.stake(0), prov).name == "ZeroAmount"
    receipt = chain.send(chain.escrow.functions.stake(600), prov)
    assert chain.events(receipt, "Staked") == [{"provider": prov, "amount": 600}]
    assert view(chain, "stakes", prov) == 600

    assert reverts(chain, chain.escrow.functions.requestUnstake(0), prov).name == "ZeroAmount"
    err = reverts(chain, chain.escrow.functions.requestUnstake(601), prov)
    assert (err.name, dict(err.args)) == ("InsufficientStake", {"staked": 600, "wanted": 601})
    assert reverts(chain, chain.escrow.functions.withdrawStake(), prov).name == "NoUnstakePending"

    chain.send(chain.escrow.functions.requestUnstake(100), prov)
    receipt = chain.send(chain.escrow.functions.requestUnstake(400), prov)  # replaces
    at = chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"] + UNSTAKE_DELAY
    assert chain.events(receipt, "UnstakeRequested") == [
        {"provider": prov, "amount": 400, "at": at}
    ]
    assert view(chain, "unstaking", prov) == [400, at]
    assert view(chain, "stakes", prov) == 600  # still staked (slashable) while waiting

    chain.travel_to(at - 1)
    err = reverts(chain, chain.escrow.functions.withdrawStake(), prov)
    assert (err.name, dict(err.args)) == ("UnstakeNotDue", {"at": at})
    chain.travel_to(at)
    receipt = chain.send(chain.escrow.functions.withdrawStake(), prov)
    assert chain.events(receipt, "Unstaked") == [{"provider": prov, "amount": 400}]
    assert view(chain, "stakes", prov) == 200
    assert view(chain, "unstaking", prov) == [0, 0]
    assert balance(chain, prov) == 400 + 400
    assert reverts(chain, chain.escrow.functions.withdrawStake(), prov).name == "NoUnstakePending"


def test_stake_and_deposit_are_separate(chain):
    alice = funded(chain, 1, 100)
    err = reverts(chain, chain.escrow.functions.requestUnstake(1), alice)
    assert (err.name, dict(err.args)) == ("InsufficientStake", {"staked": 0, "wanted": 1})
    assert view(chain, "stakes", alice) == 0


# ------------------------------------------------------------------------- gas

CHANNELS = 50
JOBS_PER_CHANNEL = 100
PRICE = 10**15  # 0.001 MASK a job


def test_gas_per_job_at_50_channels_of_100_jobs(capsys):
    """One provider settles 50 requesters' channels, each voucher covering 100
    jobs: first settlements, then the same channels again 100 jobs later."""
    gas_chain = new_chain(accounts=CHANNELS + 2)
    provider = gas_chain.addr(CHANNELS + 1)
    per_channel = 2 * JOBS_PER_CHANNEL * PRICE
    for i in range(1, CHANNELS + 1):
        who = gas_chain.addr(i)
        gas_chain.send(
            gas_chain.token.functions.transfer(who, per_channel), gas_chain.treasury, gas=100_000
        )
        deadline = gas_chain.now() + 3600
        v, r, s = gas_chain.permit(gas_chain.key(i), per_channel, deadline)
        call = gas_chain.escrow.functions.depositWithPermit(per_channel, deadline, v, r, s)
        gas_chain.send(call, who, gas=200_000)

    def batch(jobs: int) -> list[SignedVoucher]:
        return [
            gas_chain.sign_voucher(gas_chain.key(i), provider, jobs * PRICE)
            for i in range(1, CHANNELS + 1)
        ]

    first = gas_chain.settle(batch(JOBS_PER_CHANNEL), sender=provider, gas=5_000_000)
    again = gas_chain.settle(batch(2 * JOBS_PER_CHANNEL), sender=provider, gas=5_000_000)
    assert len(paid(gas_chain, first)) == len(paid(gas_chain, again)) == CHANNELS
    assert gas_chain.escrow.functions.earnings(provider).call() == CHANNELS * per_channel

    first_job = first["gasUsed"] / (CHANNELS * JOBS_PER_CHANNEL)
    again_job = again["gasUsed"] / (CHANNELS * JOBS_PER_CHANNEL)
    with capsys.disabled():
        print(
            f"\nsettleBatch, {CHANNELS} channels x {JOBS_PER_CHANNEL} jobs: "
            f"first {first['gasUsed']} gas ({first['gasUsed'] // CHANNELS}/voucher, "
            f"{first_job:.0f}/job); settled before {again['gasUsed']} gas "
            f"({again['gasUsed'] // CHANNELS}/voucher, {again_job:.0f}/job)"
        )
    assert again_job < first_job < 2000
    # Regression bounds (docs: ~61.6k and ~27.4k per voucher with per-voucher earnings writes)
    assert first["gasUsed"] / CHANNELS < 60_000
    assert again["gasUsed"] / CHANNELS < 27_000


def test_gas_of_one_voucher_first_time_and_settled_before(chain, capsys):
    funded(chain, 1, 1000)
    bob = chain.addr(2)
    first = chain.settle([chain.sign_voucher(chain.key(1), bob, 100)])
    again = chain.settle([chain.sign_voucher(chain.key(1), bob, 200)])
    with capsys.disabled():
        print(f"\none voucher: first {first['gasUsed']} gas, settled before {again['gasUsed']} gas")
    assert again["gasUsed"] < first["gasUsed"] < 100_000
    assert again["gasUsed"] < 60_000
