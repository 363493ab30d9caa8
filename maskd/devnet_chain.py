"""The chain of a devnet: one EVM every node settles on, and its faucet.

A per-node embedded chain would leave each requester's deposit invisible to
the providers, so :func:`maskd.devnet.start_devnet` with a chain starts one
here (``ledger.devchain``, an embedded py-evm served over JSON-RPC, or
anvil), deploys the contracts from its first dev key (the treasury), and,
once the nodes are up, funds each node's account and has it deposit through
its own daemon (``v1.wallet.deposit``), so every node can buy at once.

Every node knows the ComputeRequests contract (``[gateway] requests``):
providers check a relayed job's request there before they prove it, and
node0 is the devnet's gateway (``[gateway] enabled``), answering DApps'
requests as ``mask demo`` shows.

Nothing here is trusted input except ``devnet.json``, which a person may edit:
:meth:`DevChain.from_json` checks it, and a recorded pid is signalled only if
its command line is still the chain's.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskd.devnet import DevnetError, DevNode, cmdline_has, pid_alive, wait_until
from protocol.errors import MaskError

CHAIN_KINDS = ("embedded", "anvil", "off")
#: all MASK there is on a devnet chain, minted to the treasury (dev key 0)
DEVNET_SUPPLY = 10**9 * 10**18
#: what each node's account gets: ETH for gas, MASK to deposit and keep
DEVNET_ETH = 10 * 10**18
DEVNET_MASK = 10_000 * 10**18
#: what each node deposits into the escrow, so it can buy at once
DEVNET_DEPOSIT = 1_000 * 10**18
#: the escrow's delays on a devnet (seconds), as the embedded backend's
DEVNET_UNLOCK_DELAY_S = 3600
DEVNET_UNSTAKE_DELAY_S = 7 * 86400
#: what the chain process's command line holds (never signal a recycled pid)
_CHAIN_MARKERS = {"embedded": b"ledger.devchain", "anvil": b"anvil"}


def check_chain_kind(chain: str | None) -> str:
    """``None`` means ``"off"``; anything but :data:`CHAIN_KINDS` is refused."""
    kind = "off" if chain is None else chain
    if kind not in CHAIN_KINDS:
        raise DevnetError(
            f"unknown devnet chain {chain!r}",
            hint="use one of: " + ", ".join(CHAIN_KINDS),
        )
    return kind


@dataclass
class DevChain:
    """The chain a devnet's nodes share and where its contracts are.

    ``process`` is set in the process that started it (stopped through it);
    one read back from ``devnet.json`` is stopped by ``pid``."""

    kind: str  # "embedded" (ledger.devchain) or "anvil"
    pid: int
    url: str
    chain_id: int
    token: str = ""
    escrow: str = ""
    treasury: str = ""
    log: str = ""
    process: Any = None  # ledger.devchain.ChainProcess
    requests: str = ""  # ComputeRequests; "" in a devnet.json written before it

    def env(self) -> dict[str, str]:
        """The ``MASK_CHAIN_*`` settings that put a node on this chain, and
        ``MASK_GATEWAY_REQUESTS`` (ComputeRequests) when it is known."""
        env = {
            "MASK_CHAIN_BACKEND": "rpc",
            "MASK_CHAIN_RPC_URL": self.url,
            "MASK_CHAIN_CHAIN_ID": str(self.chain_id),
            "MASK_CHAIN_TOKEN": self.token,
            "MASK_CHAIN_ESCROW": self.escrow,
        }
        if self.requests:
            env["MASK_GATEWAY_REQUESTS"] = self.requests
        return env

    def client(self, timeout_s: float = 10.0) -> Any:
        """A :class:`ledger.chain.RpcChain` on it."""
        from ledger.chain import ChainClient

        return ChainClient.rpc(self.url, self.chain_id, timeout_s=timeout_s)

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.process.poll() is None
        return pid_alive(self.pid) and cmdline_has(self.pid, _CHAIN_MARKERS[self.kind])

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM, SIGKILL after ``timeout``; True if it was running."""
        if self.process is not None:
            was = self.process.process.poll() is None
            self.process.stop(timeout)
            return was
        if not self.alive():
            return False
        try:
            os.kill(self.pid, signal.SIGTERM)
            wait_until(lambda: not pid_alive(self.pid), timeout, f"the {self.kind} chain to exit")
        except ProcessLookupError:
            pass
        except DevnetError:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_until(lambda: not pid_alive(self.pid), timeout, f"the {self.kind} chain to die")
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "pid": self.pid,
            "url": self.url,
            "chain_id": self.chain_id,
            "token": self.token,
            "escrow": self.escrow,
            "requests": self.requests,
            "treasury": self.treasury,
            "log": self.log,
        }

    @classmethod
    def from_json(cls, raw: Any) -> DevChain:
        """From ``devnet.json``: a person may edit it, so every field is checked."""
        from ledger.deploy import DeploymentConfig

        if not isinstance(raw, dict) or raw.get("kind") not in _CHAIN_MARKERS:
            raise ValueError("chain: not an object with kind embedded or anvil")
        pid = raw.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
            raise ValueError(f"chain: bad pid {pid!r}")
        keys = ("chain_id", "token", "escrow")
        deployment = DeploymentConfig.from_dict(
            {"rpc_url": raw.get("url")}
            | {k: raw.get(k) for k in keys}
            | {"requests": raw.get("requests") or None}  # absent or "": an older devnet.json
        )
        return cls(
            raw["kind"],
            pid,
            str(deployment.rpc_url),
            deployment.chain_id,
            deployment.token,
            deployment.escrow,
            str(raw.get("treasury", "")),
            str(raw.get("log", "")),
            requests=deployment.requests or "",
        )


