"""A local devnet: N maskd processes on 127.0.0.1, for demos and tests.

``mask devnet up --nodes N --dir D`` starts node 0, then the others
bootstrapped to it, waits until every node sees every other node's offer, and
records the pids in ``D/devnet.json``; ``mask devnet down --dir D`` stops them
by pid (SIGTERM, then SIGKILL after a grace period). The integration tests use
the same ``DevNode`` harness, so what the tests run is what users run.

Payments need every node on *one* chain (a per-node embedded chain would
leave each requester's deposit invisible to the providers), so a devnet with
a chain (``chain="embedded"``: ``ledger.devchain``; ``"anvil"``) starts that
chain first, deploys the contracts from its first dev key (the treasury),
starts the nodes on it (``[chain] backend = "rpc"``), then funds each node's
account and has it deposit, so every node can buy from the first job on. The
chain is recorded in ``devnet.json`` and stopped by PID after the nodes.
The chain settings reach each node through its environment (which overrides
any inherited ``MASK_CHAIN_*``, e.g. the test suite's ``backend = off``) and
through its own copy of the config (``nodeN/node.toml``) for people to read.
With a chain, node0 is also the devnet's gateway (``[gateway] enabled``): it
answers DApps' requests on the ComputeRequests contract every node knows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.errors import MaskError

if TYPE_CHECKING:  # maskd.devnet_chain imports this module's process helpers
    from maskd.devnet_chain import DevChain

REPO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "devnet" / "node.toml"


def devnet_config_path() -> Path:
    """The devnet config: from the source tree, else the packaged defaults."""
    if REPO_CONFIG.exists():
        return REPO_CONFIG
    raise MaskError(
        "configs/devnet/node.toml not found",
        hint="run `mask devnet` from a maskd source checkout",
    )


class DevnetError(MaskError):
    code = "devnet_error"


@dataclass
class DevNode:
    """One maskd process with its own data dir, started and stopped by pid."""

    data_dir: Path
    config: Path | None = None
    bootstrap: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # run under a wrapper that execs the daemon in place (same pid), e.g.
    # ["ip", "netns", "exec", "ns1"] to start it in a network namespace
    prefix: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    pid: int | None = None
    peer_id: str = ""
    addrs: list[str] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.data_dir / "maskd.sock"

    @property
    def ready_file(self) -> Path:
        return self.data_dir / "maskd.json"

    def start(self) -> DevNode:
        make_private_dir(self.data_dir)
        self.ready_file.unlink(missing_ok=True)
        cmd = [*self.prefix, sys.executable, "-m", "maskd.daemon", "--data-dir", str(self.data_dir)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        for b in self.bootstrap:
            cmd += ["--bootstrap", b]
        cmd += self.extra_args
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        out = _open_private_log(self.data_dir / "maskd.out")
        err = _open_private_log(self.data_dir / "maskd.err")
        self.proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        out.close()
        err.close()
        self.pid = self.proc.pid
        return self

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def stderr_tail(self, n: int = 20) -> str:
        try:
            lines = (self.data_dir / "maskd.err").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def wait_ready(self, timeout: float = 30.0) -> DevNode:
        def ready() -> bool:
            if not self.alive():
                raise DevnetError(
                    f"maskd in {self.data_dir} exited during start-up",
                    hint="its stderr ends with:\n" + self.stderr_tail(),
                )
            try:
                info = json.loads(self.ready_file.read_text())
            except (OSError, ValueError):
                return False
            if info.get("pid") != self.pid:
                return False
            self.peer_id = info["peer_id"]
            self.addrs = info["addrs"]
            return True

        wait_until(ready, timeout, f"maskd in {self.data_dir} to start")
        return self

    def call(self, method: str, params: Any = None, timeout: float = 10.0) -> Any:
        from maskd.client import Client

        with Client.connect(str(self.socket)) as client:
            return client.call(method, params, timeout=timeout)

    def signal(self, signum: int) -> None:
        if self.pid is not None and self.alive():
            os.kill(self.pid, signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, SIGKILL. Returns the exit code when we are its parent."""
        if self.pid is None:
            return None
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGCONT)  # a SIGSTOPped node cannot exit
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                wait_until(lambda: not self.alive(), timeout, "maskd to exit")
            except DevnetError:
                self.kill()
        code = self.proc.wait(timeout=5) if self.proc is not None else None
        return code

    def kill(self) -> None:
        if self.pid is not None and self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self.proc is not None:
                self.proc.wait(timeout=10)


