"""Configuration: one validated, frozen tree, loaded once at start.

Precedence: built-in defaults < ``--config`` file < ``MASK_*`` environment <
command-line flags. Every key has a default here and a comment in
configs/default.toml (a test keeps the two equal).

Environment variables are named ``MASK_<SECTION>_<KEY>`` in upper case, for
example ``MASK_P2P_PING_TIMEOUT_S=3``; lists are comma-separated. Because the
schema is known, the name is matched against it, so underscores in keys are not
ambiguous. ``MASK_DATA_DIR`` is accepted as a short form of
``MASK_NODE_DATA_DIR``.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from p2p.settings import MeshSettings
from protocol.errors import ConfigError

Role = Literal["provider", "requester", "both"]
LogLevel = Literal["debug", "info", "warning", "error"]
_DIGITS = re.compile(r"^[0-9]{1,78}$")
_PROVER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class NodeConfig(_Section):
    data_dir: str = ""
    role: Role = "both"
    log_level: LogLevel = "info"
    log_json: bool = False


class IdentityConfig(_Section):
    passphrase_file: str = ""
    allow_empty_passphrase: bool = False
    scrypt_n: int = 262144


# the [p2p] section is the mesh's own settings type (one definition)
P2PConfig = MeshSettings


class PricesConfig(_Section):
    cpu_core_hour: str = "1000000000000000"
    memory_gb_hour: str = "100000000000000"
    gpu_hour: str = "50000000000000000"
    storage_gb_hour: str = "10000000000000"


class OffersConfig(_Section):
    ttl_s: float = 60.0
    republish_interval_s: float = 20.0
    capacity_check_interval_s: float = 10.0
    cpu: int = 0
    memory_mb: int = 0
    disk_mb: int = 0
    storage_mb: int = 0
    gpus: bool = True
    executors: tuple[str, ...] = ("wasm",)
    prices: PricesConfig = PricesConfig()


class RpcConfig(_Section):
    socket: str = ""
    max_line_bytes: int = 1048576
    max_connections: int = 64
    idle_timeout_s: float = 60.0


class StorageConfig(_Section):
    quota_mb: int = 10240
    backend: str = "local"
    ipfs_api: str = "http://127.0.0.1:5001"
    ipfs_timeout_s: float = 60.0
    fetch_timeout_s: float = 10.0
    fetch_max_peers: int = 8
    fetch_requests_per_peer: int = 4
    fetch_inflight_mb: int = 64
    serve_streams_per_peer: int = 4
    verify_on_serve: bool = True


class JobsConfig(_Section):
    result_retention_h: float = 72.0
    bundle_retention_h: float = 1.0
    bundle_cache_mb: int = 1024
    max_bundle_mb: int = 1024
    max_quotes_per_requester: int = 64
    bid_rate_per_s: float = 50.0
    bid_burst: int = 200


class WorkerConfig(_Section):
    zk_prover: str = "auto"


ChainBackend = Literal["embedded", "rpc", "off"]
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
#: EIP-7825: the most gas one transaction may use
TX_GAS_CAP = 16_777_216


class ChainConfig(_Section):
    backend: ChainBackend = "embedded"
    rpc_url: str = ""
    chain_id: int = 31337
    token: str = ""
    escrow: str = ""
    confirmations: int = 1
    timeout_s: float = 10.0
    poll_interval_s: float = 2.0


class LedgerConfig(_Section):
    batch_max_age_s: float = 30.0
    batch_max_vouchers: int = 50
    batch_gas_limit: int = 15_000_000
    voucher_timeout_s: float = 60.0
    escrow_cache_s: float = 10.0
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0
    embedded_deposit: str = "1000000000000000000000"
    zk_claims: bool = True


class GatewayConfig(_Section):
    enabled: bool = False
    requests: str = ""
    poll_interval_s: float = 5.0
    max_open: int = 4
    min_payment: str = "1"
    circuits_dir: str = ""
    fulfil_margin_s: int = 60
    min_time_left_s: int = 180
    from_block: int = 0


class Config(_Section):
    node: NodeConfig = NodeConfig()
    identity: IdentityConfig = IdentityConfig()
    p2p: P2PConfig = P2PConfig()
    offers: OffersConfig = OffersConfig()
    rpc: RpcConfig = RpcConfig()
    storage: StorageConfig = StorageConfig()
    jobs: JobsConfig = JobsConfig()
    worker: WorkerConfig = WorkerConfig()
    chain: ChainConfig = ChainConfig()
    ledger: LedgerConfig = LedgerConfig()
    gateway: GatewayConfig = GatewayConfig()

    # -- derived paths --------------------------------------------------
    @property
    def data_path(self) -> Path:
        if self.node.data_dir:
            return Path(self.node.data_dir).expanduser()
        import platformdirs

        return platformdirs.user_data_path("maskd")

    @property
    def socket_path(self) -> Path:
        return (
            Path(self.rpc.socket).expanduser() if self.rpc.socket else self.data_path / "maskd.sock"
        )


# ---------------------------------------------------------------------------
# loading


def load_config(
    path: str | os.PathLike | None = None,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Defaults < file < environment < ``overrides`` (flags, as nested dicts)."""
    merged: dict[str, Any] = {}
    if path is not None:
        _deep_merge(merged, _read_toml(Path(path)))
    _deep_merge(merged, _from_env(os.environ if env is None else env))
    if overrides:
        _deep_merge(merged, overrides)
    try:
        cfg = msgspec.convert(merged, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise _config_error_from_msgspec(str(exc), path) from None
    _check_meaning(cfg)
    return cfg


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist", hint="check the --config path"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"config file {path} cannot be read: {exc.strerror}",
            hint="check the file's permissions",
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML: {exc}",
            hint="see configs/default.toml for the syntax of every key",
        ) from None


