"""ChainClient, the escrow port and the deploy tools against a real EVM in process.

eth-tester on py-evm runs the committed MaskToken and SettlementEscrow and a
small probe contract (source below) with a custom error, a ``require`` string
and a panic, so revert decoding is checked on real revert data. The same
client code runs over JSON-RPC in tests/component/test_devchain.py and
test_anvil.py.

    contract Probe {
        error TooBig(uint256 have, uint256 limit);
        event Stored(address indexed who, uint256 value);
        uint256 public value;
        uint256 public immutable limit;
        constructor(uint256 limit_) { limit = limit_; }
        function store(uint256 v) external {
            if (v > limit) revert TooBig(v, limit);
            value = v;
            emit Stored(msg.sender, v);
        }
        function boom() external pure { require(false, "boom"); }
        function inverse(uint256 a) external pure returns (uint256) { return 1 / a; }
    }
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import trio
from eth_abi import abi as eth_abi
from eth_account import Account

from ledger.chain import (
    ChainClient,
    EmbeddedChain,
    RevertError,
    anvil_dev_keys,
    decode_revert,
    eth_tester_dev_keys,
    eth_tester_revert_data,
)
from ledger.contracts import ESCROW, SKIP_BAD_SIGNATURE, SKIP_INSUFFICIENT_DEPOSIT, load_artifact
from ledger.deploy import Deployment, DeploymentConfig, deploy, deposit, fund
from ledger.escrow import ChainEscrow, TxSender, permit_signature
from ledger.ports import ChainError
from ledger.vouchers import Domain, SignedVoucher, sign_voucher

PROBE_BYTECODE = (
    "0x60a0604052348015600e575f5ffd5b50604051610290380380610290833981016040819052602b91603256"
    "5b6080526048565b5f602082840312156041575f5ffd5b5051919050565b60805161022461006c5f395f8181"
    "60a80152818160cc015261010801526102245ff3fe608060405234801561000f575f5ffd5b50600436106100"
    "55575f3560e01c80633fa4f245146100595780636057361d1461007357806363c163ad14610088578063a169"
    "ce091461009b578063a4d66daf146100a3575b5f5ffd5b6100615f5481565b60405190815260200160405180"
    "910390f35b6100866100813660046101b8565b6100ca565b005b6100616100963660046101b8565b61017556"
    "5b610086610187565b6100617f00000000000000000000000000000000000000000000000000000000000000"
    "0081565b7f000000000000000000000000000000000000000000000000000000000000000081111561013957"
    "604051631ab6737f60e21b8152600481018290527f0000000000000000000000000000000000000000000000"
    "00000000000000000060248201526044015b60405180910390fd5b5f81905560405181815233907febfcf7c0"
    "a1b09f6499e519a8d8bb85ce33cd539ec6cbd964e116cd74943ead1a9060200160405180910390a250565b5f"
    "6101818260016101cf565b92915050565b60405162461bcd60e51b8152600401610130906020808252600490"
    "82015263626f6f6d60e01b604082015260600190565b5f602082840312156101c8575f5ffd5b503591905056"
    "5b5f826101e957634e487b7160e01b5f52601260045260245ffd5b50049056fea2646970667358221220dab9"
    "37b3e7516bbb896b1c9aae76ffb281f001c031c6ad7fe7443e4115ef33c064736f6c63430008250033"
)
PROBE_ABI = json.loads(
    '[{"inputs":[{"internalType":"uint256","name":"limit_","type":"uint256"}],"stateMutability":"nonpayable","type":"constructor"},{"inputs":[{"internalType":"uint256","name":"have","type":"uint256"},{"internalType":"uint256","name":"limit","type":"uint256"}],"name":"TooBig","type":"error"},{"anonymous":false,"inputs":[{"indexed":true,"internalType":"address","name":"who","type":"address"},{"indexed":false,"internalType":"uint256","name":"value","type":"uint256"}],"name":"Stored","type":"event"},{"inputs":[],"name":"boom","outputs":[],"stateMutability":"pure","type":"function"},{"inputs":[{"internalType":"uint256","name":"a","type":"uint256"}],"name":"inverse","outputs":[{"internalType":"uint256","name":"","type":"uint256"}],"stateMutability":"pure","type":"function"},{"inputs":[],"name":"limit","outputs":[{"internalType":"uint256","name":"","type":"uint256"}],"stateMutability":"view","type":"function"},{"inputs":[{"internalType":"uint256","name":"v","type":"uint256"}],"name":"store","outputs":[],"stateMutability":"nonpayable","type":"function"},{"inputs":[],"name":"value","outputs":[{"internalType":"uint256","name":"","type":"uint256"}],"stateMutability":"view","type":"function"}]'
)
PROBE = {"abi": PROBE_ABI, "bytecode": PROBE_BYTECODE}
MASK = 10**18
UNLOCK_DELAY = 3600


@pytest.fixture(scope="module")
def chain() -> EmbeddedChain:
    return ChainClient.embedded()


@pytest.fixture(scope="module")
def probe(chain: EmbeddedChain):
    return chain.contract(chain.deploy(PROBE, [10], chain.dev_keys()[0]), PROBE_ABI)


def address(key: bytes) -> str:
    return Account.from_key(key).address


# --- keys ----------------------------------------------------------------------------


def test_dev_keys_are_the_funded_accounts(chain: EmbeddedChain) -> None:
    keys = chain.dev_keys()
    assert keys == eth_tester_dev_keys()
    assert chain.eth_balance(address(keys[9])) > 10**20
    # The RPC form finds the same keys from eth_accounts (here: the embedded node's).
    assert ChainClient.dev_keys(chain) == keys


def test_anvil_dev_keys_are_the_public_mnemonic_ones() -> None:
    keys = anvil_dev_keys()
    assert len(keys) == 10
    assert address(keys[0]) == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert address(keys[1]) == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def test_chain_id_can_be_chosen_and_the_evm_sees_it() -> None:
    chain = EmbeddedChain(31337)
    assert chain.chain_id == 31337
    key = chain.dev_keys()[0]
    token = chain.contract(
        chain.deploy(load_artifact("MaskToken"), [address(key), 1], key),
        load_artifact("MaskToken").abi,
    )
    chain.advance_time(60)  # a new block keeps the id
    assert chain.call(token, "eip712Domain")[3] == 31337
    with pytest.raises(ChainError, match="bad chain id"):
        EmbeddedChain(0)


# --- calls, transactions, receipts ---------------------------------------------------


def test_transact_and_receipt_decode_the_contract_events(chain: EmbeddedChain, probe) -> None:
    key = chain.dev_keys()[1]
    before = chain.block_number()
    tx_hash = chain.transact(probe, "store", 7, key=key, nonce=chain.pending_nonce(address(key)))
    mined = chain.receipt(tx_hash, [probe])
    assert mined is not None and mined.status and mined.block_number == before + 1
    assert mined.tx_hash == tx_hash and mined.gas_used > 21_000
    [event] = mined.events
    assert (event.name, event.address) == ("Stored", probe.address)
    assert event.args == {"who": address(key), "value": 7}
    assert chain.call(probe, "value") == 7
    # Without the contract its logs are not decoded.
    assert chain.receipt(tx_hash).events == ()


def test_an_unknown_transaction_has_no_receipt(chain: EmbeddedChain) -> None:
    assert chain.receipt("0x" + "ab" * 32) is None


def test_a_custom_error_is_decoded_from_the_abi(chain: EmbeddedChain, probe) -> None:
    with pytest.raises(RevertError) as caught:
        chain.call(probe, "store", 11)
    assert caught.value.error_name == "TooBig"
    assert caught.value.error_args == {"have": 11, "limit": 10}
    assert "TooBig(have=11, limit=10)" in str(caught.value)
    assert caught.value.transient is False and caught.value.hint


def test_require_strings_and_panics_are_decoded(chain: EmbeddedChain, probe) -> None:
    with pytest.raises(RevertError) as caught:
        chain.call(probe, "boom")
    assert (caught.value.error_name, caught.value.error_args) == ("Error", {"reason": "boom"})
    with pytest.raises(RevertError) as caught:
        chain.call(probe, "inverse", 0)
    assert (caught.value.error_name, caught.value.error_args) == ("Panic", {"code": 0x12})


def test_a_transaction_that_would_revert_fails_before_it_is_sent(
    chain: EmbeddedChain, probe
) -> None:
    key = chain.dev_keys()[2]
    nonce = chain.pending_nonce(address(key))
    with pytest.raises(RevertError, match="TooBig"):
        chain.transaction(probe, "store", 99, sender=address(key), nonce=nonce)
    with pytest.raises(RevertError, match="TooBig"):
        chain.estimate_gas(
            {"from": address(key), "to": probe.address, "data": probe.encode_abi("store", [99])},
            [PROBE_ABI],
        )
    assert chain.pending_nonce(address(key)) == nonce


def test_a_mined_revert_has_status_false_and_its_replay_says_why(
    chain: EmbeddedChain, probe
) -> None:
    key = chain.dev_keys()[3]
    tx = chain.transaction(
        probe, "store", 50, sender=address(key), nonce=chain.pending_nonce(address(key)), gas=90_000
    )
    mined = chain.receipt(chain.send_transaction(tx, key), [probe])
    assert mined is not None and mined.status is False and mined.events == ()
    why = chain.replay_revert(tx, mined.block_number, [PROBE_ABI])
    assert why is not None and why.error_name == "TooBig"


def test_a_stale_nonce_is_a_transient_error(chain: EmbeddedChain, probe) -> None:
    key = chain.dev_keys()[4]
    chain.transact(probe, "store", 1, key=key, nonce=chain.pending_nonce(address(key)))
    with pytest.raises(ChainError) as caught:
        chain.transact(probe, "store", 2, key=key, nonce=0, gas=90_000)
    assert caught.value.transient is True
    assert "nonce" in str(caught.value).lower()


@pytest.mark.parametrize(
    "bad", ["0xzz", "0x" + "1" * 39, 42, "0xD41c057fd1c78805AAC12B0A94a405c0461A6FBb"]
)
def test_bad_addresses_are_clear_errors(chain: EmbeddedChain, bad) -> None:
    with pytest.raises(ChainError) as caught:
        chain.eth_balance(bad)
    assert caught.value.transient is False and "40 hex digits" in caught.value.hint


def test_bad_transaction_hashes_are_clear_errors(chain: EmbeddedChain) -> None:
    for bad in ["0x12", "ab" * 33, "0x" + "zz" * 32]:
        with pytest.raises(ChainError, match="not a transaction hash"):
            chain.receipt(bad)


def test_an_unreachable_node_is_transient_with_a_hint() -> None:
    with pytest.raises(ChainError) as caught:
        ChainClient.rpc("http://127.0.0.1:9", 31337, timeout_s=2)
    assert caught.value.transient is True
    assert "127.0.0.1:9" in caught.value.hint
    with pytest.raises(ChainError, match="not an HTTP"):
        ChainClient.rpc("ws://127.0.0.1:9", 31337)


def test_a_node_that_never_answers_times_out_in_bounded_time() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ChainError) as caught:
            ChainClient.rpc(url, 31337, timeout_s=0.5)
        assert time.monotonic() - started < 5  # no hidden retries
    assert caught.value.transient and "too slow" in str(caught.value)


# --- revert data ---------------------------------------------------------------------


def test_decode_revert_survives_garbage() -> None:
    too_big = bytes.fromhex("6ad9cdfc")  # TooBig(uint256,uint256)
    assert decode_revert(too_big + eth_abi.encode(["uint256"] * 2, [3, 4]), [PROBE_ABI]) == (
        "TooBig",
        {"have": 3, "limit": 4},
    )
    assert decode_revert(too_big + b"\x01", [PROBE_ABI]) == ("", {})  # truncated
    assert decode_revert(b"\xde\xad\xbe\xef", [PROBE_ABI]) == ("", {})  # unknown
    assert decode_revert(b"", [PROBE_ABI]) == ("", {})
    assert decode_revert(bytes.fromhex("08c379a0") + b"\xff" * 7) == ("", {})


def test_tester_revert_data_rebuilds_what_a_node_returns() -> None:
    from eth_tester.exceptions import TransactionFailed

    raw = b"j\xd9\xcd\xfc" + b"\x00" * 64
    assert eth_tester_revert_data(TransactionFailed(f"execution reverted: {raw!r}")) == raw
    reason = eth_tester_revert_data(TransactionFailed("execution reverted: boom"))
    assert decode_revert(reason or b"") == ("Error", {"reason": "boom"})
    # A repr that is not a bytes literal is treated as a reason string, never evaluated.
    odd = eth_tester_revert_data(TransactionFailed("execution reverted: b'__import__('os')'"))
    assert decode_revert(odd or b"")[0] == "Error"


# --- deployment and the devnet faucet --------------------------------------------------


@pytest.fixture(scope="module")
def money() -> tuple[EmbeddedChain, Deployment]:
    chain = EmbeddedChain()
    treasury = chain.dev_keys()[0]
    deployed = deploy(chain, treasury, address(treasury), 10**9 * MASK, UNLOCK_DELAY, 7200)
    return chain, deployed


def test_deploy_is_deterministic_given_deployer_and_nonce(money) -> None:
    chain, deployed = money
    again = deploy(EmbeddedChain(), chain.dev_keys()[0], address(chain.dev_keys()[0]), 1, 0, 0)
    assert (again.token, again.escrow) == (deployed.token, deployed.escrow)
    assert deployed.chain_id == chain.chain_id and deployed.block >= 2
    escrow = chain.contract(deployed.escrow, load_artifact(ESCROW).abi)
    assert chain.call(escrow, "token") == deployed.token
    assert chain.call(escrow, "unlockDelay") == UNLOCK_DELAY


def test_deploy_refuses_bad_parameters() -> None:
    chain = EmbeddedChain()
    key = chain.dev_keys()[0]
    for args in [(address(key), 0, 1, 1), (address(key), 1, -1, 1), (address(key), 1, 1, 2**64)]:
        with pytest.raises(ChainError, match="out of range"):
            deploy(chain, key, *args)
    with pytest.raises(ChainError, match="not an address"):
        deploy(chain, key, "treasury", 1, 1, 1)


def test_fund_and_deposit_with_a_permit(money) -> None:
    chain, deployed = money
    treasury = chain.dev_keys()[0]
    fresh = Account.create()
    fund(chain, treasury, fresh.address, 10**17, 5 * MASK, token=deployed.token)
    assert chain.eth_balance(fresh.address) == 10**17
    mined = deposit(chain, bytes(fresh.key), deployed.escrow, deployed.token, 2 * MASK)
    assert [e.name for e in mined.events] == ["Deposited"]
    escrow = chain.contract(deployed.escrow, load_artifact(ESCROW).abi)
    assert chain.call(escrow, "deposits", fresh.address) == 2 * MASK
    with pytest.raises(RevertError) as caught:  # more than it holds: the token refuses
        deposit(chain, bytes(fresh.key), deployed.escrow, deployed.token, 4 * MASK)
    assert caught.value.error_name == "ERC20InsufficientAllowance" or (
        caught.value.error_name == "ERC20InsufficientBalance"
    )


def test_permit_signature_is_what_the_token_checks(money) -> None:
    chain, deployed = money
    owner = Account.create()
    token = chain.contract(deployed.token, load_artifact("MaskToken").abi)
    v, r, s = permit_signature(
        chain.chain_id, deployed.token, bytes(owner.key), deployed.escrow, 5, 0, 2**40
    )
    key = chain.dev_keys()[5]  # anyone may submit a permit
    chain.transact(
        token, "permit", owner.address, deployed.escrow, 5, 2**40, v, r, s,
        key=key, nonce=chain.pending_nonce(address(key)),
    )  # fmt: skip
    assert chain.call(token, "allowance", owner.address, deployed.escrow) == 5


def test_deployment_config_round_trips_and_refuses_nonsense(money) -> None:
    _, deployed = money
    for url in (None, "http://127.0.0.1:8545"):
        raw = deployed.config(url).to_dict()
        assert json.loads(json.dumps(raw)) == raw
        assert DeploymentConfig.from_dict(raw) == deployed.config(url)
    keys = {"embedded", "chain_id", "token", "escrow", "requests"}
    assert set(deployed.config(None).to_dict()) == keys
    older = {k: v for k, v in deployed.config(None).to_dict().items() if k != "requests"}
    assert DeploymentConfig.from_dict(older).requests is None  # a config from before it
    good = deployed.config("http://127.0.0.1:8545").to_dict()
    for change, words in [
        ({"token": "0x12"}, "'token'"),
        ({"requests": "0x12"}, "'requests'"),
        ({"chain_id": True}, "chain_id"),
        ({"chain_id": -1}, "chain_id"),
        ({"rpc_url": "file:///etc/passwd"}, "rpc_url"),
        ({"embedded": True}, "exactly one"),
        ({"extra": 1}, "unknown"),
    ]:
        with pytest.raises(ValueError, match=words):
            DeploymentConfig.from_dict({**good, **change})
    with pytest.raises(ValueError, match="not a table"):
        DeploymentConfig.from_dict([])  # type: ignore[arg-type]


# --- the escrow port over the embedded chain ----------------------------------------------


def funded(chain: EmbeddedChain, deployed: Deployment, mask: int) -> bytes:
    account = Account.create()
    fund(chain, chain.dev_keys()[0], account.address, 10**18, mask, token=deployed.token)
    return bytes(account.key)


async def test_settle_pays_valid_vouchers_and_reports_skips(money) -> None:
    chain, deployed = money
    limiter = trio.CapacityLimiter(1)
    requester, poor, provider = (funded(chain, deployed, 10 * MASK) for _ in range(3))
    deposit(chain, requester, deployed.escrow, deployed.token, 5 * MASK)
    deposit(chain, poor, deployed.escrow, deployed.token, 1 * MASK)
    escrow = ChainEscrow(chain, deployed.token, deployed.escrow, provider, limiter)
    assert escrow.chain_id == chain.chain_id and escrow.escrow_address == deployed.escrow
    domain = Domain(chain.chain_id, deployed.escrow)
    me = address(provider)
    good = sign_voucher(domain, requester, me, 3 * MASK)
    too_much = sign_voucher(domain, poor, me, 2 * MASK)
    forged = SignedVoucher(address(requester), me, 4 * MASK, good.signature)
    batch = [good, too_much, forged]

    gas = await escrow.estimate_settle(batch)
    tx_hash = await escrow.send_settle(batch, gas)
    with trio.fail_after(10):
        settled = await escrow.receipt(tx_hash)
    assert settled is not None and settled.status and settled.gas_used <= gas
    assert [(s.requester, s.cumulative, s.paid) for s in settled.settled] == [
        (address(requester), 3 * MASK, 3 * MASK)
    ]
    assert sorted((s.requester, s.reason) for s in settled.skipped) == sorted(
        [(address(poor), SKIP_INSUFFICIENT_DEPOSIT), (address(requester), SKIP_BAD_SIGNATURE)]
    )
    assert await escrow.settled(address(requester), me) == 3 * MASK
    assert await escrow.available(address(requester)) == 2 * MASK
    assert await escrow.earnings(me) == 3 * MASK
    assert await escrow.block_number() == settled.block_number
    assert await escrow.receipt("0x" + "00" * 32) is None


async def test_wallet_operations_and_their_refusals(money) -> None:
    chain, deployed = money
    limiter = trio.CapacityLimiter(1)
    key = funded(chain, deployed, 10 * MASK)
    me = address(key)
    wallet = ChainEscrow(chain, deployed.token, deployed.escrow, key, limiter)

    await wallet.deposit_with_permit(2 * MASK)
    await wallet.approve_and_deposit(1 * MASK)
    assert await wallet.deposits(me) == 3 * MASK
    assert await wallet.token_balance(me) == 7 * MASK
    assert await wallet.eth_balance(me) > 0

    with pytest.raises(RevertError) as caught:
        await wallet.reclaim()
    assert caught.value.error_name == "NoUnlockPending"
    assert "there is no unlock request" in str(caught.value) and caught.value.hint
    with pytest.raises(RevertError, match="InsufficientDeposit|smaller than"):
        await wallet.request_unlock(4 * MASK)
    with pytest.raises(RevertError) as caught:
        await wallet.withdraw()
    assert caught.value.error_name == "NothingToWithdraw"
    with pytest.raises(ChainError, match="positive uint256"):
        await wallet.request_unlock(0)

    mined = await wallet.request_unlock(1 * MASK)
    [event] = mined.events
    amount, unlock_at = await wallet.unlocking(me)
    assert (amount, unlock_at) == (1 * MASK, event.args["unlockAt"])
    assert await wallet.available(me) == 2 * MASK
    with pytest.raises(RevertError) as caught:
        await wallet.reclaim()
    assert caught.value.error_args == {"unlockAt": unlock_at}
    chain.advance_time(UNLOCK_DELAY)
    await wallet.reclaim()
    assert await wallet.deposits(me) == 2 * MASK
    assert await wallet.token_balance(me) == 8 * MASK

    await wallet.stake(3 * MASK)
    assert await wallet.stakes(me) == 3 * MASK
    # Every send above went through one nonce owner that read the nonce once.
    stats = wallet.sender.statistics()
    assert stats.nonce_reads == 1 and stats.send_errors == 0
    assert stats.next_nonce == chain.pending_nonce(me)


async def test_concurrent_sends_keep_nonces_in_order(money) -> None:
    chain, deployed = money
    key = funded(chain, deployed, 0)
    sender = TxSender(chain, key, trio.CapacityLimiter(2))
    to = Account.create().address
    hashes: list[str] = []

    async def send_one(i: int) -> None:
        sent = await sender.send(lambda nonce: {"to": to, "value": i + 1, "gas": 21_000})
        hashes.append(sent.tx_hash)

    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(send_one, i)
    assert len(hashes) == 12
    nonces = sorted(chain.w3.eth.get_transaction(h)["nonce"] for h in hashes)
    assert nonces == list(range(12))
    assert chain.eth_balance(to) == sum(range(1, 13))
    assert sender.statistics().nonce_reads == 1


async def test_a_send_error_makes_the_sender_read_the_nonce_again(money) -> None:
    chain, deployed = money
    key = funded(chain, deployed, 0)
    sender = TxSender(chain, key, trio.CapacityLimiter(1))
    to = Account.create().address

    def transfer(nonce: int) -> dict:
        return {"to": to, "value": 1, "gas": 21_000}

    await sender.send(transfer)
    # Another route sends from the same account: the sender's nonce is stale.
    chain.transfer_eth(key, to, 1, chain.pending_nonce(address(key)))
    with pytest.raises(ChainError) as caught:
        await sender.send(transfer)
    assert caught.value.transient
    assert sender.statistics().next_nonce is None
    await sender.send(transfer)
    stats = sender.statistics()
    assert (stats.sent, stats.send_errors, stats.nonce_reads) == (2, 1, 2)
    assert chain.eth_balance(to) == 3