def pid_alive(pid: int) -> bool:
    """``pid`` runs (a zombie does not), reaping it first if it is our child."""
    try:  # reap it if it is our child (else it lingers as a zombie)
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def make_private_dir(path: Path) -> None:
    """Create ``path`` and any missing parents, each 0700 (whatever the umask).

    Dirs that exist are left as they are: ``--dir`` may name a shared one; each
    node's daemon tightens its own data dir at start.
    """
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)


def _open_private_log(path: Path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "ab")


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``cond`` until true or the deadline: a wait on a condition, not a sleep."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if time.monotonic() >= deadline:
            raise DevnetError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def offers_seen(node: DevNode) -> set[str]:
    return {o["peer_id"] for o in node.call("v1.offers.list")}


def peers_seen(node: DevNode) -> set[str]:
    """Peer ids ``node`` is connected to."""
    return {p["peer_id"] for p in node.call("v1.peers.list")}


class Devnet(list[DevNode]):
    """The nodes :func:`start_devnet` started (a list, so ``nodes[0]`` works as
    before) and the chain they share, or None without one."""

    def __init__(self, nodes: list[DevNode], chain: DevChain | None = None):
        super().__init__(nodes)
        self.chain = chain


def start_devnet(
    n: int,
    root: Path,
    *,
    chain: str | None = None,
    config: Path | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    gateway: bool = True,
    progress: Callable[[str], None] = lambda msg: None,
) -> Devnet:
    """Start ``n`` nodes bootstrapped to the first and wait for a full offer view.

    ``chain``: ``"embedded"`` (one ``ledger.devchain`` process), ``"anvil"``
    (installed first if missing) or None / ``"off"`` (no payments: every node
    gets ``chain.backend = off``). With a chain, every node is also connected
    to it, funded and has deposited :data:`DEVNET_DEPOSIT` before this returns,
    and (``gateway``) node0 answers DApps' requests on chain.
    Whatever was started is stopped again if any step fails."""
    from maskd.devnet_chain import (
        Faucet,
        check_chain_kind,
        deposit_all,
        gateway_env,
        start_chain,
        write_node_config,
    )

    kind = check_chain_kind(chain)
    config = config or devnet_config_path()
    make_private_dir(root)
    node_env = {**(env or {}), "MASK_CHAIN_BACKEND": "off"}
    devchain: DevChain | None = None
    faucet: Faucet | None = None
    nodes: list[DevNode] = []
    try:
        if kind != "off":
            if any((root / f"node{i}" / "ledger").exists() for i in range(n)):
                progress(
                    f"warning: the node dirs in {root} are from an earlier devnet; their "
                    "channels refer to its chain, not the fresh one (use a new --dir)"
                )
            devchain = start_chain(kind, root, progress, timeout)
            faucet = Faucet(devchain, timeout)
            node_env = {**(env or {}), **devchain.env()}

        def node(i: int, bootstrap: list[str]) -> DevNode:
            data_dir = root / f"node{i}"
            node_config, each_env = config, node_env
            if devchain is not None:
                is_gateway = gateway and i == 0 and bool(devchain.requests)
                make_private_dir(data_dir)
                node_config = write_node_config(
                    data_dir / "node.toml", config, devchain, gateway=is_gateway
                )
                each_env = {**node_env, **gateway_env(is_gateway)}
            return DevNode(
                data_dir,
                config=node_config,
                bootstrap=bootstrap,
                extra_args=list(extra_args or []),
                env=each_env,
            )

        def up(i: int, each: DevNode) -> None:
            each.wait_ready(timeout)
            funded = f", account {faucet.fund(each)} funded" if faucet is not None else ""
            progress(f"node{i} up: {each.peer_id}{funded}")

        first = node(0, [])
        nodes.append(first)
        up(0, first.start())
        boot = [first.addrs[0]]
        rest = [node(i, boot) for i in range(1, n)]
        nodes.extend(rest)
        for each in rest:
            each.start()
        for i, each in enumerate(rest, start=1):
            up(i, each)  # funding one node while the next ones start
        wait_full_view(nodes, timeout)
        progress(f"all {n} nodes see all {n} offers")
        if devchain is not None and gateway and devchain.requests:
            progress(
                f"node0 is the gateway: it answers DApps' requests on ComputeRequests "
                f"{devchain.requests}"
            )
        if faucet is not None:
            progress(faucet.summary())
            deposit_all(nodes, progress, timeout)
        return Devnet(nodes, devchain)
    except BaseException:
        for each in nodes:
            each.kill()
        if devchain is not None:
            devchain.stop()
        raise


