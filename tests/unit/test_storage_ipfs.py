"""The Kubo RPC client and the ipfs backend, against a fake Kubo in process.

The fake enforces what real daemons enforce (POST only, a Content-Type on
every multipart part, the add options) and computes CIDs with our own
importer, or deliberately different ones to test the start-up probe.
"""

from __future__ import annotations

import email
import email.policy
import io
import json

import httpx
import pytest
import trio

from maskd.config import StorageConfig
from protocol.errors import StorageError
from storage.exporter import export
from storage.ipfs import ADD_PARAMS, KuboClient, probe_blob
from storage.service import StorageService
from storage.unixfs import import_file


class FakeKubo:
    def __init__(self, *, wrong_cids: bool = False, corrupt_blocks: bool = False) -> None:
        self.blocks: dict[str, bytes] = {}
        self.pins: set[str] = set()
        self.wrong_cids = wrong_cids
        self.corrupt_blocks = corrupt_blocks
        self.calls: list[str] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _parts(self, request: httpx.Request):
        raw = b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n"
        message = email.message_from_bytes(raw + request.read(), policy=email.policy.HTTP)
        return list(message.iter_parts())

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append(path)
        if request.method != "POST":
            return httpx.Response(405, text="405 - Method Not Allowed")
        q = request.url.params
        if path == "/api/v0/add":
            if any(q.get(k) != v for k, v in ADD_PARAMS.items()):
                return httpx.Response(400, json={"Message": f"bad add options {dict(q)}"})
            lines = []
            for part in self._parts(request):
                if part["Content-Type"] is None:
                    return httpx.Response(400, json={"Message": "part without Content-Type"})
                data = part.get_payload(decode=True)
                result = import_file(io.BytesIO(data), self.blocks.__setitem__)
                cid = result.cid
                if self.wrong_cids:  # as a daemon ignoring raw-leaves would
                    cid = "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
                lines.append(json.dumps({"Name": part.get_filename(), "Hash": cid}))
            return httpx.Response(200, text="\n".join(lines) + "\n")
        if path == "/api/v0/block/get":
            data = self.blocks.get(q["arg"])
            if data is None:  # a real daemon searches the network until its deadline
                if "timeout" not in q:
                    raise httpx.ReadTimeout("no answer", request=request)
                return httpx.Response(
                    500, json={"Message": "Failed to get block: request timed out"}
                )
            return httpx.Response(200, content=b"X" + data[1:] if self.corrupt_blocks else data)
        if path == "/api/v0/cat":
            if q["arg"] not in self.blocks:
                raise httpx.ReadTimeout("no answer", request=request)
            return httpx.Response(200, content=b"".join(export(q["arg"], self.blocks.__getitem__)))
        if path in ("/api/v0/pin/add", "/api/v0/pin/rm"):
            (self.pins.add if path.endswith("add") else self.pins.discard)(q["arg"])
            return httpx.Response(200, json={"Pins": [q["arg"]]})
        if path == "/api/v0/version":
            return httpx.Response(200, json={"Version": "0.32.1"})
        return httpx.Response(404, text="404 page not found")


def client(fake: FakeKubo) -> KuboClient:
    return KuboClient("http://127.0.0.1:5001", transport=fake.transport())


def test_probe_passes_when_the_daemon_computes_our_cids():
    fake = FakeKubo()
    ours = import_file(io.BytesIO(probe_blob()), lambda c, d: None).cid
    assert client(fake).probe() == ours
    assert ours.startswith("bafybei")  # three chunks: a dag-pb root over raw leaves
    assert fake.calls == ["/api/v0/add"]


def test_probe_mismatch_is_a_startup_error_with_a_hint():
    with pytest.raises(StorageError) as err:
        client(FakeKubo(wrong_cids=True)).probe()
    assert err.value.code == "ipfs_cid_mismatch"
    assert "raw-leaves" in err.value.hint and 'backend = "local"' in err.value.hint


def test_unreachable_daemon_says_how_to_fix_it():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    kubo = KuboClient("http://127.0.0.1:5001", transport=httpx.MockTransport(refuse))
    with pytest.raises(StorageError) as err:
        kubo.version()
    assert err.value.code == "ipfs_unavailable" and "ipfs daemon" in err.value.hint


def test_add_cat_block_get_and_pins_round_trip(tmp_path):
    fake = FakeKubo()
    kubo = client(fake)
    src = tmp_path / "in.bin"
    src.write_bytes(bytes(range(256)) * 4000)
    cid = kubo.add_path(src)
    assert cid == import_file(open(src, "rb"), lambda c, d: None).cid
    kubo.cat_to(cid, tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert b"".join(export(cid, kubo.block_get)) == src.read_bytes()
    kubo.pin_add(cid)
    assert fake.pins == {cid}
    kubo.pin_rm(cid)
    assert fake.pins == set()


def test_a_missing_block_is_not_found_after_the_daemons_deadline(tmp_path):
    fake = FakeKubo()
    kubo = KuboClient("http://127.0.0.1:5001", timeout=2.5, transport=fake.transport())
    missing = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    with pytest.raises(StorageError) as err:
        kubo.block_get(missing)  # the fake hangs (ReadTimeout) unless given a deadline
    assert err.value.code == "block_not_found"
    assert "request timed out" in str(err.value) and "within 2.5 s" in err.value.hint
    with pytest.raises(StorageError) as err:
        kubo.cat_to(missing, tmp_path / "out.bin")  # no deadline: our read timeout
    assert err.value.code == "ipfs_timeout" and "did not answer" in str(err.value)


def test_a_corrupt_block_from_the_daemon_is_refused(tmp_path):
    fake = FakeKubo()
    cid = client(fake).add_bytes(b"hello world" * 100)
    fake.corrupt_blocks = True
    with pytest.raises(StorageError) as err:
        client(fake).block_get(cid)
    assert err.value.code == "block_hash_mismatch"


def service(tmp_path, fake: FakeKubo) -> StorageService:
    async def no_stream(peer, protocol):
        raise ConnectionRefusedError(peer)

    return StorageService(
        StorageConfig(backend="ipfs"),
        tmp_path / "data",
        peer_id="me",
        open_stream=no_stream,
        connected_peers=list,
        penalise=lambda peer, reason: None,
        publish=lambda event: None,
        lookup_offer=lambda peer: None,
        list_offers=list,
        fsync=False,
        kubo_transport=fake.transport(),
    )


async def test_ipfs_backend_refuses_to_start_on_a_cid_mismatch(tmp_path):
    svc = service(tmp_path, FakeKubo(wrong_cids=True))
    with pytest.raises(StorageError) as err:
        await svc.run()  # fails before it reports started
    assert err.value.code == "ipfs_cid_mismatch"


async def test_ipfs_backend_puts_and_gets_through_the_daemon(tmp_path):
    fake = FakeKubo()
    svc = service(tmp_path, fake)
    src = tmp_path / "in.bin"
    src.write_bytes(b"\x01\x02" * 400_000)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        put = await svc.put({"path": str(src)})
        got = await svc.get({"cid": put["cid"], "dest": str(tmp_path / "out.bin")})
        nursery.cancel_scope.cancel()
    assert put["cid"] in fake.blocks
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert got["size"] == 800_000
    assert svc.store.stat().blocks == 0  # nothing went through the local store