@contextmanager
def chain_errors(what: str) -> Iterator[None]:
    """A :class:`ledger.ports.ChainError` as a DevnetError (message and hint)."""
    from ledger.ports import ChainError

    try:
        yield
    except ChainError as e:
        raise DevnetError(f"{what}: {e}", hint=e.hint or None) from e


def start_chain(
    kind: str, root: Path, progress: Callable[[str], None], timeout: float = 60.0
) -> DevChain:
    """Start the chain (``root/devchain.log`` or ``root/anvil.log``) and deploy
    the contracts from its first dev key, which is also the treasury."""
    from eth_account import Account

    from ledger.anvil import anvil_binary, install_anvil, start_anvil
    from ledger.deploy import deploy
    from ledger.devchain import start_devchain

    with chain_errors(f"starting the {kind} chain failed"):
        if kind == "anvil":
            if not anvil_binary().is_file():
                progress("installing anvil (npm, once) ...")
            install_anvil()
            process = start_anvil(root, keep_state=False, timeout_s=timeout)
        else:
            process = start_devchain(root, timeout_s=timeout)
    devchain = DevChain(
        kind, process.pid, process.url, process.chain_id, log=str(process.log_path), process=process
    )
    try:
        progress(f"{kind} chain up: {process.url} (chain id {process.chain_id}, pid {process.pid})")
        with chain_errors(f"deploying the contracts on the {kind} chain failed"):
            client = devchain.client()
            keys = client.dev_keys()
            if not keys:
                raise DevnetError(
                    f"the {kind} chain at {process.url} lists no dev accounts",
                    hint=f"see its log, {process.log_path}",
                )
            devchain.treasury = Account.from_key(keys[0]).address
            d = deploy(
                client,
                keys[0],
                devchain.treasury,
                DEVNET_SUPPLY,
                DEVNET_UNLOCK_DELAY_S,
                DEVNET_UNSTAKE_DELAY_S,
            )
        devchain.token, devchain.escrow = d.token, d.escrow
        devchain.requests = d.requests or ""
        progress(f"contracts deployed: token {d.token}, escrow {d.escrow}, requests {d.requests}")
        return devchain
    except BaseException:
        devchain.stop()
        raise


def gateway_env(gateway: bool) -> dict[str, str]:
    """``MASK_GATEWAY_ENABLED`` for a devnet node: the gateway (node0) or not,
    whatever the environment the devnet was started from says."""
    return {"MASK_GATEWAY_ENABLED": "true" if gateway else "false"}