def _deep_merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _env_keys() -> dict[str, tuple[tuple[str, ...], type]]:
    """Every settable key as its environment-variable name."""
    out: dict[str, tuple[tuple[str, ...], type]] = {}

    def walk(struct_type: type, prefix: tuple[str, ...]) -> None:
        for field in msgspec.structs.fields(struct_type):
            path = (*prefix, field.name)
            if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
                walk(field.type, path)
            else:
                out["MASK_" + "_".join(p.upper() for p in path)] = (path, field.type)

    walk(Config, ())
    return out


def _from_env(env: dict[str, str]) -> dict[str, Any]:
    keys = _env_keys()
    aliases = {"MASK_DATA_DIR": "MASK_NODE_DATA_DIR"}
    result: dict[str, Any] = {}
    for name, raw in env.items():
        name = aliases.get(name, name)
        if name not in keys:
            continue
        path, typ = keys[name]
        value = _parse_env_value(name, raw, typ)
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return result


def _parse_env_value(name: str, raw: str, typ: Any) -> Any:
    origin = getattr(typ, "__origin__", None)
    if origin is tuple:
        return [item.strip() for item in raw.split(",") if item.strip()]
    if typ is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}={raw!r}: expected a boolean", hint="use true or false")
    if typ is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(
                f"{name}={raw!r}: expected an integer", hint="for example 42"
            ) from None
    if typ is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(
                f"{name}={raw!r}: expected a number", hint="for example 1.5"
            ) from None
    return raw


_MSGSPEC_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def _config_error_from_msgspec(text: str, path: Any) -> ConfigError:
    m = _MSGSPEC_PATH.search(text)
    where = m.group("path") if m else ""
    reason = _MSGSPEC_PATH.sub("", text)
    unknown = re.match(r"Object contains unknown field `(?P<f>[^`]+)`", reason)
    if unknown:
        key = f"{where}.{unknown['f']}" if where else unknown["f"]
        key = re.sub(r"\[\d+\]", "", key)
        return ConfigError(
            f"unknown config key `{key}`" + (f" in {path}" if path else ""),
            hint="check the spelling; every key is listed with a comment in configs/default.toml",
        )
    key = re.sub(r"\[(\d+)\]", r"[\1]", where)
    return ConfigError(
        f"config key `{key}`: {reason}" + (f" (in {path} or the environment)" if path else ""),
        hint="see configs/default.toml for the type and meaning of every key",
    )


