"""One embedded EVM shared by several processes over JSON-RPC on 127.0.0.1.

``mask devnet up`` and ``make demo`` run several daemons that must settle on
the *same* chain; eth-tester lives in one process, so this serves an
:class:`~ledger.chain.EmbeddedChain` over HTTP and every daemon connects with
``ChainClient.rpc(url, chain_id)`` as it would to anvil or a real node.

The server is a stdlib ``ThreadingHTTPServer``; every request goes through
the chain's lock (py-evm is not thread-safe). It speaks standard JSON-RPC: hex
quantities out, a revert as error ``3`` with the revert data (what geth and
anvil answer, so web3 raises ``ContractCustomError`` on both). Requests are
bounded (body size, batch length, concurrent handlers) and nothing a client
sends can stop the server.

``python -m ledger.devchain --port N [--ready-file F]`` runs it in the
foreground; :func:`start_devchain` runs that as a subprocess and returns a
:class:`ChainProcess` to stop it by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ledger.chain import EmbeddedChain, RpcChain, eth_tester_revert_data
from ledger.ports import ChainError
from protocol.codec import DECODE_ERRORS, decode_json

__all__ = [
    "MAX_BATCH",
    "MAX_BODY_BYTES",
    "ChainProcess",
    "DevChainServer",
    "handle_body",
    "main",
    "start_devchain",
]

HOST = "127.0.0.1"
DEFAULT_CHAIN_ID = 31337  # anvil's, and the default config's
MAX_BODY_BYTES = 4 * 1024 * 1024  # a 260-voucher settleBatch is ~120 KB of hex
MAX_BATCH = 100
MAX_HANDLERS = 32
_MAX_METHOD = 64
_MAX_NESTING = 16  # a batch of transactions with access lists is 7 deep
_ALLOWED_NAMESPACES = ("eth", "net", "web3", "evm", "testing")
_BLOOM_BYTES = 256


# --- JSON-RPC over the embedded chain (no sockets here) -------------------------


def _error(id_: Any, code: int, message: str, data: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message[:500]}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": err}


def _to_wire(value: Any, key: str = "") -> Any:
    """eth-tester's Python values as JSON-RPC: ints as hex quantities, bytes as data."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        if key == "logsBloom":
            return "0x" + value.to_bytes(_BLOOM_BYTES, "big").hex()
        return hex(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): _to_wire(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_wire(v) for v in value]
    return str(value)


def _dispatch(chain: EmbeddedChain, request: Any) -> dict[str, Any] | None:
    """One JSON-RPC request object; None for a notification (no id)."""
    from eth_tester.exceptions import TransactionFailed

    if not isinstance(request, dict):
        return _error(None, -32600, "invalid request: not an object")
    id_ = request.get("id")
    if not (id_ is None or isinstance(id_, str | int)) or isinstance(id_, bool):
        return _error(None, -32600, "invalid request: bad id")
    method = request.get("method")
    params = request.get("params", [])
    if not isinstance(method, str) or not 0 < len(method) <= _MAX_METHOD:
        return _error(id_, -32600, "invalid request: no method")
    if not isinstance(params, list):
        return _error(id_, -32602, "params must be an array")
    if method.partition("_")[0] not in _ALLOWED_NAMESPACES:
        return _error(id_, -32601, f"method not found: {method}")
    try:
        if method == "evm_increaseTime":  # anvil's name; eth-tester has only time travel
            if len(params) != 1:
                return _error(id_, -32602, "evm_increaseTime takes [seconds]")
            seconds = int(params[0], 16) if isinstance(params[0], str) else int(params[0])
            if not 0 <= seconds <= 10 * 365 * 86400:
                return _error(id_, -32602, "evm_increaseTime: seconds out of range")
            chain.advance_time(seconds)
            response: dict[str, Any] = {"result": seconds}
        else:
            response = chain.rpc_request(method, params)
    except TransactionFailed as e:
        data = eth_tester_revert_data(e) or b""
        message = "execution reverted"
        if data[:4] == bytes.fromhex("08c379a0"):
            message = str(e.args[0]) if e.args else message
        return _error(id_, 3, message, "0x" + data.hex())
    except RecursionError:
        return _error(id_, -32602, "params nested too deeply")
    except Exception as e:  # bad params, nonce errors, eth-tester's own errors
        text = str(e.args[0]) if e.args else type(e).__name__
        return _error(id_, -32000, f"{type(e).__name__}: {text}")
    if id_ is None:
        return None
    if "error" in response:
        error = response["error"]
        if isinstance(error, Mapping):
            return _error(id_, int(error.get("code", -32000)), str(error.get("message", "")))
        return _error(id_, -32000, str(error))
    return {"jsonrpc": "2.0", "id": id_, "result": _to_wire(response.get("result"))}


def handle_body(chain: EmbeddedChain, body: bytes) -> bytes | None:
    """A JSON-RPC request body (one object or a batch) to the response body;
    None when there is nothing to answer (only notifications)."""
    try:  # nesting is bounded first: deep JSON would overflow the C stack
        parsed = decode_json(body, max_depth=_MAX_NESTING)
    except DECODE_ERRORS as e:
        return json.dumps(_error(None, -32700, f"parse error: {e}")).encode()
    if isinstance(parsed, list):
        if not parsed:
            return json.dumps(_error(None, -32600, "invalid request: empty batch")).encode()
        if len(parsed) > MAX_BATCH:
            return json.dumps(
                _error(None, -32600, f"batch of {len(parsed)} requests; at most {MAX_BATCH}")
            ).encode()
        answers = [a for a in (_dispatch(chain, r) for r in parsed) if a is not None]
        return json.dumps(answers).encode() if answers else None
    answer = _dispatch(chain, parsed)
    return json.dumps(answer).encode() if answer is not None else None


