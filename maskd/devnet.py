"""A local devnet: N maskd processes on 127.0.0.1, for demos and tests.

``mask devnet up --nodes N --dir D`` starts node 0, then the others
bootstrapped to it, waits until every node sees every other node's offer, and
records the pids in ``D/devnet.json``; ``mask devnet down --dir D`` stops them
by pid (SIGTERM, then SIGKILL after a grace period). The integration tests use
the same ``DevNode`` harness, so what the tests run is what users run.
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
from typing import Any

from protocol.errors import MaskError

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
        if self.pid is None:
            return False
        try:  # reap it if it is our child (else it lingers as a zombie)
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            if done:
                return False
        except ChildProcessError:
            pass
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True

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


def start_devnet(
    n: int,
    root: Path,
    *,
    config: Path | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    progress: Callable[[str], None] = lambda msg: None,
) -> list[DevNode]:
    """Start ``n`` nodes bootstrapped to the first and wait for a full offer view."""
    config = config or devnet_config_path()
    make_private_dir(root)
    nodes: list[DevNode] = []
    try:
        first = DevNode(
            root / "node0", config=config, extra_args=list(extra_args or []), env=env or {}
        )
        first.start().wait_ready(timeout)
        nodes.append(first)
        progress(f"node0 up: {first.peer_id}")
        boot = [first.addrs[0]]
        rest = [
            DevNode(
                root / f"node{i}",
                config=config,
                bootstrap=boot,
                extra_args=list(extra_args or []),
                env=env or {},
            )
            for i in range(1, n)
        ]
        for node in rest:
            node.start()
        for i, node in enumerate(rest, start=1):
            node.wait_ready(timeout)
            nodes.append(node)
            progress(f"node{i} up: {node.peer_id}")
        wait_full_view(nodes, timeout)
        progress(f"all {n} nodes see all {n} offers")
        return nodes
    except BaseException:
        for node in nodes + [x for x in locals().get("rest", []) if x not in nodes]:
            node.kill()
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


def write_state(root: Path, nodes: list[DevNode]) -> None:
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
        ]
    }
    tmp = root / "devnet.json.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(state, indent=2))
    os.replace(tmp, root / "devnet.json")


def read_state(root: Path) -> list[DevNode]:
    try:
        state = json.loads((root / "devnet.json").read_text())
    except FileNotFoundError:
        raise DevnetError(
            f"no devnet in {root}", hint="start one with `mask devnet up --dir DIR`"
        ) from None
    except ValueError as exc:
        raise DevnetError(f"{root}/devnet.json is corrupt: {exc}") from None
    return [
        DevNode(Path(n["data_dir"]), pid=n["pid"], peer_id=n["peer_id"], addrs=n["addrs"])
        for n in state["nodes"]
    ]


def stop_devnet(root: Path, timeout: float = 10.0) -> list[tuple[DevNode, bool]]:
    """Stop every node recorded in ``root`` by pid; returns (node, was_running).

    All nodes get SIGTERM at once, then each is waited for (SIGKILL after
    ``timeout``), so a devnet stops in about one node's shutdown time.
    """
    nodes = read_state(root)
    running = [node.alive() and _is_maskd(node.pid) for node in nodes]
    for node, was in zip(nodes, running, strict=True):
        if was:
            node.signal(signal.SIGCONT)
            node.signal(signal.SIGTERM)
    for node, was in zip(nodes, running, strict=True):
        if was:
            node.stop(timeout)
    (root / "devnet.json").unlink(missing_ok=True)
    return list(zip(nodes, running, strict=True))


def _is_maskd(pid: int | None) -> bool:
    """Never signal a recycled pid that belongs to something else."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"maskd" in cmdline