def wait_full_view(nodes: list[DevNode], timeout: float) -> None:
    want = {n.peer_id for n in nodes}

    def full() -> bool:
        for node in nodes:
            try:
                if not want <= offers_seen(node):
                    return False
            except MaskError:
                return False
        return True

    wait_until(full, timeout, f"all {len(nodes)} nodes to see every offer", interval=0.2)


def write_state(root: Path, nodes: list[DevNode], chain: DevChain | None = None) -> None:
    """``root/devnet.json`` (0600): the nodes and the chain (``nodes.chain`` of a
    :class:`Devnet` unless ``chain`` is given), for ``down`` and ``status``."""
    if chain is None:
        chain = getattr(nodes, "chain", None)
    state = {
        "nodes": [
            {
                "name": n.data_dir.name,
                "pid": n.pid,
                "peer_id": n.peer_id,
                "addrs": n.addrs,
                "data_dir": str(n.data_dir),
                "socket": str(n.socket),
            }
            for n in nodes
        ],
        "chain": chain.to_json() if chain is not None else None,
    }
    tmp = root / "devnet.json.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(state, indent=2))
    os.replace(tmp, root / "devnet.json")


def _read_state_file(root: Path) -> dict[str, Any]:
    try:
        state = json.loads((root / "devnet.json").read_text())
    except FileNotFoundError:
        raise DevnetError(
            f"no devnet in {root}", hint="start one with `mask devnet up --dir DIR`"
        ) from None
    except ValueError as exc:
        raise DevnetError(f"{root}/devnet.json is corrupt: {exc}") from None
    if not isinstance(state, dict) or not isinstance(state.get("nodes"), list):
        raise DevnetError(f"{root}/devnet.json is corrupt: no list of nodes")
    return state


def read_state(root: Path) -> list[DevNode]:
    """The nodes recorded in ``root/devnet.json``."""
    state = _read_state_file(root)
    try:
        return [
            DevNode(Path(n["data_dir"]), pid=n["pid"], peer_id=n["peer_id"], addrs=n["addrs"])
            for n in state["nodes"]
        ]
    except (KeyError, TypeError) as exc:
        raise DevnetError(f"{root}/devnet.json is corrupt: a node lacks {exc}") from None


def read_chain(root: Path) -> DevChain | None:
    """The chain recorded in ``root/devnet.json``; None for a devnet without one."""
    from maskd.devnet_chain import DevChain

    raw = _read_state_file(root).get("chain")
    if raw is None:
        return None
    try:
        return DevChain.from_json(raw)
    except ValueError as exc:
        raise DevnetError(f"{root}/devnet.json is corrupt: {exc}") from None


@dataclass
class Stopped:
    """What :func:`stop_devnet` found running and stopped."""

    nodes: list[tuple[DevNode, bool]]  # (node, was running)
    chain: DevChain | None = None
    chain_was_running: bool = False


def stop_devnet(root: Path, timeout: float = 10.0) -> Stopped:
    """Stop every node recorded in ``root`` by pid, then its chain.

    All nodes get SIGTERM at once, then each is waited for (SIGKILL after
    ``timeout``), so a devnet stops in about one node's shutdown time. The
    chain goes last: nodes still settling reach it until they exit."""
    nodes = read_state(root)
    try:
        chain = read_chain(root)
    except DevnetError:
        chain = None  # a corrupt chain entry must not keep the nodes running
    running = [node.alive() and _is_maskd(node.pid) for node in nodes]
    for node, was in zip(nodes, running, strict=True):
        if was:
            node.signal(signal.SIGCONT)
            node.signal(signal.SIGTERM)
    for node, was in zip(nodes, running, strict=True):
        if was:
            node.stop(timeout)
    chain_was = chain.stop(timeout) if chain is not None else False
    (root / "devnet.json").unlink(missing_ok=True)
    return Stopped(list(zip(nodes, running, strict=True)), chain, chain_was)


def cmdline_has(pid: int | None, marker: bytes) -> bool:
    """``pid``'s command line contains ``marker`` (False if it is gone)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker in cmdline


def _is_maskd(pid: int | None) -> bool:
    """Never signal a recycled pid that belongs to something else."""
    return cmdline_has(pid, b"maskd")
