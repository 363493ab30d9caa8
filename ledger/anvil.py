"""anvil (foundry) as a child process: the real EVM node tests and devnets run.

eth-tester is a fine in-process chain, but a real node behaves differently
where it matters (reverts as JSON-RPC errors, a mempool, nonces checked at
send, state kept across a restart), so the escrow is also tested against
anvil 1.7.1. It installs offline from an npm platform package (a native
binary, no node at run time) into the project's ``.anvil/`` by
``scripts/anvil/install.sh`` (``make anvil``).

Its output goes to a file, never a pipe: an undrained pipe made it block
after a few hundred transactions. It keeps its chain in ``--state FILE``
(loaded at start when present, written on a clean exit and every few seconds),
so a node stopped with SIGTERM and started again on the same port comes back
with the same chain.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from ledger.chain import RpcChain
from ledger.devchain import ChainProcess, wait_started
from ledger.ports import ChainError

__all__ = ["ANVIL_CHAIN_ID", "ANVIL_VERSION", "anvil_binary", "install_anvil", "start_anvil"]

ANVIL_VERSION = "1.7.1"
ANVIL_CHAIN_ID = 31337
REPO = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO / "scripts" / "anvil" / "install.sh"
STATE_INTERVAL_S = 2  # a SIGKILLed anvil loses at most this much of its chain
_LISTENING = re.compile(rb"Listening on 127\.0\.0\.1:(\d+)")


def anvil_binary(root: Path = REPO) -> Path:
    """Where ``make anvil`` puts the binary."""
    return root / ".anvil" / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


def install_anvil() -> Path:
    """The anvil binary, installed into ``.anvil/`` first if it is missing
    (``scripts/anvil/install.sh``: npm, seconds). Falls back to an ``anvil``
    on PATH; ChainError with the installer's output if there is neither."""
    binary = anvil_binary()
    if binary.is_file():
        return binary
    result = subprocess.run(
        [str(INSTALL_SCRIPT)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=600,
        check=False,
    )
    if result.returncode == 0 and binary.is_file():
        return binary
    on_path = shutil.which("anvil")
    if on_path is not None:
        return Path(on_path)
    tail = result.stdout[-1500:].decode(errors="replace")
    raise ChainError(
        f"cannot install anvil {ANVIL_VERSION} (exit {result.returncode}):\n{tail}",
        transient=False,
        hint="run `make anvil` (needs npm and the npm registry), or put foundry's anvil on PATH",
    )


def start_anvil(
    root: Path,
    port: int = 0,
    chain_id: int = ANVIL_CHAIN_ID,
    *,
    keep_state: bool = True,
    timeout_s: float = 60.0,
) -> ChainProcess:
    """Run anvil on 127.0.0.1:``port`` (0: a free one) with the Prague fork,
    logging to ``root/anvil.log``, its chain in ``root/anvil-state.json``;
    returns once ``eth_chainId`` answers.

    With ``keep_state`` an existing state file is loaded (start again on the
    old port after :meth:`ChainProcess.stop` and the chain is intact); without
    it the chain starts empty."""
    binary = install_anvil()
    root.mkdir(parents=True, exist_ok=True)
    state = root / "anvil-state.json"
    if not keep_state:
        state.unlink(missing_ok=True)
    log_path = root / "anvil.log"
    start_at = log_path.stat().st_size if log_path.exists() else 0
    command = [
        str(binary),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--hardfork", "prague",
        "--chain-id", str(chain_id),
        "--state", str(state),
        "--state-interval", str(STATE_INTERVAL_S),
    ]  # fmt: skip
    # owner-only, like everything else a node writes (the umask may be looser)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=root
        )

    def ready() -> RpcChain | None:
        try:
            with open(log_path, "rb") as f:
                f.seek(start_at)
                found = _LISTENING.search(f.read())
        except OSError:
            return None
        if found is None:
            return None
        try:
            return RpcChain(f"http://127.0.0.1:{int(found.group(1))}", chain_id, timeout_s=2)
        except ChainError as e:
            if e.transient:
                return None
            raise

    try:
        client = wait_started(process, ready, log_path, "anvil", timeout_s)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise
    return ChainProcess(process, client.url, chain_id, log_path)
