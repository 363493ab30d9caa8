"""The devchain: one embedded EVM served over JSON-RPC to several clients.

A real subprocess (``python -m ledger.devchain``) on 127.0.0.1; clients are
``ChainClient.rpc`` as a daemon uses them. Hostile HTTP requests get a clean
refusal and the server keeps answering.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import trio
from eth_account import Account

from ledger.chain import ChainClient, RevertError, RpcChain
from ledger.deploy import Deployment, deploy, deposit, fund
from ledger.devchain import MAX_BATCH, MAX_BODY_BYTES, ChainProcess, main, start_devchain
from ledger.escrow import ChainEscrow
from ledger.ports import ChainError
from ledger.vouchers import Domain, sign_voucher
from tests.unit.test_chain_clients import PROBE, PROBE_ABI

MASK = 10**18
UNLOCK_DELAY = 600


@pytest.fixture(scope="module")
def devchain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainProcess]:
    process = start_devchain(tmp_path_factory.mktemp("devchain"))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def deployed(devchain: ChainProcess) -> Deployment:
    chain = devchain.client()
    treasury = chain.dev_keys()[0]
    return deploy(
        chain, treasury, Account.from_key(treasury).address, 10**6 * MASK, UNLOCK_DELAY, 0
    )


def rpc(url: str, body: object) -> requests.Response:
    return requests.post(url, data=json.dumps(body), timeout=10)


def test_two_clients_see_each_others_transactions(devchain: ChainProcess, deployed) -> None:
    a, b = devchain.client(), devchain.client()
    assert a.chain_id == b.chain_id == 31337
    assert a.dev_keys() == b.dev_keys() and len(a.dev_keys()) == 10
    treasury = a.dev_keys()[0]
    newcomer = Account.create()
    fund(a, treasury, newcomer.address, 10**17, 3 * MASK, token=deployed.token)
    assert b.eth_balance(newcomer.address) == 10**17
    mined = deposit(b, bytes(newcomer.key), deployed.escrow, deployed.token, 2 * MASK)
    seen = a.receipt(mined.tx_hash)
    assert seen is not None and seen.status and seen.block_number == mined.block_number
    assert a.block_number() == b.block_number()


def test_reverts_arrive_decoded_over_json_rpc(devchain: ChainProcess) -> None:
    chain = devchain.client()
    key = chain.dev_keys()[1]
    probe = chain.contract(chain.deploy(PROBE, [10], key), PROBE_ABI)
    with pytest.raises(RevertError) as caught:
        chain.call(probe, "store", 11)
    assert (caught.value.error_name, caught.value.error_args) == (
        "TooBig",
        {"have": 11, "limit": 10},
    )
    with pytest.raises(RevertError) as caught:
        chain.call(probe, "boom")
    assert caught.value.error_args == {"reason": "boom"}
    with pytest.raises(RevertError) as caught:
        sender = Account.from_key(key).address
        chain.transaction(probe, "store", 12, sender=sender, nonce=chain.pending_nonce(sender))
    assert caught.value.error_name == "TooBig"


async def test_the_escrow_port_over_the_devchain(devchain: ChainProcess, deployed) -> None:
    chain = devchain.client()
    treasury = chain.dev_keys()[0]
    requester, provider = Account.create(), Account.create()
    for who in (requester, provider):
        fund(chain, treasury, who.address, 10**17, 5 * MASK, token=deployed.token)
    limiter = trio.CapacityLimiter(2)
    wallet = ChainEscrow(chain, deployed.token, deployed.escrow, bytes(requester.key), limiter)
    await wallet.deposit_with_permit(4 * MASK)
    escrow = ChainEscrow(chain, deployed.token, deployed.escrow, bytes(provider.key), limiter)
    voucher = sign_voucher(
        Domain(chain.chain_id, deployed.escrow), bytes(requester.key), provider.address, MASK
    )
    tx_hash = await escrow.send_settle([voucher], await escrow.estimate_settle([voucher]))
    with trio.fail_after(10):
        got = await escrow.receipt(tx_hash)
    assert got is not None and [s.paid for s in got.settled] == [MASK]

    await wallet.request_unlock(MASK)
    with pytest.raises(RevertError) as caught:
        await wallet.reclaim()
    assert caught.value.error_name == "UnlockNotDue"
    chain.advance_time(UNLOCK_DELAY)  # anvil's evm_increaseTime, served by the devchain
    await wallet.reclaim()
    assert await wallet.deposits(requester.address) == 2 * MASK


def test_a_client_for_another_chain_id_is_refused(devchain: ChainProcess) -> None:
    with pytest.raises(ChainError) as caught:
        ChainClient.rpc(devchain.url, 1)
    assert not caught.value.transient
    assert "serves chain 31337, not the configured 1" in str(caught.value)
    assert isinstance(ChainClient.rpc(devchain.url, 31337), RpcChain)


def test_batches_are_answered_in_order(devchain: ChainProcess) -> None:
    answer = rpc(
        devchain.url,
        [
            {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
            {"jsonrpc": "2.0", "method": "eth_blockNumber"},  # a notification: no answer
            {"jsonrpc": "2.0", "id": "two", "method": "admin_peers"},
            {"jsonrpc": "2.0", "id": 3, "method": "net_version"},
        ],
    ).json()
    assert [a["id"] for a in answer] == [1, "two", 3]
    assert answer[0]["result"] == hex(31337)
    assert answer[1]["error"]["code"] == -32601


def raw_http(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(4096)


def test_hostile_requests_are_refused_and_the_server_keeps_serving(
    devchain: ChainProcess,
) -> None:
    url = devchain.url
    cases = [
        (b"{", -32700),
        (b"[" * 100_000, -32700),  # would overflow the C stack if parsed
        (b"[]", -32600),
        (json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}] * (MAX_BATCH + 1)).encode(), -32600),
        (b'"text"', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": {"a": 1}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "' + b"x" * 100 + b'"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": ["0xzz", "latest"]}', -32000),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction", "params": ["0x1234"]}', -32000),
    ]  # fmt: skip
    for body, code in cases:
        answer = requests.post(url, data=body, timeout=10)
        assert answer.status_code == 200, body[:40]
        assert answer.json()["error"]["code"] == code, body[:40]
    assert requests.get(url, timeout=10).status_code == 405
    assert rpc(url, {"jsonrpc": "2.0", "method": "eth_chainId"}).status_code == 204
    huge = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    assert raw_http(url, huge.encode()).startswith(b"HTTP/1.1 413")
    chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert raw_http(url, chunked).startswith(b"HTTP/1.1 411")
    assert devchain.client().block_number() >= 0  # still serving


def test_sigterm_stops_it_cleanly(tmp_path: Path) -> None:
    process = start_devchain(tmp_path)
    try:
        assert (tmp_path / "devchain.ready").exists()
        assert process.client().chain_id == 31337
    finally:
        process.stop()
    assert process.process.returncode == 0
    assert not (tmp_path / "devchain.ready").exists()
    assert "devchain: stopped" in process.log_tail()


def test_a_taken_port_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["--port", str(taken.getsockname()[1])]) == 1
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1" in err and "hint:" in err
