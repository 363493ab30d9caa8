import os
import tomllib
from pathlib import Path

import msgspec
import pytest

from maskd.config import Config, dump_defaults, load_config
from protocol.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_load_and_are_frozen():
    cfg = load_config(env={})
    assert cfg.p2p.listen == ("/ip4/0.0.0.0/tcp/4001",)
    with pytest.raises(AttributeError):
        cfg.p2p.degree = 3  # type: ignore[misc]


def test_default_toml_documents_exactly_the_built_in_defaults():
    text = (ROOT / "configs" / "default.toml").read_text()
    assert tomllib.loads(text) == _lists(dump_defaults())
    # every key has a comment above it
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"key without a comment: {line}"


def _lists(d):
    return {
        k: _lists(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v
        for k, v in d.items()
    }


@pytest.mark.parametrize(
    "name", ["default.toml", "provider.toml", "requester.toml", "devnet/node.toml"]
)
def test_shipped_configs_are_valid(name):
    load_config(ROOT / "configs" / name, env={})


def test_precedence_defaults_file_env_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[p2p]\nping_timeout_s = 2.0\ndegree = 5\n[node]\nrole = "provider"\n')
    cfg = load_config(
        f,
        env={"MASK_P2P_PING_TIMEOUT_S": "3", "MASK_NODE_ROLE": "requester"},
        overrides={"node": {"role": "both"}},
    )
    assert cfg.p2p.degree == 5  # file over default
    assert cfg.p2p.ping_timeout_s == 3.0  # env over file
    assert cfg.node.role == "both"  # flag over env


def test_env_lists_booleans_and_data_dir_alias():
    cfg = load_config(
        env={
            "MASK_P2P_LISTEN": "/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2",
            "MASK_P2P_MDNS": "yes",
            "MASK_DATA_DIR": "/tmp/x",
        }
    )
    assert cfg.p2p.listen == ("/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/2")
    assert cfg.p2p.mdns is True
    assert cfg.data_path == Path("/tmp/x") and cfg.socket_path == Path("/tmp/x/maskd.sock")


@pytest.mark.parametrize(
    "toml, key",
    [
        ("[p2p]\nfoo = 1\n", "p2p.foo"),
        ("[nope]\n", "nope"),
        ("[p2p]\nping_timeout_s = 'soon'\n", "p2p.ping_timeout_s"),
        ("[p2p]\nlisten = ['/ip4/127.0.0.1/tcp/70000']\n", "p2p.listen[0]"),
        ("[p2p]\nlisten = ['not a multiaddr']\n", "p2p.listen[0]"),
        ("[p2p]\nbootstrap = ['/ip4/127.0.0.1/tcp/4001']\n", "p2p.bootstrap[0]"),
        ("[node]\nrole = 'god'\n", "node.role"),
        ("[offers]\nttl_s = 5.0\nrepublish_interval_s = 10.0\n", "offers.republish_interval_s"),
        ("[offers.prices]\ncpu_core_hour = '1.5'\n", "offers.prices.cpu_core_hour"),
        ("[offers]\nexecutors = ['docker']\n", "offers.executors[0]"),
        ("[identity]\nscrypt_n = 1000\n", "identity.scrypt_n"),
        ("[p2p]\nping_interval_s = 0\n", "p2p.ping_interval_s"),
    ],
)
def test_bad_values_name_the_key_and_give_a_hint(tmp_path, toml, key):
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_config(f, env={})
    assert f"`{key}`" in exc.value.message or f"`{key.split('[')[0]}`" in exc.value.message
    assert exc.value.hint


def test_unreadable_missing_and_invalid_toml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[p2p\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.toml"
        locked.write_text("")
        locked.chmod(0)
        with pytest.raises(ConfigError, match="cannot be read"):
            load_config(locked, env={})


def test_bad_env_values_are_errors():
    with pytest.raises(ConfigError, match="MASK_P2P_DEGREE"):
        load_config(env={"MASK_P2P_DEGREE": "six"})
    with pytest.raises(ConfigError, match="MASK_P2P_MDNS"):
        load_config(env={"MASK_P2P_MDNS": "maybe"})


def test_config_round_trips_through_msgspec():
    cfg = load_config(env={})
    assert msgspec.convert(msgspec.to_builtins(cfg), Config) == cfg


@pytest.mark.parametrize(
    ("chain", "key"),
    [
        (
            {"backend": "rpc", "token": "0x" + "11" * 20, "escrow": "0x" + "22" * 20},
            "chain.rpc_url",
        ),
        ({"backend": "rpc", "rpc_url": "http://127.0.0.1:8545"}, "chain.escrow"),
        ({"backend": "rpc", "rpc_url": "ftp://x", "token": "0x" + "11" * 20}, "chain.rpc_url"),
        ({"escrow": "0x1234"}, "chain.escrow"),
        ({"token": "not an address"}, "chain.token"),
        ({"backend": "ganache"}, "chain.backend"),
        ({"chain_id": 0}, "chain.chain_id"),
        ({"confirmations": 0}, "chain.confirmations"),
    ],
)
def test_a_bad_chain_config_names_the_key_with_a_hint(chain, key):
    with pytest.raises(ConfigError) as exc:
        load_config(env={}, overrides={"chain": chain})
    assert key in exc.value.message and exc.value.hint


@pytest.mark.parametrize(
    "ledger",
    [{"batch_gas_limit": 16_777_216}, {"embedded_deposit": "1e21"}, {"voucher_timeout_s": 0}],
)
def test_bad_ledger_settings_are_refused(ledger):
    with pytest.raises(ConfigError):
        load_config(env={}, overrides={"ledger": ledger})


def test_the_chain_settings_come_from_the_environment_as_devnets_pass_them():
    cfg = load_config(
        env={
            "MASK_CHAIN_BACKEND": "rpc",
            "MASK_CHAIN_RPC_URL": "http://127.0.0.1:8545",
            "MASK_CHAIN_TOKEN": "0x" + "11" * 20,
            "MASK_CHAIN_ESCROW": "0x" + "22" * 20,
            "MASK_CHAIN_CHAIN_ID": "31337",
        }
    )
    assert (cfg.chain.backend, cfg.chain.chain_id, cfg.chain.escrow) == (
        "rpc",
        31337,
        "0x" + "22" * 20,
    )