def write_node_config(path: Path, base: Path, devchain: DevChain, *, gateway: bool = False) -> Path:
    """``base`` plus a ``[chain]`` section for ``devchain`` and a ``[gateway]``
    one (ComputeRequests; ``enabled`` only for the devnet's gateway), written to
    ``path`` (0600): what the node runs with, for a person to read."""
    import tomllib

    text = base.read_text()
    chain = {
        "backend": "rpc",
        "rpc_url": devchain.url,
        "chain_id": devchain.chain_id,
        "token": devchain.token,
        "escrow": devchain.escrow,
    }
    sections: dict[str, dict[str, Any]] = {"chain": chain}
    if devchain.requests:
        sections["gateway"] = {"enabled": gateway, "requests": devchain.requests}
    header = f"# written by `mask devnet up`: {base} and the devnet's {devchain.kind} chain\n"
    doc = tomllib.loads(text)
    if any(name in doc for name in sections):  # the base's own: merged, the devnet's keys win
        merged = {**doc, **{name: {**doc.get(name, {}), **keys} for name, keys in sections.items()}}
        text = dump_toml(merged)
    else:
        for name, keys in sections.items():
            text += f"\n[{name}]\n" + dump_toml(keys)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(header + text)
    return path


def wait_chain_connected(nodes: list[DevNode], timeout: float) -> None:
    def connected() -> bool:
        for node in nodes:
            try:
                if not node.call("v1.node.info")["chain"]["connected"]:
                    return False
            except (MaskError, KeyError, TypeError):
                return False
        return True

    wait_until(connected, timeout, f"all {len(nodes)} nodes to reach the chain", interval=0.1)


class Faucet:
    """The devnet's faucet: each node's account gets ETH for gas (from dev key
    1) and MASK (from the treasury, dev key 0) as soon as its daemon answers,
    while the other nodes are still starting."""

    def __init__(self, devchain: DevChain, timeout: float = 60.0):
        with chain_errors(f"reaching the {devchain.kind} chain at {devchain.url} failed"):
            self.client = devchain.client(timeout_s=timeout)
            self.keys = self.client.dev_keys()
        if len(self.keys) < 2:
            raise DevnetError(
                f"the {devchain.kind} chain at {devchain.url} lists {len(self.keys)} dev accounts",
                hint="the faucet needs two: the treasury and a key that pays gas",
            )
        self.devchain = devchain
        self.funded: list[str] = []

    def fund(self, node: DevNode) -> str:
        """Fund ``node``'s account (``v1.wallet.show``); returns its address."""
        from ledger.deploy import fund

        address = str(node.call("v1.wallet.show")["address"])
        with chain_errors(f"funding {node.data_dir.name} ({address}) failed"):
            fund(
                self.client,
                self.keys[0],
                address,
                DEVNET_ETH,
                DEVNET_MASK,
                token=self.devchain.token,
                eth_key=self.keys[1],
            )
        self.funded.append(address)
        return address

    def summary(self) -> str:
        return (
            f"the faucet gave {len(self.funded)} accounts {DEVNET_ETH // 10**18} ETH and "
            f"{DEVNET_MASK // 10**18} MASK each (treasury {self.devchain.treasury})"
        )


def deposit_all(
    nodes: list[DevNode], progress: Callable[[str], None], timeout: float = 60.0
) -> None:
    """Once every node reaches the chain, each deposits :data:`DEVNET_DEPOSIT`
    through its own daemon (``v1.wallet.deposit``: permit + deposit), at once."""
    wait_chain_connected(nodes, timeout)
    errors: list[str] = []

    def deposit(node: DevNode) -> None:
        try:
            node.call("v1.wallet.deposit", {"amount": str(DEVNET_DEPOSIT)}, timeout=timeout)
        except MaskError as e:
            errors.append(f"{node.data_dir.name}: {e}")

    with ThreadPoolExecutor(max_workers=min(len(nodes), 8)) as pool:
        list(pool.map(deposit, nodes))
    if errors:
        raise DevnetError(
            "a deposit failed: " + "; ".join(sorted(errors)), hint="see the nodes' maskd.err"
        )
    progress(f"every node deposited {DEVNET_DEPOSIT // 10**18} MASK into the escrow")


# -- TOML ---------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(doc: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for a job.toml or a node config: scalars, arrays, (nested) tables."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in doc.items():
        if isinstance(v, dict):
            name = f"{prefix}{k}"
            out += f"\n[{name}]\n" + dump_toml(v, name + ".")
    return out