# --- the HTTP shell ---------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: web3's session reuses its connection
    timeout = 60  # an idle keep-alive connection frees its thread after this
    server: DevChainServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per request would fill the log; errors go back to clients

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.close_connection = True
        self._reply(405, b"POST JSON-RPC requests here\n", "text/plain")

    def do_POST(self) -> None:
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_header is None:
            self.close_connection = True
            self._reply(411, b"Content-Length required\n", "text/plain")
            return
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._reply(413, f"body over {MAX_BODY_BYTES} bytes\n".encode(), "text/plain")
            return
        body = self.rfile.read(length)
        if not self.server.handlers.acquire(timeout=30):
            self._reply(503, b"busy\n", "text/plain")
            return
        try:
            answer = handle_body(self.server.chain, body)
        finally:
            self.server.handlers.release()
        if answer is None:
            self._reply(204, b"")
        else:
            self._reply(200, answer)


class DevChainServer(ThreadingHTTPServer):
    """The JSON-RPC server on 127.0.0.1:``port`` (0: any free port)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, chain: EmbeddedChain, port: int = 0):
        self.chain = chain
        self.handlers = threading.BoundedSemaphore(MAX_HANDLERS)
        super().__init__((HOST, port), _Handler)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"


# --- the foreground command -----------------------------------------------------


def _write_ready(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledger.devchain",
        description="Serve one embedded EVM (eth-tester) over JSON-RPC on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=8545, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--chain-id", type=int, default=DEFAULT_CHAIN_ID, help="what eth_chainId answers"
    )
    parser.add_argument(
        "--ready-file", type=Path, help="written (JSON: url, chain_id, pid) once listening"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"port {args.port} is not in 0..65535")
    if not 0 < args.chain_id < 2**53:
        parser.error(f"chain id {args.chain_id} is not in 1..2**53-1")
    try:
        server = DevChainServer(EmbeddedChain(args.chain_id), port=args.port)
    except OSError as e:
        print(f"error: cannot listen on {HOST}:{args.port}: {e.strerror}", file=sys.stderr)
        print("hint: another process holds the port; pick another with --port", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="devchain-http", daemon=True)
    thread.start()
    info = {"url": server.url, "chain_id": server.chain.chain_id, "pid": os.getpid()}
    print(f"devchain: chain {server.chain.chain_id} at {server.url}", flush=True)
    if args.ready_file is not None:
        _write_ready(args.ready_file, info)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
    print("devchain: stopped", flush=True)
    return 0


# --- running it (and anvil) as a child process ---------------------------------------


@dataclass
class ChainProcess:
    """A chain node this process started (the devchain or anvil), stopped by PID."""

    process: subprocess.Popen[bytes]
    url: str
    chain_id: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self, timeout_s: float = 10.0) -> RpcChain:
        return RpcChain(self.url, self.chain_id, timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (a clean exit: anvil dumps its state), SIGKILL after ``timeout_s``."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return ""


def wait_started(
    process: subprocess.Popen[bytes],
    ready: Any,
    log_path: Path,
    what: str,
    timeout_s: float,
) -> Any:
    """Poll ``ready()`` until it returns a value; ChainError if the process exits
    or ``timeout_s`` passes (the log's tail goes into the message)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = ready()
        if got is not None:
            return got
        code = process.poll()
        if code is not None or time.monotonic() >= deadline:
            if code is None:
                process.kill()
                process.wait()
            tail = (
                log_path.read_bytes()[-1500:].decode(errors="replace") if log_path.exists() else ""
            )
            state = f"exited with {code}" if code is not None else f"not ready in {timeout_s:.0f} s"
            raise ChainError(
                f"{what} {state}; log {log_path}:\n{tail}",
                transient=False,
                hint=f"see {log_path}",
            )
        time.sleep(0.02)


def start_devchain(
    root: Path, port: int = 0, chain_id: int = DEFAULT_CHAIN_ID, timeout_s: float = 60.0
) -> ChainProcess:
    """Run ``python -m ledger.devchain`` in the background, logging to
    ``root/devchain.log``; returns once it listens."""
    root.mkdir(parents=True, exist_ok=True)
    ready_file = root / "devchain.ready"
    ready_file.unlink(missing_ok=True)
    log_path = root / "devchain.log"
    # owner-only, like everything else a node writes (the umask may be looser)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ledger.devchain",
                "--port",
                str(port),
                "--ready-file",
                str(ready_file),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )

    def ready() -> dict[str, Any] | None:
        try:
            return json.loads(ready_file.read_text())
        except (OSError, ValueError):
            return None

    try:
        info = wait_started(process, ready, log_path, "the devchain", timeout_s)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise
    return ChainProcess(process, str(info["url"]), int(info["chain_id"]), log_path)


if __name__ == "__main__":
    sys.exit(main())