def _check_chain(cfg: Config, bad: Any) -> None:
    chain = cfg.chain
    for key in ("token", "escrow"):
        value = getattr(chain, key)
        if value and not _ADDRESS.match(value):
            raise bad(
                f"chain.{key}", f"{value[:64]!r} is not a 0x address", "40 hex digits after 0x"
            )
    if chain.backend == "rpc":
        if not chain.rpc_url.startswith(("http://", "https://")):
            raise bad(
                "chain.rpc_url",
                f"{chain.rpc_url[:64]!r} is not an http(s) URL",
                'the node\'s JSON-RPC URL, e.g. "http://127.0.0.1:8545" (`mask devnet up '
                "--chain anvil` writes it for you)",
            )
        if not (chain.token and chain.escrow):
            raise bad(
                "chain.escrow",
                "the rpc backend needs the deployed contracts' addresses",
                "set chain.token and chain.escrow (docs/ledger.md says how to deploy them)",
            )
    if not _DIGITS.match(cfg.ledger.embedded_deposit):
        raise bad(
            "ledger.embedded_deposit",
            f"{cfg.ledger.embedded_deposit[:64]!r} is not a whole number of base units",
            'a decimal string, e.g. "1000000000000000000000" (1000 MASK)',
        )


def _check_gateway(cfg: Config, bad: Any) -> None:
    gw = cfg.gateway
    if gw.requests and not _ADDRESS.match(gw.requests):
        raise bad(
            "gateway.requests",
            f"{gw.requests[:64]!r} is not a 0x address",
            "the ComputeRequests contract's address: 40 hex digits after 0x",
        )
    if not gw.poll_interval_s > 0:
        raise bad(
            "gateway.poll_interval_s",
            f"must be greater than 0, got {gw.poll_interval_s}",
            "e.g. 5.0 (seconds between looks at the chain)",
        )
    for key, value, lo, hi in (
        ("gateway.max_open", gw.max_open, 1, 1000),
        ("gateway.fulfil_margin_s", gw.fulfil_margin_s, 1, 86400),
        ("gateway.min_time_left_s", gw.min_time_left_s, 2, 30 * 86400),
        ("gateway.from_block", gw.from_block, 0, (1 << 63) - 1),
    ):
        if not lo <= value <= hi:
            raise bad(
                key, f"must be between {lo} and {hi}, got {value}", "see configs/default.toml"
            )
    if gw.min_time_left_s <= gw.fulfil_margin_s:
        raise bad(
            "gateway.min_time_left_s",
            f"{gw.min_time_left_s} s leaves no time for the job after gateway.fulfil_margin_s "
            f"({gw.fulfil_margin_s} s)",
            "make min_time_left_s larger than fulfil_margin_s by the time a proof takes",
        )
    if not _DIGITS.match(gw.min_payment):
        raise bad(
            "gateway.min_payment",
            f"{gw.min_payment[:64]!r} is not a whole number of base units",
            'a decimal string, e.g. "1000000000000000000" (1 MASK)',
        )
    if not gw.enabled:
        return
    if cfg.chain.backend == "off":
        raise bad(
            "gateway.enabled",
            "the gateway reads requests from the chain and sends fulfill, but chain.backend is off",
            'set [chain] backend = "embedded" or "rpc", or gateway.enabled = false',
        )
    if cfg.chain.backend == "rpc" and not gw.requests:
        raise bad(
            "gateway.requests",
            "the rpc backend needs the ComputeRequests address",
            "set gateway.requests (ledger.deploy returns it as `requests`; `mask devnet up` "
            "deploys it beside the escrow)",
        )


