"""``mask`` against a real RpcServer (in a thread) serving fake handlers."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from click.testing import CliRunner

from maskd.cli import main, report_error
from maskd.rpc import RpcServer, maskd_version, serve_in_thread
from protocol.errors import ConfigError, MaskError, RpcError

PEER_A = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
PEER_B = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"
OFFER = {
    "offer_id": "of-7f3a9c21b4d8e6",
    "peer_id": PEER_B,
    "account": "0x1111111111111111111111111111111111111111",
    "cpu": 4,
    "memory_mb": 8192,
    "disk_mb": 102400,
    "gpus": [{"name": "A100", "memory_mb": 81920, "uuid": "GPU-1"}],
    "executors": ["wasm", "native"],
    "prices": {
        "cpu_core_hour": "2500000000000000",
        "memory_gb_hour": "1000000000000000",
        "gpu_hour": "900000000000000000",
        "storage_gb_hour": "1000",
    },
    "expires_at": time.time() + 3600,
    "future_field": "tolerated",
}
INFO = {
    "peer_id": PEER_A,
    "addrs": ["/ip4/127.0.0.1/tcp/4001", "/ip4/10.0.0.2/tcp/4001"],
    "account": "0xabcdefabcdefabcdefabcdefabcdefabcdefabcd",
    "version": "0.1.0",
    "role": "both",
    "peers": 1,
    "uptime_s": 3725.0,
    "drops": {"bad_signature": 3, "expired": 1},
    "offers": 1,
    "data_dir": "/var/lib/maskd",
    "nat_status": "public",
}
PEERS = [
    {
        "peer_id": PEER_B,
        "addrs": ["/ip4/10.0.0.3/tcp/4001"],
        "latency_ms": 12.34,
        "score": 0.5,
        "offer": OFFER,
    },
    {"peer_id": PEER_A[:-4] + "zzzz", "addrs": [], "latency_ms": None, "score": 0.0, "offer": None},
]


def handlers():
    async def info(params):
        return INFO

    async def peers(params):
        return PEERS

    async def offers(params):
        return [OFFER]

    return {"v1.node.info": info, "v1.peers.list": peers, "v1.offers.list": offers}


@pytest.fixture
def daemon(tmp_path):
    server = RpcServer(tmp_path / "maskd.sock", handlers(), version=maskd_version())
    with serve_in_thread(server) as path:
        yield os.fspath(path)


@pytest.fixture
def runner(monkeypatch, tmp_path):
    # Nothing from the developer's environment may leak into socket discovery.
    monkeypatch.delenv("MASK_SOCKET", raising=False)
    monkeypatch.setenv("MASK_DATA_DIR", os.fspath(tmp_path / "no-daemon-here"))
    return CliRunner()


def invoke(runner, *args):
    return runner.invoke(main, list(args), catch_exceptions=False)


def test_status_table(runner, daemon):
    result = invoke(runner, "--socket", daemon, "status")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in (PEER_A, "0xabcdef", "both", "1h 2m", "3 bad_signature", "/ip4/10.0.0.2"):
        assert expected in out
    assert "nat status" in out and "public" in out  # extra keys are shown, not dropped
    assert result.stderr == ""


def test_status_json_has_the_documented_keys(runner, daemon):
    result = invoke(runner, "--socket", daemon, "status", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    keys = "peer_id addrs account version role peers uptime_s drops offers data_dir"
    assert set(keys.split()) <= data.keys()
    assert data == INFO


def test_peers_table_and_json(runner, daemon):
    table = invoke(runner, "--socket", daemon, "peers")
    assert table.exit_code == 0
    for expected in (PEER_B, "/ip4/10.0.0.3/tcp/4001", "12.3 ms", "0.50", "4 cpu · 8 GiB · 1 gpu"):
        assert expected in table.stdout
    assert "2 peers" in table.stdout
    data = json.loads(invoke(runner, "--socket", daemon, "peers", "--json").stdout)
    assert [p["peer_id"] for p in data] == [PEER_B, PEERS[1]["peer_id"]]
    assert {"peer_id", "addrs", "latency_ms", "score", "offer"} <= data[0].keys()


def test_offers_table_and_json(runner, daemon):
    table = invoke(runner, "--socket", daemon, "offers")
    assert table.exit_code == 0
    out = table.stdout
    for expected in ("of-7f3…d8e6", "12D3KooW…ASuq", "8 GiB", "100 GiB", "A100", "wasm", "0.0025"):
        assert expected in out, expected
    # expires in under an hour (the fixture's expiry is set at import, so minutes may pass)
    assert re.search(r"\b[1-5]?\dm\b|\b1h\b", out)
    data = json.loads(invoke(runner, "--socket", daemon, "offers", "--json").stdout)
    keys = "offer_id peer_id account cpu memory_mb disk_mb gpus executors prices expires_at"
    assert set(keys.split()) <= data[0].keys()
    assert data[0]["prices"]["cpu_core_hour"] == "2500000000000000"


def test_socket_from_environment(runner, daemon, monkeypatch):
    monkeypatch.setenv("MASK_SOCKET", daemon)
    result = invoke(runner, "status", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["peer_id"] == PEER_A


def test_no_daemon_is_error_and_hint_without_traceback(runner, tmp_path):
    result = invoke(runner, "--socket", os.fspath(tmp_path / "none.sock"), "status")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: no maskd daemon at {tmp_path / 'none.sock'}"
    assert lines[1].startswith("hint: start one with `maskd --data-dir")
    assert "Traceback" not in result.stderr


def test_no_daemon_via_data_dir_default(runner, tmp_path):
    result = invoke(runner, "peers", "--json")
    assert result.exit_code == 1
    assert f"error: no maskd daemon at {tmp_path / 'no-daemon-here' / 'maskd.sock'}" in (
        result.stderr
    )


def test_debug_shows_the_traceback(runner, tmp_path):
    result = invoke(runner, "--socket", os.fspath(tmp_path / "none.sock"), "--debug", "offers")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "DaemonUnavailable" in result.stderr
    assert "error: no maskd daemon" in result.stderr


def test_daemon_error_reaches_the_user_with_its_hint(runner, tmp_path):
    async def broken(params):
        raise RpcError("node is starting", rpc_code=-32002, code="starting", hint="wait a moment")

    server = RpcServer(tmp_path / "s.sock", {"v1.node.info": broken})
    with serve_in_thread(server) as path:
        result = invoke(runner, "--socket", os.fspath(path), "status")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["error: node is starting", "hint: wait a moment"]


def test_version_mismatch_warns_on_stderr_only(runner, tmp_path):
    server = RpcServer(tmp_path / "s.sock", handlers(), version="99.0.0")
    with serve_in_thread(server) as path:
        result = invoke(runner, "--socket", os.fspath(path), "status", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == INFO
    assert "maskd 99.0.0" in result.stderr


def test_config_errors_exit_2_others_1():
    assert report_error(ConfigError("bad key", hint="fix it"), debug=False) == 2
    assert report_error(MaskError("nope"), debug=False) == 1


def test_top_is_registered():
    result = CliRunner().invoke(main, ["top", "--help"])
    assert result.exit_code == 0
    assert "q quits" in result.stdout
