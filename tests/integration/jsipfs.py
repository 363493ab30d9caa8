"""A real IPFS daemon for tests: js-ipfs, as ``make jsipfs`` installs it in .jsipfs/.

``JsIpfs(tmp).start()`` initialises a fresh repo (``IPFS_PATH`` in ``tmp``)
that listens on 127.0.0.1 only, every port (API, gateway, gRPC, swarm) chosen
by the OS (``tcp/0``), with no bootstrap peers, no mDNS, no WebRTC-star and
no preload nodes, so it never leaves the machine. It then starts the daemon in
its own process group and waits, under a deadline, until the RPC API answers;
``stop()`` ends the group. The API address is read from ``$IPFS_PATH/api``,
which the daemon writes once it listens.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx

from maskd.devnet import DevnetError, wait_until

REPO = Path(__file__).resolve().parents[2]
INSTALL_DIR = Path(os.environ.get("JSIPFS_DIR") or REPO / ".jsipfs")
POLYFILL = REPO / "scripts" / "jsipfs" / "polyfill.cjs"
CLI = INSTALL_DIR / "node_modules" / "ipfs" / "src" / "cli.js"
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
CONFIG = {
    "Addresses": {
        "API": LOOPBACK,
        "Gateway": LOOPBACK,
        "RPC": LOOPBACK,
        "Swarm": [LOOPBACK],
        "Announce": [],
        "Delegates": [],
    },
    "Bootstrap": [],
    "Discovery": {"MDNS": {"Enabled": False}, "webRTCStar": {"Enabled": False}},
}


class JsIpfsError(Exception):
    pass


def installed_version() -> str:
    """The installed npm ``ipfs`` version; ``JsIpfsError`` with the fix if there is none."""
    node = shutil.which("node")
    if node is None:
        raise JsIpfsError("node is not on PATH (js-ipfs needs Node.js 20)")
    try:
        return json.loads((CLI.parents[1] / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        raise JsIpfsError(f"js-ipfs is not installed in {INSTALL_DIR}: run `make jsipfs`") from None


class JsIpfs:
    def __init__(self, root: Path) -> None:
        self.repo = root / "ipfs-repo"
        self.log = root / "jsipfs.log"
        self.proc: subprocess.Popen | None = None
        self.api = ""  # http://127.0.0.1:PORT once ready

    def _cmd(self, *args: str) -> list[str]:
        return [shutil.which("node") or "node", "--require", str(POLYFILL), str(CLI), *args]

    def _env(self) -> dict[str, str]:
        return {**os.environ, "IPFS_PATH": str(self.repo), "DEBUG": ""}

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self, timeout: float = 60.0) -> JsIpfs:
        installed_version()
        config = self.repo.parent / "jsipfs-config.json"
        config.write_text(json.dumps(CONFIG))
        init = subprocess.run(
            self._cmd("init", "--emptyRepo", "--defaultConfig", str(config)),
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if init.returncode != 0:
            raise JsIpfsError(f"jsipfs init failed ({init.returncode}):\n{init.stderr[-2000:]}")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self._cmd("daemon", "--enable-preload=false"),
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
            )
        try:
            wait_until(self._ready, timeout, "the js-ipfs RPC API to answer", interval=0.1)
        except DevnetError as exc:
            self.stop()
            raise JsIpfsError(f"{exc}; its log ends with:\n{self.log_tail()}") from None
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise JsIpfsError(
                f"the js-ipfs daemon exited ({self.proc.returncode}) during start-up; "
                f"its log ends with:\n{self.log_tail()}"
            )
        try:  # /ip4/127.0.0.1/tcp/PORT/http
            parts = (self.repo / "api").read_text().strip().split("/")
            api = f"http://{parts[2]}:{int(parts[4])}"
        except (OSError, IndexError, ValueError):
            return False
        try:
            ok = httpx.post(api + "/api/v0/version", timeout=2).status_code == 200
        except httpx.TransportError:
            return False
        if ok:
            self.api = api
        return ok

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the daemon's process group, then SIGKILL what is left."""
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc.wait(timeout=timeout)