def _check_meaning(cfg: Config) -> None:
    from multiaddr import Multiaddr

    def bad(key: str, reason: str, hint: str) -> ConfigError:
        return ConfigError(f"config key `{key}`: {reason}", hint=hint)

    for i, addr in enumerate(cfg.p2p.listen):
        _check_multiaddr(f"p2p.listen[{i}]", addr, Multiaddr, need_peer=False, bad=bad)
    for i, addr in enumerate(cfg.p2p.bootstrap):
        _check_multiaddr(f"p2p.bootstrap[{i}]", addr, Multiaddr, need_peer=True, bad=bad)
    if not cfg.p2p.listen:
        raise bad(
            "p2p.listen", "at least one listen address is needed", 'e.g. ["/ip4/0.0.0.0/tcp/4001"]'
        )
    positive = {
        "p2p.redial_interval_s": cfg.p2p.redial_interval_s,
        "p2p.discovery_interval_s": cfg.p2p.discovery_interval_s,
        "p2p.ping_interval_s": cfg.p2p.ping_interval_s,
        "p2p.ping_timeout_s": cfg.p2p.ping_timeout_s,
        "p2p.heartbeat_interval_s": cfg.p2p.heartbeat_interval_s,
        "p2p.publish_rate_per_s": cfg.p2p.publish_rate_per_s,
        "p2p.ban_threshold": cfg.p2p.ban_threshold,
        "p2p.score_half_life_s": cfg.p2p.score_half_life_s,
        "offers.ttl_s": cfg.offers.ttl_s,
        "offers.republish_interval_s": cfg.offers.republish_interval_s,
        "offers.capacity_check_interval_s": cfg.offers.capacity_check_interval_s,
        "storage.ipfs_timeout_s": cfg.storage.ipfs_timeout_s,
        "storage.fetch_timeout_s": cfg.storage.fetch_timeout_s,
        "rpc.idle_timeout_s": cfg.rpc.idle_timeout_s,
        "jobs.bid_rate_per_s": cfg.jobs.bid_rate_per_s,
        "chain.timeout_s": cfg.chain.timeout_s,
        "chain.poll_interval_s": cfg.chain.poll_interval_s,
        "ledger.batch_max_age_s": cfg.ledger.batch_max_age_s,
        "ledger.voucher_timeout_s": cfg.ledger.voucher_timeout_s,
        "ledger.escrow_cache_s": cfg.ledger.escrow_cache_s,
        "ledger.retry_base_s": cfg.ledger.retry_base_s,
        "ledger.retry_max_s": cfg.ledger.retry_max_s,
    }
    for key, value in positive.items():
        if not value > 0:
            raise bad(key, f"must be greater than 0, got {value}", "use a positive number")
    ints = {
        "p2p.max_peers": (cfg.p2p.max_peers, 1, 10000),
        "p2p.ping_failures": (cfg.p2p.ping_failures, 1, 100),
        "p2p.degree": (cfg.p2p.degree, 1, 64),
        "p2p.degree_low": (cfg.p2p.degree_low, 1, 64),
        "p2p.degree_high": (cfg.p2p.degree_high, 1, 128),
        "p2p.max_message_bytes": (cfg.p2p.max_message_bytes, 1024, 1 << 20),
        "p2p.outbound_queue": (cfg.p2p.outbound_queue, 32, 1 << 16),
        "rpc.max_line_bytes": (cfg.rpc.max_line_bytes, 1024, 64 << 20),
        "rpc.max_connections": (cfg.rpc.max_connections, 1, 4096),
        "identity.scrypt_n": (cfg.identity.scrypt_n, 1 << 14, 1 << 22),
        "offers.cpu": (cfg.offers.cpu, 0, 1 << 16),
        "offers.memory_mb": (cfg.offers.memory_mb, 0, 1 << 40),
        "offers.disk_mb": (cfg.offers.disk_mb, 0, 1 << 40),
        "offers.storage_mb": (cfg.offers.storage_mb, 0, 1 << 40),
        "storage.quota_mb": (cfg.storage.quota_mb, 1, 1 << 40),
        "storage.fetch_max_peers": (cfg.storage.fetch_max_peers, 1, 64),
        "storage.fetch_requests_per_peer": (cfg.storage.fetch_requests_per_peer, 1, 64),
        "storage.fetch_inflight_mb": (cfg.storage.fetch_inflight_mb, 4, 4096),
        "storage.serve_streams_per_peer": (cfg.storage.serve_streams_per_peer, 1, 64),
        "jobs.max_quotes_per_requester": (cfg.jobs.max_quotes_per_requester, 1, 4096),
        "jobs.bid_burst": (cfg.jobs.bid_burst, 1, 1 << 20),
        "jobs.max_bundle_mb": (cfg.jobs.max_bundle_mb, 1, 4096),
        "chain.chain_id": (cfg.chain.chain_id, 1, (1 << 53) - 1),
        "chain.confirmations": (cfg.chain.confirmations, 1, 1000),
        "ledger.batch_max_vouchers": (cfg.ledger.batch_max_vouchers, 1, 10000),
        # sends add a 10% margin to the estimate, which must stay under the cap
        "ledger.batch_gas_limit": (cfg.ledger.batch_gas_limit, 100_000, TX_GAS_CAP * 10 // 11),
    }
    for key, (value, lo, hi) in ints.items():
        if not lo <= value <= hi:
            raise bad(
                key, f"must be between {lo} and {hi}, got {value}", "see configs/default.toml"
            )
    for key, value in (
        ("jobs.result_retention_h", cfg.jobs.result_retention_h),
        ("jobs.bundle_retention_h", cfg.jobs.bundle_retention_h),
        ("jobs.bundle_cache_mb", cfg.jobs.bundle_cache_mb),
    ):
        if not 0 <= value <= 1 << 40:
            raise bad(key, f"must be 0 or more, got {value}", "see configs/default.toml")
    if cfg.storage.backend not in ("local", "ipfs"):
        raise bad(
            "storage.backend",
            f"unknown backend {cfg.storage.backend!r}",
            '"local" (the built-in block store) or "ipfs" (a Kubo daemon at storage.ipfs_api)',
        )
    if not cfg.storage.ipfs_api.startswith(("http://", "https://")):
        raise bad(
            "storage.ipfs_api",
            f"{cfg.storage.ipfs_api!r} is not an http(s) URL",
            'the Kubo RPC API address, e.g. "http://127.0.0.1:5001"',
        )
    _check_chain(cfg, bad)
    _check_gateway(cfg, bad)
    if cfg.identity.scrypt_n & (cfg.identity.scrypt_n - 1):
        raise bad(
            "identity.scrypt_n",
            "must be a power of two",
            "e.g. 262144 (real use) or 16384 (devnet)",
        )
    if not cfg.p2p.degree_low <= cfg.p2p.degree <= cfg.p2p.degree_high:
        raise bad("p2p.degree", "need degree_low <= degree <= degree_high", "e.g. 4 <= 6 <= 12")
    if cfg.offers.republish_interval_s >= cfg.offers.ttl_s:
        raise bad(
            "offers.republish_interval_s",
            f"must be shorter than offers.ttl_s ({cfg.offers.ttl_s}), or offers lapse between republishes",
            "use about a third of the TTL",
        )
    from protocol.messages import KNOWN_EXECUTORS

    for i, name in enumerate(cfg.offers.executors):
        if name not in KNOWN_EXECUTORS:
            raise bad(
                f"offers.executors[{i}]",
                f"unknown executor {name!r}",
                f"one of {sorted(KNOWN_EXECUTORS)}",
            )
    if not _PROVER_NAME.match(cfg.worker.zk_prover):
        raise bad(
            "worker.zk_prover",
            f"{cfg.worker.zk_prover[:40]!r} is not a prover name",
            '"auto" (the fastest prover that works here) or one prover\'s name, e.g. "snarkjs"',
        )
    for field in msgspec.structs.fields(PricesConfig):
        value = getattr(cfg.offers.prices, field.name)
        if not _DIGITS.match(value):
            raise bad(
                f"offers.prices.{field.name}",
                f"{value!r} is not a whole number of token base units",
                'write it as a decimal string, e.g. "1000000000000000"',
            )


def _check_multiaddr(key, addr, Multiaddr, *, need_peer, bad):
    try:
        ma = Multiaddr(addr)
    except Exception as exc:
        raise bad(
            key, f"{addr!r} is not a multiaddr ({exc})", "e.g. /ip4/127.0.0.1/tcp/4001"
        ) from None
    protos = [p.name for p in ma.protocols()]
    if "tcp" not in protos:
        raise bad(
            key, f"{addr!r} has no /tcp/ part", "maskd listens and dials over TCP: /ip4/…/tcp/PORT"
        )
    port = int(ma.value_for_protocol("tcp"))
    if not 0 <= port <= 65535:
        raise bad(key, f"port {port} is out of range", "use 0-65535 (0 picks a free port)")
    if need_peer and "p2p" not in protos:
        raise bad(
            key, f"{addr!r} has no /p2p/<peer id>", "append the peer id: …/tcp/4001/p2p/12D3Koo…"
        )


def dump_defaults() -> dict[str, Any]:
    return msgspec.to_builtins(Config())
