"""The escrow port against anvil 1.7.1, a real EVM node, on 127.0.0.1.

What eth-tester cannot show: reverts arriving as JSON-RPC errors, a node that
checks nonces at send time, and a chain that survives the node's restart.
Skipped (with the reason) when anvil cannot be installed; ``make test``
installs it first (``make anvil``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from eth_account import Account

from ledger.anvil import ANVIL_VERSION, install_anvil, start_anvil
from ledger.chain import RevertError, RpcChain, anvil_dev_keys
from ledger.deploy import Deployment, deploy, deposit, fund
from ledger.devchain import ChainProcess
from ledger.escrow import ChainEscrow, TxSender
from ledger.ports import ChainError
from ledger.vouchers import Domain, SignedVoucher, sign_voucher

MASK = 10**18


@pytest.fixture(scope="module")
def anvil_binary() -> Path:
    try:
        return install_anvil()
    except (ChainError, OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"anvil is not installed and cannot be: {e}")


@pytest.fixture(scope="module")
def anvil(anvil_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainProcess]:
    process = start_anvil(tmp_path_factory.mktemp("anvil"), keep_state=False)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def chain(anvil: ChainProcess) -> RpcChain:
    return anvil.client()


@pytest.fixture(scope="module")
def deployed(chain: RpcChain) -> Deployment:
    treasury = chain.dev_keys()[0]
    return deploy(chain, treasury, Account.from_key(treasury).address, 10**9 * MASK, 3600, 0)


def newcomer(chain: RpcChain, deployed: Deployment, mask: int = 10 * MASK) -> bytes:
    account = Account.create()
    fund(chain, chain.dev_keys()[0], account.address, 10**18, mask, token=deployed.token)
    return bytes(account.key)


def address(key: bytes) -> str:
    return Account.from_key(key).address


def test_it_is_the_pinned_anvil_with_the_dev_accounts(anvil_binary: Path, chain: RpcChain) -> None:
    version = subprocess.run([anvil_binary, "--version"], capture_output=True, check=True)
    assert ANVIL_VERSION in version.stdout.decode()
    assert chain.chain_id == 31337
    assert chain.dev_keys() == anvil_dev_keys()


def test_deploy_lands_at_the_well_known_addresses(chain: RpcChain, deployed: Deployment) -> None:
    # The first two contracts of anvil's first dev account: the same on every fresh devnet.
    assert deployed.token == "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert deployed.escrow == "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
    assert len(chain.code(deployed.escrow)) > 1000


async def test_deposit_and_settle_a_voucher(chain: RpcChain, deployed: Deployment) -> None:
    requester, provider = newcomer(chain, deployed), newcomer(chain, deployed, 0)
    deposit(chain, requester, deployed.escrow, deployed.token, 4 * MASK)
    escrow = ChainEscrow(chain, deployed.token, deployed.escrow, provider, trio.CapacityLimiter(2))
    assert await escrow.available(address(requester)) == 4 * MASK
    domain = Domain(chain.chain_id, deployed.escrow)
    voucher = sign_voucher(domain, requester, address(provider), 3 * MASK)
    tx_hash = await escrow.send_settle([voucher], await escrow.estimate_settle([voucher]))
    with trio.fail_after(20):
        while (got := await escrow.receipt(tx_hash)) is None:
            await trio.sleep(0.05)
    assert got.status and [(s.provider, s.paid) for s in got.settled] == [
        (address(provider), 3 * MASK)
    ]
    assert await escrow.settled(address(requester), address(provider)) == 3 * MASK
    await escrow.withdraw()
    assert await escrow.token_balance(address(provider)) == 3 * MASK


async def test_reverts_from_a_real_node_are_decoded(chain: RpcChain, deployed: Deployment) -> None:
    key = newcomer(chain, deployed)
    wallet = ChainEscrow(chain, deployed.token, deployed.escrow, key, trio.CapacityLimiter(1))
    with pytest.raises(RevertError) as caught:
        await wallet.reclaim()
    assert caught.value.error_name == "NoUnlockPending" and caught.value.hint
    with pytest.raises(RevertError) as caught:  # the token's error, bubbled through the escrow
        await wallet.deposit_with_permit(11 * MASK)
    assert caught.value.error_name == "ERC20InsufficientBalance"
    assert caught.value.error_args["needed"] == 11 * MASK


async def test_a_settle_that_reverts_on_chain_is_mined_with_status_false(
    chain: RpcChain, deployed: Deployment
) -> None:
    escrow = ChainEscrow(
        chain,
        deployed.token,
        deployed.escrow,
        newcomer(chain, deployed, 0),
        trio.CapacityLimiter(1),
    )
    requester = newcomer(chain, deployed)
    deposit(chain, requester, deployed.escrow, deployed.token, MASK)
    voucher = sign_voucher(Domain(chain.chain_id, deployed.escrow), requester, escrow.address, MASK)
    tx_hash = await escrow.send_settle([voucher], 30_000)  # far too little gas
    with trio.fail_after(20):
        while (got := await escrow.receipt(tx_hash)) is None:
            await trio.sleep(0.05)
    assert got.status is False and got.settled == [] and got.gas_used == 30_000


async def test_concurrent_sends_from_one_sender_keep_nonces_straight(
    chain: RpcChain, deployed: Deployment
) -> None:
    provider = newcomer(chain, deployed, 0)
    requesters = [newcomer(chain, deployed) for _ in range(3)]
    for key in requesters:
        deposit(chain, key, deployed.escrow, deployed.token, 5 * MASK)
    escrow = ChainEscrow(chain, deployed.token, deployed.escrow, provider, trio.CapacityLimiter(4))
    domain = Domain(chain.chain_id, deployed.escrow)
    first = chain.pending_nonce(escrow.address)
    hashes: list[str] = []

    async def settle(step: int) -> None:
        voucher = sign_voucher(domain, requesters[step % 3], escrow.address, (step + 1) * 10**15)
        hashes.append(await escrow.send_settle([voucher], 200_000))

    async with trio.open_nursery() as nursery:
        for step in range(15):
            nursery.start_soon(settle, step)
    with trio.fail_after(30):
        receipts = [await escrow.wait_receipt(h) for h in hashes]
    assert all(r.status for r in receipts)
    nonces = sorted(chain.w3.eth.get_transaction(h)["nonce"] for h in hashes)
    assert nonces == list(range(first, first + 15))
    assert escrow.sender.statistics().nonce_reads == 1
    # Whatever order they were mined in, each channel ends at its highest voucher.
    for i, key in enumerate(requesters):
        top = max(step for step in range(15) if step % 3 == i)
        assert await escrow.settled(address(key), escrow.address) == (top + 1) * 10**15


async def test_a_send_error_makes_the_sender_read_the_nonce_again(
    chain: RpcChain, deployed: Deployment
) -> None:
    key = newcomer(chain, deployed, 0)
    sender = TxSender(chain, key, trio.CapacityLimiter(1))
    to = Account.create().address

    def transfer(nonce: int) -> dict:
        return {"to": to, "value": 1, "gas": 21_000}

    await sender.send(transfer)
    # A wallet sends from the same account behind the sender's back.
    chain.wait_receipt(chain.transfer_eth(key, to, 1, chain.pending_nonce(address(key))))
    with pytest.raises(ChainError) as caught:
        await sender.send(transfer)
    assert caught.value.transient and "nonce" in str(caught.value).lower()
    # A transaction anvil refuses outright (over the block gas limit) also resets it.
    with pytest.raises(ChainError):
        await sender.send(lambda nonce: {"to": to, "value": 1, "gas": 10**9})
    await sender.send(transfer)
    stats = sender.statistics()
    assert (stats.sent, stats.send_errors, stats.nonce_reads) == (2, 2, 3)
    with trio.fail_after(20):
        while chain.eth_balance(to) != 3:
            await trio.sleep(0.05)


def test_stop_and_restart_keeps_the_chain(anvil_binary: Path, tmp_path: Path) -> None:
    node = start_anvil(tmp_path, keep_state=False)
    try:
        chain = node.client()
        treasury = chain.dev_keys()[0]
        deployed = deploy(chain, treasury, address(treasury), 10**6 * MASK, 60, 0)
        requester = Account.create()
        fund(chain, treasury, requester.address, 10**17, 2 * MASK, token=deployed.token)
        deposit(chain, bytes(requester.key), deployed.escrow, deployed.token, MASK)
        height = chain.block_number()
    finally:
        node.stop()
    assert node.process.returncode is not None
    with pytest.raises(ChainError) as caught:
        chain.block_number()
    assert caught.value.transient

    again = start_anvil(tmp_path, port=node.port)
    try:
        assert again.url == node.url
        chain = again.client()
        assert chain.block_number() == height
        escrow = ChainEscrow(
            chain, deployed.token, deployed.escrow, bytes(requester.key), trio.CapacityLimiter(1)
        )
        assert trio.run(escrow.deposits, requester.address) == MASK
        # It keeps going from there.
        deposit(chain, bytes(requester.key), deployed.escrow, deployed.token, MASK)
        assert trio.run(escrow.deposits, requester.address) == 2 * MASK
    finally:
        again.stop()


async def test_a_forged_voucher_is_skipped_not_reverted(
    chain: RpcChain, deployed: Deployment
) -> None:
    requester, provider = newcomer(chain, deployed), newcomer(chain, deployed, 0)
    deposit(chain, requester, deployed.escrow, deployed.token, MASK)
    escrow = ChainEscrow(chain, deployed.token, deployed.escrow, provider, trio.CapacityLimiter(1))
    forged = SignedVoucher(address(requester), address(provider), MASK, b"\x01" * 65)
    tx_hash = await escrow.send_settle([forged], await escrow.estimate_settle([forged]))
    with trio.fail_after(20):
        await escrow.wait_receipt(tx_hash)
    got = await escrow.receipt(tx_hash)
    assert got is not None and got.status and got.settled == []
    assert [(s.requester, s.reason) for s in got.skipped] == [(address(requester), 1)]
