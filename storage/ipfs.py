"""A thin, blocking client for an external IPFS daemon's RPC API (Kubo's).

Why httpx and not ``ipfshttpclient``: its last release (0.7.0) refuses every
current Kubo in ``connect()`` (it accepts daemons 0.4.23 to < 0.8.0 only), is
unmaintained, and pulls ``requests``/``multiaddr`` versions of its own. The
API we need is six POST endpoints; httpx is already a dependency, streams
uploads and downloads, and takes an injectable transport, so the tests run a
fake Kubo in process (``httpx.MockTransport``).

Rules of the RPC API this follows (they are also what js-ipfs accepts): POST
only; every multipart part has a Content-Type; ask for ``cid-base=base32`` so
CIDs come back in the form the rest of maskd uses. ``add`` uses exactly the
importer settings of ``storage.unixfs`` (CIDv1, raw leaves, 256 KiB chunks),
and ``probe()`` checks at start that the daemon really computes our CIDs.

Missing content: a daemon asked for a block it lacks searches the network
for it and never answers on its own. ``block/get`` therefore passes the RPC
API's ``timeout`` option (Kubo and js-ipfs both honour it), so the daemon
gives up after ``timeout`` seconds and says so (``block_not_found``); our own
read timeout is a little longer, so that answer arrives first. A daemon that
stops answering altogether is ``ipfs_timeout``, one we cannot reach
``ipfs_unavailable``.

Blocking: the daemon calls this from ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import httpx

from protocol.codec import decode_json
from protocol.errors import StorageError
from storage.cid import canonical, verify_block
from storage.unixfs import import_file

ADD_PARAMS = {
    "cid-version": "1",
    "raw-leaves": "true",
    "chunker": "size-262144",
    "cid-base": "base32",
    "pin": "true",
}
PROBE_SIZE = 600_000  # three chunks: checks chunking, raw leaves and the DAG node
OCTET = "application/octet-stream"
DIRECTORY = "application/x-directory"
# our read timeout exceeds the daemon's own deadline by this much, so that the
# daemon's "timed out" answer (a clear error) comes before ours
READ_GRACE_S = 5.0


def probe_blob() -> bytes:
    """Deterministic bytes that are not all alike (so chunks have distinct CIDs)."""
    out = bytearray()
    counter = 0
    while len(out) < PROBE_SIZE:
        out += hashlib.sha256(b"maskd ipfs probe %d" % counter).digest()
        counter += 1
    return bytes(out[:PROBE_SIZE])


def _unavailable(api: str, exc: Exception, timeout: float) -> StorageError:
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return StorageError(
            f"the IPFS daemon at {api} did not answer within {timeout:g} s ({type(exc).__name__})",
            code="ipfs_timeout",
            hint="check the IPFS daemon's log, or raise storage.ipfs_timeout_s",
        )
    return StorageError(
        f"the IPFS daemon at {api} is not reachable ({type(exc).__name__}: {exc})",
        code="ipfs_unavailable",
        hint='start it (`ipfs daemon`), fix storage.ipfs_api, or set storage.backend = "local"',
    )


class KuboClient:
    def __init__(
        self, api: str, *, timeout: float = 60.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.api = api.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.api + "/api/v0", timeout=timeout + READ_GRACE_S, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    # -- plumbing --------------------------------------------------------
    def _post(self, endpoint: str, params: dict | None = None, **kw) -> httpx.Response:
        try:
            response = self._http.post(endpoint, params=params, **kw)
        except httpx.TransportError as exc:
            raise _unavailable(self.api, exc, self.timeout + READ_GRACE_S) from None
        self._check(endpoint, response)
        return response

    def _check(self, endpoint: str, response: httpx.Response) -> None:
        if response.status_code == 200:
            return
        try:
            message = response.json().get("Message", "")
        except (ValueError, AttributeError):
            message = response.text[:200]
        lower = message.lower()
        hint = None
        if "not found" in lower:
            code = "block_not_found"
        elif "timed out" in lower or "deadline exceeded" in lower:  # js-ipfs, Kubo
            code = "block_not_found"
            hint = (
                f"the IPFS daemon found no copy within {self.timeout:g} s: the content may not "
                "exist, or no peer it can reach has it (storage.ipfs_timeout_s sets the wait)"
            )
        else:
            code = "ipfs_error"
            hint = "check the IPFS daemon's log"
        raise StorageError(
            f"IPFS {endpoint} failed: HTTP {response.status_code} {message}".strip(),
            code=code,
            hint=hint,
        )

    # -- calls -----------------------------------------------------------
    def version(self) -> str:
        return self._post("/version").json().get("Version", "")

    def add_bytes(self, data: bytes, name: str = "blob") -> str:
        return self._add([("file", (name, io.BytesIO(data), OCTET))], name)

    def add_path(self, path: str | os.PathLike) -> str:
        """Add a file or a directory tree (hidden entries skipped, like ``ipfs add -r``)."""
        root = Path(path)
        if not root.is_dir():
            with open(root, "rb") as f:
                return self._add([("file", (root.name, f, OCTET))], root.name)
        parts: list = [("file", (root.name, b"", DIRECTORY))]
        opened = []
        try:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = Path(dirpath).relative_to(root.parent)
                for d in dirnames:
                    parts.append(("file", (str(rel / d), b"", DIRECTORY)))
                for name in sorted(n for n in filenames if not n.startswith(".")):
                    f = open(Path(dirpath) / name, "rb")
                    opened.append(f)
                    parts.append(("file", (str(rel / name), f, OCTET)))
            return self._add(parts, root.name)
        finally:
            for f in opened:
                f.close()

    def _add(self, files: list, root_name: str) -> str:
        response = self._post("/add", ADD_PARAMS, files=files)
        root = None
        for line in response.text.splitlines():
            if not line.strip():
                continue
            entry = decode_json(line.encode())
            if entry.get("Name") == root_name or root is None:
                root = entry.get("Hash")
        if not root:
            raise StorageError("IPFS add answered no CID", code="ipfs_error")
        return canonical(root)

    def block_get(self, cid: str) -> bytes:
        # the daemon's deadline: without it, a block nobody has is searched for forever
        params = {"arg": cid, "timeout": f"{round(self.timeout * 1000)}ms"}
        data = self._post("/block/get", params).content
        if not verify_block(cid, data):
            raise StorageError(
                f"the IPFS daemon returned a block that does not hash to {cid}",
                code="block_hash_mismatch",
                hint="the IPFS repo may be corrupt: run `ipfs repo verify`",
            )
        return data

    def block_put(self, data: bytes, codec: str = "raw") -> str:
        params = {"cid-codec": codec, "mhtype": "sha2-256", "cid-base": "base32"}
        response = self._post("/block/put", params, files=[("data", ("block", data, OCTET))])
        return canonical(response.json()["Key"])

    def cat_to(self, cid: str, dest: str | os.PathLike) -> int:
        """Stream a file's bytes into ``dest`` (created, must not exist).

        No daemon deadline here (it would cut off a long download): content
        the daemon cannot find ends in our read timeout, ``ipfs_timeout``.
        """
        written = 0
        try:
            with self._http.stream("POST", "/cat", params={"arg": cid}) as response:
                if response.status_code != 200:
                    response.read()
                    self._check("/cat", response)
                with open(dest, "xb") as f:
                    for chunk in response.iter_bytes(1 << 20):
                        f.write(chunk)
                        written += len(chunk)
        except httpx.TransportError as exc:
            raise _unavailable(self.api, exc, self.timeout + READ_GRACE_S) from None
        return written

    def pin_add(self, cid: str) -> None:
        self._post("/pin/add", {"arg": cid})

    def pin_rm(self, cid: str) -> None:
        self._post("/pin/rm", {"arg": cid})

    def probe(self) -> str:
        """Add a probe blob; raise ``ipfs_cid_mismatch`` unless its CID equals ours."""
        blob = probe_blob()
        ours = import_file(io.BytesIO(blob), lambda cid, data: None).cid
        theirs = self.add_bytes(blob, "maskd-probe")
        if theirs != ours:
            raise StorageError(
                f"the IPFS daemon at {self.api} computes {theirs} for the probe blob, "
                f"maskd computes {ours}",
                code="ipfs_cid_mismatch",
                hint="the daemon must honour cid-version=1, raw-leaves and chunker=size-262144 "
                '(use Kubo); otherwise set storage.backend = "local"',
            )
        return ours
