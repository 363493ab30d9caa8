"""The devnet's chain record: what `mask devnet up` writes and `down` trusts."""

import json
import subprocess
import sys

import pytest

from maskd.config import load_config
from maskd.devnet import DevnetError, devnet_config_path, read_chain, write_state
from maskd.devnet_chain import DevChain, check_chain_kind, gateway_env, write_node_config

TOKEN = "0xF2E246BB76DF876Cef8b38ae84130F4F55De395b"
ESCROW = "0x2946259E0334f33A064106302415aD3391BeD384"
REQUESTS = "0x7B4f352Cd40114f12e82fC675b5BA8C7582FC513"


def chain(pid: int = 4242, **kw) -> DevChain:
    fields = dict(
        kind="embedded",
        pid=pid,
        url="http://127.0.0.1:8545",
        chain_id=31337,
        token=TOKEN,
        escrow=ESCROW,
        requests=REQUESTS,
        treasury="0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf",
        log="/tmp/x/devchain.log",
    )
    return DevChain(**(fields | kw))


def test_chain_kinds():
    assert check_chain_kind(None) == "off"
    assert check_chain_kind("anvil") == "anvil"
    with pytest.raises(DevnetError) as err:
        check_chain_kind("geth")
    assert "unknown devnet chain 'geth'" in err.value.message
    assert "embedded, anvil, off" in err.value.hint


def test_env_puts_a_node_on_the_chain():
    assert chain().env() == {
        "MASK_CHAIN_BACKEND": "rpc",
        "MASK_CHAIN_RPC_URL": "http://127.0.0.1:8545",
        "MASK_CHAIN_CHAIN_ID": "31337",
        "MASK_CHAIN_TOKEN": TOKEN,
        "MASK_CHAIN_ESCROW": ESCROW,
        "MASK_GATEWAY_REQUESTS": REQUESTS,  # providers check relayed jobs there
    }
    assert "MASK_GATEWAY_REQUESTS" not in chain(requests="").env()
    assert gateway_env(True) == {"MASK_GATEWAY_ENABLED": "true"}
    assert gateway_env(False) == {"MASK_GATEWAY_ENABLED": "false"}


def test_state_file_round_trip(tmp_path):
    write_state(tmp_path, [], chain())
    assert read_chain(tmp_path) == chain()
    assert json.loads((tmp_path / "devnet.json").read_text())["chain"]["requests"] == REQUESTS
    write_state(tmp_path, [])
    assert read_chain(tmp_path) is None


def test_a_state_file_from_before_compute_requests_still_reads(tmp_path):
    raw = chain().to_json()
    del raw["requests"]
    (tmp_path / "devnet.json").write_text(json.dumps({"nodes": [], "chain": raw}))
    assert read_chain(tmp_path) == chain(requests="")


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "geth"},
        {"pid": 1},
        {"pid": True},
        {"pid": "42"},
        {"url": "file:///etc/passwd"},
        {"escrow": "0x1234"},
        {"requests": "0x1234"},
        {"requests": 7},
        {"chain_id": -1},
    ],
)
def test_an_edited_state_file_is_checked(tmp_path, bad):
    raw = chain().to_json() | bad
    (tmp_path / "devnet.json").write_text(json.dumps({"nodes": [], "chain": raw}))
    with pytest.raises(DevnetError) as err:
        read_chain(tmp_path)
    assert "devnet.json is corrupt" in err.value.message


def test_a_recycled_pid_is_never_signalled():
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        recorded = chain(pid=other.pid)  # as `mask devnet down` reads it back
        assert not recorded.alive()
        assert recorded.stop(timeout=1) is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_node_config_carries_the_chain(tmp_path):
    path = write_node_config(tmp_path / "node.toml", devnet_config_path(), chain())
    assert path.stat().st_mode & 0o777 == 0o600
    cfg = load_config(path, env={})
    assert (cfg.chain.backend, cfg.chain.rpc_url, cfg.chain.chain_id) == (
        "rpc",
        "http://127.0.0.1:8545",
        31337,
    )
    assert (cfg.chain.token, cfg.chain.escrow) == (TOKEN, ESCROW)
    assert cfg.offers.ttl_s == 6.0  # the devnet config's own settings kept
    assert path.read_text().startswith("# written by `mask devnet up`")
    # every node knows ComputeRequests; only the gateway answers its requests
    assert (cfg.gateway.enabled, cfg.gateway.requests) == (False, REQUESTS)
    assert cfg.gateway.poll_interval_s == 0.5


def test_the_gateway_node_config_enables_the_gateway(tmp_path):
    path = write_node_config(tmp_path / "node.toml", devnet_config_path(), chain(), gateway=True)
    cfg = load_config(path, env={})
    assert (cfg.gateway.enabled, cfg.gateway.requests) == (True, REQUESTS)
    assert cfg.gateway.poll_interval_s == 0.5  # the devnet's short look at the chain


def test_a_base_without_chain_or_gateway_gets_both_sections(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text('# a comment kept\n[node]\nrole = "provider"\n')
    path = write_node_config(tmp_path / "node.toml", base, chain(), gateway=True)
    assert "# a comment kept" in path.read_text()
    cfg = load_config(path, env={})
    assert (cfg.chain.backend, cfg.gateway.enabled, cfg.gateway.requests) == (
        "rpc",
        True,
        REQUESTS,
    )
    old = write_node_config(tmp_path / "old.toml", base, chain(requests=""))
    assert "[gateway]" not in old.read_text()


def test_node_config_merges_a_chain_section_of_the_base(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text('[chain]\nbackend = "off"\nconfirmations = 3\n\n[node]\nrole = "provider"\n')
    cfg = load_config(write_node_config(tmp_path / "node.toml", base, chain()), env={})
    assert (cfg.chain.backend, cfg.chain.confirmations) == ("rpc", 3)
    assert cfg.node.role == "provider"
